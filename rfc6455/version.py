"""The version of the distribution, ``rfc6455-chat`` (this package and the chat server), in
one place: pyproject.toml reads it, and the consoles' ``--version`` print it."""

__version__ = "0.1.0"

"""The chat server of the original design, built on the rfc6455 package."""

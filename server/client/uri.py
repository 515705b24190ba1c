"""The URI the chat client dials: the one given, with its identity and general's resume point."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

__all__ = ["resume_uri", "with_params"]


def with_params(uri: str, params: Mapping[str, str]) -> str:
    """``uri`` with ``params`` in its query, in place of any of the same name; the rest kept."""
    parts = urllib.parse.urlsplit(uri)
    query = [
        item for item in parts.query.split("&") if item and item.partition("=")[0] not in params
    ]
    query += [f"{name}={urllib.parse.quote(value, safe='')}" for name, value in params.items()]
    return urllib.parse.urlunsplit(parts._replace(query="&".join(query)))


def resume_uri(uri: str, since: tuple[int, str] | None) -> str:
    """``uri`` asking to resume general after ``since`` (seq, epoch); as it is while None.

    The server subscribes a client to general as it connects, so general's resume point
    goes in the URI: ``since=<seq>&epoch=<epoch>``, in place of any there.
    """
    if since is None:
        return uri
    seq, epoch = since
    return with_params(uri, {"since": str(seq), "epoch": epoch})

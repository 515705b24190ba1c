"""The Redis engine's key layout (``docs/redis.md``).

Every key of a channel carries the channel's name as its hash tag, ``{C}``, so a Redis Cluster
keeps them on one shard and a script may touch them together. Channel names cannot hold a brace
(``channels.check_name``), so the tag is the whole name.
"""

from __future__ import annotations

__all__ = ["CHANNELS", "GROUP", "PREFIX", "ChannelKeys", "node_topic"]

PREFIX = "chat:"
#: Every channel that was given a meta key: the archivers read their streams.
CHANNELS = PREFIX + "channels"
#: Pub/sub: a user's invitations to direct messages' channels (``USER_TOPIC + user``), which
#: a node receives while it has connections of the user.
USER_TOPIC = PREFIX + "user:"
#: The consumer group of every stream: the nodes' archivers, which write it to the database.
GROUP = "archive"


class ChannelKeys:
    """The names of one channel's keys and of its pub/sub topic."""

    __slots__ = (
        "_tag",
        "channel",
        "info",
        "members",
        "meta",
        "presence",
        "reads",
        "stream",
        "topic",
    )

    def __init__(self, channel: str) -> None:
        tag = self._tag = f"{PREFIX}{{{channel}}}"
        self.channel = channel
        #: HASH: ``e`` the epoch, ``s`` the last seq.
        self.meta = tag + ":meta"
        #: STREAM: one entry per message, id ``<seq>-0``; ``d`` the broadcast, ``c`` the
        #: sender's connection, ``k`` its clientMsgId, ``t`` when it was received.
        self.stream = tag + ":stream"
        #: HASH: reader (``user:...``, ``client:...``) -> last read seq.
        self.reads = tag + ":reads"
        #: ZSET: presence entry (``<node>/<member>``) -> when it expires (ms).
        self.presence = tag + ":presence"
        #: HASH: presence entry -> JSON (key, fields, connections, since).
        self.info = tag + ":presence:info"
        #: HASH: member -> how many entries (nodes) it has.
        self.members = tag + ":presence:members"
        #: Pub/sub: the channel's live messages, presence changes and signals.
        self.topic = tag + ":live"

    def dedupe(self, sender: str, client_msg_id: str) -> str:
        """STRING: the seq of a message its sender sent with this id, for ten minutes."""
        return f"{self._tag}:id:{sender}:{client_msg_id}"


def node_topic(node: str) -> str:
    """A node's own pub/sub topic (its pub/sub connection exists before any channel's)."""
    return f"{PREFIX}node:{node}"

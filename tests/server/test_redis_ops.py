"""``redis_ops.pipelined`` against a real redis-server: replies in order, errors in place, with
hiredis packing the commands and with redis-py's packer (hiredis is optional)."""

from __future__ import annotations

import pytest

from server import redis_ops
from server.redis_engine import connect_redis
from server.redis_ops import pipelined


@pytest.mark.parametrize("packer", ["hiredis", "redis-py"])
async def test_pipelined_replies_come_in_order_with_errors_in_place(
    redis_url: str, packer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.exceptions import NoScriptError, ResponseError

    if packer == "redis-py":
        monkeypatch.setattr(redis_ops, "_pack", None)
    else:
        assert redis_ops._pack is not None  # the redis extra installs hiredis
    redis = connect_redis(redis_url)
    try:
        replies = await pipelined(
            redis,
            [
                ("SET", "k", b"\x00\xffbytes"),
                ("INCR", "k"),  # not a number: an error, and the rest go on
                ("EVALSHA", "0" * 40, 0),
                ("GET", "k"),
                ("RPUSH", "l", 1, 2.5, "three"),
                ("LRANGE", "l", 0, -1),
            ],
        )
        assert replies[0] in (True, b"OK")
        assert isinstance(replies[1], ResponseError)
        assert isinstance(replies[2], NoScriptError)
        assert replies[3:] == [b"\x00\xffbytes", 3, [b"1", b"2.5", b"three"]]
        # The connection went back to the pool in a state to serve the next command.
        assert await redis.get("k") == b"\x00\xffbytes"
        assert await pipelined(redis, []) == []
    finally:
        await redis.aclose()

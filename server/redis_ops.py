"""How the Redis engine sends commands in bulk: ``pipelined``, and ``Background`` for the
writes that nobody waits for (presence, read positions, typing signals), sent in order, as
pipelines, one at a time.

Background writes are best effort: while Redis cannot be reached they are dropped (counted,
logged once per outage), and what matters of them is written again (presence is refreshed
every 25 s).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from .redis_scripts import Script

__all__ = ["Background", "pipelined"]

logger = logging.getLogger("server.engine")

_PIPELINE = 512
#: The longest a pipeline's replies take to come.
_REPLIES_TIMEOUT = 10.0


def _hiredis_packer() -> Callable[[Any], bytes] | None:
    try:
        from hiredis import pack_command
    except ImportError:
        return None
    return pack_command


#: hiredis packs a command in C, 7x faster than redis-py's asyncio connection does in Python
#: (1.1 against 7.9 µs for a publish's 13 arguments: benchmarks/README.md).
_pack = _hiredis_packer()


async def pipelined(redis: Any, commands: Sequence[tuple[object, ...]]) -> list[Any]:
    """Send ``commands`` in one write on one of the client's connections and read their
    replies, in order: each reply as the parser gives it (no response callbacks), or the
    ``ResponseError`` Redis answered with. redis-py's ``Pipeline.execute(raise_on_error=False)``
    without its work per command, which was a third of a node's time when publishing.

    Raises:
        redis.exceptions.RedisError, OSError: The connection failed: some commands may have run.
    """
    from redis.exceptions import ResponseError

    if not commands:
        return []
    pool = redis.connection_pool
    connection = await pool.get_connection()
    try:
        if _pack is None:
            packed: bytes | list[bytes] = connection.pack_commands(commands)
        else:
            packed = b"".join(map(_pack, commands))
        await connection.send_packed_command(packed, check_health=False)
        replies: list[Any] = []
        async with asyncio.timeout(_REPLIES_TIMEOUT):
            for _ in commands:
                try:
                    replies.append(await connection.read_response(timeout=math.inf))
                except ResponseError as exc:
                    replies.append(exc)
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
    finally:
        await pool.release(connection)
    return replies


class Background:
    """An ordered queue of scripts and publishes for one Redis client.

    Args:
        redis: The client.
        most: The most operations waiting; beyond, new ones are dropped.
    """

    def __init__(self, redis: Any, most: int = 100_000) -> None:
        self.redis = redis
        self.most = most
        self.dropped = 0
        self._queue: list[tuple[Script | None, Sequence[object], Sequence[object]]] = []
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    def script(self, script: Script, keys: Sequence[str], args: Sequence[object]) -> None:
        """Run ``script`` after what is queued."""
        self._add(script, keys, args)

    def publish(self, topic: str, data: bytes) -> None:
        """Publish ``data`` on ``topic`` after what is queued."""
        self._add(None, (topic,), (data,))

    def _add(self, script: Script | None, keys: Sequence[object], args: Sequence[object]) -> None:
        if len(self._queue) >= self.most:
            self.dropped += 1
            return
        self._queue.append((script, keys, args))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until what is queued is sent."""
        if self._task is not None:
            await asyncio.wait([self._task], timeout=timeout)

    def cancel(self) -> None:
        """Drop what is queued."""
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()

    async def _flush(self) -> None:
        from redis.exceptions import RedisError

        try:
            while self._queue:
                batch = self._queue[:_PIPELINE]
                del self._queue[:_PIPELINE]
                commands = [
                    ("PUBLISH", keys[0], args[0])
                    if script is None
                    else ("EVALSHA", script.sha, len(keys), *keys, *args)
                    for script, keys, args in batch
                ]
                try:
                    results = await pipelined(self.redis, commands)
                except (RedisError, OSError) as exc:
                    self._failed(len(batch), exc)
                    continue
                missing = [op for op, r in zip(batch, results, strict=True) if _forgot(r)]
                if missing:
                    # Redis restarted: load the scripts and run those again, first.
                    scripts = {op[0] for op in missing if op[0] is not None}
                    if all([await _loaded(self.redis, script) for script in scripts]):
                        self._queue[:0] = missing
                    else:
                        self.dropped += len(missing)
                errors = [r for r in results if isinstance(r, Exception) and not _forgot(r)]
                if errors:
                    logger.warning("redis: %d background writes failed: %s", len(errors), errors[0])
                self._failing = False
        finally:
            self._task = None

    def _failed(self, count: int, error: BaseException) -> None:
        self.dropped += count
        if not self._failing:
            self._failing = True
            logger.warning("redis: background writes dropped while unreachable: %s", error)


def _forgot(result: object) -> bool:
    from redis.exceptions import NoScriptError

    return isinstance(result, NoScriptError)


async def _loaded(redis: Any, script: Script) -> bool:
    """Load a script; False if Redis cannot be reached."""
    from redis.exceptions import RedisError

    try:
        await redis.script_load(script.source)
    except (RedisError, OSError) as exc:
        logger.warning("redis: cannot load a script: %s", exc)
        return False
    return True

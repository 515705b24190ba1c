"""Background: the Redis engine's writes that nobody waits for (presence, read positions,
typing signals), sent in order, as pipelines, one at a time.

They are best effort: while Redis cannot be reached they are dropped (counted, logged once per
outage), and what matters of them is written again (presence is refreshed every 25 s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from .redis_scripts import Script

__all__ = ["Background"]

logger = logging.getLogger("server.engine")

_PIPELINE = 512


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
                pipe = self.redis.pipeline(transaction=False)
                for script, keys, args in batch:
                    if script is None:
                        pipe.publish(keys[0], args[0])
                    else:
                        pipe.evalsha(script.sha, len(keys), *keys, *args)
                try:
                    results: list[Any] = await pipe.execute(raise_on_error=False)
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

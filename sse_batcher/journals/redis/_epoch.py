"""The Redis stream's epoch (see "Epoch" in ``_redis_journal.py``), and reads that carry it.

Every read and write gets the epoch key in the same MULTI as the stream, so each
id it returns is formatted with the epoch of the stream it came from; the
``ENSURE_STREAM`` script creates a missing stream and its new epoch together."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from sse_batcher._exceptions import JournalUnavailable
from sse_batcher.journals._counters import RedisCounters
from sse_batcher.journals.redis._keys import ENSURE_STREAM, REDIS_ERRORS, Keys, drop_connections

__all__ = ["StreamEpoch", "retry_once"]

logger = logging.getLogger("sse_batcher.redis")
_T = TypeVar("_T")


async def retry_once(
    client: aioredis.Redis, call: Callable[[aioredis.Redis], Awaitable[_T]], what: str
) -> _T:
    """Run an idempotent call; after a lost connection, retry it once on fresh ones.

    After Redis restarts, every pooled connection is dead and the first use of
    each fails: reads and pings try again so one stale socket is not an outage.
    """
    for attempt in range(2):
        try:
            return await call(client)
        except (RedisConnectionError, OSError) as exc:
            await drop_connections(client)
            if attempt:
                raise JournalUnavailable(f"Redis {what} failed: {exc}") from exc
        except RedisError as exc:
            raise JournalUnavailable(f"Redis {what} failed: {exc}") from exc
    raise AssertionError("unreachable")


class StreamEpoch:
    """One journal's view of its stream's epoch.

    Args:
        url: the Redis URL, for errors.
        keys: the journal's keys.
        client: the journal's open client (raises ``BatcherClosed`` when it is not open).
        counters: the journal's counters, updated in place.
    """

    def __init__(
        self,
        *,
        url: str,
        keys: Keys,
        client: Callable[[], aioredis.Redis],
        counters: RedisCounters,
    ) -> None:
        self._url = url
        self._keys = keys
        self._client = client
        self._counters = counters
        self._script: Any = None
        self.value: str | None = None

    def register(self, client: aioredis.Redis) -> None:
        """Load ``ENSURE_STREAM`` for ``client``."""
        self._script = client.register_script(ENSURE_STREAM)

    def see(self, raw: bytes | None) -> str | None:
        """Note an epoch read from Redis (None: the key is gone); return it decoded."""
        if raw is None:
            return None
        epoch = raw.decode()
        if epoch != self.value:
            if self.value is not None:
                self._counters.epoch_changes += 1
                logger.warning("Redis stream %s has a new epoch %s", self._keys.stream, epoch)
            self.value = epoch
        return epoch

    async def ensure(self) -> str:
        """Create the stream with a new epoch if it is missing; return the epoch."""
        client = self._client()
        try:
            raw_epoch, created = await self._script(
                keys=[self._keys.stream, self._keys.epoch],
                args=[secrets.token_hex(6), f"sse_batcher_init_{secrets.token_hex(4)}"],
                client=client,
            )
        except REDIS_ERRORS as exc:
            raise JournalUnavailable(f"Redis at {self._url} is unavailable: {exc}") from exc
        if created:
            self._counters.streams_created += 1
        epoch = self.see(raw_epoch)
        assert epoch is not None
        return epoch

    async def read(self, command: Callable[[Any], object]) -> tuple[str, Any]:
        """Run one read command in MULTI with GET epoch, so ids get the right epoch."""

        async def call(client: aioredis.Redis) -> list[Any]:
            async with client.pipeline(transaction=True) as pipe:
                pipe.get(self._keys.epoch)
                command(pipe)
                return await pipe.execute(raise_on_error=False)

        for _ in range(2):
            raw_epoch, result = await retry_once(self._client(), call, "read")
            epoch = self.see(raw_epoch)
            if epoch is not None:
                if isinstance(result, ResponseError) and "no such key" not in str(result):
                    raise JournalUnavailable(f"Redis read failed: {result}")
                return epoch, result
            # Redis lost the stream and nobody has appended since: create it now so a
            # cursor from the lost stream is told "epoch" rather than served.
            await self.ensure()
        raise JournalUnavailable(f"Redis stream {self._keys.stream} keeps disappearing")

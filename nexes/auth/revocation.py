"""Revoked tokens: their `jti` in Redis until the token would have expired anyway.

`nexes token revoke` writes `nexes:revoked:<jti>` with that expiry; the API asks Redis once
per token id every REVOCATION_CACHE_SECONDS at most (a revocation takes effect across
every process within that time), and never waits on Redis longer than NEXES_REDIS_TIMEOUT.

When Redis cannot answer, the check fails open (the token is accepted, a warning logged):
a Redis outage must not take every signed-in user down, and a revoked token still ends at
its own `exp`. Tokens without a `jti` cannot be revoked; `nexes token` always sets one.
"""

from __future__ import annotations

import logging
import time

import redis
import redis.asyncio as aioredis

log = logging.getLogger(__name__)

PREFIX = "nexes:revoked:"
REVOCATION_CACHE_SECONDS = 2.0
CACHE_SIZE = 10_000


class Revocations:
    """The API's view of revoked token ids, cached briefly per id."""

    def __init__(self, redis_url: str, timeout: float) -> None:
        self._client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
        self._seen: dict[str, tuple[float, bool]] = {}

    async def is_revoked(self, jti: str) -> bool:
        now = time.monotonic()
        seen = self._seen.get(jti)
        if seen is not None and now - seen[0] < REVOCATION_CACHE_SECONDS:
            return seen[1]
        try:
            revoked = bool(await self._client.exists(PREFIX + jti))
        except (aioredis.RedisError, OSError) as exc:
            log.warning("revocation check skipped, Redis did not answer: %s", type(exc).__name__)
            return False
        if len(self._seen) >= CACHE_SIZE:
            self._seen.clear()
        self._seen[jti] = (now, revoked)
        return revoked

    async def close(self) -> None:
        await self._client.aclose()


def revoke(redis_url: str, jti: str, until: float, timeout: float) -> None:
    """Refuse the token `jti` from now until the epoch second `until`."""
    seconds = max(1, int(until - time.time()) + 1)
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.set(PREFIX + jti, "1", ex=seconds)
    finally:
        client.close()

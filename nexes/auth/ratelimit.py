"""Each subject's points an hour, shared by every API process through Redis.

The `limits` library's sliding-window counter (two Redis keys per subject and hour, its own
Lua scripts) keeps the budget: `NEXES_RATE_LIMIT_<ROLE>` points an hour, the most generous
of the token's roles. A query costs ceil(requested nodes / 100) points, at least one
(nexes.execution.cost).

When Redis does not answer within NEXES_REDIS_TIMEOUT, each process falls back to a limiter
of its own in memory at the same rate (so N processes allow up to N times the budget
until Redis is back), logs a warning and counts `nexes_rate_limit_fallback_total`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis
from limits import RateLimitItemPerHour
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string
from prometheus_client import Counter

from nexes.auth.identity import Viewer
from nexes.errors import Code, NexesError

log = logging.getLogger(__name__)
RESOURCE = "graphql"
WINDOW_SECONDS = 3600
FALLBACKS = Counter(
    "nexes_rate_limit_fallback",
    "Rate-limit checks answered by the process's own limiter because Redis did not answer.",
)


@dataclass(frozen=True, slots=True)
class Budget:
    limit: int  # points an hour
    remaining: int
    used: int
    reset: int  # epoch seconds when the budget is full again


class RateLimited(NexesError):
    """The subject's points are spent: RATE_LIMITED, with the budget for the headers."""

    def __init__(self, message: str, budget: Budget, retry_after: int) -> None:
        super().__init__(Code.RATE_LIMITED, message, extensions={"retryAfter": retry_after})
        self.budget = budget
        self.retry_after = retry_after


def most_generous(viewer: Viewer, table: Mapping[str, int]) -> int:
    """The largest of `table`'s values among the viewer's roles (0: none of them)."""
    return max((int(table[r]) for r in viewer.roles if r in table), default=0)


class RateLimiter:
    """Charges a subject's points; Redis first, the process's own memory when Redis is down."""

    def __init__(self, redis_url: str, timeout: float) -> None:
        url = redis_url.replace("redis://", "async+redis://", 1).replace("rediss://", "async+rediss://", 1)
        storage = storage_from_string(
            url, implementation="redispy", socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._shared = SlidingWindowCounterRateLimiter(storage)
        self._local = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._items: dict[int, RateLimitItemPerHour] = {}

    def _item(self, points: int) -> RateLimitItemPerHour:
        item = self._items.get(points)
        if item is None:
            item = self._items[points] = RateLimitItemPerHour(points, namespace="nexes")
        return item

    async def charge(self, subject: str, hourly: int, points: int, *, dry_run: bool = False) -> Budget:
        """Take `points` from the subject's hour (none on a dry run); RATE_LIMITED when they
        are not there, with when to come back."""
        item = self._item(hourly)
        try:
            return await self._charge(self._shared, item, subject, hourly, points, dry_run=dry_run)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            FALLBACKS.inc()
            log.warning("rate limit kept in this process: Redis did not answer (%s)", type(exc).__name__)
            return await self._charge(self._local, item, subject, hourly, points, dry_run=dry_run)

    @staticmethod
    async def _charge(
        limiter: SlidingWindowCounterRateLimiter,
        item: RateLimitItemPerHour,
        subject: str,
        hourly: int,
        points: int,
        *,
        dry_run: bool,
    ) -> Budget:
        allowed = True
        if not dry_run:
            allowed = await limiter.hit(item, RESOURCE, subject, cost=points)
        stats = await limiter.get_window_stats(item, RESOURCE, subject)
        remaining = max(0, int(stats.remaining))
        budget = Budget(hourly, remaining, hourly - remaining, math.ceil(stats.reset_time))
        if not allowed:
            retry = min(WINDOW_SECONDS, max(1, budget.reset - int(time.time())))
            message = f"this query costs {points} points and {remaining} of your {hourly} an hour are left"
            raise RateLimited(f"{message}; retry in {retry} s", budget, retry)
        return budget

    async def close(self) -> None:
        """Close the shared limiter's Redis connections (limits keeps its redis-py client
        on the storage's bridge and offers no close of its own)."""
        client = getattr(getattr(self._shared.storage, "bridge", None), "storage", None)
        if client is not None:
            await client.aclose()

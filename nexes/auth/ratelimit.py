"""Each subject's points an hour, shared by every API process through Redis.

The `limits` library's sliding-window counter (two Redis keys per subject and hour, its own
Lua scripts) keeps the budget: `NEXES_RATE_LIMIT_<ROLE>` points an hour, the most generous
of the token's roles. A query costs ceil(requested nodes / 100) points, at least one
(nexes.execution.cost).

When Redis does not answer within NEXES_REDIS_TIMEOUT, each process falls back to a limiter
of its own in memory at the same rate (so N processes allow up to N times the budget
until Redis is back), logs a warning and counts `nexes_rate_limit_fallback_total`.

Charges made in the same turn of the event loop share one Redis round trip (`_send`): one
pipeline of the same atomic Lua calls, each request's answer its own. Under load a process
has many requests in flight, and a round trip per request cost about as much CPU as the
rest of a cached page's guards (issue 21).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis
from limits import RateLimitItemPerHour
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string
from limits.util import WindowStats
from prometheus_client import Counter

from nexes.auth.identity import Viewer
from nexes.errors import Code, NexesError

log = logging.getLogger(__name__)
RESOURCE = "graphql"
WINDOW_SECONDS = 3600
BATCH_LIMIT = 256  # charges in one pipeline at most; more wait for the next
FALLBACKS = Counter(
    "nexes_rate_limit_fallback",
    "Rate-limit checks answered by the process's own limiter because Redis did not answer.",
)
ROUND_TRIPS = Counter(
    "nexes_rate_limit_round_trips",
    "Pipelines of rate-limit charges sent to Redis: one per turn of the event loop that charged.",
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


@dataclass(slots=True)
class _Entry:
    """One charge waiting for the turn's pipeline."""

    item: RateLimitItemPerHour
    subject: str
    points: int
    dry_run: bool
    answer: asyncio.Future[tuple[bool, WindowStats]]


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
        self._queue: list[_Entry] = []
        self._sender: asyncio.Task[None] | None = None

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
            allowed, stats = await self._one_trip(item, subject, points, dry_run=dry_run)
            return _budget(hourly, points, allowed, stats)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            FALLBACKS.inc()
            log.warning("rate limit kept in this process: Redis did not answer (%s)", type(exc).__name__)
            return await self._charge(self._local, item, subject, hourly, points, dry_run=dry_run)

    async def _one_trip(
        self, item: RateLimitItemPerHour, subject: str, points: int, *, dry_run: bool
    ) -> tuple[bool, WindowStats]:
        """limits' hit and get_window_stats on Redis, in the pipeline of this turn of the
        event loop (`_send`)."""
        loop = asyncio.get_running_loop()
        entry = _Entry(item, subject, points, dry_run, loop.create_future())
        self._queue.append(entry)
        if self._sender is None or self._sender.done() or self._sender.get_loop() is not loop:
            # A task starts on the loop's next turn: the charges made meanwhile go with it.
            self._sender = asyncio.create_task(self._send())
        return await entry.answer

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        # Charges left by a loop that closed (tests run one per test) have no one waiting.
        self._queue = [e for e in self._queue if e.answer.get_loop() is loop]
        while self._queue:
            batch, self._queue = self._queue[:BATCH_LIMIT], self._queue[BATCH_LIMIT:]
            try:
                await self._send_batch(batch)
            except Exception as exc:  # Redis down: each waiting charge falls back on its own
                for entry in batch:
                    if not entry.answer.done():
                        entry.answer.set_exception(exc)

    async def _send_batch(self, batch: list[_Entry]) -> None:
        """Each charge's hit and window in one pipeline. Its own because `limits` offers the
        two only as separate calls, one round trip each: the same Lua scripts (the storage's,
        by SHA) and keys, and the same window arithmetic (`window_stats`). When Redis does not
        know a script (restarted), the library's own calls load it."""
        storage = cast(Any, self._shared.storage)
        bridge = storage.bridge
        pipe = bridge.get_connection().pipeline(transaction=False)
        for entry in batch:
            key = entry.item.key_for(RESOURCE, entry.subject)
            keys = [
                bridge.prefixed_key(storage._previous_window_key(key)),
                bridge.prefixed_key(storage._current_window_key(key)),
            ]
            expiry = entry.item.get_expiry()
            if not entry.dry_run:
                pipe.evalsha(bridge.lua_acquire_sliding_window.sha, 2, *keys, entry.item.amount, expiry, entry.points)
            pipe.evalsha(bridge.lua_sliding_window.sha, 2, *keys, expiry)
        ROUND_TRIPS.inc()
        results = iter(await pipe.execute(raise_on_error=False))
        for entry in batch:
            acquired = True if entry.dry_run else next(results)
            window = next(results)
            if entry.answer.done():  # its request gave up waiting (its deadline)
                continue
            try:
                entry.answer.set_result(await self._answer(entry, acquired, window))
            except Exception as exc:
                entry.answer.set_exception(exc)

    async def _answer(self, entry: _Entry, acquired: Any, window: Any) -> tuple[bool, WindowStats]:
        item, subject = entry.item, entry.subject
        if isinstance(acquired, redis.exceptions.NoScriptError):
            acquired = await self._shared.hit(item, RESOURCE, subject, cost=entry.points)
        if isinstance(window, redis.exceptions.NoScriptError):
            return bool(acquired), await self._shared.get_window_stats(item, RESOURCE, subject)
        if isinstance(acquired, Exception) or isinstance(window, Exception):
            raise acquired if isinstance(acquired, Exception) else window
        return bool(acquired), window_stats(item, window)

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
        return _budget(hourly, points, allowed, await limiter.get_window_stats(item, RESOURCE, subject))

    async def close(self) -> None:
        """Close the shared limiter's Redis connections (limits keeps its redis-py client
        on the storage's bridge and offers no close of its own)."""
        client = getattr(getattr(self._shared.storage, "bridge", None), "storage", None)
        if client is not None:
            await client.aclose()


def _budget(hourly: int, points: int, allowed: bool, stats: WindowStats) -> Budget:
    remaining = max(0, int(stats.remaining))
    budget = Budget(hourly, remaining, hourly - remaining, math.ceil(stats.reset_time))
    if not allowed:
        retry = min(WINDOW_SECONDS, max(1, budget.reset - int(time.time())))
        message = f"this query costs {points} points and {remaining} of your {hourly} an hour are left"
        raise RateLimited(f"{message}; retry in {retry} s", budget, retry)
    return budget


def window_stats(item: RateLimitItemPerHour, window: list[Any] | None) -> WindowStats:
    """limits' SlidingWindowCounterRateLimiter.get_window_stats from its Lua script's raw
    answer (the bridge's get_sliding_window conversion, then the strategy's arithmetic)."""
    previous_count, previous_ttl, current_count, current_ttl = 0, 0.0, 0, 0.0
    if window:
        previous_count, current_count = int(window[0] or 0), int(window[2] or 0)
        previous_ttl, current_ttl = max(0, float(window[1] or 0)) / 1000, max(0, float(window[3] or 0)) / 1000
    expiry = item.get_expiry()
    weighted = previous_count * previous_ttl / expiry + current_count
    remaining = max(0, item.amount - math.floor(weighted))
    now = time.time()
    if not (previous_count or current_count):
        return WindowStats(now, remaining)
    previous_reset, current_reset = math.inf, math.inf
    if previous_count:
        previous_reset = previous_ttl % (expiry / previous_count)
    if current_count:
        current_reset = current_ttl % expiry
    return WindowStats(now + min(previous_reset, current_reset), remaining)

"""Each subject's points an hour, shared by every API process through Redis.

The `limits` library's sliding-window counter (two Redis keys per subject and hour, its own
Lua scripts) keeps the budget: `NEXES_RATE_LIMIT_<ROLE>` points an hour, the most generous
of the token's roles. A query costs ceil(requested nodes / 100) points, at least one
(nexes.execution.cost).

When Redis does not answer within NEXES_REDIS_TIMEOUT, each process falls back to a limiter
of its own in memory at the same rate (so N processes allow up to N times the budget
until Redis is back), logs a warning and counts `nexes_rate_limit_fallback_total`.

Two ways a charge reaches Redis:

- **Settled later, far from the limit.** When this process heard from Redis within the last
  `FRESH_SECONDS` that the subject has at least `margin(hourly)` points left beyond what it
  has charged since, the charge is taken from that local figure at once, and the points
  go to Redis within `SETTLE_SECONDS`, summed per subject, in one pipeline for every
  subject (`_settle`). A request then makes no Redis round trip of its own; the answer's
  `remaining` is Redis' last figure less the charges not yet settled, exact for one
  process and behind other processes' charges of the last `SETTLE_SECONDS` (what is at
  stake: at most `margin` points, the tenth of an hour's budget, and never the last of it).
  Issue 21: the round trip per request was the largest guard's cost (175 us of CPU of a
  1,450 us page, bench/README.md, "Guards on and off").
- **Exact, near the limit** (or for a subject this process has not heard of lately):
  the request waits for its own atomic acquire. Charges made in the same turn of the event
  loop share one Redis round trip (`_send`): one pipeline of the same atomic Lua calls,
  each request's answer its own.

Hand-written, not the library's: `limits` offers a hit per call, one round trip each, and
no batching or local budget.
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
SETTLED = Counter(
    "nexes_rate_limit_settled_points",
    "Points charged in this process at once and sent to Redis later, summed per subject.",
)
OVERDRAWN = Counter(
    "nexes_rate_limit_overdrawn_points",
    "Points charged in this process and settled later that Redis refused: other processes "
    "had spent the subject's budget meanwhile.",
)
# A charge far from the limit is sent to Redis at most this long after it was made...
SETTLE_SECONDS = 0.05
# ...against Redis' figure for the subject of at most this long ago; else it waits for Redis.
FRESH_SECONDS = 1.0
KNOWN_SUBJECTS = 10_000  # the figures kept; past it, the idle ones are dropped


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


def margin(hourly: int) -> int:
    """The points a subject must have left, beyond this process's charges not yet in Redis,
    for a charge to be settled later: a tenth of the hour's budget, at least 1,000 (so a
    small budget is always charged exactly)."""
    return max(1_000, hourly // 10)


@dataclass(slots=True)
class _Known:
    """What this process knows of one subject's hour."""

    remaining: int  # Redis' figure at `at`
    reset: int
    at: float  # time.monotonic()
    pending: int = 0  # charged here since, for the next settle
    sending: int = 0  # charged here, in the settle on its way to Redis

    def left(self) -> int:
        return self.remaining - self.pending - self.sending


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
        self._known: dict[tuple[str, int], _Known] = {}
        self._settler: asyncio.Task[None] | None = None

    def _item(self, points: int) -> RateLimitItemPerHour:
        item = self._items.get(points)
        if item is None:
            item = self._items[points] = RateLimitItemPerHour(points, namespace="nexes")
        return item

    async def charge(self, subject: str, hourly: int, points: int, *, dry_run: bool = False) -> Budget:
        """Take `points` from the subject's hour (none on a dry run); RATE_LIMITED when they
        are not there, with when to come back. Far from the limit, at once and settled with
        Redis later; else, Redis' atomic answer."""
        key = (subject, hourly)
        known = self._known.get(key)
        if (
            known is not None
            and time.monotonic() - known.at < FRESH_SECONDS
            and known.left() - points >= margin(hourly)
        ):
            if not dry_run:
                known.pending += points
                self._settle_soon()
            left = known.left()
            # The reset Redis last gave (when the window next frees points), never in the past.
            return Budget(hourly, left, hourly - left, max(known.reset, int(time.time()) + 1))
        item = self._item(hourly)
        # Charges made here and not yet settled go with this one, so that Redis decides on all of them.
        earlier = 0
        if known is not None and not dry_run:
            earlier, known.pending = known.pending, 0
        try:
            allowed, stats = await self._one_trip(item, subject, points + earlier, dry_run=dry_run)
        except (redis.RedisError, OSError, TimeoutError) as exc:
            self._known.pop(key, None)
            FALLBACKS.inc()
            log.warning("rate limit kept in this process: Redis did not answer (%s)", type(exc).__name__)
            if earlier:
                await self._local.hit(item, RESOURCE, subject, cost=earlier)
            return await self._charge(self._local, item, subject, hourly, points, dry_run=dry_run)
        if not allowed and earlier and known is not None:
            # Refused: the earlier charges were answered already, and settle on their own.
            self._known.setdefault(key, known).pending += earlier
            self._settle_soon()
        self._remember(key, stats)
        return _budget(hourly, points, allowed, stats)

    def _remember(self, key: tuple[str, int], stats: WindowStats) -> None:
        """Redis' figure for the subject, from an exact charge. While a settle is on its way,
        the figure may or may not hold it: the settle's own answer replaces it."""
        known = self._known.get(key)
        remaining, reset = max(0, int(stats.remaining)), math.ceil(stats.reset_time)
        if known is None:
            if len(self._known) >= KNOWN_SUBJECTS:
                self._forget_idle()
            self._known[key] = _Known(remaining, reset, time.monotonic())
        elif not known.sending:
            known.remaining, known.reset, known.at = remaining, reset, time.monotonic()

    def _forget_idle(self) -> None:
        idle = [key for key, known in self._known.items() if not (known.pending or known.sending)]
        for key in idle:
            del self._known[key]

    def _settle_soon(self) -> None:
        settler = self._settler
        if settler is None or settler.done() or settler.get_loop() is not asyncio.get_running_loop():
            self._settler = asyncio.create_task(self._settle())

    async def _settle(self) -> None:
        """Every SETTLE_SECONDS while charges wait: each subject's sum, in one pipeline."""
        while any(known.pending for known in self._known.values()):
            await asyncio.sleep(SETTLE_SECONDS)
            await self.settle()

    async def settle(self) -> None:
        """Send the charges made here and not yet in Redis now (each subject's sum, one
        pipeline); when Redis does not answer, they go to this process's own limiter."""
        due = [(key, known) for key, known in self._known.items() if known.pending]
        if not due:
            return
        for _, known in due:
            known.sending, known.pending = known.pending, 0
        storage = cast(Any, self._shared.storage)
        pipe = storage.bridge.get_connection().pipeline(transaction=False)
        for (subject, hourly), known in due:
            self._queue_calls(pipe, self._item(hourly), subject, known.sending, dry_run=False)
        try:
            ROUND_TRIPS.inc()
            results = iter(await pipe.execute(raise_on_error=False))
            answers = [
                await self._answer(self._item(hourly), subject, known.sending, next(results), next(results))
                for (subject, hourly), known in due
            ]
        except Exception as exc:  # Redis down (or an answer not understood): kept here
            FALLBACKS.inc()
            log.warning("rate limit kept in this process: Redis did not answer (%s)", type(exc).__name__)
            for (subject, hourly), known in due:
                await self._local.hit(self._item(hourly), RESOURCE, subject, cost=known.sending)
                self._known.pop((subject, hourly), None)
            return
        except BaseException:  # cancelled on the way (the app closing): sent by the next settle
            for _, known in due:
                known.pending, known.sending = known.pending + known.sending, 0
            raise
        now = time.monotonic()
        for ((subject, _), known), (acquired, stats) in zip(due, answers, strict=True):
            SETTLED.inc(known.sending)
            if not acquired:
                OVERDRAWN.inc(known.sending)
                log.warning("%s points charged in this process went past %s's hourly budget", known.sending, subject)
            known.remaining, known.reset, known.at = max(0, int(stats.remaining)), math.ceil(stats.reset_time), now
            known.sending = 0

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
        pipe = storage.bridge.get_connection().pipeline(transaction=False)
        for entry in batch:
            self._queue_calls(pipe, entry.item, entry.subject, entry.points, dry_run=entry.dry_run)
        ROUND_TRIPS.inc()
        results = iter(await pipe.execute(raise_on_error=False))
        for entry in batch:
            acquired = True if entry.dry_run else next(results)
            window = next(results)
            if entry.answer.done():  # its request gave up waiting (its deadline)
                continue
            try:
                entry.answer.set_result(await self._answer(entry.item, entry.subject, entry.points, acquired, window))
            except Exception as exc:
                entry.answer.set_exception(exc)

    def _queue_calls(self, pipe: Any, item: RateLimitItemPerHour, subject: str, points: int, *, dry_run: bool) -> None:
        """The acquire (unless `dry_run`) and the window's reading of one charge, queued on `pipe`."""
        storage = cast(Any, self._shared.storage)
        bridge = storage.bridge
        key = item.key_for(RESOURCE, subject)
        keys = [
            bridge.prefixed_key(storage._previous_window_key(key)),
            bridge.prefixed_key(storage._current_window_key(key)),
        ]
        expiry = item.get_expiry()
        if not dry_run:
            pipe.evalsha(bridge.lua_acquire_sliding_window.sha, 2, *keys, item.amount, expiry, points)
        pipe.evalsha(bridge.lua_sliding_window.sha, 2, *keys, expiry)

    async def _answer(
        self, item: RateLimitItemPerHour, subject: str, points: int, acquired: Any, window: Any
    ) -> tuple[bool, WindowStats]:
        if isinstance(acquired, redis.exceptions.NoScriptError):
            acquired = await self._shared.hit(item, RESOURCE, subject, cost=points)
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
        """Settle what is left, then close the shared limiter's Redis connections (limits
        keeps its redis-py client on the storage's bridge and offers no close of its own)."""
        if self._settler is not None and not self._settler.done():
            self._settler.cancel()
        await self.settle()
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

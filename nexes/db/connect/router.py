"""Read routing: queries to a healthy replica, fresh reads and writes to the primary.

The health policy is a seam (`ReplicaHealth`): the default only remembers servers
that just failed a connection; the lag monitor (`nexes.db.connect.monitor`) plugs in there.
A read that fails on a replica for a connection reason is retried once on the primary.

Read-your-writes: a request's `Consistency` (a contextvar set by the GraphQL endpoint)
carries the WAL position the client has seen (`X-Nexes-Min-LSN`); a read then goes
only to a replica known to have replayed that far, or that says so when asked, else
to the primary. Writes record the primary's position after their commit in it.

Every decision is counted (`nexes_db_route{target, reason}`) and logged at DEBUG
with the `db.route` reason.

Single flight (`Router.read(..., shared=key)`): a read that names what it reads (its
statement and parameters) takes the answer of the same read already running in this
process, instead of running again; see `Router._shared`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from psycopg import AsyncConnection, errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random

from nexes.db.connect.lsn import format_lsn, parse_lsn
from nexes.db.connect.pools import Pools
from nexes.errors import Code, NexesError
from nexes.metrics import DB_ROUTE, SHARED_READS, STATEMENT_TIMEOUTS

log = logging.getLogger(__name__)
T = TypeVar("T")
Work = Callable[[AsyncConnection[Any]], Awaitable[T]]


PRIMARY = -1  # the primary's index for the health policy


class ReplicaHealth(Protocol):
    def usable(self, index: int) -> bool: ...

    def report_failure(self, index: int) -> None: ...

    def known_lsn(self, index: int) -> int | None:
        """The replay position the policy last saw on replica `index`, if it knows one."""
        ...

    def note_lsn(self, index: int, lsn: int) -> None:
        """Replica `index` was seen to have replayed at least `lsn`."""
        ...


class PassiveHealth:
    """A server (replica index, or PRIMARY) that failed a connection sits out `cooldown` seconds."""

    def __init__(self, cooldown: float = 5.0) -> None:
        self.cooldown = cooldown
        self._down_until: dict[int, float] = {}
        self._lsn: dict[int, int] = {}

    def usable(self, index: int) -> bool:
        return self._down_until.get(index, 0.0) <= time.monotonic()

    def report_failure(self, index: int) -> None:
        self._down_until[index] = time.monotonic() + self.cooldown

    def known_lsn(self, index: int) -> int | None:
        return self._lsn.get(index)

    def note_lsn(self, index: int, lsn: int) -> None:
        self._lsn[index] = max(lsn, self._lsn.get(index, 0))


@dataclass
class Consistency:
    """What one request knows about WAL positions."""

    min_lsn: int | None = None  # the client's X-Nexes-Min-LSN
    lsn: int | None = None  # the primary's position after this request's last write
    replicas_caught_up: set[int] = field(default_factory=set)

    def note_write(self, lsn: int) -> None:
        self.lsn = lsn if self.lsn is None else max(self.lsn, lsn)

    @property
    def lsn_text(self) -> str | None:
        return None if self.lsn is None else format_lsn(self.lsn)


consistency_var: ContextVar[Consistency | None] = ContextVar("nexes_consistency", default=None)

CAUGHT_UP = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn, pg_last_wal_replay_lsn()::text"
LSN_AFTER_COMMIT = "SELECT pg_current_wal_lsn()::text"


class _Behind(Exception):
    """The replica has not replayed the request's minimum LSN yet."""


def route(target: str, reason: str) -> None:
    """Count (and log at DEBUG) one routing decision."""
    _route_counter(target, reason).inc()
    if log.isEnabledFor(logging.DEBUG):
        log.debug("db.route %s: %s", target, reason, extra={"db.route": reason, "db.target": target})


_COUNTERS: dict[tuple[str, str], Any] = {}


def _route_counter(target: str, reason: str) -> Any:
    counter = _COUNTERS.get((target, reason))
    if counter is None:
        counter = _COUNTERS[(target, reason)] = DB_ROUTE.labels(target, reason)
    return counter


def is_connection_problem(exc: BaseException) -> bool:
    """A failure of the server or the link, not of the statement: worth another server.

    QueryCanceled is an OperationalError too, but a statement timeout would only
    time out again; a recovery conflict (SerializationFailure on a standby) is retried.
    """
    if isinstance(exc, PoolTimeout):
        return True
    if isinstance(exc, errors.QueryCanceled):
        return False
    return isinstance(exc, errors.OperationalError | errors.SerializationFailure)


# In order: QueryCanceled is an OperationalError too.
_TRANSLATED: tuple[tuple[type[BaseException], Code, str], ...] = (
    (
        errors.LockNotAvailable,
        Code.TIMEOUT,
        "the data is locked by other work (an import?) past the lock timeout; retry",
    ),
    (errors.TransactionRollback, Code.SERVICE_UNAVAILABLE, "the write collided with concurrent writes; retry shortly"),
    (errors.QueryCanceled, Code.TIMEOUT, "the query ran past its statement timeout; narrow the filter or page size"),
    (PoolTimeout, Code.SERVICE_UNAVAILABLE, "no database connection was free in time; retry shortly"),
    (errors.OperationalError, Code.SERVICE_UNAVAILABLE, "the database is unreachable; retry shortly"),
)


def translate(exc: BaseException) -> NexesError | None:
    """Driver errors as the registry's codes, in this one place."""
    if isinstance(exc, errors.DataError) and exc.sqlstate is None:
        # Raised by psycopg itself, before sending: a value PostgreSQL cannot take, of
        # which the one an input can carry is a NUL character in a string.
        return NexesError(Code.BAD_USER_INPUT, f"the input holds a value the database cannot take: {exc}")
    for kind, code, message in _TRANSLATED:
        if isinstance(exc, kind):
            if kind is errors.QueryCanceled and "statement timeout" in (exc.diag.message_primary or ""):  # type: ignore[attr-defined]
                STATEMENT_TIMEOUTS.inc()  # each driver error is translated once, here
            return NexesError(code, message)
    return None


NO_REPLICA = "no replica is healthy; reports and exports run only on replicas, to protect the primary"
ANALYSTS_BUSY = "every analyst connection is busy with other reports and exports; retry shortly"


class Router:
    """Chooses the server for each unit of database work."""

    def __init__(
        self,
        pools: Pools,
        health: ReplicaHealth | None = None,
        replica_timeout: float = 1.0,
        *,
        share_reads: bool = True,
    ) -> None:
        self.pools = pools
        self.health: ReplicaHealth = health or PassiveHealth()
        self.replica_timeout = replica_timeout
        self._turn = 0
        self.in_flight = [0] * len(pools.replicas)
        self.share_reads = share_reads  # NEXES_SHARE_READS
        self._flights: dict[Hashable, asyncio.Future[Any]] = {}

    def pick_replica(self, min_lsn: int | None = None, exclude: int | None = None) -> int | None:
        """The usable replica with the fewest reads in flight (ties taken in turn); with
        `min_lsn`, only one known to have replayed it. None: no replica qualifies."""
        count = len(self.pools.replicas)
        if not count:
            return None
        self._turn = (self._turn + 1) % count
        best: int | None = None
        for offset in range(count):
            index = (self._turn + offset) % count
            if index == exclude or not self.health.usable(index):
                continue
            if min_lsn is not None and (self.health.known_lsn(index) or 0) < min_lsn:
                continue
            if best is None or self.in_flight[index] < self.in_flight[best]:
                best = index
        return best

    def _choose(self, fresh: bool, consistency: Consistency | None) -> tuple[int | None, bool, str]:
        """(replica or None, whether the replica must be asked about min_lsn, reason)."""
        if fresh:
            return None, False, "fresh"
        if not self.pools.replicas:
            return None, False, "no_replica_configured"
        if consistency is not None and consistency.min_lsn is not None:
            return self._choose_caught_up(consistency, consistency.min_lsn)
        index = self.pick_replica()
        return (index, False, "healthy_replica") if index is not None else (None, False, "no_healthy_replica")

    def _choose_caught_up(self, consistency: Consistency, min_lsn: int) -> tuple[int | None, bool, str]:
        index = self.pick_replica(min_lsn)
        if index is not None:
            return index, False, "replica_has_min_lsn"
        index = self.pick_replica()
        if index is None:
            return None, False, "no_healthy_replica"
        if index in consistency.replicas_caught_up:
            return index, False, "replica_has_min_lsn"
        return index, True, "replica_checked_min_lsn"

    async def read(self, work: Work[T], *, fresh: bool = False, shared: Hashable | None = None) -> T:
        """Run `work` on a replica (or on the primary when `fresh` or none is usable).

        A replica that fails for a connection reason sends the read to the primary; when
        the primary is unreachable too, every replica gets one last try, since the first
        failure may have been no more than a stale pooled connection.

        `shared`: what `work` reads, as a key that holds everything its statements depend
        on (their names and parameters), when it may take the answer of the same read
        already in flight (`_shared`). Its answer is then given to several requests: the
        caller must not change it.
        """
        consistency = consistency_var.get()
        if (
            shared is not None
            and self.share_reads
            and not fresh
            and (consistency is None or (consistency.min_lsn is None and consistency.lsn is None))
        ):
            return await self._shared(shared, work)
        return await self._routed(work, fresh, consistency)

    async def _shared(self, key: Hashable, work: Work[T]) -> T:
        """Single flight: the first read of `key` runs; the reads of `key` that come while
        it runs wait for its answer and run nothing (`nexes_db_reads_shared`). A herd of
        requests for the same dashboard or first page costs the database one statement.

        Consistent with routing: such a read goes to any healthy replica anyway, whose
        snapshot may be older than the request; the one it joins began at most one
        statement's time before it. Reads that must see a write (X-Nexes-Min-LSN, or this
        request's own) and fresh reads never share (`read`). Each caller keeps its own
        deadline (it stops waiting; the read it joined goes on for the others). When the
        first read fails or is cancelled, those that joined it read on their own.

        Hand-rolled, a dict of futures: no package pinned here offers an asyncio single
        flight, and a cache would keep answers past their read, which this must not."""
        flight = self._flights.get(key)
        if flight is not None:
            joined = await asyncio.shield(flight)
            if joined is _GROUNDED:
                return await self._routed(work, False, consistency_var.get())
            SHARED_READS.inc()
            return joined  # type: ignore[no-any-return]
        flight = self._flights[key] = asyncio.get_running_loop().create_future()
        answer: Any = _GROUNDED
        try:
            answer = await self._routed(work, False, consistency_var.get())
        finally:
            del self._flights[key]
            flight.set_result(answer)  # a result, never an exception: nobody may be waiting
        return answer  # type: ignore[no-any-return]

    async def _routed(self, work: Work[T], fresh: bool, consistency: Consistency | None) -> T:
        index, check, reason = self._choose(fresh, consistency)
        if index is not None:
            job = self._checked(work, index, consistency) if check else work
            self.in_flight[index] += 1
            try:
                result = await self._read_on(self.pools.replicas[index], job, timeout=self.replica_timeout)
            except _Behind:
                reason = "min_lsn_not_replayed"
            except PoolTimeout:
                # Our own pool had no free connection in time (this process is busy):
                # the replica is not at fault, so it stays in rotation.
                reason = "replica_pool_busy"
            except Exception as exc:
                if not is_connection_problem(exc):
                    raise _translated(exc) from exc
                self.health.report_failure(index)
                reason = "replica_failed"
                log.warning("replica %d failed (%s); retrying on the primary", index, type(exc).__name__)
            else:
                route("replica", reason)
                return result
            finally:
                self.in_flight[index] -= 1
        route("primary", reason)
        return await self._on_primary(work, fresh, consistency)

    async def _on_primary(self, work: Work[T], fresh: bool, consistency: Consistency | None) -> T:
        """The primary; when it is unreachable (and the read need not be fresh), each replica once."""
        last: Exception | None = None
        busy = False
        if fresh or self.health.usable(PRIMARY) or not self.pools.replicas:
            try:
                return await self._read_on(self.pools.primary, work, timeout=None)
            except Exception as exc:
                if fresh or not is_connection_problem(exc) or not self.pools.replicas:
                    raise _translated(exc) from exc
                busy = isinstance(exc, PoolTimeout)
                if not busy:  # a busy pool of ours says nothing about the primary
                    self.health.report_failure(PRIMARY)
                last = exc
        min_lsn = consistency.min_lsn if consistency is not None else None
        for i, pool in enumerate(self.pools.replicas):
            if busy and not self.health.usable(i):
                # The primary is up, only busy: never trade that for a lagging replica's
                # stale answer. (With the primary down, any replica beats no answer.)
                continue
            try:
                job = self._checked(work, i, consistency) if min_lsn is not None else work
                result = await self._read_on(pool, job, timeout=self.replica_timeout)
            except _Behind as exc:
                last = NexesError(Code.SERVICE_UNAVAILABLE, "no server that has your last write answers; retry")
                last.__cause__ = exc
                continue
            except Exception as exc:
                if not is_connection_problem(exc):
                    raise _translated(exc) from exc
                last = exc
                continue
            route("replica", "primary_failed")
            return result
        assert last is not None
        raise _translated(last) from last

    def _checked(self, work: Work[T], index: int, consistency: Consistency | None) -> Work[T]:
        """`work`, run only once replica `index` says it has replayed the request's min LSN."""
        assert consistency is not None and consistency.min_lsn is not None
        wanted = format_lsn(consistency.min_lsn)

        async def checked(conn: AsyncConnection[Any]) -> T:
            cur = await conn.execute(CAUGHT_UP, [wanted])
            row = await cur.fetchone()
            if row is not None and row[1] is not None:
                self.health.note_lsn(index, parse_lsn(row[1]) or 0)
            if row is None or not row[0]:
                raise _Behind
            consistency.replicas_caught_up.add(index)
            return await work(conn)

        return checked

    async def write(self, work: Work[T]) -> T:
        """Run `work` on the primary. A deadlock or serialization failure rolled the whole
        transaction back, so `work` runs again (tenacity: 3 tries, short jittered waits).
        With a request's Consistency set, the primary's WAL position after the commit
        is recorded there."""
        consistency = consistency_var.get()
        job = work if consistency is None else self._recording(work, consistency)
        route("primary", "write")
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(errors.TransactionRollback),
                stop=stop_after_attempt(3),
                wait=wait_random(0.01, 0.1),
                reraise=True,
            ):
                with attempt:
                    return await self._run(self.pools.primary, job, timeout=None)
        except Exception as exc:
            raise _translated(exc) from exc
        raise AssertionError("unreachable: tenacity reraises")

    @staticmethod
    def _recording(work: Work[T], consistency: Consistency) -> Work[T]:
        async def recording(conn: AsyncConnection[Any]) -> T:
            result = await work(conn)
            # The connection is in autocommit mode and `work` committed its own
            # transaction: this position is at or past the commit record.
            cur = await conn.execute(LSN_AFTER_COMMIT)
            row = await cur.fetchone()
            if row is not None:
                consistency.note_write(parse_lsn(row[0]) or 0)
            return result

        return recording

    def analyst_replica(self) -> int | None:
        """A healthy replica for analyst work (reports, exports): least in flight."""
        if not self.pools.analyst:
            return None
        return self.pick_replica()

    async def analyst(self, work: Work[T]) -> T:
        """Run `work` under the analyst role on a healthy replica; never on the primary:
        SERVICE_UNAVAILABLE when no replica can serve."""
        async with self.analyst_connection() as conn:
            return await work(conn)

    @asynccontextmanager
    async def analyst_connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection under the analyst role to a healthy replica, for as long as the
        block runs (a streamed export); SERVICE_UNAVAILABLE when there is none."""
        tried: set[int] = set()
        busy = False
        while True:
            index = self.analyst_replica()
            if index is None or index in tried:
                if busy:
                    route("none", "analyst_pool_busy")
                    raise NexesError(Code.SERVICE_UNAVAILABLE, ANALYSTS_BUSY)
                route("none", "analyst_no_healthy_replica")
                raise NexesError(Code.SERVICE_UNAVAILABLE, NO_REPLICA)
            tried.add(index)
            try:
                cm = self.pools.analyst[index].connection(timeout=self.replica_timeout)
                conn = await cm.__aenter__()
            except PoolTimeout:
                # The analysts' own pool is full: their queue, not the replica's fault. It
                # stays in rotation for the SPA's reads (the bulkhead's point).
                busy = True
                continue
            except Exception as exc:
                if not is_connection_problem(exc):
                    raise _translated(exc) from exc
                self.health.report_failure(index)
                continue
            route("replica", "analyst")
            self.in_flight[index] += 1
            try:
                yield conn
            except BaseException as exc:
                await cm.__aexit__(type(exc), exc, exc.__traceback__)
                if isinstance(exc, Exception) and (translated := translate(exc)) is not None:
                    raise translated from exc
                raise
            else:
                await cm.__aexit__(None, None, None)
            finally:
                self.in_flight[index] -= 1
            return

    async def _read_on(self, pool: AsyncConnectionPool, work: Work[T], *, timeout: float | None) -> T:
        """A read on `pool`, once more when the pooled connection was broken: a server
        restart leaves such connections behind, so the pool first checks all its idle
        ones. Only reads: a write whose connection broke may have committed."""
        try:
            return await self._run(pool, work, timeout=timeout)
        except PoolTimeout:
            raise
        except Exception as exc:
            if not is_connection_problem(exc):
                raise
        await pool.check()
        return await self._run(pool, work, timeout=timeout)

    @staticmethod
    async def _run(pool: AsyncConnectionPool, work: Work[T], *, timeout: float | None) -> T:
        async with pool.connection(timeout=timeout) as conn:
            return await work(conn)


# What a shared read's followers are told when it failed: read on your own.
_GROUNDED: Any = object()


def _translated(exc: Exception) -> Exception:
    return translate(exc) or exc


class AnalystRouter(Router):
    """The router of a caller whose every read runs as the analyst (nexes.auth: an analyst
    who may not write): reads on the analyst pools of healthy replicas, never the primary;
    writes refused. Shares the replica health and load counts of the router it wraps."""

    def __init__(self, base: Router) -> None:
        super().__init__(base.pools, base.health, base.replica_timeout)
        self.in_flight = base.in_flight

    async def read(self, work: Work[T], *, fresh: bool = False, shared: Hashable | None = None) -> T:
        return await self.analyst(work)  # an analyst's reads are ad hoc: never shared

    async def write(self, work: Work[T]) -> T:
        raise NexesError(Code.FORBIDDEN, "analysts read only; writes need the operator or admin role")

"""Read routing: queries to a healthy replica, fresh reads and writes to the primary.

The health policy is a seam (`ReplicaHealth`): the default only remembers replicas
that just failed a connection; the lag-aware monitor plugs in there. A read that
fails on a replica for a connection reason is retried once on the primary.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from psycopg import AsyncConnection, errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random

from nexes.db.pools import Pools
from nexes.errors import Code, NexesError

log = logging.getLogger(__name__)
T = TypeVar("T")
Work = Callable[[AsyncConnection[Any]], Awaitable[T]]


PRIMARY = -1  # the primary's index for the health policy


class ReplicaHealth(Protocol):
    def usable(self, index: int) -> bool: ...

    def report_failure(self, index: int) -> None: ...


class PassiveHealth:
    """A server (replica index, or PRIMARY) that failed a connection sits out `cooldown` seconds."""

    def __init__(self, cooldown: float = 5.0) -> None:
        self.cooldown = cooldown
        self._down_until: dict[int, float] = {}

    def usable(self, index: int) -> bool:
        return self._down_until.get(index, 0.0) <= time.monotonic()

    def report_failure(self, index: int) -> None:
        self._down_until[index] = time.monotonic() + self.cooldown


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


def translate(exc: BaseException) -> NexesError | None:
    """Driver errors as the registry's codes, in this one place."""
    if isinstance(exc, errors.LockNotAvailable):
        return NexesError(Code.TIMEOUT, "the data is locked by other work (an import?) past the lock timeout; retry")
    if isinstance(exc, errors.TransactionRollback):
        return NexesError(Code.SERVICE_UNAVAILABLE, "the write collided with concurrent writes; retry shortly")
    if isinstance(exc, errors.QueryCanceled):
        return NexesError(Code.TIMEOUT, "the query ran past its statement timeout; narrow the filter or page size")
    if isinstance(exc, PoolTimeout):
        return NexesError(Code.SERVICE_UNAVAILABLE, "no database connection was free in time; retry shortly")
    if isinstance(exc, errors.OperationalError):
        return NexesError(Code.SERVICE_UNAVAILABLE, "the database is unreachable; retry shortly")
    return None


class Router:
    """Chooses the server for each unit of database work."""

    def __init__(self, pools: Pools, health: ReplicaHealth | None = None, replica_timeout: float = 1.0) -> None:
        self.pools = pools
        self.health: ReplicaHealth = health or PassiveHealth()
        self.replica_timeout = replica_timeout
        self._turn = itertools.count()

    def pick_replica(self) -> int | None:
        """Round-robin over the replicas the health policy allows; None sends reads to the primary."""
        count = len(self.pools.replicas)
        if not count:
            return None
        start = next(self._turn)
        for offset in range(count):
            index = (start + offset) % count
            if self.health.usable(index):
                return index
        return None

    async def read(self, work: Work[T], *, fresh: bool = False) -> T:
        """Run `work` on a replica (or on the primary when `fresh` or none is usable).

        A replica that fails for a connection reason sends the read to the primary; when
        the primary is unreachable too, every replica gets one last try, since the first
        failure may have been no more than a stale pooled connection.
        """
        index = None if fresh else self.pick_replica()
        if index is not None:
            try:
                return await self._read_on(self.pools.replicas[index], work, timeout=self.replica_timeout)
            except Exception as exc:
                if not is_connection_problem(exc):
                    raise _translated(exc) from exc
                self.health.report_failure(index)
                log.warning("replica %d failed (%s); retrying on the primary", index, type(exc).__name__)
        last: Exception | None = None
        if fresh or self.health.usable(PRIMARY) or not self.pools.replicas:
            try:
                return await self._read_on(self.pools.primary, work, timeout=None)
            except Exception as exc:
                if fresh or not is_connection_problem(exc) or not self.pools.replicas:
                    raise _translated(exc) from exc
                self.health.report_failure(PRIMARY)
                last = exc
        for pool in self.pools.replicas:
            try:
                return await self._read_on(pool, work, timeout=self.replica_timeout)
            except Exception as exc:
                if not is_connection_problem(exc):
                    raise _translated(exc) from exc
                last = exc
        assert last is not None
        raise _translated(last) from last

    async def write(self, work: Work[T]) -> T:
        """Run `work` on the primary. A deadlock or serialization failure rolled the whole
        transaction back, so `work` runs again (tenacity: 3 tries, short jittered waits)."""
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(errors.TransactionRollback),
                stop=stop_after_attempt(3),
                wait=wait_random(0.01, 0.1),
                reraise=True,
            ):
                with attempt:
                    return await self._run(self.pools.primary, work, timeout=None)
        except Exception as exc:
            raise _translated(exc) from exc
        raise AssertionError("unreachable: tenacity reraises")

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


def _translated(exc: Exception) -> Exception:
    return translate(exc) or exc

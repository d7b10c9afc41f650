"""The monitor: the router's health policy, and everything /api/health shows.

A background task probes the primary and every replica directly (not through
PgBouncer, which queues clients of a dead server instead of failing them), as
`nexes_monitor` (NEXES_MONITOR_URL, NEXES_MONITOR_REPLICA_URLS), over ONE connection
per server kept open from probe to probe, with short timeouts, every
`replica_probe_interval` seconds. The other checks it is given (Redis, Typesense,
search) run at the same interval on the same event loop, in a task of their own so a
slow check never delays the routing verdicts. /api/health answers from the last rounds
and opens no connection of its own: a burst of health calls costs the servers nothing.

Lag is docs/design.md §5's: 0 once a replica's replay LSN has reached the primary's
current LSN, otherwise the time since its last replayed transaction. A replica leaves
rotation when it refuses or fails a probe, when two probes in a row time out, or when it
is past `replica_max_lag` on two probes in a row; one good probe brings it back. Two
timeouts, because one late answer on saturated cores is not a dead server. Two lagging
probes, because a WAL record written between the primary's probe and the replica's (a
checkpoint, a standby snapshot) would make an idle, caught-up replica look as old as its
last transaction for one probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import psycopg

from nexes.db.connect import probes
from nexes.db.connect.lsn import parse_lsn
from nexes.db.connect.probes import ProbeError, ServerState
from nexes.db.connect.router import PRIMARY, PassiveHealth
from nexes.metrics import REPLICA_IN_ROTATION, REPLICA_LAG
from nexes.settings import MONITOR_ROLE, Settings

log = logging.getLogger(__name__)

State = Literal["unknown", "healthy", "lagging", "unreachable"]


@dataclass
class ReplicaStatus:
    name: str
    state: State = "unknown"
    lsn: int | None = None
    lsn_text: str | None = None
    lag_seconds: float | None = None
    replay_paused: bool | None = None
    error: ProbeError | None = None
    over_threshold: int = 0  # consecutive probes past the threshold
    timeouts: int = 0  # consecutive probes that timed out
    checked_at: float = 0.0  # time.monotonic() of the last probe

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "state": self.state,
            "reachable": self.state in ("healthy", "lagging"),
            "in_rotation": self.state == "healthy",
        }
        if self.lag_seconds is not None:
            out["lag_seconds"] = round(self.lag_seconds, 3)
        if self.lsn_text is not None:
            out["lsn"] = self.lsn_text
        if self.replay_paused is not None:
            out["replay_paused"] = self.replay_paused
        if self.error is not None:
            out["error"] = self.error.as_dict()
        return out


class Check(Protocol):
    """One more dependency the monitor's round probes (Redis, Typesense, search).

    `probe` keeps its client open between calls, bounds its own waits, and returns what
    health may show: no addresses, no driver text."""

    name: str

    async def probe(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


@dataclass
class CheckResult:
    report: dict[str, Any] = field(default_factory=lambda: {"reachable": False, "state": "unknown"})
    checked_at: float = 0.0


class _Probe:
    """One direct connection to one server, kept open from probe to probe and re-made
    only after a failure."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def fetch(self, query: Any, params: dict[str, Any] | None = None) -> tuple[Any, ...]:
        task = asyncio.ensure_future(self._fetch(query, params))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout)
            if not done:
                await self._abandon(task)
                raise TimeoutError
            return task.result()
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable):
            raise  # the statement failed, the connection is fine
        except BaseException:
            await self._abandon(task)
            await self.close()
            raise

    @staticmethod
    async def _abandon(task: asyncio.Future[Any]) -> None:
        """Stop a probe that did not answer in time, within a fraction of a second.

        Not `asyncio.wait_for`, which waits for the cancelled probe: psycopg answers a
        cancellation by asking the server to cancel the query and waiting up to 5 s for it
        to end, so a hung server would hold the monitor's round that long. A second
        cancellation makes psycopg close the connection at once (tested against a
        replica stopped with SIGSTOP)."""
        for _ in range(2):
            if task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: the caller raises its own

    async def _fetch(self, query: Any, params: dict[str, Any] | None) -> tuple[Any, ...]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url,
                autocommit=True,
                prepare_threshold=None,
                application_name="nexes-monitor",
                connect_timeout=max(1, round(self.timeout)),
            )
        cur = await self._conn.execute(query, params)
        row = await cur.fetchone()
        assert row is not None
        return tuple(row)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


class ReplicaMonitor:
    """Implements the router's `ReplicaHealth` from the probes' results, and keeps every
    server's and check's last state for /api/health."""

    def __init__(
        self,
        primary_url: str,
        replica_probe_urls: list[str],
        *,
        max_lag: float,
        interval: float,
        timeout: float,
        passive: PassiveHealth | None = None,
    ) -> None:
        self.max_lag = max_lag
        self.interval = interval
        self.timeout = timeout
        self.passive = passive or PassiveHealth()
        self._primary = _Probe(primary_url, timeout)
        self._replicas = [_Probe(url, timeout) for url in replica_probe_urls]
        self.primary = ServerState("primary")
        self.status = [ReplicaStatus(f"replica-{i}") for i in range(len(replica_probe_urls))]
        self.primary_lsn: int | None = None
        self.checks: list[Check] = []
        self.ticks: list[Callable[[], None]] = []
        self.results: dict[str, CheckResult] = {}
        self._servers_round = asyncio.Lock()
        self._checks_round = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @classmethod
    def for_settings(cls, settings: Settings) -> ReplicaMonitor:
        """Probes go as nexes_monitor to NEXES_MONITOR_URL and NEXES_MONITOR_REPLICA_URLS
        (direct). A server without one is probed through its ordinary URL as nexes_monitor
        (PgBouncer's, when that is all the process is given): never as the owner."""
        from nexes.db.connect.conninfo import for_role

        def fallback(url: str) -> str:
            return for_role(url, settings, MONITOR_ROLE, application_name="nexes-monitor")

        primary = settings.monitor_url or fallback(settings.primary_url)
        replicas = [
            settings.monitor_replica_urls[i] if i < len(settings.monitor_replica_urls) else fallback(url)
            for i, url in enumerate(settings.replica_urls)
        ]
        return cls(
            primary,
            replicas,
            max_lag=settings.replica_max_lag,
            interval=settings.replica_probe_interval,
            timeout=settings.replica_probe_timeout,
        )

    def add_check(self, check: Check) -> None:
        """Probe `check` in every round from now on (before `start`)."""
        self.checks.append(check)
        self.results[check.name] = CheckResult()

    # -- ReplicaHealth -------------------------------------------------------------

    def usable(self, index: int) -> bool:
        if index == PRIMARY:
            return self.passive.usable(index)
        return self.status[index].state == "healthy" and self.passive.usable(index)

    def report_failure(self, index: int) -> None:
        self.passive.report_failure(index)

    def known_lsn(self, index: int) -> int | None:
        return self.status[index].lsn

    def note_lsn(self, index: int, lsn: int) -> None:
        status = self.status[index]
        if status.lsn is None or lsn > status.lsn:
            status.lsn = lsn

    # -- probing ------------------------------------------------------------------

    async def probe_once(self) -> None:
        """One round of both: the servers (the primary, then every replica at once) and the checks."""
        await asyncio.gather(self.probe_servers(), self.probe_checks())

    async def probe_servers(self) -> None:
        async with self._servers_round:
            await self._probe_servers()
        for tick in self.ticks:
            tick()

    def add_tick(self, tick: Callable[[], None]) -> None:
        """Call `tick` after every round of the servers (gauges written from the process's state)."""
        self.ticks.append(tick)

    async def probe_checks(self) -> None:
        """The checks, on a loop of their own: a slow one never delays the servers' verdicts
        the router goes by."""
        async with self._checks_round:
            await asyncio.gather(*(self._run_check(c) for c in self.checks))

    async def refresh(self) -> None:
        """One round now, over the connections already open (tests, and a caller that
        must see a change at once rather than within an interval)."""
        await self.probe_once()

    async def _probe_servers(self) -> None:
        primary_text = await self._probe_primary()
        await asyncio.gather(*(self._probe_replica(i, primary_text) for i in range(len(self._replicas))))

    async def _probe_primary(self) -> str | None:
        state, started = self.primary, time.perf_counter()
        lsn_text: str | None
        try:
            lsn_text, in_recovery = await self._primary.fetch(probes.PRIMARY)
        except (OSError, psycopg.Error, TimeoutError) as exc:
            state.reachable, state.error, state.lsn = False, probes.classify(exc), None
            log.warning("monitor: the primary did not answer (%s)", state.error.code)
            lsn_text = None
        else:
            if in_recovery:
                state.reachable, state.error, lsn_text = False, probes.NOT_PRIMARY, None
            else:
                state.reachable, state.error, state.lsn = True, None, lsn_text
                self.primary_lsn = parse_lsn(lsn_text)
                await self._probe_schema(state)
        state.probe_ms = round((time.perf_counter() - started) * 1000, 1)
        state.checked_at = time.monotonic()
        return lsn_text

    async def _probe_schema(self, state: ServerState) -> None:
        try:
            (state.schema_version,) = await self._primary.fetch(probes.SCHEMA_VERSION)
            state.schema_error = None
        except psycopg.errors.UndefinedTable:
            state.schema_version, state.schema_error = 0, None  # never migrated
        except (OSError, psycopg.Error, TimeoutError) as exc:
            state.schema_version, state.schema_error = None, probes.classify(exc)

    async def _probe_replica(self, index: int, primary_text: str | None) -> None:
        status = self.status[index]
        before = status.state
        try:
            lsn_text, lag, paused = await self._replicas[index].fetch(
                probes.REPLICA, {"primary_lsn": primary_text or "0/0"}
            )
        except (OSError, psycopg.Error, TimeoutError) as exc:
            status.error = probes.classify(exc)
            status.timeouts = status.timeouts + 1 if isinstance(exc, TimeoutError) else 0
            if status.state == "healthy" and status.timeouts == 1:
                # One late answer on saturated cores is not a dead server: a second timeout
                # in a row (or any other failure) takes the replica out; real queries that
                # fail take it out at once through the passive health.
                log.warning("replica %s: a probe timed out; it stays in rotation unless the next one does", status.name)
            else:
                status.state, status.over_threshold, status.lag_seconds = "unreachable", 0, None
        else:
            status.error, status.replay_paused, status.timeouts = None, paused, 0
            status.lsn_text = lsn_text
            if lsn_text is not None:
                status.lsn = max(status.lsn or 0, parse_lsn(lsn_text) or 0)
            # Without the primary's position, the lag is unknown: keep the last verdict.
            if primary_text is not None:
                status.lag_seconds = float(lag)
                status.over_threshold = status.over_threshold + 1 if lag > self.max_lag else 0
                status.state = "lagging" if status.over_threshold >= 2 else "healthy"
            elif status.state in ("unknown", "unreachable"):
                status.state = "healthy"
        status.checked_at = time.monotonic()
        REPLICA_IN_ROTATION.labels(status.name).set(1 if status.state == "healthy" else 0)
        if status.lag_seconds is not None:
            REPLICA_LAG.labels(status.name).set(status.lag_seconds)
        if status.state != before:
            log.warning("replica %s: %s -> %s (lag %s s)", status.name, before, status.state, status.lag_seconds)

    async def _run_check(self, check: Check) -> None:
        result = self.results[check.name]
        try:
            # The check bounds its own waits; this bounds a check that forgot to.
            result.report = await asyncio.wait_for(check.probe(), self.timeout * 3 + 1)
        except Exception as exc:
            error = probes.classify_socket(exc)
            log.warning("monitor: check %s failed (%s)", check.name, error.code)
            result.report = {"reachable": False, "error": error.as_dict()}
        result.checked_at = time.monotonic()

    async def run(self, probe: Callable[[], Awaitable[None]]) -> None:
        """`probe` until stopped, one round per interval."""
        while not self._stopping:
            started = time.monotonic()
            try:
                await probe()
            except Exception:  # the monitor must outlive any surprise
                log.exception("monitor: probe round failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def start(self) -> None:
        """One round now (so the first requests route on facts), then the background task."""
        await self.probe_once()
        if not self.primary.reachable or any(s.state == "unreachable" for s in self.status):
            await self.probe_once()  # a cold first connection may just have been slow
        self._tasks = [
            asyncio.create_task(self.run(self.probe_servers), name="nexes-monitor-servers"),
            asyncio.create_task(self.run(self.probe_checks), name="nexes-monitor-checks"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        self._stopping = True
        # Python 3.11's wait_for can swallow a cancellation that lands as its inner
        # call finishes; the flag ends the loop then, and the cancel is repeated.
        for task in tasks:
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.5)
        for probe in (self._primary, *self._replicas):
            await probe.close()
        for check in self.checks:
            with contextlib.suppress(Exception):
                await check.aclose()

    # -- what health shows ----------------------------------------------------------

    def stale_after(self) -> float:
        """Seconds after which a last probe no longer stands for the present."""
        return self.interval * 3 + self.timeout * 4 + 1

    def fresh(self, checked_at: float) -> bool:
        return checked_at > 0 and time.monotonic() - checked_at <= self.stale_after()

    def primary_report(self) -> dict[str, Any]:
        out = self.primary.as_dict()
        if not self.fresh(self.primary.checked_at):
            out.update(reachable=False, error=probes.STALE.as_dict())
        return self._aged(out, self.primary.checked_at)

    def describe(self, index: int) -> dict[str, Any]:
        status = self.status[index]
        out = status.describe()
        out["in_rotation"] = self.usable(index)
        if not self.fresh(status.checked_at):
            out.update(reachable=False, in_rotation=False, error=probes.STALE.as_dict())
        return self._aged(out, status.checked_at)

    def check_report(self, name: str) -> dict[str, Any]:
        result = self.results[name]
        out = dict(result.report)
        if not self.fresh(result.checked_at):
            out.update(reachable=False, error=probes.STALE.as_dict())
        return self._aged(out, result.checked_at)

    @staticmethod
    def _aged(out: dict[str, Any], checked_at: float) -> dict[str, Any]:
        if checked_at:
            out["checked_ago_seconds"] = round(time.monotonic() - checked_at, 3)
        return out

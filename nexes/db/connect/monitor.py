"""The replica lag monitor: the router's health policy.

A background task probes the primary and every replica directly (not through
PgBouncer, which queues clients of a dead server instead of failing them), with
short timeouts, every `replica_probe_interval` seconds. Lag is docs/design.md §5's: 0 once
a replica's replay LSN has reached the primary's current LSN, otherwise the time
since its last replayed transaction. A replica that is unreachable, or past
`replica_max_lag` on two probes in a row, leaves rotation; one good probe brings it
back. Two probes, because a WAL record written between the primary's probe and the
replica's (a checkpoint, a standby snapshot) would make an idle, caught-up replica
look as old as its last transaction for one probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import psycopg

from nexes.db.connect.lsn import parse_lsn
from nexes.db.connect.probes import REPLICA as REPLICA_PROBE
from nexes.db.connect.router import PRIMARY, PassiveHealth
from nexes.metrics import REPLICA_IN_ROTATION, REPLICA_LAG
from nexes.settings import Settings

log = logging.getLogger(__name__)

State = Literal["unknown", "healthy", "lagging", "unreachable"]
PRIMARY_PROBE = "SELECT pg_current_wal_lsn()::text"


@dataclass
class ReplicaStatus:
    name: str
    state: State = "unknown"
    lsn: int | None = None
    lsn_text: str | None = None
    lag_seconds: float | None = None
    replay_paused: bool | None = None
    error: str | None = None
    over_threshold: int = 0  # consecutive probes past the threshold
    checked_at: float = 0.0  # time.monotonic() of the last probe

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "in_rotation": self.state == "healthy"}
        if self.lag_seconds is not None:
            out["monitor_lag_seconds"] = round(self.lag_seconds, 3)
        if self.lsn_text is not None:
            out["monitor_lsn"] = self.lsn_text
        if self.error is not None:
            out["monitor_error"] = self.error
        if self.checked_at:
            out["checked_ago_seconds"] = round(time.monotonic() - self.checked_at, 3)
        return out


class _Probe:
    """One direct connection to one server, re-made after any failure."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def fetch(self, query: Any, params: dict[str, Any] | None = None) -> tuple[Any, ...]:
        try:
            return await asyncio.wait_for(self._fetch(query, params), self.timeout)
        except BaseException:
            await self.close()
            raise

    async def _fetch(self, query: Any, params: dict[str, Any] | None) -> tuple[Any, ...]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, prepare_threshold=None, application_name="nexes-monitor"
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
    """Implements the router's `ReplicaHealth` from the probes' results."""

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
        self.passive = passive or PassiveHealth()
        self._primary = _Probe(primary_url, timeout)
        self._replicas = [_Probe(url, timeout) for url in replica_probe_urls]
        self.status = [ReplicaStatus(f"replica-{i}") for i in range(len(replica_probe_urls))]
        self.primary_lsn: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @classmethod
    def for_settings(cls, settings: Settings) -> ReplicaMonitor:
        """Probes go to NEXES_REPLICA_ADMIN_URLS (direct); a replica without one is probed
        through its NEXES_REPLICA_URLS entry, which is all the process can reach."""
        from nexes.db.connect.conninfo import for_role

        urls = [
            settings.replica_admin_urls[i]
            if i < len(settings.replica_admin_urls)
            else for_role(url, settings, "nexes_api", application_name="nexes-monitor")
            for i, url in enumerate(settings.replica_urls)
        ]
        return cls(
            settings.admin_url,
            urls,
            max_lag=settings.replica_max_lag,
            interval=settings.replica_probe_interval,
            timeout=settings.replica_probe_timeout,
        )

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
        """Probe the primary, then every replica at once; update each one's state."""
        primary_text: str | None = None
        try:
            (primary_text,) = await self._primary.fetch(PRIMARY_PROBE)
            self.primary_lsn = parse_lsn(primary_text)
        except (OSError, psycopg.Error, TimeoutError) as exc:
            log.warning("lag monitor: the primary did not answer (%s)", type(exc).__name__)
        await asyncio.gather(*(self._probe_replica(i, primary_text) for i in range(len(self._replicas))))

    async def _probe_replica(self, index: int, primary_text: str | None) -> None:
        status = self.status[index]
        before = status.state
        try:
            lsn_text, lag, paused = await self._replicas[index].fetch(
                REPLICA_PROBE, {"primary_lsn": primary_text or "0/0"}
            )
        except (OSError, psycopg.Error, TimeoutError) as exc:
            status.state, status.error, status.over_threshold = "unreachable", _short(exc), 0
            status.lag_seconds = None
        else:
            status.error, status.replay_paused = None, paused
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

    async def run(self) -> None:
        """Probe until stopped, one round per interval."""
        while not self._stopping:
            started = time.monotonic()
            try:
                await self.probe_once()
            except Exception:  # the monitor must outlive any surprise
                log.exception("lag monitor: probe round failed")
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    async def start(self) -> None:
        """One round now (so the first requests route on facts), then the background task."""
        if not self._replicas:
            return
        await self.probe_once()
        if any(s.state == "unreachable" for s in self.status):
            await self.probe_once()  # a cold first connection may just have been slow
        self._task = asyncio.create_task(self.run(), name="nexes-replica-monitor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        self._stopping = True
        # Python 3.11's wait_for can swallow a cancellation that lands as its inner
        # call finishes; the flag ends the loop then, and the cancel is repeated.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        for probe in (self._primary, *self._replicas):
            await probe.close()

    def describe(self, index: int) -> dict[str, Any]:
        out = self.status[index].describe()
        out["in_rotation"] = self.usable(index)
        return out


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]

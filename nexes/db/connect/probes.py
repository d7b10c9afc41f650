"""Direct probes of each server, with short timeouts: PgBouncer would queue a client
of a dead server instead of failing it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

PROBE_TIMEOUT = 2.0

# With the newest migration applied, which /api/health compares with the code's.
PRIMARY = (
    "SELECT pg_current_wal_lsn()::text, pg_is_in_recovery(), (SELECT coalesce(max(version), 0) FROM schema_migration)"
)
# A database never migrated has no history table: schema version 0.
PRIMARY_UNMIGRATED = "SELECT pg_current_wal_lsn()::text, pg_is_in_recovery(), 0"
# Lag per docs/design.md §5: 0 once replay reached the primary's position, otherwise the
# time since the last replayed transaction.
REPLICA = """
SELECT pg_last_wal_replay_lsn()::text,
       CASE WHEN pg_last_wal_replay_lsn() >= %(primary_lsn)s::pg_lsn THEN 0
            ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8,
       pg_is_wal_replay_paused()
"""


@dataclass
class ServerState:
    name: str
    reachable: bool
    lsn: str | None = None
    lag_seconds: float | None = None
    replay_paused: bool | None = None
    schema_version: int | None = None  # the primary's newest migration
    error: str | None = None
    probe_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


async def _query(url: str, query: str, params: dict[str, Any] | None = None) -> tuple[Any, ...]:
    conn = await psycopg.AsyncConnection.connect(
        url, connect_timeout=int(PROBE_TIMEOUT), autocommit=True, prepare_threshold=None
    )
    async with conn:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
    assert row is not None
    return row


async def probe_primary(url: str) -> ServerState:
    started = time.perf_counter()
    try:
        try:
            lsn, in_recovery, schema_version = await asyncio.wait_for(_query(url, PRIMARY), PROBE_TIMEOUT)
        except psycopg.errors.UndefinedTable:
            lsn, in_recovery, schema_version = await asyncio.wait_for(_query(url, PRIMARY_UNMIGRATED), PROBE_TIMEOUT)
    except (OSError, psycopg.Error, TimeoutError) as exc:
        return ServerState("primary", False, error=_short(exc), probe_ms=_ms(started))
    if in_recovery:
        return ServerState(
            "primary", False, lsn=lsn, error="the primary URL points at a standby", probe_ms=_ms(started)
        )
    return ServerState("primary", True, lsn=lsn, schema_version=schema_version, probe_ms=_ms(started))


async def probe_replica(name: str, url: str, primary_lsn: str | None) -> ServerState:
    started = time.perf_counter()
    try:
        lsn, lag, paused = await asyncio.wait_for(
            _query(url, REPLICA, {"primary_lsn": primary_lsn or "0/0"}), PROBE_TIMEOUT
        )
    except (OSError, psycopg.Error, TimeoutError) as exc:
        return ServerState(name, False, error=_short(exc), probe_ms=_ms(started))
    return ServerState(
        name,
        True,
        lsn=lsn,
        lag_seconds=round(lag, 3) if primary_lsn else None,
        replay_paused=paused,
        probe_ms=_ms(started),
    )


async def probe_all(primary_url: str, replica_urls: tuple[str, ...]) -> tuple[ServerState, list[ServerState]]:
    primary = await probe_primary(primary_url)
    replicas = await asyncio.gather(
        *(probe_replica(f"replica-{i}", url, primary.lsn) for i, url in enumerate(replica_urls))
    )
    return primary, list(replicas)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def ping(conn: psycopg.Connection[Any]) -> None:
    """One round trip: behind PgBouncer, the server connection is made only now."""
    conn.execute("SELECT 1")

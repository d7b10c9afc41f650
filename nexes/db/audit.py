"""The audit trail: who did what, one row per change, in the change's own transaction.

Writers pass an `Actor` (the token's `sub`, `cli:<os user>` for `nexes` commands,
`system:scheduler` for periodic jobs) and the request id down to here. The table is
append-only (migration 0031: INSERT and SELECT for the application roles, a trigger
refusing UPDATE, DELETE and TRUNCATE) and partitioned by month: retention drops whole
months, as the owner, in the partition job.
"""

from __future__ import annotations

import getpass
import logging
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg import sql as pgsql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from nexes.db.keyset import b64url
from nexes.db.sql import load
from nexes.observability import request_id_var

log = logging.getLogger(__name__)
_Q = load("audit")

# The largest page of the audit connection, whatever the settings say: rows carry JSON.
MAX_PAGE = 100
# Months of audit_event made ahead by the partition job (the migration made the first ones).
MONTHS_AHEAD = 3


@dataclass(frozen=True, slots=True)
class Actor:
    """Who writes, and under which request id: the first columns of every audit row."""

    name: str
    request_id: str | None = None


def scheduler() -> Actor:
    """Periodic jobs, under the job's request id when its message carried one."""
    return Actor("system:scheduler", request_id_var.get())


def cli() -> Actor:
    """A `nexes` command run by this operating-system user."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (a bare container)
        user = f"uid{os.getuid()}"
    return Actor(f"cli:{user}", request_id_var.get())


def entity_id(entity: str, key: int) -> str:
    """The API's global id of `entity` `key` (as nexes.resolvers.ids.global_id and the
    database's audit_global_id write it): entity_id is what a client already holds."""
    return b64url(f"{entity}:{key}".encode())


@dataclass(frozen=True, slots=True)
class AuditEventRow:
    id: int
    at: datetime
    actor: str
    action: str
    entity: str
    entity_id: str
    request_id: str | None
    changes: dict[str, Any]


def _params(by: Actor, action: str, entity: str, key: str, changes: dict[str, Any]) -> dict[str, Any]:
    return {
        "actor": by.name,
        "action": action,
        "entity": entity,
        "entity_id": key,
        "request_id": by.request_id,
        "changes": Jsonb(changes),
    }


async def record(
    conn: AsyncConnection[Any], by: Actor, action: str, *, entity: str, key: str, changes: dict[str, Any]
) -> None:
    """Write one audit row in the caller's transaction."""
    await conn.execute(_Q["record"], _params(by, action, entity, key, changes))


def record_sync(
    conn: psycopg.Connection[Any], by: Actor, action: str, *, entity: str, key: str, changes: dict[str, Any]
) -> None:
    """record, for the workers' and commands' blocking connections."""
    conn.execute(_Q["record"], _params(by, action, entity, key, changes))


async def record_orders(conn: AsyncConnection[Any], by: Actor, action: str) -> int:
    """One row per order the write path inserted or updated in this transaction
    (order_write's w_order); how many were written."""
    cur = await conn.execute(_Q["record_orders"], {"actor": by.name, "action": action, "request_id": by.request_id})
    return cur.rowcount


async def events_page(
    conn: AsyncConnection[Any],
    *,
    entity: str | None,
    entity_id: str | None,
    actor: str | None,
    since: datetime | None,
    until: datetime | None,
    before: tuple[datetime, int] | None,
    limit: int,
) -> list[AuditEventRow]:
    """Audit rows newest first, after the (at, id) keyset, filtered by what is given."""
    before_at, before_id = before if before is not None else (None, None)
    params = {
        "entity": entity,
        "entity_id": entity_id,
        "actor": actor,
        "since": since,
        "until": until,
        "before_at": before_at,
        "before_id": before_id,
        "limit": min(limit, MAX_PAGE + 1),
    }
    cur: AsyncCursor[AuditEventRow]
    async with conn.cursor(row_factory=class_row(AuditEventRow)) as cur:
        await cur.execute(_Q["events_page"], params)
        return await cur.fetchall()


def month_start(day: date) -> date:
    return date(day.year, day.month, 1)


def next_month(start: date) -> date:
    return date(start.year + (start.month == 12), start.month % 12 + 1, 1)


def ensure_months(conn: psycopg.Connection[Any], *, months_ahead: int, today: date | None = None) -> list[str]:
    """Make this month's partition and the next `months_ahead` (as the owner); the names made."""
    month = month_start(today or datetime.now(UTC).date())
    made = []
    for _ in range(months_ahead + 1):
        row = conn.execute(_Q["add_month"], {"month": month}).fetchone()
        if row is not None and row[0]:
            made.append(f"audit_event_{month.year}m{month.month:02d}")
        month = next_month(month)
    return made


def drop_expired(conn: psycopg.Connection[Any], *, retention_days: int, today: date | None = None) -> list[str]:
    """Drop the months that end `retention_days` or more before today (as the owner);
    the names dropped. A month goes whole, once its newest possible row is that old."""
    now = datetime.combine(today or datetime.now(UTC).date(), datetime.min.time(), UTC)
    cutoff = now - timedelta(days=retention_days)
    dropped = []
    for name, _, hi in conn.execute(_Q["months"]).fetchall():
        if hi > cutoff:
            break
        conn.execute(pgsql.SQL("DROP TABLE {}").format(pgsql.Identifier(name)))
        dropped.append(name)
    return dropped


def maintain(
    conn: psycopg.Connection[Any],
    by: Actor,
    *,
    retention_days: int,
    quarters_created: int = 0,
    months_ahead: int = MONTHS_AHEAD,
    today: date | None = None,
) -> tuple[list[str], list[str]]:
    """After the partition job made `quarters_created` quarters of the orders (as the owner):
    audit_event's months ahead made, its months past the retention dropped, and an audit
    row for each table whose partitions changed."""
    with conn.transaction():
        if quarters_created:
            quarters: dict[str, Any] = {"created": quarters_created}
            record_sync(conn, by, "maintainPartitions", entity="Partition", key="service_order", changes=quarters)
        made = ensure_months(conn, months_ahead=months_ahead, today=today)
        dropped = drop_expired(conn, retention_days=retention_days, today=today)
        if made or dropped:
            months: dict[str, Any] = {"created": made, "dropped": dropped, "retentionDays": retention_days}
            record_sync(conn, by, "maintainPartitions", entity="Partition", key="audit_event", changes=months)
    if dropped:
        log.info("audit retention: %d month(s) dropped (%s)", len(dropped), ", ".join(dropped))
    return made, dropped

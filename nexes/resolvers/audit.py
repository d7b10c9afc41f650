"""The audit trail: the actor of a request, audited job messages, and the admins' reading of it."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any, cast

from psycopg import AsyncConnection
from strawberry.scalars import JSON

from nexes.db import audit as db
from nexes.db.audit import Actor, AuditEventRow
from nexes.errors import bad_input
from nexes.resolvers.context import Info
from nexes.resolvers.pagination import PageArgs, build_page, page_request
from nexes.schema.audit import AuditEvent, AuditEventConnection

ORDER = "AUDIT_AT_DESC"
MAX_FILTER = 200  # the longest actor, entity or id the table holds


def actor(info: Info) -> Actor:
    """Who is asking (the token's `sub`) and under which request id: what every audit row records."""
    return Actor(info.context.viewer.subject, info.context.request_id or None)


async def send_audited(info: Info, send: Callable[[], Any], action: str, entity: str, key: str) -> None:
    """Send a job message with its audit row: the row commits only when the message was
    sent (Dramatiq's Redis client blocks, so the send runs in a thread)."""

    async def work(conn: AsyncConnection[Any]) -> None:
        async with conn.transaction():
            await db.record(conn, actor(info), action, entity=entity, key=key, changes={})
            await asyncio.to_thread(send)

    await info.context.router.write(work)


def to_event(row: AuditEventRow) -> AuditEvent:
    return AuditEvent(
        at=row.at,
        actor=row.actor,
        action=row.action,
        entity=row.entity,
        entity_id=row.entity_id,
        request_id=row.request_id,
        changes=cast(JSON, row.changes),
    )


def _filter(value: str | None, field: str) -> str | None:
    if value is not None and not 1 <= len(value) <= MAX_FILTER:
        raise bad_input(f"{field} must be 1-{MAX_FILTER} characters", field=field)
    return value


async def audit_events(
    info: Info,
    *,
    first: int | None,
    after: str | None,
    entity: str | None,
    entity_id: str | None,
    actor: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> AuditEventConnection:
    """Admins only (the permission table): newest first, keyset on (at, id), at most
    db.MAX_PAGE rows a page. Read on the primary: an admin checking a change just made sees it."""
    ctx = info.context
    request = page_request(PageArgs(first, after), max_size=min(ctx.settings.max_page_size, db.MAX_PAGE))
    filters = {
        "entity": _filter(entity, "entity"),
        "entity_id": _filter(entity_id, "entityId"),
        "actor": _filter(actor, "actor"),
    }
    if since is not None and until is not None and until <= since:
        raise bad_input("`to` must be after `from`", field="to")
    before = None
    if request.cursor is not None:
        position = ctx.cursors.decode(request.cursor, ORDER, dt.datetime)
        before = (position.value, position.id)

    async def work(conn: AsyncConnection[Any]) -> list[AuditEventRow]:
        return await db.events_page(conn, **filters, since=since, until=until, before=before, limit=request.limit + 1)

    rows = await ctx.router.read(work, fresh=True) if request.limit else []
    edges, page_info = build_page(rows, request, node=to_event, cursor=lambda r: ctx.cursors.encode(ORDER, r.at, r.id))
    return AuditEventConnection(edges=edges, page_info=page_info)

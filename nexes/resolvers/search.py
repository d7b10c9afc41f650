"""Search: validate, ask the engine (Typesense or the fallback), load the hits from
PostgreSQL by id in one batched statement, keep the engine's order."""

from __future__ import annotations

import logging
from typing import Any

from psycopg import AsyncConnection

from nexes.db import orders as orders_db
from nexes.errors import Code, bad_input
from nexes.resolvers.audit import send_audited
from nexes.resolvers.context import Info
from nexes.resolvers.orders import hydrate
from nexes.resolvers.selection import selected_paths
from nexes.schema import search as gql
from nexes.schema.connections import PageInfo
from nexes.schema.payloads import user_error
from nexes.schema.types import ServiceOrder
from nexes.search.engine import Found, SearchQuery, checked_text, service_for

log = logging.getLogger(__name__)
CURSOR_ORDER = "SEARCH"
DEFAULT_PAGE = 20


def _offset(info: Info, after: str | None) -> int:
    if after is None:
        return 0
    value = info.context.cursors.decode(after, CURSOR_ORDER, str).value
    if not str(value).isdigit():
        raise bad_input("the cursor is malformed", field="after")
    return int(value)


def _query(info: Info, text: str, first: int | None, after: str | None, flt: gql.SearchFilter | None) -> SearchQuery:
    size = DEFAULT_PAGE if first is None else first
    max_size = info.context.settings.max_page_size
    if not 0 <= size <= max_size:
        raise bad_input(f"first must be between 0 and {max_size}, not {size}", field="first")
    flt = flt or gql.SearchFilter()
    if flt.created_from and flt.created_to and flt.created_from > flt.created_to:
        raise bad_input("createdFrom must not be after createdTo", field="filter.createdFrom")
    return SearchQuery(
        text=checked_text(text),
        statuses=tuple(s.value for s in flt.status or ()),
        created_from=flt.created_from,
        created_to=flt.created_to,
        offset=_offset(info, after),
        size=size,
    )


async def search(
    info: Info, text: str, first: int | None, after: str | None, flt: gql.SearchFilter | None
) -> gql.SearchConnection:
    ctx = info.context
    query = _query(info, text, first, after, flt)
    found = await service_for(ctx.settings).search(query, ctx.router) if query.size else None
    hits = found.hits if found else []
    paths = selected_paths(info)

    async def load(conn: AsyncConnection[Any]) -> dict[int, ServiceOrder]:
        rows = await orders_db.orders_by_id(conn, [h.order_id for h in hits])
        nodes = await hydrate(
            conn, rows, customers="edges.node.customer" in paths, lines="edges.node.lines" in paths, archived=True
        )
        return {row.id: node for row, node in zip(rows, nodes, strict=True)}

    # Loaded through the router like every read, so X-Nexes-Min-LSN holds for hits too.
    nodes = await ctx.router.read(load) if hits else {}
    edges = []
    for i, hit in enumerate(hits):
        node = nodes.get(hit.order_id)
        if node is None:  # deleted since it was indexed; the sync removes it shortly
            continue
        cursor = ctx.cursors.encode(CURSOR_ORDER, str(query.offset + i + 1), 0)
        highlights = [gql.SearchHighlight(field=f, snippet=s) for f, s in hit.highlights]
        edges.append(gql.SearchEdge(cursor=cursor, node=node, score=hit.score, highlights=highlights))
    return _connection(found, query, edges)


def _connection(found: Found | None, query: SearchQuery, edges: list[gql.SearchEdge]) -> gql.SearchConnection:
    info = PageInfo(
        has_next_page=found.more if found else False,
        has_previous_page=query.offset > 0,
        start_cursor=edges[0].cursor if edges else None,
        end_cursor=edges[-1].cursor if edges else None,
    )
    return gql.SearchConnection(
        edges=edges,
        page_info=info,
        found=found.found if found else 0,
        found_exact=found.exact if found else True,
        engine=gql.SearchEngine(found.engine if found else "TYPESENSE"),
    )


async def reindex_search(info: Info) -> gql.ReindexSearchPayload:
    """Send the reindex actor (admins only)."""
    if not info.context.viewer.is_admin:  # the permission table refuses others first; kept as a backstop
        error = user_error(Code.FORBIDDEN, "reindexSearch needs the admin role")
        return gql.ReindexSearchPayload(queued=False, errors=[error])
    # Imported on first use: importing nexes.jobs configures the broker (a Redis client),
    # which an API process that never enqueues does not need.
    from nexes.jobs.search import reindex_search as actor

    try:
        collection = info.context.settings.typesense_collection
        await send_audited(info, actor.send, "reindexSearch", "SearchIndex", collection)
    except Exception as exc:
        log.warning("reindexSearch: could not enqueue (%s)", exc)
        error = user_error(Code.SERVICE_UNAVAILABLE, "the job queue is unreachable; retry shortly")
        return gql.ReindexSearchPayload(queued=False, errors=[error])
    return gql.ReindexSearchPayload(queued=True, errors=[])

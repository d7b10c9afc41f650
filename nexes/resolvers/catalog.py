"""Customers and stock items: name-ordered connections."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import strawberry
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import class_row

from nexes.db import catalog
from nexes.db.catalog import CatalogFilter, StockItemRow, Table
from nexes.errors import bad_input
from nexes.resolvers import orders
from nexes.resolvers.context import Info
from nexes.resolvers.ids import global_id
from nexes.resolvers.orders import PageSpec, to_customer
from nexes.resolvers.pagination import PageArgs, build_page, page_request
from nexes.resolvers.selection import selected_paths
from nexes.schema.connections import Edge, PageInfo
from nexes.schema.types import CustomerConnection, CustomerFilter, StockItem, StockItemConnection, StockItemFilter

MAX_TEXT = 200


def _text(value: str | None, field: str) -> str | None:
    if value is not None and len(value) > MAX_TEXT:
        raise bad_input(f"{field} is longer than {MAX_TEXT} characters", field=field)
    return value


def to_stock_item(row: StockItemRow) -> StockItem:
    return StockItem(id=strawberry.ID(global_id("StockItem", row.id)), sku=row.sku, name=row.name, on_hand=row.on_hand)


async def stock_items_by_id(conn: AsyncConnection[Any], _: None, ids: Sequence[int]) -> list[StockItem | None]:
    """The batch of node(id)'s StockItem loader."""
    found = {r.id: to_stock_item(r) for r in await catalog.stock_items_by_id(conn, ids)}
    return [found.get(i) for i in ids]


async def _connection(
    info: Info,
    table: Table,
    flt: CatalogFilter,
    page: PageArgs,
    node: Callable[[Any], Any],
    *,
    with_orders: PageSpec | None = None,
) -> tuple[list[Edge[Any]], PageInfo, Callable[[], Any]]:
    """A page of `table`; `with_orders` (customers): each shown customer's page of orders of
    that spec, read in the same round trip and handed to Customer.serviceOrders' batch."""
    ctx = info.context
    request = page_request(page, max_size=ctx.settings.max_page_size)
    order = f"{table.name.upper()}_NAME"
    keyset = ctx.cursors.decode(request.cursor, order, str) if request.cursor is not None else None

    async def work(conn: AsyncConnection[Any]) -> tuple[list[Any], dict[int, Any] | None]:
        backward = request.backward
        if with_orders is None:
            rows = await catalog.page(conn, table, flt, after=keyset, backward=backward, limit=request.limit + 1)
            return rows, None
        # The shown customers' ids (not the extra row's) select the pages, in the same statement.
        statement = catalog.page_statement(table, flt, after=keyset, backward=backward, limit=request.limit + 1)
        ids_of = catalog.page_statement(table, flt, after=keyset, backward=backward, limit=request.limit, ids_of=True)
        cursor: AsyncCursor[Any] = conn.cursor(row_factory=class_row(table.row))
        pages = await orders.packed_pages(conn, with_orders, ids_of, alongside=(cursor, *statement))
        return catalog.page_rows(await cursor.fetchall(), backward=backward), pages

    rows: list[Any] = []
    if request.limit:
        # Only read from here on: shared (Router.read) by everything the statements take.
        key = (_connection, table, flt, keyset, request.backward, request.limit, with_orders)
        rows, pages = await ctx.router.read(work, shared=key)
        if pages is not None:
            orders.read_ahead(info, with_orders, pages)  # type: ignore[arg-type]
    paths = selected_paths(info)  # a cursor is an HMAC: signed only when asked for
    edges, page_info = build_page(
        rows,
        request,
        node=node,
        cursor=lambda r: ctx.cursors.encode(order, r.name, r.id),
        edge_cursors="edges.cursor" in paths,
        page_cursors="pageInfo.startCursor" in paths or "pageInfo.endCursor" in paths,
    )

    async def counter() -> tuple[int, bool]:
        return await ctx.router.read(lambda conn: catalog.count(conn, table, flt, cap=ctx.settings.count_cap))

    return edges, page_info, counter


async def customers(info: Info, page: PageArgs, filter: CustomerFilter | None) -> CustomerConnection:
    flt = filter or CustomerFilter()
    spec = CatalogFilter(_text(flt.name_contains, "filter.nameContains"), _text(flt.code, "filter.code"))
    ahead = orders.customer_pages_ahead(info)
    edges, page_info, counter = await _connection(info, catalog.CUSTOMERS, spec, page, to_customer, with_orders=ahead)
    return CustomerConnection(edges=edges, page_info=page_info, _counter=counter)


async def stock_items(info: Info, page: PageArgs, filter: StockItemFilter | None) -> StockItemConnection:
    flt = filter or StockItemFilter()
    spec = CatalogFilter(
        _text(flt.name_contains, "filter.nameContains"), _text(flt.sku, "filter.sku"), flt.negative_only
    )
    edges, page_info, counter = await _connection(info, catalog.STOCK_ITEMS, spec, page, to_stock_item)
    return StockItemConnection(edges=edges, page_info=page_info, _counter=counter)

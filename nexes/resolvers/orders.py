"""Service-order queries: the keyset connection with its batched related rows, and lookups."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import orjson
import strawberry
from psycopg import AsyncConnection

from nexes import rules
from nexes.db import catalog
from nexes.db import orders as orders_db
from nexes.db.catalog import CustomerRow
from nexes.db.connect.session_tag import Statement
from nexes.db.keyset import Keyset
from nexes.db.orders import LineRow, OrderFilter, OrderRow
from nexes.db.rendering import Spec
from nexes.errors import NexesError, bad_input
from nexes.resolvers.context import Context, Info, batch_ahead
from nexes.resolvers.ids import global_id, parse_global_id
from nexes.resolvers.pagination import PageArgs, PageRequest, build_page, page_info, page_request
from nexes.resolvers.selection import edges_render_spec, node_render_spec, selected_paths
from nexes.schema.connections import Edge, PageInfo
from nexes.schema.rendered import RenderedEdges, edge_head
from nexes.schema.types import (
    STATUS_BY_NAME,
    Customer,
    ServiceOrder,
    ServiceOrderConnection,
    ServiceOrderFilter,
    ServiceOrderLine,
    ServiceOrderOrder,
    StockItem,
    orders_of_customers,
)

# The Python type of each sort column's value, for decoding cursors.
SORT_KIND: dict[str, type] = {"created_at": datetime, "updated_at": datetime, "total_amount": Decimal}


def order_filter(flt: ServiceOrderFilter | None) -> OrderFilter:
    """The GraphQL filter as the db layer's, validated."""
    if flt is None:
        return OrderFilter()
    customer_id = None
    if flt.customer_id is not None:
        customer_id = parse_global_id(flt.customer_id, "Customer", field="filter.customerId")
    prefix = flt.sod_number_prefix.strip() if flt.sod_number_prefix is not None else None
    if prefix is not None and not rules.SOD_NUMBER.fullmatch(prefix):
        raise bad_input(
            "sodNumberPrefix must be 1-40 characters of A-Z, a-z, 0-9 and '-'", field="filter.sodNumberPrefix"
        )
    if flt.created_from and flt.created_to and flt.created_from > flt.created_to:
        raise bad_input("createdFrom must not be after createdTo", field="filter.createdFrom")
    return OrderFilter(
        statuses=tuple(s.value for s in flt.status or ()),
        customer_id=customer_id,
        created_from=flt.created_from,
        created_to=flt.created_to,
        sod_number_prefix=prefix,
        include_archived=flt.include_archived,
    )


def to_customer(row: CustomerRow) -> Customer:
    return Customer(
        id=strawberry.ID(global_id("Customer", row.id)),
        code=row.code,
        name=row.name,
        row_id=row.id,
        orders_of=customer_orders,
    )


def to_line(row: LineRow) -> ServiceOrderLine:
    item = StockItem(
        id=strawberry.ID(global_id("StockItem", row.stock_item_id)), sku=row.sku, name=row.name, on_hand=row.on_hand
    )
    return ServiceOrderLine(line_no=row.line_no, stock_item=item, quantity=row.quantity, unit_price=row.unit_price)


def to_order(row: OrderRow, customer: Customer | None, lines: list[ServiceOrderLine]) -> ServiceOrder:
    return ServiceOrder(
        id=strawberry.ID(global_id("ServiceOrder", row.id)),
        sod_number=row.sod_number,
        status=STATUS_BY_NAME[row.status],
        created_at=row.created_at,
        updated_at=row.updated_at,
        total_amount=row.total_amount,
        currency=row.currency,
        description=row.description,
        customer=customer,  # type: ignore[arg-type]  # None only when the query did not select it
        lines=lines,
    )


# A rendered field's attribute and how its JSON value reads back into it (RenderedOrder).
_READ_BACK: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "id": ("id", strawberry.ID),
    "sodNumber": ("sod_number", str),
    "status": ("status", STATUS_BY_NAME.__getitem__),
    "createdAt": ("created_at", datetime.fromisoformat),
    "updatedAt": ("updated_at", datetime.fromisoformat),
    "totalAmount": ("total_amount", Decimal),
    "currency": ("currency", str),
    "description": ("description", str),
    "code": ("code", str),
    "name": ("name", str),
}


class RenderedOrder(ServiceOrder):
    """A ServiceOrder whose JSON its page's statement built for the selection `spec`
    (nexes.schema.rendered): a completer compiled for that selection puts the JSON into the
    answer as it is. Whatever reads one of its attributes instead (graphql-core's own path,
    a completer for another selection) gets the order read back from that JSON then: the
    selected fields, exactly as printed (the row holds no more, see nexes.db.orders._page_sql),
    and None for the others, which that selection never reads."""

    def __init__(self, rendered: str, spec: Spec, customer_id: int) -> None:  # not the dataclass's: built on first use
        self.__dict__.update(_rendered_json=rendered, _rendered_spec=spec, _customer_id=customer_id)

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__
        if name.startswith("__") or "_customer_id" not in state:
            raise AttributeError(name)
        customer_id: int = state.pop("_customer_id")
        values = orjson.loads(state["_rendered_json"])
        order: dict[str, Any] = dict.fromkeys(f.name for f in fields(ServiceOrder))
        order["lines"] = []
        for key, field, sub in state["_rendered_spec"]:
            if field == "customer" and sub is not None:
                customer: dict[str, Any] = dict.fromkeys(("id", "code", "name"))
                for inner_key, inner, _ in sub:
                    if inner != "__typename":
                        attr, read = _READ_BACK[inner]
                        customer[attr] = read(values[key][inner_key])
                order["customer"] = Customer(**customer, row_id=customer_id, orders_of=customer_orders)
            elif field != "__typename":
                attr, read = _READ_BACK[field]
                order[attr] = read(values[key])
        state.update(order)
        return getattr(self, name)


def _rendered_order(row: OrderRow, spec: Spec) -> RenderedOrder:
    assert row.rendered is not None  # the callers take rendered rows only
    return RenderedOrder(row.rendered, spec, row.customer_id)


def _joined_customer(r: OrderRow) -> Customer:
    return Customer(
        id=strawberry.ID(global_id("Customer", r.customer_id)),
        code=r.customer_code or "",
        name=r.customer_name or "",
        row_id=r.customer_id,
        orders_of=customer_orders,
    )


async def hydrate(
    conn: AsyncConnection[Any],
    rows: Sequence[OrderRow],
    *,
    customers: bool,
    lines: bool,
    archived: bool,
    line_rows: Sequence[LineRow] | None = None,
    render: Spec | None = None,
) -> list[ServiceOrder]:
    """Orders as GraphQL objects, with customers and lines in one batched statement each
    (`line_rows`: the lines, read already); a row the page rendered for `render` becomes a
    RenderedOrder, and only the rest are built here."""
    if render is not None and not lines:
        if all(r.rendered is not None for r in rows):
            return [_rendered_order(r, render) for r in rows]
        # A row the page did not render (rendering.printable) holds no more than its keys:
        # read those orders whole, as an unrendered page would have (live or archived: an
        # order is never deleted, so each is found).
        whole = {r.id: r for r in await orders_db.orders_by_id(conn, [r.id for r in rows if r.rendered is None])}
        return [
            RenderedOrder(r.rendered, render, r.customer_id)
            if r.rendered is not None
            else to_order(whole[r.id], _joined_customer(whole[r.id]) if customers else None, [])
            for r in rows
        ]
    by_customer: dict[int, Customer] = {}
    if customers and rows and rows[0].customer_name is not None:  # joined into the page query
        by_customer = {r.customer_id: _joined_customer(r) for r in rows}
    elif customers and rows:
        found = await catalog.customers_by_id(conn, {r.customer_id for r in rows})
        by_customer = {c.id: to_customer(c) for c in found}
    by_order: defaultdict[int, list[ServiceOrderLine]] = defaultdict(list)
    if lines and rows:
        if line_rows is None:
            line_rows = await orders_db.lines_of(conn, rows, archived=archived)
        for line in line_rows:
            by_order[line.order_id].append(to_line(line))
    return [to_order(r, by_customer.get(r.customer_id), by_order.get(r.id, [])) for r in rows]


async def orders_by_id(conn: AsyncConnection[Any], _: None, ids: Sequence[int]) -> list[ServiceOrder | None]:
    """The batch of node(id)'s ServiceOrder loader."""
    rows, lines = await orders_db.orders_with_lines_by_id(conn, ids)
    nodes = await hydrate(conn, rows, customers=True, lines=True, archived=True, line_rows=lines)
    found = {row.id: node for row, node in zip(rows, nodes, strict=True)}
    return [found.get(i) for i in ids]


async def customers_by_id(conn: AsyncConnection[Any], _: None, ids: Sequence[int]) -> list[Customer | None]:
    """The batch of node(id)'s Customer loader."""
    found = {r.id: to_customer(r) for r in await catalog.customers_by_id(conn, ids)}
    return [found.get(i) for i in ids]


def _midnight(value: datetime | None) -> bool:
    """None or a UTC midnight. A bound whose UTC time lies past Python's dates (9999-12-31T23:00
    at -05:00, 0001-01-01T00:30 at +01:00) is neither: the bounded count takes it, as the page
    does (PostgreSQL reads it); converting it raised OverflowError (INTERNAL on totalCount)."""
    if value is None:
        return True
    try:
        return value.astimezone(UTC).time() == time(0)
    except OverflowError:
        return False


def _day(value: datetime | None) -> date | None:
    return value.astimezone(UTC).date() if value is not None else None


async def _count(ctx: Context, flt: OrderFilter) -> tuple[int, bool]:
    """From dashboard_stat when the filter is whole UTC days and statuses; else a bounded count."""
    by_days = _midnight(flt.created_from) and _midnight(flt.created_to)
    if flt.customer_id is None and not flt.sod_number_prefix and by_days:
        total = await ctx.router.read(
            lambda conn: orders_db.count_from_stats(
                conn,
                statuses=flt.statuses,
                day_from=_day(flt.created_from),
                day_to=_day(flt.created_to),
                include_archived=flt.include_archived,
            )
        )
        return total, True
    settings = ctx.settings
    return await ctx.router.read(
        lambda conn: orders_db.count_orders(conn, flt, budget_ms=settings.count_budget_ms, cap=settings.count_cap)
    )


@dataclass(frozen=True)
class PageSpec:
    """One page's query, whatever the customer: the key of a batch of customers' pages."""

    flt: OrderFilter
    sort: str
    backward: bool
    after: Keyset | None
    limit: int  # the rows to read: the page's size, and one more when it must tell there is more
    shown: int  # the page's size
    want_customer: bool
    want_lines: bool
    render: Spec | None = None  # the nodes' selection, when PostgreSQL renders them
    # The edges are rendered whole (RenderedEdges): a fully rendered page needs no node objects.
    whole_edges: bool = False
    # Whole edges and no cursor: the page comes packed, one row (orders_db.packed_sql), its
    # edges' head this (rendered.edge_head).
    packed: str | None = None

    def rows(self) -> dict[str, Any]:
        """The keywords of orders_db's page functions that read this page's rows."""
        return {
            "backward": self.backward,
            "after": self.after,
            "limit": self.limit,
            "with_customer": self.want_customer,
            "render": self.render,
        }

    def packed_rows(self) -> dict[str, Any]:
        """`rows()` and the packed page's own (orders_db.packed_sql): its size and edges' head."""
        return {**self.rows(), "shown": self.shown, "head": self.packed}


Keyed = list[tuple[OrderRow, ServiceOrder | None]]  # None: see with_nodes


async def fetch_page(conn: AsyncConnection[Any], spec: PageSpec) -> Keyed | orders_db.Packed:
    if spec.packed is not None and spec.render is not None:
        packed = await orders_db.orders_page_packed(conn, spec.flt, spec.sort, **spec.packed_rows())
        if packed is not None:
            return packed
    rows = await orders_db.orders_page(conn, spec.flt, spec.sort, **spec.rows())
    return await with_nodes(conn, rows, spec)


async def with_nodes(conn: AsyncConnection[Any], rows: list[OrderRow], spec: PageSpec) -> Keyed:
    """Each row with its GraphQL object, related rows batched as the spec selects them; None
    for every row of a page whose edges are rendered whole (RenderedEdges makes them if asked)."""
    if spec.whole_edges and spec.render is not None and all(r.rendered is not None for r in rows):
        return [(r, None) for r in rows]
    nodes = await hydrate(
        conn,
        rows,
        customers=spec.want_customer,
        lines=spec.want_lines,
        archived=spec.flt.include_archived,
        render=spec.render,
    )
    return list(zip(rows, nodes, strict=True))


async def packed_pages(
    conn: AsyncConnection[Any],
    spec: PageSpec,
    customers: Sequence[int] | tuple[bytes, dict[str, Any]],
    alongside: Statement | None = None,
) -> dict[int, orders_db.Packed] | None:
    """The packed page of `spec` (its `packed` and `render` set) of each customer, by id: of
    these ids, or of those a statement selects, sent after `alongside` in one round trip
    (nexes.db.orders.orders_pages_packed_by_customer). None: read them row by row."""
    assert spec.packed is not None and spec.render is not None
    return await orders_db.orders_pages_packed_by_customer(
        conn, customers, spec.flt, spec.sort, **spec.packed_rows(), alongside=alongside
    )


async def fetch_customers_pages(
    conn: AsyncConnection[Any], spec: PageSpec, customer_ids: Sequence[int]
) -> list[Keyed | orders_db.Packed]:
    """The page of each customer, for Customer.serviceOrders under a list of customers:
    one statement for all the pages, one for all their lines."""
    if spec.packed is not None and spec.render is not None:
        packed = await packed_pages(conn, spec, customer_ids)
        if packed is not None:
            return [packed[cid] for cid in customer_ids]
    grouped = await orders_db.orders_pages_by_customer(conn, customer_ids, spec.flt, spec.sort, **spec.rows())
    keyed = await with_nodes(conn, [row for group in grouped.values() for row in group], spec)
    by_id = {row.id: node for row, node in keyed}
    return [[(row, by_id[row.id]) for row in grouped[cid]] for cid in customer_ids]


async def connection(
    info: Info, flt: OrderFilter, order: ServiceOrderOrder | None, request: PageRequest
) -> ServiceOrderConnection:
    """Query.serviceOrders: one page of orders."""
    page = _Page.of(info, flt, order, request)
    keyed: Keyed | orders_db.Packed = []
    if request.limit:
        # The page's rows and nodes are only read from here on: shared (Router.read) by spec.
        keyed = await info.context.router.read(lambda conn: fetch_page(conn, page.spec), shared=(fetch_page, page.spec))
    return page.connection(keyed, flt)


async def customers_connections(info: Info, page: _Page, customer_ids: Sequence[int]) -> list[ServiceOrderConnection]:
    """The same page for each customer, in one statement. A whole list of customers (the
    compiled executor's batch) is read at once; one customer at a time goes through a loader
    per page shape, so customers resolved apart (under another connection, one by one) still
    load together. Pages the customers' own resolver read ahead for exactly these customers
    (`customer_pages_ahead`) are taken as they are."""
    keyeds: Sequence[Keyed | orders_db.Packed]
    ctx = info.context
    prefetched = None if ctx.prefetched is None else ctx.prefetched.pop((page.spec, frozenset(customer_ids)), None)
    if not page.request.limit:
        keyeds = [[] for _ in customer_ids]
    elif prefetched is not None:
        keyeds = [prefetched[cid] for cid in customer_ids]
    elif len(customer_ids) > 1:
        # The DataLoader's futures, gather and callbacks cost 10% of a page of 20 customers'
        # orders, to batch what is batched already. Its one other service, reading a repeated
        # customer once, is done here: a customer repeats when it is each order's customer.
        unique = list(dict.fromkeys(customer_ids))
        read = await ctx.router.read(
            lambda conn: fetch_customers_pages(conn, page.spec, unique),
            shared=(fetch_customers_pages, page.spec, tuple(unique)),  # as the loader's key (Loaders)
        )
        by_customer = dict(zip(unique, read, strict=True))
        keyeds = [by_customer[cid] for cid in customer_ids]
    else:
        keyeds = await ctx.loaders.of(fetch_customers_pages, page.spec).load_many(customer_ids)
    return [page.connection(keyed, page.flt, customer_id=cid) for keyed, cid in zip(keyeds, customer_ids, strict=True)]


@dataclass(frozen=True, slots=True)
class _Page:
    """What a page's arguments and selection decide, once for all its customers."""

    ctx: Any
    flt: OrderFilter
    request: PageRequest
    sort: str
    field: str
    spec: PageSpec
    edge_cursors: bool
    page_cursors: bool
    edges_spec: Spec | None  # the edges' selection, when it is their rendered node alone

    @classmethod
    def of(cls, info: Info, flt: OrderFilter, order: ServiceOrderOrder | None, request: PageRequest) -> _Page:
        ctx = info.context
        sort = (order or ServiceOrderOrder.CREATED_AT_DESC).value
        field = orders_db.SORTS[sort][0]
        after = ctx.cursors.decode(request.cursor, sort, SORT_KIND[field]) if request.cursor is not None else None
        paths = selected_paths(info)
        want_lines = "edges.node.lines" in paths
        # The extra row only answers hasNextPage (read forward) or hasPreviousPage (backward):
        # unselected, the page reads no more rows than it shows (20 customers' pages: 200
        # rendered orders, not 220).
        extra = ("pageInfo.hasPreviousPage" if request.backward else "pageInfo.hasNextPage") in paths
        render = node_render_spec(info) if ctx.settings.render_sql and not want_lines else None
        spec = PageSpec(
            flt,
            sort,
            request.backward,
            after,
            request.limit + extra,
            request.limit,
            want_customer="edges.node.customer" in paths,
            want_lines=want_lines,
            render=render,
        )
        page_cursors = "pageInfo.startCursor" in paths or "pageInfo.endCursor" in paths
        edges_spec = edges_render_spec(info, render) if render is not None else None
        # Whole edges select no edge cursor; with no page cursor either, no row's keys are needed.
        packed = edge_head(edges_spec) if edges_spec is not None and not page_cursors else None
        spec = replace(spec, whole_edges=edges_spec is not None, packed=packed)
        return cls(ctx, flt, request, sort, field, spec, "edges.cursor" in paths, page_cursors, edges_spec)

    def connection(
        self, keyed: Keyed | orders_db.Packed, flt: OrderFilter, customer_id: int | None = None
    ) -> ServiceOrderConnection:
        """The page's connection; its totalCount counts `flt` (for one customer's page, that
        customer's orders), when selected."""
        ctx, sort, field, edges_spec = self.ctx, self.sort, self.field, self.edges_spec

        def counter() -> Coroutine[Any, Any, tuple[int, bool]]:
            return _count(ctx, flt if customer_id is None else replace(flt, customer_id=customer_id))

        if isinstance(keyed, orders_db.Packed):
            assert edges_spec is not None
            edges, page_info = self.packed(keyed, edges_spec, flt.customer_id if customer_id is None else customer_id)
            return ServiceOrderConnection(edges=edges, page_info=page_info, _counter=counter)
        edges_of = None
        # with_nodes left the nodes out (None) exactly when it found every row rendered for
        # edges rendered whole; an empty page is one array too.
        if edges_spec is not None and (not keyed or keyed[0][1] is None):
            node_spec = edges_spec[0][2]
            assert node_spec is not None

            def edges_of(pairs: Sequence[tuple[OrderRow, ServiceOrder | None]]) -> RenderedEdges:
                def make() -> list[Edge[ServiceOrder]]:
                    return [Edge(cursor="", node=node or _rendered_order(row, node_spec)) for row, node in pairs]

                return RenderedEdges([row.rendered for row, _ in pairs], edges_spec, make)  # type: ignore[misc]

        edges, page_info = build_page(
            keyed,
            self.request,
            node=lambda pair: pair[1],
            cursor=lambda pair: ctx.cursors.encode(sort, getattr(pair[0], field), pair[0].id),
            edge_cursors=self.edge_cursors,
            page_cursors=self.page_cursors,
            edges_of=edges_of,
        )
        return ServiceOrderConnection(edges=edges, page_info=page_info, _counter=counter)

    def packed(
        self, packed: orders_db.Packed, edges_spec: Spec, customer_id: int | None
    ) -> tuple[list[Edge[ServiceOrder]], PageInfo]:
        """A packed page's edges (RenderedEdges, standing in for the list) and page info (it
        has no cursor to give)."""
        ((key, _, node_spec),) = edges_spec
        assert node_spec is not None
        count = min(packed.rows, self.request.limit)

        def make() -> list[Edge[ServiceOrder]]:
            # Each node's JSON again, for a RenderedOrder. Its customer's row id is only read by
            # Customer.serviceOrders, which no rendered selection holds (RENDERABLE): 0 when
            # the page is not one customer's.
            edges = orjson.loads("[" + packed.edges + "]")
            of = customer_id or 0
            return [Edge(cursor="", node=RenderedOrder(orjson.dumps(e[key]).decode(), node_spec, of)) for e in edges]

        edges = RenderedEdges.of_packed(packed.edges, count, edges_spec, make)
        info = page_info(self.request, more=packed.rows > self.request.limit, start=None, end=None)
        return edges, info  # type: ignore[return-value]


async def service_orders(
    info: Info, page: PageArgs, filter: ServiceOrderFilter | None, order_by: ServiceOrderOrder | None
) -> ServiceOrderConnection:
    request = page_request(page, max_size=info.context.settings.max_page_size)
    return await connection(info, order_filter(filter), order_by, request)


async def customer_orders(
    info: Info,
    customer_ids: Sequence[int],
    *,
    first: int | None,
    after: str | None,
    last: int | None,
    before: str | None,
    filter: ServiceOrderFilter | None,
    order_by: ServiceOrderOrder | None,
) -> list[ServiceOrderConnection]:
    """Customer.serviceOrders of these customers (every Customer built here carries it, its
    `orders_of`): one customer from its resolver, a whole list from the compiled executor's
    batch (nexes.execution.compiled)."""
    page = _customers_page(info, first=first, after=after, last=last, before=before, filter=filter, order_by=order_by)
    return await customers_connections(info, page, customer_ids)


def _customers_page(
    info: Info,
    *,
    first: int | None,
    after: str | None,
    last: int | None,
    before: str | None,
    filter: ServiceOrderFilter | None,
    order_by: ServiceOrderOrder | None,
) -> _Page:
    """Customer.serviceOrders' page, whatever the customer, its arguments checked."""
    if filter is not None and filter.customer_id is not None:
        raise bad_input("Customer.serviceOrders is already filtered by its customer", field="filter.customerId")
    request = page_request(PageArgs(first, after, last, before), max_size=info.context.settings.max_page_size)
    return _Page.of(info, order_filter(filter), order_by, request)


def customer_pages_ahead(info: Info) -> PageSpec | None:
    """For Query.customers: the page spec of Customer.serviceOrders below it (edges.node, the
    executor's look ahead), when those pages can be read in the customers' own round trip
    (nexes.db.orders.customer_page_and_orders_packed): packed, as the SPA's list of customers
    with their newest orders selects them. None otherwise, or when the field's arguments are
    wrong: its batch then reports that itself, at its own path."""
    call = batch_ahead(info, orders_of_customers)
    if call is None:
        return None
    slot_info, arguments = call
    try:
        page = _customers_page(slot_info, **arguments)
    except NexesError:
        return None
    spec = page.spec
    if not page.request.limit or spec.packed is None or spec.render is None:
        return None
    return spec


def read_ahead(info: Info, spec: PageSpec, pages: dict[int, orders_db.Packed]) -> None:
    """Hand the customers' pages of `spec`, read ahead, to their batch (`customers_connections`),
    which takes them when it reads that very spec for exactly these customers."""
    ctx = info.context
    if ctx.prefetched is None:
        ctx.prefetched = {}
    ctx.prefetched[spec, frozenset(pages)] = pages


async def service_order(info: Info, sod_number: str) -> ServiceOrder | None:
    sod = sod_number.strip()
    if not rules.SOD_NUMBER.fullmatch(sod):
        raise bad_input("sodNumber must be 1-40 characters of A-Z, a-z, 0-9 and '-'", field="sodNumber")

    async def work(conn: AsyncConnection[Any]) -> ServiceOrder | None:
        row = await orders_db.order_by_sod_number(conn, sod)
        if row is None:
            return None
        paths = selected_paths(info)
        (order,) = await hydrate(conn, [row], customers="customer" in paths, lines="lines" in paths, archived=True)
        return order

    return await info.context.router.read(work)

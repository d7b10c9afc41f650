"""Service orders: keyset pages, lookups by id and SOD number, lines, counts.

Keyset pages compare (sort value, id) as a row value, which PostgreSQL serves from
the matching (sort DESC, id DESC) index scanned either way. A multi-status page is
a UNION ALL of one ordered, limited branch per status, merged: PostgreSQL 15 cannot
skip-scan `status = ANY(...)` in index order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache, partial
from typing import Any, Literal, NamedTuple, TypeVar

from psycopg import AsyncConnection, sql
from psycopg.errors import QueryCanceled
from psycopg.rows import args_row

from nexes.db.arrays import bigint_array, timestamptz_array
from nexes.db.connect.session_tag import GenericPlan, Statement, together
from nexes.db.key_hints import ORDER_KEYS
from nexes.db.keyset import Keyset
from nexes.db.rendering import Spec, rendered_column

Direction = Literal["ASC", "DESC"]

# GraphQL's ServiceOrderOrder -> (column, direction). Only these columns are ever
# put into SQL as identifiers.
SORTS: dict[str, tuple[str, Direction]] = {
    "CREATED_AT_DESC": ("created_at", "DESC"),
    "CREATED_AT_ASC": ("created_at", "ASC"),
    "UPDATED_AT_DESC": ("updated_at", "DESC"),
    "TOTAL_AMOUNT_DESC": ("total_amount", "DESC"),
}

COLUMNS = sql.SQL(
    "o.id, o.created_at, o.sod_number, o.customer_id, o.status::text AS status, o.description, o.currency, "
    "o.total_amount, o.updated_at"
)
LIVE = sql.SQL("service_order")
LIVE_AND_ARCHIVED = sql.SQL("(SELECT * FROM service_order UNION ALL SELECT * FROM service_order_archive)")


# Rows are built positionally (args_row) as named tuples: on the hot path a frozen
# dataclass's __init__ (one object.__setattr__ per field) cost 4x as much per row.
# COLUMNS and LINES select exactly these fields, in this order.
class OrderRow(NamedTuple):
    id: int
    created_at: datetime
    sod_number: str
    customer_id: int
    status: str
    description: str
    currency: str
    total_amount: Decimal
    updated_at: datetime
    customer_code: str | None = None  # with_customer pages only
    customer_name: str | None = None
    rendered: str | None = None  # the order's JSON for a page's render spec (rendered_column)


class LineRow(NamedTuple):
    order_id: int
    line_no: int
    quantity: int
    unit_price: Decimal
    stock_item_id: int
    sku: str
    name: str
    on_hand: int


ORDER_ROW = args_row(OrderRow)
# What a rendered page's row holds besides its JSON (and its sort value): see _page_sql.
KEPT = {"id", "customer_id"}
LINE_ROW = args_row(LineRow)


@dataclass(frozen=True)
class OrderFilter:
    statuses: tuple[str, ...] = ()
    customer_id: int | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None  # exclusive
    sod_number_prefix: str | None = None
    include_archived: bool = False


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _conditions(flt: OrderFilter) -> list[sql.Composable]:
    conds: list[sql.Composable] = []
    if flt.customer_id is not None:
        conds.append(sql.SQL("customer_id = %(customer_id)s"))
    if flt.created_from is not None:
        conds.append(sql.SQL("created_at >= %(created_from)s"))
    if flt.created_to is not None:
        conds.append(sql.SQL("created_at < %(created_to)s"))
    if flt.sod_number_prefix:
        conds.append(sql.SQL("sod_number LIKE %(sod_like)s"))
    return conds


def _filter_params(flt: OrderFilter, params: dict[str, Any]) -> dict[str, Any]:
    """The values behind `_conditions`' placeholders."""
    if flt.customer_id is not None:
        params["customer_id"] = flt.customer_id
    if flt.created_from is not None:
        params["created_from"] = flt.created_from
    if flt.created_to is not None:
        params["created_to"] = flt.created_to
    if flt.sod_number_prefix:
        params["sod_like"] = _like_prefix(flt.sod_number_prefix)
    return params


def _keyset_conditions(column: str, direction: Direction, after: Keyset | None) -> list[sql.Composable]:
    if after is None:
        return []
    op = sql.SQL("<" if direction == "DESC" else ">")
    col = sql.Identifier(column)
    conds: list[sql.Composable] = [sql.SQL("({}, id) {} (%(k_value)s, %(k_id)s)").format(col, op)]
    if column == "created_at":
        # Redundant with the row comparison, but lets the planner prune partitions.
        conds.append(sql.SQL("created_at {} %(k_value)s").format(sql.SQL("<=" if direction == "DESC" else ">=")))
    return conds


def page_params(flt: OrderFilter, *, after: Keyset | None, limit: int) -> dict[str, Any]:
    """The values of every placeholder in `page_query`'s SQL, by name."""
    params = _filter_params(flt, {"limit": limit})
    if after is not None:
        params["k_value"], params["k_id"] = after.value, after.id
    for i, status in enumerate(sorted(set(flt.statuses))):
        params[f"status_{i}"] = status
    return params


def page_query(
    flt: OrderFilter,
    sort: str,
    *,
    backward: bool,
    after: Keyset | None,
    limit: int,
    with_customer: bool = False,
    extra: sql.Composable | None = None,
) -> tuple[sql.Composed, dict[str, Any]]:
    """The SQL and parameters of one page: `limit` rows past `after`, in sort order
    (or in reverse sort order when `backward`, for last/before), with each order's
    customer joined when asked (one statement less than a batched second query).
    `extra` is one more condition, e.g. a LATERAL join's reference."""
    query = _page_sql(flt, sort, backward=backward, after=after, with_customer=with_customer, extra=extra)
    return query, page_params(flt, after=after, limit=limit)


def _page_sql(
    flt: OrderFilter,
    sort: str,
    *,
    backward: bool,
    after: Keyset | None,
    with_customer: bool,
    extra: sql.Composable | None,
    render: Spec | None = None,
) -> sql.Composed:
    query = _bare_page_query(flt, sort, backward=backward, after=after, extra=extra)
    if not with_customer and render is None:
        return query
    column, direction = SORTS[sort]
    if backward:
        direction = "ASC" if direction == "DESC" else "DESC"
    order = sql.SQL("ORDER BY p.{col} {dir}, p.id {dir}").format(col=sql.Identifier(column), dir=sql.SQL(direction))
    if render is not None:
        # The JSON carries every selected value: the row keeps only what paging needs (its
        # id, its customer's, its sort value): read 5's 220 rows carried 68.3 KB of values
        # with every column, 44.5 KB so (the JSON alone is most of it).
        columns = sql.SQL(", ").join(
            sql.SQL("p.{}").format(sql.Identifier(name)) if name in KEPT or name == column else sql.SQL("NULL")
            for name in OrderRow._fields[:-1]
        )
        customer = "CROSS JOIN LATERAL (SELECT code, name FROM customer WHERE id = p.customer_id LIMIT 1) AS c"
        return sql.SQL("SELECT {columns}, {rendered} AS rendered FROM ({page}) AS p {customer} {order}").format(
            columns=columns,
            rendered=rendered_column(render),
            page=query,
            customer=sql.SQL(customer if with_customer else ""),
            order=order,
        )
    # LIMIT 1 keeps the lateral subquery from being flattened into a plain join, which the
    # planner served with a hash of the whole customer table (0.5 ms at 5k customers, and
    # growing with them): this way it is one primary-key probe per row of the page.
    return sql.SQL(
        "SELECT p.*, c.code AS customer_code, c.name AS customer_name FROM ({page}) AS p "
        "CROSS JOIN LATERAL (SELECT code, name FROM customer WHERE id = p.customer_id LIMIT 1) AS c {order}"
    ).format(page=query, order=order)


def packed_sql(page: sql.Composable, sort: str, *, backward: bool, head: str) -> sql.Composed:
    """A rendered page (`_page_sql` with `render`) as one row: how many rows it read, whether
    PostgreSQL rendered them all, and its edges' JSON objects (`head`, the node's JSON, `}`),
    comma-separated in the page's order, without any extra row read only to tell there is more.

    Why: read row by row, a page's rows cost Python more than the JSON they carry (psycopg's
    loaders and a tuple per row, the grouping and sorting of customers' pages): 20
    customers' pages of 11 orders cost the client 2.2 ms of CPU as 220 rows, 0.9 ms as 20
    (bench/README.md, "Sixth session on issue 21"). An array of the page's JSON in its
    order, sliced, costs PostgreSQL less than an ordered aggregate over a row number."""
    column, direction = SORTS[sort]
    # The page shows %(shown)s rows in the sort's order. Read forward, an extra row is its
    # last; read backward (from the other end), its first.
    if backward:
        window = sql.SQL("greatest(cardinality(x.a) - %(shown)s + 1, 1):cardinality(x.a)")
    else:
        window = sql.SQL("1:%(shown)s")
    return sql.SQL(
        "SELECT cardinality(x.a) AS n, array_position(x.a, NULL) IS NULL AS whole, "
        "coalesce({head} || nullif(array_to_string(x.a[{window}], {between}), '') || {close}, '') AS edges "
        # OFFSET 0: the array made once, not once for each of the three uses of x.a.
        "FROM (SELECT ARRAY(SELECT r.rendered FROM ({page}) AS r ORDER BY r.{col} {dir}, r.id {dir}) AS a "
        "OFFSET 0) AS x"
    ).format(
        head=sql.Literal(head),
        window=window,
        between=sql.Literal("}," + head),
        close=sql.Literal("}"),
        col=sql.Identifier(column),
        dir=sql.SQL(direction),
        page=page,
    )


def _bare_page_query(
    flt: OrderFilter, sort: str, *, backward: bool, after: Keyset | None, extra: sql.Composable | None
) -> sql.Composed:
    column, direction = SORTS[sort]
    if backward:
        direction = "ASC" if direction == "DESC" else "DESC"
    source = LIVE_AND_ARCHIVED if flt.include_archived else LIVE
    base = _conditions(flt) + _keyset_conditions(column, direction, after)
    if extra is not None:
        base.append(extra)
    order_by = sql.SQL("ORDER BY {col} {dir}, id {dir} LIMIT %(limit)s").format(
        col=sql.Identifier(column), dir=sql.SQL(direction)
    )

    def select(conds: Sequence[sql.Composable]) -> sql.Composed:
        where = sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")
        return sql.SQL("SELECT {cols} FROM {src} AS o WHERE {where} {order}").format(
            cols=COLUMNS, src=source, where=where, order=order_by
        )

    statuses = sorted(set(flt.statuses))
    if len(statuses) <= 1:
        if statuses:
            base = [sql.SQL("status = %(status_0)s::order_status"), *base]
        return select(base)
    branches = []
    for i in range(len(statuses)):
        cond = sql.SQL("status = {}::order_status").format(sql.Placeholder(f"status_{i}"))
        branches.append(sql.SQL("({})").format(select([cond, *base])))
    return sql.SQL("SELECT * FROM ({branches}) AS u ORDER BY {col} {dir}, id {dir} LIMIT %(limit)s").format(
        branches=sql.SQL(" UNION ALL ").join(branches), col=sql.Identifier(column), dir=sql.SQL(direction)
    )


class PageShape(NamedTuple):
    """Everything about a page that changes its SQL text (values only change parameters)."""

    sort: str
    backward: bool
    has_after: bool
    with_customer: bool
    include_archived: bool
    has_customer: bool
    has_from: bool
    has_to: bool
    has_prefix: bool
    statuses: int
    render: Spec | None = None
    packed: str | None = None  # the edge's head, when the page is packed (packed_sql)

    @classmethod
    def of(
        cls,
        flt: OrderFilter,
        sort: str,
        *,
        backward: bool,
        after: Keyset | None,
        with_customer: bool,
        render: Spec | None = None,
        packed: str | None = None,
    ) -> PageShape:
        return cls(
            sort,
            backward,
            after is not None,
            with_customer,
            flt.include_archived,
            flt.customer_id is not None,
            flt.created_from is not None,
            flt.created_to is not None,
            bool(flt.sod_number_prefix),
            len(set(flt.statuses)),
            render,
            packed,
        )


def _stand_in(shape: PageShape) -> tuple[OrderFilter, Keyset | None]:
    """A filter and keyset of that shape (their values are never used)."""
    stand_in = OrderFilter(
        statuses=tuple(f"s{i}" for i in range(shape.statuses)),
        customer_id=0 if shape.has_customer else None,
        created_from=datetime.min if shape.has_from else None,
        created_to=datetime.max if shape.has_to else None,
        sod_number_prefix="p" if shape.has_prefix else None,
        include_archived=shape.include_archived,
    )
    return stand_in, Keyset(None, 0) if shape.has_after else None


@lru_cache(maxsize=1024)
def page_sql_text(shape: PageShape) -> bytes:
    """A page's SQL, composed once per shape: composing it per request cost as much as
    PostgreSQL took to run it. Built by `_page_sql` from a stand-in filter of that shape."""
    stand_in, after = _stand_in(shape)
    query = _page_sql(
        stand_in,
        shape.sort,
        backward=shape.backward,
        after=after,
        with_customer=shape.with_customer,
        extra=None,
        render=shape.render,
    )
    if shape.packed is not None:
        query = packed_sql(query, shape.sort, backward=shape.backward, head=shape.packed)
    return query.as_bytes(None) if shape.has_prefix else GenericPlan(query.as_bytes(None))


@lru_cache(maxsize=256)
def customer_pages_sql_text(shape: PageShape, customers: bytes | None = None) -> bytes:
    """The same page for each of several customers (a LATERAL page per customer), composed
    once per shape: the customers of %(customer_ids)s, or those `customers` selects (a
    statement that gives their ids)."""
    stand_in, after = _stand_in(shape)
    inner = _page_sql(
        stand_in,
        shape.sort,
        backward=shape.backward,
        after=after,
        with_customer=shape.with_customer,
        extra=sql.SQL("o.customer_id = batch.cid"),
        render=shape.render,
    )
    if shape.packed is not None:
        inner = packed_sql(inner, shape.sort, backward=shape.backward, head=shape.packed)
    source = (
        sql.SQL("unnest(%(customer_ids)s::bigint[])")
        if customers is None
        else sql.SQL("({})").format(sql.SQL(customers.decode()))
    )
    query = sql.SQL("SELECT {batch}p.* FROM {source} AS batch (cid) CROSS JOIN LATERAL ({inner}) AS p").format(
        batch=sql.SQL("batch.cid, " if shape.packed is not None else ""), source=source, inner=inner
    )
    generic = not shape.has_prefix and (customers is None or isinstance(customers, GenericPlan))
    return GenericPlan(query.as_bytes(None)) if generic else query.as_bytes(None)


# Planning a query over every quarterly partition costs milliseconds (no prepared
# statements behind PgBouncer 1.18). A created_at page first tries a window of one
# quarter past its position, which prunes all but a partition or two at plan time;
# only a page that does not fill up inside the window runs again without it.
WINDOW = timedelta(days=92)


def windowed(flt: OrderFilter, sort: str, *, backward: bool, after: Keyset | None) -> OrderFilter | None:
    """`flt` narrowed to one quarter ahead of the scan, or None where that cannot help."""
    column, direction = SORTS[sort]
    if column != "created_at" or flt.customer_id is not None or flt.sod_number_prefix:
        return None
    if backward:
        direction = "ASC" if direction == "DESC" else "DESC"
    # A window past Python's first or last date (a bound in 0001 or 9999) cannot narrow anything.
    if direction == "DESC":
        anchor = after.value if after is not None else flt.created_to or datetime.now(UTC)
        try:
            low = anchor - WINDOW
        except OverflowError:
            return None
        return replace(flt, created_from=low) if flt.created_from is None or flt.created_from < low else None
    anchor = after.value if after is not None else flt.created_from
    if anchor is None:
        return None
    try:
        high = anchor + WINDOW
    except OverflowError:
        return None
    return replace(flt, created_to=high) if flt.created_to is None or flt.created_to > high else None


async def orders_page(
    conn: AsyncConnection[Any],
    flt: OrderFilter,
    sort: str,
    *,
    backward: bool,
    after: Keyset | None,
    limit: int,
    with_customer: bool = False,
    render: Spec | None = None,
) -> list[OrderRow]:
    """One keyset page of orders, in the requested order (backward pages are re-reversed);
    with `render`, each row also carries its JSON for that selection (`rendered_column`).

    Rows of the window come first in the scan order, so a window that yields `limit`
    rows yields exactly the page the whole range would.
    """
    narrow = windowed(flt, sort, backward=backward, after=after)
    page = partial(
        _page, conn, sort=sort, backward=backward, after=after, limit=limit, with_customer=with_customer, render=render
    )
    rows = await page(narrow) if narrow else []
    if len(rows) < limit:
        rows = await page(flt)
    if backward:
        rows.reverse()
    return rows


class Packed(NamedTuple):
    """A page packed by PostgreSQL (packed_sql): the rows it read (more than the page shows:
    there is more), and the JSON objects of the edges it shows, comma-separated."""

    rows: int
    edges: str


async def orders_page_packed(
    conn: AsyncConnection[Any],
    flt: OrderFilter,
    sort: str,
    *,
    backward: bool,
    after: Keyset | None,
    limit: int,
    shown: int,
    with_customer: bool,
    render: Spec,
    head: str,
) -> Packed | None:
    """`orders_page` packed (packed_sql), in the same window first; None when PostgreSQL
    left a row unrendered (rendering.printable): the caller reads that page row by row."""
    narrow = windowed(flt, sort, backward=backward, after=after)
    packed = Packed(0, "")
    for each in (narrow, flt) if narrow else (flt,):
        shape = PageShape.of(
            each, sort, backward=backward, after=after, with_customer=with_customer, render=render, packed=head
        )
        params = page_params(each, after=after, limit=limit)
        params["shown"] = shown
        cur = await conn.execute(page_sql_text(shape), params)
        rows, whole, edges = await cur.fetchone()  # type: ignore[misc]
        if not whole:
            return None
        packed = Packed(rows, edges)
        if rows >= limit:
            break
    return packed


async def _page(
    conn: AsyncConnection[Any],
    flt: OrderFilter,
    *,
    sort: str,
    backward: bool,
    after: Keyset | None,
    limit: int,
    with_customer: bool,
    render: Spec | None,
) -> list[OrderRow]:
    shape = PageShape.of(flt, sort, backward=backward, after=after, with_customer=with_customer, render=render)
    async with conn.cursor(row_factory=ORDER_ROW) as cur:
        await cur.execute(page_sql_text(shape), page_params(flt, after=after, limit=limit))
        return await cur.fetchall()


def _customer_pages(
    customers: Sequence[int] | tuple[bytes, dict[str, Any]],
    flt: OrderFilter,
    sort: str,
    *,
    backward: bool,
    after: Keyset | None,
    limit: int,
    with_customer: bool,
    render: Spec | None,
    packed: str | None,
) -> tuple[bytes, dict[str, Any]]:
    """The statement and parameters of several customers' pages, row by row or packed: the
    customers of a list of ids, or of a statement that selects theirs (and its parameters)."""
    flt = replace(flt, customer_id=None)
    params = page_params(flt, after=after, limit=limit)
    shape = PageShape.of(
        flt, sort, backward=backward, after=after, with_customer=with_customer, render=render, packed=packed
    )
    if isinstance(customers, tuple):
        ids_of, ids_params = customers
        params.update(ids_params)
        return customer_pages_sql_text(shape, ids_of), params
    params["customer_ids"] = bigint_array(customers)
    return customer_pages_sql_text(shape), params


async def orders_pages_by_customer(
    conn: AsyncConnection[Any],
    customer_ids: Sequence[int],
    flt: OrderFilter,
    sort: str,
    *,
    backward: bool,
    after: Keyset | None,
    limit: int,
    with_customer: bool,
    render: Spec | None = None,
) -> dict[int, list[OrderRow]]:
    """The same page of orders for each of several customers, in one statement (a LATERAL
    page per customer, each served by the customer's own index range)."""
    query, params = _customer_pages(
        customer_ids,
        flt,
        sort,
        backward=backward,
        after=after,
        limit=limit,
        with_customer=with_customer,
        render=render,
        packed=None,
    )
    async with conn.cursor(row_factory=ORDER_ROW) as cur:
        await cur.execute(query, params)
        rows = await cur.fetchall()
    column, direction = SORTS[sort]
    descending = (direction == "DESC") != backward
    grouped: dict[int, list[OrderRow]] = {cid: [] for cid in customer_ids}
    for row in rows:
        grouped[row.customer_id].append(row)
    for group in grouped.values():
        # SQL promises no order across a lateral join: sort each page as its query did.
        group.sort(key=lambda r: (getattr(r, column), r.id), reverse=descending)
        if backward:
            group.reverse()
    return grouped


async def orders_pages_packed_by_customer(
    conn: AsyncConnection[Any],
    customers: Sequence[int] | tuple[bytes, dict[str, Any]],
    flt: OrderFilter,
    sort: str,
    *,
    backward: bool,
    after: Keyset | None,
    limit: int,
    shown: int,
    with_customer: bool,
    render: Spec,
    head: str,
    alongside: Statement | None = None,
) -> dict[int, Packed] | None:
    """`orders_pages_by_customer` packed (packed_sql): one row per customer. None when
    PostgreSQL left a row unrendered (rendering.printable): the caller reads row by row.

    `customers`: their ids, or a statement that selects their ids and its parameters (named
    apart from a page's). `alongside`: a statement (its cursor, text and parameters) sent
    first in the same round trip (together: one pipeline, one implicit transaction), whose
    rows its cursor then holds. Each statement takes its own snapshot there (READ
    COMMITTED): a customer written between the two may be in one and not the other."""
    query, params = _customer_pages(
        customers,
        flt,
        sort,
        backward=backward,
        after=after,
        limit=limit,
        with_customer=with_customer,
        render=render,
        packed=head,
    )
    params["shown"] = shown
    if alongside is None:
        cur = await conn.execute(query, params)
    else:
        cur = conn.cursor()
        await together(conn, [alongside, (cur, query, params)])
    packed: dict[int, Packed] = {}
    for cid, rows, whole, edges in await cur.fetchall():
        if not whole:
            return None
        packed[cid] = Packed(rows, edges)
    return packed


# Two steps, because one join from the key table to the partitioned orders was planned over
# every partition, live and archived (30 ms of planning for one order at 1M orders, a
# hundred times its execution): the key table gives (id, created_at), then the orders are
# read with their created_at as values, which prunes the partitions when planning.
# Unique indexes, whatever the values: generic plans (when prepared, NEXES_PREPARE=on).
KEYS_BY_ID = GenericPlan(b"SELECT id, created_at FROM service_order_key WHERE id = ANY(%(ids)s::bigint[])")
KEYS_BY_SOD = GenericPlan(b"SELECT id, created_at FROM service_order_key WHERE sod_number = %(sod)s")
# With each order's customer, as a page's (see _page_sql for the LATERAL's LIMIT 1).
ORDERS_AT = sql.SQL(
    "SELECT {cols}, c.code AS customer_code, c.name AS customer_name FROM {src} AS o "
    "CROSS JOIN LATERAL (SELECT code, name FROM customer WHERE id = o.customer_id LIMIT 1) AS c "
    "WHERE o.id = ANY(%(ids)s::bigint[]) AND o.created_at = ANY(%(ats)s::timestamptz[])"
).format(cols=COLUMNS, src=LIVE_AND_ARCHIVED)


async def _orders_at(conn: AsyncConnection[Any], keys: list[tuple[int, datetime]]) -> list[OrderRow]:
    if not keys:
        return []
    params = {"ids": bigint_array(k[0] for k in keys), "ats": timestamptz_array(k[1] for k in keys)}
    async with conn.cursor(row_factory=ORDER_ROW) as cur:
        await cur.execute(ORDERS_AT, params)
        return await cur.fetchall()


# What a read of orders at their keys gives: the orders first, then anything read with them.
_Read = TypeVar("_Read", bound=tuple[list[Any], ...])


async def _keys_by_id(conn: AsyncConnection[Any], ids: Sequence[int]) -> list[tuple[int, datetime]]:
    """(id, created_at) of the orders that exist among `ids`, from the key table, remembered."""
    cur = await conn.execute(KEYS_BY_ID, {"ids": bigint_array(ids)})
    keys: list[tuple[int, datetime]] = await cur.fetchall()
    ORDER_KEYS.remember(conn.info.dbname, keys)
    return keys


async def _by_keys(
    conn: AsyncConnection[Any], ids: Sequence[int], read: Callable[[list[tuple[int, datetime]]], Awaitable[_Read]]
) -> _Read:
    """`read` of the orders `ids` at their keys: the remembered keys when every id has one
    (one round trip fewer; key_hints says why that is safe), else the key table's. Remembered
    keys that find fewer orders than they name are forgotten, and the key table asked."""
    database = conn.info.dbname
    hinted = ORDER_KEYS.keys_of(database, ids)
    if hinted is not None:
        found = await read(hinted)
        if len(found[0]) == len(hinted):
            return found
        ORDER_KEYS.forget(database, (k[0] for k in hinted))
    return await read(await _keys_by_id(conn, ids))


async def orders_by_id(conn: AsyncConnection[Any], ids: Sequence[int]) -> list[OrderRow]:
    """Orders by id, live or archived, with their customers: their keys name the partitions to read."""

    async def read(keys: list[tuple[int, datetime]]) -> tuple[list[OrderRow]]:
        return (await _orders_at(conn, keys),)

    return (await _by_keys(conn, ids, read))[0]


async def orders_with_lines_by_id(
    conn: AsyncConnection[Any], ids: Sequence[int]
) -> tuple[list[OrderRow], list[LineRow]]:
    """Orders by id, live or archived, with their customers, and all their lines: the
    orders' and the lines' statements in one pipeline (both need only what the keys give),
    after the key table's round trip unless every key is remembered."""

    async def read(keys: list[tuple[int, datetime]]) -> tuple[list[OrderRow], list[LineRow]]:
        if not keys:
            return [], []
        ids_found, ats = [k[0] for k in keys], [k[1] for k in keys]
        span = {"ids": bigint_array(ids_found), "lo": min(ats), "hi": max(ats), "archived": True}
        orders = conn.cursor(row_factory=ORDER_ROW)
        lines = conn.cursor(row_factory=LINE_ROW)
        at_keys = {"ids": span["ids"], "ats": timestamptz_array(ats)}
        await together(conn, [(orders, ORDERS_AT, at_keys), (lines, LINES, span)])
        return await orders.fetchall(), await lines.fetchall()

    return await _by_keys(conn, ids, read)


async def order_by_sod_number(conn: AsyncConnection[Any], sod_number: str) -> OrderRow | None:
    """One order by SOD number, live or archived, with its customer."""
    cur = await conn.execute(KEYS_BY_SOD, {"sod": sod_number})
    rows = await _orders_at(conn, await cur.fetchall())
    return rows[0] if rows else None


LINES_TEXT = """
SELECT l.order_id, l.line_no, l.quantity, l.unit_price, s.id AS stock_item_id, s.sku, s.name, s.on_hand
FROM (SELECT * FROM service_order_line WHERE order_id = ANY(%(ids)s::bigint[]) AND created_at BETWEEN %(lo)s AND %(hi)s
      UNION ALL
      SELECT * FROM service_order_line_archive
      WHERE %(archived)s AND order_id = ANY(%(ids)s::bigint[]) AND created_at BETWEEN %(lo)s AND %(hi)s) AS l
JOIN stock_item AS s ON s.id = l.stock_item_id
ORDER BY l.order_id, l.line_no
"""
# Its generic plan prunes the partitions when it runs: 0.04 ms to plan and 0.09 to run,
# against 0.24 and 0.03 planned for its values each time (one order's lines at 10M orders).
LINES = GenericPlan(LINES_TEXT.encode())


async def lines_of(conn: AsyncConnection[Any], orders: Sequence[OrderRow], *, archived: bool) -> list[LineRow]:
    """The lines (with their stock items) of these orders, in one statement.

    The orders' created_at range prunes the partitions to those the page spans.
    """
    if not orders:
        return []
    params = {
        "ids": bigint_array(o.id for o in orders),
        "lo": min(o.created_at for o in orders),
        "hi": max(o.created_at for o in orders),
        "archived": archived,
    }
    async with conn.cursor(row_factory=LINE_ROW) as cur:
        await cur.execute(LINES, params)
        return await cur.fetchall()


async def count_orders(conn: AsyncConnection[Any], flt: OrderFilter, *, budget_ms: int, cap: int) -> tuple[int, bool]:
    """(count, exact): an exact count bounded by `budget_ms` and `cap`, else the planner's estimate."""
    params: dict[str, Any] = {"cap": cap}
    conds = _conditions(flt)
    _filter_params(flt, params)
    if flt.statuses:
        params["statuses"] = list(flt.statuses)
        conds.append(sql.SQL("status = ANY(%(statuses)s::order_status[])"))
    where = sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")
    source = LIVE_AND_ARCHIVED if flt.include_archived else LIVE
    inner = sql.SQL("SELECT 1 FROM {src} AS o WHERE {where}").format(src=source, where=where)
    try:
        async with conn.transaction():
            await conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(f"{budget_ms}ms")))
            cur = await conn.execute(sql.SQL("SELECT count(*) FROM ({} LIMIT %(cap)s) AS c").format(inner), params)
            row = await cur.fetchone()
            count = int(row[0]) if row else 0
            if count < cap:
                return count, True
    except QueryCanceled:
        pass  # past the budget: the planner's estimate below
    params.pop("cap")
    cur = await conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(inner), params)
    row = await cur.fetchone()
    plan = row[0] if row else [{"Plan": {"Plan Rows": 0}}]
    return int(plan[0]["Plan"]["Plan Rows"]), False


COUNT_FROM_STATS = """
SELECT coalesce(sum(order_count), 0)::bigint FROM dashboard_stat
WHERE (%(statuses)s::order_status[] IS NULL OR status = ANY(%(statuses)s::order_status[]))
  AND (%(day_from)s::date IS NULL OR day >= %(day_from)s::date)
  AND (%(day_to)s::date IS NULL OR day < %(day_to)s::date)
  AND (%(archived)s OR day > coalesce((SELECT max(created_at) FROM service_order_archive)::date, '-infinity'))
"""


async def count_from_stats(
    conn: AsyncConnection[Any],
    *,
    statuses: Sequence[str],
    day_from: date | None,
    day_to: date | None,
    include_archived: bool,
) -> int:
    """The exact count of orders in whole UTC days, from dashboard_stat (archived days excluded
    unless asked for: archived quarters are whole quarters, so the days split cleanly)."""
    cur = await conn.execute(
        COUNT_FROM_STATS,
        {"statuses": list(statuses) or None, "day_from": day_from, "day_to": day_to, "archived": include_archived},
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0

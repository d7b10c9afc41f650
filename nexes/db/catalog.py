"""Customers and stock items: batched lookups, (name, id) keyset pages, bounded counts."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

from psycopg import AsyncConnection, AsyncCursor, sql
from psycopg.rows import class_row

from nexes.db.arrays import bigint_array
from nexes.db.connect.session_tag import GenericPlan
from nexes.db.keyset import Keyset

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class CustomerRow:
    id: int
    code: str
    name: str


@dataclass(frozen=True, slots=True)
class StockItemRow:
    id: int
    sku: str
    name: str
    on_hand: int


@dataclass(frozen=True)
class CatalogFilter:
    """Conditions shared by both tables; `key` is the customer code or the SKU."""

    name_contains: str | None = None
    key: str | None = None
    negative_only: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    columns: str
    key_column: str
    row: type


CUSTOMERS = Table("customer", "id, code, name", "code", CustomerRow)
STOCK_ITEMS = Table("stock_item", "id, sku, name, on_hand", "sku", StockItemRow)


@lru_cache(maxsize=4)
def _by_id_text(table: Table) -> GenericPlan:
    query = sql.SQL("SELECT {cols} FROM {table} WHERE id = ANY(%(ids)s::bigint[])").format(
        cols=sql.SQL(table.columns), table=sql.Identifier(table.name)
    )
    return GenericPlan(query.as_bytes(None))  # the primary key's index, whatever the ids


async def _by_id(conn: AsyncConnection[Any], table: Table, ids: Collection[int]) -> list[Any]:
    cur: AsyncCursor[Any]
    async with conn.cursor(row_factory=class_row(table.row)) as cur:
        await cur.execute(_by_id_text(table), {"ids": bigint_array(ids)})
        return await cur.fetchall()


async def customers_by_id(conn: AsyncConnection[Any], ids: Collection[int]) -> list[CustomerRow]:
    return await _by_id(conn, CUSTOMERS, ids)


async def stock_items_by_id(conn: AsyncConnection[Any], ids: Collection[int]) -> list[StockItemRow]:
    return await _by_id(conn, STOCK_ITEMS, ids)


def like_contains(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _where(table: Table, flt: CatalogFilter, params: dict[str, Any], prefix: str = "") -> list[sql.Composable]:
    """The filter's conditions, their values put in `params` under names that start with `prefix`."""
    conds: list[sql.Composable] = []
    if flt.name_contains:
        params[prefix + "name_like"] = like_contains(flt.name_contains)
        # served by the trigram index
        conds.append(sql.SQL("name ILIKE {}").format(sql.Placeholder(prefix + "name_like")))
    if flt.key:
        params[prefix + "key"] = flt.key
        conds.append(sql.SQL("{} = {}").format(sql.Identifier(table.key_column), sql.Placeholder(prefix + "key")))
    if flt.negative_only:
        conds.append(sql.SQL("on_hand < 0"))
    return conds


@lru_cache(maxsize=64)
def _page_text(table: Table, flt: CatalogFilter, has_after: bool, backward: bool, ids_of: bool = False) -> bytes:
    """A page's SQL, composed once per shape (`flt` is a stand-in: only which conditions it
    has matters): composing and quoting it per request cost more than the query. `ids_of`:
    the ids of the rows the page shows alone, every placeholder's name prefixed (IDS_OF), to
    be a subquery of another statement."""
    prefix = IDS_OF if ids_of else ""
    conds = _where(table, flt, {}, prefix)
    if has_after:
        conds.append(
            sql.SQL("(name, id) {} ({}, {})").format(
                sql.SQL("<" if backward else ">"), sql.Placeholder(prefix + "k_name"), sql.Placeholder(prefix + "k_id")
            )
        )
    query = sql.SQL("SELECT {cols} FROM {table} WHERE {where} ORDER BY name {dir}, id {dir} LIMIT {limit}").format(
        cols=sql.SQL("id" if ids_of else table.columns),
        table=sql.Identifier(table.name),
        where=sql.SQL(" AND ").join(conds) if conds else sql.SQL("true"),
        dir=sql.SQL("DESC" if backward else "ASC"),
        limit=sql.Placeholder(prefix + "limit"),
    )
    # By the (name, id) index whatever the bounds, but for ILIKE's trigram search, whose plan
    # depends on the pattern.
    return query.as_bytes(None) if flt.name_contains else GenericPlan(query.as_bytes(None))


IDS_OF = "ids_of_"  # the prefix of a page's placeholders as a subquery (page_statement's ids_of)


def page_statement(
    table: Table,
    flt: CatalogFilter,
    *,
    after: Keyset | None,
    backward: bool,
    limit: int,
    ids_of: bool = False,
) -> tuple[bytes, dict[str, Any]]:
    """A keyset page's statement by (name, id), in the scan's order, and its parameters;
    `ids_of`: only the ids of its rows, with placeholders named apart (IDS_OF), for another
    statement to read the same page as a subquery."""
    prefix = IDS_OF if ids_of else ""
    params: dict[str, Any] = {prefix + "limit": limit}
    _where(table, flt, params, prefix)
    if after is not None:
        params[prefix + "k_name"], params[prefix + "k_id"] = after.value, after.id
    shape = CatalogFilter(
        name_contains="n" if flt.name_contains else None, key="k" if flt.key else None, negative_only=flt.negative_only
    )
    return _page_text(table, shape, after is not None, backward, ids_of), params


def page_rows(rows: list[Any], *, backward: bool) -> list[Any]:
    """A page's rows as read (`page_statement`) in ascending (name, id) order."""
    if backward:
        rows.reverse()
    return rows


async def page(
    conn: AsyncConnection[Any], table: Table, flt: CatalogFilter, *, after: Keyset | None, backward: bool, limit: int
) -> list[Any]:
    """A keyset page by (name, id), ascending (re-reversed when `backward`)."""
    query, params = page_statement(table, flt, after=after, backward=backward, limit=limit)
    cur: AsyncCursor[Any]
    async with conn.cursor(row_factory=class_row(table.row)) as cur:
        await cur.execute(query, params)
        return page_rows(await cur.fetchall(), backward=backward)


async def count(conn: AsyncConnection[Any], table: Table, flt: CatalogFilter, *, cap: int) -> tuple[int, bool]:
    """(count, exact): counts up to `cap` rows; past it, `cap` and not exact."""
    params: dict[str, Any] = {"cap": cap}
    conds = _where(table, flt, params)
    query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {where} LIMIT %(cap)s) AS c").format(
        table=sql.Identifier(table.name), where=sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")
    )
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    found = int(row[0]) if row else 0
    return found, found < cap

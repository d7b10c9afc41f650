"""The CSV export of service orders: one COPY ... TO STDOUT, one row per order line,
with the import's column names (nexes.imports.parse.COLUMNS), so an export imports back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from psycopg import AsyncConnection, sql

from nexes.db.orders import OrderFilter, _conditions, _filter_params

# Times in ISO-8601 UTC with a Z; amounts as stored (two decimals), unquoted: numbers stay
# numbers. CSV injection (OWASP): a text cell a spreadsheet would run as a formula (it
# begins with =, +, -, @, a tab or a carriage return) gets a leading single quote, and every
# text cell is quoted (FORCE_QUOTE). Quotes already in front of such a character get one
# more, and the importer drops one (nexes.imports.parse), so an export imports back unchanged.
_SELECT = r"""
SELECT CASE WHEN o.sod_number ~ '^''*[-=+@\t\r]' THEN '''' || o.sod_number ELSE o.sod_number END AS sod_number,
       to_char(o.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
       CASE WHEN c.code ~ '^''*[-=+@\t\r]' THEN '''' || c.code ELSE c.code END AS customer_code,
       o.status::text AS status,
       CASE WHEN o.description ~ '^''*[-=+@\t\r]' THEN '''' || o.description ELSE o.description END AS description,
       o.currency, l.line_no,
       CASE WHEN s.sku ~ '^''*[-=+@\t\r]' THEN '''' || s.sku ELSE s.sku END AS sku,
       l.quantity, l.unit_price
FROM {orders} o
JOIN customer c ON c.id = o.customer_id
JOIN {lines} l ON l.order_id = o.id AND l.created_at = o.created_at
JOIN stock_item s ON s.id = l.stock_item_id
"""
LIVE = ("service_order", "service_order_line")
ARCHIVE = ("service_order_archive", "service_order_line_archive")
# An export may run long; a client that hangs up cancels it at once (nexes.http.exports).
EXPORT_STATEMENT_TIMEOUT = "SET LOCAL statement_timeout = '1h'"


def export_query(flt: OrderFilter) -> tuple[sql.Composed, dict[str, Any]]:
    """The COPY for `flt`, with its parameters: live orders, then archived ones, each by created_at, id, line."""
    conds: list[sql.Composable] = [sql.SQL("o.") + c for c in _conditions(flt)]
    params = _filter_params(flt, {})
    if flt.statuses:
        conds.append(sql.SQL("o.status = ANY(%(statuses)s::order_status[])"))
        params["statuses"] = list(flt.statuses)
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL("")
    branches = [LIVE, ARCHIVE] if flt.include_archived else [LIVE]
    # Each branch in index order (created_at, id), so the server streams instead of sorting.
    selects = [
        sql.SQL("(")
        + sql.SQL(_SELECT).format(orders=sql.Identifier(orders), lines=sql.Identifier(lines))
        + where
        + sql.SQL(" ORDER BY o.created_at, o.id, l.line_no)")
        for orders, lines in branches
    ]
    body = sql.SQL(" UNION ALL ").join(selects)
    query = sql.SQL(
        "COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER, FORCE_QUOTE (sod_number, customer_code, description, sku))"
    ).format(body)
    return query, params


async def copy_orders_csv(
    conn: AsyncConnection[Any], flt: OrderFilter, *, block: int = 1 << 16
) -> AsyncIterator[bytes]:
    """The export as CSV bytes, in blocks of about `block` bytes; the caller owns the transaction."""
    query, params = export_query(flt)
    await conn.execute(EXPORT_STATEMENT_TIMEOUT)
    buffer = bytearray()
    async with conn.cursor().copy(query, params) as copy:
        async for data in copy:
            buffer += data
            if len(buffer) >= block:
                yield bytes(buffer)
                buffer.clear()
    if buffer:
        yield bytes(buffer)

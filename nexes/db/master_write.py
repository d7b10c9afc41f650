"""Writes of master data (customers, stock items, receipts) and the lookups that
mutations need to stage orders. Each write is create-or-identical: the same input
again finds what the first call made and changes nothing."""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractAsyncContextManager
from typing import Any

from psycopg import AsyncConnection

from nexes.db import audit, order_write
from nexes.db.audit import Actor
from nexes.db.catalog import CustomerRow, StockItemRow


async def customer_ids_by_code(conn: AsyncConnection[Any], codes: Collection[str]) -> dict[str, int]:
    cur = await conn.execute("SELECT code, id FROM customer WHERE code = ANY(%s)", [list(codes)])
    return {code: id_ for code, id_ in await cur.fetchall()}


async def customer_exists(conn: AsyncConnection[Any], customer_id: int) -> bool:
    cur = await conn.execute("SELECT 1 FROM customer WHERE id = %s", [customer_id])
    return await cur.fetchone() is not None


async def stock_item_ids_by_sku(conn: AsyncConnection[Any], skus: Collection[str]) -> dict[str, int]:
    cur = await conn.execute("SELECT sku, id FROM stock_item WHERE sku = ANY(%s)", [list(skus)])
    return {sku: id_ for sku, id_ in await cur.fetchall()}


async def create_customer(conn: AsyncConnection[Any], code: str, name: str, *, by: Actor) -> tuple[CustomerRow, bool]:
    """The customer with this code, made when missing (with its audit row); True when it was made now."""
    cur = await conn.execute(
        "INSERT INTO customer (code, name) VALUES (%s, %s) ON CONFLICT (code) DO NOTHING RETURNING id, code, name",
        [code, name],
    )
    made = await cur.fetchone()
    if made:
        customer = CustomerRow(*made)
        key = audit.entity_id("Customer", customer.id)
        changes = {"code": code, "name": name}
        await audit.record(conn, by, "createCustomer", entity="Customer", key=key, changes=changes)
        return customer, True
    cur = await conn.execute("SELECT id, code, name FROM customer WHERE code = %s", [code])
    row = await cur.fetchone()
    assert row is not None
    return CustomerRow(*row), False


async def create_stock_item(
    conn: AsyncConnection[Any], sku: str, name: str, opening: int, *, by: Actor
) -> tuple[StockItemRow, bool, int | None]:
    """The item with this SKU, made with its opening balance (one OPENING movement) and its
    audit row when missing; returns (item, made now, the opening quantity it was made with or None)."""
    cur = await conn.execute(
        "INSERT INTO stock_item (sku, name, on_hand) VALUES (%s, %s, %s) ON CONFLICT (sku) DO NOTHING "
        "RETURNING id, sku, name, on_hand",
        [sku, name, opening],
    )
    made = await cur.fetchone()
    if made:
        item = StockItemRow(*made)
        if opening:
            await conn.execute(
                "INSERT INTO stock_movement (stock_item_id, quantity, kind, idempotency_key) "
                "VALUES (%s, %s, 'OPENING', 'opening:' || %s)",
                [item.id, opening, sku],
            )
        changes = {"sku": sku, "name": name, "onHand": opening}
        key = audit.entity_id("StockItem", item.id)
        await audit.record(conn, by, "createStockItem", entity="StockItem", key=key, changes=changes)
        return item, True, opening
    cur = await conn.execute(
        "SELECT s.id, s.sku, s.name, s.on_hand, m.quantity FROM stock_item AS s "
        "LEFT JOIN stock_movement AS m ON m.idempotency_key = 'opening:' || s.sku WHERE s.sku = %s",
        [sku],
    )
    row = await cur.fetchone()
    assert row is not None
    return StockItemRow(*row[:4]), False, row[4] or 0


async def receive_stock(
    conn: AsyncConnection[Any], stock_item_id: int, quantity: int, reference: str, *, by: Actor
) -> tuple[bool, tuple[int, int] | None]:
    """Book a receipt once per reference, with its audit row: (moved now, (item id, quantity)
    of the receipt already booked under this reference, when there was one)."""
    cur = await conn.execute(
        "INSERT INTO stock_movement (stock_item_id, quantity, kind, idempotency_key) "
        "VALUES (%s, %s, 'RECEIPT', 'receipt:' || %s) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        [stock_item_id, quantity, reference],
    )
    if await cur.fetchone():
        await conn.execute(
            "UPDATE stock_item SET on_hand = on_hand + %s, updated_at = now() WHERE id = %s", [quantity, stock_item_id]
        )
        changes = {"quantity": quantity, "reference": reference}
        key = audit.entity_id("StockItem", stock_item_id)
        await audit.record(conn, by, "receiveStock", entity="StockItem", key=key, changes=changes)
        return True, None
    cur = await conn.execute(
        "SELECT stock_item_id, quantity FROM stock_movement WHERE idempotency_key = 'receipt:' || %s", [reference]
    )
    row = await cur.fetchone()
    assert row is not None
    return False, (row[0], row[1])


async def stock_item(conn: AsyncConnection[Any], stock_item_id: int) -> StockItemRow:
    cur = await conn.execute("SELECT id, sku, name, on_hand FROM stock_item WHERE id = %s", [stock_item_id])
    row = await cur.fetchone()
    assert row is not None
    return StockItemRow(*row)


async def lock_order(conn: AsyncConnection[Any], sod_number: str) -> bool:
    """Lock the order's key row for this transaction; False when the order does not exist."""
    cur = await conn.execute("SELECT 1 FROM service_order_key WHERE sod_number = %s FOR UPDATE", [sod_number])
    return await cur.fetchone() is not None


async def current_lines(conn: AsyncConnection[Any], order_id: int, created_at: Any) -> list[tuple[int, int, int, Any]]:
    """(line_no, stock_item_id, quantity, unit_price) of a live order."""
    cur = await conn.execute(
        "SELECT line_no, stock_item_id, quantity, unit_price FROM service_order_line "
        "WHERE order_id = %s AND created_at = %s ORDER BY line_no",
        [order_id, created_at],
    )
    return await cur.fetchall()


def order_transaction(conn: AsyncConnection[Any]) -> AbstractAsyncContextManager[None]:
    """The transaction of a mutation that stages orders: its hot rows (stats, stock) are
    locked by the message that commits it (order_write.hot_rows_last)."""
    return order_write.hot_rows_last(conn)


async def stage(
    conn: AsyncConnection[Any], orders: list[tuple[Any, ...]], lines: list[tuple[Any, ...]], *, by: Actor, action: str
) -> list[tuple[Any, ...]]:
    """Stage orders and lines (order_write.ORDER_COLUMNS / LINE_COLUMNS) and apply them but
    the hot rows, which the caller's `order_transaction` applies as it commits; every order
    inserted or updated gets its audit row (`action` by `by`), an unchanged one none."""
    await conn.execute(order_write.STAGE_SCRIPT)
    cur = conn.cursor()
    async with cur.copy(order_write.COPY_ORDERS) as copy:
        for order in orders:
            await copy.write_row(order)
    async with cur.copy(order_write.COPY_LINES) as copy:
        for line in lines:
            await copy.write_row(line)
    results = await order_write.apply_cold_async(conn)
    await audit.record_orders(conn, by, action)
    return results


async def current_lsn(conn: AsyncConnection[Any]) -> str:
    cur = await conn.execute("SELECT pg_current_wal_lsn()::text")
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])

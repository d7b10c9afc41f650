"""Orders name a customer, lines and movements a stock item, that exists; customers and
stock items stay (0028): the rule the foreign keys kept, now checked per statement."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from nexes.settings import Settings


def _item(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "INSERT INTO stock_item (sku, name) VALUES ('REF-' || gen_random_uuid(), 'ref test') RETURNING id"
    ).fetchone()
    assert row
    return int(row[0])


def test_a_movement_naming_a_missing_stock_item_is_refused_with_the_missing_id(seeded: Settings) -> None:
    with psycopg.connect(seeded.admin_url) as conn:
        item = _item(conn)
        missing = item + 1_000_000
        with pytest.raises(errors.ForeignKeyViolation) as caught:
            conn.execute(
                "INSERT INTO stock_movement (stock_item_id, quantity, kind, idempotency_key) "
                "VALUES (%s, 1, 'RECEIPT', 'ref:a'), (%s, 1, 'RECEIPT', 'ref:b')",
                [item, missing],
            )
        assert (
            caught.value.diag.message_detail == f'Key (stock_item_id)=({missing}) is not present in table "stock_item".'
        )
        conn.rollback()


def test_a_line_naming_a_missing_stock_item_is_refused_on_insert_and_on_update(seeded: Settings) -> None:
    with psycopg.connect(seeded.admin_url) as conn:
        line = conn.execute(
            "SELECT order_id, created_at, line_no, stock_item_id FROM service_order_line LIMIT 1"
        ).fetchone()
        assert line
        order_id, created_at, _, _ = line
        with pytest.raises(errors.ForeignKeyViolation):
            conn.execute(
                "INSERT INTO service_order_line (order_id, created_at, line_no, stock_item_id, quantity, unit_price) "
                "VALUES (%s, %s, 998, -1, 1, 1)",
                [order_id, created_at],
            )
        conn.rollback()
        with pytest.raises(errors.ForeignKeyViolation):
            conn.execute(
                "UPDATE service_order_line SET stock_item_id = -1 "
                "WHERE order_id = %s AND created_at = %s AND line_no = %s",
                line[:3],
            )
        conn.rollback()
        # The same statements with an item that exists pass.
        item = _item(conn)
        conn.execute(
            "UPDATE service_order_line SET stock_item_id = %s WHERE order_id = %s AND created_at = %s AND line_no = %s",
            [item, *line[:3]],
        )
        conn.rollback()


def test_an_order_naming_a_missing_customer_is_refused_on_insert_and_on_update(seeded: Settings) -> None:
    with psycopg.connect(seeded.admin_url) as conn:
        order = conn.execute("SELECT id, created_at, customer_id FROM service_order LIMIT 1").fetchone()
        assert order
        with pytest.raises(errors.ForeignKeyViolation) as caught:
            conn.execute(
                "INSERT INTO service_order (id, created_at, sod_number, customer_id, status, currency, total_amount, "
                "updated_at) VALUES (-1, %s, 'REF-1', -7, 'OPEN', 'EUR', 0, now())",
                [order[1]],
            )
        assert caught.value.diag.message_detail == 'Key (customer_id)=(-7) is not present in table "customer".'
        conn.rollback()
        with pytest.raises(errors.ForeignKeyViolation):
            conn.execute("UPDATE service_order SET customer_id = -7 WHERE id = %s AND created_at = %s", order[:2])
        conn.rollback()
        for statement in ("DELETE FROM customer WHERE id = %s", "UPDATE customer SET id = DEFAULT WHERE id = %s"):
            with pytest.raises(errors.RestrictViolation, match="customer rows are never deleted or renumbered"):
                conn.execute(statement, [order[2]])
            conn.rollback()


def test_stock_items_cannot_be_deleted_truncated_or_renumbered(seeded: Settings) -> None:
    with psycopg.connect(seeded.admin_url) as conn:
        item = _item(conn)  # even one that nothing refers to yet
        conn.commit()
        for statement, params in (
            ("DELETE FROM stock_item WHERE id = %s", [item]),
            ("UPDATE stock_item SET id = DEFAULT WHERE id = %s", [item]),
            ("TRUNCATE stock_item CASCADE", None),
        ):
            with pytest.raises(errors.RestrictViolation, match="stock_item rows are never deleted or renumbered"):
                conn.execute(statement, params)
            conn.rollback()
        # Changing what an item says is not renumbering it.
        conn.execute("UPDATE stock_item SET name = 'renamed' WHERE id = %s", [item])
        conn.commit()
        assert conn.execute("SELECT name FROM stock_item WHERE id = %s", [item]).fetchone() == ("renamed",)

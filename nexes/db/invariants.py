"""The data invariants (DESIGN.md §3), as queries that return their violations.

Tests run them after every write path; the reconciliation job reports them.
"All orders" means service_order plus service_order_archive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import LiteralString

import psycopg

from nexes.db.reconcile import CUM_DRIFT

ALL_ORDERS = "(SELECT * FROM service_order UNION ALL SELECT * FROM service_order_archive)"
ALL_LINES = "(SELECT * FROM service_order_line UNION ALL SELECT * FROM service_order_line_archive)"

# Each query returns at most a sample of offending rows, as text, for the report.
CHECKS: dict[str, LiteralString] = {
    "order_without_key": f"""
        SELECT o.sod_number FROM {ALL_ORDERS} AS o
        LEFT JOIN service_order_key AS k ON k.id = o.id
        WHERE k.id IS NULL OR k.sod_number <> o.sod_number OR k.created_at <> o.created_at
        LIMIT 20""",
    "key_without_order": f"""
        SELECT k.sod_number FROM service_order_key AS k
        WHERE NOT EXISTS (SELECT 1 FROM {ALL_ORDERS} AS o WHERE o.id = k.id AND o.created_at = k.created_at)
        LIMIT 20""",
    "on_hand_differs_from_ledger": """
        SELECT s.sku || ': on_hand ' || s.on_hand || ', ledger ' || coalesce(m.total, 0)
        FROM stock_item AS s
        LEFT JOIN (SELECT stock_item_id, sum(quantity) AS total FROM stock_movement GROUP BY 1) AS m
               ON m.stock_item_id = s.id
        WHERE s.on_hand <> coalesce(m.total, 0)
        LIMIT 20""",
    "line_movements_differ": f"""
        SELECT o.sod_number || ' line ' || l.line_no || ': expected '
               || CASE WHEN o.status = 'CANCELLED' THEN 0 ELSE -l.quantity END || ', ledger '
               || coalesce(m.total, 0)
        FROM {ALL_LINES} AS l
        JOIN {ALL_ORDERS} AS o ON o.id = l.order_id AND o.created_at = l.created_at
        LEFT JOIN (SELECT sod_number, line_no, sum(quantity) AS total FROM stock_movement
                   WHERE sod_number IS NOT NULL GROUP BY 1, 2) AS m
               ON m.sod_number = o.sod_number AND m.line_no = l.line_no
        WHERE coalesce(m.total, 0) <> CASE WHEN o.status = 'CANCELLED' THEN 0 ELSE -l.quantity END
        LIMIT 20""",
    "movements_of_missing_lines": f"""
        SELECT m.sod_number || ' line ' || m.line_no || ': ledger ' || sum(m.quantity)
        FROM stock_movement AS m
        WHERE m.sod_number IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM {ALL_LINES} AS l JOIN service_order_key AS k ON k.id = l.order_id
            WHERE k.sod_number = m.sod_number AND l.line_no = m.line_no)
        GROUP BY m.sod_number, m.line_no
        HAVING sum(m.quantity) <> 0
        LIMIT 20""",
    "dashboard_stat_differs": f"""
        WITH truth AS (
            SELECT (created_at AT TIME ZONE 'UTC')::date AS day, status, count(*) AS n
            FROM {ALL_ORDERS} AS o GROUP BY 1, 2
        ), kept AS (
            SELECT day, status, sum(order_count) AS n FROM dashboard_stat GROUP BY 1, 2 HAVING sum(order_count) <> 0
        )
        SELECT coalesce(t.day, k.day) || ' ' || coalesce(t.status, k.status) || ': orders '
               || coalesce(t.n, 0) || ', stat ' || coalesce(k.n, 0)
        FROM truth AS t FULL JOIN kept AS k ON k.day = t.day AND k.status = t.status
        WHERE coalesce(t.n, 0) <> coalesce(k.n, 0)
        LIMIT 20""",
    "customer_stat_month_differs": f"""
        WITH truth AS (
            SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month, currency, customer_id,
                   count(*) AS n, sum(total_amount) AS amount
            FROM {ALL_ORDERS} AS o WHERE status <> 'CANCELLED' GROUP BY 1, 2, 3
        ), kept AS (
            SELECT month, currency, customer_id, order_count AS n, total_amount AS amount
            FROM customer_stat_month WHERE order_count <> 0 OR total_amount <> 0
        )
        SELECT coalesce(t.month, k.month) || ' ' || coalesce(t.currency, k.currency) || ' customer '
               || coalesce(t.customer_id, k.customer_id) || ': orders ' || coalesce(t.n, 0)
               || ', stat ' || coalesce(k.n, 0)
        FROM truth AS t FULL JOIN kept AS k USING (month, currency, customer_id)
        WHERE coalesce(t.n, 0) <> coalesce(k.n, 0) OR coalesce(t.amount, 0) <> coalesce(k.amount, 0)
        LIMIT 20""",
    # Built from the column list in nexes.db.reconcile (26 columns), not from input.
    "customer_stat_cum_differs": CUM_DRIFT
    + "\nSELECT year || ' ' || currency || ' customer ' || customer_id FROM drift LIMIT 20",
    "dashboard_month_differs": """
        WITH days AS (
            SELECT date_trunc('month', day)::date AS month, status, currency, sum(order_count) AS n,
                   sum(total_amount) AS amount
            FROM dashboard_stat GROUP BY 1, 2, 3
        )
        SELECT coalesce(d.month, m.month) || ' ' || coalesce(d.status, m.status) || ' '
               || coalesce(d.currency, m.currency) || ': days ' || coalesce(d.n, 0)
               || ', month ' || coalesce(m.order_count, 0)
        FROM days AS d FULL JOIN dashboard_stat_month AS m USING (month, status, currency)
        WHERE coalesce(d.n, 0) <> coalesce(m.order_count, 0) OR coalesce(d.amount, 0) <> coalesce(m.total_amount, 0)
        LIMIT 20""",
}


@dataclass(frozen=True)
class Violation:
    check: str
    samples: list[str]


def check_all(conn: psycopg.Connection) -> list[Violation]:
    """Run every invariant; return the ones that do not hold, with sample rows."""
    found = []
    for name, query in CHECKS.items():
        rows = [str(r[0]) for r in conn.execute(query).fetchall()]
        if rows:
            found.append(Violation(name, rows))
    return found

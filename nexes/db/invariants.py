"""The data invariants (docs/design.md §3), as queries that return their violations.

Tests run them after every write path; the reconciliation job reports them. The
queries are db/sql/invariants.sql, one named check each.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from nexes.db.sql import load

CHECKS = load("invariants")

# "Stock equals the ledger", in full: every order its key and every key its order, each
# item's on_hand the sum of its movements, each line's movements what its order's status
# implies, no movements left of a line that is gone. Every quarter, live and archived; each
# check set-based (one aggregate of the ledger, hash joins), so the whole set takes seconds
# at 1M orders (bench/README.md) and the failure drills run it after every fault.
STOCK_LEDGER = (
    "order_without_key",
    "key_without_order",
    "on_hand_differs_from_ledger",
    "line_movements_differ",
    "movements_of_missing_lines",
)


@dataclass(frozen=True)
class Violation:
    check: str
    samples: list[str]


def check_all(conn: psycopg.Connection, names: tuple[str, ...] | None = None) -> list[Violation]:
    """Run every invariant (or those `names`); return the ones that do not hold, with sample rows."""
    found = []
    for name in names or tuple(CHECKS):
        rows = [str(r[0]) for r in conn.execute(CHECKS[name]).fetchall()]
        if rows:
            found.append(Violation(name, rows))
    return found


def check_stock_ledger(conn: psycopg.Connection) -> list[Violation]:
    """The stock invariants in full (STOCK_LEDGER), for the drills: the violations found."""
    return check_all(conn, STOCK_LEDGER)

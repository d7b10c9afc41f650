"""The data invariants (docs/design.md §3), as queries that return their violations.

Tests run them after every write path; the reconciliation job reports them. The
queries are db/sql/invariants.sql, one named check each.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from nexes.db.sql import load

CHECKS = load("invariants")


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

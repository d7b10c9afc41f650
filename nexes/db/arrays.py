"""Array parameters as PostgreSQL array literals, typed by a cast in the statement.

psycopg dumps a Python list by scanning it for its elements' type (the widest int, a
datetime's offset) in Python: a statement with an order's two lists (ids, created_at) cost
138 us of client CPU against 100 us with the same values as literals, and 72 us with no
parameters (issue 21; bench/README.md, "Fourth session on issue 21"). A literal is one
join, and the statement's `::bigint[]` / `::timestamptz[]` types it. Exact: a timestamptz
prints to the microsecond with its offset (seconds included, as in a zone's local mean
time before 1900), which PostgreSQL reads back as the same instant.

Hand-written because psycopg has no cheaper list dumper for a known element type.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime


def bigint_array(values: Iterable[int]) -> str:
    """`{1,2,3}`: ids (Python ints, which print as digits only)."""
    return "{" + ",".join([str(int(v)) for v in values]) + "}"


def timestamptz_array(values: Iterable[datetime]) -> str:
    """`{"2026-12-07T07:00:00.123456+00:00",...}`: exact to the microsecond, with its offset;
    a naive datetime (whose meaning would be the session's time zone) is refused."""
    parts = []
    for value in values:
        if value.tzinfo is None:
            raise ValueError(f"a timestamptz array takes aware datetimes, not {value!r}")
        parts.append(f'"{value.isoformat()}"')
    return "{" + ",".join(parts) + "}"

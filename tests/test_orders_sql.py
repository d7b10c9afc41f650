"""Keyset page SQL: the text cached per shape is the text composed per request; the
statements' array literals (nexes.db.arrays) on the real PostgreSQL."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import sql

from nexes.db.keyset import Keyset
from nexes.db.orders import SORTS, OrderFilter, PageShape, page_query, page_sql_text
from nexes.settings import Settings
from tests.support.databases import superuser_url

FILTERS = [
    OrderFilter(),
    OrderFilter(statuses=("OPEN",)),
    OrderFilter(statuses=("OPEN", "DRAFT", "OPEN")),
    OrderFilter(customer_id=7, sod_number_prefix="SOD-1"),
    OrderFilter(created_from=datetime(2025, 1, 1, tzinfo=UTC), created_to=datetime(2025, 4, 1, tzinfo=UTC)),
    OrderFilter(
        statuses=("CANCELLED", "COMPLETED"), include_archived=True, created_to=datetime(2026, 1, 1, tzinfo=UTC)
    ),
]


def test_cached_page_sql_equals_the_composed_sql_and_its_parameters_fill_it() -> None:
    after_values = [None, Keyset(datetime(2025, 2, 1, tzinfo=UTC), 42)]
    for flt, sort, after, backward, with_customer in itertools.product(
        FILTERS, SORTS, after_values, (False, True), (False, True)
    ):
        query, params = page_query(flt, sort, backward=backward, after=after, limit=51, with_customer=with_customer)
        cached = page_sql_text(PageShape.of(flt, sort, backward=backward, after=after, with_customer=with_customer))
        assert cached == query.as_bytes(None)
        assert set(re.findall(rb"%\((\w+)\)s", cached)) == {name.encode() for name in params}


@pytest.mark.parametrize("zone", ["UTC", "Europe/Amsterdam", "Asia/Kolkata", "Pacific/Chatham"])
def test_array_literals_read_back_as_the_same_ids_and_instants_in_any_session_zone(
    settings: Settings, zone: str
) -> None:
    from nexes.db.arrays import bigint_array, timestamptz_array

    instants = [
        "1850-03-01 12:34:56.789012+00",  # local mean time: an offset with seconds
        "2026-12-07 07:00:00+00",
        "1900-01-01 00:00:00.000001+00",
        "9999-12-30 23:59:59.999999+00",  # the last day psycopg reads in every zone
    ]
    with psycopg.connect(superuser_url(settings.replica_admin_urls[0]), autocommit=True) as conn:
        conn.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(zone)))
        stamps = [row[0] for row in conn.execute("SELECT unnest(%s::timestamptz[])", [instants]).fetchall()]
        ids = [0, 1, 999_999_999_999_999_999]
        same = conn.execute(
            "SELECT %(lit)s::timestamptz[] = %(typed)s::timestamptz[], %(ids)s::bigint[] = %(typed_ids)s::bigint[]",
            {"lit": timestamptz_array(stamps), "typed": stamps, "ids": bigint_array(ids), "typed_ids": ids},
        ).fetchone()
        assert conn.execute("SELECT cardinality(%s::bigint[])", [bigint_array([])]).fetchone() == (0,)
    assert same == (True, True)
    with pytest.raises(ValueError, match="aware"):
        timestamptz_array([datetime(2026, 12, 7)])  # the naive datetime it refuses


def test_remembered_order_keys_are_bounded_answer_whole_and_keep_the_most_recently_used() -> None:
    from nexes.db.key_hints import KeyHints

    at = datetime(2026, 1, 1, tzinfo=UTC)
    hints = KeyHints(size=3)
    hints.remember("db", [(1, at), (2, at), (3, at)])
    assert hints.keys_of("db", [1]) == [(1, at)]  # 1 is now the most recently used
    hints.remember("db", [(4, at)])
    assert len(hints) == 3 and hints.keys_of("db", [2]) is None  # the least recently used went
    assert hints.keys_of("db", [1, 3, 4, 1]) == [(1, at), (3, at), (4, at)]
    assert hints.keys_of("db", [1, 5]) is None  # one unknown id: none, the key table answers
    assert hints.keys_of("other", [1]) is None  # another database knows nothing of these
    hints.forget("db", [1, 99])
    assert hints.keys_of("db", [1]) is None and len(hints) == 2

"""Keyset page SQL: the text cached per shape is the text composed per request."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime

from nexes.db.keyset import Keyset
from nexes.db.orders import SORTS, OrderFilter, PageShape, page_query, page_sql_text

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

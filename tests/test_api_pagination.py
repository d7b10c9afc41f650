"""Pagination properties (hypothesis): keyset walks against a plain SQL ground truth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexes import settings as settings_module
from nexes.db.seed import seed
from nexes.resolvers.ids import decode_any_global_id, global_id
from nexes.settings import Settings
from tests.conftest import client_for, gql
from tests.support.databases import TEMPLATE_DB, drop_database, environ_for, recreate_database

ORDERS = 400
SORT_SQL = {
    "CREATED_AT_DESC": "created_at DESC, id DESC",
    "CREATED_AT_ASC": "created_at ASC, id ASC",
    "UPDATED_AT_DESC": "updated_at DESC, id DESC",
    "TOTAL_AMOUNT_DESC": "total_amount DESC, id DESC",
}
# Filters span the seed's five years (and half a year before) up to now, on any day: fixed
# bounds (2021-06-01 to 2026-12-01) would leave the seed's orders behind. One instant per
# session, so that an example replays alike.
NOW = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
STATUSES = ["DRAFT", "OPEN", "IN_PROGRESS", "COMPLETED", "CANCELLED"]
QUERY = """
query($first: Int, $after: String, $last: Int, $before: String, $filter: ServiceOrderFilter, $order: ServiceOrderOrder) {
  serviceOrders(first: $first, after: $after, last: $last, before: $before, filter: $filter, orderBy: $order) {
    edges { cursor node { id } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}"""  # noqa: E501


@pytest.fixture(scope="module")
def walk_db(template_settings: Settings) -> Any:
    """A small database of its own: full walks stay short, and inserts touch nothing else."""
    name = "nexes_t_pagination"
    recreate_database(template_settings.admin_url, name, template=TEMPLATE_DB)
    s = settings_module.load(environ_for(name))
    seed(s.admin_url, ORDERS, defer=False)
    # Ties on total_amount, so the id tie-breaker is exercised.
    with psycopg.connect(s.admin_url, autocommit=True) as conn:
        conn.execute("UPDATE service_order SET total_amount = 100.00 WHERE id % 7 = 0")
        customers = [
            r[0]
            for r in conn.execute(
                "SELECT customer_id FROM service_order GROUP BY 1 HAVING count(*) > 3 ORDER BY 1 LIMIT 5"
            )
        ]
    yield s, customers
    drop_database(template_settings.admin_url, name)


@pytest.fixture(scope="module")
async def walk_client(walk_db: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(walk_db[0]) as client:
        yield client


def truth(s: Settings, flt: dict[str, Any], order: str) -> list[int]:
    conds, params = ["true"], {}
    if flt.get("status"):
        conds.append("status::text = ANY(%(status)s)")
        params["status"] = flt["status"]
    if flt.get("customerId"):
        conds.append("customer_id = %(customer)s")
        params["customer"] = decode_any_global_id(flt["customerId"])[1]  # type: ignore[index]
    if flt.get("createdFrom"):
        conds.append("created_at >= %(from)s")
        params["from"] = datetime.fromisoformat(flt["createdFrom"])
    if flt.get("createdTo"):
        conds.append("created_at < %(to)s")
        params["to"] = datetime.fromisoformat(flt["createdTo"])
    query = f"SELECT id FROM service_order WHERE {' AND '.join(conds)} ORDER BY {SORT_SQL[order]}"
    with psycopg.connect(s.admin_url) as conn:
        return [r[0] for r in conn.execute(query, params)]


def filters(customers: list[int]) -> st.SearchStrategy[dict[str, Any]]:
    day = st.datetimes(min_value=NOW - timedelta(days=5 * 365 + 180), max_value=NOW, timezones=st.just(UTC))
    span = st.lists(day, min_size=2, max_size=2).map(sorted)
    return st.fixed_dictionaries(
        {},
        optional={
            "status": st.lists(st.sampled_from(STATUSES), min_size=1, max_size=3, unique=True),
            "customerId": st.sampled_from(customers).map(lambda c: global_id("Customer", c)),
            "span": span,
        },
    ).map(_spread_span)


def _spread_span(flt: dict[str, Any]) -> dict[str, Any]:
    if "span" in flt:
        low, high = flt.pop("span")
        flt["createdFrom"], flt["createdTo"] = low.isoformat(), high.isoformat()
    return flt


async def walk(
    client: httpx.AsyncClient, flt: dict[str, Any], order: str, size: int, *, backward: bool, between_pages: Any = None
) -> list[int]:
    seen: list[int] = []
    cursor = None
    for _ in range(ORDERS + 5):  # bounded: a walk can never loop forever
        variables: dict[str, Any] = {"filter": flt, "order": order}
        variables.update({"last": size, "before": cursor} if backward else {"first": size, "after": cursor})
        body = await gql(client, QUERY, variables)
        assert "errors" not in body, body["errors"]
        conn = body["data"]["serviceOrders"]
        ids = [decode_any_global_id(e["node"]["id"])[1] for e in conn["edges"]]  # type: ignore[index]
        seen = ids + seen if backward else seen + ids
        if between_pages is not None:
            await between_pages()
        more = conn["pageInfo"]["hasPreviousPage" if backward else "hasNextPage"]
        if not more:
            return seen
        cursor = conn["pageInfo"]["startCursor" if backward else "endCursor"]
        assert len(ids) == size
    raise AssertionError("the walk did not end")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_forward_and_backward_walks_visit_every_row_once_in_order(
    walk_db: Any, walk_client: httpx.AsyncClient, data: st.DataObject
) -> None:
    s, customers = walk_db
    flt = data.draw(filters(customers), label="filter")
    order = data.draw(st.sampled_from(sorted(SORT_SQL)), label="order")
    size = data.draw(st.integers(min_value=3, max_value=60), label="size")
    expected = truth(s, flt, order)
    assert await walk(walk_client, flt, order, size, backward=False) == expected
    assert await walk(walk_client, flt, order, size, backward=True) == expected


INSERT = """
WITH k AS (
    INSERT INTO service_order_key (sod_number, created_at)
    SELECT 'NEW-' || nextval('service_order_id_seq') || '-' || g, created_at
    FROM (SELECT g, (SELECT min(created_at) + (max(created_at) - min(created_at)) * random() FROM service_order)
                    AS created_at
          FROM generate_series(1, 3) AS g) AS s
    RETURNING id, sod_number, created_at
)
INSERT INTO service_order (id, created_at, sod_number, customer_id, status, description, currency, total_amount,
                           updated_at)
SELECT id, created_at, sod_number, (SELECT min(id) FROM customer), 'OPEN', 'inserted mid-walk', 'EUR',
       (random() * 1000)::numeric(14, 2), now()
FROM k
"""


@pytest.mark.parametrize("order", sorted(SORT_SQL))
async def test_rows_inserted_during_a_walk_never_make_existing_rows_skip_or_repeat(
    walk_db: Any, walk_client: httpx.AsyncClient, order: str
) -> None:
    s, _ = walk_db
    before = truth(s, {}, order)

    async def insert_rows() -> None:
        with psycopg.connect(s.admin_url, autocommit=True) as conn:
            conn.execute(INSERT)

    seen = await walk(walk_client, {}, order, 25, backward=False, between_pages=insert_rows)
    assert len(seen) == len(set(seen))  # nothing repeated
    existing = [i for i in seen if i in set(before)]
    assert existing == before  # every row that existed is there once, in order
    assert len(truth(s, {}, order)) > len(before) + 3  # rows really were inserted during the walk

"""Read API behaviour on the seeded database: shapes, counts, statement counts, lookups."""

from __future__ import annotations

import datetime as dt
import re

import httpx
import psycopg

from nexes.settings import Settings
from tests.conftest import gql
from tests.support.replicas import health_detail

FULL_PAGE = """
query($first: Int!) {
  serviceOrders(first: $first) {
    edges { node { id sodNumber status createdAt totalAmount customer { name } lines { lineNo quantity unitPrice stockItem { sku onHand } } } }
  }
}"""  # noqa: E501


def statements(response: httpx.Response) -> int:
    match = re.search(r'desc="(\d+) statements"', response.headers["server-timing"])
    assert match, response.headers["server-timing"]
    return int(match[1])


async def test_page_statement_count_is_fixed_whatever_the_page_size(app_client: httpx.AsyncClient) -> None:
    counts = {}
    for first in (1, 10, 100):
        body = await gql(app_client, FULL_PAGE, {"first": first})
        assert len(body["data"]["serviceOrders"]["edges"]) == first
        counts[first] = statements(body["_response"])
    # the page with its customers joined, then its lines with their stock items
    assert counts == {1: 2, 10: 2, 100: 2}


async def test_only_selected_relations_are_fetched(app_client: httpx.AsyncClient) -> None:
    body = await gql(app_client, "{ serviceOrders(first: 50) { edges { node { sodNumber } } } }")
    assert statements(body["_response"]) == 1


async def test_fragments_still_trigger_the_prefetch(app_client: httpx.AsyncClient) -> None:
    query = """
    fragment C on ServiceOrder { customer { code } }
    { serviceOrders(first: 20) { edges { node { ... on ServiceOrder { lines { lineNo } } ...C } } } }"""
    body = await gql(app_client, query)
    nodes = [e["node"] for e in body["data"]["serviceOrders"]["edges"]]
    assert all(n["customer"]["code"] and n["lines"] for n in nodes)
    assert statements(body["_response"]) == 2


async def test_datetimes_have_microseconds_and_offset(app_client: httpx.AsyncClient) -> None:
    body = await gql(app_client, "{ serviceOrders(first: 5) { edges { node { createdAt updatedAt totalAmount } } } }")
    for edge in body["data"]["serviceOrders"]["edges"]:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", edge["node"]["createdAt"])
        assert re.fullmatch(r"\d+\.\d\d", edge["node"]["totalAmount"])


async def test_total_count_comes_from_stats_when_the_filter_allows(
    app_client: httpx.AsyncClient, seeded: Settings
) -> None:
    with psycopg.connect(seeded.admin_url) as conn:
        (open_count,) = conn.execute("SELECT count(*) FROM service_order WHERE status = 'OPEN'").fetchone() or (0,)
        (customer_id, per_customer) = conn.execute(
            "SELECT customer_id, count(*) FROM service_order GROUP BY 1 ORDER BY 2 DESC LIMIT 1"
        ).fetchone() or (0, 0)
    body = await gql(app_client, "{ serviceOrders(first: 1, filter: {status: [OPEN]}) { totalCount totalCountExact } }")
    assert body["data"]["serviceOrders"] == {"totalCount": open_count, "totalCountExact": True}
    from nexes.resolvers.ids import global_id

    query = "query($c: ID) { serviceOrders(first: 1, filter: {customerId: $c}) { totalCount totalCountExact } }"
    body = await gql(app_client, query, {"c": global_id("Customer", customer_id)})
    assert body["data"]["serviceOrders"] == {"totalCount": per_customer, "totalCountExact": True}


async def test_service_order_by_sod_number_and_node_agree(app_client: httpx.AsyncClient) -> None:
    page = await gql(app_client, "{ serviceOrders(first: 1) { edges { node { id sodNumber } } } }")
    node = page["data"]["serviceOrders"]["edges"][0]["node"]
    query = """query($sod: String!, $id: ID!) {
      serviceOrder(sodNumber: $sod) { id sodNumber customer { id } lines { lineNo } }
      node(id: $id) { id ... on ServiceOrder { sodNumber customer { id } lines { lineNo } } }
      nodes(ids: [$id, $id]) { id }
      missing: serviceOrder(sodNumber: "NO-SUCH-ORDER") { id }
    }"""
    body = await gql(app_client, query, {"sod": node["sodNumber"], "id": node["id"]})
    data = body["data"]
    assert data["serviceOrder"] == data["node"]
    assert data["nodes"] == [{"id": node["id"]}, {"id": node["id"]}]
    assert data["missing"] is None
    customer = await gql(
        app_client,
        "query($id: ID!) { node(id: $id) { ... on Customer { code } } }",
        {"id": data["node"]["customer"]["id"]},
    )
    assert customer["data"]["node"]["code"]


NODE = "query($id: ID!) { node(id: $id) { id ... on ServiceOrder { sodNumber createdAt lines { lineNo quantity } } } }"


def _database(settings: Settings) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(settings.replica_urls[0])["dbname"])


async def _first_order(client: httpx.AsyncClient) -> dict[str, str]:
    page = await gql(client, "{ serviceOrders(first: 1) { edges { node { id sodNumber createdAt } } } }")
    node: dict[str, str] = page["data"]["serviceOrders"]["edges"][0]["node"]
    return node


async def test_an_order_read_again_by_id_skips_the_key_table(app_client: httpx.AsyncClient, seeded: Settings) -> None:
    from nexes.db.key_hints import ORDER_KEYS

    order = await _first_order(app_client)
    ORDER_KEYS.clear()
    first = await gql(app_client, NODE, {"id": order["id"]})
    again = await gql(app_client, NODE, {"id": order["id"]})
    # The key table, then the order and its lines; then the order and its lines alone.
    assert (statements(first["_response"]), statements(again["_response"])) == (3, 2)
    assert first["data"] == again["data"] and again["data"]["node"]["sodNumber"] == order["sodNumber"]
    assert again["data"]["node"]["lines"]
    by_sod = await gql(
        app_client, "query($s: String!) { serviceOrder(sodNumber: $s) { id } }", {"s": order["sodNumber"]}
    )
    assert by_sod["data"]["serviceOrder"]["id"] == order["id"]


async def test_a_wrong_remembered_key_costs_a_round_trip_not_a_wrong_answer(
    app_client: httpx.AsyncClient, seeded: Settings
) -> None:
    # A stand-in for a database restored to before the order (the one way a remembered key
    # can go wrong, nexes/db/key_hints.py): the key is remembered with another instant.
    from nexes.db.key_hints import ORDER_KEYS
    from nexes.resolvers.ids import decode_any_global_id

    order = await _first_order(app_client)
    decoded = decode_any_global_id(order["id"])
    assert decoded is not None
    order_id = int(decoded[1])
    truth = await gql(app_client, NODE, {"id": order["id"]})
    ORDER_KEYS.clear()
    wrong = dt.datetime.fromisoformat(order["createdAt"]) + dt.timedelta(microseconds=1)
    ORDER_KEYS.remember(_database(seeded), [(order_id, wrong)])
    body = await gql(app_client, NODE, {"id": order["id"]})
    assert "errors" not in body and body["data"] == truth["data"]
    # The wrong key's pipeline, the key table, the right key's pipeline.
    assert statements(body["_response"]) == 5
    assert ORDER_KEYS.keys_of(_database(seeded), [order_id]) == [
        (order_id, dt.datetime.fromisoformat(order["createdAt"]))
    ]
    assert statements((await gql(app_client, NODE, {"id": order["id"]}))["_response"]) == 2


async def test_a_remembered_key_of_no_order_answers_null(app_client: httpx.AsyncClient, seeded: Settings) -> None:
    from nexes.db.key_hints import ORDER_KEYS
    from nexes.resolvers.ids import global_id

    missing = 9_000_000_000_000
    ORDER_KEYS.remember(_database(seeded), [(missing, dt.datetime(2025, 1, 1, tzinfo=dt.UTC))])
    body = await gql(app_client, NODE, {"id": global_id("ServiceOrder", missing)})
    assert "errors" not in body and body["data"] == {"node": None}
    assert ORDER_KEYS.keys_of(_database(seeded), [missing]) is None


async def test_nested_customer_orders_take_fixed_statements_and_match_sql(
    app_client: httpx.AsyncClient, seeded: Settings
) -> None:
    query = """query($n: Int!) { customers(first: $n) { edges { node { code
      serviceOrders(first: 3) { edges { node { sodNumber customer { code } lines { lineNo } } } } } } } }"""
    counts = {}
    for n in (2, 20):
        body = await gql(app_client, query, {"n": n})
        counts[n] = statements(body["_response"])
        customers = body["data"]["customers"]["edges"]
    assert counts == {2: 3, 20: 3}  # customers, every customer's page at once, their lines
    with psycopg.connect(seeded.admin_url) as conn:
        for edge in customers:
            code = edge["node"]["code"]
            truth = [
                r[0]
                for r in conn.execute(
                    "SELECT o.sod_number FROM service_order o JOIN customer c ON c.id = o.customer_id "
                    "WHERE c.code = %s ORDER BY o.created_at DESC, o.id DESC LIMIT 3",
                    [code],
                )
            ]
            nodes = [e["node"] for e in edge["node"]["serviceOrders"]["edges"]]
            assert [n["sodNumber"] for n in nodes] == truth
            assert all(n["customer"]["code"] == code and n["lines"] for n in nodes)


async def test_nested_customer_orders_page_backward(app_client: httpx.AsyncClient, seeded: Settings) -> None:
    query = (
        "{ customers(first: 5) { edges { node { code serviceOrders(last: 2) { edges { node { sodNumber } } } } } } }"
    )
    body = await gql(app_client, query)
    with psycopg.connect(seeded.admin_url) as conn:
        for edge in body["data"]["customers"]["edges"]:
            truth = [
                r[0]
                for r in conn.execute(
                    "SELECT sod_number FROM (SELECT o.sod_number, o.created_at, o.id FROM service_order o "
                    "JOIN customer c ON c.id = o.customer_id WHERE c.code = %s "
                    "ORDER BY o.created_at ASC, o.id ASC LIMIT 2) s ORDER BY created_at DESC, id DESC",
                    [edge["node"]["code"]],
                )
            ]
            assert [e["node"]["sodNumber"] for e in edge["node"]["serviceOrders"]["edges"]] == truth


async def test_customer_service_orders_are_that_customers(app_client: httpx.AsyncClient) -> None:
    query = "{ customers(first: 3) { edges { node { id name serviceOrders(first: 5) { edges { node { customer { id } } } } } } } }"  # noqa: E501
    body = await gql(app_client, query)
    customers = body["data"]["customers"]["edges"]
    names = [c["node"]["name"] for c in customers]
    assert names == sorted(names)
    for edge in customers:
        for order in edge["node"]["serviceOrders"]["edges"]:
            assert order["node"]["customer"]["id"] == edge["node"]["id"]


async def test_dashboard_matches_the_orders(app_client: httpx.AsyncClient, seeded: Settings) -> None:
    # Days at both ends and whole months between, inside the seed's five years on any day (fixed
    # days, 2023-02-10 to 2024-07-03, held no orders from mid-2029 and the test compared nothing).
    year = dt.datetime.now(dt.UTC).year
    day_from, day_to = dt.date(year - 3, 2, 10), dt.date(year - 2, 7, 3)
    with psycopg.connect(seeded.admin_url) as conn:
        truth = dict(
            conn.execute(
                "SELECT status::text, count(*) FROM service_order "
                "WHERE (created_at AT TIME ZONE 'UTC')::date BETWEEN %s AND %s GROUP BY 1",
                [day_from, day_to],
            ).fetchall()
        )
    assert truth
    body = await gql(
        app_client,
        "query($from: Date!, $to: Date!) { dashboard(from: $from, to: $to) { totalCount statuses { status count } } }",
        {"from": day_from.isoformat(), "to": day_to.isoformat()},
    )
    got = {s["status"]: s["count"] for s in body["data"]["dashboard"]["statuses"] if s["count"]}
    assert got == truth
    assert body["data"]["dashboard"]["totalCount"] == sum(truth.values())


async def test_dashboard_ranges_to_the_last_date_are_open_ends(app_client: httpx.AsyncClient) -> None:
    """December 9999 has no next month in Python: a range ending there answered INTERNAL."""
    query = "query($from: Date, $to: Date) { dashboard(from: $from, to: $to) { totalCount } }"
    everything = await gql(app_client, query)
    assert everything["data"]["dashboard"]["totalCount"] > 0
    for day_from, day_to, total in [
        ("0001-01-01", "9999-12-31", everything["data"]["dashboard"]["totalCount"]),
        (None, "9999-12-30", everything["data"]["dashboard"]["totalCount"]),
        ("9999-12-15", "9999-12-31", 0),
        ("9999-12-31", None, 0),
    ]:
        body = await gql(app_client, query, {"from": day_from, "to": day_to})
        assert "errors" not in body, (day_from, day_to, body["errors"])
        assert body["data"]["dashboard"]["totalCount"] == total, (day_from, day_to)


async def test_order_counts_with_bounds_past_the_last_utc_date_answer(app_client: httpx.AsyncClient) -> None:
    """createdTo late on 9999-12-31 at a negative offset (or createdFrom early on 0001-01-01 at a
    positive one) is past the last (first) UTC date: totalCount answered INTERNAL."""
    query = "query($f: ServiceOrderFilter) { serviceOrders(first: 1, filter: $f) { totalCount } }"
    everything = await gql(app_client, query)
    assert everything["data"]["serviceOrders"]["totalCount"] > 0
    for flt in ({"createdTo": "9999-12-31T23:00:00-05:00"}, {"createdFrom": "0001-01-01T00:30:00+01:00"}):
        body = await gql(app_client, query, {"f": flt})
        assert "errors" not in body, (flt, body["errors"])
        assert body["data"]["serviceOrders"] == everything["data"]["serviceOrders"], flt


async def test_pages_bounded_near_the_first_or_last_date_answer(app_client: httpx.AsyncClient) -> None:
    """A created_at page tries a quarter-long window first: one ending before 0001-01-01 or
    starting after 9999-12-31 could not be computed (INTERNAL); such a page has no window."""
    query = (
        "query($f: ServiceOrderFilter, $o: ServiceOrderOrder) "
        "{ serviceOrders(first: 2, filter: $f, orderBy: $o) { edges { node { sodNumber } } } }"
    )
    for flt, order in [
        ({"createdTo": "0001-02-01T00:00:00+00:00"}, "CREATED_AT_DESC"),
        ({"createdFrom": "9999-12-01T00:00:00+00:00"}, "CREATED_AT_ASC"),
    ]:
        body = await gql(app_client, query, {"f": flt, "o": order})
        assert "errors" not in body, (flt, body["errors"])
        assert body["data"]["serviceOrders"]["edges"] == [], flt


async def test_stock_items_filter_and_order(app_client: httpx.AsyncClient) -> None:
    body = await gql(
        app_client,
        '{ stockItems(first: 100, filter: {nameContains: "valve"}) { totalCount edges { node { name onHand } } } }',
    )
    names = [e["node"]["name"] for e in body["data"]["stockItems"]["edges"]]
    assert names and all("valve" in n.lower() for n in names)
    assert names == sorted(names)
    assert body["data"]["stockItems"]["totalCount"] == len(names)


async def test_health_is_degraded_while_the_schema_lacks_a_migration_the_code_needs(
    app_client: httpx.AsyncClient, seeded: Settings
) -> None:
    with psycopg.connect(seeded.admin_url, autocommit=True) as conn:
        newest = conn.execute(
            "DELETE FROM schema_migration WHERE version = (SELECT max(version) FROM schema_migration) "
            "RETURNING version, name, checksum, applied_at"
        ).fetchone()
        assert newest is not None
        try:
            body = await health_detail(app_client)
        finally:
            conn.execute(
                "INSERT INTO schema_migration (version, name, checksum, applied_at) VALUES (%s, %s, %s, %s)", newest
            )
    assert body["status"] == "degraded"
    assert f"this code needs {newest[0]:04d}" in body["schema"] and "nexes migrate" in body["schema"]
    assert body["primary"]["schema_version"] < newest[0]
    after = await health_detail(app_client)
    assert after["status"] == "ok" and "schema" not in after
    assert after["primary"]["schema_version"] == newest[0]


async def test_liveness_and_health(app_client: httpx.AsyncClient) -> None:
    assert (await app_client.get("/api/health/live")).json() == {"status": "ok"}
    health = await app_client.get("/api/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    body = await health_detail(app_client)
    assert body["status"] == "ok"
    assert body["primary"]["reachable"] and body["replicas"][0]["reachable"]
    assert "lag_seconds" in body["replicas"][0]
    assert {"api-primary", "api-replica-0", "analyst-replica-0"} <= set(body["pools"])
    assert body["redis"]["reachable"] and body["typesense"]["reachable"]

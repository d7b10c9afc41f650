"""Mutations on the real primary: create-or-identical, updates by difference, transitions,
optimistic concurrency, cancel exactly once, master data, and hostile input."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from nexes.db import order_write, partitions
from nexes.db.invariants import check_all
from nexes.settings import Settings
from tests.conftest import client_for, error_codes, gql
from tests.support.brokers import queued, take_message
from tests.support.databases import own_database, superuser_url

DB = "nexes_t_mutations"
# The orders' day: in a live quarter on any date (the quarters reach 5 years back and 4 ahead);
# a fixed day falls out of them in time (2026-11-02: before October 2025, and from 2032 on a new database).
CREATED_DAY = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=35)

CREATE = """
mutation($input: CreateServiceOrderInput!) {
  createServiceOrder(input: $input) {
    serviceOrder { id sodNumber status totalAmount createdAt updatedAt customer { code }
                   lines { lineNo quantity unitPrice stockItem { sku onHand } } }
    errors { code field message }
  }
}"""

UPDATE = """
mutation($sod: String!, $input: UpdateServiceOrderInput!) {
  updateServiceOrder(sodNumber: $sod, input: $input) {
    serviceOrder { status totalAmount updatedAt lines { lineNo quantity } }
    errors { code field message }
  }
}"""

CANCEL = """
mutation($sod: String!) {
  cancelServiceOrder(sodNumber: $sod) { serviceOrder { status } errors { code field message } }
}"""


@pytest.fixture(scope="module")
def write_db(template_settings: Settings) -> Iterator[Settings]:
    """A database of this module's own (mutations change global figures), seeded small."""
    with own_database(template_settings, DB, orders=300) as settings:
        yield settings


@pytest.fixture
async def client(write_db: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(write_db) as c:
        yield c


@pytest.fixture
def db_settings(write_db: Settings) -> Settings:
    return write_db


def on_hand(db: psycopg.Connection, sku: str) -> int:
    row = db.execute("SELECT on_hand FROM stock_item WHERE sku = %s", [sku]).fetchone()
    assert row
    return int(row[0])


def ledger(db: psycopg.Connection, sod: str) -> dict[int, int]:
    rows = db.execute(
        "SELECT line_no, sum(quantity) FROM stock_movement WHERE sod_number = %s GROUP BY 1", [sod]
    ).fetchall()
    return {int(n): int(q) for n, q in rows}


def order_input(sod: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sodNumber": sod,
        "customerCode": "C000001",
        "createdAt": f"{CREATED_DAY.isoformat()}T10:00:00+00:00",
        "status": "OPEN",
        "description": "Boiler service",
        "currency": "EUR",
        "lines": [
            {"sku": "SKU-00001", "quantity": 3, "unitPrice": "10.50"},
            {"sku": "SKU-00002", "quantity": 1, "unitPrice": "99.99"},
        ],
    }
    base.update(overrides)
    return base


async def create(client: httpx.AsyncClient, payload: dict[str, Any]) -> dict[str, Any]:
    body = await gql(client, CREATE, {"input": payload})
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["createServiceOrder"]
    return result


def assert_invariants(db: psycopg.Connection) -> None:
    assert check_all(db) == []


async def test_create_writes_order_lines_stock_stats_and_outbox(
    client: httpx.AsyncClient, db: psycopg.Connection
) -> None:
    before = on_hand(db, "SKU-00001"), on_hand(db, "SKU-00002")
    stat_before = db.execute(
        "SELECT coalesce(sum(order_count), 0) FROM dashboard_stat WHERE day = %s AND status = 'OPEN'", [CREATED_DAY]
    ).fetchone()
    result = await create(client, order_input("MUT-1"))
    assert result["errors"] == []
    order = result["serviceOrder"]
    assert order["sodNumber"] == "MUT-1" and order["totalAmount"] == "131.49"
    assert [line["quantity"] for line in order["lines"]] == [3, 1]
    assert (on_hand(db, "SKU-00001"), on_hand(db, "SKU-00002")) == (before[0] - 3, before[1] - 1)
    assert ledger(db, "MUT-1") == {1: -3, 2: -1}
    stat_after = db.execute(
        "SELECT sum(order_count) FROM dashboard_stat WHERE day = %s AND status = 'OPEN'", [CREATED_DAY]
    ).fetchone()
    assert stat_before and stat_after and stat_after[0] == stat_before[0] + 1
    outbox = db.execute(
        "SELECT count(*) FROM search_outbox AS o JOIN service_order_key AS k ON k.id = o.order_id "
        "WHERE k.sod_number = 'MUT-1'"
    ).fetchone()
    assert outbox and outbox[0] >= 1
    assert_invariants(db)


async def test_same_input_again_returns_the_same_order_and_moves_nothing(
    client: httpx.AsyncClient, db: psycopg.Connection
) -> None:
    first = await create(client, order_input("MUT-2"))
    moved = db.execute("SELECT count(*) FROM stock_movement").fetchone()
    again = await create(client, order_input("MUT-2"))
    assert again["errors"] == [] and again["serviceOrder"]["id"] == first["serviceOrder"]["id"]
    assert db.execute("SELECT count(*) FROM stock_movement").fetchone() == moved
    # Without createdAt a retry is identical too (the order keeps the time it was made at).
    no_time = order_input("MUT-2b")
    del no_time["createdAt"]
    made = await create(client, no_time)
    retried = await create(client, no_time)
    assert retried["errors"] == [] and retried["serviceOrder"]["id"] == made["serviceOrder"]["id"]
    differing = await create(client, order_input("MUT-2", description="something else"))
    assert [e["code"] for e in differing["errors"]] == ["DUPLICATE_CONFLICT"]
    assert differing["serviceOrder"] is None
    assert ledger(db, "MUT-2") == {1: -3, 2: -1}
    assert_invariants(db)


async def test_concurrent_identical_creates_make_one_order_and_move_stock_once(
    client: httpx.AsyncClient, db: psycopg.Connection
) -> None:
    before = on_hand(db, "SKU-00003")
    payload = order_input("MUT-RACE", lines=[{"sku": "SKU-00003", "quantity": 7, "unitPrice": "1.00"}])
    results = await asyncio.gather(*(create(client, payload) for _ in range(10)))
    assert all(r["errors"] == [] for r in results)
    assert len({r["serviceOrder"]["id"] for r in results}) == 1
    assert on_hand(db, "SKU-00003") == before - 7
    assert ledger(db, "MUT-RACE") == {1: -7}
    assert_invariants(db)


async def test_update_moves_exactly_the_differences(client: httpx.AsyncClient, db: psycopg.Connection) -> None:
    await create(client, order_input("MUT-3"))
    before = on_hand(db, "SKU-00001"), on_hand(db, "SKU-00002"), on_hand(db, "SKU-00004")
    lines = [
        {"sku": "SKU-00001", "quantity": 5, "unitPrice": "10.50"},  # up by 2
        {"sku": "SKU-00004", "quantity": 2, "unitPrice": "1.00", "lineNo": 3},  # new line; line 2 removed
    ]
    body = await gql(client, UPDATE, {"sod": "MUT-3", "input": {"lines": lines}})
    result = body["data"]["updateServiceOrder"]
    assert result["errors"] == []
    assert [(line["lineNo"], line["quantity"]) for line in result["serviceOrder"]["lines"]] == [(1, 5), (3, 2)]
    assert result["serviceOrder"]["totalAmount"] == "54.50"
    after = on_hand(db, "SKU-00001"), on_hand(db, "SKU-00002"), on_hand(db, "SKU-00004")
    assert after == (before[0] - 2, before[1] + 1, before[2] - 2)
    assert ledger(db, "MUT-3") == {1: -5, 2: 0, 3: -2}
    lines[0]["quantity"] = 1  # down by 4
    body = await gql(client, UPDATE, {"sod": "MUT-3", "input": {"lines": lines}})
    assert body["data"]["updateServiceOrder"]["errors"] == []
    assert on_hand(db, "SKU-00001") == before[0] + 2
    assert ledger(db, "MUT-3") == {1: -1, 2: 0, 3: -2}
    assert_invariants(db)


async def test_stale_expected_updated_at_is_a_conflict(client: httpx.AsyncClient, db: psycopg.Connection) -> None:
    made = await create(client, order_input("MUT-4"))
    read_at = made["serviceOrder"]["updatedAt"]
    ok = await gql(client, UPDATE, {"sod": "MUT-4", "input": {"description": "v2", "expectedUpdatedAt": read_at}})
    assert ok["data"]["updateServiceOrder"]["errors"] == []
    stale = await gql(client, UPDATE, {"sod": "MUT-4", "input": {"description": "v3", "expectedUpdatedAt": read_at}})
    errors = stale["data"]["updateServiceOrder"]["errors"]
    assert [(e["code"], e["field"]) for e in errors] == [("CONFLICT", "expectedUpdatedAt")]
    row = db.execute("SELECT description FROM service_order WHERE sod_number = 'MUT-4'").fetchone()
    assert row == ("v2",)


@pytest.mark.parametrize(
    ("start", "to", "allowed"),
    [
        ("DRAFT", "OPEN", True),
        ("OPEN", "IN_PROGRESS", True),
        ("IN_PROGRESS", "COMPLETED", True),
        ("DRAFT", "COMPLETED", False),
        ("IN_PROGRESS", "OPEN", False),
        ("COMPLETED", "CANCELLED", False),
        ("CANCELLED", "OPEN", False),
    ],
)
async def test_status_transitions_follow_the_design(
    client: httpx.AsyncClient, db: psycopg.Connection, start: str, to: str, allowed: bool
) -> None:
    sod = f"MUT-T-{start}-{to}".replace("_", "")
    await create(client, order_input(sod, status=start))
    body = await gql(client, UPDATE, {"sod": sod, "input": {"status": to}})
    result = body["data"]["updateServiceOrder"]
    if allowed:
        assert result["errors"] == [] and result["serviceOrder"]["status"] == to
    else:
        assert [e["code"] for e in result["errors"]] == ["INVALID_TRANSITION"]
        row = db.execute("SELECT status::text FROM service_order WHERE sod_number = %s", [sod]).fetchone()
        assert row == (start,)


async def test_cancel_gives_stock_back_exactly_once(client: httpx.AsyncClient, db: psycopg.Connection) -> None:
    before = on_hand(db, "SKU-00001")
    await create(client, order_input("MUT-5"))
    assert on_hand(db, "SKU-00001") == before - 3
    for _ in range(3):
        body = await gql(client, CANCEL, {"sod": "MUT-5"})
        result = body["data"]["cancelServiceOrder"]
        assert result["errors"] == [] and result["serviceOrder"]["status"] == "CANCELLED"
    assert on_hand(db, "SKU-00001") == before
    assert ledger(db, "MUT-5") == {1: 0, 2: 0}
    missing = await gql(client, CANCEL, {"sod": "NO-SUCH-ORDER"})
    assert [e["code"] for e in missing["data"]["cancelServiceOrder"]["errors"]] == ["NOT_FOUND"]
    assert_invariants(db)


@pytest.mark.parametrize(
    ("overrides", "code", "field"),
    [
        ({"sodNumber": "bad sod!"}, "BAD_USER_INPUT", "sodNumber"),
        ({"sodNumber": "X" * 41}, "BAD_USER_INPUT", "sodNumber"),
        ({"currency": "EURO"}, "BAD_USER_INPUT", "currency"),
        ({"currency": "XYZ"}, "BAD_USER_INPUT", "currency"),
        ({"description": "x" * 2001}, "BAD_USER_INPUT", "description"),
        ({"customerCode": "NOPE-1"}, "UNKNOWN_CUSTOMER", "customerCode"),
        ({"customerCode": None, "customerId": "bm90LWFuLWlk"}, "BAD_USER_INPUT", "customerId"),
        ({"customerCode": None}, "BAD_USER_INPUT", "customerId"),
        ({"createdAt": "1999-01-01T00:00:00+00:00"}, "CREATED_AT_OUT_OF_RANGE", "createdAt"),
        ({"createdAt": "2999-01-01T00:00:00+00:00"}, "CREATED_AT_OUT_OF_RANGE", "createdAt"),
        ({"lines": [{"sku": "NOPE", "quantity": 1, "unitPrice": "1"}]}, "UNKNOWN_SKU", "lines.0.sku"),
        ({"lines": [{"sku": "SKU-00001", "quantity": 0, "unitPrice": "1"}]}, "BAD_USER_INPUT", "lines.0.quantity"),
        (
            {"lines": [{"sku": "SKU-00001", "quantity": 1_000_001, "unitPrice": "1"}]},
            "BAD_USER_INPUT",
            "lines.0.quantity",
        ),
        ({"lines": [{"sku": "SKU-00001", "quantity": 1, "unitPrice": "-1"}]}, "BAD_USER_INPUT", "lines.0.unitPrice"),
        ({"lines": [{"sku": "SKU-00001", "quantity": 1, "unitPrice": "1.001"}]}, "BAD_USER_INPUT", "lines.0.unitPrice"),
        (
            {"lines": [{"sku": "SKU-00001", "quantity": 1, "unitPrice": "1", "lineNo": 1000}]},
            "BAD_USER_INPUT",
            "lines.0.lineNo",
        ),
    ],
)
async def test_bad_order_input_is_a_payload_error_and_writes_nothing(
    client: httpx.AsyncClient, db: psycopg.Connection, overrides: dict[str, Any], code: str, field: str
) -> None:
    counts = db.execute(
        "SELECT (SELECT count(*) FROM service_order_key), (SELECT count(*) FROM stock_movement)"
    ).fetchone()
    result = await create(client, order_input(overrides.get("sodNumber", "MUT-BAD"), **overrides))
    assert result["serviceOrder"] is None
    assert (code, field) in [(e["code"], e["field"]) for e in result["errors"]], result["errors"]
    assert all(e["message"] for e in result["errors"])
    after = db.execute(
        "SELECT (SELECT count(*) FROM service_order_key), (SELECT count(*) FROM stock_movement)"
    ).fetchone()
    assert after == counts


@pytest.mark.parametrize(
    ("variables", "fragment"),
    [
        ({"createdAt": "2026-11-02T10:00:00"}, "offset"),
        ({"createdAt": "yesterday"}, "ISO-8601"),
        ({"lines": [{"sku": "SKU-00001", "quantity": 1, "unitPrice": "NaN"}]}, "finite"),
        ({"lines": [{"sku": "SKU-00001", "quantity": 1.5, "unitPrice": "1"}]}, "Int"),
        ({"status": "LOST"}, "Status"),
    ],
)
async def test_malformed_scalars_are_bad_user_input(
    client: httpx.AsyncClient, variables: dict[str, Any], fragment: str
) -> None:
    body = await gql(client, CREATE, {"input": order_input("MUT-SCALAR", **variables)})
    assert error_codes(body) == ["BAD_USER_INPUT"]
    assert fragment in body["errors"][0]["message"]
    assert body["_response"].status_code == 200  # variable coercion: a GraphQL request error, 200 under JSON


async def test_master_data_is_create_or_identical(client: httpx.AsyncClient, db: psycopg.Connection) -> None:
    customer = (
        "mutation($i: CreateCustomerInput!) { createCustomer(input: $i) { customer { code name } errors { code } } }"
    )
    item = (
        "mutation($i: CreateStockItemInput!) "
        "{ createStockItem(input: $i) { stockItem { sku onHand } errors { code } } }"
    )
    for _ in range(2):
        body = await gql(client, customer, {"i": {"code": "CUST-NEW", "name": "New Customer Ltd"}})
        assert body["data"]["createCustomer"] == {
            "customer": {"code": "CUST-NEW", "name": "New Customer Ltd"},
            "errors": [],
        }
        body = await gql(client, item, {"i": {"sku": "NEW-SKU.1", "name": "Valve", "onHand": 40}})
        assert body["data"]["createStockItem"] == {"stockItem": {"sku": "NEW-SKU.1", "onHand": 40}, "errors": []}
    body = await gql(client, customer, {"i": {"code": "CUST-NEW", "name": "Other"}})
    assert body["data"]["createCustomer"]["errors"] == [{"code": "DUPLICATE_CONFLICT"}]
    body = await gql(client, item, {"i": {"sku": "NEW-SKU.1", "name": "Valve", "onHand": 41}})
    assert body["data"]["createStockItem"]["errors"] == [{"code": "DUPLICATE_CONFLICT"}]
    body = await gql(client, customer, {"i": {"code": "bad code", "name": ""}})
    assert {e["code"] for e in body["data"]["createCustomer"]["errors"]} == {"BAD_USER_INPUT"}
    assert on_hand(db, "NEW-SKU.1") == 40
    assert_invariants(db)


async def test_receive_stock_is_idempotent_by_reference(client: httpx.AsyncClient, db: psycopg.Connection) -> None:
    receive = """mutation($sku: String!, $q: Int!, $ref: String!) {
      receiveStock(sku: $sku, quantity: $q, reference: $ref) { stockItem { onHand } errors { code field } } }"""
    before = on_hand(db, "SKU-00010")
    results = await asyncio.gather(
        *(gql(client, receive, {"sku": "SKU-00010", "q": 25, "ref": "PO-77"}) for _ in range(8))
    )
    assert all(r["data"]["receiveStock"]["errors"] == [] for r in results)
    assert on_hand(db, "SKU-00010") == before + 25
    other = await gql(client, receive, {"sku": "SKU-00010", "q": 26, "ref": "PO-77"})
    assert other["data"]["receiveStock"]["errors"] == [{"code": "DUPLICATE_CONFLICT", "field": "reference"}]
    unknown = await gql(client, receive, {"sku": "NOPE", "q": 1, "ref": "PO-78"})
    assert unknown["data"]["receiveStock"]["errors"] == [{"code": "UNKNOWN_SKU", "field": "sku"}]
    zero = await gql(client, receive, {"sku": "SKU-00010", "q": 0, "ref": "PO-79"})
    assert zero["data"]["receiveStock"]["errors"] == [{"code": "BAD_USER_INPUT", "field": "quantity"}]
    assert on_hand(db, "SKU-00010") == before + 25
    assert_invariants(db)


async def test_reconcile_dashboard_needs_the_admin_role_and_enqueues_the_job(write_db: Settings) -> None:
    from nexes.jobs import broker

    query = "mutation { reconcileDashboard { queued errors { code } } }"

    def reconcile(message: dict[str, Any]) -> bool:
        return bool(message["actor_name"] == "reconcile_stats")

    before = len(queued(broker, "maintenance", reconcile))
    async with client_for(write_db, roles=("operator", "analyst")) as c:
        refused = await gql(c, query)
        assert refused["_response"].status_code == 403 and "data" not in refused
        assert error_codes(refused) == ["FORBIDDEN"] and "admin" in refused["errors"][0]["message"]
        assert len(queued(broker, "maintenance", reconcile)) == before
    async with client_for(write_db, roles=("admin",)) as c:
        accepted = await gql(c, query)
        assert accepted["data"]["reconcileDashboard"] == {"queued": True, "errors": []}
    assert len(queued(broker, "maintenance", reconcile)) == before + 1
    while take_message(broker, "maintenance", reconcile):  # leave no work behind for a worker of another test
        pass


async def test_an_order_dated_past_the_customer_totals_horizon_rolls_them_forward(
    client: httpx.AsyncClient, db: psycopg.Connection
) -> None:
    """The horizon is the current year (the next from December): an order of a later year
    carries every customer's totals into its year, in its own transaction."""
    (horizon,) = db.execute("SELECT year FROM customer_stat_cum_horizon").fetchone() or (0,)
    day = dt.date(horizon + 1, 2, 3)
    partitions.ensure_range(db, day, day)
    result = await create(client, order_input("MUT-NEXT-YEAR", createdAt=f"{day.isoformat()}T10:00:00+00:00"))
    assert result["errors"] == []
    assert db.execute("SELECT year FROM customer_stat_cum_horizon").fetchone() == (horizon + 1,)
    # A row for every customer and currency of the year before, and the new order's.
    expected = db.execute(
        "SELECT count(*) FROM (SELECT customer_id, currency FROM customer_stat_cum WHERE year = %s "
        "UNION SELECT id, 'EUR' FROM customer WHERE code = 'C000001') AS keys",
        [horizon],
    ).fetchone()
    assert db.execute("SELECT count(*) FROM customer_stat_cum WHERE year = %s", [horizon + 1]).fetchone() == expected
    assert_invariants(db)


HOT_BUCKET = "SELECT 1 FROM dashboard_stat WHERE day = %s AND status = 'OPEN' AND currency = 'EUR' FOR UPDATE"
LOCK_WAITER = (
    "SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
    "AND usename = 'nexes_api'"
)


async def lock_waiter(db: psycopg.Connection) -> tuple[int, str]:
    """The API's backend waiting for a row lock (10 s at most)."""
    for _ in range(200):
        row = db.execute(LOCK_WAITER).fetchone()
        if row is not None:
            return int(row[0]), str(row[1])
        await asyncio.sleep(0.05)
    raise AssertionError("no API backend waited for the lock")


async def test_a_create_locks_the_shared_rows_only_in_the_message_that_commits_it(
    client: httpx.AsyncClient, db: psycopg.Connection, write_db: Settings
) -> None:
    # Every order of a day, status and currency updates one dashboard_stat row. Locked
    # earlier, the row was held across the payload's reads and the COMMIT's round trip,
    # each waiting for the API's busy event loop, and mutations queued on it for seconds
    # (the switchover drill, bench/README.md): so it must be taken by the committing message.
    await create(client, order_input("MUT-HOT-0"))  # the bucket's row exists
    with psycopg.connect(write_db.admin_url) as blocker:
        blocker.execute(HOT_BUCKET, [CREATED_DAY])
        task = asyncio.create_task(create(client, order_input("MUT-HOT-1")))
        _, query = await lock_waiter(db)
        # The waiting message (its text cut at track_activity_query_size), past the request
        # id's comment, is the start of the hot statements and their COMMIT.
        message = query.split("*/", 1)[1].strip()
        assert len(message) > 100 and order_write.APPLY_HOT_COMMIT_SCRIPT.strip().startswith(message), query
        blocker.rollback()
    result = await asyncio.wait_for(task, 30)
    assert result["errors"] == [] and result["serviceOrder"]["sodNumber"] == "MUT-HOT-1"
    assert_invariants(db)


async def test_a_create_whose_committing_message_fails_leaves_nothing_behind(
    client: httpx.AsyncClient, db: psycopg.Connection, write_db: Settings
) -> None:
    await create(client, order_input("MUT-HOT-2"))
    stock = on_hand(db, "SKU-00001")
    audited = db.execute("SELECT count(*) FROM audit_event").fetchone()
    with psycopg.connect(write_db.admin_url) as blocker:
        blocker.execute(HOT_BUCKET, [CREATED_DAY])
        task = asyncio.create_task(gql(client, CREATE, {"input": order_input("MUT-HOT-3")}))
        pid, _ = await lock_waiter(db)
        with psycopg.connect(superuser_url(write_db.admin_url), autocommit=True) as su:
            su.execute("SELECT pg_cancel_backend(%s)", [pid])  # the last message fails, the block is open
        body = await asyncio.wait_for(task, 30)
        blocker.rollback()
    assert error_codes(body) == ["TIMEOUT"], body
    assert db.execute("SELECT count(*) FROM service_order_key WHERE sod_number = 'MUT-HOT-3'").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM audit_event").fetchone() == audited
    assert on_hand(db, "SKU-00001") == stock
    # The connection went back to its pool usable: the next mutation commits.
    assert (await create(client, order_input("MUT-HOT-3")))["errors"] == []
    assert_invariants(db)

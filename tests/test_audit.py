"""Who did what (issue 16): audit_event rows written with each change, import jobs owned by
their creator, the admins' auditEvents connection, retention, and an append-only table."""

from __future__ import annotations

import datetime as dt
import getpass
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from nexes.db import audit, imports_apply
from nexes.db import master_write as writes
from nexes.db.connect.conninfo import for_role
from nexes.jobs import imports_runner
from nexes.resolvers.ids import global_id
from nexes.settings import Settings
from tests.conftest import client_for, error_codes, gql
from tests.support.brokers import take_message
from tests.support.databases import environ_for, own_database
from tests.support.imports import CSRF, csv_bytes, job_key, line, store, store_async

DB = "nexes_t_audit"
CREATED_DAY = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=35)

EVENTS = """
query($first: Int, $after: String, $entity: String, $entityId: String, $actor: String,
      $from: DateTime, $to: DateTime) {
  auditEvents(first: $first, after: $after, entity: $entity, entityId: $entityId, actor: $actor,
              from: $from, to: $to) {
    edges { cursor node { at actor action entity entityId requestId changes } }
    pageInfo { hasNextPage endCursor }
  }
}"""

CREATE_ORDER = """
mutation($input: CreateServiceOrderInput!) {
  createServiceOrder(input: $input) { serviceOrder { id } errors { code } }
}"""
UPDATE_ORDER = """
mutation($sod: String!, $input: UpdateServiceOrderInput!) {
  updateServiceOrder(sodNumber: $sod, input: $input) { serviceOrder { status } errors { code } }
}"""
CANCEL_ORDER = "mutation($sod: String!) { cancelServiceOrder(sodNumber: $sod) { errors { code } } }"
CREATE_CUSTOMER = """
mutation($code: String!, $name: String!) {
  createCustomer(input: {code: $code, name: $name}) { customer { id } errors { code } }
}"""
CREATE_ITEM = """
mutation($sku: String!) {
  createStockItem(input: {sku: $sku, name: "Audited valve", onHand: 5}) { stockItem { id } errors { code } }
}"""
RECEIVE = """
mutation($sku: String!, $ref: String!) {
  receiveStock(sku: $sku, quantity: 3, reference: $ref) { stockItem { id onHand } errors { code } }
}"""
JOBS = "query { importJobs(first: 50) { edges { node { id createdBy status } } } }"
JOB = "query($id: ID!) { importJob(id: $id) { id createdBy } node(id: $id) { id } }"
CANCEL_IMPORT = """
mutation($id: ID!) { cancelImport(id: $id) { importJob { id status } errors { code field } } }"""


@pytest.fixture(scope="module")
def audit_db(template_settings: Settings) -> Iterator[Settings]:
    """A database of this module's own (its tests count rows of a shared table), seeded small."""
    with own_database(template_settings, DB, orders=100) as settings:
        yield settings


@pytest.fixture
def db_settings(audit_db: Settings) -> Settings:
    return audit_db


@pytest.fixture
async def admin_client(audit_db: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(audit_db, roles=("admin",), subject="ada") as client:
        yield client


def rows(db: psycopg.Connection, where: str = "true", params: list[Any] | None = None) -> list[dict[str, Any]]:
    cur = db.execute(
        "SELECT actor, action, entity, entity_id, request_id, changes FROM audit_event WHERE "
        + where  # the tests' own literal conditions
        + " ORDER BY at, id",
        params or [],
    )
    names = [c.name for c in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def count(db: psycopg.Connection) -> int:
    row = db.execute("SELECT count(*) FROM audit_event").fetchone()
    assert row is not None
    return int(row[0])


def order_input(sod: str, **extra: Any) -> dict[str, Any]:
    return {
        "sodNumber": sod,
        "customerCode": "C000001",
        "createdAt": f"{CREATED_DAY.isoformat()}T10:00:00Z",
        "status": "OPEN",
        "description": "Boiler service",
        "currency": "EUR",
        "lines": [{"sku": "SKU-00001", "quantity": 2, "unitPrice": "49.90"}],
        **extra,
    }


# -- every mutation, one row, in its transaction ------------------------------------------


async def test_each_mutation_writes_one_row_with_its_actor_request_id_entity_and_changes(
    audit_db: Settings, db: psycopg.Connection
) -> None:
    async with client_for(audit_db, roles=("admin",), subject="alice") as client:

        async def run(query: str, variables: dict[str, Any], request_id: str) -> dict[str, Any]:
            before = count(db)
            body = await gql(client, query, variables, **{"X-Request-ID": request_id})
            assert "errors" not in body, body
            (payload,) = (v for k, v in body["data"].items())
            assert payload["errors"] == [], payload
            (row,) = rows(db, "request_id = %s", [request_id])
            assert count(db) == before + 1
            assert row["actor"] == "alice"
            return row

        made = await run(CREATE_CUSTOMER, {"code": "AUD-C1", "name": "Audit Ltd"}, "req-customer")
        customer = made["entity_id"]
        assert (made["action"], made["entity"]) == ("createCustomer", "Customer")
        assert made["changes"] == {"code": "AUD-C1", "name": "Audit Ltd"}

        item = await run(CREATE_ITEM, {"sku": "AUD-SKU-1"}, "req-item")
        assert (item["action"], item["entity"]) == ("createStockItem", "StockItem")
        assert item["changes"] == {"sku": "AUD-SKU-1", "name": "Audited valve", "onHand": 5}

        received = await run(RECEIVE, {"sku": "AUD-SKU-1", "ref": "PO-AUD-1"}, "req-receive")
        assert (received["action"], received["entity_id"]) == ("receiveStock", item["entity_id"])
        assert received["changes"] == {"quantity": 3, "reference": "PO-AUD-1"}

        created = await run(
            CREATE_ORDER, {"input": order_input("SOD-AUD-1", customerCode="AUD-C1")}, "req-create-order"
        )
        assert (created["action"], created["entity"]) == ("createServiceOrder", "ServiceOrder")
        assert created["changes"]["sodNumber"] == "SOD-AUD-1"
        assert created["changes"]["status"] == "OPEN" and created["changes"]["customerId"] == customer
        assert created["changes"]["totalAmount"] == "99.80" and created["changes"]["lines"] == 1
        order = created["entity_id"]

        updated = await run(UPDATE_ORDER, {"sod": "SOD-AUD-1", "input": {"status": "IN_PROGRESS"}}, "req-update-order")
        assert (updated["action"], updated["entity_id"]) == ("updateServiceOrder", order)
        assert updated["changes"]["status"] == ["OPEN", "IN_PROGRESS"]
        assert "totalAmount" not in updated["changes"] and "descriptionLength" not in updated["changes"]

        cancelled = await run(CANCEL_ORDER, {"sod": "SOD-AUD-1"}, "req-cancel-order")
        assert (cancelled["action"], cancelled["entity_id"]) == ("cancelServiceOrder", order)
        assert cancelled["changes"]["status"] == ["IN_PROGRESS", "CANCELLED"]

    # The entity ids are the API's own global ids.
    row = db.execute("SELECT id FROM service_order WHERE sod_number = 'SOD-AUD-1'").fetchone()
    assert row is not None and order == global_id("ServiceOrder", row[0])


async def test_a_replay_that_changes_nothing_writes_no_row(audit_db: Settings, db: psycopg.Connection) -> None:
    async with client_for(audit_db, roles=("operator", "admin"), subject="bob") as client:
        for _ in range(2):
            await gql(client, CREATE_CUSTOMER, {"code": "AUD-C2", "name": "Replay Ltd"})
            await gql(client, CREATE_ORDER, {"input": order_input("SOD-AUD-2")})
            await gql(client, RECEIVE, {"sku": "SKU-00002", "ref": "PO-AUD-2"})
            await gql(client, UPDATE_ORDER, {"sod": "SOD-AUD-2", "input": {"description": "Boiler service"}})
    actions = [r["action"] for r in rows(db, "actor = 'bob'")]
    assert actions == ["createCustomer", "createServiceOrder", "receiveStock"]


async def test_a_failing_mutation_writes_no_row(audit_db: Settings, db: psycopg.Connection) -> None:
    async with client_for(audit_db, roles=("admin",), subject="carol") as client:
        await gql(client, CREATE_ORDER, {"input": order_input("SOD-AUD-3")})
        before = count(db)
        refusals = [
            await gql(client, CREATE_ORDER, {"input": order_input("SOD-AUD-3", description="other")}),
            await gql(client, UPDATE_ORDER, {"sod": "SOD-AUD-3", "input": {"status": "DRAFT"}}),
            await gql(client, CREATE_CUSTOMER, {"code": "C000001", "name": "Someone else"}),
            await gql(client, RECEIVE, {"sku": "SKU-00001", "ref": "PO-AUD-2"}),
            await gql(
                client,
                CREATE_ORDER,
                {"input": order_input("SOD-AUD-4", lines=[{"sku": "NO-SUCH-SKU", "quantity": 1, "unitPrice": "1.00"}])},
            ),
        ]
    codes = [next(iter(b["data"].values()))["errors"][0]["code"] for b in refusals]
    assert codes == [
        "DUPLICATE_CONFLICT",
        "INVALID_TRANSITION",
        "DUPLICATE_CONFLICT",
        "DUPLICATE_CONFLICT",
        "UNKNOWN_SKU",
    ]
    assert count(db) == before


async def test_the_row_commits_and_rolls_back_with_its_change(audit_db: Settings, db: psycopg.Connection) -> None:
    """The write functions write the row on the caller's connection: one transaction, one fate."""
    conninfo = for_role(audit_db.primary_url, audit_db, "nexes_api")
    by = audit.Actor("dave", "req-rollback")
    async with await psycopg.AsyncConnection.connect(conninfo, prepare_threshold=None) as conn:
        async with conn.transaction(force_rollback=True):
            _, made = await writes.create_customer(conn, "AUD-C5", "Rolled back", by=by)
            assert made
            cur = await conn.execute("SELECT count(*) FROM audit_event WHERE actor = 'dave'")
            assert await cur.fetchone() == (1,)
        async with conn.transaction():
            await writes.create_customer(conn, "AUD-C6", "Committed", by=by)
    assert db.execute("SELECT count(*) FROM customer WHERE code IN ('AUD-C5', 'AUD-C6')").fetchone() == (1,)
    assert [r["changes"]["code"] for r in rows(db, "actor = 'dave'")] == ["AUD-C6"]


async def test_reconcile_and_reindex_write_their_row_when_sent(audit_db: Settings, db: psycopg.Connection) -> None:
    from nexes.jobs import broker

    async with client_for(audit_db, roles=("admin",), subject="erin") as client:
        sent = await gql(client, "mutation { reconcileDashboard { queued errors { code } } }")
        again = await gql(client, "mutation { reindexSearch { queued errors { code } } }")
    assert sent["data"]["reconcileDashboard"]["queued"] and again["data"]["reindexSearch"]["queued"]
    found = [(r["action"], r["entity"], r["entity_id"]) for r in rows(db, "actor = 'erin'")]
    assert found == [
        ("reconcileDashboard", "Dashboard", "dashboard_stat"),
        ("reindexSearch", "SearchIndex", audit_db.typesense_collection),
    ]
    # No worker runs here: take the two messages back off their queues.
    assert take_message(broker, "maintenance", lambda m: m["actor_name"] == "reconcile_stats")
    assert take_message(broker, "search", lambda m: m["actor_name"] == "reindex_search")


# -- import jobs: two rows each, owners ------------------------------------------------------


def test_an_import_job_writes_exactly_two_rows_whatever_its_size(audit_db: Settings, db: psycopg.Connection) -> None:
    data = csv_bytes(
        *(line(f"SOD-AUD-IMP-{i:03d}", sku=f"SKU-{i % 50 + 1:05d}") for i in range(120)),
        line("SOD-AUD-IMP-BAD", sku="NO-SUCH-SKU"),
    )
    job = store(audit_db, data, created_by="frank")
    assert imports_runner.run(job, audit_db) == "PARTIAL"
    found = rows(db, "entity = 'ImportJob' AND entity_id = %s", [global_id("ImportJob", job)])
    assert [(r["actor"], r["action"]) for r in found] == [("frank", "import.accepted"), ("frank", "import.finished")]
    assert found[0]["changes"]["filename"] == "orders.csv" and found[0]["changes"]["sizeBytes"] == len(data)
    finished = found[1]["changes"]
    assert (finished["status"], finished["inserted"], finished["failed"]) == ("PARTIAL", 120, 1)
    assert db.execute(
        "SELECT count(*) FROM audit_event WHERE entity = 'ServiceOrder' AND actor = 'frank'"
    ).fetchone() == (0,)
    assert db.execute("SELECT created_by FROM import_job WHERE id = %s", [job]).fetchone() == ("frank",)


def test_the_sweep_ends_a_dead_job_with_its_row_by_the_scheduler(audit_db: Settings, db: psycopg.Connection) -> None:
    job = store(audit_db, csv_bytes(line("SOD-AUD-SWEEP")), created_by="gina")
    db.execute(  # its worker died after a cancel was asked: the lease ran out
        "UPDATE import_job SET status = 'RUNNING', cancel_requested = true, lease_until = now() - interval '1 minute' "
        "WHERE id = %s",
        [job],
    )
    with psycopg.connect(for_role(audit_db.primary_url, audit_db, "nexes_worker"), autocommit=True) as conn:
        swept = imports_apply.sweep(conn, retention=30, lease=60, actor="system:scheduler")
    assert job in swept.cancelled
    found = rows(db, "entity_id = %s", [global_id("ImportJob", job)])
    assert [(r["actor"], r["action"], r["changes"].get("status")) for r in found] == [
        ("gina", "import.accepted", None),
        ("system:scheduler", "import.finished", "CANCELLED"),
    ]


async def test_operators_see_and_cancel_only_their_own_jobs(audit_db: Settings, db: psycopg.Connection) -> None:
    mine = await store_async(audit_db, csv_bytes(line("SOD-AUD-OWN-1")), created_by="olga")
    theirs = await store_async(audit_db, csv_bytes(line("SOD-AUD-OWN-2")), created_by="oscar")
    old = await store_async(audit_db, csv_bytes(line("SOD-AUD-OWN-3")), created_by="olga")
    db.execute("UPDATE import_job SET created_by = NULL WHERE id = %s", [old])  # as before the migration
    ids = {name: global_id("ImportJob", key) for name, key in (("mine", mine), ("theirs", theirs), ("old", old))}

    async with client_for(audit_db, roles=("operator",), subject="olga") as olga:
        listed = (await gql(olga, JOBS))["data"]["importJobs"]["edges"]
        assert {e["node"]["id"] for e in listed} == {ids["mine"]}
        assert {e["node"]["createdBy"] for e in listed} == {"olga"}
        own = (await gql(olga, JOB, {"id": ids["mine"]}))["data"]
        assert own == {"importJob": {"id": ids["mine"], "createdBy": "olga"}, "node": {"id": ids["mine"]}}
        for other in (ids["theirs"], ids["old"]):
            read = await gql(olga, JOB, {"id": other})
            assert read["data"] == {"importJob": None, "node": None} and "errors" not in read
            refused = (await gql(olga, CANCEL_IMPORT, {"id": other}))["data"]["cancelImport"]
            missing = (await gql(olga, CANCEL_IMPORT, {"id": global_id("ImportJob", 10**12)}))["data"]["cancelImport"]
            assert refused == missing  # someone else's job answers as no job at all
            assert refused["errors"] == [{"code": "NOT_FOUND", "field": "id"}]
        cancelled = (await gql(olga, CANCEL_IMPORT, {"id": ids["mine"]}))["data"]["cancelImport"]
        assert cancelled == {"importJob": {"id": ids["mine"], "status": "CANCELLED"}, "errors": []}

    statuses = dict(
        db.execute("SELECT id, status::text FROM import_job WHERE id = ANY(%s)", [[theirs, old]]).fetchall()
    )
    assert statuses == {theirs: "QUEUED", old: "QUEUED"}
    found = rows(db, "entity_id = %s", [ids["mine"]])
    assert [(r["actor"], r["action"]) for r in found] == [
        ("olga", "import.accepted"),
        ("olga", "cancelImport"),
        ("olga", "import.finished"),
    ]

    async with client_for(audit_db, roles=("admin",), subject="ada") as admin:
        every = {e["node"]["id"] for e in (await gql(admin, JOBS))["data"]["importJobs"]["edges"]}
        assert set(ids.values()) <= every
        assert (await gql(admin, JOB, {"id": ids["old"]}))["data"]["importJob"] == {"id": ids["old"], "createdBy": None}


# -- reading: admins only, filtered, paginated -----------------------------------------------


def test_entity_ids_are_the_apis_global_ids(db: psycopg.Connection) -> None:
    for entity, key in (("ServiceOrder", 1), ("ImportJob", 42), ("StockItem", 9_000_000_000_000)):
        assert audit.entity_id(entity, key) == global_id(entity, key)
        assert db.execute("SELECT audit_global_id(%s, %s)", [entity, key]).fetchone() == (global_id(entity, key),)


async def test_audit_events_filter_by_entity_actor_and_time_and_paginate(
    audit_db: Settings, db: psycopg.Connection, admin_client: httpx.AsyncClient
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for i in range(7):
        db.execute(
            "INSERT INTO audit_event (at, actor, action, entity, entity_id, changes) "
            "VALUES (%s, %s, 'pageTest', %s, %s, %s)",
            [now - dt.timedelta(hours=i), f"pager-{i % 2}", "Pager" if i < 5 else "Other", f"p{i}", f'{{"i": {i}}}'],
        )

    async def page(**variables: Any) -> dict[str, Any]:
        body = await gql(admin_client, EVENTS, variables)
        assert "errors" not in body, body
        return dict(body["data"]["auditEvents"])

    def indexes(found: dict[str, Any]) -> list[int]:
        return [e["node"]["changes"]["i"] for e in found["edges"]]

    assert indexes(await page(entity="Pager")) == [0, 1, 2, 3, 4]  # newest first
    assert indexes(await page(entity="Pager", actor="pager-1")) == [1, 3]
    assert indexes(await page(entity="Pager", entityId="p2")) == [2]
    since, until = (now - dt.timedelta(hours=3)).isoformat(), (now - dt.timedelta(hours=1)).isoformat()
    assert indexes(await page(actor="pager-0", **{"from": since})) == [0, 2]
    assert indexes(await page(entity="Pager", **{"from": since, "to": until})) == [2, 3]

    walked, after = [], None
    while True:
        found = await page(entity="Pager", first=2, after=after)
        walked += indexes(found)
        if not found["pageInfo"]["hasNextPage"]:
            break
        after = found["pageInfo"]["endCursor"]
    assert walked == [0, 1, 2, 3, 4]
    node = (await page(entity="Pager", first=1))["edges"][0]["node"]
    assert node["actor"] == "pager-0" and node["action"] == "pageTest" and node["entityId"] == "p0"

    too_many = await gql(admin_client, EVENTS, {"first": 101})
    assert error_codes(too_many) == ["BAD_USER_INPUT"]
    backwards = await gql(admin_client, EVENTS, {"from": until, "to": since})
    assert error_codes(backwards) == ["BAD_USER_INPUT"]
    foreign = await gql(admin_client, EVENTS, {"after": "bm90LWEtY3Vyc29y.AAAA"})
    assert error_codes(foreign) == ["BAD_CURSOR"]


async def test_only_admins_read_the_audit(audit_db: Settings) -> None:
    for roles in (("viewer",), ("operator",), ("analyst",)):
        async with client_for(audit_db, roles=roles, subject="nosy") as client:
            body = await gql(client, EVENTS, {"first": 1})
        assert error_codes(body) == ["FORBIDDEN"] and body.get("data") is None, (roles, body)


# -- retention and partitions -----------------------------------------------------------


def test_retention_drops_the_months_past_it_and_says_so(audit_db: Settings, db: psycopg.Connection) -> None:
    today = dt.datetime.now(dt.UTC).date()
    db.execute("SELECT audit_event_add_month('2020-01-01')")
    db.execute(
        "INSERT INTO audit_event (at, actor, action, entity, entity_id) "
        "VALUES ('2020-01-15 12:00+00', 'old', 'old', 'Old', 'o1')"
    )
    made, dropped = audit.maintain(db, audit.Actor("cli:test"), retention_days=400, months_ahead=6)
    assert dropped == ["audit_event_2020m01"]
    assert db.execute("SELECT to_regclass('audit_event_2020m01')").fetchone() == (None,)
    assert db.execute("SELECT count(*) FROM audit_event WHERE actor = 'old'").fetchone() == (0,)
    last = audit.month_start(today)
    for _ in range(6):
        last = audit.next_month(last)
    assert f"audit_event_{last.year}m{last.month:02d}" in made  # the migration made three ahead; this, six
    (row,) = rows(db, "actor = 'cli:test'")
    assert (row["action"], row["entity"], row["entity_id"]) == ("maintainPartitions", "Partition", "audit_event")
    assert row["changes"]["dropped"] == ["audit_event_2020m01"] and row["changes"]["retentionDays"] == 400
    # This month and the recent ones stay; a second run has nothing to do and writes nothing.
    assert audit.maintain(db, audit.Actor("cli:test"), retention_days=400, months_ahead=6) == ([], [])
    assert len(rows(db, "actor = 'cli:test'")) == 1


def test_nexes_partitions_writes_its_row_as_the_cli_user(audit_db: Settings, db: psycopg.Connection) -> None:
    db.execute("SELECT audit_event_add_month('2021-03-01')")
    done = subprocess.run(
        [str(Path(sys.executable).with_name("nexes")), "partitions"],
        env=environ_for(DB),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "1 dropped" in done.stdout
    found = rows(db, "action = 'maintainPartitions' AND changes -> 'dropped' ? 'audit_event_2021m03'")
    assert [r["actor"] for r in found] == [f"cli:{getpass.getuser()}"]


# -- append-only -----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["nexes_api", "nexes_worker"])
def test_app_roles_insert_and_read_but_never_update_or_delete_audit_rows(
    audit_db: Settings, db: psycopg.Connection, role: str
) -> None:
    month = dt.datetime.now(dt.UTC).strftime("audit_event_%Ym%m")
    with psycopg.connect(for_role(audit_db.primary_url, audit_db, role), autocommit=True) as conn:
        audit.record_sync(conn, audit.Actor(role), "probe", entity="Probe", key="x", changes={})
        assert conn.execute("SELECT count(*) FROM audit_event WHERE actor = %s", [role]).fetchone() == (1,)
        for statement in (
            "UPDATE audit_event SET actor = 'someone else' WHERE actor = %s",
            "DELETE FROM audit_event WHERE actor = %s",
            f"UPDATE {month} SET actor = 'someone else' WHERE actor = %s",
            f"DELETE FROM {month} WHERE actor = %s",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement, [role])  # type: ignore[arg-type]
        for statement in ("TRUNCATE audit_event", f"TRUNCATE {month}", "DROP TABLE audit_event_default"):
            with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.DependentObjectsStillExist)):
                conn.execute(statement)  # type: ignore[arg-type]
    assert db.execute("SELECT count(*) FROM audit_event WHERE actor = %s", [role]).fetchone() == (1,)


def test_even_the_owner_cannot_change_a_row(db: psycopg.Connection) -> None:
    db.execute("INSERT INTO audit_event (actor, action, entity, entity_id) VALUES ('owner', 'x', 'X', '1')")
    for statement in (
        "UPDATE audit_event SET action = 'y' WHERE actor = 'owner'",
        "DELETE FROM audit_event WHERE actor = 'owner'",
        "TRUNCATE audit_event",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            db.execute(statement)  # type: ignore[arg-type]
    assert db.execute("SELECT action FROM audit_event WHERE actor = 'owner'").fetchone() == ("x",)


def test_a_month_nobody_made_lands_in_the_default_partition(db: psycopg.Connection) -> None:
    far = dt.datetime(2099, 6, 1, tzinfo=dt.UTC)
    db.execute(
        "INSERT INTO audit_event (at, actor, action, entity, entity_id) VALUES (%s, 'future', 'x', 'X', '1')", [far]
    )
    where = db.execute("SELECT tableoid::regclass::text FROM audit_event WHERE actor = 'future'").fetchone()
    assert where == ("audit_event_default",)
    # Its month cannot be made while the row is there: the job skips it rather than fail.
    assert db.execute("SELECT audit_event_add_month('2099-06-01')").fetchone() == (False,)


async def test_an_upload_is_owned_by_its_uploader_and_accepted_under_its_request_id(
    audit_db: Settings, db: psycopg.Connection
) -> None:
    from nexes.jobs import broker

    async with client_for(audit_db, roles=("operator",), subject="paula") as paula:
        response = await paula.post(
            "/api/imports?filename=mine.csv",
            content=csv_bytes(line("SOD-AUD-UP-1")),
            headers={**CSRF, "X-Request-ID": "req-upload-paula"},
        )
        assert response.status_code == 202, response.text
        job = response.json()["id"]
        read = (await gql(paula, JOB, {"id": job}))["data"]["importJob"]
    assert read == {"id": job, "createdBy": "paula"}
    (row,) = rows(db, "entity_id = %s", [job])
    assert (row["actor"], row["action"], row["request_id"]) == ("paula", "import.accepted", "req-upload-paula")
    assert row["changes"]["filename"] == "mine.csv"
    # No worker runs here: take the message back off the queue.
    assert take_message(broker, "imports", lambda m: m["actor_name"] == "run_import" and m["args"] == [job_key(job)])


def test_nexes_reconcile_says_what_it_corrected_as_the_cli_user(audit_db: Settings, db: psycopg.Connection) -> None:
    db.execute(
        "UPDATE dashboard_stat SET order_count = order_count + 1 "
        "WHERE (day, status, currency) = (SELECT day, status, currency FROM dashboard_stat ORDER BY day DESC LIMIT 1)"
    )
    done = subprocess.run(
        [str(Path(sys.executable).with_name("nexes")), "reconcile"],
        env=environ_for(DB),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (row,) = rows(db, "action = 'reconcile'")
    assert (row["actor"], row["entity"], row["entity_id"]) == (
        f"cli:{getpass.getuser()}",
        "Dashboard",
        "dashboard_stat",
    )
    assert row["changes"]["corrections"] >= 1

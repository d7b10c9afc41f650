"""Archive of old quarters: detach + attach (metadata only), resumable, readable afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from nexes.db import archive, partitions
from nexes.db.connect.conninfo import environ_for_database
from nexes.db.invariants import check_all
from nexes.db.seed import seed
from nexes.settings import Settings
from tests.conftest import client_for, gql
from tests.support.replicas import wait_for_replica
from tests.support.waits import wait_for_lock_wait

AFTER_YEARS = 2
ORDERS = 600


def cutoff() -> datetime:
    return archive._years_before(datetime.now(UTC), AFTER_YEARS)


def layout(conn: psycopg.Connection) -> dict[str, tuple[str | None, bool]]:
    """Every quarterly table -> (its parent, detach pending)."""
    return {p.name: (p.parent, p.pending) for p in archive.quarter_tables(conn)}


def due(conn: psycopg.Connection) -> list[archive.Partition]:
    return [p for p in archive.quarter_tables(conn) if archive._due(p, cutoff())]


def figures(conn: psycopg.Connection) -> dict[str, Any]:
    """What must not change when quarters move: rows, stats, and the tables' storage."""
    one = lambda q: conn.execute(q).fetchone()  # noqa: E731
    return {
        "orders": one("SELECT count(*), sum(total_amount) FROM service_order"),
        "archived": one("SELECT count(*), sum(total_amount) FROM service_order_archive"),
        "lines": one(
            "SELECT (SELECT count(*) FROM service_order_line) + (SELECT count(*) FROM service_order_line_archive)"
        ),
        "stats": one("SELECT sum(order_count), sum(total_amount) FROM dashboard_stat"),
        "storage": dict(
            conn.execute(
                "SELECT relname::text, relfilenode FROM pg_class WHERE relname ~ '^service_order(_line)?_[0-9]{4}q'"
            ).fetchall()
        ),
    }


def bound_constraints(conn: psycopg.Connection) -> list[str]:
    return [f"{p.name}: {c}" for p in archive.quarter_tables(conn) for c in archive._bound_constraints(conn, p)]


def run_archive(settings: Settings) -> tuple[list[str], list[str]]:
    """archive() on a connection that reports PostgreSQL's DEBUG1 messages; returns (steps, messages)."""
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        messages: list[str] = []
        conn.add_notice_handler(lambda diag: messages.append(diag.message_primary or ""))
        conn.execute("SET client_min_messages = debug1")
        return archive.archive(conn, after_years=AFTER_YEARS), messages


def test_archive_moves_old_quarters_by_metadata_without_scanning(fresh_db: Settings) -> None:
    seed(fresh_db.admin_url, ORDERS, defer=False)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        before = figures(conn)
        moving = due(conn)
    assert before["archived"][0] == 0 and moving, "the seed spans 5 years, so some quarters are due"

    steps, messages = run_archive(fresh_db)

    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        after = figures(conn)
        placed = layout(conn)
        assert {p.name: placed[p.name] for p in moving} == {
            p.name: (archive.ARCHIVE_OF[p.table], False) for p in moving
        }
        live_starts = [p.start for p in archive.quarter_tables(conn) if p.parent == p.table]
        assert all(not archive._due(p, cutoff()) for p in archive.quarter_tables(conn) if p.parent == p.table)
        assert min(live_starts) > max(p.start for p in moving)
        assert bound_constraints(conn) == []  # dropped once attached
        assert check_all(conn) == []
        # The live partitions stay covered, and no archived quarter comes back to life.
        assert partitions.ensure(conn, years_back=5, quarters_ahead=4) == 0
        assert set(layout(conn)) == set(placed)
    assert [s.split()[0] for s in steps].count("detach") == len(moving)
    assert [s.split()[0] for s in steps].count("attach") == len(moving)
    assert after["archived"][0] > 0
    assert (after["orders"][0] + after["archived"][0], after["orders"][1] + after["archived"][1]) == (
        before["orders"][0],
        before["orders"][1],
    )
    assert after["lines"] == before["lines"]
    assert after["stats"] == before["stats"]  # dashboard_stat untouched
    assert after["storage"] == before["storage"]  # the same files: nothing was copied
    # ATTACH trusted the bound constraint (no validation scan) and reused every index.
    implied = [m for m in messages if m.endswith("is implied by existing constraints")]
    assert len(implied) == len(moving)
    assert not [m for m in messages if m.startswith(("verifying table", "building index"))]


def test_running_archive_twice_changes_nothing(fresh_db: Settings) -> None:
    seed(fresh_db.admin_url, ORDERS, defer=False)
    first = archive.archive(fresh_db.admin_url, after_years=AFTER_YEARS)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        before = (layout(conn), figures(conn))
    assert first
    assert archive.archive(fresh_db.admin_url, after_years=AFTER_YEARS) == []
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        assert (layout(conn), figures(conn)) == before


async def test_archived_orders_leave_live_reads_but_stay_readable(fresh_db: Settings) -> None:
    seed(fresh_db.admin_url, ORDERS, defer=False)
    archive.archive(fresh_db.admin_url, after_years=AFTER_YEARS)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        (boundary,) = conn.execute("SELECT min(created_at) FROM service_order").fetchone() or (None,)
        (archived_count,) = conn.execute("SELECT count(*) FROM service_order_archive").fetchone() or (0,)
    wait_for_replica(fresh_db)
    page = """query($to: DateTime!, $all: Boolean!) {
      serviceOrders(first: 100, filter: {createdTo: $to, includeArchived: $all}) {
        totalCount edges { node { id sodNumber createdAt lines { lineNo } } }
      }
    }"""
    async with client_for(fresh_db) as client:
        live = await gql(client, page, {"to": boundary.isoformat(), "all": False})
        both = await gql(client, page, {"to": boundary.isoformat(), "all": True})
        assert live["data"]["serviceOrders"] == {"totalCount": 0, "edges": []}
        edges = both["data"]["serviceOrders"]["edges"]
        assert len(edges) == min(100, archived_count) and both["data"]["serviceOrders"]["totalCount"] == archived_count
        order = edges[0]["node"]
        assert order["lines"], "an archived order keeps its lines"
        lookup = """query($sod: String!, $id: ID!) {
          serviceOrder(sodNumber: $sod) { id sodNumber createdAt lines { lineNo } }
          node(id: $id) { id ... on ServiceOrder { sodNumber createdAt lines { lineNo } } }
        }"""
        body = await gql(client, lookup, {"sod": order["sodNumber"], "id": order["id"]})
    assert "errors" not in body, body.get("errors")
    assert body["data"]["serviceOrder"] == order
    assert body["data"]["node"] == order


def test_archived_sod_numbers_stay_taken(fresh_db: Settings) -> None:
    seed(fresh_db.admin_url, ORDERS, defer=False)
    archive.archive(fresh_db.admin_url, after_years=AFTER_YEARS)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        sod, created_at = conn.execute("SELECT sod_number, created_at FROM service_order_archive LIMIT 1").fetchone()
        # The way every write path creates an order (docs/design.md §3): the key says it exists.
        reused = conn.execute(
            "INSERT INTO service_order_key (sod_number, created_at) VALUES (%s, now()) "
            "ON CONFLICT (sod_number) DO NOTHING RETURNING id",
            [sod],
        ).fetchone()
        assert reused is None
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO service_order_key (sod_number, created_at) VALUES (%s, now())", [sod])
        assert conn.execute("SELECT created_at FROM service_order_key WHERE sod_number = %s", [sod]).fetchone() == (
            created_at,
        )


def test_interrupted_concurrent_detach_is_finalized(fresh_db: Settings) -> None:
    """Made for real: DETACH ... CONCURRENTLY marks the partition pending and commits, then
    waits for a transaction that holds a lock on service_order; cancelling it there (as a
    killed worker or a time limit would) leaves the partition "detach pending"."""
    seed(fresh_db.admin_url, ORDERS, defer=False)
    with (
        psycopg.connect(fresh_db.admin_url, autocommit=True) as watcher,
        psycopg.connect(fresh_db.admin_url) as reader,
        psycopg.connect(fresh_db.admin_url, autocommit=True) as detacher,
    ):
        victim = next(p for p in due(watcher) if p.table == "service_order")
        reader.execute("SELECT count(*) FROM service_order")  # its transaction stays open
        failed: list[Exception] = []

        def detach() -> None:
            try:
                detacher.execute(f"ALTER TABLE service_order DETACH PARTITION {victim.name} CONCURRENTLY")
            except psycopg.Error as exc:
                failed.append(exc)

        thread = threading.Thread(target=detach)
        thread.start()
        wait_for_lock_wait(watcher, detacher.info.backend_pid, "the detach never waited")
        watcher.execute("SELECT pg_cancel_backend(%s)", [detacher.info.backend_pid])
        thread.join(10)
        reader.rollback()
        assert [type(e) for e in failed] == [psycopg.errors.QueryCanceled]
        assert layout(watcher)[victim.name] == ("service_order", True)
        other = [p for p in due(watcher) if p.table == "service_order" and p != victim][-1]
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):  # it blocks every other detach
            watcher.execute(f"ALTER TABLE service_order DETACH PARTITION {other.name} CONCURRENTLY")

    steps, messages = run_archive(fresh_db)

    assert steps[0] == f"finalize {victim.name}"
    assert f"detach {victim.name}" not in steps and f"attach {victim.name}" in steps
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        assert {layout(conn)[p.name] for p in due(conn)} == {
            ("service_order_archive", False),
            ("service_order_line_archive", False),
        }
        assert bound_constraints(conn) == []
        assert check_all(conn) == []
    assert not [m for m in messages if m.startswith("verifying table")]


def test_a_run_that_crashed_between_steps_is_completed_by_the_next(fresh_db: Settings) -> None:
    """Each crash point left by running the archive's own steps by hand, then stopping."""
    seed(fresh_db.admin_url, ORDERS, defer=False)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        before = figures(conn)
        quarters = sorted({p.start for p in due(conn)})
        by_start = {(p.start, p.table): p for p in due(conn)}
        crashes = {
            # detached from live, not yet attached to the archive
            quarters[0]: {"service_order": ["detach"]},
            # orders archived, their lines not yet touched
            quarters[1]: {"service_order": ["detach", "bound", "attach", "unbound"]},
            # both attached, the bound constraint not yet dropped
            quarters[2]: {"service_order": ["detach", "bound", "attach"], "service_order_line": ["detach", "attach"]},
        }
        for start, tables in crashes.items():
            for table, steps in tables.items():
                for step in steps:
                    archive._run(conn, by_start[start, table], step)
        # A plain DETACH by hand leaves no bound constraint: the archive adds its own.
        plain = by_start[quarters[3], "service_order_line"]
        conn.execute(f"ALTER TABLE service_order_line DETACH PARTITION {plain.name}")
        assert layout(conn)[by_start[quarters[0], "service_order"].name] == (None, False)

    steps, _ = run_archive(fresh_db)

    name = lambda start, table: by_start[start, table].name  # noqa: E731
    assert [s for s in steps if s.endswith(name(quarters[0], "service_order"))] == [
        f"{step} {name(quarters[0], 'service_order')}" for step in ("bound", "attach", "unbound")
    ]
    assert not [s for s in steps if s.endswith(name(quarters[1], "service_order"))]
    assert f"detach {plain.name}" not in steps and f"attach {plain.name}" in steps
    assert [s for s in steps if s.endswith(name(quarters[2], "service_order"))] == [
        f"unbound {name(quarters[2], 'service_order')}"
    ]
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        assert {layout(conn)[p.name] for p in due(conn)} == {
            ("service_order_archive", False),
            ("service_order_line_archive", False),
        }
        assert bound_constraints(conn) == []
        assert check_all(conn) == []
        after = figures(conn)
    assert after["lines"] == before["lines"] and after["stats"] == before["stats"]
    assert after["storage"] == before["storage"]


def test_concurrent_runs_wait_for_each_other(fresh_db: Settings) -> None:
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [archive.LOCK_KEY])  # as a run in progress would
        result: list[list[str]] = []
        thread = threading.Thread(target=lambda: result.append(archive.archive(fresh_db.admin_url, after_years=2)))
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive() and result == []
        untouched = layout(holder)
        holder.execute("SELECT pg_advisory_unlock(%s)", [archive.LOCK_KEY])
        thread.join(60)
        assert result and result[0], "the migrated template has empty quarters from 5 years back to archive"
        assert untouched != layout(holder)


def test_archiving_off_does_nothing(fresh_db: Settings) -> None:
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        before = layout(conn)
        assert archive.archive(conn, after_years=0) == []
        assert layout(conn) == before
        assert all(parent in ("service_order", "service_order_line") for parent, _ in before.values())


def test_cli_dry_run_lists_the_steps_and_changes_nothing(fresh_db: Settings) -> None:
    environ = environ_for_database(os.environ, conninfo_to_dict(fresh_db.admin_url)["dbname"])
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        before = layout(conn)
        expected = len(due(conn))
    out = subprocess.run(
        [sys.executable, "-m", "nexes.cli", "archive", "--after-years", "2", "--dry-run"],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    assert sum(line.startswith("would detach ") for line in out) == expected
    assert out[-1].startswith(f"{4 * expected} step(s) planned")
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        assert layout(conn) == before


async def test_a_new_order_cannot_reuse_an_archived_sod_number(fresh_db: Settings) -> None:
    """Through the write paths: createServiceOrder refuses it, whatever its createdAt."""
    from tests.conftest import client_for, gql

    seed(fresh_db.admin_url, ORDERS, defer=False)
    archive.archive(fresh_db.admin_url, after_years=AFTER_YEARS)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        sod, customer = conn.execute(
            "SELECT o.sod_number, c.code FROM service_order_archive AS o JOIN customer AS c ON c.id = o.customer_id "
            "LIMIT 1"
        ).fetchone()
        keys_before = conn.execute("SELECT count(*) FROM service_order_key").fetchone()
    create = """mutation($input: CreateServiceOrderInput!) {
      createServiceOrder(input: $input) { serviceOrder { id } errors { code field } } }"""
    line = [{"sku": "SKU-00001", "quantity": 1, "unitPrice": "1.00"}]
    async with client_for(fresh_db) as client:
        for created_at in (None, "2026-11-01T00:00:00+00:00"):
            payload = {"sodNumber": sod, "customerCode": customer, "lines": line}
            if created_at:
                payload["createdAt"] = created_at
            body = await gql(client, create, {"input": payload})
            result = body["data"]["createServiceOrder"]
            assert result["serviceOrder"] is None
            assert [e["code"] for e in result["errors"]] in (["DUPLICATE_CONFLICT"], ["BAD_USER_INPUT"]), result
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM service_order_key").fetchone() == keys_before
        assert conn.execute("SELECT count(*) FROM service_order WHERE sod_number = %s", [sod]).fetchone() == (0,)
        assert check_all(conn) == []

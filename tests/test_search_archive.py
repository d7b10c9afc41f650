"""Search and the archive, on the real stack: archiving a quarter queues its orders so the
sync takes them out of Typesense (they stay readable from PostgreSQL); and the reindex
gate, which lets a finishing reindex wait for running syncs without later syncs jumping
ahead of it, and never holds up the reindex's progress updates."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import pytest

from nexes.db import archive
from nexes.db import search as search_db
from nexes.db.connect.worker import worker_pool
from nexes.db.migrate import discover
from nexes.db.seed import seed
from nexes.search.client import sync_client
from nexes.search.sync import drain
from nexes.settings import Settings
from tests.conftest import client_for, gql
from tests.support.replicas import wait_for_replica
from tests.support.search import indexed_database, search_environ
from tests.support.waits import wait_for_lock_wait

DB = "nexes_t_search_archive"
REDIS_DB = 10
AFTER_YEARS = 2
ORDERS = 600


@pytest.fixture(scope="module")
def indexed(template_settings: Settings) -> Iterator[Settings]:
    """A database of this module's own, seeded over 5 years and fully indexed."""
    with indexed_database(template_settings, search_environ(DB, REDIS_DB), ORDERS) as settings:
        yield settings


def indexed_ids(settings: Settings) -> set[int]:
    exported = sync_client(settings).collections[settings.typesense_collection].documents.export()
    return {int(orjson.loads(line)["id"]) for line in exported.splitlines() if line.strip()}


def ids(conn: psycopg.Connection, table: str) -> set[int]:
    return {i for (i,) in conn.execute(f"SELECT id FROM {table}").fetchall()}


def outbox(conn: psycopg.Connection) -> list[tuple[int, str]]:
    return sorted(conn.execute("SELECT order_id, op FROM search_outbox").fetchall())


SEARCH = """query($q: String!) { search(query: $q, first: 50) { engine edges { node { sodNumber } } } }"""
BY_SOD = """query($sod: String!) { serviceOrder(sodNumber: $sod) { id sodNumber createdAt lines { lineNo } } }"""


async def test_archived_orders_leave_the_index_and_stay_readable(indexed: Settings) -> None:
    with psycopg.connect(indexed.admin_url, autocommit=True) as conn:
        before = ids(conn, "service_order")
        assert outbox(conn) == [] and indexed_ids(indexed) == before

        steps = archive.archive(conn, after_years=AFTER_YEARS)

        archived, live = ids(conn, "service_order_archive"), ids(conn, "service_order")
        assert steps and archived and live and archived | live == before
        # One row per archived order, written with the quarter's attach; the live ones untouched.
        assert outbox(conn) == sorted((i, "delete") for i in archived)
        assert indexed_ids(indexed) == before  # nothing has told Typesense yet

        drain(worker_pool(indexed), sync_client(indexed), indexed.typesense_collection, batch=250)

        assert outbox(conn) == []
        assert indexed_ids(indexed) == live
        gone_sod, gone_created = conn.execute(
            "SELECT sod_number, created_at FROM service_order_archive ORDER BY id LIMIT 1"
        ).fetchone() or ("", None)
        (live_sod,) = conn.execute("SELECT sod_number FROM service_order ORDER BY id LIMIT 1").fetchone() or ("",)

    wait_for_replica(indexed)
    async with client_for(indexed) as api:
        body = await gql(api, BY_SOD, {"sod": gone_sod})
        assert "errors" not in body, body.get("errors")
        order = body["data"]["serviceOrder"]
        assert order["sodNumber"] == gone_sod and order["lines"], "an archived order keeps its lines"
        assert datetime.fromisoformat(order["createdAt"]) == gone_created
        found = {sod: await gql(api, SEARCH, {"q": sod}) for sod in (gone_sod, live_sod)}
    hits = {sod: [e["node"]["sodNumber"] for e in b["data"]["search"]["edges"]] for sod, b in found.items()}
    assert {b["data"]["search"]["engine"] for b in found.values()} == {"TYPESENSE"}
    assert gone_sod not in hits[gone_sod] and live_sod in hits[live_sod]


def test_a_run_that_died_after_the_detach_queues_the_quarter_when_it_attaches(fresh_db: Settings) -> None:
    seed(fresh_db.admin_url, ORDERS, defer=False)
    cutoff = archive._years_before(datetime.now(UTC), AFTER_YEARS)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        due = [p for p in archive.quarter_tables(conn) if archive._due(p, cutoff)]
        # The oldest due quarter that has orders: the migration made quarters from the 1st of
        # this month 5 years back, the seed starts 1,825 days back, which is in the next quarter
        # on a quarter's last day or two (on 31 March: partitions from 1 March, orders from 1 April).
        oldest = min((p for p in due if p.table == "service_order" and ids(conn, p.name)), key=lambda p: p.start)
        quarter = ids(conn, oldest.name)
        archive._run(conn, oldest, "detach")  # ... and the run dies here
        assert outbox(conn) == []

        archive.archive(conn, after_years=AFTER_YEARS)

        queued = outbox(conn)
        assert queued == sorted((i, "delete") for i in ids(conn, "service_order_archive"))
        assert quarter <= {i for i, _ in queued}
        assert archive.archive(conn, after_years=AFTER_YEARS) == []  # nothing left to do: nothing queued twice
        assert outbox(conn) == queued


def test_migration_0029_queues_the_orders_of_quarters_archived_before(fresh_db: Settings) -> None:
    (backfill,) = [m for m in discover() if m.version == 29]
    seed(fresh_db.admin_url, ORDERS, defer=False)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        archive.archive(conn, after_years=AFTER_YEARS)
        conn.execute("DELETE FROM search_outbox")  # as archiving left it before it queued them

        conn.execute(backfill.text)

        archived = ids(conn, "service_order_archive")
        assert archived and outbox(conn) == sorted((i, "delete") for i in archived)


# --- the reindex gate ----------------------------------------------------------------


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    return thread, result


def test_heartbeats_never_wait_for_syncs_that_overlap_without_a_gap(fresh_db: Settings) -> None:
    """A steady stream of sync batches, always one holding the gate, as under load: with a
    FOR SHARE row lock each heartbeat waited for a gap that never came (over 60 s, measured)."""
    url = fresh_db.admin_url
    with (
        psycopg.connect(url, autocommit=True) as reindexer,
        psycopg.connect(url) as first,
        psycopg.connect(url) as second,
    ):
        run = search_db.start_reindex(reindexer, "overlap_test", stale_after=120)
        assert run is not None
        # Not lock_timeout: it times each wait, and each new set of share lockers began a new one.
        reindexer.execute("SET statement_timeout = '3s'")
        stop = threading.Event()

        def syncs() -> None:
            held, other = first, second
            search_db.running_reindex(held)
            while not stop.is_set():
                assert search_db.running_reindex(other) == run  # the next batch starts ...
                held.commit()  # ... before the previous one ends
                time.sleep(0.05)
                held, other = other, held
            held.commit()

        thread, _ = in_thread(syncs)
        try:
            time.sleep(0.2)
            for documents in (1000, 2000, 3000):
                started = time.monotonic()
                search_db.heartbeat(reindexer, run, documents)
                assert time.monotonic() - started < 0.5
        finally:
            stop.set()
            thread.join(10)
        assert reindexer.execute("SELECT documents FROM search_reindex WHERE id = %s", [run]).fetchone() == (3000,)


def test_the_finish_waits_for_running_syncs_and_later_syncs_queue_behind_it(fresh_db: Settings) -> None:
    url = fresh_db.admin_url
    with (
        psycopg.connect(url, autocommit=True) as watcher,
        psycopg.connect(url, autocommit=True) as reindexer,
        psycopg.connect(url) as running,
        psycopg.connect(url) as later,
    ):
        run = search_db.start_reindex(reindexer, "finish_test", stale_after=120)
        assert run is not None and search_db.running_reindex(running) == run

        finisher, queued = in_thread(lambda: search_db.finish_reindex(reindexer, run, 10, swapped=True))
        wait_for_lock_wait(watcher, reindexer.info.backend_pid, "the finish never waited for the sync")
        late_sync, seen = in_thread(lambda: search_db.running_reindex(later))
        # It does not jump ahead of the waiting finish (a FOR SHARE row lock did).
        wait_for_lock_wait(watcher, later.info.backend_pid, "the later sync did not queue")

        search_db.record_changes(running, run, [101, 102, 103])
        running.commit()
        finisher.join(10)
        late_sync.join(10)
        later.commit()

        assert queued == [3], "every change the running sync recorded was queued again"
        assert seen == [None], "the later sync sees the run finished, and the swapped alias"
        assert watcher.execute("SELECT order_id, op FROM search_outbox ORDER BY order_id").fetchall() == [
            (101, "upsert"),
            (102, "upsert"),
            (103, "upsert"),
        ]

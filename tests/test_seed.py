"""`nexes seed`: realistic data, and every invariant holds afterwards."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from nexes.db import partitions
from nexes.db.invariants import check_all
from nexes.db.seed import SeedError, check_disk, has_orders, seed
from nexes.settings import Settings
from tests.conftest import SEED_ORDERS as ORDERS


def test_invariants_hold_after_a_seed(seeded: Settings) -> None:
    with psycopg.connect(seeded.admin_url) as conn:
        assert check_all(conn) == []


def test_seed_data_looks_real(seeded: Settings) -> None:
    with psycopg.connect(seeded.admin_url) as conn:
        (orders, first, last) = conn.execute(
            "SELECT count(*), min(created_at), max(created_at) FROM service_order"
        ).fetchone() or (0, None, None)
        statuses = dict(conn.execute("SELECT status::text, count(*) FROM service_order GROUP BY 1").fetchall())
        lines = dict(
            conn.execute(
                "SELECT n, count(*) FROM (SELECT count(*) AS n FROM service_order_line GROUP BY order_id) s GROUP BY n"
            ).fetchall()
        )
        (distinct_names,) = conn.execute("SELECT count(DISTINCT name) FROM customer").fetchone() or (0,)
        (outbox,) = conn.execute("SELECT count(*) FROM search_outbox").fetchone() or (0,)
        flag = conn.execute("SELECT 1 FROM maintenance_flag WHERE name = 'search_reindex_needed'").fetchone()
    assert orders == ORDERS
    assert first is not None and last is not None
    assert (last - first).days > 365 * 4.9
    assert set(statuses) == {"DRAFT", "OPEN", "IN_PROGRESS", "COMPLETED", "CANCELLED"}
    assert statuses["COMPLETED"] > ORDERS / 2  # most old orders are done
    assert set(lines) == {1, 2, 3, 4, 5}
    assert distinct_names > 100
    assert outbox == 0 and flag == (1,)  # bulk data is marked for a reindex instead


def test_invariant_checks_catch_a_broken_ledger(fresh_db: Settings) -> None:
    seed(fresh_db.admin_url, 500, defer=False)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        conn.execute("UPDATE stock_item SET on_hand = on_hand + 1 WHERE id = (SELECT min(id) FROM stock_item)")
        conn.execute("DELETE FROM stock_movement WHERE id = (SELECT max(id) FROM stock_movement)")
        conn.execute(
            "UPDATE dashboard_stat SET order_count = order_count + 3 WHERE ctid = "
            "(SELECT ctid FROM dashboard_stat LIMIT 1)"
        )
        # The database refuses this (migration 0030): its trigger is off around this one
        # delete only, so that the invariant check, the second line of defence, is tested.
        with conn.transaction():
            conn.execute("ALTER TABLE service_order_key DISABLE TRIGGER service_order_key_delete")
            conn.execute(
                "DELETE FROM service_order_key "
                "WHERE id = (SELECT max(id) FROM service_order WHERE status = 'CANCELLED')"
            )
            conn.execute("ALTER TABLE service_order_key ENABLE TRIGGER service_order_key_delete")
        found = {v.check for v in check_all(conn)}
    assert found == {
        "on_hand_differs_from_ledger",
        "line_movements_differ",
        "dashboard_stat_differs",
        "order_without_key",
    }


def test_bulk_seed_defers_indexes_and_rebuilds_every_one(fresh_db: Settings) -> None:
    query = (
        "SELECT indexrelid::regclass::text FROM pg_index "
        "WHERE indrelid IN ('service_order'::regclass, 'stock_movement'::regclass) ORDER BY 1"
    )
    with psycopg.connect(fresh_db.admin_url) as conn:
        before = [r[0] for r in conn.execute(query)]
    seed(fresh_db.admin_url, 3_000, defer=True)
    with psycopg.connect(fresh_db.admin_url) as conn:
        after = [r[0] for r in conn.execute(query)]
        pending = conn.execute("SELECT count(*) FROM deferred_index").fetchone()
        invalid = conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()
        assert check_all(conn) == []
    assert after == before
    assert pending == (0,) and invalid == (0,)


def test_a_seed_rolls_the_customer_totals_horizon_to_its_year(fresh_db: Settings) -> None:
    """customer_stat_cum is folded up to its horizon only: seeding a database whose upkeep last
    ran in an earlier year left the later years' orders out of it, and so out of the
    top-customers report, and the invariant check (up to the horizon too) did not see it."""
    now = dt.datetime.now(dt.UTC)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM customer_stat_cum").fetchone() == (0,)
        conn.execute("UPDATE customer_stat_cum_horizon SET year = %s", [now.year - 2])
    seed(fresh_db.admin_url, 300, defer=False, now=now)
    with psycopg.connect(fresh_db.admin_url) as conn:
        horizon = conn.execute("SELECT year FROM customer_stat_cum_horizon").fetchone()
        missing = conn.execute(
            "SELECT count(*) FROM customer_stat_month AS m WHERE NOT EXISTS (SELECT FROM customer_stat_cum AS c "
            "WHERE c.year = extract(year FROM m.month) AND c.customer_id = m.customer_id AND c.currency = m.currency)"
        ).fetchone()
        assert check_all(conn) == []
    assert horizon == (partitions.cum_horizon(now.date()),)
    assert missing == (0,)


def test_seed_refuses_when_the_disk_is_too_small(settings: Settings) -> None:
    with psycopg.connect(settings.admin_url) as conn, pytest.raises(SeedError, match="GiB free"):
        check_disk(conn, 10**12)


def test_an_empty_database_has_no_orders_and_a_seeded_one_has(fresh_db: Settings) -> None:
    """`nexes seed --if-empty` (make run) seeds only a database without orders."""
    with psycopg.connect(fresh_db.admin_url) as conn:
        assert has_orders(conn) is False
    seed(fresh_db.admin_url, 10, defer=False)
    with psycopg.connect(fresh_db.admin_url) as conn:
        assert has_orders(conn) is True

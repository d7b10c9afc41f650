"""Reconciliation finds drift made by hand, corrects it, records it, and reports stock."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal
from pathlib import Path

import psycopg

from nexes.db import partitions
from nexes.db.connect.conninfo import for_role
from nexes.db.invariants import check_all, check_stock_ledger
from nexes.db.reconcile import reconcile
from nexes.db.seed import seed
from nexes.settings import Settings


def test_drift_in_dashboard_stat_is_found_corrected_and_recorded(fresh_db: Settings) -> None:
    seed(fresh_db.admin_url, 800, defer=False)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        bucket = conn.execute(
            "SELECT day, status::text, currency FROM dashboard_stat ORDER BY day DESC LIMIT 1"
        ).fetchone()
        assert bucket is not None
        conn.execute(
            "UPDATE dashboard_stat SET order_count = order_count + 7, total_amount = total_amount + 1 "
            "WHERE day = %s AND status = %s::order_status AND currency = %s",
            bucket,
        )
        conn.execute("DELETE FROM dashboard_stat WHERE ctid = (SELECT ctid FROM dashboard_stat ORDER BY day LIMIT 1)")
        conn.execute("UPDATE stock_item SET on_hand = on_hand - 5 WHERE id = (SELECT min(id) FROM stock_item)")
        # A stray movement on one line, with on_hand moved alike: only the line's ledger is wrong.
        line = conn.execute(
            "SELECT o.sod_number, l.line_no, l.stock_item_id FROM service_order o JOIN service_order_line l "
            "ON l.order_id = o.id AND l.created_at = o.created_at WHERE o.status <> 'CANCELLED' "
            "AND l.stock_item_id <> (SELECT min(id) FROM stock_item) LIMIT 1"
        ).fetchone()
        assert line is not None
        conn.execute(
            "INSERT INTO stock_movement (stock_item_id, quantity, kind, sod_number, line_no, idempotency_key) "
            "VALUES (%s, 3, 'CORRECTION', %s, %s, 'test:stray')",
            [line[2], line[0], line[1]],
        )
        conn.execute("UPDATE stock_item SET on_hand = on_hand + 3 WHERE id = %s", [line[2]])
        assert {v.check for v in check_all(conn)} >= {
            "dashboard_stat_differs",
            "on_hand_differs_from_ledger",
            "line_movements_differ",
        }

    # As the worker runs it: the worker role, through PgBouncer.
    report = reconcile(for_role(fresh_db.primary_url, fresh_db, "nexes_worker"))

    assert report.stat_corrections == 2
    assert report.on_hand_mismatches == 1
    assert report.line_mismatches == 1
    with psycopg.connect(fresh_db.admin_url) as conn:
        drift = conn.execute(
            "SELECT check_name, bucket, expected, found, corrected FROM stat_drift WHERE run_id = %s ORDER BY 1, 2",
            [report.run_id],
        ).fetchall()
        remaining = {v.check for v in check_all(conn)}
    day, status, currency = bucket
    assert ("dashboard_stat", f"{day} {status} {currency}") in {(d[0], d[1]) for d in drift}
    kept_too_high = next(d for d in drift if d[1] == f"{day} {status} {currency}")
    assert kept_too_high[3] - kept_too_high[2] == 7 and kept_too_high[4] is True
    amount_too_high = next(d for d in drift if d[1] == f"{day} {status} {currency} amount")
    assert amount_too_high[3] - amount_too_high[2] == 1 and amount_too_high[4] is True
    assert [d[0] for d in drift].count("on_hand") == 1
    assert ("line_ledger", f"{line[0]} line {line[1]}") in {(d[0], d[1]) for d in drift}
    # The stats are right again (the monthly rollup too); stock is reported, not rewritten.
    assert remaining == {"on_hand_differs_from_ledger", "line_movements_differ"}


def test_reconciling_clean_data_changes_nothing(fresh_db: Settings) -> None:
    seed(fresh_db.admin_url, 300, defer=False)
    first = reconcile(fresh_db.admin_url)
    assert (first.stat_corrections, first.on_hand_mismatches, first.line_mismatches) == (0, 0, 0)
    assert first.slices >= 20  # five years of quarters


def test_reconciliation_while_an_import_runs_corrects_nothing_that_was_right(
    fresh_db: Settings, tmp_path: Path
) -> None:
    """Reconcile again and again while an import writes orders and stats chunk by chunk:
    no correction may be made (every chunk commits orders and stats together), and the
    figures are right at the end."""
    import dataclasses

    from bench.gen_import import generate_csv
    from nexes.jobs.imports_runner import run
    from tests.support.workers import store

    seed(fresh_db.admin_url, 200, defer=False)
    path = tmp_path / "orders.csv"
    generate_csv(path, 3_000, prefix="RECON", seed=3)
    settings = dataclasses.replace(fresh_db, import_chunk_orders=100)
    job_id = store(settings, path, "reconcile-during-import")
    outcome: list[str] = []
    importer = threading.Thread(target=lambda: outcome.append(run(job_id, settings)))
    importer.start()
    reports = []
    while importer.is_alive() or not reports:
        reports.append(reconcile(for_role(fresh_db.primary_url, fresh_db, "nexes_worker")))
    importer.join()
    assert outcome == ["SUCCEEDED"]
    assert len(reports) >= 2, "reconciliation overlapped the import"
    assert [r.stat_corrections for r in reports] == [0] * len(reports)
    assert [r.line_mismatches for r in reports] == [0] * len(reports)
    with psycopg.connect(fresh_db.admin_url) as conn:
        assert check_all(conn) == []
        assert conn.execute("SELECT count(*) FROM stat_drift WHERE corrected").fetchone() == (0,)


def test_drift_in_customer_stat_month_is_found_corrected_and_recorded(fresh_db: Settings) -> None:
    seed(fresh_db.admin_url, 400, defer=False)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        bucket = conn.execute(
            "SELECT month, currency, customer_id FROM customer_stat_month ORDER BY month DESC LIMIT 1"
        ).fetchone()
        assert bucket is not None
        conn.execute(
            "UPDATE customer_stat_month SET order_count = order_count + 2, total_amount = total_amount + 10 "
            "WHERE month = %s AND currency = %s AND customer_id = %s",
            bucket,
        )
        assert "customer_stat_month_differs" in {v.check for v in check_all(conn)}
    report = reconcile(for_role(fresh_db.primary_url, fresh_db, "nexes_worker"))
    assert report.customer_stat_corrections == 1
    assert report.stat_corrections == 0
    with psycopg.connect(fresh_db.admin_url) as conn:
        drift = conn.execute(
            "SELECT bucket, expected, found, corrected FROM stat_drift "
            "WHERE run_id = %s AND check_name = 'customer_stat'",
            [report.run_id],
        ).fetchall()
        assert check_all(conn) == []
    month, currency, customer_id = bucket
    counts, amounts = sorted(drift)
    assert counts == (f"{month} {currency} customer {customer_id}", counts[1], counts[1] + 2, True)
    assert amounts == (f"{month} {currency} customer {customer_id} amount", amounts[1], amounts[1] + 10, True)


def test_drift_in_an_amount_alone_is_recorded_with_the_amounts(fresh_db: Settings) -> None:
    seed(fresh_db.admin_url, 300, defer=False)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        bucket = conn.execute(
            "SELECT day, status::text, currency, total_amount FROM dashboard_stat ORDER BY day DESC LIMIT 1"
        ).fetchone()
        assert bucket is not None
        conn.execute(
            "UPDATE dashboard_stat SET total_amount = total_amount - 12.34 "
            "WHERE day = %s AND status = %s::order_status AND currency = %s",
            bucket[:3],
        )
    report = reconcile(fresh_db.admin_url)
    assert report.stat_corrections == 1
    with psycopg.connect(fresh_db.admin_url) as conn:
        drift = conn.execute(
            "SELECT bucket, expected, found FROM stat_drift WHERE run_id = %s AND check_name = 'dashboard_stat' "
            "ORDER BY bucket",
            [report.run_id],
        ).fetchall()
        assert check_all(conn) == []
    day, status, currency, amount = bucket
    name = f"{day} {status} {currency}"
    # The count row says the count was right; the amount row says by how much the amount was not.
    assert [d[0] for d in drift] == [name, f"{name} amount"]
    assert drift[0][1] == drift[0][2]
    assert (drift[1][1], drift[1][2]) == (amount, amount - Decimal("12.34"))


def test_stock_below_zero_is_reported_as_negative_stock_and_not_as_drift(fresh_db: Settings, tmp_path: Path) -> None:
    """Stock may go negative (an order may consume more than is on hand); reconciliation
    reports where it does, and the ledger still explains it."""
    from nexes.jobs.imports_runner import run
    from tests.support.workers import store

    seed(fresh_db.admin_url, 50, defer=False)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        conn.execute("INSERT INTO stock_item (sku, name, on_hand) VALUES ('NEG-1', 'Scarce part', 0)")
        customer = conn.execute("SELECT code FROM customer ORDER BY id LIMIT 1").fetchone()
    assert customer is not None
    created = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).replace(microsecond=0).isoformat()
    path = tmp_path / "negative.csv"
    path.write_text(
        "sod_number,created_at,customer_code,status,description,currency,line_no,sku,quantity,unit_price\n"
        f"NEG-ORDER-1,{created},{customer[0]},OPEN,Too many parts,EUR,1,NEG-1,5,10.00\n"
    )
    assert run(store(fresh_db, path, "negative-stock"), fresh_db) == "SUCCEEDED"

    report = reconcile(fresh_db.admin_url)
    assert (report.negative_items, report.on_hand_mismatches, report.line_mismatches) == (1, 0, 0)
    with psycopg.connect(fresh_db.admin_url) as conn:
        found = conn.execute(
            "SELECT check_name, bucket, expected, found, corrected FROM stat_drift WHERE run_id = %s "
            "AND check_name IN ('negative_stock', 'on_hand')",
            [report.run_id],
        ).fetchall()
    assert found == [("negative_stock", "NEG-1", 0, -5, False)]


def test_drift_in_customer_stat_cum_is_found_corrected_and_recorded(fresh_db: Settings) -> None:
    seed(fresh_db.admin_url, 400, defer=False)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        assert check_all(conn) == []  # the triggers kept it equal to customer_stat_month
        row = conn.execute(
            "SELECT year, currency, customer_id FROM customer_stat_cum WHERE n12 > 0 ORDER BY year LIMIT 1"
        ).fetchone()
        assert row is not None
        conn.execute(
            "UPDATE customer_stat_cum SET n05 = n05 + 3, before_a = before_a - 7 "
            "WHERE year = %s AND currency = %s AND customer_id = %s",
            row,
        )
        assert "customer_stat_cum_differs" in {v.check for v in check_all(conn)}
    report = reconcile(for_role(fresh_db.primary_url, fresh_db, "nexes_worker"))
    assert report.customer_cum_corrections == 1
    assert report.customer_stat_corrections == 0
    with psycopg.connect(fresh_db.admin_url) as conn:
        drift = conn.execute(
            "SELECT bucket, found - expected, corrected FROM stat_drift "
            "WHERE run_id = %s AND check_name = 'customer_stat_cum' ORDER BY bucket",
            [report.run_id],
        ).fetchall()
        assert check_all(conn) == []
    year, currency, customer_id = row
    # The year's closing count (before_n + n12) was right; its closing amount 7 cents short.
    name = f"{year} {currency} customer {customer_id}"
    assert drift == [(name, 0, True), (f"{name} amount", Decimal("-0.07"), True)]


def test_the_december_upkeep_rolls_the_customer_totals_into_the_next_year(fresh_db: Settings) -> None:
    seed(fresh_db.admin_url, 200, defer=False)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        (horizon,) = conn.execute("SELECT year FROM customer_stat_cum_horizon").fetchone() or (0,)
        customers = conn.execute("SELECT count(*) FROM customer_stat_cum WHERE year = %s", [horizon]).fetchone()
        # Up to November the horizon is the current year: nothing moves.
        partitions.ensure(conn, years_back=0, quarters_ahead=1, today=dt.date(horizon, 11, 30))
        assert conn.execute("SELECT year FROM customer_stat_cum_horizon").fetchone() == (horizon,)
        # The upkeep of a December day, a year on, rolls it to the year after.
        partitions.ensure(conn, years_back=0, quarters_ahead=1, today=dt.date(horizon + 1, 12, 1))
        assert conn.execute("SELECT year FROM customer_stat_cum_horizon").fetchone() == (horizon + 2,)
        # Every customer has a row in each new year, carrying its whole total forward.
        assert (
            conn.execute("SELECT count(*) FROM customer_stat_cum WHERE year = %s", [horizon + 2]).fetchone()
            == customers
        )
        assert check_all(conn) == []


def test_each_run_checks_the_recent_quarters_lines_and_the_rest_in_turn(fresh_db: Settings) -> None:
    """With no time for more, a run checks the recent quarters' lines and one more, the
    least recently checked; a stray movement in the oldest quarter is found when its turn
    comes, and at once by a run that checks every quarter."""
    seed(fresh_db.admin_url, 600, defer=False)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        line = conn.execute(
            "SELECT o.sod_number, l.line_no, l.stock_item_id, o.created_at FROM service_order o "
            "JOIN service_order_line l ON l.order_id = o.id AND l.created_at = o.created_at "
            "WHERE o.status <> 'CANCELLED' ORDER BY o.created_at LIMIT 1"
        ).fetchone()
        assert line is not None
        conn.execute(
            "INSERT INTO stock_movement (stock_item_id, quantity, kind, sod_number, line_no, idempotency_key) "
            "VALUES (%s, 2, 'CORRECTION', %s, %s, 'test:stray-old')",
            [line[2], line[0], line[1]],
        )
        (newest,) = conn.execute("SELECT max(created_at) FROM service_order").fetchone() or (None,)
    oldest = partitions.quarter_start(line[3].astimezone(dt.UTC).date())
    # The recent quarters are this one and the one before, those of them that hold orders: in a
    # quarter's first days the seed's newest order (3 days apart at 600) may still be in the one
    # before, and then it alone is recent. One `today` for every run, so that none counts a
    # quarter that began at midnight meanwhile.
    today = dt.datetime.now(dt.UTC).date()
    recent_start = partitions.previous_quarter(partitions.quarter_start(today))
    recent = len(partitions.quarters(recent_start, newest.astimezone(dt.UTC).date()))
    assert recent in (1, 2), (today, newest)
    runs = []
    while not runs or runs[-1].line_mismatches == 0:
        runs.append(reconcile(fresh_db.admin_url, line_seconds=0, today=today))
        assert len(runs) <= 30, "the oldest quarter's turn never came"
    slices = runs[0].slices
    assert all(r.line_quarters == recent + 1 and r.line_quarters_left == slices - recent - 1 for r in runs)
    assert len(runs) == slices - recent  # the recent quarters every time, the others one by one
    with psycopg.connect(fresh_db.admin_url) as conn:
        checks = dict(conn.execute("SELECT quarter, mismatches FROM reconcile_line_check").fetchall())
        found = conn.execute(
            "SELECT bucket FROM stat_drift WHERE run_id = %s AND check_name = 'line_ledger'", [runs[-1].run_id]
        ).fetchall()
    assert len(checks) == slices and checks[oldest] == 1 and sum(checks.values()) == 1
    assert found == [(f"{line[0]} line {line[1]}",)]
    everything = reconcile(fresh_db.admin_url, line_seconds=None, today=today)
    assert (everything.line_quarters, everything.line_quarters_left, everything.line_mismatches) == (slices, 0, 1)


def test_missing_and_broken_customer_stat_cum_rows_are_found_and_restored(fresh_db: Settings) -> None:
    """The cheap check's rules one by one: a middle year's row deleted, the horizon's row
    deleted, a running total broken within a year; each customer is corrected exactly."""
    seed(fresh_db.admin_url, 400, defer=False)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        (horizon,) = conn.execute("SELECT year FROM customer_stat_cum_horizon").fetchone() or (0,)
        middle = conn.execute(
            "SELECT year, currency, customer_id FROM customer_stat_cum c WHERE year < %s AND before_n > 0 "
            "AND EXISTS (SELECT FROM customer_stat_cum p WHERE p.customer_id = c.customer_id "
            "AND p.currency = c.currency AND p.year < c.year) ORDER BY customer_id, currency, year LIMIT 1",
            [horizon],
        ).fetchone()
        assert middle is not None
        last = conn.execute(
            "SELECT year, currency, customer_id FROM customer_stat_cum WHERE year = %s AND before_n > 0 "
            "AND customer_id <> %s ORDER BY customer_id LIMIT 1",
            [horizon, middle[2]],
        ).fetchone()
        assert last is not None
        step = conn.execute(
            "SELECT year, currency, customer_id FROM customer_stat_cum WHERE n12 > n11 AND customer_id NOT IN (%s, %s) "
            "ORDER BY customer_id LIMIT 1",
            [middle[2], last[2]],
        ).fetchone()
        assert step is not None
        for row in (middle, last):
            conn.execute("DELETE FROM customer_stat_cum WHERE year = %s AND currency = %s AND customer_id = %s", row)
        # Months 11 and 12 both moved by one: the running totals still end right.
        conn.execute(
            "UPDATE customer_stat_cum SET n11 = n11 + 1 WHERE year = %s AND currency = %s AND customer_id = %s", step
        )
        assert "customer_stat_cum_differs" in {v.check for v in check_all(conn)}
    report = reconcile(for_role(fresh_db.primary_url, fresh_db, "nexes_worker"))
    assert report.customer_cum_corrections == 3
    with psycopg.connect(fresh_db.admin_url) as conn:
        fixed = conn.execute(
            "SELECT bucket FROM stat_drift WHERE run_id = %s AND check_name = 'customer_stat_cum' ORDER BY 1",
            [report.run_id],
        ).fetchall()
        assert check_all(conn) == []
    # The deleted rows' amounts are missing too; the broken step moved counts only.
    counts = [(f"{y} {c} customer {i}",) for y, c, i in (middle, last, step)]
    amounts = [(f"{y} {c} customer {i} amount",) for y, c, i in (middle, last)]
    assert sorted(fixed) == sorted(counts + amounts)


def test_the_full_stock_checks_find_each_kind_of_ledger_drift_and_nothing_else(fresh_db: Settings) -> None:
    """check_stock_ledger (what the drills run, every quarter at once, set-based): clean
    seeded data passes; a movement left of a line that does not exist, with on_hand moved
    alike, is found by movements_of_missing_lines alone; a line's quantity changed without
    its movement, by line_movements_differ; on_hand moved alone, by on_hand_differs_from_ledger."""
    seed(fresh_db.admin_url, 300, defer=False)
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        assert check_stock_ledger(conn) == []
        order = conn.execute("SELECT sod_number FROM service_order ORDER BY id LIMIT 1").fetchone()
        item = conn.execute("SELECT min(id) FROM stock_item").fetchone()
        assert order is not None and item is not None
        conn.execute(
            "INSERT INTO stock_movement (stock_item_id, quantity, kind, sod_number, line_no, idempotency_key) "
            "VALUES (%s, -4, 'CORRECTION', %s, 99, 'test:ghost-line')",
            [item[0], order[0]],
        )
        conn.execute("UPDATE stock_item SET on_hand = on_hand - 4 WHERE id = %s", [item[0]])
        ghost = check_stock_ledger(conn)
        assert [v.check for v in ghost] == ["movements_of_missing_lines"]
        assert ghost[0].samples == [f"{order[0]} line 99: ledger -4"]

        conn.execute(
            "UPDATE service_order_line SET quantity = quantity + 1 WHERE (order_id, line_no) = "
            "(SELECT o.id, 1 FROM service_order AS o WHERE o.status <> 'CANCELLED' ORDER BY o.id DESC LIMIT 1)"
        )
        conn.execute("UPDATE stock_item SET on_hand = on_hand + 1 WHERE id = %s", [item[0]])
        assert [v.check for v in check_stock_ledger(conn)] == [
            "on_hand_differs_from_ledger",
            "line_movements_differ",
            "movements_of_missing_lines",
        ]

"""Quarterly partitions: the range the settings ask for, created once, archived ones kept out."""

from __future__ import annotations

from datetime import date

import psycopg

from nexes.db import partitions
from nexes.settings import Settings


def test_quarters_cover_the_range_across_a_year_end() -> None:
    got = partitions.quarters(date(2024, 11, 15), date(2025, 4, 1))
    assert got == [date(2024, 10, 1), date(2025, 1, 1), date(2025, 4, 1)]


def test_ensure_creates_five_years_back_to_four_quarters_ahead(admin: psycopg.Connection) -> None:
    partitions.ensure(admin, years_back=5, quarters_ahead=4, today=date(2026, 11, 29))
    names = {
        r[0]
        for r in admin.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'service_order'::regclass"
        )
    }
    assert "service_order_2021q4" in names
    assert "service_order_2027q4" in names
    assert partitions.ensure(admin, years_back=5, quarters_ahead=4, today=date(2026, 11, 29)) == 0


def test_no_default_partition_so_out_of_range_dates_fail(admin: psycopg.Connection) -> None:
    row = admin.execute(
        "SELECT count(*) FROM pg_partitioned_table WHERE partdefid <> 0 "
        "AND partrelid IN ('service_order'::regclass, 'service_order_line'::regclass)"
    ).fetchone()
    assert row == (0,)


def test_a_quarter_attached_to_the_archive_is_not_recreated(fresh_db: Settings) -> None:
    with psycopg.connect(fresh_db.admin_url, autocommit=True) as conn:
        partitions.ensure_range(conn, date(2020, 1, 1), date(2020, 1, 1))
        for table in ("service_order", "service_order_line"):
            conn.execute(f"ALTER TABLE {table} DETACH PARTITION {table}_2020q1")
            conn.execute(
                f"ALTER TABLE {table}_archive ATTACH PARTITION {table}_2020q1 "
                "FOR VALUES FROM ('2020-01-01 00:00+00') TO ('2020-04-01 00:00+00')"
            )
        assert partitions.ensure_range(conn, date(2020, 1, 1), date(2020, 1, 1)) == 0
        parent = conn.execute(
            "SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = 'service_order_2020q1'::regclass"
        ).fetchone()
    assert parent == ("service_order_archive",)

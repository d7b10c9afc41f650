"""The streaming replica and PgBouncer, as the application reaches them."""

from __future__ import annotations

import time
import uuid

import psycopg

from nexes.db.connect.conninfo import for_role
from nexes.settings import Settings


def test_row_written_on_primary_is_read_from_replica(settings: Settings) -> None:
    code = f"R{uuid.uuid4().hex[:12]}"
    with psycopg.connect(for_role(settings.primary_url, settings, "nexes_api"), prepare_threshold=None) as conn:
        conn.execute("INSERT INTO customer (code, name) VALUES (%s, 'Replicated Ltd')", [code])
    replica = for_role(settings.replica_urls[0], settings, "nexes_api")
    deadline = time.monotonic() + 30
    seen = None
    with psycopg.connect(replica, autocommit=True, prepare_threshold=None) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        while seen is None and time.monotonic() < deadline:
            seen = conn.execute("SELECT name FROM customer WHERE code = %s", [code]).fetchone()
            time.sleep(0.05)
    assert seen == ("Replicated Ltd",)


def test_psycopg_works_through_pgbouncer_in_transaction_mode(settings: Settings) -> None:
    url = for_role(settings.primary_url, settings, "nexes_api")
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        # Far past psycopg's default prepare threshold (5): no prepared statement is kept.
        for i in range(20):
            assert conn.execute("SELECT %s::int + 1", [i]).fetchone() == (i + 1,)
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = '1234ms'")
            assert conn.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
        assert conn.execute("SHOW statement_timeout").fetchone() != ("1234ms",)
    admin_console = psycopg.conninfo.make_conninfo(url, user="postgres", dbname="pgbouncer")
    with psycopg.connect(admin_console, autocommit=True, prepare_threshold=None) as console:
        config = {row[0]: row[1] for row in console.execute("SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"
    assert int(config["max_client_conn"]) >= 2000

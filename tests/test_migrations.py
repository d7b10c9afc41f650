"""Migrations: idempotent, atomic per file, checksummed; role settings re-applied."""

from __future__ import annotations

import psycopg
import pytest

from nexes.db.migrate import Migration, MigrationError, _apply_pending, discover, migrate
from nexes.settings import Settings


def test_second_migrate_run_applies_nothing(settings: Settings) -> None:
    assert migrate(settings) == []
    with psycopg.connect(settings.admin_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migration ORDER BY version")]
    assert versions == [m.version for m in discover()]


def test_failing_migration_leaves_database_as_it_was(admin: psycopg.Connection) -> None:
    bad = Migration(9001, "bad", "CREATE TABLE half_done (x int);\nSELECT 1 / 0;")
    with pytest.raises(MigrationError, match=r"9001_bad\.sql failed"):
        _apply_pending(admin, [bad])
    assert admin.execute("SELECT to_regclass('half_done')").fetchone() == (None,)
    assert admin.execute("SELECT count(*) FROM schema_migration WHERE version = 9001").fetchone() == (0,)


def test_non_transactional_migration_runs_steps_outside_a_transaction(admin: psycopg.Connection) -> None:
    # CREATE INDEX CONCURRENTLY fails inside a transaction block: this only passes step by step.
    text = (
        "-- nexes:no-transaction\nCREATE TABLE IF NOT EXISTS concurrent_t (x int);\n-- nexes:step\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS concurrent_t_x ON concurrent_t (x);\n"
    )
    assert _apply_pending(admin, [Migration(9002, "concurrent", text)]) == ["9002_concurrent"]
    assert admin.execute("SELECT to_regclass('concurrent_t_x')").fetchone() != (None,)
    admin.execute("DROP TABLE concurrent_t")
    admin.execute("DELETE FROM schema_migration WHERE version = 9002")


def test_changed_applied_migration_is_refused(admin: psycopg.Connection) -> None:
    first = discover()[0]
    edited = Migration(first.version, first.name, first.text + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        _apply_pending(admin, [edited])


def test_migrate_reapplies_role_settings(settings: Settings) -> None:
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        conn.execute("ALTER ROLE nexes_worker SET statement_timeout = '1h'")
        conn.execute("ALTER ROLE nexes_worker CONNECTION LIMIT 999")
        migrate(settings)
        limit = conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = 'nexes_worker'").fetchone()
        config = conn.execute(
            "SELECT setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
            "WHERE r.rolname = 'nexes_worker' AND s.setdatabase = 0"
        ).fetchone()
    assert limit == (settings.roles["nexes_worker"].connection_limit,)
    assert config is not None
    assert f"statement_timeout={int(settings.roles['nexes_worker'].statement_timeout * 1000)}ms" in config[0]


def test_owner_role_has_no_statement_timeout(settings: Settings) -> None:
    with psycopg.connect(settings.admin_url) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)

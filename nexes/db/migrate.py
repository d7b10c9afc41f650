"""Forward-only SQL migrations, recorded in `schema_migration`, under an advisory lock.

A small runner of our own rather than a library: the ones available (yoyo, alembic,
dbmate) either want an ORM, psycopg2, or an external binary, and none applies role
settings from configuration. The rules:

- files are `NNNN_name.sql` in `nexes/db/migrations`, applied in order, each once;
- a file runs in one transaction, so a failure leaves the database as it was;
- a file starting with `-- nexes:no-transaction` runs its `-- nexes:step` parts one by
  one outside a transaction (for CREATE INDEX CONCURRENTLY and friends); each step must
  be safe to repeat, since PostgreSQL cannot roll back what came before a failure;
- an applied file must not change: its checksum is recorded and compared.

Every run also (re)creates the application roles and the probing role (nexes_monitor),
re-applies their limits from settings, rebuilds the indexes a bulk load deferred (only
definitions of the shape `nexes seed` records: seed.check_deferred), and creates the
partitions the configuration asks for.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

from nexes.db import partitions
from nexes.db.seed import SeedError, rebuild_deferred_indexes
from nexes.settings import MONITOR_ROLE, RoleSettings, Settings

log = logging.getLogger(__name__)

# Session advisory lock: migrate connects directly to the primary, never via PgBouncer.
LOCK_KEY = 0x6E65786573  # "nexes"
NO_TRANSACTION = "-- nexes:no-transaction"
STEP = re.compile(r"^-- nexes:step\s*$", re.MULTILINE)
FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration failed or the recorded history does not match the files."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def transactional(self) -> bool:
        return not self.text.lstrip().startswith(NO_TRANSACTION)


def discover() -> list[Migration]:
    """The migration files shipped in the package, in version order."""
    found = []
    for entry in resources.files("nexes.db.migrations").iterdir():
        match = FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version: {versions}")
    return found


@functools.cache
def code_version() -> int:
    """The newest migration this code ships: the schema it was written for."""
    return discover()[-1].version


# The newest migration applied.
SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_migration"


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """The newest migration applied to the database (0 for none)."""
    row = conn.execute(SCHEMA_VERSION).fetchone()
    return int(row[0]) if row else 0


def behind(applied: int) -> str | None:
    """Why this code must not write to a database whose newest migration is `applied`
    (the write path relies on what later ones made), or None when it is current or newer."""
    expected = code_version()
    if applied >= expected:
        return None
    return f"the database's schema is at migration {applied:04d}, this code needs {expected:04d}: run `nexes migrate`"


CREATE_HISTORY = """
CREATE TABLE IF NOT EXISTS schema_migration (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def migrate(settings: Settings, url: str | None = None) -> list[str]:
    """Apply pending migrations, role settings and partitions; return what was applied."""
    with psycopg.connect(url or settings.admin_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
        try:
            ensure_roles(conn, settings.roles.values())
            ensure_monitor(conn, settings.monitor_connection_limit)
            conn.execute(CREATE_HISTORY)
            applied = _apply_pending(conn, discover())
            apply_role_settings(conn, settings.roles.values())
            try:
                rebuild_deferred_indexes(conn)
            except SeedError as exc:
                raise MigrationError(str(exc)) from exc
            partitions.ensure(
                conn,
                years_back=settings.partition_years_back,
                quarters_ahead=settings.partitions_ahead,
            )
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
    return applied


def _apply_pending(conn: psycopg.Connection, migrations: list[Migration]) -> list[str]:
    recorded: dict[int, str] = {
        version: checksum for version, checksum in conn.execute("SELECT version, checksum FROM schema_migration")
    }
    applied = []
    for migration in migrations:
        label = f"{migration.version:04d}_{migration.name}"
        if migration.version in recorded:
            if recorded[migration.version] != migration.checksum:
                raise MigrationError(f"{label}.sql changed after it was applied; add a new migration instead")
            continue
        log.info("applying migration %s", label)
        try:
            _apply(conn, migration)
        except psycopg.Error as exc:
            raise MigrationError(f"{label}.sql failed: {exc}") from exc
        applied.append(label)
    return applied


def _apply(conn: psycopg.Connection, migration: Migration) -> None:
    record = "INSERT INTO schema_migration (version, name, checksum) VALUES (%s, %s, %s)"
    args = (migration.version, migration.name, migration.checksum)
    if migration.transactional:
        with conn.transaction():
            conn.execute(migration.text.encode())
            conn.execute(record, args)
        return
    for step in STEP.split(migration.text.removeprefix(NO_TRANSACTION)):
        if step.strip():
            conn.execute(step.encode())
    conn.execute(record, args)


def ensure_roles(conn: psycopg.Connection, roles: Iterable[RoleSettings]) -> None:
    """Create the application roles that do not exist yet (the owner is bootstrapped)."""
    for role in roles:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role.name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role.name)))


def _duration(seconds: float) -> sql.Composable:
    return sql.Literal(f"{int(seconds * 1000)}ms")


def apply_role_settings(conn: psycopg.Connection, roles: Iterable[RoleSettings]) -> None:
    """Timeouts and connection ceilings live on the roles, so they hold through PgBouncer."""
    for role in roles:
        name = sql.Identifier(role.name)
        statements = [
            sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(name, sql.Literal(role.connection_limit)),
            sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(name, _duration(role.statement_timeout)),
            sql.SQL("ALTER ROLE {} SET lock_timeout = {}").format(name, _duration(role.lock_timeout)),
            sql.SQL("ALTER ROLE {} SET idle_in_transaction_session_timeout = {}").format(
                name, _duration(role.idle_in_transaction_timeout)
            ),
            # Nexes' statements are index-served pages, summaries and set-based batches:
            # JIT compiles for tens to hundreds of ms and saves less (measured: 37 ms of a
            # 10M top-customers report, 710 ms of an 813 ms import statement).
            sql.SQL("ALTER ROLE {} SET jit = off").format(name),
        ]
        if role.name == "nexes_analyst":
            statements.append(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(name))
        password = str(role.password)
        if password:
            statements.append(sql.SQL("ALTER ROLE {} PASSWORD {}").format(name, sql.Literal(password)))
        for statement in statements:
            conn.execute(statement)


def ensure_monitor(conn: psycopg.Connection, connection_limit: int = 5) -> None:
    """nexes_monitor: LOGIN, a member of pg_monitor, CONNECT here, a few connections, and
    nothing else (its one table privilege, SELECT on schema_migration, is migration 0030's).

    Each API process keeps one probing connection to each server, and a server counts the
    role's connections to itself: NEXES_MONITOR_CONNECTION_LIMIT (default 5) must be at
    least the API processes that probe one server, plus one for a probe being re-made.

    `infra/stack up` makes it as the superuser; elsewhere the owner makes it here (its
    CREATEROLE may grant pg_monitor on PostgreSQL 15; from 16 on, that takes ADMIN OPTION
    on pg_monitor, and the error says what a superuser must run). A physical replica
    gets the role, its membership and its settings with the WAL.
    """
    name = sql.Identifier(MONITOR_ROLE)
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [MONITOR_ROLE]).fetchone():
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(name))
    member = conn.execute("SELECT pg_has_role(%s, 'pg_monitor', 'MEMBER')", [MONITOR_ROLE]).fetchone()
    if not (member and member[0]):
        try:
            conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(name))
        except psycopg.errors.InsufficientPrivilege as exc:
            raise MigrationError(
                f"{MONITOR_ROLE} is not a member of pg_monitor and this role may not grant it ({exc}); "
                f"as a superuser run: GRANT pg_monitor TO {MONITOR_ROLE}"
            ) from exc
    statements = [
        sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(name, sql.Literal(connection_limit)),
        # Probes are single short reads: anything longer is a stuck server, not a probe.
        sql.SQL("ALTER ROLE {} SET statement_timeout = '5s'").format(name),
        sql.SQL("ALTER ROLE {} SET lock_timeout = '1s'").format(name),
        sql.SQL("ALTER ROLE {} SET idle_in_transaction_session_timeout = '10s'").format(name),
        sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(name),
        sql.SQL("ALTER ROLE {} SET jit = off").format(name),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(_database(conn)), name),
    ]
    for statement in statements:
        conn.execute(statement)


def _database(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT current_database()").fetchone()
    return str(row[0]) if row else ""

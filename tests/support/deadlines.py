"""Deadline tests' helpers: settings with short deadlines, a table locked on the primary
and the replica, and the API roles' statements still running on a server."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from nexes.settings import Settings
from tests.support.databases import superuser_url
from tests.support.waits import wait_for

BACKEND_ROLES = ("nexes_api", "nexes_analyst")
SLACK = 2.5  # seconds past the deadline the answer may take: the server's cancel, a loaded machine


def with_deadlines(settings: Settings, seconds: float) -> Settings:
    return dataclasses.replace(settings, request_deadlines=dict.fromkeys(settings.request_deadlines, seconds))


def _dbname(settings: Settings) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(settings.admin_url)["dbname"])


@contextmanager
def customers_locked(settings: Settings) -> Iterator[str]:
    """`customer` locked on the primary, the lock replayed on the replica (a read of the
    table waits there, visibly active); yields the replica's superuser URL."""
    dbname = _dbname(settings)
    replica = superuser_url(settings.replica_admin_urls[0], dbname)
    lock = psycopg.connect(superuser_url(settings.admin_url, dbname))
    try:  # released whatever fails: a held lock would stall every later test
        lock.execute("LOCK TABLE customer IN ACCESS EXCLUSIVE MODE")
        with psycopg.connect(superuser_url(settings.admin_url, dbname), autocommit=True) as flush:
            flush.execute("SELECT pg_current_xact_id()")  # flushes the lock's WAL page to the standby
        with psycopg.connect(replica, autocommit=True) as conn:
            held = "SELECT 1 FROM pg_locks WHERE relation = 'customer'::regclass AND mode = 'AccessExclusiveLock'"
            assert wait_for(lambda: conn.execute(held).fetchone(), 10), "the lock never reached the replica"
        yield replica
    finally:
        lock.rollback()
        lock.close()


def active_backends(url: str) -> list[tuple[str, str]]:
    """(role, query) of the API roles' backends running a statement on this server."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT usename::text, query FROM pg_stat_activity WHERE usename = ANY(%s) AND state <> 'idle'",
            [list(BACKEND_ROLES)],
        ).fetchall()
    return [(r[0], r[1]) for r in rows]

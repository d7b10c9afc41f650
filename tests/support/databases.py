"""Test databases on the real stack: re-created from the migrated template, dropped after."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from nexes import settings as settings_module
from nexes.db.connect.conninfo import environ_for_database, for_role
from nexes.settings import Settings
from tests.support.waits import wait_until_served

TEMPLATE_DB = "nexes_test_template"


def superuser_url(url: str, dbname: str = "postgres") -> str:
    """The stack's superuser, directly on the server behind `url` (tests only)."""
    params = conninfo_to_dict(url)
    params.update(user="postgres", dbname=dbname)
    return make_conninfo("", **params)


def environ_for(dbname: str) -> dict[str, str]:
    """The stack's variables (this process's environment) with every URL on `dbname`."""
    return environ_for_database(os.environ, dbname)


def recreate_database(admin_url: str, name: str, template: str | None = None) -> None:
    with psycopg.connect(superuser_url(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER nexes_owner TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template or "template0")
            )
        )
    if template:
        wait_until_database_served(name)


def wait_until_database_served(name: str, seconds: float = 15.0) -> None:
    """Until every role reaches the new database through PgBouncer.

    Re-creating a database kills PgBouncer's idle server connections to the old one;
    a pool that then tries to reconnect before CREATE finishes fails its login, and
    PgBouncer refuses that (database, role) pool for `server_login_retry` seconds.
    Tests wait that out here instead of failing on their first statement.
    """
    settings = settings_module.load(environ_for(name))
    deadline = time.monotonic() + seconds
    for role in ("nexes_api", "nexes_worker", "nexes_analyst"):
        url = for_role(settings.primary_url, settings, role)
        wait_until_served(url, timeout=max(0.0, deadline - time.monotonic()), interval=0.25)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(superuser_url(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def own_database(template_settings: Settings, name: str, orders: int = 0) -> Iterator[Settings]:
    """A database of a test module's own (a module that writes global figures or counts
    rows must leave the session's seeded database as seeded): a copy of the migrated
    template, seeded with `orders` when given, dropped with the workers' pools after."""
    from nexes.db.connect.worker import close_worker_pools
    from nexes.db.seed import seed

    recreate_database(template_settings.admin_url, name, template=TEMPLATE_DB)
    settings = settings_module.load(environ_for(name))
    if orders:
        seed(settings.admin_url, orders, defer=False)
    try:
        yield settings
    finally:
        close_worker_pools()
        drop_database(template_settings.admin_url, name)

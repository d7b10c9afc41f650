"""Fixtures: a fresh test database, cloned from a migrated template, on the real stack.

`make test` starts the stack and exports its NEXES_* variables; NEXES_TEST_DB names
the database the tests own (dropped and re-created every session).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from nexes import settings as settings_module
from nexes.db.connect.conninfo import environ_for_database
from nexes.db.migrate import migrate
from nexes.settings import Settings

TEMPLATE_DB = "nexes_test_template"


def pytest_configure(config: pytest.Config) -> None:
    """Under `make test-dates`, move this process's clock to the stack's moved clock.

    infra/test-dates starts PostgreSQL under libfaketime at NEXES_FAKE_NOW (as of the
    real epoch second NEXES_FAKE_SINCE); time-machine moves Python's clock to the same
    instant. It ticks (tick=True): a frozen clock would hang asyncio.sleep and every
    deadline loop.
    """
    fake_now = os.environ.get("NEXES_FAKE_NOW")
    if not fake_now:
        return
    import datetime as dt

    import time_machine

    since = float(os.environ.get("NEXES_FAKE_SINCE") or time.time())
    offset = dt.datetime.fromisoformat(fake_now).timestamp() - since
    traveller = time_machine.travel(dt.datetime.fromtimestamp(time.time() + offset, dt.UTC), tick=True)
    traveller.start()
    config.add_cleanup(traveller.stop)
    # The processes tests start (`nexes archive`, workers, the scheduler) run on the same
    # clock: libfaketime's relative form ("+N" seconds) holds for whenever each one starts.
    libfaketime = os.environ.get("NEXES_LIBFAKETIME", "")
    if libfaketime:
        os.environ["LD_PRELOAD"] = libfaketime
        os.environ["FAKETIME"] = f"{offset:+.0f}"
        os.environ["DONT_FAKE_MONOTONIC"] = "1"


def superuser_url(url: str, dbname: str = "postgres") -> str:
    """The stack's superuser, directly on the server behind `url` (tests only)."""
    params = conninfo_to_dict(url)
    params.update(user="postgres", dbname=dbname)
    return make_conninfo(**params)


def _environ_for(dbname: str) -> dict[str, str]:
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
        wait_until_served(name)


def wait_until_served(name: str, seconds: float = 15.0) -> None:
    """Until every role reaches the new database through PgBouncer.

    Re-creating a database kills PgBouncer's idle server connections to the old one;
    a pool that then tries to reconnect before CREATE finishes fails its login, and
    PgBouncer refuses that (database, role) pool for `server_login_retry` seconds.
    Tests wait that out here instead of failing on their first statement.
    """
    environ = _environ_for(name)
    settings = settings_module.load(environ)
    from nexes.db.connect.conninfo import for_role

    deadline = time.monotonic() + seconds
    for role in ("nexes_api", "nexes_worker", "nexes_analyst"):
        while True:
            try:
                with psycopg.connect(for_role(settings.primary_url, settings, role), prepare_threshold=None) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(superuser_url(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def test_db_name() -> str:
    name = os.environ.get("NEXES_TEST_DB", "nexes_test")
    if "NEXES_ADMIN_URL" not in os.environ:
        pytest.exit('the stack\'s variables are not set: run `make test` (or eval "$(infra/stack env)")', 2)
    return name


@pytest.fixture(scope="session")
def template_settings(test_db_name: str) -> Settings:
    """A migrated template database, kept between sessions and migrated forward each time."""
    base = settings_module.load()
    with psycopg.connect(superuser_url(base.admin_url), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [TEMPLATE_DB]).fetchone()
    if not exists:
        recreate_database(base.admin_url, TEMPLATE_DB)
    settings = settings_module.load(_environ_for(TEMPLATE_DB))
    migrate(settings)
    return settings


@pytest.fixture(scope="session")
def settings(template_settings: Settings, test_db_name: str) -> Settings:
    """Settings pointing every URL at a fresh copy of the template."""
    recreate_database(template_settings.admin_url, test_db_name, template=TEMPLATE_DB)
    return settings_module.load(_environ_for(test_db_name))


@pytest.fixture
def fresh_db(template_settings: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """A database of the test's own, for tests that change data globally."""
    name = f"nexes_t_{request.node.name.lower()[:40]}".replace("[", "_").replace("]", "_")
    recreate_database(template_settings.admin_url, name, template=TEMPLATE_DB)
    yield settings_module.load(_environ_for(name))
    drop_database(template_settings.admin_url, name)


@pytest.fixture
def admin(settings: Settings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        yield conn


SEED_ORDERS = 3_000


@pytest.fixture(scope="session")
def seeded(settings: Settings) -> Settings:
    """The session's test database with a small realistic seed (once per session)."""
    from nexes.db.seed import seed

    seed(settings.admin_url, SEED_ORDERS, defer=False)
    return settings


@pytest.fixture
async def app_client(seeded: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real ASGI app (lifespan included) on the seeded database."""
    async with client_for(seeded) as client:
        yield client


@asynccontextmanager
async def client_for(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    from nexes.http.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://nexes.test") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


async def gql(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None, **headers: str
) -> dict[str, Any]:
    """POST a GraphQL request; returns the JSON body (the response is on ["_response"])."""
    response = await client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)
    body: dict[str, Any] = response.json()
    body["_response"] = response
    return body


def error_codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors", [])]

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

from nexes import settings as settings_module
from nexes.db.migrate import migrate
from nexes.settings import Settings
from tests.support.auth import bearer_for
from tests.support.databases import TEMPLATE_DB, drop_database, environ_for, recreate_database, superuser_url
from tests.support.replicas import wait_for_replica


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
    settings = settings_module.load(environ_for(TEMPLATE_DB))
    migrate(settings)
    return settings


@pytest.fixture(scope="session")
def settings(template_settings: Settings, test_db_name: str) -> Settings:
    """Settings pointing every URL at a fresh copy of the template."""
    recreate_database(template_settings.admin_url, test_db_name, template=TEMPLATE_DB)
    return settings_module.load(environ_for(test_db_name))


@pytest.fixture
def fresh_db(template_settings: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """A database of the test's own, for tests that change data globally."""
    name = f"nexes_t_{request.node.name.lower()[:40]}".replace("[", "_").replace("]", "_")
    recreate_database(template_settings.admin_url, name, template=TEMPLATE_DB)
    yield settings_module.load(environ_for(name))
    drop_database(template_settings.admin_url, name)


@pytest.fixture
def admin(settings: Settings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def db_settings(settings: Settings) -> Settings:
    """The database the `db` fixture connects to: a module with a database of its own
    overrides this fixture to return that database's settings."""
    return settings


@pytest.fixture
def db(db_settings: Settings) -> Iterator[psycopg.Connection]:
    """An autocommit superuser-owner connection (admin_url) to `db_settings`' database."""
    with psycopg.connect(db_settings.admin_url, autocommit=True) as conn:
        yield conn


SEED_ORDERS = 3_000


@pytest.fixture(scope="session")
def seeded(settings: Settings) -> Settings:
    """The session's test database with a small realistic seed (once per session)."""
    from nexes.db.seed import seed

    seed(settings.admin_url, SEED_ORDERS, defer=False)
    # The app reads from the replica, seconds behind on a loaded machine: every test that
    # reads the seed through the API must see all of it (once, a full run's second test
    # found no order at all on its first page).
    wait_for_replica(settings, timeout=120)
    return settings


@pytest.fixture
async def app_client(seeded: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real ASGI app (lifespan included) on the seeded database."""
    async with client_for(seeded) as client:
        yield client


@asynccontextmanager
async def client_for(
    settings: Settings, roles: tuple[str, ...] = ("admin",), subject: str = "test-admin"
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on `settings`, with a client that sends a token of `roles` (none: no token)."""
    from nexes.http.app import create_app

    app = create_app(settings)
    auth = bearer_for(settings, *roles, subject=subject) if roles else {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://nexes.test", headers=auth) as client:
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

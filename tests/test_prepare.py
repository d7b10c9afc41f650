"""NEXES_PREPARE and the request id as application_name (issue 21), against the real servers:
straight to PostgreSQL with statements prepared, and through PgBouncer with them off."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from psycopg import sql

from nexes import settings as settings_module
from nexes.db.key_hints import ORDER_KEYS
from nexes.settings import Settings, SettingsError
from tests.conftest import client_for, gql
from tests.support.databases import environ_for, superuser_url

PAGE = "{ serviceOrders(first: 5) { edges { node { sodNumber customer { name } } } } }"
BLOCKED = "{ customers(first: 1) { edges { cursor } } }"


def _settings(seeded: Settings, *, direct: bool, **env: str) -> Settings:
    """The seeded database's settings with `env`; `direct`: the servers themselves, no PgBouncer."""
    base = environ_for(urlsplit(seeded.replica_urls[0]).path.lstrip("/"))
    if direct:
        dbname = urlsplit(seeded.replica_urls[0]).path
        replica = urlsplit(seeded.replica_admin_urls[0]).netloc.rpartition("@")[2]
        primary = urlsplit(seeded.admin_url).netloc.rpartition("@")[2]
        base |= {
            "NEXES_REPLICA_URLS": f"postgresql://{replica}{dbname}",
            "NEXES_PRIMARY_URL": f"postgresql://{primary}{dbname}",
        }
    # One connection per pool: every request of the test runs on it.
    return settings_module.load(base | {"NEXES_API_POOL_SIZE": "1"} | env)


def _lock_replayed(settings: Settings, dbname: str, table: str = "customer") -> psycopg.Connection:
    """An open transaction holding ACCESS EXCLUSIVE on `table`, once the replica has replayed it.

    The lock's WAL record leaves the primary only when something flushes it: a commit
    (txid_current() in autocommit) does."""
    lock = psycopg.connect(superuser_url(settings.admin_url, dbname))
    lock.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(table)))
    with psycopg.connect(superuser_url(settings.admin_url, dbname), autocommit=True) as other:
        other.execute("SELECT txid_current()")
    deadline = time.monotonic() + 30
    with psycopg.connect(superuser_url(settings.replica_admin_urls[0], dbname), autocommit=True) as replica:
        while not replica.execute(
            "SELECT 1 FROM pg_locks WHERE relation = %s::regclass AND mode = 'AccessExclusiveLock'", [table]
        ).fetchone():
            assert time.monotonic() < deadline, "the replica did not replay the lock in 30 s"
            time.sleep(0.05)
    return lock


async def _application_name_while_blocked(
    client: httpx.AsyncClient,
    settings: Settings,
    request_id: str,
    body: dict[str, Any] | None = None,
    table: str = "customer",
) -> Any:
    """pg_stat_activity's (application_name, query) of the API's read while a lock holds it
    (on the replica, where the read goes, or on the primary, should the router send it there)."""
    dbname = psycopg.conninfo.conninfo_to_dict(settings.admin_url)["dbname"]
    lock = _lock_replayed(settings, dbname, table)
    seen = None
    try:
        task = asyncio.ensure_future(
            client.post("/graphql", json=body or {"query": BLOCKED}, headers={"x-request-id": request_id})
        )
        deadline = time.monotonic() + 15
        urls = [superuser_url(settings.admin_url), superuser_url(settings.replica_admin_urls[0])]
        while seen is None and time.monotonic() < deadline:
            for url in urls:
                with psycopg.connect(url, autocommit=True) as conn:
                    seen = (
                        seen
                        or conn.execute(
                            "SELECT application_name, query FROM pg_stat_activity WHERE application_name LIKE %s",
                            [f"{request_id} %"],
                        ).fetchone()
                    )
            await asyncio.sleep(0.05)
    finally:
        lock.commit()
        lock.close()
    response = await task
    assert response.status_code == 200 and "errors" not in response.json(), response.text
    return seen


async def _prepared(client: httpx.AsyncClient) -> list[str]:
    """The statements prepared on the API's one replica connection."""
    return [row[0] for row in await _plans(client)]


async def _plans(client: httpx.AsyncClient) -> list[tuple[str, int, int]]:
    """(statement, generic plans, custom plans) of each statement prepared on the API's replica connection."""
    pool = client.app.state.pools.replicas[0]  # type: ignore[attr-defined]
    async with pool.connection() as conn:
        cur = await psycopg.AsyncCursor(conn).execute(
            "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
        )
        return await cur.fetchall()


async def test_prepare_on_direct_prepares_the_page_and_pg_stat_activity_shows_the_request_id(seeded: Settings) -> None:
    settings = _settings(seeded, direct=True, NEXES_PREPARE="on")
    assert settings.prepare and settings.sql_tag == "application_name"
    async with client_for(settings, roles=("viewer",)) as client:
        for i in range(8):  # psycopg prepares a statement on its 5th run on a connection
            body = await gql(client, PAGE, **{"x-request-id": f"prep-{os.getpid()}-{i}"})
            assert "errors" not in body and len(body["data"]["serviceOrders"]["edges"]) == 5
        prepared = await _prepared(client)
        request_id = f"prep-seen-{os.getpid()}"
        seen = await _application_name_while_blocked(client, settings, request_id)
    pages = [s for s in prepared if "FROM service_order" in s]
    assert pages, prepared
    assert not any("request_id" in s for s in prepared)  # the text carries no comment
    assert seen is not None, "the request id never showed in pg_stat_activity.application_name"
    assert seen[0] == f"{request_id} nexes-api-replica-0"
    assert not seen[1].startswith("/*")


async def test_prepare_off_through_pgbouncer_prepares_nothing_and_pg_stat_activity_shows_the_request_id(
    seeded: Settings,
) -> None:
    settings = _settings(seeded, direct=False, NEXES_SQL_TAG="application_name")
    assert not settings.prepare
    async with client_for(settings, roles=("viewer",)) as client:
        for i in range(8):  # would fail from the 6th run if psycopg prepared behind PgBouncer 1.18
            body = await gql(client, PAGE, **{"x-request-id": f"bouncer-{os.getpid()}-{i}"})
            assert "errors" not in body and len(body["data"]["serviceOrders"]["edges"]) == 5
        prepared = await _prepared(client)
        request_id = f"bouncer-seen-{os.getpid()}"
        seen = await _application_name_while_blocked(client, settings, request_id)
    assert prepared == []
    assert seen is not None and seen[0].startswith(f"{request_id} ")


async def test_application_name_is_the_pools_own_again_after_the_statement(seeded: Settings) -> None:
    settings = _settings(seeded, direct=True, NEXES_PREPARE="on")
    async with client_for(settings, roles=("viewer",)) as client:
        await gql(client, PAGE, **{"x-request-id": f"after-{os.getpid()}"})
        pool = client.app.state.pools.replicas[0]  # type: ignore[attr-defined]
        async with pool.connection() as conn:
            cur = await psycopg.AsyncCursor(conn).execute("SELECT current_setting('application_name')")
            assert await cur.fetchone() == ("nexes-api-replica-0",)


async def test_the_comment_tag_keeps_prepare_off_statements_unprepared_direct(seeded: Settings) -> None:
    settings = _settings(seeded, direct=True)
    assert (settings.prepare, settings.sql_tag) == (False, "comment")
    async with client_for(settings, roles=("viewer",)) as client:
        for i in range(8):
            assert "errors" not in await gql(client, PAGE, **{"x-request-id": f"plain-{os.getpid()}-{i}"})
        assert await _prepared(client) == []


def test_settings_prepare_and_sql_tag_are_checked_and_named() -> None:
    env = {"NEXES_PRIMARY_URL": "postgresql://127.0.0.1/x"}
    assert (settings_module.load(env).prepare, settings_module.load(env).sql_tag) == (False, "comment")
    on = settings_module.load(env | {"NEXES_PREPARE": "on"})
    assert (on.prepare, on.sql_tag) == (True, "application_name")
    assert settings_module.load(env | {"NEXES_PREPARE": "on", "NEXES_SQL_TAG": "both"}).sql_tag == "both"
    with pytest.raises(SettingsError, match="NEXES_PREPARE"):
        settings_module.load(env | {"NEXES_PREPARE": "yes please"})
    with pytest.raises(SettingsError, match="NEXES_SQL_TAG"):
        settings_module.load(env | {"NEXES_SQL_TAG": "header"})


async def test_statements_in_a_pipeline_each_carry_the_request_id(seeded: Settings) -> None:
    # node(id) reads an order and its lines in one pipeline: the lines' statement, held by
    # a lock, shows the request id it was queued behind.
    settings = _settings(seeded, direct=True, NEXES_PREPARE="on")
    async with client_for(settings, roles=("viewer",)) as client:
        page = await gql(client, "{ serviceOrders(first: 1) { edges { node { id sodNumber } } } }")
        node = page["data"]["serviceOrders"]["edges"][0]["node"]
        query = "query($id: ID!) { node(id: $id) { ... on ServiceOrder { sodNumber lines { lineNo quantity } } } }"
        body = {"query": query, "variables": {"id": node["id"]}}
        request_id = f"pipeline-{os.getpid()}"
        seen = await _application_name_while_blocked(client, settings, request_id, body, table="service_order_line")
        answer = await gql(client, query, {"id": node["id"]})
    assert seen is not None and seen[0] == f"{request_id} nexes-api-replica-0"
    assert "service_order_line" in seen[1]
    assert answer["data"]["node"]["sodNumber"] == node["sodNumber"] and answer["data"]["node"]["lines"]


async def test_prepared_keyset_pages_run_their_generic_plan(seeded: Settings) -> None:
    settings = _settings(seeded, direct=True, NEXES_PREPARE="on")
    async with client_for(settings, roles=("viewer",)) as client:
        for i in range(10):
            assert "errors" not in await gql(client, PAGE, **{"x-request-id": f"generic-{os.getpid()}-{i}"})
        plans = await _plans(client)
    pages = [(generic, custom) for text, generic, custom in plans if "FROM service_order" in text]
    assert pages, plans
    generic, custom = pages[0]
    assert generic >= 5 and custom == 0  # every run since it was prepared


async def test_the_dashboard_an_order_with_its_lines_and_customers_by_id_run_their_generic_plans(
    seeded: Settings,
) -> None:
    settings = _settings(seeded, direct=True, NEXES_PREPARE="on")
    dashboard = '{ dashboard(from: "2020-01-01", to: "2030-12-31") { totalCount } }'
    node_query = "query($id: ID!) { node(id: $id) { ... on ServiceOrder { sodNumber lines { lineNo } } } }"
    async with client_for(settings, roles=("viewer",)) as client:
        page = await gql(client, "{ serviceOrders(first: 1) { edges { node { id } } } }")
        order = page["data"]["serviceOrders"]["edges"][0]["node"]["id"]
        for i in range(8):
            headers = {"x-request-id": f"generic-reads-{os.getpid()}-{i}"}
            assert "errors" not in await gql(client, dashboard, **headers)
            ORDER_KEYS.clear()  # else the order's key is remembered, and the key table read once
            assert "errors" not in await gql(client, node_query, {"id": order}, **headers)
        plans = {text: (generic, custom) for text, generic, custom in await _plans(client)}

    def plans_of(fragment: str) -> tuple[int, int]:
        (found,) = [counts for text, counts in plans.items() if fragment in text]
        return found

    assert plans_of("FROM dashboard_stat_month")[1] == 0 and plans_of("FROM dashboard_stat_month")[0] >= 3
    assert plans_of("FROM service_order_key WHERE id")[1] == 0
    lines = plans_of("FROM service_order_line WHERE")
    assert lines[1] == 0 and lines[0] >= 3
    # The order's own statement shares the lines' pipeline, queued before them: custom plans.
    assert plans_of("CROSS JOIN LATERAL")[0] == 0


async def test_a_statement_after_a_generic_one_in_a_pipeline_gets_custom_plans_again(seeded: Settings) -> None:
    from nexes.db.connect.conninfo import for_role
    from nexes.db.connect.session_tag import GenericPlan, NamedCursor
    from nexes.observability import request_id_var

    settings = _settings(seeded, direct=True, NEXES_PREPARE="on")
    token = request_id_var.set(f"after-generic-{os.getpid()}")
    first = GenericPlan(b"SELECT id FROM customer WHERE id = %(id)s")
    second = b"SELECT count(*) FROM customer WHERE name > %(name)s"
    try:
        async with await psycopg.AsyncConnection.connect(
            for_role(settings.replica_urls[0], settings, "nexes_api"),
            autocommit=True,
            prepare_threshold=0,
            cursor_factory=NamedCursor,
        ) as conn:
            for i in range(5):  # under auto, PostgreSQL's first five plans are custom ones
                async with conn.pipeline():
                    await conn.cursor().execute(first, {"id": i})
                    await conn.cursor().execute(second, {"name": f"name {i}"})
            cur = await psycopg.AsyncCursor(conn).execute(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            )
            plans = {text: (generic, custom) for text, generic, custom in await cur.fetchall()}
    finally:
        request_id_var.reset(token)
    (after,) = [counts for text, counts in plans.items() if "count(*) FROM customer" in text]
    (generic,) = [counts for text, counts in plans.items() if "SELECT id FROM customer" in text]
    assert generic[1] == 0 and generic[0] >= 5
    assert after == (0, 5)  # plan_cache_mode back to auto, in the same transaction


async def _named_connection(seeded: Settings) -> psycopg.AsyncConnection[Any]:
    """A preparing connection to the replica with the application_name cursor, as the SPA's pools make."""
    from nexes.db.connect.conninfo import for_role
    from nexes.db.connect.session_tag import NamedCursor

    settings = _settings(seeded, direct=True, NEXES_PREPARE="on")
    return await psycopg.AsyncConnection.connect(
        for_role(settings.replica_urls[0], settings, "nexes_api", application_name="nexes-test"),
        autocommit=True,
        prepare_threshold=0,
        cursor_factory=NamedCursor,
    )


async def test_a_failing_statement_behind_its_tag_raises_its_own_error_and_the_connection_goes_on(
    seeded: Settings,
) -> None:
    from nexes.observability import request_id_var

    token = request_id_var.set(f"failing-{os.getpid()}")
    try:
        async with await _named_connection(seeded) as conn:
            for _ in range(3):  # unprepared, being prepared, prepared
                with pytest.raises(psycopg.errors.DivisionByZero):
                    await conn.cursor().execute("SELECT 1 / %(zero)s::int", {"zero": 0})
                cur = await conn.cursor().execute("SELECT current_setting('application_name'), %(x)s::int", {"x": 7})
                assert await cur.fetchall() == [(f"failing-{os.getpid()} nexes-test", 7)]
            assert conn.pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        request_id_var.reset(token)


async def test_connection_execute_sends_its_tag_in_nexes_pipeline_and_only_explicit_options_in_psycopgs(
    seeded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AsyncConnection.execute passes prepare=None: that default takes the one round trip
    of `together`, as a cursor's execute does; psycopg's own pipeline (a turn of the event
    loop per command) only takes an explicit prepare= or binary=."""
    from nexes.db.connect import session_tag
    from nexes.observability import request_id_var

    ways: list[str] = []
    real_together, real_pipeline = session_tag.together, psycopg.AsyncConnection.pipeline

    async def together(*args: Any, **kwargs: Any) -> None:
        ways.append("together")
        await real_together(*args, **kwargs)

    def pipeline(self: Any) -> Any:
        ways.append("psycopg")
        return real_pipeline(self)

    monkeypatch.setattr(session_tag, "together", together)
    monkeypatch.setattr(psycopg.AsyncConnection, "pipeline", pipeline)
    token = request_id_var.set(f"execute-{os.getpid()}")
    try:
        async with await _named_connection(seeded) as conn:
            query = "SELECT current_setting('application_name'), %(x)s::int"
            cur = await conn.execute(query, {"x": 1})
            assert await cur.fetchall() == [(f"execute-{os.getpid()} nexes-test", 1)]
            cur = await conn.cursor().execute(query, {"x": 2}, prepare=True)
            assert await cur.fetchall() == [(f"execute-{os.getpid()} nexes-test", 2)]
            cur = await conn.cursor().execute(query, {"x": 3}, binary=True)
            assert await cur.fetchall() == [(f"execute-{os.getpid()} nexes-test", 3)]
    finally:
        request_id_var.reset(token)
    assert ways == ["together", "psycopg", "psycopg"]


async def test_a_statement_behind_its_tag_cancelled_where_it_waits_stops_on_the_server(seeded: Settings) -> None:
    from nexes.observability import request_id_var

    token = request_id_var.set(f"cancelled-{os.getpid()}")
    try:
        async with await _named_connection(seeded) as conn:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await conn.cursor().execute("SELECT pg_sleep(%(s)s)", {"s": 30})
            assert time.monotonic() - started < 10  # psycopg's cancel reached the server
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            cur = await conn.cursor().execute("SELECT %(x)s::int", {"x": 1})
            assert await cur.fetchall() == [(1,)]
    finally:
        request_id_var.reset(token)


@pytest.mark.parametrize("direct", [True, False], ids=["named-direct", "comment-pgbouncer"])
async def test_statements_together_answer_each_cursor_and_the_first_error_stops_them(
    seeded: Settings, direct: bool
) -> None:
    from nexes.db.connect.conninfo import for_role
    from nexes.db.connect.session_tag import NamedCursor, together
    from nexes.db.connect.tagged import TaggedCursor
    from nexes.observability import request_id_var

    settings = _settings(seeded, direct=direct, NEXES_PREPARE="on" if direct else "off")
    token = request_id_var.set(f"together-{os.getpid()}")
    try:
        async with await psycopg.AsyncConnection.connect(
            for_role(settings.replica_urls[0], settings, "nexes_api", application_name="nexes-test"),
            autocommit=True,
            prepare_threshold=0 if direct else None,
            cursor_factory=NamedCursor if direct else TaggedCursor,
        ) as conn:
            for _ in range(3):  # unprepared, being prepared, prepared (direct)
                one, two = conn.cursor(), conn.cursor()
                await together(conn, [(one, "SELECT %(a)s::int", {"a": 1}), (two, "SELECT %(b)s::text", {"b": "two"})])
                assert (await one.fetchall(), await two.fetchall()) == ([(1,)], [("two",)])
                first, second = conn.cursor(), conn.cursor()
                with pytest.raises(psycopg.errors.DivisionByZero):
                    await together(conn, [(first, "SELECT 1 / %(z)s::int", {"z": 0}), (second, "SELECT 2", None)])
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            assert conn.pgconn.pipeline_status == psycopg.pq.PipelineStatus.OFF
            after = await conn.cursor().execute("SELECT %(x)s::int", {"x": 3})
            assert await after.fetchall() == [(3,)]
            tags = await psycopg.AsyncCursor(conn).execute(
                "SELECT count(*), count(DISTINCT statement) FROM pg_prepared_statements "
                "WHERE starts_with(statement, 'SELECT set_config')"
            )
            # Two statements in a pipeline have the same tag text: it is prepared once.
            assert await tags.fetchall() == ([(2, 2)] if direct else [(0, 0)])
    finally:
        request_id_var.reset(token)


async def test_statements_behind_their_tags_in_a_caller_transaction_commit_or_roll_back_whole(
    seeded: Settings,
) -> None:
    from nexes.db.connect.conninfo import for_role
    from nexes.db.connect.session_tag import NamedCursor, together
    from nexes.observability import request_id_var

    settings = _settings(seeded, direct=True, NEXES_PREPARE="on")
    token = request_id_var.set(f"in-transaction-{os.getpid()}")
    try:
        async with await psycopg.AsyncConnection.connect(
            for_role(settings.primary_url, settings, "nexes_api", application_name="nexes-test"),
            autocommit=True,
            prepare_threshold=0,
            cursor_factory=NamedCursor,
        ) as conn:
            await psycopg.AsyncCursor(conn).execute("CREATE TEMPORARY TABLE written (n int PRIMARY KEY)")
            async with conn.transaction():
                await conn.cursor().execute("INSERT INTO written VALUES (%(n)s)", {"n": 1})
                one, two = conn.cursor(), conn.cursor()
                await together(
                    conn,
                    [
                        (one, "INSERT INTO written VALUES (%(n)s)", {"n": 2}),
                        (two, "SELECT count(*) FROM written", None),
                    ],
                )
                assert await two.fetchall() == [(2,)]  # the insert before it, in the same transaction
                name = await (await conn.cursor().execute("SELECT current_setting('application_name')")).fetchone()
            with pytest.raises(psycopg.errors.UniqueViolation):
                async with conn.transaction():
                    await conn.cursor().execute("INSERT INTO written VALUES (%(n)s)", {"n": 3})
                    await conn.cursor().execute("INSERT INTO written VALUES (%(n)s)", {"n": 1})
            kept = await (await psycopg.AsyncCursor(conn).execute("SELECT n FROM written ORDER BY n")).fetchall()
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        request_id_var.reset(token)
    assert kept == [(1,), (2,)]  # the first transaction whole, nothing of the second
    assert name == (f"in-transaction-{os.getpid()} nexes-test",)


async def test_customers_with_their_orders_read_ahead_are_prepared_with_generic_plans(seeded: Settings) -> None:
    """Read 5 of the benchmark (configuration B): the customers' page and their pages of orders
    in one pipeline, each prepared on its 5th run, the pages' statement (whose customers come
    from the page's own statement) planned generically; the same answer on every run."""
    settings = _settings(seeded, direct=True, NEXES_PREPARE="on")
    query = (
        "{ customers(first: 5) { edges { node { code serviceOrders(first: 3) "
        "{ edges { node { sodNumber status } } } } } } }"
    )
    answers = []
    async with client_for(settings, roles=("viewer",)) as client:
        for _ in range(8):
            body = await gql(client, query)
            assert "errors" not in body, body
            assert 'desc="2 statements"' in body["_response"].headers["server-timing"]
            answers.append(body["data"])
        plans = await _plans(client)
    assert all(answer == answers[0] for answer in answers)
    assert any(edge["node"]["serviceOrders"]["edges"] for edge in answers[0]["customers"]["edges"])
    pages = [(s, generic) for s, generic, _ in plans if "FROM (SELECT id FROM" in s and "LATERAL" in s]
    assert len(pages) == 1, plans
    assert pages[0][1] >= 3  # runs 5 to 8: prepared, each with the generic plan

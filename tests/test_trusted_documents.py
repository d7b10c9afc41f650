"""Trusted documents (nexes.execution.documents): Apollo's persisted queries on POST and GET,
the allow-list mode for viewers and operators, the bounded APQ store in Redis, `nexes
documents add|list`, and introspection in production.

Who may register and run: viewers and operators in allow-list mode run registered documents
only and store nothing; analysts and admins stay ad hoc. What it may cost: the APQ store
keeps its bounds (count, bytes, age); a registered document by hash runs no SQL of its own
once the process has its copy. What it may reveal: an unknown hash and a forbidden one get
the same answer; `documents list` shows hashes and names, never the text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis

from nexes.db import documents as db
from nexes.execution.documents import APQ_INDEX, APQ_PREFIX
from nexes.settings import Settings
from tests.conftest import client_for
from tests.support.auth import bearer_for
from tests.support.databases import environ_for

NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def unique_query(label: str = "Q") -> str:
    """A query no earlier run stored: its operation name is new."""
    return f"query {label}_{uuid.uuid4().hex[:12]} {{ serviceOrders(first: 2) {{ edges {{ node {{ sodNumber }} }} }} }}"


async def ask(
    client: httpx.AsyncClient,
    method: str,
    *,
    query: str | None = None,
    hash_: str | None = None,
    roles: tuple[str, ...] = ("viewer",),
    settings: Settings,
) -> tuple[int, dict[str, Any]]:
    """A request as Apollo's persisted-query link sends it: JSON POST, or GET with
    `extensions` as a JSON query parameter."""
    params: dict[str, Any] = {}
    if query is not None:
        params["query"] = query
    if hash_ is not None:
        params["extensions"] = {"persistedQuery": {"version": 1, "sha256Hash": hash_}}
    headers = bearer_for(settings, *roles, subject=f"test-{'-'.join(roles)}")
    if method == "POST":
        response = await client.post("/graphql", json=params, headers=headers)
    else:
        if "extensions" in params:
            params["extensions"] = orjson.dumps(params["extensions"]).decode()
        response = await client.get("/graphql", params=params, headers=headers)
    assert response.headers["content-type"].startswith("application/json")
    return response.status_code, response.json()


def code(body: dict[str, Any]) -> str | None:
    errors = body.get("errors")
    return errors[0]["extensions"]["code"] if errors else None


@pytest.fixture
def apq(seeded: Settings) -> Iterator[redis.Redis]:
    """The stack's Redis with no automatic persisted queries left from earlier tests."""
    client = redis.Redis.from_url(seeded.redis_url)

    def clear() -> None:
        keys = list(client.scan_iter(match=f"{APQ_PREFIX}*", count=1000))
        if keys:
            client.delete(*keys)

    clear()
    yield client
    clear()
    client.close()


def register(settings: Settings, text: str) -> str:
    """What `nexes documents add` does (tests/test_trusted_documents' CLI test runs the command)."""
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        db.add(conn, sha(text), text, [], "test")
    return sha(text)


# Persisted queries (the mode off: everyone may register)


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_apq_round_trip(seeded: Settings, apq: redis.Redis, method: str) -> None:
    query = unique_query()
    async with client_for(seeded, roles=()) as client:
        status, first = await ask(client, method, hash_=sha(query), settings=seeded)
        assert (status, code(first)) == (200, NOT_FOUND) and "data" not in first
        assert first["errors"][0]["message"] == "PersistedQueryNotFound"
        assert apq.get(APQ_PREFIX + sha(query)) is None  # a hash alone stores nothing

        status, second = await ask(client, method, query=query, hash_=sha(query), settings=seeded)
        assert status == 200 and len(second["data"]["serviceOrders"]["edges"]) == 2
        assert apq.get(APQ_PREFIX + sha(query)) == query.encode()

        status, third = await ask(client, method, hash_=sha(query), settings=seeded)
        assert status == 200 and third["data"] == second["data"]


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_hash_that_is_not_the_querys_is_refused_and_nothing_stored(
    seeded: Settings, apq: redis.Redis, method: str
) -> None:
    query, other = unique_query(), unique_query()
    async with client_for(seeded, roles=()) as client:
        status, body = await ask(client, method, query=query, hash_=sha(other), settings=seeded)
    assert code(body) == "BAD_USER_INPUT" and body["errors"][0]["message"] == "provided sha does not match query"
    assert "data" not in body and status in (200, 400)
    assert apq.get(APQ_PREFIX + sha(other)) is None and apq.get(APQ_PREFIX + sha(query)) is None


@pytest.mark.parametrize(
    ("extensions", "says"),
    [
        ({"persistedQuery": {"version": 2, "sha256Hash": "0" * 64}}, "version' must be 1"),
        ({"persistedQuery": {"version": 1, "sha256Hash": "xyz"}}, "64 hexadecimal digits"),
        ({"persistedQuery": "abc"}, "must be an object"),
        ([1, 2], "'extensions' must be a JSON object"),
    ],
)
async def test_malformed_persisted_query_extensions_name_the_problem(
    seeded: Settings, extensions: Any, says: str
) -> None:
    async with client_for(seeded, roles=("viewer",)) as client:
        response = await client.post("/graphql", json={"extensions": extensions})
    body = response.json()
    assert code(body) == "BAD_USER_INPUT" and says in body["errors"][0]["message"]


async def test_get_with_a_hash_alone_is_not_the_ide(seeded: Settings, apq: redis.Redis) -> None:
    """In development GET /graphql without `query` is GraphiQL's page; with `extensions` it
    is a persisted query."""
    settings = dataclasses.replace(seeded, env="development")
    async with client_for(settings, roles=()) as client:
        status, body = await ask(client, "GET", hash_=sha(unique_query()), settings=settings)
    assert (status, code(body)) == (200, NOT_FOUND)


async def test_redis_bounds_the_automatic_store(seeded: Settings, apq: redis.Redis) -> None:
    settings = dataclasses.replace(seeded, apq_max_documents=3, apq_max_document_bytes=200, apq_ttl=600.0)
    queries = [unique_query() for _ in range(5)]
    async with client_for(settings, roles=()) as client:
        for query in queries:
            status, body = await ask(client, "POST", query=query, hash_=sha(query), settings=settings)
            assert status == 200 and "errors" not in body
        long = unique_query("Long") + " " * 200  # runs, but is over the per-document bytes
        status, body = await ask(client, "POST", query=long, hash_=sha(long), settings=settings)
        assert status == 200 and "errors" not in body
    assert apq.zcard(APQ_INDEX) == 3  # the cap: the oldest two left, index and keys both
    assert [apq.exists(APQ_PREFIX + sha(q)) for q in queries] == [0, 0, 1, 1, 1]
    assert apq.get(APQ_PREFIX + sha(long)) is None
    for query in queries[2:]:
        assert 0 < apq.ttl(APQ_PREFIX + sha(query)) <= 600


async def test_without_redis_a_hash_is_not_found_and_the_full_query_runs(seeded: Settings) -> None:
    """Redis unreachable (a port nobody listens on): the client falls back to the full query."""
    settings = dataclasses.replace(seeded, redis_url="redis://127.0.0.1:1/0", redis_timeout=0.2)
    query = unique_query()
    async with client_for(settings, roles=()) as client:
        status, body = await ask(client, "POST", hash_=sha(query), settings=settings)
        assert (status, code(body)) == (200, NOT_FOUND)
        status, body = await ask(client, "POST", query=query, hash_=sha(query), settings=settings)
    assert status == 200 and len(body["data"]["serviceOrders"]["edges"]) == 2


# Allow-list mode


@pytest.fixture
def allow_list(seeded: Settings) -> Settings:
    """NEXES_TRUSTED_DOCUMENTS=on, the registered hashes read again on every request."""
    return dataclasses.replace(seeded, trusted_documents=True, trusted_documents_refresh=0.0)


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("role", ["viewer", "operator"])
async def test_in_allow_list_mode_a_viewer_runs_registered_documents_only(
    allow_list: Settings, apq: redis.Redis, method: str, role: str
) -> None:
    registered, unregistered = unique_query("Registered"), unique_query("Unregistered")
    register(allow_list, registered)
    async with client_for(allow_list, roles=()) as client:
        by_hash = await ask(client, method, hash_=sha(registered), roles=(role,), settings=allow_list)
        by_both = await ask(client, method, query=registered, hash_=sha(registered), roles=(role,), settings=allow_list)
        by_text = await ask(client, method, query=registered, roles=(role,), settings=allow_list)
        unknown_hash = await ask(client, method, hash_=sha(unregistered), roles=(role,), settings=allow_list)
        unknown_both = await ask(
            client, method, query=unregistered, hash_=sha(unregistered), roles=(role,), settings=allow_list
        )
        unknown_text = await ask(client, method, query=unregistered, roles=(role,), settings=allow_list)
    for status, body in (by_hash, by_both, by_text):
        assert status == 200 and len(body["data"]["serviceOrders"]["edges"]) == 2, body
    assert (unknown_hash[0], code(unknown_hash[1])) == (200, NOT_FOUND)
    assert unknown_hash[1]["errors"][0]["message"] == "PersistedQueryNotFound"
    for status, body in (unknown_both, unknown_text):
        assert (status, code(body)) == (403, "DOCUMENT_NOT_TRUSTED") and "data" not in body
        assert "nexes documents add" in body["errors"][0]["message"]
    # Nothing a restricted caller sent was stored.
    assert apq.get(APQ_PREFIX + sha(unregistered)) is None and apq.get(APQ_PREFIX + sha(registered)) is None


async def test_in_allow_list_mode_analysts_and_admins_stay_ad_hoc(allow_list: Settings, apq: redis.Redis) -> None:
    async with client_for(allow_list, roles=()) as client:
        for roles in (("analyst",), ("admin",), ("viewer", "analyst")):
            query = unique_query()
            status, body = await ask(client, "POST", query=query, roles=roles, settings=allow_list)
            assert status == 200 and "errors" not in body, (roles, body)
            status, body = await ask(client, "POST", query=query, hash_=sha(query), roles=roles, settings=allow_list)
            assert status == 200 and "errors" not in body, (roles, body)
            assert apq.get(APQ_PREFIX + sha(query)) == query.encode()  # registered automatically
            status, body = await ask(client, "GET", hash_=sha(query), roles=roles, settings=allow_list)
            assert status == 200 and "errors" not in body, (roles, body)
            # What an analyst stored is not trusted for a viewer: the same answer as an unknown hash.
            status, body = await ask(client, "POST", hash_=sha(query), roles=("viewer",), settings=allow_list)
            assert (status, code(body)) == (200, NOT_FOUND)


async def test_a_registered_document_by_hash_runs_no_sql_of_its_own(seeded: Settings) -> None:
    """Once the process holds its copy of the hashes and the text, the lookup costs no
    statement: `{ __typename }` runs none, so Server-Timing counts only the lookup's."""
    settings = dataclasses.replace(seeded, trusted_documents=True, trusted_documents_refresh=60.0)
    text = f"query Typename_{uuid.uuid4().hex[:12]} {{ __typename }}"
    register(settings, text)
    statements = []
    async with client_for(settings, roles=()) as client:
        for _ in range(3):
            response = await client.post(
                "/graphql",
                json={"extensions": {"persistedQuery": {"version": 1, "sha256Hash": sha(text)}}},
                headers=bearer_for(settings, "viewer"),
            )
            assert response.json()["data"] == {"__typename": "Query"}
            found = re.search(r'desc="(\d+) statements"', response.headers["server-timing"])
            assert found
            statements.append(int(found[1]))
    assert statements == [2, 0, 0]  # the hashes and the text, once


async def test_a_new_document_is_seen_within_the_refresh(seeded: Settings, test_db_name: str, tmp_path: Path) -> None:
    settings = dataclasses.replace(seeded, trusted_documents=True, trusted_documents_refresh=0.5)
    text = f"query Fresh_{uuid.uuid4().hex[:12]} {{ __typename }}"
    async with client_for(settings, roles=()) as client:
        status, body = await ask(client, "POST", hash_=sha(text), settings=settings)
        assert (status, code(body)) == (200, NOT_FOUND)
        (tmp_path / "fresh.graphql").write_text(text + "\n")
        run_cli(test_db_name, "documents", "add", str(tmp_path / "fresh.graphql"))
        import asyncio

        await asyncio.sleep(0.6)
        status, body = await ask(client, "POST", hash_=sha(text), settings=settings)
    assert status == 200 and body["data"] == {"__typename": "Query"}


# The command


def run_cli(db_name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nexes.cli", *args],
        env=environ_for(db_name),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_nexes_documents_add_and_list(seeded: Settings, test_db_name: str, tmp_path: Path) -> None:
    name = f"Listed_{uuid.uuid4().hex[:12]}"
    text = f"query {name}($first: Int) {{ serviceOrders(first: $first) {{ totalCount }} }}"
    (tmp_path / "listed.graphql").write_text(text + "\n\n")  # trailing newlines are not the document's
    (tmp_path / "broken.graphql").write_text("query { nope }")
    manifest = {
        "format": "apollo-persisted-query-manifest",
        "version": 1,
        "operations": [
            {"id": sha("query M1 { __typename }"), "name": "M1", "type": "query", "body": "query M1 { __typename }"}
        ],
    }
    (tmp_path / "manifest.json").write_bytes(orjson.dumps(manifest))

    added = run_cli(test_db_name, "documents", "add", str(tmp_path / "listed.graphql"), str(tmp_path / "manifest.json"))
    assert added.returncode == 0, added.stderr
    assert f"{sha(text)}  {name}  added" in added.stdout
    assert f"{sha('query M1 { __typename }')}  M1" in added.stdout
    again = run_cli(test_db_name, "documents", "add", str(tmp_path / "listed.graphql"))
    assert again.returncode == 0 and "registered already" in again.stdout
    broken = run_cli(test_db_name, "documents", "add", str(tmp_path / "broken.graphql"))
    assert broken.returncode != 0 and "does not validate" in broken.stderr and "nope" in broken.stderr

    listed = run_cli(test_db_name, "documents", "list")
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith(sha(text)))
    assert re.fullmatch(rf"{sha(text)}  {name}  \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ  cli:\S+", line)
    assert "serviceOrders" not in listed.stdout  # hashes and names, never the text
    with psycopg.connect(seeded.admin_url) as conn:
        row = conn.execute("SELECT document FROM trusted_document WHERE sha256 = %s", [sha(text)]).fetchone()
        audit = conn.execute(
            "SELECT actor FROM audit_event WHERE action = 'addTrustedDocument' AND entity_id = %s", [sha(text)]
        ).fetchone()
    assert row == (text,) and audit is not None and audit[0].startswith("cli:")


def test_the_api_may_read_trusted_documents_and_not_write_them(seeded: Settings) -> None:
    from nexes.db.connect.conninfo import for_role

    with psycopg.connect(for_role(seeded.primary_url, seeded, "nexes_api"), autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM trusted_document").fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO trusted_document (sha256, document, added_by) VALUES (%s, %s, 'api')",
                [sha("{ __typename }"), "{ __typename }"],
            )


# Introspection


@pytest.mark.parametrize("role", ["viewer", "operator"])
async def test_introspection_in_production_is_refused_to_viewers_through_fragments(seeded: Settings, role: str) -> None:
    assert not seeded.development
    query = '{ ...F } fragment F on Query { __type(name: "Query") { name } }'
    async with client_for(seeded, roles=()) as client:
        refused = await ask(client, "POST", query=query, roles=(role,), settings=seeded)
        allowed = await ask(client, "POST", query=query, roles=("analyst",), settings=seeded)
        typename = await ask(client, "POST", query="{ __typename }", roles=(role,), settings=seeded)
    assert (refused[0], code(refused[1])) == (403, "FORBIDDEN") and "data" not in refused[1]
    assert allowed[1]["data"] == {"__type": {"name": "Query"}}
    assert typename[1]["data"] == {"__typename": "Query"}
    development = dataclasses.replace(seeded, env="development")
    async with client_for(development, roles=()) as client:
        status, body = await ask(client, "POST", query=query, roles=(role,), settings=development)
    assert status == 200 and body["data"] == {"__type": {"name": "Query"}}

"""Issue 17's limits on one request: its deadline (statements cancelled on the server,
TIMEOUT with what finished), its response size, the process's admission control, and the
parse and validation caches' bounds.

Who: every caller (the deadline by its most generous role). Cost: a deadline timer per
request, a counter per response part, a counter per request in flight. Reveals: the
limits and their variables, never a statement or a server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import tracemalloc
from typing import Any

import orjson
import psycopg
import pytest
from graphql import GraphQLError, build_schema, parse

from nexes.auth.identity import Viewer
from nexes.errors import Code, NexesError
from nexes.execution.deadline import UNWIND_SECONDS, deadline_for, execute_within
from nexes.execution.executor import HookedExecutor
from nexes.execution.pipeline import CACHE_BYTES, CACHE_SIZE, Pipeline
from nexes.execution.schema import schema
from nexes.http.response_size import TooLarge, dumps_within
from nexes.resolvers.context import Context
from nexes.settings import Settings
from tests.conftest import client_for, error_codes, gql
from tests.support.databases import superuser_url
from tests.support.deadlines import SLACK, _dbname, active_backends, customers_locked, with_deadlines
from tests.support.waits import eventually


async def _customer_id(settings: Settings) -> str:
    async with client_for(settings) as client:
        body = await gql(client, "{ customers(first: 1) { edges { node { id } } } }")
    return str(body["data"]["customers"]["edges"][0]["node"]["id"])


PARTIAL = """query($customer: ID!) {
  stockItems(first: 2) { edges { node { sku } } }
  node(id: $customer) { id ... on Customer { name } }
}"""


async def test_past_its_deadline_an_analyst_gets_timeout_with_what_finished_and_no_statement_left_running(
    seeded: Settings,
) -> None:
    customer = await _customer_id(seeded)
    settings = with_deadlines(seeded, 1.0)
    async with client_for(settings, roles=("analyst",), subject="analyst-deadline") as client:
        with customers_locked(seeded) as replica:
            started = time.monotonic()
            body = await gql(client, PARTIAL, {"customer": customer})
            took = time.monotonic() - started
            # Checked while the lock still holds: a statement merely abandoned would still wait on it.
            # A DataLoader's batch (node) is cancelled by its own task, just after the answer.
            left = await eventually(lambda: not active_backends(replica), 2.0) or active_backends(replica)
        app = client.app  # type: ignore[attr-defined]
        stats = [pool.get_stats() for pool in app.state.pools.analyst]
        again = await gql(client, "{ stockItems(first: 1) { edges { node { sku } } } }")
    assert 1.0 <= took < 1.0 + SLACK, took
    assert left is True, f"statements left running on the replica: {left}"
    assert len(body["data"]["stockItems"]["edges"]) == 2  # what finished
    assert body["data"]["node"] is None
    [error] = body["errors"]
    assert error["path"] == ["node"] and error["extensions"]["code"] == "TIMEOUT"
    assert "NEXES_REQUEST_DEADLINE_ANALYST" in error["message"]
    assert "SELECT" not in error["message"] and "customer" not in error["message"]  # no statement, no table
    # Its connection went back to the pool, not in use: the next request gets one.
    assert all(s.get("pool_size", 0) == s.get("pool_available", 0) for s in stats), stats
    assert "errors" not in again and again["data"]["stockItems"]["edges"]


async def test_a_root_field_past_the_deadline_answers_timeout_and_frees_its_api_connection(seeded: Settings) -> None:
    settings = with_deadlines(seeded, 1.0)
    async with client_for(settings, roles=("admin",), subject="admin-deadline") as client:
        with customers_locked(seeded) as replica:
            started = time.monotonic()
            body = await gql(client, "{ customers(first: 3) { edges { node { name } } } }")
            took = time.monotonic() - started
            left = await eventually(lambda: not active_backends(replica), 2.0) or active_backends(replica)
    assert 1.0 <= took < 1.0 + SLACK, took
    assert left is True, f"statements left running on the replica: {left}"
    assert body["data"] is None  # customers is non-null: its TIMEOUT nulls the whole answer
    assert error_codes(body) == ["TIMEOUT"]
    assert body["errors"][0]["path"] == ["customers"]


async def test_a_write_cut_at_its_deadline_rolls_back_and_leaves_no_statement_on_the_primary(seeded: Settings) -> None:
    settings = with_deadlines(seeded, 1.0)
    dbname = _dbname(seeded)
    primary = superuser_url(seeded.admin_url, dbname)
    code = f"DEADLINE-{time.time_ns()}"
    create = 'mutation($code: String!) { createCustomer(input: {code: $code, name: "Late"}) { customer { id } } }'
    async with client_for(settings, roles=("admin",), subject="admin-write-deadline") as client:
        lock = psycopg.connect(primary)
        try:  # released whatever fails: a held lock would stall every later test
            lock.execute("LOCK TABLE customer IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            body = await gql(client, create, {"code": code})
            took = time.monotonic() - started
            left = await eventually(lambda: not active_backends(primary), 2.0) or active_backends(primary)
        finally:
            lock.rollback()
            lock.close()
    with psycopg.connect(primary, autocommit=True) as conn:
        written = conn.execute("SELECT count(*) FROM customer WHERE code = %s", [code]).fetchone()
    assert 1.0 <= took < 1.0 + SLACK, took
    assert error_codes(body) == ["TIMEOUT"] and body["errors"][0]["path"] == ["createCustomer"]
    assert left is True, f"statements left running on the primary: {left}"
    assert written == (0,)  # rolled back, not half-written


async def test_work_that_ignores_its_cancellation_is_stopped_whole_after_the_unwind_time(seeded: Settings) -> None:
    """A fake resolver (the real ones all stop when cancelled: psycopg, httpx, DataLoader)
    that swallows its first cancellation: the whole execution is cancelled UNWIND_SECONDS
    after the deadline, and the answer is TIMEOUT without data."""
    stubborn_schema = build_schema("type Query { stubborn: Int, quick: Int }")

    async def stubborn(_root: Any, _info: Any) -> int:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(30)
        return 1

    async def quick(_root: Any, _info: Any) -> int:
        return 2

    stubborn_schema.query_type.fields["stubborn"].resolve = stubborn  # type: ignore[union-attr]
    stubborn_schema.query_type.fields["quick"].resolve = quick  # type: ignore[union-attr]
    settings = dataclasses.replace(seeded, request_deadlines={"viewer": 0.5})
    viewer = Viewer("stubborn", frozenset({"viewer"}))
    context = Context(request_id="r", settings=settings, router=None, cursors=None, viewer=viewer)  # type: ignore[arg-type]
    started = time.monotonic()
    result = await execute_within(stubborn_schema, parse("{ quick stubborn }"), context, None, None, HookedExecutor)
    took = time.monotonic() - started
    assert 0.5 + UNWIND_SECONDS <= took < 0.5 + UNWIND_SECONDS + 1.0, took
    assert result.data is None and result.errors is not None
    [error] = result.errors
    assert isinstance(error.original_error, NexesError) and error.original_error.code is Code.TIMEOUT


async def test_a_token_with_several_roles_gets_the_longest_deadline(seeded: Settings) -> None:
    settings = dataclasses.replace(
        seeded, request_deadlines={"viewer": 10.0, "operator": 10.0, "analyst": 30.0, "admin": 60.0}
    )

    def deadline(*roles: str) -> tuple[float, str]:
        viewer = Viewer("s", frozenset(roles))
        context = Context(request_id="r", settings=settings, router=None, cursors=None, viewer=viewer)  # type: ignore[arg-type]
        found = deadline_for(context)
        return found.seconds, found.role

    assert deadline("viewer") == (10.0, "viewer")
    assert deadline("viewer", "analyst") == (30.0, "analyst")
    assert deadline("operator", "admin", "analyst") == (60.0, "admin")
    assert deadline() == (10.0, "viewer")  # no known role: the shortest


# Response size


def _shapes() -> list[Any]:
    row = {"id": "U2VydmljZU9yZGVyOjE=", "n": 1.5, "ok": True, "none": None, "text": 'a "quoted" é'}
    nested = {"edges": [{"node": {**row, "lines": [row] * 3}} for _ in range(70)], "pageInfo": {"end": None}}
    return [
        {},
        [],
        {"data": None, "errors": [{"message": "m", "path": ["a", 0]}]},
        {"data": {"a": [], "b": {}, "c": [None, row, None]}},
        *({"data": {"list": [row] * n}} for n in (1, 63, 64, 65, 128, 129)),
        {"data": {"customers": nested, "more": [nested, None, nested]}, "extensions": {"cost": {"requested": 3}}},
        {"data": {"customers": nested}, "extensions": {"cost": {"requested": 3, "actualNodes": 4}}},
    ]


def test_the_answer_written_in_parts_is_what_orjson_writes_at_once() -> None:
    for payload in _shapes():
        assert dumps_within(payload, 10_000_000) == orjson.dumps(payload), payload


def test_past_the_cap_the_writer_stops_without_writing_the_rest() -> None:
    row = {"sodNumber": "SOD-000001", "description": "x" * 200}
    payload = {"data": {"orders": {"edges": [{"node": row} for _ in range(100_000)]}}}  # ~24 MB as JSON
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            dumps_within(payload, 100_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak  # the cap and one chunk of 64 rows, not the 24 MB


def test_an_answer_of_at_most_one_chunk_of_objects_is_one_orjson_call_and_still_capped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nexes.http import response_size

    calls = []

    class Counting:  # orjson itself, each dumps call counted
        JSONDecodeError = orjson.JSONDecodeError

        @staticmethod
        def dumps(*args: Any, **kwargs: Any) -> bytes:
            calls.append(1)
            return orjson.dumps(*args, **kwargs)

    monkeypatch.setattr(response_size, "orjson", Counting)
    statuses = [{"status": s, "amounts": [{"currency": "EUR", "amount": "1.00"}]} for s in ("OPEN", "DONE")]
    small = {"data": {"dashboard": {"statuses": statuses}}, "extensions": {"cost": {"actualNodes": 5}}}
    assert dumps_within(small, 10_000) == orjson.dumps(small) and len(calls) == 1
    with pytest.raises(TooLarge):
        dumps_within(small, 50)
    calls.clear()
    larger = {**small, "extensions": {"cost": {"actualNodes": response_size.CHUNK + 1}}}
    assert dumps_within(larger, 10_000) == orjson.dumps(larger) and len(calls) > 1  # walked, in parts


async def test_an_answer_past_the_cap_is_response_too_large_and_one_below_it_is_whole(seeded: Settings) -> None:
    settings = dataclasses.replace(seeded, max_response_bytes=4_000)
    async with client_for(settings, roles=("viewer",), subject="viewer-size") as client:
        big = await gql(client, "{ serviceOrders(first: 100) { edges { node { sodNumber status createdAt } } } }")
        small = await gql(client, "{ serviceOrders(first: 2) { edges { node { sodNumber } } } }")
        got = await client.get("/graphql", params={"query": "{ serviceOrders(first: 100) { edges { node { id } } } }"})
    assert error_codes(big) == ["RESPONSE_TOO_LARGE"]
    assert "data" not in big and "NEXES_MAX_RESPONSE_BYTES" in big["errors"][0]["message"]
    assert len(big["_response"].content) < 4_000
    assert "errors" not in small and len(small["data"]["serviceOrders"]["edges"]) == 2
    assert [e["extensions"]["code"] for e in got.json()["errors"]] == ["RESPONSE_TOO_LARGE"]  # GET alike


# Admission control


async def test_past_the_concurrent_requests_a_new_one_gets_503_at_once_and_liveness_still_answers(
    seeded: Settings,
) -> None:
    settings = dataclasses.replace(with_deadlines(seeded, 3.0), max_concurrent_requests=2)
    # Two pages apart: two identical reads at once would share one statement (README,
    # "Identical reads at the same moment"), and this wants two statements held.
    slow = "{ customers(first: %d) { edges { node { name } } } }"
    async with client_for(settings, roles=("admin",), subject="admin-admission") as client:
        with customers_locked(seeded) as replica:
            held = [asyncio.ensure_future(gql(client, slow % n)) for n in (3, 4)]
            assert await eventually(lambda: len(active_backends(replica)) == 2, 5.0), "the slow requests never ran"
            started = time.monotonic()
            refused = await client.post("/graphql", json={"query": "{ stockItems(first: 1) { totalCount } }"})
            took = time.monotonic() - started
            live = await client.get("/api/health/live")
            answers = await asyncio.gather(*held)
        after = await gql(client, "{ stockItems(first: 1) { edges { node { sku } } } }")
    assert refused.status_code == 503 and took < 0.5, (refused.status_code, took)
    assert refused.headers["retry-after"] == "1"
    [error] = refused.json()["errors"]
    assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE" and "NEXES_MAX_CONCURRENT_REQUESTS" in error["message"]
    assert error["extensions"]["requestId"] == refused.headers["x-request-id"]
    assert live.status_code == 200  # the liveness probe is never refused
    assert [error_codes(a) for a in answers] == [["TIMEOUT"], ["TIMEOUT"]]  # the held ones ran to their deadline
    assert "errors" not in after  # slots free again


# The parse and validation caches


def test_a_thousand_distinct_100_kb_documents_keep_the_caches_within_their_bytes() -> None:
    bound = CACHE_BYTES  # 4 MB: a 100 KB text is stored (under a sixteenth)
    pipeline = Pipeline(schema, cache_bytes=bound)
    parsed, validated = pipeline._parsed, pipeline._validation_errors
    # A syntax error at the first character: cached as a document is (graphql-core's lexer
    # would take 30 s to read a thousand valid 100 KB documents).
    for i in range(1_000):
        error = parsed(f"}}{i:04d}" + "x" * 100_000)
        assert isinstance(error, GraphQLError)
        assert parsed.bytes <= bound, parsed.bytes
    # Valid ones (a comment's padding), through both caches.
    for i in range(60):
        text = f"#{i:04d} " + "x" * 100_000 + "\n{ __typename }"
        assert not isinstance(parsed(text), GraphQLError)
        assert validated(text) == ()
        assert parsed.bytes <= bound and validated.bytes <= bound, (parsed.bytes, validated.bytes)
    assert 30 <= len(parsed) <= bound // 100_000 and 30 <= len(validated) <= bound // 100_000


def test_the_caches_hold_at_most_their_entries_and_the_newest_documents() -> None:
    pipeline = Pipeline(schema)
    cache = pipeline._parsed
    texts = [f"query Q{i} {{ __typename }}" for i in range(CACHE_SIZE + 500)]
    for text in texts:
        cache(text)
    assert len(cache) == CACHE_SIZE
    newest = cache(texts[-1])
    assert cache(texts[-1]) is newest  # still cached: the same parsed document


def test_a_document_larger_than_a_sixteenth_of_the_budget_is_parsed_once_a_request_but_not_kept() -> None:
    pipeline = Pipeline(schema, cache_bytes=1_000_000)
    small = "{ __typename }"
    pipeline._parsed(small)
    big = "#" + "x" * 200_000 + "\n{ __typename }"
    document = pipeline._parsed(big)
    assert pipeline._parsed(big) is document  # the validation right after does not parse it again
    assert pipeline._validation_errors(big) == ()
    assert len(pipeline._parsed) == 1 and pipeline._parsed.bytes < 1_000  # the small one only

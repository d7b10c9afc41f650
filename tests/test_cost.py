"""Cost before execution and the rate limit (nexes.execution.cost, nexes.auth.ratelimit), on
the real app and the real Redis.

Each test charges a subject of its own, so budgets never leak between tests."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from graphql import OperationDefinitionNode, parse
from prometheus_client import REGISTRY

from nexes.auth.identity import Viewer
from nexes.auth.ratelimit import RateLimited
from nexes.execution.cost import (
    COUNT_NODES,
    DEFAULT_PAGE,
    LIST_GUESS,
    CostCache,
    count_nodes,
    operation_cost,
    points_of,
)
from nexes.execution.schema import schema
from nexes.settings import Settings
from tests.conftest import client_for, gql

PAGE = "{ serviceOrders(first: 50) { edges { node { id sodNumber status createdAt totalAmount customer { name } } } } }"
# The fan-out: every nested connection counted, as GitHub does.
FAN_OUT = """{ customers(first: 100) { edges { node { name serviceOrders(first: 100) { totalCount
  edges { node { sodNumber lines { quantity }
    customer { serviceOrders(first: 100) { edges { node { sodNumber } } } } } } } } } } }"""
CLOSED_REDIS = "redis://127.0.0.1:9/0"  # nothing listens on the discard port


def cost_of(query: str, variables: dict[str, object] | None = None) -> int:
    document = parse(query)
    operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    return operation_cost(schema._schema, document, operation, variables)


def subject() -> str:
    return f"cost-{uuid.uuid4().hex[:12]}"


def statements(response: httpx.Response) -> int:
    match = re.search(r'desc="(\d+) statements"', response.headers["server-timing"])
    assert match
    return int(match[1])


def test_connections_multiply_by_their_page_and_counts_add_their_own() -> None:
    assert cost_of(PAGE) == 50
    assert cost_of("{ serviceOrders { edges { node { id } } } }") == DEFAULT_PAGE
    assert cost_of("{ serviceOrders(first: 10) { totalCount edges { node { lines { lineNo } } } } }") == (
        10 + COUNT_NODES + 10 * LIST_GUESS
    )
    assert cost_of(FAN_OUT) == 100 + 100 * 100 + 100 * COUNT_NODES + 100 * 100 * LIST_GUESS + 100 * 100 * 100


def test_the_cost_cache_answers_as_the_walk_for_each_page_size_whatever_the_cursor() -> None:
    query = "query($n: Int, $a: String, $ids: [ID!]!) { serviceOrders(first: $n, after: $a) { edges { node { id } } } "
    query += "nodes(ids: $ids) { id } }"
    document = parse(query)
    operation = next(d for d in document.definitions if isinstance(d, OperationDefinitionNode))
    cache = CostCache(size=2)
    for variables in ({"n": 7, "a": "x", "ids": ["1"]}, {"n": 7, "a": "y", "ids": ["2"]}, {"n": 9, "ids": ["1", "2"]}):
        expected = operation_cost(schema._schema, document, operation, variables)
        assert cache.cost(schema._schema, document, operation, variables) == expected
        assert cache.cost(schema._schema, document, operation, variables) == expected
    assert cache.cost(schema._schema, document, operation, {"n": 9, "ids": ["1", "2"]}) == 9 + 2
    other = parse(query).definitions[0]  # the same text parsed again: another node, not a hit
    assert isinstance(other, OperationDefinitionNode)
    assert cache.cost(schema._schema, document, other, {"n": 3, "ids": []}) == 3


def test_count_nodes_counts_every_object_below_data() -> None:
    data = {"a": {"edges": [{"node": {"x": 1, "c": {"n": "y"}}}, {"node": None}], "p": [1, [2, {"z": 3}]]}}
    assert count_nodes(data) == 1 + 1 + 2 + 1 + 1 + 1
    assert count_nodes(None) == 0 and count_nodes([]) == 0


def test_variables_aliases_and_fragments_are_counted_in_full() -> None:
    assert cost_of("query($n: Int) { serviceOrders(first: $n) { edges { node { id } } } }", {"n": 7}) == 7
    assert cost_of("query($n: Int = 30) { serviceOrders(first: $n) { edges { node { id } } } }") == 30
    aliased = "{ a: serviceOrders(first: 40) { edges { node { id } } } b: serviceOrders(first: 40) { totalCount } }"
    assert cost_of(aliased) == 80 + COUNT_NODES
    spread = """query { ...A ...A2 } fragment A on Query { customers(first: 10) { edges { node { ...B } } } }
      fragment A2 on Query { ...A } fragment B on Customer { serviceOrders(first: 10) { edges { node { id } } } }"""
    assert cost_of(spread) == 2 * (10 + 10 * 10)  # A, and A again through A2
    assert cost_of('{ nodes(ids: ["a", "b", "c"]) { id } }') == 3


async def test_the_fan_out_query_is_refused_before_any_sql_with_its_cost(seeded: Settings) -> None:
    async with client_for(seeded, roles=("viewer",), subject=subject()) as client:
        started = time.perf_counter()
        body = await gql(client, FAN_OUT)
        elapsed = time.perf_counter() - started
    response = body["_response"]
    assert response.status_code == 200 and "data" not in body  # a GraphQL error: 200 under application/json
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    assert error["extensions"]["cost"] == {"requested": cost_of(FAN_OUT), "limit": 50_000}
    assert statements(response) == 0
    assert elapsed < 5  # a collapse, not a timing goal (bench.run auth measures it)


async def test_every_answer_carries_its_cost_and_the_rate_limit_headers(seeded: Settings) -> None:
    async with client_for(seeded, roles=("viewer",), subject=subject()) as client:
        first = await gql(client, PAGE)
        second = await gql(client, PAGE)
    cost = second["extensions"]["cost"]
    assert cost["requested"] == 50 and cost["limit"] == 50_000
    assert cost["actualNodes"] >= 50  # the 50 orders, their edges and customers
    assert first["extensions"]["cost"]["remaining"] == 5_000 - 1
    assert cost["remaining"] == 5_000 - 2
    headers = second["_response"].headers
    assert headers["x-ratelimit-limit"] == "5000"
    assert headers["x-ratelimit-remaining"] == "4998" and headers["x-ratelimit-used"] == "2"
    assert headers["x-ratelimit-resource"] == "graphql"
    assert int(headers["x-ratelimit-reset"]) > time.time()


async def test_a_dry_run_prices_without_executing_or_charging(seeded: Settings) -> None:
    async with client_for(seeded, roles=("viewer",), subject=subject()) as client:
        dry = await client.post("/graphql", json={"query": PAGE, "extensions": {"dryRun": True}})
        dry_get = await client.get("/graphql", params={"query": PAGE, "extensions": '{"dryRun": true}'})
        again = await gql(client, PAGE)
        bad = await client.post("/graphql", json={"query": PAGE, "extensions": {"dryRun": "yes"}})
    for answer in (dry, dry_get):
        body = answer.json()
        assert answer.status_code == 200 and "data" not in body
        assert body["extensions"]["cost"]["requested"] == 50
        assert body["extensions"]["cost"]["remaining"] == 5_000
        assert statements(answer) == 0
    assert again["extensions"]["cost"]["remaining"] == 5_000 - 1  # the real run is the first charge
    assert bad.status_code == 400 and bad.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_over_budget_is_429_with_retry_after_shared_by_two_processes(seeded: Settings) -> None:
    tight = replace(seeded, rate_limits={**seeded.rate_limits, "viewer": 3})
    who = subject()
    async with (
        client_for(tight, roles=("viewer",), subject=who) as one,
        client_for(tight, roles=("viewer",), subject=who) as two,
    ):
        answers = [await gql(c, PAGE) for c in (one, two, one)]  # 3 points, from two apps
        refused = await gql(two, PAGE)
    assert [a["_response"].status_code for a in answers] == [200, 200, 200]
    assert refused["_response"].status_code == 429 and "data" not in refused
    assert refused["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    retry = int(refused["_response"].headers["retry-after"])
    assert 0 < retry <= 3600
    assert refused["_response"].headers["x-ratelimit-remaining"] == "0"


async def test_with_redis_down_each_process_limits_on_its_own_and_says_so(seeded: Settings) -> None:
    down = replace(seeded, redis_url=CLOSED_REDIS, redis_timeout=0.5, rate_limits={**seeded.rate_limits, "viewer": 2})
    before = REGISTRY.get_sample_value("nexes_rate_limit_fallback_total") or 0.0
    async with client_for(down, roles=("viewer",), subject=subject()) as client:
        answers = [await gql(client, PAGE) for _ in range(3)]
    assert [a["_response"].status_code for a in answers] == [200, 200, 429]
    assert (REGISTRY.get_sample_value("nexes_rate_limit_fallback_total") or 0.0) >= before + 3


async def test_several_roles_get_the_most_generous_limits(seeded: Settings) -> None:
    heavy = (
        "{ customers(first: 100) { edges { node { serviceOrders(first: 100) "
        "{ edges { node { lines { lineNo } } } } } } } }"
    )
    assert 50_000 < cost_of(heavy) <= 500_000
    async with client_for(seeded, roles=("viewer",), subject=subject()) as viewer:
        refused = await gql(viewer, heavy, **{})
    async with client_for(seeded, roles=("viewer", "analyst"), subject=subject()) as both:
        allowed = await client_dry_run(both, heavy)
    assert refused["errors"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX"
    assert allowed["extensions"]["cost"]["limit"] == 500_000
    assert allowed["extensions"]["cost"]["remaining"] == 10_000  # the analyst's hour


async def client_dry_run(client: httpx.AsyncClient, query: str) -> dict[str, object]:
    response = await client.post("/graphql", json={"query": query, "extensions": {"dryRun": True}})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


@pytest.mark.parametrize(("requested", "points"), [(0, 1), (1, 1), (100, 1), (101, 2), (50_000, 500)])
def test_points_are_a_hundredth_of_the_nodes_at_least_one(requested: int, points: int) -> None:
    assert points_of(requested) == points


def test_a_token_with_no_known_role_has_no_budget() -> None:
    from nexes.auth.ratelimit import most_generous

    assert most_generous(Viewer(subject="x", roles=frozenset()), {"viewer": 5}) == 0


async def test_the_charge_in_one_pipeline_agrees_with_the_library_even_after_redis_forgets_its_scripts(
    seeded: Settings,
) -> None:
    import redis.asyncio

    from nexes.auth.ratelimit import RateLimiter

    limiter = RateLimiter(seeded.redis_url, timeout=2.0)
    who = subject()
    try:
        first = await limiter.charge(who, 100, 3)
        second = await limiter.charge(who, 100, 4)
        item = limiter._item(100)
        library = await limiter._shared.get_window_stats(item, "graphql", who)  # the library's own reading
        assert (first.remaining, second.remaining, library.remaining) == (97, 93, 93)
        # limits' own arithmetic puts the reset within the hour (where in it depends on the
        # millisecond of the reading, for its reading and ours alike)
        now = time.time()
        assert now - 2 <= second.reset <= now + 3601 and now - 2 <= library.reset_time <= now + 3601
        client = redis.asyncio.from_url(seeded.redis_url)
        await client.script_flush()  # as after a restart of Redis: the next charge loads them again
        await client.aclose()
        third = await limiter.charge(who, 100, 5)
        peek = await limiter.charge(who, 100, 50, dry_run=True)
        assert (third.remaining, peek.remaining) == (88, 88)
        with pytest.raises(RateLimited):
            await limiter.charge(who, 100, 89)
    finally:
        await limiter.close()


async def test_charges_of_one_turn_share_one_round_trip_and_each_stays_atomic(seeded: Settings) -> None:
    import asyncio

    from nexes.auth.ratelimit import RateLimiter

    limiter = RateLimiter(seeded.redis_url, timeout=2.0)
    others = [subject() for _ in range(40)]
    tight = subject()

    async def charge(who: str, hourly: int) -> int | None:
        try:
            return (await limiter.charge(who, hourly, 1)).remaining
        except RateLimited:
            return None

    try:
        await limiter.charge(subject(), 10, 1)  # connect and load the scripts first
        before = REGISTRY.get_sample_value("nexes_rate_limit_round_trips_total") or 0.0
        answers = await asyncio.gather(*(charge(who, 100) for who in others), *(charge(tight, 5) for _ in range(10)))
        trips = (REGISTRY.get_sample_value("nexes_rate_limit_round_trips_total") or 0.0) - before
    finally:
        await limiter.close()
    assert trips == 1  # fifty charges made in one turn of the loop: one pipeline
    assert answers[:40] == [99] * 40  # each subject its own window
    # the tight subject's ten charges of one point against five: exactly five pass, in order
    assert answers[40:] == [4, 3, 2, 1, 0, None, None, None, None, None]


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
async def limiter(seeded: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """A rate limiter on the stack's Redis whose last figure stays fresh for a minute: a
    stalled test machine does not turn its fast answers into Redis' own."""
    from nexes.auth import ratelimit

    monkeypatch.setattr(ratelimit, "FRESH_SECONDS", 60.0)
    limiter = ratelimit.RateLimiter(seeded.redis_url, timeout=2.0)
    try:
        yield limiter
    finally:
        await limiter.close()


async def test_far_from_the_limit_charges_answer_at_once_and_reach_redis_summed_in_one_round_trip(limiter: Any) -> None:
    import asyncio

    from nexes.auth.ratelimit import SETTLE_SECONDS

    who = subject()
    first = await limiter.charge(who, 100_000, 1)  # this process has no figure yet: Redis'
    trips = _sample("nexes_rate_limit_round_trips_total")
    settled = _sample("nexes_rate_limit_settled_points_total")
    answers = [(await limiter.charge(who, 100_000, 2)).remaining for _ in range(100)]
    assert _sample("nexes_rate_limit_round_trips_total") == trips  # none of them waited for Redis
    await asyncio.sleep(SETTLE_SECONDS * 6)
    trips_after = _sample("nexes_rate_limit_round_trips_total")
    settled_after = _sample("nexes_rate_limit_settled_points_total")
    item = limiter._item(100_000)
    library = await limiter._shared.get_window_stats(item, "graphql", who)  # the library's own reading
    after = await limiter.charge(who, 100_000, 1)
    assert first.remaining == 99_999
    assert answers == [99_999 - 2 * n for n in range(1, 101)]  # exact within one process
    assert trips_after == trips + 1  # the 100 charges, summed
    assert settled_after == settled + 200
    assert library.remaining == 99_999 - 200
    assert after.remaining == 99_999 - 201


async def test_near_the_limit_each_charge_waits_for_redis_and_is_refused_exactly(limiter: Any) -> None:
    from nexes.auth.ratelimit import margin

    who = subject()
    hourly = 10_000
    assert margin(hourly) == 1_000
    await limiter.charge(who, hourly, hourly - 1_010)  # 1,010 left
    trips = _sample("nexes_rate_limit_round_trips_total")
    at_once = await limiter.charge(who, hourly, 5)  # 1,005 left: still past the margin
    assert _sample("nexes_rate_limit_round_trips_total") == trips
    exact = await limiter.charge(who, hourly, 10)  # would leave 995: Redis decides
    assert _sample("nexes_rate_limit_round_trips_total") > trips
    last = await limiter.charge(who, hourly, 995)
    with pytest.raises(RateLimited) as refused:
        await limiter.charge(who, hourly, 1)
    assert (at_once.remaining, exact.remaining, last.remaining) == (1_005, 995, 0)
    assert refused.value.budget.remaining == 0


async def test_another_process_sees_the_settled_charges_and_a_stale_figure_is_asked_again(seeded: Settings) -> None:
    from nexes.auth.ratelimit import RateLimiter

    one = RateLimiter(seeded.redis_url, timeout=2.0)
    two = RateLimiter(seeded.redis_url, timeout=2.0)
    who = subject()
    try:
        await one.charge(who, 100_000, 1)
        await two.charge(who, 100_000, 1)  # two's figure: 99,998
        for _ in range(50):
            await one.charge(who, 100_000, 1)
        await one.settle()
        two._known[(who, 100_000)].at -= 60  # as if two had not heard from Redis for a minute
        seen = await two.charge(who, 100_000, 1)
    finally:
        await one.close()
        await two.close()
    assert seen.remaining == 100_000 - 53


def _shared_at(url: str, socket_timeout: float) -> Any:
    """The limits library's shared limiter on another Redis URL (a fault's stand-in: see each test)."""
    from limits.aio.strategies import SlidingWindowCounterRateLimiter
    from limits.storage import storage_from_string

    storage = url.replace("redis://", "async+redis://", 1)
    return SlidingWindowCounterRateLimiter(
        storage_from_string(storage, implementation="redispy", socket_timeout=socket_timeout)
    )


async def test_settled_charges_stay_counted_in_the_process_when_redis_goes_away(seeded: Settings) -> None:
    from nexes.auth.ratelimit import RateLimiter

    limiter = RateLimiter(seeded.redis_url, timeout=2.0)
    who = subject()
    try:
        await limiter.charge(who, 100_000, 1)
        for _ in range(10):
            await limiter.charge(who, 100_000, 3)
        # The fault: Redis gone between the charges and their settle. The stack's Redis serves
        # every test, so the limiter's storage is pointed at a port nothing listens on instead.
        real = limiter._shared
        limiter._shared = _shared_at(CLOSED_REDIS, socket_timeout=0.5)
        before = _sample("nexes_rate_limit_fallback_total")
        await limiter.settle()
        kept = await limiter._local.get_window_stats(limiter._item(100_000), "graphql", who)
        assert _sample("nexes_rate_limit_fallback_total") == before + 1
        assert kept.remaining == 100_000 - 30  # the 30 points, in the process's own limiter
        assert (who, 100_000) not in limiter._known  # the next charge asks Redis (and falls back)
        next_one = await limiter.charge(who, 100_000, 1)
        assert next_one.remaining == 100_000 - 31
        assert _sample("nexes_rate_limit_fallback_total") == before + 2
        limiter._shared = real
    finally:
        await limiter.close()


async def test_a_settle_cancelled_on_its_way_leaves_its_points_for_the_next_one(seeded: Settings) -> None:
    import asyncio

    from nexes.auth.ratelimit import RateLimiter

    # The fault: a Redis that takes the pipeline and never answers, so that the settle is
    # cancelled while it waits (the app closing). The stack's Redis cannot be held so on
    # demand; a listener of the test's own stands in for it.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limiter = RateLimiter(seeded.redis_url, timeout=2.0)
    who = subject()
    try:
        await limiter.charge(who, 100_000, 1)
        for _ in range(5):
            await limiter.charge(who, 100_000, 2)
        real = limiter._shared
        limiter._shared = _shared_at(f"redis://127.0.0.1:{port}/0", socket_timeout=30)
        on_its_way = asyncio.create_task(limiter.settle())
        await asyncio.sleep(0.3)  # sent, and waiting for the answer
        assert not on_its_way.done()
        on_its_way.cancel()
        with pytest.raises(asyncio.CancelledError):
            await on_its_way
        known = limiter._known[(who, 100_000)]
        assert (known.pending, known.sending) == (10, 0)
        limiter._shared = real
        await limiter.settle()
        library = await limiter._shared.get_window_stats(limiter._item(100_000), "graphql", who)
    finally:
        await limiter.close()
        server.close()
    assert library.remaining == 100_000 - 11

"""Single flight (nexes.db.connect.router.Router._shared, NEXES_SHARE_READS): reads of one
key at the same moment run one statement and take its answer; reads that must see a write,
fresh reads, an analyst's reads and reads with sharing off run their own; nothing is kept
past its read; a failed or cancelled first read leaves the others to read on their own.
Against the real replica and primary, through the app's own router."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from psycopg import AsyncConnection

from nexes.db.connect.router import Consistency, Router, consistency_var
from nexes.settings import Settings
from tests.conftest import client_for, error_codes, gql
from tests.support.auth import bearer_for

N = 8
SLOW = "SELECT pg_sleep(%s), %s::int"


class Reads:
    """A read that sleeps on the server (so that the others come while it runs) and
    answers `value`; counts how often it really ran."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = seconds
        self.runs = 0

    def work(self, value: int) -> Any:
        async def run(conn: AsyncConnection[Any]) -> int:
            self.runs += 1
            cur = await conn.execute(SLOW, (self.seconds, value))
            row = await cur.fetchone()
            assert row is not None
            return int(row[1])

        return run


def shared_total() -> float:
    return REGISTRY.get_sample_value("nexes_db_reads_shared_total") or 0.0


@pytest.fixture
async def app(seeded: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(seeded) as client:
        yield client


def router_of(client: httpx.AsyncClient) -> Router:
    return client.app.state.router  # type: ignore[attr-defined,no-any-return]


async def test_reads_of_one_key_at_once_run_one_statement_and_all_take_its_answer(
    app: httpx.AsyncClient,
) -> None:
    router, reads = router_of(app), Reads()
    before = shared_total()
    answers = await asyncio.gather(*(router.read(reads.work(7), shared=("slow", 7)) for _ in range(N)))
    assert answers == [7] * N
    assert reads.runs == 1
    assert shared_total() - before == N - 1


async def test_reads_of_other_keys_do_not_share(app: httpx.AsyncClient) -> None:
    router, reads = router_of(app), Reads()
    answers = await asyncio.gather(*(router.read(reads.work(i % 2), shared=("slow", i % 2)) for i in range(N)))
    assert answers == [i % 2 for i in range(N)]
    assert reads.runs == 2


async def test_nothing_is_kept_past_its_read(app: httpx.AsyncClient) -> None:
    router, reads = router_of(app), Reads(seconds=0)
    for _ in range(3):
        assert await router.read(reads.work(1), shared=("slow", 1)) == 1
    assert reads.runs == 3


@pytest.mark.parametrize(
    "how", ["fresh", "min_lsn", "own_write", "sharing_off", "analyst", "no_key"], ids=lambda how: how
)
async def test_reads_that_may_not_share_run_their_own_statement(app: httpx.AsyncClient, how: str) -> None:
    """A fresh read, one that must see the client's write (X-Nexes-Min-LSN: 0/0, which any
    replica has replayed) or this request's own, NEXES_SHARE_READS=off, an analyst's
    (ad hoc, on the analyst pools) and a read that names no key."""
    state = app.app.state  # type: ignore[attr-defined]
    router: Router = state.router
    reads = Reads()
    key: Any = ("slow", 3)
    fresh = False
    consistency = None
    if how == "fresh":
        fresh = True
    elif how == "min_lsn":
        consistency = Consistency(min_lsn=0)
    elif how == "own_write":
        consistency = Consistency(lsn=1)
    elif how == "sharing_off":
        router = Router(state.pools, state.monitor, share_reads=False)
    elif how == "analyst":
        router = state.analyst_router
    else:
        key = None

    async def one() -> int:
        consistency_var.set(consistency)  # each task its own context, as each request
        return await router.read(reads.work(3), fresh=fresh, shared=key)

    before = shared_total()
    assert await asyncio.gather(*(one() for _ in range(N))) == [3] * N
    assert reads.runs == N
    assert shared_total() == before


async def test_when_the_first_read_fails_the_others_read_on_their_own(app: httpx.AsyncClient) -> None:
    router, reads = router_of(app), Reads()
    calls = 0

    async def work(conn: AsyncConnection[Any]) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first read: a real error on the server, after the others joined it
            await conn.execute("SELECT pg_sleep(0.3), 1 / 0")
        return await reads.work(5)(conn)  # type: ignore[no-any-return]

    results = await asyncio.gather(*(router.read(work, shared=("fails", 5)) for _ in range(N)), return_exceptions=True)
    assert isinstance(results[0], Exception) and "division by zero" in str(results[0])
    assert results[1:] == [5] * (N - 1)
    assert calls == N  # the first, then each that had joined it, on its own


async def test_a_cancelled_first_read_leaves_the_others_their_answer(app: httpx.AsyncClient) -> None:
    router, reads = router_of(app), Reads()
    first = asyncio.create_task(router.read(reads.work(9), shared=("cancel", 9)))
    await asyncio.sleep(0.05)  # it runs on the server now
    others = [asyncio.create_task(router.read(reads.work(9), shared=("cancel", 9))) for _ in range(N - 1)]
    await asyncio.sleep(0.05)
    first.cancel()
    assert await asyncio.gather(*others) == [9] * (N - 1)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert reads.runs == N  # the cancelled one, then each of the others on its own


async def test_a_cancelled_follower_leaves_the_read_it_joined_running(app: httpx.AsyncClient) -> None:
    router, reads = router_of(app), Reads()
    tasks = [asyncio.create_task(router.read(reads.work(4), shared=("follower", 4))) for _ in range(N)]
    await asyncio.sleep(0.05)
    tasks[-1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert done[:-1] == [4] * (N - 1)
    assert isinstance(done[-1], asyncio.CancelledError)
    assert reads.runs == 1


ORDERS = (
    "edges { cursor node { id sodNumber status createdAt totalAmount customer { name } } } "
    "pageInfo { hasNextPage endCursor }"
)
# The shared reads (README, "Identical reads at the same moment"), as the SPA sends them.
HERDS = {
    "dashboard": '{ dashboard(from: "2024-01-01", to: "2026-12-31") { totalCount statuses { status count } } }',
    "first_page": f"{{ serviceOrders(first: 50) {{ {ORDERS} }} }}",
    "status_page": f"{{ serviceOrders(first: 20, filter: {{status: [OPEN]}}) {{ {ORDERS} }} }}",
    "order_with_lines": (
        "query($id: ID!) { node(id: $id) { ... on ServiceOrder { id sodNumber lines { lineNo quantity } } } }"
    ),
    # with lines: not read ahead, the batch of Customer.serviceOrders reads them (README)
    "customers_with_order_lines": (
        "{ customers(first: 3) { edges { node { code serviceOrders(first: 2) "
        "{ edges { node { sodNumber lines { lineNo } } } } } } } }"
    ),
    "customers_with_orders": (
        "{ customers(first: 20) { edges { node { id name serviceOrders(first: 10) "
        "{ edges { node { id sodNumber status createdAt totalAmount } } } } } } }"
    ),
}


def _statements(response: httpx.Response) -> int:
    timing = response.headers["server-timing"]
    return int(timing.split('desc="', 1)[1].split(" statement", 1)[0])


@pytest.mark.parametrize("share", [True, False], ids=["shared", "not_shared"])
@pytest.mark.parametrize("read", list(HERDS))
async def test_a_herd_of_identical_requests_over_http(seeded: Settings, share: bool, read: str) -> None:
    """N identical requests at once: fewer statements among them all than N requests alone
    take when shared (one that joined says 0 statements in Server-Timing), exactly that many
    when not; every answer the same as one request's alone, either way."""
    async with client_for(replace(seeded, share_reads=share)) as client:
        variables = None
        if read == "order_with_lines":
            first = await gql(client, "{ serviceOrders(first: 1) { edges { node { id } } } }")
            variables = {"id": first["data"]["serviceOrders"]["edges"][0]["node"]["id"]}
        # Alone, twice: the token's caches, the plans and an order's key are warm after the
        # first, so nothing but the read awaits in the herd's requests.
        await gql(client, HERDS[read], variables)
        alone = await gql(client, HERDS[read], variables)
        once = _statements(alone["_response"])
        before = shared_total()
        bodies = await asyncio.gather(*(gql(client, HERDS[read], variables) for _ in range(N)))
    assert "errors" not in alone and alone["data"]
    assert all("errors" not in body and body["data"] == alone["data"] for body in bodies)
    statements = sum(_statements(body["_response"]) for body in bodies)
    if share:
        assert once <= statements < once * N
        assert shared_total() > before
    else:
        assert statements == once * N
        assert shared_total() == before


async def test_a_caller_in_a_herd_is_still_judged_on_its_own(seeded: Settings) -> None:
    """Who may share: permissions are checked per request before any read. A token with no
    role asks for the dashboard in the middle of a herd of admins reading it: it is
    refused (FORBIDDEN, no data), while the admins share their statement."""
    no_role = bearer_for(seeded, subject="shared-no-role")
    async with client_for(seeded) as client:
        await gql(client, HERDS["dashboard"])
        before = shared_total()
        bodies = await asyncio.gather(
            *(gql(client, HERDS["dashboard"]) for _ in range(N // 2)),
            gql(client, HERDS["dashboard"], None, **no_role),
            *(gql(client, HERDS["dashboard"]) for _ in range(N // 2)),
        )
    refused = bodies[N // 2]
    assert error_codes(refused) == ["FORBIDDEN"] and not refused.get("data")
    admins = bodies[: N // 2] + bodies[N // 2 + 1 :]
    assert all(body["data"]["dashboard"]["totalCount"] > 0 for body in admins)
    assert shared_total() > before

"""A 3-node Typesense raft cluster (NEXES_TYPESENSE_URLS): one node SIGKILLed, the leader
included, sends no search to the pg_trgm fallback; the node catches up once started again.
A hung node is outrun and its breaker opens; every node slow at once is waited for, and no
breaker opens."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import httpx
import psycopg
import pytest
import typesense

from nexes.search.client import client_config, sync_client
from nexes.search.engine import SearchService, service_for
from nexes.settings import Settings
from tests.conftest import client_for
from tests.support.search import SEARCH, indexed_database, pick, search_environ, sync_now
from tests.support.stack import pid_of, stack
from tests.support.waits import wait_for

pytestmark = pytest.mark.usefixtures("three_typesense_nodes")
DB = "nexes_t_cluster_search"
REDIS_DB = 10
NODES = ("typesense", "typesense2", "typesense3")
KEY = {"X-TYPESENSE-API-KEY": os.environ.get("NEXES_TYPESENSE_API_KEY", "")}


@pytest.fixture(scope="module")
def cluster_settings(template_settings: Settings) -> Iterator[Settings]:
    env = search_environ(DB, REDIS_DB, NEXES_SEARCH_BREAKER_FAILURES="2", NEXES_SEARCH_BREAKER_RESET="30")
    with indexed_database(template_settings, env, 300) as settings:
        yield settings


@pytest.fixture
async def api(cluster_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An API whose search service is new (one per settings object and event loop): a
    service the test before used holds that test's breakers, and one a kill left open for
    NEXES_SEARCH_BREAKER_RESET seconds sent the next test's searches to the fallback (twice
    in seven runs of `make test-cluster`). Each test starts from healthy nodes and a process
    that has seen no fault."""
    async with client_for(replace(cluster_settings)) as client:
        yield client


def raft_state(url: str) -> int | None:
    """1 for the leader, 4 for a follower (Typesense's /debug), None when it does not answer."""
    try:
        request = urllib.request.Request(url + "/debug", headers=KEY)
        with urllib.request.urlopen(request, timeout=1) as answer:
            return int(json.loads(answer.read())["state"])
    except OSError:
        return None


def node_client(settings: Settings, index: int) -> typesense.Client:
    """A client of one node only."""
    config = client_config(settings, timeout=2.0, retries=0, urls=(settings.typesense_urls[index],))
    return typesense.Client(config)


def cluster_healthy(settings: Settings) -> bool:
    states = [raft_state(url) for url in settings.typesense_urls]
    return states.count(1) == 1 and states.count(4) == len(states) - 1


async def searches(api: httpx.AsyncClient, text: str, count: int) -> list[str]:
    """The engine of each of `count` searches for `text`."""
    engines = []
    for _ in range(count):
        answer = await api.post("/graphql", json={"query": SEARCH, "variables": {"q": text, "first": 5}})
        engines.append(answer.json()["data"]["search"]["engine"])
    return engines


def kill_node(index: int) -> None:
    os.kill(pid_of(NODES[index]), signal.SIGKILL)


def restart(settings: Settings) -> None:
    """Start the killed node again (`infra/stack up typesense`) and wait for a healed cluster."""
    stack("up", "typesense")
    assert wait_for(lambda: cluster_healthy(settings), timeout=90, interval=0.5), "the cluster did not heal"


def caught_up(settings: Settings, index: int, order_id: int, description: str) -> bool:
    """Whether node `index` has the write made while it was down."""
    documents = node_client(settings, index).collections[settings.typesense_collection].documents

    def has_it() -> bool:
        return documents[str(order_id)].retrieve()["description"] == description

    return bool(wait_for(has_it, timeout=60, interval=0.5, ignoring=(typesense.exceptions.TypesenseClientError,)))


def write_while_down(settings: Settings, conn: psycopg.Connection, order_id: int, text: str) -> float:
    """Change an order, then sync the outbox until the cluster takes the write: the seconds
    that took (an election holds writes back; meanwhile a follower may answer a write with
    a malformed status line, which the outbox sync retries like any failure)."""
    conn.execute("UPDATE service_order SET description = %s WHERE id = %s", [text, order_id])
    started = time.monotonic()
    synced = wait_for(
        lambda: sync_now(settings) is None and _document_text(settings, order_id) == text,
        timeout=60,
        interval=0.5,
        ignoring=(typesense.exceptions.TypesenseClientError, httpx.HTTPError, OSError),
    )
    assert synced, "the write never reached the cluster"
    return time.monotonic() - started


def _document_text(settings: Settings, order_id: int) -> str:
    documents = sync_client(settings, timeout=2.0).collections[settings.typesense_collection].documents
    return str(documents[str(order_id)].retrieve()["description"])


@pytest.mark.parametrize("victim", ["follower", "leader"])
async def test_a_sigkilled_node_sends_no_search_to_the_fallback_and_catches_up(
    cluster_settings: Settings, api: httpx.AsyncClient, victim: str
) -> None:
    assert wait_for(lambda: cluster_healthy(cluster_settings), timeout=90, interval=0.5)
    states = [raft_state(url) for url in cluster_settings.typesense_urls]
    index = states.index(1 if victim == "leader" else 4)
    with psycopg.connect(cluster_settings.admin_url, autocommit=True) as conn:
        order_id, sod, _, _ = pick(conn)
        assert set(await searches(api, sod, 6)) == {"TYPESENSE"}
        kill_node(index)
        text = f"{victim} killed at {time.time()}"
        try:
            # Searches go on during the election and after it, from the nodes left.
            engines = await searches(api, sod, 30)
            delayed = write_while_down(cluster_settings, conn, order_id, text)
            engines += await searches(api, sod, 10)
        finally:
            restart(cluster_settings)
    assert caught_up(cluster_settings, index, order_id, text)
    assert engines.count("POSTGRES") == 0 and len(engines) == 40
    print(f"\n{victim} killed: writes delayed {delayed:.1f}s")  # the figure bench/README.md reports
    assert delayed < 60
    detail = (await api.get("/api/health/detail")).json()
    assert detail["search"]["typesense"] in ("ok", "degraded")


async def test_a_hung_node_is_outrun_by_the_next_and_sends_no_search_to_the_fallback(
    cluster_settings: Settings, api: httpx.AsyncClient
) -> None:
    # SIGSTOP: the node's process stays, its sockets accept and nothing answers, as a node
    # starved of CPU or stuck in a long pause does. Each search that starts on it is sent
    # to the next node as well after NEXES_SEARCH_HEDGE_SECONDS, which answers, instead of
    # waiting the whole NEXES_TYPESENSE_TIMEOUT for it and then asking the fallback.
    assert wait_for(lambda: cluster_healthy(cluster_settings), timeout=90, interval=0.5)
    follower = [raft_state(url) for url in cluster_settings.typesense_urls].index(4)
    with psycopg.connect(cluster_settings.admin_url, autocommit=True) as conn:
        _, sod, _, _ = pick(conn)
    pid = pid_of(NODES[follower])
    os.kill(pid, signal.SIGSTOP)
    try:
        # Searches start on each node in turn: the first three include one on the hung node.
        engines = await searches(api, sod, 12)
        # Its tries run past NEXES_TYPESENSE_TIMEOUT while another node answered within it:
        # each counts. Kept stopped until the last has timed out (resumed earlier, it would
        # answer one and reset the count).
        await asyncio.sleep(cluster_settings.typesense_timeout + 0.5)
        breakers = await service_for(api.app.state.settings).breaker_states()  # type: ignore[attr-defined]
    finally:
        os.kill(pid, signal.SIGCONT)
    assert engines == ["TYPESENSE"] * 12
    # Its breaker (2 failures, the module's setting) opened; the others' did not.
    assert breakers.pop(f"typesense-{follower + 1}") == "opened"
    assert set(breakers.values()) == {"closed"}
    assert wait_for(lambda: cluster_healthy(cluster_settings), timeout=90, interval=0.5)


async def failures(service: SearchService) -> dict[str, tuple[str, int | None]]:
    """Each node's breaker: its state and the failures it has counted."""
    breakers = [(name, (await service.breakers.get_breaker(name)).context) for name in service.breaker_names]
    return {name: (str(context.state), context.failure_count) for name, context in breakers}


async def stopped_search(api: httpx.AsyncClient, text: str, seconds: float) -> tuple[str, float]:
    """One search while every node is stopped (SIGSTOP) for `seconds`: its engine and time.
    Every node slow at once, as when the cores they share are starved (the Typesense drill:
    a node catching up on the two cores the three share); SIGSTOP stands in for the
    starvation, which cannot be produced on demand. Stops shorter than Typesense's raft
    election timeout leave the cluster as it was."""
    pids = [pid_of(name) for name in NODES]
    loop = asyncio.get_running_loop()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        for pid in pids:
            loop.call_later(seconds, os.kill, pid, signal.SIGCONT)
        started = time.monotonic()
        (engine,) = await searches(api, text, 1)
        return engine, time.monotonic() - started
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)  # at once, should the search have failed early


@pytest.mark.parametrize("patience", [6.0, 0.8])
async def test_every_node_slow_at_once_is_waited_for_up_to_the_patience_and_opens_no_breaker(
    cluster_settings: Settings, patience: float
) -> None:
    # A timeout of 0.5 s and every node stopped for 1.5 s. Within NEXES_SEARCH_PATIENCE_SECONDS
    # (6 s) Typesense answers once the nodes go on, past the timeout; with 0.8 s the fallback
    # answers at the patience, before the nodes go on. Either way no node was slower than
    # another: no breaker counts a failure.
    settings = replace(cluster_settings, typesense_timeout=0.5, search_patience_seconds=patience)
    assert wait_for(lambda: cluster_healthy(settings), timeout=90, interval=0.5)
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        _, sod, _, _ = pick(conn)
    async with client_for(settings) as api:
        assert await searches(api, sod, 3) == ["TYPESENSE"] * 3  # connected, the layout read
        service = service_for(settings)
        before = await failures(service)
        engine, elapsed = await stopped_search(api, sod, 1.5)
        after = await failures(service)
    if patience > 1.5:
        assert (engine, elapsed >= 1.4) == ("TYPESENSE", True), elapsed
    else:
        assert (engine, patience - 0.1 <= elapsed < 1.5) == ("POSTGRES", True), elapsed
    assert after == before, (before, after)
    assert wait_for(lambda: cluster_healthy(settings), timeout=90, interval=0.5)

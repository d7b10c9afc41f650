"""Replicas done right, on the real primary and replica: lag monitor, routing,
read-your-writes by LSN, CORS, /metrics, and the replica stopped."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import REGISTRY, generate_latest

from nexes.db.connect.conninfo import for_role
from nexes.db.connect.lsn import format_lsn, parse_lsn
from nexes.settings import Settings
from tests.conftest import client_for, error_codes, gql
from tests.support.apps import plain_endpoint
from tests.support.databases import superuser_url
from tests.support.replicas import fast, health_detail, monitor_of, replay_paused, wait_for_state
from tests.support.stack import stopped
from tests.support.waits import eventually

CREATE = "mutation($c: String!) { createCustomer(input: {code: $c, name: $c}) { customer { id } errors { code } } }"
FIND = "query($c: String!) { customers(first: 1, filter: {code: $c}) { edges { node { code } } } }"
REPORT = "{ reports { aging { bucket orderCount } } }"


@asynccontextmanager
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(settings) as c:
        yield c


def test_lsn_text_round_trips() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert format_lsn(parse_lsn("16/B374D848") or 0) == "16/B374D848"
    assert parse_lsn("nonsense") is None


async def test_a_mutation_answers_the_lsn_in_the_header_and_extensions_on_both_post_paths(seeded: Settings) -> None:
    async with client(seeded) as c:
        code = f"LSN-{uuid.uuid4().hex[:8]}"
        body = await gql(c, CREATE, {"c": code})
        lsn = body["extensions"]["consistency"]["lsn"]
        assert parse_lsn(lsn) is not None
        assert body["_response"].headers["x-nexes-lsn"] == lsn
        # Starlette's endpoint (multipart and GET take it) does the same.
        async with plain_endpoint(c.app.state, c.headers) as ref:  # type: ignore[attr-defined]
            again = await gql(ref, CREATE, {"c": code + "b"})
        assert parse_lsn(again["_response"].headers["x-nexes-lsn"]) >= parse_lsn(lsn)  # type: ignore[operator]
        assert again["extensions"]["consistency"]["lsn"] == again["_response"].headers["x-nexes-lsn"]
        # A query carries none.
        read = await gql(c, FIND, {"c": code})
        assert "consistency" not in read["extensions"] and "x-nexes-lsn" not in read["_response"].headers


async def test_a_malformed_min_lsn_is_bad_user_input(seeded: Settings) -> None:
    async with client(seeded) as c:
        body = await gql(c, FIND, {"c": "x"}, **{"x-nexes-min-lsn": "yesterday"})
    assert body["_response"].status_code == 400 and error_codes(body) == ["BAD_USER_INPUT"]


async def test_read_your_writes_with_replay_paused_100_of_100_and_a_control_read_is_stale(seeded: Settings) -> None:
    # A long lag threshold: the replica stays in rotation, so only the LSN keeps reads fresh.
    async with client(fast(seeded, replica_max_lag=60.0)) as c:
        await wait_for_state(c, "healthy", 10)
        code = f"RYW-{uuid.uuid4().hex[:8]}"
        with replay_paused(seeded):
            body = await gql(c, CREATE, {"c": code})
            lsn = body["_response"].headers["x-nexes-lsn"]
            control = await gql(c, FIND, {"c": code})
            assert control["data"]["customers"]["edges"] == [], "the replica was not behind: the test proves nothing"
            assert monitor_of(c).usable(0)
            seen = 0
            for _ in range(100):
                read = await gql(c, FIND, {"c": code}, **{"x-nexes-min-lsn": lsn})
                seen += read["data"]["customers"]["edges"] == [{"node": {"code": code}}]
        assert seen == 100


async def test_a_caught_up_replica_serves_min_lsn_reads(seeded: Settings) -> None:
    async with client(fast(seeded)) as c:
        await wait_for_state(c, "healthy", 10)
        code = f"CU-{uuid.uuid4().hex[:8]}"
        lsn = (await gql(c, CREATE, {"c": code}))["_response"].headers["x-nexes-lsn"]
        await asyncio.sleep(0.5)  # replay, and a probe or two
        before = _route_count(c, "replica")
        read = await gql(c, FIND, {"c": code}, **{"x-nexes-min-lsn": lsn})
        assert read["data"]["customers"]["edges"] == [{"node": {"code": code}}]
        assert _route_count(c, "replica") > before


def _route_count(c: httpx.AsyncClient, target: str) -> float:
    from nexes.metrics import DB_ROUTE

    return sum(s.value for m in DB_ROUTE.collect() for s in m.samples if s.labels.get("target") == target)


async def test_a_replica_held_past_the_threshold_leaves_rotation_and_comes_back(seeded: Settings) -> None:
    async with client(fast(seeded)) as c:
        await wait_for_state(c, "healthy", 5)
        with replay_paused(seeded):
            deadline = time.monotonic() + 15
            while monitor_of(c).status[0].state != "lagging" and time.monotonic() < deadline:
                await gql(c, CREATE, {"c": f"LAG-{uuid.uuid4().hex[:8]}"})  # writes continue
                await asyncio.sleep(0.1)
            assert monitor_of(c).status[0].state == "lagging"
            before = _route_count(c, "primary")
            read = await gql(c, FIND, {"c": "nobody"})
            assert "errors" not in read
            assert _route_count(c, "primary") > before
            health = await health_detail(c)
            assert health["replicas"][0]["state"] == "lagging" and health["replicas"][0]["in_rotation"] is False
            assert health["replicas"][0]["lag_seconds"] > 1.0
            report = await gql(c, REPORT)
            assert error_codes(report) == ["SERVICE_UNAVAILABLE"]
        await wait_for_state(c, "healthy", 5)


async def test_replica_stopped_reads_succeed_reports_are_unavailable_and_it_returns_within_the_interval(
    seeded: Settings,
) -> None:
    settings = fast(seeded)
    async with client(settings) as c:
        await wait_for_state(c, "healthy", 5)
        with stopped("replica", for_role(seeded.replica_urls[0], seeded, "nexes_api")):
            await wait_for_state(c, "unreachable", 5)
            for _ in range(5):
                body = await gql(c, "{ serviceOrders(first: 5) { edges { node { sodNumber } } } }")
                assert "errors" not in body and len(body["data"]["serviceOrders"]["edges"]) == 5
            report = await gql(c, REPORT)
            assert error_codes(report) == ["SERVICE_UNAVAILABLE"]
            export = await c.get("/api/exports/service-orders.csv")
            assert export.status_code == 503
            health = await health_detail(c)
            assert health["replicas"][0]["state"] == "unreachable"
            assert health["status"] == "degraded"
        # `stopped` returns once the replica serves through PgBouncer again.
        back = await wait_for_state(c, "healthy", settings.replica_probe_interval * 2 + 2)
        assert back <= settings.replica_probe_interval * 2 + 2


async def _monitor_backend(monitor: Any) -> int:
    """The pid of the monitor's backend on the replica, once its probe connection is open."""
    probe = monitor._replicas[0]
    assert await eventually(lambda: probe._conn is not None and not probe._conn.closed, 5, 0.02)
    pid: int = probe._conn.info.backend_pid
    return pid


def _parent(pid: int) -> int:
    """A process's parent, from /proc (a backend's parent is its postmaster)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@contextmanager
def frozen(*pids: int) -> Iterator[None]:
    """The processes stopped with SIGSTOP for the block: a server that hangs without
    refusing, which nothing else on demand produces."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


async def test_one_probe_timeout_keeps_the_replica_in_rotation_and_two_in_a_row_take_it_out(
    seeded: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with client(fast(seeded, replica_probe_timeout=0.5)) as c:
        await wait_for_state(c, "healthy", 5)
        monitor = monitor_of(c)
        backend = await _monitor_backend(monitor)
        caplog.set_level(logging.WARNING, logger="nexes.db.connect.monitor")
        # The monitor's own backend hangs: its probe times out, the next one reconnects.
        with frozen(backend):
            assert await eventually(lambda: "a probe timed out" in caplog.text, 5, 0.02)
        await wait_for_state(c, "healthy", 5)
        assert "-> unreachable" not in caplog.text
        # The whole server hangs (its postmaster too, so the reconnect hangs): out.
        backend = await _monitor_backend(monitor)
        with frozen(backend, _parent(backend)):
            await wait_for_state(c, "unreachable", 5)
            health = await health_detail(c)
            assert health["replicas"][0]["in_rotation"] is False
            assert health["replicas"][0]["error"]["code"] == "TIMEOUT"
        await wait_for_state(c, "healthy", 10)


async def test_metrics_count_routes_and_show_replica_state(seeded: Settings) -> None:
    async with client(fast(seeded)) as c:
        await wait_for_state(c, "healthy", 10)
        await gql(c, FIND, {"c": "x"})
        # /metrics is the ops listener's (tests/test_ops_serve.py); this process's registry here.
        text = generate_latest(REGISTRY).decode()
        assert (await c.get("/metrics")).status_code == 404
    assert 'nexes_db_route_total{reason="healthy_replica",target="replica"}' in text
    assert 'nexes_replica_in_rotation{replica="replica-0"} 1.0' in text


async def test_cors_exposes_the_lsn_and_allows_the_min_lsn_header(seeded: Settings) -> None:
    async with client(replace(seeded, cors_origins=("https://spa.example",))) as c:
        pre = await c.options(
            "/graphql",
            headers={
                "origin": "https://spa.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "x-nexes-min-lsn, content-type",
            },
        )
        assert pre.status_code == 200
        assert "x-nexes-min-lsn" in pre.headers["access-control-allow-headers"].lower()
        body = await gql(c, CREATE, {"c": f"CORS-{uuid.uuid4().hex[:6]}"}, origin="https://spa.example")
        exposed = body["_response"].headers["access-control-expose-headers"].lower()
        assert "x-nexes-lsn" in exposed and "x-request-id" in exposed
        other = await c.options(
            "/graphql", headers={"origin": "https://evil.example", "access-control-request-method": "POST"}
        )
        assert other.status_code == 400


@pytest.fixture(autouse=True)
def _replay_resumed(seeded: Settings) -> Iterator[None]:
    """Whatever a test did, replay runs again afterwards."""
    yield
    with psycopg.connect(superuser_url(seeded.replica_admin_urls[0]), autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_resume()")

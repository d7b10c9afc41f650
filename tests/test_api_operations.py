"""Request ids, pools and failures of servers, through the real app and the real stack."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import httpx
import orjson
import psycopg

from nexes.db.connect.conninfo import for_role
from nexes.settings import Settings
from tests.conftest import client_for, error_codes, gql
from tests.support.auth import bearer_for
from tests.support.databases import superuser_url
from tests.support.processes import free_port
from tests.support.stack import stopped

PAGE = "{ serviceOrders(first: 5) { edges { node { sodNumber customer { name } } } } }"


async def test_request_id_is_echoed_or_replaced(app_client: httpx.AsyncClient) -> None:
    ok = await app_client.post("/graphql", json={"query": PAGE}, headers={"x-request-id": "abc.DEF-123_x"})
    assert ok.headers["x-request-id"] == "abc.DEF-123_x"
    for unsafe in ("has space", "a" * 129, "quote'd", "semi;colon"):
        resp = await app_client.post("/graphql", json={"query": PAGE}, headers={"x-request-id": unsafe})
        assert resp.headers["x-request-id"] != unsafe
        assert len(resp.headers["x-request-id"]) == 32


async def test_errors_carry_the_request_id(app_client: httpx.AsyncClient) -> None:
    body = await gql(app_client, "{ serviceOrders(first: 500) { edges { cursor } } }", **{"x-request-id": "rid-err-1"})
    assert body["errors"][0]["extensions"]["requestId"] == "rid-err-1"


async def test_request_id_reaches_the_sql_comment_in_pg_stat_activity(
    app_client: httpx.AsyncClient, seeded: Settings
) -> None:
    # An ACCESS EXCLUSIVE lock on the primary replays on the standby too, so the API's
    # read blocks wherever it runs, long enough to be seen in pg_stat_activity.
    request_id = f"sqlcomment-{os.getpid()}"
    lock = psycopg.connect(
        superuser_url(seeded.admin_url, psycopg.conninfo.conninfo_to_dict(seeded.admin_url)["dbname"])
    )
    lock.execute("LOCK TABLE customer IN ACCESS EXCLUSIVE MODE")
    try:
        task = asyncio.ensure_future(
            app_client.post(
                "/graphql",
                json={"query": "{ customers(first: 1) { edges { cursor } } }"},
                headers={"x-request-id": request_id},
            )
        )
        seen = None
        deadline = time.monotonic() + 15
        urls = [superuser_url(seeded.admin_url), superuser_url(seeded.replica_admin_urls[0])]
        while seen is None and time.monotonic() < deadline:
            for url in urls:
                with psycopg.connect(url, autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT query FROM pg_stat_activity WHERE query LIKE %s", [f"%request_id='{request_id}'%"]
                    ).fetchone()
                seen = seen or (row[0] if row else None)
            await asyncio.sleep(0.05)
    finally:
        lock.commit()
        lock.close()
    response = await task
    assert response.status_code == 200
    # The traceparent follows when a tracer provider is installed (an earlier test of the
    # same process may have installed one: OpenTelemetry's is set once per process).
    assert seen is not None
    traceparent = r"(,traceparent='00-[0-9a-f]{32}-[0-9a-f]{16}-0[0-3]')?"
    assert re.match(rf"/\*request_id='{request_id}'{traceparent}\*/ SELECT", seen)


def test_request_id_reaches_uvicorns_json_log_lines(seeded: Settings) -> None:
    env = {**os.environ, "NEXES_PRIMARY_URL": seeded.primary_url, "NEXES_REPLICA_URLS": " ".join(seeded.replica_urls)}
    port = free_port()
    env["NEXES_OPS_LISTEN"] = f"127.0.0.1:{free_port()}"  # /metrics' listener, never a fixed port
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexes.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/health/live", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        resp = httpx.post(
            f"http://127.0.0.1:{port}/graphql",
            json={"query": PAGE},
            headers={"x-request-id": "uvicorn-log-1", **bearer_for(seeded, "viewer")},
            timeout=10,
        )
        assert resp.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    # A clean shutdown on SIGTERM (uvicorn then re-raises the signal, hence -15).
    assert proc.returncode in (0, -signal.SIGTERM)
    assert any(entry["msg"] == "Application shutdown complete." for entry in lines)
    access = [entry for entry in lines if entry.get("logger") == "uvicorn.access"]
    assert any(entry.get("request_id") == "uvicorn-log-1" and "POST /graphql" in entry["msg"] for entry in access)
    assert all(set(entry) >= {"ts", "level", "logger", "msg"} for entry in lines)


async def test_exhausted_pools_give_503_not_a_hang(seeded: Settings) -> None:
    tiny = replace(seeded, api_pool_size=1, pool_timeout=0.5)
    async with client_for(tiny) as client:
        pools = client.app.state.pools  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)
        held = [await pools.primary.getconn(), await pools.replicas[0].getconn()]
        try:
            started = time.monotonic()
            body = await gql(client, PAGE)
            elapsed = time.monotonic() - started
        finally:
            await pools.primary.putconn(held[0])
            await pools.replicas[0].putconn(held[1])
    assert body["_response"].status_code == 503
    assert error_codes(body) == ["SERVICE_UNAVAILABLE"]
    assert elapsed < 10


async def test_a_full_analyst_pool_refuses_reports_and_the_replica_stays_in_rotation(seeded: Settings) -> None:
    tiny = replace(seeded, analyst_pool_size=1, pool_timeout=0.5)
    async with client_for(tiny, roles=("analyst",)) as client:
        state = client.app.state  # type: ignore[attr-defined]
        await state.monitor.refresh()
        held = await state.pools.analyst[0].getconn()
        try:
            body = await gql(client, "{ reports { aging { bucket orderCount } } }")
            usable = state.monitor.usable(0)
            # The SPA's viewer reads the replica through its own pool meanwhile.
            page = await gql(client, PAGE, **bearer_for(seeded, "viewer"))
        finally:
            await state.pools.analyst[0].putconn(held)
        again = await gql(client, "{ reports { aging { bucket orderCount } } }")
    assert body["_response"].status_code == 503
    assert error_codes(body) == ["SERVICE_UNAVAILABLE"]
    assert "analyst connection is busy" in body["errors"][0]["message"]
    assert usable, "a full analyst pool took the replica out of rotation"
    assert "errors" not in page and page["_response"].status_code == 200
    assert "errors" not in again


async def reads_and_health(settings: Settings) -> dict[str, Any]:
    """Five page reads must succeed; then the health report, which must still be 200."""
    async with client_for(settings) as client:
        for _ in range(5):
            body = await gql(client, PAGE)
            assert "errors" not in body and len(body["data"]["serviceOrders"]["edges"]) == 5
        await client.app.state.monitor.refresh()  # type: ignore[attr-defined]
        health = await client.get("/api/health/detail")
    assert health.status_code == 200
    report: dict[str, Any] = health.json()
    assert report["status"] == "degraded"
    return report


async def test_queries_succeed_with_the_replica_stopped(seeded: Settings) -> None:
    with stopped("replica", for_role(seeded.replica_urls[0], seeded, "nexes_api")):
        report = await reads_and_health(seeded)
    assert report["replicas"][0]["reachable"] is False


async def test_queries_succeed_with_the_primary_stopped_and_health_says_degraded(seeded: Settings) -> None:
    with stopped("primary", for_role(seeded.primary_url, seeded, "nexes_api")):
        report = await reads_and_health(seeded)
    assert report["primary"]["reachable"] is False
    assert report["replicas"][0]["reachable"] is True

"""/api/health and /api/health/detail: built from the monitor's last round, no connection
per call, the short form public and topology-free, the detailed one admin-only with
failures as codes (issue 16, least privilege)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from nexes.settings import Settings
from tests.conftest import client_for
from tests.support.databases import superuser_url
from tests.support.processes import free_port
from tests.support.replicas import monitor_of
from tests.support.waits import eventually

MONITOR_BACKENDS = "SELECT pid FROM pg_stat_activity WHERE usename = 'nexes_monitor' ORDER BY pid"


def monitor_backends(settings: Settings) -> dict[str, list[int]]:
    """The pids of nexes_monitor's backends on the primary and on the replica."""
    servers = {"primary": settings.admin_url, "replica": settings.replica_admin_urls[0]}
    out = {}
    for name, url in servers.items():
        with psycopg.connect(superuser_url(url), autocommit=True) as conn:
            out[name] = [row[0] for row in conn.execute(MONITOR_BACKENDS)]
    return out


def secrets_of(settings: Settings) -> list[str]:
    """What no health answer may contain: hosts, ports, role and database names."""
    words = {"nexes_monitor", "nexes_owner", "nexes_api", "postgres", "127.0.0.1", "localhost"}
    for url in (settings.primary_url, settings.monitor_url, *settings.monitor_replica_urls, *settings.replica_urls):
        params = conninfo_to_dict(url)
        words.update(str(params[k]) for k in ("host", "port", "dbname") if params.get(k))
    return sorted(words)


async def test_short_health_is_public_and_shows_the_status_alone(seeded: Settings) -> None:
    async with client_for(seeded, roles=()) as anonymous:
        answer = await anonymous.get("/api/health")
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}
    assert not [word for word in secrets_of(seeded) if word in answer.text]


async def test_detail_needs_an_admin_token(seeded: Settings) -> None:
    async with client_for(seeded, roles=()) as anonymous:
        assert (await anonymous.get("/api/health/detail")).status_code == 401
    for role in ("viewer", "operator", "analyst"):
        async with client_for(seeded, roles=(role,)) as other:
            refused = await other.get("/api/health/detail")
            assert refused.status_code == 403, role
            assert "replicas" not in refused.text
    async with client_for(seeded) as admin:
        detail = (await admin.get("/api/health/detail")).json()
    assert detail["status"] == "ok"
    assert detail["primary"]["reachable"] and detail["replicas"][0]["reachable"]
    assert detail["replicas"][0]["in_rotation"] and "lag_seconds" in detail["replicas"][0]
    assert detail["primary"]["schema_version"] > 0
    assert {"api-primary", "api-replica-0", "analyst-replica-0"} <= set(detail["pools"])
    assert detail["redis"]["reachable"] and detail["typesense"]["reachable"]
    assert detail["search"]["typesense"] == "ok"


async def test_fifty_concurrent_health_calls_open_no_connection(seeded: Settings) -> None:
    async with client_for(seeded) as admin:
        monitor = monitor_of(admin)
        await monitor.refresh()
        before = monitor_backends(seeded)
        # One connection per server, kept: the monitor's, as nexes_monitor.
        own = {"primary": _backend_pid(monitor._primary), "replica": _backend_pid(monitor._replicas[0])}
        assert all(own[server] in before[server] for server in own)
        answers = await asyncio.gather(
            *(admin.get("/api/health") for _ in range(50)), *(admin.get("/api/health/detail") for _ in range(50))
        )
        after_burst = monitor_backends(seeded)
        await monitor.refresh()
        await monitor.refresh()
        after_rounds = monitor_backends(seeded)
        after_own = {"primary": _backend_pid(monitor._primary), "replica": _backend_pid(monitor._replicas[0])}
    assert all(a.status_code == 200 for a in answers)
    assert before == after_burst == after_rounds  # the same backends: no connect per call or per probe
    assert after_own == own


def _backend_pid(probe: Any) -> int:
    """The server pid of a monitor probe's open connection."""
    assert probe._conn is not None and not probe._conn.closed
    return int(probe._conn.info.backend_pid)


async def test_failures_in_the_detail_are_codes_without_hosts_ports_or_roles(seeded: Settings) -> None:
    port = free_port()
    refused_replica = make_conninfo(seeded.monitor_replica_urls[0], port=str(port))
    unknown_role = make_conninfo(seeded.monitor_url, user="nexes_nobody")
    broken = replace(
        seeded,
        monitor_url=unknown_role,
        monitor_replica_urls=(refused_replica,),
        redis_url=f"redis://127.0.0.1:{port}/0",
        typesense_url=f"http://127.0.0.1:{port}",
        redis_timeout=0.5,
        typesense_timeout=0.5,
    )
    async with client_for(broken) as admin:
        short = await admin.get("/api/health")
        detail = await admin.get("/api/health/detail")
    body: dict[str, Any] = detail.json()
    assert body["primary"]["error"] == {"code": "AUTH_FAILED", "reason": "the server refused the probing role's login"}
    assert body["replicas"][0]["error"] == {"code": "CONNECTION_REFUSED", "reason": "connection refused"}
    assert body["replicas"][0]["state"] == "unreachable" and body["replicas"][0]["in_rotation"] is False
    assert body["redis"]["error"] == {"code": "CONNECTION_REFUSED", "reason": "connection refused"}
    assert body["typesense"]["error"] == {"code": "CONNECTION_REFUSED", "reason": "connection refused"}
    # Neither server answers the monitor: no database can be vouched for.
    assert body["status"] == "down" and detail.status_code == 503
    assert short.status_code == 503 and short.json() == {"status": "down"}
    leaked = [w for w in [*secrets_of(broken), str(port), "nexes_nobody"] if w in detail.text]
    assert not leaked


async def test_health_goes_by_the_monitors_last_round(seeded: Settings) -> None:
    """A replica the monitor cannot reach makes the short form "degraded" once a round saw
    it, and "ok" again once a round reaches it, with no call opening anything itself."""
    async with client_for(seeded) as admin:
        monitor = monitor_of(admin)
        probe = monitor._replicas[0]  # the test swaps the probe's address
        good = probe.url
        await probe.close()
        probe.url = make_conninfo(good, port=str(free_port()))
        await monitor.refresh()
        assert (await admin.get("/api/health")).json() == {"status": "degraded"}
        probe.url = good
        await monitor.refresh()
        assert await eventually(lambda: _status(admin), 5) == "ok"


async def _status(client: httpx.AsyncClient) -> str | None:
    status = (await client.get("/api/health")).json()["status"]
    return status if status == "ok" else None


async def test_an_unreachable_amqp_broker_makes_health_degraded_not_down(seeded: Settings) -> None:
    """NEXES_BROKER_URL on RabbitMQ that refuses (a port nothing listens on): the broker's
    check says so in the detail, as a code, and the short form is "degraded" with 200, since
    reads and mutations go on and an upload waits QUEUED for the broker. The Redis broker is
    reported by the same check (its kind "redis"). RabbitMQ stopped for real: tests/cluster."""
    port = free_port()
    async with client_for(seeded) as admin:
        detail = (await admin.get("/api/health/detail")).json()
    assert detail["broker"]["kind"] == "redis" and detail["broker"]["reachable"] is True
    broken = replace(seeded, broker_url=f"amqp://guest:guest@127.0.0.1:{port}/%2F", redis_timeout=0.5)
    async with client_for(broken) as admin:
        short = await admin.get("/api/health")
        answer = await admin.get("/api/health/detail")
    body: dict[str, Any] = answer.json()
    assert body["broker"]["kind"] == "rabbitmq" and body["broker"]["reachable"] is False
    assert body["broker"]["error"] == {"code": "CONNECTION_REFUSED", "reason": "connection refused"}
    assert short.status_code == 200 and short.json() == {"status": "degraded"}
    assert str(port) not in answer.text and "guest" not in answer.text

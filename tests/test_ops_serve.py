"""`nexes serve` as production runs it (issue 16, least privilege): no owner or superuser
URL in its environment, /metrics only on the ops listener, every uvicorn worker's series
in one scrape."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict

from nexes.settings import Settings
from tests.support.auth import bearer_for
from tests.support.databases import environ_for, superuser_url
from tests.support.processes import free_port
from tests.support.waits import wait_for

PAGE = "{ serviceOrders(first: 5) { edges { node { sodNumber customer { name } } } } }"
CREATE = "mutation($c: String!) { createCustomer(input: {code: $c, name: $c}) { customer { id } errors { code } } }"
OWNER_BACKENDS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename IN ('nexes_owner', 'postgres') "
    "AND pid <> pg_backend_pid()"
)


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    public: str
    ops: str


@contextmanager
def serve(settings: Settings, *args: str) -> Iterator[Served]:
    """`nexes serve ARGS` on free ports, its environment without NEXES_ADMIN_URL and
    NEXES_REPLICA_ADMIN_URLS; stopped with SIGTERM."""
    dbname = str(conninfo_to_dict(settings.primary_url)["dbname"])
    env = {k: v for k, v in environ_for(dbname).items() if k not in ("NEXES_ADMIN_URL", "NEXES_REPLICA_ADMIN_URLS")}
    port, ops_port = free_port(), free_port()
    env.update(NEXES_OPS_LISTEN=f"127.0.0.1:{ops_port}", NEXES_ACCESS_LOG="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexes.cli", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    served = Served(proc, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops_port}")
    try:
        wait_for(lambda: _live(served.public), timeout=60, interval=0.2)
        yield served
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _live(base: str) -> bool:
    try:
        return httpx.get(base + "/api/health/live", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_the_api_serves_reads_mutations_health_and_metrics_without_owner_urls(seeded: Settings) -> None:
    dbname = str(conninfo_to_dict(seeded.primary_url)["dbname"])
    admin = bearer_for(seeded, "admin")
    with serve(seeded) as api:
        env = environ_of(api.proc.pid)
        assert "NEXES_ADMIN_URL" not in env and "NEXES_REPLICA_ADMIN_URLS" not in env
        read = httpx.post(api.public + "/graphql", json={"query": PAGE}, headers=admin, timeout=10).json()
        assert "errors" not in read and len(read["data"]["serviceOrders"]["edges"]) == 5
        code = f"OPS-{uuid.uuid4().hex[:8]}"
        made = httpx.post(
            api.public + "/graphql", json={"query": CREATE, "variables": {"c": code}}, headers=admin, timeout=10
        ).json()
        assert made["data"]["createCustomer"]["errors"] == [] and made["data"]["createCustomer"]["customer"]["id"]
        short = httpx.get(api.public + "/api/health", timeout=5)
        assert short.status_code == 200 and short.json() == {"status": "ok"}
        detail = httpx.get(api.public + "/api/health/detail", headers=admin, timeout=5).json()
        assert detail["status"] == "ok" and detail["primary"]["reachable"] and detail["replicas"][0]["reachable"]
        assert detail["primary"]["schema_version"] > 0
        scrape = httpx.get(api.ops + "/metrics", timeout=5)
        assert scrape.status_code == 200
        assert 'nexes_db_route_total{reason="write",target="primary"} 1.0' in scrape.text
        assert 'nexes_db_route_total{reason="healthy_replica",target="replica"}' in scrape.text
        ports = [str(conninfo_to_dict(u)["port"]) for u in (seeded.monitor_url, *seeded.monitor_replica_urls)]
        assert not [w for w in ("nexes_monitor", "nexes_api", "127.0.0.1", *ports) if w in scrape.text]
        assert httpx.get(api.public + "/metrics", headers=admin, timeout=5).status_code == 404
        # Nothing of the API's runs as the owner or the superuser on either server.
        for url in (seeded.admin_url, seeded.replica_admin_urls[0]):
            with psycopg.connect(superuser_url(url), autocommit=True) as conn:
                assert conn.execute(OWNER_BACKENDS, [dbname]).fetchone() == (0,)
    assert api.proc.returncode in (0, -signal.SIGTERM)


def test_one_ops_address_serves_the_series_of_every_worker(seeded: Settings) -> None:
    with serve(seeded, "--workers", "2") as api:
        children = Path(f"/proc/{api.proc.pid}/task/{api.proc.pid}/children").read_text().split()
        # The workers were started with it; the supervisor set it in itself after its start.
        directory = Path(environ_of(int(children[0]))["PROMETHEUS_MULTIPROC_DIR"])

        def worker_pids() -> set[str]:
            text = httpx.get(api.ops + "/metrics", timeout=5).text
            return set(re.findall(r'nexes_replica_in_rotation\{pid="(\d+)",replica="replica-0"\} 1\.0', text))

        pids = wait_for(lambda: len(worker_pids()) == 2 and worker_pids(), timeout=60, interval=0.5)
        assert pids and len(pids) == 2
        assert str(api.proc.pid) not in pids  # the workers' series, served by their supervisor
        assert httpx.get(api.public + "/metrics", headers=bearer_for(seeded, "admin"), timeout=5).status_code == 404
    # The shared directory goes with the server.
    assert not directory.exists()
    assert not os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # only `nexes serve`'s own environment had it


LIVE = b"GET /api/health/live HTTP/1.1\r\nhost: t\r\n\r\n"


def answer(sock: socket.socket) -> bytes:
    """One HTTP answer's bytes (head and Content-Length body), or what came before EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: *(\d+)", head, re.I)[1])  # type: ignore[index]
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_worker_that_shuts_down_answers_requests_on_its_open_connections(seeded: Settings) -> None:
    # uvicorn's own shutdown closed idle keep-alive connections at once, and a connection
    # accepted whose request was not read yet counted as idle: a request sent just then got
    # a reset (the rolling-restart drill, bench/README.md). `nexes serve` drains instead.
    with serve(seeded) as api:
        port = int(api.public.rsplit(":", 1)[1])
        kept = socket.create_connection(("127.0.0.1", port), timeout=10)
        kept.sendall(LIVE)
        assert answer(kept).startswith(b"HTTP/1.1 200")
        fresh = socket.create_connection(("127.0.0.1", port), timeout=10)  # accepted, no request yet
        api.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # uvicorn checks for the signal every 0.1 s, then shuts down
        assert api.proc.poll() is None, "the worker exited with connections open"
        for sock in (kept, fresh):
            sock.sendall(LIVE)
            got = answer(sock)
            assert got.startswith(b"HTTP/1.1 200") and b"connection: close" in got.lower(), got
            sock.close()
        # With its connections closed and no new ones accepted, the worker exits.
        assert api.proc.wait(timeout=15) is not None

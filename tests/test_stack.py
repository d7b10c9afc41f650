"""infra/stack: a private stack comes up from nothing, twice, and goes down by pid."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
STACK = str(ROOT / "infra" / "stack")
# Apart from the default stack's ports; NEXES_TEST_PRIVATE_PORT_BASE moves it (a machine
# where several checkouts test at once).
PRIVATE_PORT_BASE = int(os.environ.get("NEXES_TEST_PRIVATE_PORT_BASE") or 17430)


def stack(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([STACK, *args], env=env, capture_output=True, text=True, timeout=300)


def exported(env_output: str) -> dict[str, str]:
    pairs = (line.removeprefix("export ").split("=", 1) for line in env_output.splitlines())
    return {key: value.strip("'") for key, value in pairs}


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state


@pytest.fixture(scope="module")
def private_env() -> dict[str, str]:
    # /tmp keeps the state enterable by the postgres user and the socket path short.
    state = tempfile.mkdtemp(prefix="nexes-ps-", dir="/tmp")
    env = {**os.environ, "NEXES_STACK_DIR": state, "NEXES_STACK_PORT_BASE": str(PRIVATE_PORT_BASE)}
    yield env
    stack(env, "reset")


def test_private_stack_comes_up_from_nothing_and_again(private_env: dict[str, str]) -> None:
    first = stack(private_env, "up")
    assert first.returncode == 0, first.stderr
    status = stack(private_env, "status")
    assert status.returncode == 0, status.stdout
    for service in ("primary", "replica", "pgbouncer", "redis", "typesense"):
        assert f"{service:<10} up" in status.stdout

    started = time.monotonic()
    second = stack(private_env, "up")
    assert second.returncode == 0, second.stderr
    assert second.stderr == ""
    assert time.monotonic() - started < 30  # nothing to start: no waiting on anything

    urls = exported(stack(private_env, "env").stdout)
    # Every server, libpq's multi-host form: whichever is the primary takes the connection.
    servers = f"127.0.0.1:{PRIVATE_PORT_BASE},127.0.0.1:{PRIVATE_PORT_BASE + 1}"
    assert urls["NEXES_ADMIN_URL"].endswith(f"@{servers}/nexes?target_session_attrs=primary")
    with psycopg.connect(urls["NEXES_ADMIN_URL"], connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("nexes_owner",)
    with psycopg.connect(urls["NEXES_REPLICA_ADMIN_URLS"], connect_timeout=5) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    # The probing role, made by `up` before any migrate, on the primary and (copied) the replica.
    for url in (urls["NEXES_MONITOR_URL"], urls["NEXES_MONITOR_REPLICA_URLS"]):
        with psycopg.connect(url, connect_timeout=5) as conn:
            probe = "SELECT current_user, pg_has_role('pg_monitor', 'MEMBER'), rolconnlimit FROM pg_roles"
            row = conn.execute(probe + " WHERE rolname = current_user").fetchone()
            assert row == ("nexes_monitor", True, 5)
    assert "lag" in status.stdout


def test_down_of_one_service_stops_only_that_one(private_env: dict[str, str]) -> None:
    assert stack(private_env, "up").returncode == 0
    pid_file = Path(private_env["NEXES_STACK_DIR"]) / "run" / "redis.pid"
    pid = int(pid_file.read_text().split()[0])
    assert stack(private_env, "down", "redis").returncode == 0
    assert not pid_alive(pid)
    status = stack(private_env, "status")
    assert status.returncode == 3
    assert "redis      down" in status.stdout
    assert "primary    up" in status.stdout
    assert stack(private_env, "up", "redis").returncode == 0
    assert stack(private_env, "status").returncode == 0


def test_ports_taken_by_another_stack_are_refused_by_name(private_env: dict[str, str]) -> None:
    assert stack(private_env, "up").returncode == 0
    other = {**private_env, "NEXES_STACK_DIR": tempfile.mkdtemp(prefix="nexes-ps2-", dir="/tmp")}
    result = stack(other, "up", "redis")
    assert result.returncode == 1
    assert f"port {PRIVATE_PORT_BASE + 3} is already in use" in result.stderr
    assert "NEXES_STACK_PORT_BASE" in result.stderr
    stack(other, "reset")


def test_down_stops_every_process_it_started(private_env: dict[str, str]) -> None:
    assert stack(private_env, "up").returncode == 0
    run_dir = Path(private_env["NEXES_STACK_DIR"]) / "run"
    state = Path(private_env["NEXES_STACK_DIR"])
    pids = [int(p.read_text().split()[0]) for p in run_dir.glob("*.pid")]
    pids += [int((state / d / "postmaster.pid").read_text().split()[0]) for d in ("primary", "replica")]
    assert len(pids) == 6  # 2 PgBouncers, Redis, Typesense, 2 PostgreSQL
    assert stack(private_env, "down").returncode == 0
    assert [p for p in pids if pid_alive(p)] == []


def test_unknown_service_is_refused_by_name(private_env: dict[str, str]) -> None:
    result = stack(private_env, "up", "mysql")
    assert result.returncode == 1
    assert "unknown service 'mysql'" in result.stderr

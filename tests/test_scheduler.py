"""The scheduler: exactly one is active; a second waits and takes over when the first stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
from psycopg.conninfo import conninfo_to_dict

from nexes.db.connect.conninfo import environ_for_database
from nexes.jobs import scheduler
from nexes.settings import Settings
from tests.support.processes import wait_for_log
from tests.support.scheduler import leading_scheduler
from tests.support.waits import wait_for


def test_a_second_scheduler_waits_until_the_first_stops(settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(scheduler.LOCK_NAME)
    first_stop, second_stop = threading.Event(), threading.Event()
    first = threading.Thread(target=scheduler.run, args=(settings, first_stop), daemon=True)
    first.start()
    assert wait_for(lambda: client.get(scheduler.LOCK_NAME) is not None)
    leader_token = client.get(scheduler.LOCK_NAME)

    second = threading.Thread(target=scheduler.run, args=(settings, second_stop), daemon=True)
    second.start()
    time.sleep(1.5)
    assert second.is_alive()
    assert client.get(scheduler.LOCK_NAME) == leader_token  # the first still leads; the second waits

    first_stop.set()
    first.join(timeout=20)
    assert not first.is_alive()
    assert wait_for(lambda: client.get(scheduler.LOCK_NAME) not in (None, leader_token))  # the second took over
    second_stop.set()
    second.join(timeout=20)
    assert not second.is_alive()
    assert client.get(scheduler.LOCK_NAME) is None  # released on a clean stop


def test_a_leader_whose_lock_another_took_stops_instead_of_leading_beside_it(settings: Settings) -> None:
    """The lock expired while Redis was away and a standby took it (here: its key rewritten
    with another token, as the standby's acquire writes it): at its next renewal the old
    leader stops, so only one scheduler sends the periodic jobs."""
    with leading_scheduler(settings) as (client, leader):
        client.set(scheduler.LOCK_NAME, b"another-scheduler", ex=int(scheduler.LOCK_TTL))
        leader.join(timeout=scheduler.LOCK_TTL / 3 + 10)  # its next renewal, every third of the TTL
        assert not leader.is_alive(), "the old leader still runs beside the new one"
        assert client.get(scheduler.LOCK_NAME) == b"another-scheduler"  # it did not release the other's lock


def test_two_scheduler_processes_one_leads_and_the_other_takes_over_when_it_is_killed(
    settings: Settings, tmp_path: Path
) -> None:
    """`nexes scheduler` twice, as separate processes: only the first builds a schedule
    (the second logs no leadership, so it enqueues nothing); SIGKILL the first (no clean
    release: its lock must run out) and the second leads within the lock's TTL."""
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(scheduler.LOCK_NAME)
    dbname = str(conninfo_to_dict(settings.admin_url)["dbname"])
    env = {**environ_for_database(os.environ, dbname), "NEXES_LOG_LEVEL": "INFO"}
    logs = [tmp_path / "first.log", tmp_path / "second.log"]

    def start(log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen([sys.executable, "-m", "nexes.cli", "scheduler"], env=env, stderr=out, stdout=out)

    def leads(log: Path) -> bool:
        return "scheduler is the leader" in log.read_text()

    first = start(logs[0])
    second: subprocess.Popen[bytes] | None = None
    try:
        assert wait_for(lambda: leads(logs[0]), timeout=30), logs[0].read_text()
        second = start(logs[1])
        assert wait_for_log(logs[1], "scheduler waiting for leadership", timeout=30)
        time.sleep(2)
        assert not leads(logs[1]) and second.poll() is None
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = time.monotonic()
        assert wait_for(lambda: leads(logs[1]), timeout=scheduler.LOCK_TTL + 30), logs[1].read_text()
        assert time.monotonic() - killed_at <= scheduler.LOCK_TTL + 5
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
        assert client.get(scheduler.LOCK_NAME) is None  # released on a clean stop
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

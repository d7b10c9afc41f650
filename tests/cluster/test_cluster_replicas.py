"""Several replicas, each behind its own PgBouncer, and a planned switchover of the
primary (`infra/stack switchover`) while writes and reads run through PgBouncer."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.support.stack import stack
from tests.support.waits import wait_for

pytestmark = pytest.mark.usefixtures("two_replicas")
TABLE = "cluster_switchover_probe"


def as_superuser(url: str) -> str:
    params = conninfo_to_dict(url)
    params.update(user="postgres", dbname="nexes")
    return make_conninfo("", **params)


def replica_bouncers() -> list[str]:
    return [as_superuser(u) for u in os.environ["NEXES_REPLICA_URLS"].split()]


def primary_bouncer() -> str:
    return as_superuser(os.environ["NEXES_PRIMARY_URL"])


def server_of(url: str) -> tuple[str, bool]:
    """(port, in recovery) of the server behind `url`."""
    with psycopg.connect(url, connect_timeout=5, prepare_threshold=None) as conn:
        row = conn.execute("SELECT current_setting('port'), pg_is_in_recovery()").fetchone()
    assert row
    return str(row[0]), bool(row[1])


def test_every_replica_is_a_standby_behind_a_pgbouncer_of_its_own() -> None:
    bouncers = replica_bouncers()
    admin = os.environ["NEXES_REPLICA_ADMIN_URLS"].split()
    servers = [server_of(url) for url in bouncers]
    assert all(in_recovery for _, in_recovery in servers)
    assert len({port for port, _ in servers}) == len(bouncers) >= 2  # each its own server
    # NEXES_REPLICA_ADMIN_URLS and NEXES_MONITOR_REPLICA_URLS name the same servers, in order.
    assert [str(conninfo_to_dict(u)["port"]) for u in admin] == [port for port, _ in servers]
    monitors = os.environ["NEXES_MONITOR_REPLICA_URLS"].split()
    assert [str(conninfo_to_dict(u)["port"]) for u in monitors] == [port for port, _ in servers]


@dataclass
class Load:
    """Writes through the primary's PgBouncer and reads through a replica's, on one
    connection each (as the API's pools hold theirs), until stopped."""

    acked: list[int] = field(default_factory=list)
    write_errors: list[str] = field(default_factory=list)
    read_errors: list[str] = field(default_factory=list)
    reads: int = 0
    longest_write_gap: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def write(self) -> None:
        conn = psycopg.connect(primary_bouncer(), autocommit=True, prepare_threshold=None)
        last = time.monotonic()
        while not self.stop.is_set():
            try:
                row = conn.execute(f"INSERT INTO {TABLE} DEFAULT VALUES RETURNING id").fetchone()
                assert row
                self.acked.append(int(row[0]))
                now = time.monotonic()
                self.longest_write_gap, last = max(self.longest_write_gap, now - last), now
            except psycopg.Error as exc:
                self.write_errors.append(str(exc))
                conn = psycopg.connect(primary_bouncer(), autocommit=True, prepare_threshold=None)
            time.sleep(0.005)
        conn.close()

    def read(self, url: str) -> None:
        conn = psycopg.connect(url, autocommit=True, prepare_threshold=None)
        while not self.stop.is_set():
            try:
                conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
                self.reads += 1
            except psycopg.Error as exc:
                self.read_errors.append(str(exc))
                conn = psycopg.connect(url, autocommit=True, prepare_threshold=None)
            time.sleep(0.005)
        conn.close()


@pytest.fixture
def probe_table() -> Iterator[None]:
    with psycopg.connect(as_superuser(os.environ["NEXES_ADMIN_URL"]), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())")
    yield
    with psycopg.connect(as_superuser(os.environ["NEXES_ADMIN_URL"]), autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


def switch_over_under_load(slot: int) -> Load:
    """`infra/stack switchover SLOT` while a writer and a reader (on the other slot) run."""
    load = Load()
    other = replica_bouncers()[2 - slot]  # the replica that stays a replica throughout
    threads = [threading.Thread(target=load.write), threading.Thread(target=load.read, args=(other,))]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(load.acked) > 50 and load.reads > 50, timeout=20)
        stack("switchover", str(slot))
        before = len(load.acked)
        wait_for(lambda: len(load.acked) > before + 50, timeout=30)
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=30)
    return load


def test_a_planned_switchover_keeps_every_acknowledged_write_and_the_reads(probe_table: None) -> None:
    old_primary, _ = server_of(primary_bouncer())
    old_replica, _ = server_of(replica_bouncers()[0])
    for slot, (primary, replica) in ((1, (old_replica, old_primary)), (1, (old_primary, old_replica))):
        load = switch_over_under_load(slot)
        assert load.write_errors == [] and load.read_errors == []
        assert load.longest_write_gap < 15, load.longest_write_gap  # the bound: writes resume within 15 s
        # The roles moved: the primary's PgBouncer fronts the promoted server, slot 1's the old primary.
        assert server_of(primary_bouncer()) == (primary, False)
        assert server_of(replica_bouncers()[0]) == (replica, True)
        # The multi-host direct URL finds the new primary by itself.
        admin = psycopg.connect(os.environ["NEXES_ADMIN_URL"], connect_timeout=5)
        with admin:
            assert admin.execute("SELECT current_setting('port')").fetchone() == (primary,)
        # Every acknowledged write is on the new primary, and reaches both replicas.
        with psycopg.connect(primary_bouncer(), prepare_threshold=None) as conn:
            found = conn.execute(f"SELECT count(*) FROM {TABLE} WHERE id = ANY(%s)", [load.acked]).fetchone()
        assert found == (len(load.acked),)
        newest = max(load.acked)
        for url in replica_bouncers():

            def replayed(url: str = url, newest: int = newest) -> bool:
                with psycopg.connect(url, prepare_threshold=None) as conn:
                    row = conn.execute(f"SELECT max(id) FROM {TABLE}").fetchone()
                return bool(row and row[0] is not None and row[0] >= newest)

            assert wait_for(replayed, timeout=30), f"{url} did not catch up after the switchover"

"""Issue 20's backup and restore drill, timed step by step.

    python -m bench.restore_drill [--orders 1000000] [--port-offset 30]

On the stack `infra/stack env` describes, with `nexes_drill` seeded (bench.drills seeds it):
1. WAL is archived from the start: `pg_receivewal` streams it into an archive directory,
   through a slot of its own, so no segment is missed and the primary needs no restart.
2. `pg_basebackup` takes a base backup (tar-less, WAL fetched).
3. More is written: orders marked BEFORE, then the chosen time, then orders marked AFTER.
4. The backup is restored into a new data directory at the chosen time (restore_command
   reading the archive, recovery_target_time) and started on a port of its own
   (base + 30: inside the stack's range, and no stack service uses it).
5. Nexes is started on it: `nexes migrate` checks the schema, `nexes reindex` rebuilds the
   search index from it into a collection of its own.
Then: the invariants hold (`nexes.db.invariants`), every BEFORE order is there and no
AFTER order, and search matches the database (`nexes.search.drift`: counts and a sample).
Everything it made (the restored directory, the archive, the slot, the collection) goes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bench.drills import DB, NEXES, drill_env, ensure_database, preflight, report, state_dir
from nexes import settings as settings_module
from nexes.db.invariants import STOCK_LEDGER, check_stock_ledger
from nexes.search import collection, drift
from nexes.search.client import sync_client

SLOT = "nexes_restore_drill"
DROP_SLOT = "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s"
MARKS = 200  # orders written on each side of the chosen time


def pg_bin(tool: str) -> str:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    return str(versions[-1] / tool)


def as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def primary_port() -> int:
    with psycopg.connect(superuser(os.environ["NEXES_ADMIN_URL"])) as conn:
        row = conn.execute("SELECT current_setting('port')::int").fetchone()
    assert row
    return int(row[0])


def superuser(url: str, db: str = "postgres", **extra: Any) -> str:
    params = conninfo_to_dict(url)
    params.update(user="postgres", dbname=db, **extra)
    return make_conninfo("", **params)


@contextmanager
def timed(step: str, figures: dict[str, float]) -> Iterator[None]:
    """Time a step; each is reported as it ends, so a later failure keeps the timings."""
    started = time.monotonic()
    yield
    figures[step] = round(time.monotonic() - started, 1)
    report(step=step, seconds=figures[step])


def write_marks(admin: str, tag: str) -> None:
    """MARKS rows of a table of the drill's own, one transaction each: the restored
    database must hold every BEFORE row and no AFTER row. (Orders written outside the
    write path would break the invariants the drill checks.)"""
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS restore_drill_mark (tag text, n int, at timestamptz DEFAULT now())")
        for n in range(MARKS):
            conn.execute("INSERT INTO restore_drill_mark (tag, n) VALUES (%s, %s)", [tag, n])


class RestoreDrill:
    """The drill's places (archive, backup, restored directory) and its steps, in order."""

    def __init__(self, port: int) -> None:
        self.env = drill_env()
        self.settings = settings_module.load(self.env)
        self.port, self.source = port, primary_port()
        self.work = state_dir() / "restore-drill"
        self.run_dir = state_dir() / "run"
        self.archive, self.backup, self.restored = self.work / "archive", self.work / "base", self.work / "restored"
        self.admin = superuser(self.settings.admin_url, DB)
        self.url = f"postgresql://postgres@127.0.0.1:{port}/{DB}"
        self.figures: dict[str, float] = {}
        self.receiver: subprocess.Popen[bytes] | None = None
        self.server_started = False

    def start_archive(self) -> None:
        """pg_receivewal into the archive, through a slot of its own (no segment missed)."""
        log = self.work / "restored.log"
        if log.exists():  # the restored server's log outlives the drill's directory
            shutil.copy(log, "/tmp/nexes-restore-drill.log")
        shutil.rmtree(self.work, ignore_errors=True)
        self.archive.mkdir(parents=True)
        if os.geteuid() == 0:
            for path in (self.work, self.archive):
                shutil.chown(path, "postgres", "postgres")
        with psycopg.connect(superuser(self.settings.admin_url), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", [SLOT]
            )
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", [SLOT])
        cmd = [pg_bin("pg_receivewal"), "-h", str(self.run_dir), "-p", str(self.source), "-U", "postgres"]
        cmd += ["-D", str(self.archive), "-S", SLOT, "--synchronous"]
        self.receiver = subprocess.Popen(as_postgres(cmd), start_new_session=True)

    def base_backup(self) -> None:
        with timed("base_backup_s", self.figures):
            cmd = [pg_bin("pg_basebackup"), "-h", str(self.run_dir), "-p", str(self.source), "-U", "postgres"]
            subprocess.run(as_postgres([*cmd, "-D", str(self.backup), "-X", "fetch", "-c", "fast"]), check=True)
        size = sum(f.stat().st_size for f in self.backup.rglob("*") if f.is_file())
        self.figures["base_backup_mb"] = round(size / 1e6)

    def write_more(self) -> Any:
        """BEFORE marks, the chosen time, AFTER marks; the WAL switched and archived."""
        with timed("write_more_s", self.figures):
            write_marks(self.admin, "BEFORE")
            with psycopg.connect(self.admin) as conn:
                target = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
            time.sleep(1)
            write_marks(self.admin, "AFTER")
            with psycopg.connect(superuser(self.settings.admin_url), autocommit=True) as conn:
                conn.execute("SELECT pg_switch_wal()")
            time.sleep(2)  # pg_receivewal has the switched segment
        self.stop_archive()
        for partial in self.archive.glob("*.partial"):
            partial.rename(partial.with_suffix(""))
        return target

    def stop_archive(self) -> None:
        if self.receiver is not None and self.receiver.poll() is None:
            os.killpg(self.receiver.pid, signal.SIGINT)
            self.receiver.wait(timeout=30)

    def restore(self, target: Any) -> None:
        """The base backup in a new directory, recovered to `target` from the archive, promoted."""
        with timed("restore_s", self.figures):
            shutil.copytree(self.backup, self.restored)
            subprocess.run(["chown", "-R", "postgres:postgres", str(self.restored)], check=True)
            self.restored.chmod(0o700)
            with (self.restored / "postgresql.auto.conf").open("a") as conf:
                conf.write(
                    f"\nport = {self.port}\nrestore_command = 'cp {self.archive}/%f %p'\n"
                    f"recovery_target_time = '{target.isoformat()}'\nrecovery_target_action = 'promote'\n"
                    "shared_buffers = 512MB\n"
                )
            for stale in ("standby.signal", "postmaster.pid"):
                (self.restored / stale).unlink(missing_ok=True)
            (self.restored / "recovery.signal").touch()
            shutil.chown(self.restored / "recovery.signal", "postgres", "postgres")
            log = self.work / "restored.log"
            start = [pg_bin("pg_ctl"), "-D", str(self.restored), "-l", str(log), "-w", "-t", "600", "start"]
            subprocess.run(as_postgres(start), check=True, cwd="/")
            self.server_started = True
            deadline = time.monotonic() + 600
            while not self.promoted():
                if time.monotonic() > deadline:
                    raise RuntimeError("the restored server did not finish recovery")
                time.sleep(0.5)

    def promoted(self) -> bool:
        with psycopg.connect(self.url) as conn:
            return conn.execute("SELECT NOT pg_is_in_recovery()").fetchone() == (True,)

    def start_nexes(self) -> dict[str, str]:
        """Nexes' settings on the restored server (directly: no PgBouncer in front of it);
        `nexes migrate` checks it, `nexes reindex` rebuilds search from it."""
        url = f"postgresql://127.0.0.1:{self.port}/{DB}"
        monitor = f"postgresql://nexes_monitor@127.0.0.1:{self.port}/{DB}"
        env = {
            **self.env,
            "NEXES_PRIMARY_URL": url,
            "NEXES_REPLICA_URLS": url,
            "NEXES_ADMIN_URL": f"postgresql://nexes_owner@127.0.0.1:{self.port}/{DB}",
            "NEXES_MONITOR_URL": monitor,
            "NEXES_MONITOR_REPLICA_URLS": monitor,
            "NEXES_REPLICA_ADMIN_URLS": self.url,
            "NEXES_TYPESENSE_COLLECTION": f"{DB}_restored",
        }
        with timed("migrate_s", self.figures):
            subprocess.run([NEXES, "migrate"], env=env, check=True, capture_output=True)
        with timed("reindex_s", self.figures):
            subprocess.run([NEXES, "reindex"], env=env, check=True, capture_output=True)
        return env

    def check(self, env: dict[str, str]) -> dict[str, Any]:
        restored_settings = settings_module.load(env)
        client = sync_client(restored_settings)
        with psycopg.connect(self.url) as conn:
            violations = {v.check: v.samples for v in check_stock_ledger(conn)}
            marks: dict[str, int] = dict(
                conn.execute("SELECT tag, count(*) FROM restore_drill_mark GROUP BY tag").fetchall()
            )
            found = drift.check(conn, client, restored_settings.typesense_collection)
        for name in collection.versions(client, restored_settings.typesense_collection):
            client.collections[name].delete()
        client.aliases[restored_settings.typesense_collection].delete()
        return {
            "invariants_checked": list(STOCK_LEDGER),  # in full, every quarter (seconds at 1M, set-based)
            "invariant_violations": violations,
            "before_target_restored": f"{marks.get('BEFORE', 0)}/{MARKS}",
            "after_target_restored": f"{marks.get('AFTER', 0)}/{MARKS} (must be 0)",
            "search": {
                "database_count": found.database_count,
                "index_count": found.index_count,
                "sampled": found.sampled,
                "missing": len(found.missing),
                "stale": len(found.stale),
            },
        }

    def clean_up(self) -> None:
        self.stop_archive()
        if self.server_started:
            subprocess.run(as_postgres([pg_bin("pg_ctl"), "-D", str(self.restored), "-m", "fast", "stop"]), cwd="/")
        with psycopg.connect(superuser(self.settings.admin_url), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", [SLOT]
            )
        with psycopg.connect(self.admin, autocommit=True) as conn:  # the drill database as seeded again
            conn.execute("DROP TABLE IF EXISTS restore_drill_mark")
        log = self.work / "restored.log"
        if log.exists():  # the restored server's log outlives the drill's directory
            shutil.copy(log, "/tmp/nexes-restore-drill.log")
        shutil.rmtree(self.work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--port-offset", type=int, default=30)
    args = parser.parse_args()
    preflight()
    ensure_database(args.orders)
    base = int(os.environ.get("NEXES_STACK_PORT_BASE") or 15430)
    drill = RestoreDrill(base + args.port_offset)
    try:
        drill.start_archive()
        drill.base_backup()
        target = drill.write_more()
        drill.restore(target)
        checked = drill.check(drill.start_nexes())
        report(step="restore", orders=args.orders, target_time=target.isoformat(), seconds=drill.figures, **checked)
    finally:
        drill.clean_up()


if __name__ == "__main__":
    main()

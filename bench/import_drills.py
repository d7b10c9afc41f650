"""Issue 20's job drills: a 200k-order import through real Dramatiq workers while a worker
is SIGKILLed, or while the broker restarts, on Redis or on the stack's RabbitMQ.

    python -m bench.import_drills DRILL [--broker redis|rabbitmq] [--orders 200000]
                                        [--seed-orders 1000000] [--kills 2] [--down 5]

DRILL is one of:
    clean           the import with no fault (the wall time the others compare with)
    kill            SIGKILL the worker process that holds the job's lease, `--kills` times,
                    each at a random moment of the apply phase; the drill then starts the
                    worker again, as its supervisor would (systemd's Restart=always)
    broker-restart  stop the broker (`infra/stack down redis|rabbitmq`) in the apply
                    phase, start it again `--down` seconds later; a second import is sent
                    while the broker is down (the upload must not be refused or lost)

Each drill runs on the stack `infra/stack env` describes (make drill-import-kill starts one
with RabbitMQ), on a database of its own (`nexes_import_drill`, seeded once with
--seed-orders), with `nexes worker --processes 1 --threads 2` and `nexes scheduler` (whose
sweep sends a dead worker's job again once its lease runs out), all with the production
lease (20 s) and sweep (10 s). The scheduler's lock and the rate limits use a Redis
database of the drill's own (db 6), so no worker of another checkout takes its messages.

Afterwards: the job's status; every order of the file exactly once (no SOD number twice,
none missing); the stock exact (each SKU's on_hand moved by what the file's lines imply,
no line's consumption twice); and the invariants in full (nexes.db.invariants.
check_stock_ledger: every order its key, stock equal to the ledger, every line's movements).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

from bench.drills import STACK, preflight, report, superuser
from bench.gen_import import generate_csv
from bench.write_path import FINAL, job, start_process, stop_process, store
from nexes import settings as settings_module
from nexes.db.connect.conninfo import environ_for_database
from nexes.db.invariants import check_stock_ledger
from nexes.jobs.runtime import make_broker

ROOT = Path(__file__).resolve().parent.parent
NEXES = str(ROOT / ".venv" / "bin" / "nexes")
DB = "nexes_import_drill"
REDIS_DB = 6
WORKER = [NEXES, "worker", "--processes", "1", "--threads", "2"]
SCHEDULER = [NEXES, "scheduler"]
LEASE = "SELECT lease_owner, applied_through, status::text, phase FROM import_job WHERE id = %s"


def drill_env(broker: str) -> dict[str, str]:
    """nexes_import_drill, Redis db 6, and the broker asked for (NEXES_BROKER_URL)."""
    env = {**environ_for_database(os.environ, DB), "NEXES_TYPESENSE_COLLECTION": f"{DB}_service_orders"}
    env["NEXES_REDIS_URL"] = urlsplit(env["NEXES_REDIS_URL"])._replace(path=f"/{REDIS_DB}").geturl()
    env.pop("NEXES_BROKER_URL", None)
    env.pop("NEXES_IMPORT_LEASE_SECONDS", None)
    env.pop("NEXES_IMPORT_SWEEP_SECONDS", None)
    if broker == "rabbitmq":
        if not os.environ.get("NEXES_RABBITMQ_URL"):
            sys.exit("import drills: --broker rabbitmq needs a stack with NEXES_STACK_BROKER=rabbitmq")
        env["NEXES_BROKER_URL"] = os.environ["NEXES_RABBITMQ_URL"]
    return env


def ensure_database(env: dict[str, str], orders: int) -> None:
    """nexes_import_drill, migrated and seeded with `orders` once, and its search index
    built once (`nexes reindex`): otherwise the workers' sweep starts that reindex in the
    middle of the first drill, and the drill measures it as much as the import."""
    with psycopg.connect(superuser(os.environ["NEXES_ADMIN_URL"]), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DB]).fetchone():
            conn.execute(f"CREATE DATABASE {DB} OWNER nexes_owner")
    for name, cmd in (
        ("migrate", [NEXES, "migrate"]),
        ("seed", [NEXES, "seed", "--orders", str(orders), "--if-empty"]),
    ):
        started = time.monotonic()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        report(step=name, seconds=round(time.monotonic() - started, 1))
    with psycopg.connect(admin(env), autocommit=True) as conn:
        wanted = conn.execute("SELECT 1 FROM maintenance_flag WHERE name = 'search_reindex_needed'").fetchone()
    if wanted:
        started = time.monotonic()
        subprocess.run([NEXES, "reindex"], env=env, check=True, stdout=subprocess.DEVNULL)
        report(step="reindex", seconds=round(time.monotonic() - started, 1))


def admin(env: dict[str, str]) -> str:
    return settings_module.load(env).admin_url


def expected_from_file(path: Path) -> tuple[set[str], Counter[str]]:
    """The file's SOD numbers, and each SKU's on_hand change its lines imply (a line
    consumes its quantity unless its order is CANCELLED: nexes.db.sql.invariants)."""
    sods: set[str] = set()
    delta: Counter[str] = Counter()
    with path.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            sods.add(row["sod_number"])
            if row["status"] != "CANCELLED":
                delta[row["sku"]] -= int(row["quantity"])
    return sods, delta


def on_hand(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {sku: int(q) for sku, q in conn.execute("SELECT sku, on_hand FROM stock_item")}


def outcome(
    conn: psycopg.Connection[Any], prefixes: list[str], sods: set[str], delta: Counter[str], before: dict[str, int]
) -> dict[str, Any]:
    """Every order of the files once, the stock exact, the invariants in full."""
    patterns = [p + "-%" for p in prefixes]
    found = [
        r[0] for r in conn.execute("SELECT sod_number FROM service_order WHERE sod_number LIKE ANY(%s)", [patterns])
    ]
    keys = conn.execute("SELECT count(*) FROM service_order_key WHERE sod_number LIKE ANY(%s)", [patterns]).fetchone()
    twice = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM stock_movement WHERE sod_number LIKE ANY(%s) AND kind = 'CONSUMPTION' "
        "GROUP BY sod_number, line_no HAVING count(*) > 1) AS d",
        [patterns],
    ).fetchone()
    after = on_hand(conn)
    stock_off = {
        sku: after[sku] - before[sku] - delta.get(sku, 0)
        for sku in after
        if after[sku] - before[sku] != delta.get(sku, 0)
    }
    started = time.monotonic()
    violations = check_stock_ledger(conn)
    return {
        "orders_found": len(found),
        "orders_expected": len(sods),
        "sod_twice": len(found) - len(set(found)),
        "sod_missing": len(sods - set(found)),
        "sod_unexpected": len(set(found) - sods),
        "keys": int(keys[0]) if keys else 0,
        "consumptions_twice": int(twice[0]) if twice else 0,
        "skus_off": len(stock_off),
        "skus_off_sample": dict(list(stock_off.items())[:5]),
        "invariant_violations": {v.check: v.samples for v in violations},
        "invariants_seconds": round(time.monotonic() - started, 1),
    }


class Supervised:
    """`nexes worker` started again whenever it exits, as systemd's Restart=always does.
    Dramatiq's parent shuts down when one of its worker processes dies."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc = start_process(WORKER, env, log)
        self.starts = 1

    def restart_if_gone(self) -> bool:
        if self.proc.poll() is None:
            return False
        self.proc = start_process(WORKER, self.env, self.log)
        self.starts += 1
        return True

    def wait_gone(self, timeout: float = 30.0) -> None:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        stop_process(self.proc)


def lease(conn: psycopg.Connection[Any], job_id: int) -> tuple[str | None, Any, str, str]:
    row = conn.execute(LEASE, [job_id]).fetchone()
    assert row is not None, f"import job {job_id} is gone"
    return row[0], row[1], row[2], row[3]


def wait_apply(conn: psycopg.Connection[Any], job_id: int, workers: Supervised, timeout: float = 600) -> bool:
    """Until the job applies (True) or is final (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers.restart_if_gone()
        _, _, status, phase = lease(conn, job_id)
        if status in FINAL:
            return False
        if status == "RUNNING" and phase == "apply":
            return True
        time.sleep(0.2)
    raise TimeoutError(f"import job {job_id} did not reach its apply phase in {timeout:.0f}s")


def wait_final(conn: psycopg.Connection[Any], job_ids: list[int], workers: Supervised, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers.restart_if_gone()
        if all(job(conn, j)["status"] in FINAL for j in job_ids):
            return
        time.sleep(0.5)
    raise TimeoutError(f"import jobs {job_ids} not final after {timeout:.0f}s")


def kill_owner(conn: psycopg.Connection[Any], job_id: int, workers: Supervised) -> dict[str, Any] | None:
    """SIGKILL the process holding the job's lease (its pid is in lease_owner), let the
    supervisor start the worker again, and time the recovery: until another worker holds
    the job (the lease was swept and the job sent again) and its checkpoint moves."""
    owner, through, status, _ = lease(conn, job_id)
    if status != "RUNNING" or owner is None:
        return None
    pid = int(owner.split(":")[1])
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    load_at_kill = os.getloadavg()
    workers.wait_gone()
    workers.restart_if_gone()
    claimed = resumed = None
    while time.monotonic() - killed_at < 600:
        now_owner, now_through, now_status, _ = lease(conn, job_id)
        elapsed = round(time.monotonic() - killed_at, 1)
        if now_status in FINAL:
            claimed, resumed = claimed or elapsed, resumed or elapsed
            break
        if claimed is None and now_owner not in (None, owner):
            claimed = elapsed
        if claimed is not None and now_through != through:
            resumed = elapsed
            break
        time.sleep(0.2)
    return {
        "killed_pid": pid,
        "checkpoint_at_kill": str(through),
        "claimed_after_s": claimed,
        "resumed_after_s": resumed,
        "loadavg_at_kill": load_at_kill,
    }


@dataclass
class Options:
    drill: str
    broker: str
    orders: int
    seed_orders: int
    kills: int
    down: float


def fault_kills(conn: psycopg.Connection[Any], job_id: int, workers: Supervised, kills: int) -> list[dict[str, Any]]:
    """`kills` SIGKILLs of the lease holder, each at a random moment of the apply phase."""
    rng = random.Random(20)
    faults = []
    for _ in range(kills):
        if not wait_apply(conn, job_id, workers):
            break
        time.sleep(rng.uniform(3.0, 10.0))
        if (fault := kill_owner(conn, job_id, workers)) is None:
            break
        faults.append(fault)
        report(step="kill", **fault)
    return faults


def fault_broker_restart(
    conn: psycopg.Connection[Any],
    env: dict[str, str],
    opts: Options,
    job_ids: list[int],
    *,
    late: Path,
    workers: Supervised,
) -> list[dict[str, Any]]:
    """The broker stopped in the apply phase, `late` uploaded while it is down, the broker
    started again `opts.down` seconds later; until the job's checkpoint moves again."""
    if not wait_apply(conn, job_ids[0], workers):
        return []
    time.sleep(random.Random(20).uniform(3.0, 8.0))
    fault_at, load_at = time.monotonic(), os.getloadavg()
    subprocess.run([STACK, "down", opts.broker], check=True, capture_output=True, timeout=300)
    stopped = time.monotonic()
    try:
        job_ids.append(store(env, late))  # `nexes import`: stored, its message lost
    finally:
        time.sleep(opts.down)
        subprocess.run([STACK, "up", opts.broker], check=True, capture_output=True, timeout=300)
    back = time.monotonic()
    through, resumed = lease(conn, job_ids[0])[1], None
    while time.monotonic() - back < 600:
        workers.restart_if_gone()
        _, now_through, status, _ = lease(conn, job_ids[0])
        if status in FINAL or now_through != through:
            resumed = round(time.monotonic() - back, 1)
            break
        time.sleep(0.2)
    fault = {
        "broker": opts.broker,
        "stop_s": round(stopped - fault_at, 1),
        "down_s": round(back - fault_at, 1),
        "checkpoint_moved_after_up_s": resumed,
        "loadavg_at_fault": load_at,
    }
    report(step="broker-restart", **fault)
    return [fault]


def run(opts: Options) -> None:
    preflight()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    report(step="uptime", uptime=uptime)
    env = drill_env(opts.broker)
    ensure_database(env, opts.seed_orders)
    make_broker(env.get("NEXES_BROKER_URL") or env["NEXES_REDIS_URL"], 5.0).flush_all()  # no earlier run's
    with tempfile.TemporaryDirectory(prefix="nexes-import-drill-") as tmp:
        directory = Path(tmp)
        prefix = f"D{time.strftime('%H%M%S')}{opts.drill[0].upper()}{opts.broker[0].upper()}"
        files = [(prefix, directory / f"{prefix}.csv")]
        lines = generate_csv(files[0][1], opts.orders, prefix=prefix, seed=20)
        if opts.drill == "broker-restart":  # the upload sent while the broker is down
            files.append((f"{prefix}L", directory / f"{prefix}L.csv"))
            generate_csv(files[1][1], 2_000, prefix=files[1][0], seed=21)
        sods: set[str] = set()
        delta: Counter[str] = Counter()
        for _, path in files:
            file_sods, file_delta = expected_from_file(path)
            sods |= file_sods
            delta.update(file_delta)
        log = directory / "processes.log"
        with psycopg.connect(admin(env), autocommit=True) as conn:
            before = on_hand(conn)
            count_before = conn.execute("SELECT count(*) FROM service_order").fetchone()
            scheduler = start_process(SCHEDULER, env, log)
            workers = Supervised(env, log)
            try:
                started = time.monotonic()
                job_ids = [store(env, files[0][1])]
                faults: list[dict[str, Any]] = []
                if opts.drill == "kill":
                    faults = fault_kills(conn, job_ids[0], workers, opts.kills)
                elif opts.drill == "broker-restart":
                    faults = fault_broker_restart(conn, env, opts, job_ids, late=files[1][1], workers=workers)
                wait_final(conn, job_ids, workers)
                wall = time.monotonic() - started
            finally:
                workers.stop()
                stop_process(scheduler)
            states = [job(conn, j) for j in job_ids]
            count_after = conn.execute("SELECT count(*) FROM service_order").fetchone()
            result = outcome(conn, [p for p, _ in files], sods, delta, before)
        errors = Counter(
            json.loads(line).get("msg", "")[:120]
            for line in log.read_text(errors="replace").splitlines()
            if line.startswith("{") and '"level":"ERROR"' in line
        )
    fields = ("status", "inserted", "updated", "unchanged", "failed", "message", "job_seconds")
    report(
        drill=f"import-{opts.drill}",
        broker=opts.broker,
        orders=opts.orders,
        lines=lines,
        jobs=[{"id": j, **{k: s[k] for k in fields}} for j, s in zip(job_ids, states, strict=True)],
        wall_seconds=round(wall, 1),
        faults=faults,
        worker_starts=workers.starts,
        orders_in_database={
            "before": count_before[0] if count_before else None,
            "after": count_after[0] if count_after else None,
        },
        lease_s=settings_module.load(env).import_lease_seconds,
        sweep_s=settings_module.load(env).import_sweep_seconds,
        loadavg_end=os.getloadavg(),
        logged_errors=dict(errors),
        **result,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("drill", choices=("clean", "kill", "broker-restart"))
    parser.add_argument("--broker", choices=("redis", "rabbitmq"), default="redis")
    parser.add_argument("--orders", type=int, default=200_000)
    parser.add_argument("--seed-orders", type=int, default=1_000_000)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--down", type=float, default=5.0, help="seconds the broker stays down")
    args = parser.parse_args()
    run(Options(args.drill, args.broker, args.orders, args.seed_orders, args.kills, args.down))


if __name__ == "__main__":
    main()

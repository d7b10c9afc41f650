"""The write path over nexes_bench: an import against raw COPY, the API under import load, reconciliation.

    python -m bench.run import [--orders 1000000] [--py-spy /tmp/pyspy/bin/py-spy]
    python -m bench.run import-load [--orders 300000] [--requests 2000]
    python -m bench.run import-statements [--orders 5000]
    python -m bench.run import-recovery [--orders 200000] [--kills 3]
    python -m bench.run reconcile

Imports go the way `nexes import FILE` sends them (the file stored in PostgreSQL, the
job enqueued) to real Dramatiq workers (`dramatiq nexes.jobs --processes 1 --threads 2`)
started here. Their messages go through a Redis database of the benchmark's own, so
that workers of other checkouts on the same Redis never take them (and ours never
take theirs).
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
from psycopg import sql

from bench.gen_import import COLUMNS, generate_csv
from bench.run import DB, ROOT, _p99, bench_env, process, report, superuser
from bench.samplers import PySpy, Sampler, descendants, short
from bench.tokens import bearer
from nexes import settings as settings_module
from nexes.db import reconcile as reconcile_sql
from nexes.db.partitions import next_quarter, quarters
from nexes.resolvers.ids import decode_any_global_id

REDIS_DB = 7
API_PORT = 18050
PAGE = "{ serviceOrders(first: 50) { edges { node { sodNumber status totalAmount customer { name } } } } }"
FINAL = ("SUCCEEDED", "PARTIAL", "FAILED", "CANCELLED")
JOB = """
SELECT status::text, phase, staged_rows, processed_rows, inserted, updated, unchanged, failed, message,
       extract(epoch FROM finished_at - started_at)::float8
FROM import_job WHERE id = %s
"""


def worker_env() -> dict[str, str]:
    """nexes_bench everywhere, and the benchmark's own Redis database."""
    env = bench_env()
    env["NEXES_REDIS_URL"] = urlsplit(env["NEXES_REDIS_URL"])._replace(path=f"/{REDIS_DB}").geturl()
    return env


def code_state() -> dict[str, Any]:
    """The commit measured, and the files under nexes/ that others had changed in the shared tree."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "nexes"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    return {"commit": head.strip(), "uncommitted": [line[3:] for line in dirty.splitlines()]}


def admin_url(env: dict[str, str]) -> str:
    return settings_module.load(env).admin_url


def make_file(directory: Path, orders: int, tag: str) -> tuple[Path, int]:
    """A valid import file whose SOD numbers no earlier run used, so every order inserts."""
    prefix = f"W{time.strftime('%y%m%d%H%M%S')}{tag}"
    with psycopg.connect(admin_url(worker_env())) as conn:
        row = conn.execute("SELECT (SELECT count(*) FROM customer), (SELECT count(*) FROM stock_item)").fetchone()
    customers, skus = row if row else (200, 50)
    path = directory / f"{prefix}.csv"
    started = time.monotonic()
    lines = generate_csv(path, orders, prefix=prefix, customers=min(customers, 50_000), skus=min(skus, 2_000))
    report(
        bench="import-file",
        orders=orders,
        lines=lines,
        bytes=path.stat().st_size,
        seconds=round(time.monotonic() - started, 1),
    )
    return path, lines


DRAMATIQ = [str(Path(sys.executable).parent / "dramatiq"), "nexes.jobs", "--processes", "1", "--threads", "2"]


def start_process(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`cmd` in a process group of its own (so that stop_process reaches its children)."""
    with log.open("ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=out, start_new_session=True)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM to its group, then SIGKILL after `timeout` s; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def workers(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`dramatiq nexes.jobs --processes 1 --threads 2`, stopped by its process group."""
    proc = start_process(DRAMATIQ, env, log)
    try:
        deadline = time.monotonic() + 60
        while len(descendants(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"dramatiq exited ({proc.returncode}); see {log}")
        yield proc
    finally:
        stop_process(proc)


def store(env: dict[str, str], path: Path) -> int:
    """`nexes import FILE`: stored in PostgreSQL, enqueued; the job's id."""
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "nexes.cli", "import", str(path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    decoded = decode_any_global_id(out.split()[-1])
    assert decoded and decoded[0] == "ImportJob", out
    report(bench="import-upload", file=path.name, job=decoded[1], seconds=round(time.monotonic() - started, 1))
    return decoded[1]


def job(conn: psycopg.Connection[Any], job_id: int) -> dict[str, Any]:
    row = conn.execute(JOB, [job_id]).fetchone()
    assert row, f"import job {job_id} is gone"
    names = (
        "status",
        "phase",
        "staged_rows",
        "processed_rows",
        "inserted",
        "updated",
        "unchanged",
        "failed",
        "message",
        "job_seconds",
    )
    return dict(zip(names, row, strict=True))


def applying(conn: psycopg.Connection[Any], job_id: int) -> bool:
    state = job(conn, job_id)
    return bool(state["status"] == "RUNNING" and state["phase"] == "apply")


def wait_final(
    conn: psycopg.Connection[Any], job_id: int, timeout: float = 4 * 3600
) -> tuple[dict[str, Any], float | None]:
    """Poll every 0.5 s until the job is final; also when its apply phase began (seconds from now)."""
    started = time.monotonic()
    apply_at = None
    while time.monotonic() - started < timeout:
        state = job(conn, job_id)
        if apply_at is None and state["phase"] in ("apply", "done"):
            apply_at = time.monotonic() - started
        if state["status"] in FINAL:
            return state, apply_at
        time.sleep(0.5)
    raise TimeoutError(f"import job {job_id} not final after {timeout}s")


def raw_copy(conninfo: str, path: Path, orders: int) -> float:
    """COPY of the same file into a plain 10-text-column table without indexes; rows/s."""
    columns = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in COLUMNS)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_copy_raw")
        conn.execute(sql.SQL("CREATE TABLE bench_copy_raw ({})").format(columns))
        try:
            started = time.monotonic()
            with (
                conn.cursor().copy("COPY bench_copy_raw FROM STDIN (FORMAT csv, HEADER true)") as copy,
                path.open("rb") as file,
            ):
                while block := file.read(1 << 20):
                    copy.write(block)
            seconds = time.monotonic() - started
            row = conn.execute("SELECT count(*) FROM bench_copy_raw").fetchone()
        finally:
            conn.execute("DROP TABLE IF EXISTS bench_copy_raw")
    rows = row[0] if row else 0
    report(
        bench="raw-copy",
        rows=rows,
        seconds=round(seconds, 1),
        rows_per_s=round(rows / seconds),
        orders_per_s=round(orders / seconds),
    )
    return orders / seconds


def bench_import(orders: int, py_spy: str | None) -> None:
    env = worker_env()
    conninfo = admin_url(env)
    with tempfile.TemporaryDirectory(prefix="nexes-bench-") as tmp:
        path, lines = make_file(Path(tmp), orders, "I")
        copy_orders_per_s = raw_copy(conninfo, path, orders)
        with workers(env, Path(tmp) / "worker.log") as proc, psycopg.connect(conninfo, autocommit=True) as conn:
            child = next(p for p in descendants(proc.pid) if p != proc.pid)
            profiler = PySpy(py_spy, child, Path(tmp) / "py-spy.txt") if py_spy else None
            job_id = store(env, path)
            sampler = Sampler(proc.pid, superuser(conninfo), DB)
            sampler.start()
            started = time.monotonic()
            state, apply_at = wait_final(conn, job_id)
            wall = time.monotonic() - started
            sampler.stop.set()
            sampler.join()
            stacks = profiler.finish() if profiler else {}
            if state["status"] != "SUCCEEDED":
                print((Path(tmp) / "worker.log").read_text()[-4000:], file=sys.stderr)
    seconds = state["job_seconds"]
    report(
        bench="import",
        orders=orders,
        lines=lines,
        job=job_id,
        outcome={k: state[k] for k in ("status", "inserted", "updated", "unchanged", "failed", "message")},
        job_seconds=round(seconds, 1),
        wall_seconds=round(wall, 1),
        stage_seconds=round(apply_at, 1) if apply_at is not None else None,
        orders_per_s=round(orders / seconds),
        lines_per_s=round(lines / seconds),
        wall_orders_per_s=round(orders / wall),
        wall_lines_per_s=round(lines / wall),
        raw_copy_orders_per_s=round(copy_orders_per_s),
        import_over_copy=round(orders / seconds / copy_orders_per_s, 3),
        loadavg=os.getloadavg(),
        code=code_state(),
        **sampler.figures(),
    )
    if stacks:
        report(bench="import-py-spy", **stacks)


def bench_recovery(orders: int, kills: int) -> None:
    """A SIGKILLed worker's job, with the default lease and sweep: seconds from the kill
    until another worker holds the job and its checkpoint moves again.

    The worker (`dramatiq nexes.jobs`, parent and children) is SIGKILLed `kills` times at
    random moments of the apply phase and started again at once, as `nexes dev` (`make
    run`) restarts it; `nexes scheduler` runs its sweep throughout. Nothing in the
    environment shortens the lease (20 s) or the sweep (10 s)."""
    shorteners = ("NEXES_IMPORT_LEASE_SECONDS", "NEXES_IMPORT_SWEEP_SECONDS")
    env = {k: v for k, v in worker_env().items() if k not in shorteners}
    conninfo = admin_url(env)
    scheduler_cmd = [sys.executable, "-m", "nexes.cli", "scheduler"]
    rng = random.Random(4)
    recoveries: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nexes-bench-") as tmp:
        log = Path(tmp) / "processes.log"
        path, _ = make_file(Path(tmp), orders, "R")
        scheduler = start_process(scheduler_cmd, env, log)
        worker = start_process(DRAMATIQ, env, log)
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                job_id = store(env, path)
                lease = "SELECT lease_owner, applied_through, status::text FROM import_job WHERE id = %s"
                for _ in range(kills):
                    deadline = time.monotonic() + 600
                    while not applying(conn, job_id) and time.monotonic() < deadline:
                        time.sleep(0.2)
                    time.sleep(rng.uniform(1.0, 6.0))
                    row = conn.execute(lease, [job_id]).fetchone()
                    assert row is not None
                    if row[2] != "RUNNING":
                        break  # finished before this kill: fewer kills than asked
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
                    killed_at, owner, through = time.monotonic(), row[0], row[1]
                    worker = start_process(DRAMATIQ, env, log)
                    while time.monotonic() - killed_at < 600:
                        now = conn.execute(lease, [job_id]).fetchone()
                        assert now is not None
                        if now[2] != "RUNNING" or (now[0] not in (None, owner) and now[1] != through):
                            break
                        time.sleep(0.2)
                    recoveries.append(round(time.monotonic() - killed_at, 1))
                state, _ = wait_final(conn, job_id)
        finally:
            stop_process(worker)
            stop_process(scheduler)
    report(
        bench="import-recovery",
        orders=orders,
        kills=len(recoveries),
        resumed_after_s=recoveries,
        worst_s=max(recoveries, default=None),
        outcome={k: state[k] for k in ("status", "inserted", "updated", "unchanged", "failed")},
        lease_s=settings_module.load(env).import_lease_seconds,
        sweep_s=settings_module.load(env).import_sweep_seconds,
        code=code_state(),
    )


def latencies(client: httpx.Client, url: str, count: int, keep_going: Any = None) -> dict[str, Any]:
    """`count` sequential page requests (fewer when `keep_going()` turns false); failures counted."""
    ms: list[float] = []
    failures: dict[str, int] = {}
    for n in range(count):
        if keep_going is not None and n % 20 == 0 and not keep_going():
            break
        started = time.perf_counter()
        try:
            response = client.post(url, json={"query": PAGE})
            body = response.json()
            problem = None if response.status_code == 200 and "errors" not in body else f"HTTP {response.status_code}"
            if problem is None and len(body["data"]["serviceOrders"]["edges"]) != 50:
                problem = "short page"
        except (httpx.HTTPError, ValueError) as exc:
            problem = type(exc).__name__
        ms.append((time.perf_counter() - started) * 1000)
        if problem:
            failures[problem] = failures.get(problem, 0) + 1
    return {
        "requests": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(_p99(ms), 1),
        "max_ms": round(max(ms), 1),
        "failures": failures,
        "loadavg": os.getloadavg(),
    }


def bench_import_load(orders: int, requests: int) -> None:
    """Page latency idle, then with both worker threads busy with one import each (orders/2 apiece)."""
    env = worker_env()
    conninfo = admin_url(env)
    url = f"http://127.0.0.1:{API_PORT}/graphql"
    serve = [sys.executable, "-m", "nexes.cli", "serve", "--port", str(API_PORT), "--workers", "2"]
    with tempfile.TemporaryDirectory(prefix="nexes-bench-") as tmp:
        files = [make_file(Path(tmp), orders // 2, tag)[0] for tag in ("L", "M")]
        with (
            process(serve, env, url, {"query": PAGE}, headers=bearer(env, "viewer")),
            workers(env, Path(tmp) / "worker.log"),
            psycopg.connect(conninfo, autocommit=True) as conn,
            httpx.Client(timeout=30, headers=bearer(env, "viewer")) as client,
        ):
            latencies(client, url, 50)  # warm-up: connections, parse caches
            idle = latencies(client, url, requests)
            jobs = [store(env, f) for f in files]
            # Measured in the apply phase, where an import spends nearly all its time.
            while not all(applying(conn, j) for j in jobs):
                time.sleep(0.2)
            loaded = latencies(client, url, requests, lambda: all(applying(conn, j) for j in jobs))
            still_running = all(applying(conn, j) for j in jobs)
            outcomes = [wait_final(conn, j)[0] for j in jobs]
    report(
        bench="import-load",
        import_orders=orders,
        jobs=len(jobs),
        idle=idle,
        loaded=loaded,
        both_imports_ran_throughout=still_running,
        p99_loaded_over_idle=round(loaded["p99_ms"] / idle["p99_ms"], 2),
        code=code_state(),
        import_outcomes=[{k: o[k] for k in ("status", "inserted", "failed", "job_seconds")} for o in outcomes],
    )


def stats_and_stock(conninfo: str) -> float:
    """The reconciliation without its per-line ledger check: the same statements of
    nexes.db.reconcile, timed alone (the command runs all three together)."""
    run = uuid.uuid4()
    started = time.monotonic()
    with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
        row = conn.execute(reconcile_sql.BOUNDS).fetchone()
        first, last = row if row else (None, None)
        for start in quarters(first, last) if first and last else []:
            conn.execute(reconcile_sql.SLICE, {"lo": start, "hi": next_quarter(start), "run": run})
        conn.execute(reconcile_sql.STOCK, {"run": run})
    return time.monotonic() - started


def bench_reconcile() -> None:
    env = bench_env()
    conninfo = admin_url(env)
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM service_order").fetchone()
    partial = stats_and_stock(conninfo)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "nexes.cli", "reconcile"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode:
        sys.exit(f"nexes reconcile failed ({done.returncode}):\n{done.stderr[-4000:]}")
    out = done.stdout
    seconds = time.monotonic() - started
    counts = {name: int(n) for n, name in re.findall(r"(\d+) (dashboard|on-hand|item|line)", out)}
    report(
        bench="reconcile",
        orders=row[0] if row else None,
        stats_and_on_hand_seconds=round(partial, 1),
        full_seconds=round(seconds, 1),
        output=out.strip(),
        counts=counts,
        # Stock below zero is allowed (and reported); drift is a correction or a mismatch.
        zero_drift=len(counts) == 4 and counts["dashboard"] == counts["on-hand"] == counts["line"] == 0,
        loadavg=os.getloadavg(),
    )


def apply_statements(orders: int, chunks: int) -> None:
    """order_write's apply script one statement at a time, on `chunks` chunks of new orders
    staged like an import's, in transactions rolled back: pg_stat_activity sees the script
    as one query (a single round trip), so this is where its time goes, triggers included."""
    from nexes.db import order_write
    from nexes.db.connect.conninfo import for_role

    env = worker_env()
    settings = settings_module.load(env)
    conninfo = for_role(settings.primary_url, settings, "nexes_worker", application_name="nexes-bench")
    with tempfile.TemporaryDirectory(prefix="nexes-bench-") as tmp:
        path, _ = make_file(Path(tmp), orders * chunks, "P")
        rows = list(csv.DictReader(path.open(newline="", encoding="utf-8")))
    statements = [order_write.BOUNDS, *order_write.APPLY, *order_write.APPLY_HOT]
    with psycopg.connect(conninfo, prepare_threshold=None) as conn:
        customers: dict[str, int] = dict(conn.execute("SELECT code, id FROM customer").fetchall())
        items: dict[str, int] = dict(conn.execute("SELECT sku, id FROM stock_item").fetchall())
        by_order: dict[str, list[dict[str, str]]] = {}
        for row in rows:
            by_order.setdefault(row["sod_number"], []).append(row)
        sods = sorted(by_order)
        batches = [[by_order[s] for s in sods[n * orders : (n + 1) * orders]] for n in range(chunks)]
        # As the worker runs it (JIT as the server has it), then with JIT off for the transaction.
        for jit in (None, "off"):
            wall: dict[str, float] = dict.fromkeys(map(short, statements), 0.0)
            triggers: dict[str, float] = {}
            for batch in batches:
                with conn.transaction(force_rollback=True):
                    if jit:
                        conn.execute("SET LOCAL jit = off")
                    conn.execute(order_write.STAGE_SCRIPT)
                    _stage(conn, batch, customers, items)
                    for statement in statements:
                        started = time.perf_counter()
                        if EXPLAINABLE.match(statement):
                            plan = conn.execute(sql.SQL(EXPLAIN).format(sql.SQL(statement))).fetchone()
                            for trigger in plan[0][0].get("Triggers", []) if plan else []:
                                name = f"{trigger['Trigger Name']} on {trigger['Relation']}"
                                triggers[name] = triggers.get(name, 0.0) + trigger["Time"] / 1000
                        else:
                            conn.execute(statement)
                        wall[short(statement)] += time.perf_counter() - started
            _report_statements(orders, chunks, jit or "server default", wall, triggers)


def _report_statements(orders: int, chunks: int, jit: str, wall: dict[str, float], triggers: dict[str, float]) -> None:
    total = sum(wall.values())
    report(
        bench="import-apply-statements",
        jit=jit,
        orders_per_chunk=orders,
        chunks=chunks,
        seconds_per_chunk=round(total / chunks, 3),
        statements=[
            {"share": round(s / total, 3), "ms_per_chunk": round(s * 1000 / chunks), "statement": q}
            for q, s in sorted(wall.items(), key=lambda kv: -kv[1])[:12]
        ],
        triggers=[
            {"share": round(s / total, 3), "ms_per_chunk": round(s * 1000 / chunks), "trigger": t}
            for t, s in sorted(triggers.items(), key=lambda kv: -kv[1])[:8]
        ],
    )


EXPLAIN = "EXPLAIN (ANALYZE, FORMAT JSON) {}"  # with trigger times (per-node timing adds a little)
EXPLAINABLE = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE TEMP TABLE \w+ ON COMMIT DROP AS)", re.I)


def _stage(
    conn: psycopg.Connection[Any], orders: list[list[dict[str, str]]], customers: dict[str, int], items: dict[str, int]
) -> None:
    """stage_order and stage_line filled as the import's chunk statements fill them (valid rows only)."""
    with conn.cursor().copy(
        "COPY stage_order (sod_number, created_at, created_at_given, customer_id, status, description, currency, mode)"
        " FROM STDIN"
    ) as copy:
        for lines in orders:
            o = lines[0]
            copy.write_row(
                (
                    o["sod_number"],
                    o["created_at"],
                    True,
                    customers[o["customer_code"]],
                    o["status"],
                    o["description"],
                    o["currency"],
                    "upsert",
                )
            )
    with conn.cursor().copy(
        "COPY stage_line (sod_number, line_no, stock_item_id, quantity, unit_price) FROM STDIN"
    ) as copy:
        for lines in orders:
            for line in lines:
                copy.write_row(
                    (line["sod_number"], line["line_no"], items[line["sku"]], line["quantity"], line["unit_price"])
                )

"""`nexes ...`: the command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from nexes import settings as settings_module

log = logging.getLogger("nexes.cli")
T = TypeVar("T")


def _settings() -> settings_module.Settings:
    try:
        settings = settings_module.load()
    except settings_module.SettingsError as exc:
        sys.exit(f"nexes: {exc}")
    from nexes.observability import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    return settings


def cmd_migrate(args: argparse.Namespace) -> None:
    from nexes.db.migrate import MigrationError, migrate

    try:
        applied = migrate(_settings())
    except MigrationError as exc:
        sys.exit(f"nexes migrate: {exc}")
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))


def cmd_seed(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from nexes.db.seed import SeedError, has_orders, seed

    settings = _settings()
    if args.orders < 1:
        sys.exit("nexes seed: --orders must be at least 1")
    if args.if_empty:
        with psycopg.connect(settings.admin_url) as conn:
            if has_orders(conn):
                print("seed: the database already holds orders; nothing to do")
                return
    started = time.monotonic()
    try:
        with tqdm(total=args.orders, unit="orders", unit_scale=True, desc="seed", disable=None) as bar:
            seed(
                settings.admin_url,
                args.orders,
                parallel=args.parallel,
                defer=args.defer_indexes,
                progress=bar.update,
                status=lambda msg: bar.write(f"{time.monotonic() - started:7.1f}s {msg}"),
            )
    except SeedError as exc:
        sys.exit(f"nexes seed: {exc}")
    elapsed = time.monotonic() - started
    print(f"seeded {args.orders:,} orders in {elapsed:.1f}s ({args.orders / elapsed:,.0f} orders/s)")


def cmd_partitions(args: argparse.Namespace) -> None:
    from nexes.db import audit, partitions

    settings = _settings()
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        created = partitions.ensure(
            conn, years_back=settings.partition_years_back, quarters_ahead=settings.partitions_ahead
        )
        made, dropped = audit.maintain(
            conn, audit.cli(), retention_days=settings.audit_retention_days, quarters_created=created
        )
    print(f"created {created} partition(s); audit_event: {len(made)} month(s) made, {len(dropped)} dropped")


def cmd_archive(args: argparse.Namespace) -> None:
    from nexes.db.archive import archive

    settings = _settings()
    years = settings.archive_after_years if args.after_years is None else args.after_years
    if years < 0:
        sys.exit("nexes archive: --after-years must be zero or more")
    if years == 0:
        print("archiving is off (after 0 years); nothing to do")
        return
    steps = archive(settings.admin_url, after_years=years, dry_run=args.dry_run)
    if steps and not args.dry_run:
        from nexes.db import audit

        with psycopg.connect(settings.admin_url, autocommit=True) as conn:
            changes = {"steps": steps[:20], "stepCount": len(steps)}
            by = audit.cli()
            audit.record_sync(conn, by, "archiveQuarters", entity="Partition", key="service_order", changes=changes)
    for step in steps:
        print(("would " if args.dry_run else "") + step)
    print(f"{len(steps)} step(s) {'planned' if args.dry_run else 'done'} for quarters older than {years} year(s)")


def cmd_import(args: argparse.Namespace) -> None:
    """Store FILE in PostgreSQL as nexes_worker, enqueue it, print the job's id; --wait for the outcome."""
    import asyncio

    from nexes.errors import NexesError
    from nexes.resolvers.ids import global_id

    settings = _settings()
    path = Path(args.file)
    if not path.is_file():
        sys.exit(f"nexes import: {args.file}: not a readable file")
    if path.stat().st_size > settings.import_max_bytes:
        sys.exit(f"nexes import: {args.file} is larger than NEXES_IMPORT_MAX_BYTES ({settings.import_max_bytes})")
    try:
        job_id = asyncio.run(_store_import(settings, path))
    except NexesError as exc:
        sys.exit(f"nexes import: {exc.message}")
    print(global_id("ImportJob", job_id), flush=True)
    if args.wait:
        sys.exit(asyncio.run(_wait_import(settings, job_id, args.timeout)))


async def _import_connection(settings: settings_module.Settings) -> psycopg.AsyncConnection[Any]:
    from nexes.db.connect.conninfo import for_role

    conninfo = for_role(settings.primary_url, settings, "nexes_worker", application_name="nexes-import")
    return await psycopg.AsyncConnection.connect(conninfo, autocommit=True, prepare_threshold=None)


async def _store_import(settings: settings_module.Settings, path: Path) -> int:
    from nexes.db import audit
    from nexes.imports.store import CHUNK_BYTES, UploadWriter
    from nexes.imports.upload import enqueue
    from nexes.observability import new_request_id, request_id_var

    request_id_var.set(new_request_id())  # travels with the job and its message
    async with await _import_connection(settings) as conn:

        async def run(work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
            return await work(conn)

        writer = UploadWriter(
            run,
            filename=path.name,
            max_bytes=settings.import_max_bytes,
            retention_days=settings.import_retention_days,
            created_by=audit.cli().name,
        )
        await writer.start()
        try:
            with path.open("rb") as file:
                while block := file.read(CHUNK_BYTES):
                    await writer.write(block)
            upload = await writer.finish()
        except BaseException:
            await writer.abort()
            raise
    await enqueue(upload)
    return upload.job_id


async def _wait_import(settings: settings_module.Settings, job_id: int, timeout: float | None) -> int:
    """Poll until the job is final: 0 SUCCEEDED, 1 PARTIAL/FAILED/CANCELLED, 2 timed out."""
    import asyncio

    from nexes.db import imports as import_jobs

    deadline = None if timeout is None else time.monotonic() + timeout
    async with await _import_connection(settings) as conn:
        while True:
            job = await import_jobs.get_job(conn, job_id)
            if job is None:
                print("the job no longer exists", file=sys.stderr)
                return 1
            if job.status in import_jobs.FINAL_STATUSES:
                print(
                    f"{job.status}: {job.inserted} inserted, {job.updated} updated, {job.unchanged} unchanged, "
                    f"{job.failed} row(s) failed" + (f"; {job.message}" if job.message else "")
                )
                return 0 if job.status == "SUCCEEDED" else 1
            if deadline is not None and time.monotonic() >= deadline:
                print(f"timed out: still {job.status} after {timeout}s, {job.processed_rows} row(s) processed")
                return 2
            await asyncio.sleep(0.5)


def cmd_serve(args: argparse.Namespace) -> None:
    """uvicorn on the public port; /metrics only on NEXES_OPS_LISTEN, served by this process.

    prometheus_client's multiprocess mode: a fresh PROMETHEUS_MULTIPROC_DIR is set here,
    before this process or any worker imports prometheus_client, and this (supervising)
    process serves the whole directory, every worker's series in one scrape
    (nexes/metrics.py says why not SO_REUSEPORT). The directory goes when serve stops."""
    import tempfile

    import uvicorn

    from nexes.observability import logging_config

    settings = _settings()  # fail early, naming the setting, before uvicorn starts workers
    try:
        settings.check_api()
    except settings_module.SettingsError as exc:
        sys.exit(f"nexes serve: {exc}")
    if args.workers >= settings.monitor_connection_limit:
        # Each worker probes each server over one nexes_monitor connection; past the role's
        # limit the last ones' probes fail, and their servers look down.
        sys.exit(
            f"nexes serve: --workers {args.workers} needs NEXES_MONITOR_CONNECTION_LIMIT of at least "
            f"{args.workers + 1} (it is {settings.monitor_connection_limit}; then run `nexes migrate`)"
        )
    directory = Path(tempfile.mkdtemp(prefix="nexes-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # read by prometheus_client at import
    from nexes import metrics

    try:
        metrics.serve_ops(settings.ops_listen, directory)
    except metrics.OpsListenError as exc:
        shutil.rmtree(directory, ignore_errors=True)
        sys.exit(f"nexes serve: {exc}")

    def remove_and_die(signum: int, frame: object) -> None:
        # uvicorn re-raises the SIGTERM it handled once it has shut down: clean up, then die of it.
        shutil.rmtree(directory, ignore_errors=True)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, remove_and_die)
    try:
        uvicorn.run(
            "nexes.http.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            # httptools, with a shutdown that drains idle keep-alive connections (rolling restarts).
            http="nexes.http.draining:DrainingProtocol",
            timeout_graceful_shutdown=10,
            # SIGHUP restarts the workers in turn, each replacement serving before its old
            # worker is stopped, and gives up when a replacement is not ready within this:
            # on two loaded cores one took 7-10 s to import and fill its pools (uvicorn's 5 s
            # default aborted the restart).
            timeout_worker_healthcheck=60,
            log_config=logging_config(settings.log_level, settings.log_format),
            access_log=settings.access_log,
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# Only the ddl worker (and the `nexes` commands) get the owner's and the replicas'
# superuser URLs; every other process runs without them.
OWNER_VARIABLES = ("NEXES_ADMIN_URL", "NEXES_REPLICA_ADMIN_URLS")


def cmd_worker(args: argparse.Namespace) -> None:
    """`dramatiq nexes.jobs`: as nexes_worker without the owner's URLs, every queue but ddl;
    with --ddl, the ddl queue alone (partitions, archive), the one worker given NEXES_ADMIN_URL."""
    settings = _settings()
    command = [sys.executable, "-m", "dramatiq", "nexes.jobs", "--processes", str(args.processes)]
    command += ["--threads", str(args.threads)]
    if args.ddl:
        try:
            settings.owner_url()
        except settings_module.SettingsError as exc:
            sys.exit(f"nexes worker --ddl: {exc}")
        from nexes.jobs.runtime import DDL_QUEUE

        command += ["--queues", DDL_QUEUE]
        env = dict(os.environ)
    else:
        # Without the owner's URL, nexes.jobs.runtime keeps this worker off the ddl queue.
        env = {k: v for k, v in os.environ.items() if k not in OWNER_VARIABLES}
    os.execve(sys.executable, command, env)  # noqa: S606  # dramatiq in this process's place: signals reach it


def cmd_reconcile(args: argparse.Namespace) -> None:
    from nexes.db.reconcile import reconcile

    settings = _settings()
    started = time.monotonic()
    line_seconds = None if args.all_lines else settings.reconcile_line_seconds
    report = reconcile(settings.admin_url, line_seconds=line_seconds)
    customers = report.customer_stat_corrections + report.customer_cum_corrections
    if report.stat_corrections + customers:  # committed slice by slice; this row says they were made
        from nexes.db import audit

        with psycopg.connect(settings.admin_url, autocommit=True) as conn:
            changes = {"runId": str(report.run_id), "corrections": report.stat_corrections + customers}
            audit.record_sync(conn, audit.cli(), "reconcile", entity="Dashboard", key="dashboard_stat", changes=changes)
    left = f", {report.line_quarters_left} left for the next runs" if report.line_quarters_left else ""
    print(
        f"reconciled {report.slices} quarter(s) in {time.monotonic() - started:.1f}s (run {report.run_id}): "
        f"{report.stat_corrections} dashboard bucket(s) and {customers} "
        f"customer figure(s) corrected, {report.on_hand_mismatches} on-hand "
        f"mismatch(es), {report.negative_items} item(s) below zero, {report.line_mismatches} line(s) whose "
        f"movements differ (lines of {report.line_quarters} quarter(s) checked{left}); details in stat_drift"
    )


def cmd_reindex(args: argparse.Namespace) -> None:
    """Build a new search collection from a replica, swap the alias, drop the old one."""
    from tqdm import tqdm

    from nexes.search.client import sync_client
    from nexes.search.reindex import ReindexBusy, reindex

    settings = _settings()
    with tqdm(unit="docs", unit_scale=True, desc="reindex", disable=None) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = max(total, done)
            bar.update(done - bar.n)

        try:
            report = reindex(settings, sync_client(settings), batch=args.batch, progress=progress)
        except ReindexBusy as exc:
            sys.exit(f"nexes reindex: {exc}")
    print(
        f"indexed {report.documents:,} orders into {report.collection} in {report.seconds:.1f}s "
        f"({report.rate:,.0f}/s); {report.failed} failed and re-queued, {report.requeued} changed meanwhile "
        f"re-queued; dropped {', '.join(report.dropped) or 'nothing'}"
    )


def cmd_schema(args: argparse.Namespace) -> None:
    from nexes.execution.schema import schema

    sys.stdout.write(schema.as_str() + "\n")


def cmd_scheduler(args: argparse.Namespace) -> None:
    from nexes.observability import configure_tracing

    settings = _settings()
    configure_tracing(settings, "nexes-scheduler")  # before nexes.jobs would configure it as a worker
    from nexes.jobs import scheduler

    scheduler.run(settings)


def cmd_token(args: argparse.Namespace) -> None:
    """Print a token signed with NEXES_JWT_SECRET; or revoke one (`nexes token revoke`)."""
    from nexes.auth.tokens import MAX_TTL, mint
    from nexes.errors import NexesError

    settings = _settings()
    if args.token_command == "revoke":  # noqa: S105 (a subcommand name, not a password)
        _revoke(settings, args.token, args.ttl)
        return
    if not args.role:
        sys.exit("nexes token: give at least one --role (viewer, operator, analyst, admin)")
    if not 0 < args.ttl <= MAX_TTL:
        sys.exit(f"nexes token: --ttl must be between 1 and {MAX_TTL:.0f} seconds")
    try:
        print(mint(settings, args.role, subject=args.sub or cli_actor(), ttl=args.ttl))
    except NexesError as exc:
        sys.exit(f"nexes token: {exc.message}")


def _revoke(settings: settings_module.Settings, given: str, ttl: float) -> None:
    """Revoke by token id, or by the token itself (its `jti` and `exp` read from it)."""
    import jwt

    from nexes.auth.revocation import revoke

    jti, until = given, time.time() + ttl
    if given.count(".") == 2:  # a whole JWT: revoke its id until it would expire anyway
        try:
            claims = jwt.decode(given, options={"verify_signature": False})
        except jwt.DecodeError:
            sys.exit("nexes token revoke: that is not a JWT (give the token or its jti)")
        if not isinstance(claims.get("jti"), str) or not isinstance(claims.get("exp"), int | float):
            sys.exit("nexes token revoke: the token has no jti or exp; it cannot be revoked, only expire")
        jti, until = claims["jti"], float(claims["exp"]) + settings.jwt_leeway
    revoke(settings.redis_url, jti, until, settings.redis_timeout)
    print(f"revoked {jti} until {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))}")


def cmd_documents(args: argparse.Namespace) -> None:
    """`documents add FILE...`: register trusted documents (.graphql, or Apollo's persisted-query
    manifest .json) as the owner, each after it parses and validates; `documents list`."""
    from nexes.db import audit
    from nexes.db import documents as db

    settings = _settings()
    with psycopg.connect(settings.owner_url(), autocommit=True) as conn:
        if args.documents_command == "list":
            rows = db.list_all(conn)
            for row in rows:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row.added_at.timestamp()))
                print(f"{row.sha256}  {','.join(row.operation_names) or '-'}  {when}  {row.added_by}")
            print(f"{len(rows)} trusted document(s)")
            return
        by = audit.cli()
        for path, text in _documents_to_add(args.files):
            sha, names = _prepared(path, text)
            with conn.transaction():
                added = db.add(conn, sha, text, names, by.name)
                if added:
                    changes = {"operationNames": names, "bytes": len(text.encode())}
                    audit.record_sync(
                        conn, by, "addTrustedDocument", entity="TrustedDocument", key=sha, changes=changes
                    )
            print(f"{sha}  {','.join(names) or '-'}  {'added' if added else 'registered already'} ({path})")


def _documents_to_add(files: list[str]) -> list[tuple[str, str]]:
    """(where, text) of each document: a .graphql file whole, its trailing newlines dropped
    (clients send the text without them); each operation's body of an Apollo persisted-query
    manifest (@apollo/generate-persisted-query-manifest), whose ids must be their bodies' SHA-256."""
    import hashlib
    import json

    found: list[tuple[str, str]] = []
    for name in files:
        try:
            raw = Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            sys.exit(f"nexes documents add: {name}: {exc}")
        if not name.endswith(".json"):
            found.append((name, raw.rstrip("\n")))
            continue
        try:
            operations = json.loads(raw)["operations"]
            bodies = [(str(op["name"]), str(op["id"]), str(op["body"])) for op in operations]
        except (ValueError, KeyError, TypeError):
            sys.exit(f"nexes documents add: {name}: not an Apollo persisted-query manifest (operations with body)")
        for op_name, op_id, body in bodies:
            if hashlib.sha256(body.encode()).hexdigest() != op_id.lower():
                sys.exit(f"nexes documents add: {name}: {op_name}'s id is not the SHA-256 of its body")
            found.append((f"{name}#{op_name}", body))
    return found


def _prepared(path: str, text: str) -> tuple[str, list[str]]:
    from nexes.execution.documents import DocumentError, prepare
    from nexes.execution.pipeline import LIMIT_RULES
    from nexes.execution.schema import schema

    try:
        return prepare(text, schema._schema, LIMIT_RULES)
    except DocumentError as exc:
        sys.exit(f"nexes documents add: {path}: {exc}")


def cli_actor() -> str:
    """Who runs a `nexes` command (cli:<os user>): the audit's name, for tokens too."""
    from nexes.db import audit

    return audit.cli().name


def cmd_dev(args: argparse.Namespace) -> None:
    """API, worker, ddl worker and scheduler side by side; a worker that dies is restarted.
    Only the ddl worker gets the owner's URLs."""
    settings = _settings()
    if str(settings.jwt_secret):
        from nexes.auth.tokens import mint

        token = mint(settings, ["admin"], subject=f"dev:{cli_actor().removeprefix('cli:')}", ttl=12 * 3600)
        print(f"nexes dev: GraphiQL at http://{args.host}:{args.port}/graphql (it carries its own token)")
        print(f"nexes dev: an admin token for 12 hours (Authorization: Bearer ...):\n{token}", flush=True)
    exe = sys.executable
    commands = {
        "api": [exe, "-m", "nexes.cli", "serve", "--host", args.host, "--port", str(args.port)],
        "worker": [exe, "-m", "nexes.cli", "worker", "--processes", "1", "--threads", "4"],
        "ddl-worker": [exe, "-m", "nexes.cli", "worker", "--ddl", "--processes", "1", "--threads", "1"],
        "scheduler": [exe, "-m", "nexes.cli", "scheduler"],
    }
    # Only the ddl worker keeps the owner's URLs (`nexes worker` drops them for the other).
    without_owner = {k: v for k, v in os.environ.items() if k not in OWNER_VARIABLES}
    envs = {"api": without_owner, "scheduler": without_owner}
    supervise(commands, restart={"worker", "ddl-worker", "scheduler"}, envs=envs)


def supervise(commands: dict[str, list[str]], restart: set[str], envs: dict[str, dict[str, str]] | None = None) -> None:
    """Run the commands until SIGINT/SIGTERM, restarting those in `restart` when they exit.

    Hand-written because it is a few lines; supervisord or honcho would add a daemon
    or a Procfile for what `make run` needs on a developer's machine. Each child runs
    in a session of its own, so Ctrl-C reaches only this supervisor, which stops each
    child's whole process group once (dramatiq's worker processes included).
    """

    def start(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(commands[name], start_new_session=True, env=(envs or {}).get(name))

    def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)

    procs = {name: start(name) for name in commands}
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"nexes dev: {', '.join(f'{n} (pid {p.pid})' for n, p in procs.items())}; Ctrl-C stops", flush=True)
    while not stopping:
        time.sleep(0.5)
        for name, proc in list(procs.items()):
            code = proc.poll()
            if code is None or stopping:
                continue
            signal_group(proc, signal.SIGKILL)  # leftovers of a dead parent
            if name in restart:
                print(f"nexes dev: {name} exited ({code}); restarting", flush=True)
                procs[name] = start(name)
            else:
                print(f"nexes dev: {name} exited ({code}); stopping everything", flush=True)
                stopping = True
    for proc in procs.values():
        signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for proc in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        signal_group(proc, signal.SIGKILL)


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 (a statement per command and option)
    parser = argparse.ArgumentParser(prog="nexes", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply migrations, role settings and partitions").set_defaults(func=cmd_migrate)
    seed = sub.add_parser("seed", help="generate realistic orders inside PostgreSQL")
    seed.add_argument("--orders", type=int, required=True)
    seed.add_argument("--parallel", type=int, default=2, help="chunks loaded at once (default 2)")
    seed.add_argument("--if-empty", action="store_true", help="do nothing when orders exist")
    seed.add_argument(
        "--defer-indexes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="drop secondary indexes for the load (default: when the load dwarfs the data)",
    )
    seed.set_defaults(func=cmd_seed)
    sub.add_parser("partitions", help="create partitions ahead of time").set_defaults(func=cmd_partitions)
    archive = sub.add_parser("archive", help="move old quarters to the archive tables (detach + attach)")
    archive.add_argument("--after-years", type=int, default=None, help="default: NEXES_ARCHIVE_AFTER_YEARS; 0 = off")
    archive.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")
    archive.set_defaults(func=cmd_archive)
    imp = sub.add_parser("import", help="store a CSV/XLSX file and queue its import; prints the job id")
    imp.add_argument("file")
    imp.add_argument("--wait", action="store_true", help="wait for the outcome: exit 0 SUCCEEDED, 1 otherwise")
    imp.add_argument("--timeout", type=float, default=None, help="with --wait: give up after S seconds (exit 2)")
    imp.set_defaults(func=cmd_import)
    serve = sub.add_parser("serve", help="serve the API with uvicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run Dramatiq workers: every queue but ddl, or --ddl alone")
    worker.add_argument("--ddl", action="store_true", help="the ddl queue (partitions, archive) as the owner")
    worker.add_argument("--processes", type=int, default=1)
    worker.add_argument("--threads", type=int, default=4)
    worker.set_defaults(func=cmd_worker)
    sub.add_parser("scheduler", help="run the periodic-job scheduler").set_defaults(func=cmd_scheduler)
    rec = sub.add_parser("reconcile", help="recompute dashboard stats, check stock; drift goes to stat_drift")
    rec.add_argument(
        "--all-lines",
        action="store_true",
        help="check every quarter's lines against the ledger, not only as many as NEXES_RECONCILE_LINE_SECONDS allows",
    )
    rec.set_defaults(func=cmd_reconcile)
    reindex = sub.add_parser("reindex", help="rebuild the search index from a replica and swap the alias")
    reindex.add_argument(
        "--batch", type=int, default=None, help="documents per import request (default NEXES_REINDEX_BATCH, 20000)"
    )
    reindex.set_defaults(func=cmd_reindex)
    sub.add_parser("schema", help="print the GraphQL schema (SDL); schema.graphql is its snapshot").set_defaults(
        func=cmd_schema
    )
    token = sub.add_parser("token", help="print a token signed with NEXES_JWT_SECRET; `token revoke` refuses one")
    token.add_argument("--role", action="append", default=[], help="viewer, operator, analyst or admin (repeat)")
    token.add_argument("--sub", default="", help="the subject (default cli:<os user>)")
    token.add_argument("--ttl", type=float, default=3600.0, help="seconds until it expires (default 3600)")
    token_sub = token.add_subparsers(dest="token_command")
    revoke = token_sub.add_parser("revoke", help="refuse a token from now on (by jti, or the token itself)")
    revoke.add_argument("token", help="the token's jti, or the whole token")
    revoke.add_argument("--ttl", type=float, default=30 * 86400.0, help="with a bare jti: seconds to keep it")
    token.set_defaults(func=cmd_token)
    _documents_parser(sub)
    dev = sub.add_parser("dev", help="API + worker + ddl worker + scheduler, restarting a dead worker")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(func=cmd_dev)
    return parser


def _documents_parser(sub: Any) -> None:
    documents = sub.add_parser("documents", help="trusted documents: `documents add FILE...`, `documents list`")
    documents_sub = documents.add_subparsers(dest="documents_command", required=True)
    add = documents_sub.add_parser("add", help="register .graphql files (or an Apollo persisted-query manifest)")
    add.add_argument("files", nargs="+", metavar="FILE")
    documents_sub.add_parser("list", help="the registered documents: hash, operation names, added when and by whom")
    documents.set_defaults(func=cmd_documents)


# Commands that do their work in this process and end: each is one trace (SQL, Typesense,
# and the jobs it sends). `serve` and `dev` configure tracing in the processes they start.
TRACED_COMMANDS = frozenset({"migrate", "seed", "partitions", "archive", "import", "reconcile", "reindex"})


def main(argv: Sequence[str] | None = None) -> None:
    from nexes.observability import configure_logging

    configure_logging("INFO")  # JSON until the settings are read (each command's _settings())
    args = build_parser().parse_args(argv)
    if args.command not in TRACED_COMMANDS:
        args.func(args)
        return
    from opentelemetry import trace

    from nexes.observability import configure_tracing

    configure_tracing(_settings(), "nexes-cli")
    with trace.get_tracer(__name__).start_as_current_span(f"nexes {args.command}"):
        args.func(args)


if __name__ == "__main__":
    main()

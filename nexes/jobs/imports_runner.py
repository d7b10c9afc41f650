"""Running one import job: lease, stage (parse + COPY), apply (set-based, per chunk), finish.

At least once, exactly-once effects: the actor may run a job twice, concurrently or
after a crash. The lease makes one worker the executor; every chunk commits with its
checkpoint and is fenced by the lease; re-applying an order is a no-op (order_write).
A heartbeat thread keeps the lease while the worker lives; a SIGKILLed worker's lease
runs out and the scheduler's sweep (`sweep_stuck_imports`) sends the job again.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import socket
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import psycopg
from psycopg_pool import ConnectionPool

from nexes.db import imports_apply as sql
from nexes.db import migrate
from nexes.db.connect.worker import worker_pool
from nexes.db.imports import upload_chunks
from nexes.errors import Code
from nexes.imports import parse as importfile
from nexes.jobs.metrics import IMPORT_ROWS
from nexes.jobs.search import request_sync
from nexes.observability import request_id_var, traceparent_var
from nexes.settings import Settings

log = logging.getLogger(__name__)


def stage_batch_rows(settings: Settings) -> int:
    """Rows per staging transaction (one checkpoint each): about as many as a chunk's orders hold."""
    return max(1_000, 4 * settings.import_chunk_orders)


class Cancelled(Exception):
    pass


class Heartbeat(threading.Thread):
    """Renews the lease every third of its length while the job runs."""

    def __init__(self, pool: ConnectionPool, params: dict[str, Any], every: float) -> None:
        super().__init__(name=f"import-{params['job']}-lease", daemon=True)
        self.pool, self.params, self.every = pool, params, every
        self.stop = threading.Event()
        self.lost = threading.Event()
        self.cancel = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                with self.pool.connection() as conn:
                    cancel = sql.renew(conn, self.params)
            except psycopg.Error as exc:
                log.warning("import %s: lease renewal failed (%s); retrying", self.params["job"], exc)
                continue
            if cancel is None:
                self.lost.set()
                return
            if cancel:
                self.cancel.set()


def run(job_id: int, settings: Settings, *, request_id: str | None = None, traceparent: str | None = None) -> str:
    """Run or resume job `job_id`; returns what happened (for logs and tests)."""
    pool = worker_pool(settings)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    params: dict[str, Any] = {"job": job_id, "owner": owner, "lease": settings.import_lease_seconds}
    with pool.connection() as conn:
        if reason := migrate.behind(migrate.schema_version(conn)):
            # Not claimed: the job stays as it is, and the sweep sends it again later.
            log.error("import %d: not run: %s", job_id, reason)
            return "schema-behind"
        claimed = sql.claim(conn, params)
    if claimed is None:
        log.info("import %d: not claimable (finished, cancelled, or leased by another worker)", job_id)
        return "skipped"
    phase, staged_rows = claimed.phase, claimed.staged_rows
    # Worker threads live on: the ids are reset when this job is done.
    request_token = request_id_var.set(request_id or claimed.request_id)
    trace_token = traceparent_var.set(traceparent or claimed.traceparent)
    log.info(
        "import %d: running (phase %s, %d rows staged, through %r)",
        job_id,
        phase,
        staged_rows,
        claimed.applied_through,
    )
    heartbeat = Heartbeat(pool, params, max(0.5, settings.import_lease_seconds / 3))
    heartbeat.start()
    try:
        if phase == "apply" and not _staged_intact(pool, params, staged_rows):
            phase, staged_rows = "stage", 0  # _staged_intact has reset the stage
        if phase == "stage":
            _stage(pool, params, staged_rows, heartbeat, stage_batch_rows(settings), limits=file_limits(settings))
        _apply(pool, params, settings, heartbeat)
        if not _staged_intact(pool, params, None):
            # The rows went while this run applied them (the server restarted, and the
            # pool reconnected): the chunks found nothing more to do, which is not the
            # same as done. The retry stages again and resumes after the checkpoint.
            raise sql.StagedRowsLost(f"import job {job_id}: staged rows lost while applying")
        return _finish(pool, params, settings, None, None)
    except importfile.FileError as exc:
        # Final at once: the same bytes would fail the same way, so no retry, no sweep.
        log.info("import %d: the file cannot be imported: %s", job_id, exc.message)
        return _finish(pool, params, settings, "FAILED", f"{Code.BAD_FILE}: {exc.message}")
    except Cancelled:
        return _finish(pool, params, settings, "CANCELLED", "cancelled on request; orders applied before stay")
    except sql.LeaseLost:
        log.warning("import %d: lease lost to another worker; stopping", job_id)
        return "lease-lost"
    except Exception:
        # Unexpected (the database went away, a bug): give the lease up so that the
        # actor's retry can take the job at once; it resumes from the last checkpoint.
        log.exception("import %d: failed; the job will be retried from its last checkpoint", job_id)
        _release(pool, params)
        raise
    finally:
        heartbeat.stop.set()
        request_id_var.reset(request_token)
        traceparent_var.reset(trace_token)


def _release(pool: ConnectionPool, params: dict[str, Any]) -> None:
    try:
        with pool.connection(timeout=5) as conn:
            sql.release(conn, params)
    except Exception as exc:  # the lease then simply runs out
        log.warning("import %s: could not release the lease (%s)", params["job"], exc)


@contextmanager
def _upload_file(pool: ConnectionPool, job_id: int) -> Iterator[BinaryIO]:
    """The stored upload in a temporary file (XLSX needs to seek; memory stays flat)."""
    with tempfile.TemporaryFile() as file:
        with pool.connection() as conn:
            for data in upload_chunks(conn, job_id):
                file.write(data)
        file.seek(0)
        yield file


def _check(heartbeat: Heartbeat) -> None:
    if heartbeat.lost.is_set():
        raise sql.LeaseLost("lease lost")
    if heartbeat.cancel.is_set():
        raise Cancelled


def _staged_intact(pool: ConnectionPool, params: dict[str, Any], staged_rows: int | None) -> bool:
    """Whether import_row holds the job's `staged_rows` rows (None: as many as the job
    row says). import_row is unlogged: a server crash or a failover empties it. When it
    does not, the stage is reset (back to the `stage` phase, nothing staged), so the job
    stages again from the start and then resumes applying after its checkpoint."""
    with pool.connection() as conn, conn.transaction():
        if staged_rows is None:
            staged_rows = sql.job_staged_rows(conn, params)
        found = sql.staged_count(conn, params)
        if found == staged_rows:
            return True
        log.warning("import %d: %d staged rows found, %d expected; staging again", params["job"], found, staged_rows)
        sql.reset_stage(conn, params)
        return False


def file_limits(settings: Settings) -> importfile.Limits:
    """What reading one file may cost (the settings' caps)."""
    return importfile.Limits(
        xlsx_max_uncompressed_bytes=settings.xlsx_max_uncompressed_bytes,
        xlsx_max_ratio=settings.xlsx_max_ratio,
        xlsx_max_shared_strings=settings.xlsx_max_shared_strings,
        max_cells_per_row=settings.import_max_cells_per_row,
    )


def _stage(
    pool: ConnectionPool,
    params: dict[str, Any],
    staged_rows: int,
    heartbeat: Heartbeat,
    batch_rows: int,
    *,
    limits: importfile.Limits,
) -> None:
    job = params["job"]
    if not _staged_intact(pool, params, staged_rows):
        staged_rows = 0
    with _upload_file(pool, job) as file:
        fmt = importfile.detect_format(file.read(8192))
        file.seek(0)
        batch: list[importfile.Row] = []
        for parsed in importfile.read_rows(file, skip=staged_rows, limits=limits):
            batch.append(parsed)
            if len(batch) >= batch_rows:
                staged_rows = _stage_batch(pool, params, batch, staged_rows, fmt)
                batch = []
                _check(heartbeat)
        staged_rows = _stage_batch(pool, params, batch, staged_rows, fmt)
    with pool.connection() as conn:
        sql.stage_done(conn, params)
    log.info("import %d: %d rows staged", job, staged_rows)


def _stage_batch(
    pool: ConnectionPool, params: dict[str, Any], batch: list[importfile.Row], before: int, fmt: str
) -> int:
    rows = [(params["job"], r.row_no, *r.values, _errors(r), r.raw) for r in batch]
    with pool.connection() as conn, conn.transaction():
        sql.stage_rows(conn, params, rows, before=before, fmt=fmt)
    return before + len(batch)


def _errors(row: importfile.Row) -> str | None:
    return json.dumps([_error(e) for e in row.errors]) if row.errors else None


def _error(e: importfile.RowError) -> dict[str, Any]:
    return {"column": e.column, "code": e.code, "message": e.message}


class _Aborted(Exception):
    """A chunk rolled back because the chunk before it did not commit, or the run stopped."""


@dataclass(slots=True)
class _Link:
    """One chunk's outcome, which the chunk after it waits for."""

    settled: threading.Event = field(default_factory=threading.Event)
    committed: bool = False


@dataclass(slots=True)
class _Pipeline:
    """What every chunk of one run sees: the run stopped (every chunk rolls back), or a
    committed chunk saw a cancel request (every chunk after it rolls back)."""

    halt: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)


def _apply(pool: ConnectionPool, params: dict[str, Any], settings: Settings, heartbeat: Heartbeat) -> None:
    """Apply the staged rows chunk by chunk, up to `import_apply_parallel` chunks at once.

    Each chunk is one transaction on its own connection. Their cold parts (checks, the
    chunk's own orders, lines and movements) run side by side; their hot parts (shared
    rows, errors, the checkpoint) run in chunk order, each once the chunk before it has
    committed, so `applied_through` moves exactly as it does one chunk at a time and a
    resumed job starts after the last committed chunk. A chunk that fails makes every
    chunk after it roll back, and its error goes up (the chunks before it still commit);
    the retry resumes from the checkpoint.
    """
    job = params["job"]
    with pool.connection() as conn, conn.transaction():
        sql.report_orphans(conn, params)
    with pool.connection() as conn:
        after = sql.applied_through(conn, params)
    depth = settings.import_apply_parallel
    pipeline = _Pipeline()
    previous: _Link | None = None
    inflight: deque[Future[bool]] = deque()
    cancel = False
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix=f"import-{job}-chunk") as executor:
        try:
            while not cancel:
                _check(heartbeat)
                with pool.connection() as conn:
                    upto = sql.next_upto(conn, params, after=after, orders=settings.import_chunk_orders)
                if upto is None:
                    break
                while len(inflight) >= depth:
                    cancel |= inflight.popleft().result()
                link = _Link()
                chunk = {**params, "after": after, "upto": upto}
                # Each chunk in a copy of this context: its logs and SQL carry the job's request id.
                context = contextvars.copy_context()
                inflight.append(executor.submit(context.run, _chunk, pool, chunk, pipeline, previous, link))
                previous, after = link, upto
            while inflight:
                cancel |= inflight.popleft().result()
        except BaseException:
            pipeline.halt.set()
            for later in inflight:  # rolled back (or committed) by now; their errors follow from this one
                later.exception()
            raise
    if cancel:
        raise Cancelled


def _chunk(
    pool: ConnectionPool, params: dict[str, Any], pipeline: _Pipeline, previous: _Link | None, link: _Link
) -> bool:
    """One chunk in one transaction; returns whether a cancel was requested (the chunk
    that sees it commits, the ones after it roll back: the job stops at that checkpoint)."""
    try:
        with pool.connection() as conn:
            with conn.transaction() as tx:
                rows = sql.run_chunk_cold(conn, params)
                while previous is not None and not previous.settled.wait(0.02):
                    if pipeline.halt.is_set():
                        raise _Aborted
                if pipeline.halt.is_set():
                    raise _Aborted
                if pipeline.cancelled.is_set():
                    raise psycopg.Rollback(tx)
                if previous is not None and not previous.committed:
                    raise _Aborted
                cancel = sql.run_chunk_hot(conn, params)
            if pipeline.cancelled.is_set():
                return True  # rolled back
            link.committed = True
            IMPORT_ROWS.labels("applied").inc(rows)
            if cancel:
                pipeline.cancelled.set()
    finally:
        link.settled.set()
    request_sync()  # the chunk is committed: search picks its orders up now
    return cancel


def _finish(
    pool: ConnectionPool, params: dict[str, Any], settings: Settings, status: str | None, message: str | None
) -> str:
    with pool.connection() as conn, conn.transaction():
        final = sql.finish(conn, params, status=status, message=message, retention=settings.import_retention_days)
    if final is None:
        return "lease-lost"
    log.info("import %d: %s", params["job"], final)
    return final

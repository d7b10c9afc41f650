"""Import jobs as the API and the CLI see them: the stored upload, reads, lists, cancel.

An upload streams into import_upload_chunk one ~1 MiB chunk per statement, each on
an autocommit connection taken for that statement only, so a slow client holds no
transaction and no pooled connection between chunks. The job stays UPLOADING (never
listed, never enqueued) until `finalize` marks it QUEUED; `abort` deletes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

FINAL_STATUSES = frozenset({"SUCCEEDED", "PARTIAL", "FAILED", "CANCELLED"})


@dataclass(frozen=True, slots=True)
class ImportJobRow:
    id: int
    status: str
    filename: str | None
    size_bytes: int
    sha256: str | None
    request_id: str | None
    total_rows: int | None
    processed_rows: int
    inserted: int
    updated: int
    unchanged: int
    failed: int
    message: str | None
    cancel_requested: bool
    lsn: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    created_by: str | None


@dataclass(frozen=True, slots=True)
class ImportErrorRow:
    id: int
    row_no: int
    sod_number: str | None
    column_name: str | None
    code: str
    message: str
    raw: str


# An upload abandoned mid-stream (its API process died) expires after a day, like an old job.
CREATE_JOB: LiteralString = (
    "INSERT INTO import_job (status, filename, request_id, trace_context, expires_at, created_by) "
    "VALUES ('UPLOADING', %(filename)s, %(request_id)s, %(trace_context)s, now() + interval '1 day', %(created_by)s) "
    "RETURNING id"
)


async def create_job(
    conn: AsyncConnection[Any],
    *,
    filename: str | None,
    request_id: str | None,
    traceparent: str | None,
    created_by: str,
) -> int:
    """A new UPLOADING job owned by `created_by` (the actor uploading it); returns its id."""
    trace_context = {"traceparent": traceparent} if traceparent else {}
    params = {
        "filename": filename,
        "request_id": request_id,
        "trace_context": Jsonb(trace_context),
        "created_by": created_by,
    }
    cur = await conn.execute(CREATE_JOB, params)
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


# A binary COPY of one row, not an INSERT with the chunk as a parameter: libpq's output
# buffer grows to the largest message a connection sends and keeps that size while the
# connection lives, so a 1 MiB parameter left 2 MiB with every connection of the API's
# pool, which hands its connections out in turn (a 50 MiB upload grew the API process by
# 47 MB with 20 of them, 89 MB with 40). psycopg hands COPY data to libpq in pieces of
# 128 KiB, and the bytea goes binary, not as escaped text twice its size.
APPEND_CHUNK: LiteralString = "COPY import_upload_chunk (job_id, seq, data) FROM STDIN (FORMAT BINARY)"
CHUNK_TYPES = ("int8", "int4", "bytea")


async def append_chunk(conn: AsyncConnection[Any], job_id: int, seq: int, data: bytes) -> None:
    """Store chunk `seq` (0, 1, ...) of the job's upload; one statement, committed on its own."""
    async with conn.cursor().copy(APPEND_CHUNK) as copy:
        copy.set_types(list(CHUNK_TYPES))
        await copy.write_row((job_id, seq, data))


# The job is accepted once its upload is complete: QUEUED, with its first audit row
# (import.accepted, by its creator) in the same statement. An upload that no operation
# then uses is deleted by ABORT, which writes the job's last row (import.discarded).
FINALIZE: LiteralString = (
    "WITH job AS ("
    "UPDATE import_job SET status = 'QUEUED', size_bytes = %(size)s, sha256 = %(sha256)s, "
    "expires_at = now() + make_interval(days => %(days)s) "
    "WHERE id = %(id)s AND status = 'UPLOADING' RETURNING "
    "id, status::text AS status, filename, size_bytes, sha256, request_id, total_rows, processed_rows, "
    "inserted, updated, unchanged, failed, message, cancel_requested, lsn::text AS lsn, created_at, "
    "started_at, finished_at, created_by"
    "), audited AS ("
    "INSERT INTO audit_event (actor, action, entity, entity_id, request_id, changes) "
    "SELECT created_by, 'import.accepted', 'ImportJob', audit_global_id('ImportJob', id), request_id, "
    "jsonb_build_object('filename', filename, 'sizeBytes', size_bytes, 'sha256', sha256) FROM job"
    ") SELECT * FROM job"
)


async def finalize(
    conn: AsyncConnection[Any], job_id: int, *, size_bytes: int, sha256: str, retention_days: int
) -> ImportJobRow | None:
    """The upload is complete: QUEUED, ready to enqueue. None when the job is gone."""
    params = {"id": job_id, "size": size_bytes, "sha256": sha256, "days": retention_days}
    cur: AsyncCursor[ImportJobRow]
    async with conn.cursor(row_factory=class_row(ImportJobRow)) as cur:
        await cur.execute(FINALIZE, params)
        return await cur.fetchone()


# Only a job no worker has touched: a QUEUED one may be aborted when no operation used it.
ABORT: LiteralString = (
    "WITH gone AS ("
    "DELETE FROM import_job WHERE id = %s AND status IN ('UPLOADING', 'QUEUED') AND started_at IS NULL "
    "RETURNING id, status, created_by, request_id"
    ") INSERT INTO audit_event (actor, action, entity, entity_id, request_id, changes) "
    "SELECT coalesce(created_by, 'system:unknown'), 'import.discarded', 'ImportJob', audit_global_id('ImportJob', id), "
    "request_id, jsonb_build_object('reason', 'no operation used the upload') FROM gone WHERE status = 'QUEUED'"
)


async def abort(conn: AsyncConnection[Any], job_id: int) -> None:
    """Delete an upload that failed, went past the limit or was not used (its chunks cascade)."""
    await conn.execute(ABORT, (job_id,))


GET_JOB: LiteralString = (
    "SELECT id, status::text AS status, filename, size_bytes, sha256, request_id, total_rows, processed_rows, "
    "inserted, updated, unchanged, failed, message, cancel_requested, lsn::text AS lsn, created_at, "
    "started_at, finished_at, created_by "
    "FROM import_job WHERE id = %s AND status <> 'UPLOADING'"
)


async def get_job(conn: AsyncConnection[Any], job_id: int) -> ImportJobRow | None:
    """One job, or None (also while it is still uploading)."""
    cur: AsyncCursor[ImportJobRow]
    async with conn.cursor(row_factory=class_row(ImportJobRow)) as cur:
        await cur.execute(GET_JOB, (job_id,))
        return await cur.fetchone()


# With a status: import_job_status_idx (status, id DESC); an operator's own: import_job_created_by_idx
# (created_by, id DESC); neither: the primary key, backwards.
JOBS_PAGE: LiteralString = (
    "SELECT id, status::text AS status, filename, size_bytes, sha256, request_id, total_rows, processed_rows, "
    "inserted, updated, unchanged, failed, message, cancel_requested, lsn::text AS lsn, created_at, "
    "started_at, finished_at, created_by "
    "FROM import_job "
    "WHERE status <> 'UPLOADING' AND (%(status)s::import_status IS NULL OR status = %(status)s::import_status) "
    "AND (NOT %(mine)s OR created_by = %(owner)s::text) "
    "AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s::bigint) "
    "ORDER BY id DESC LIMIT %(limit)s"
)


async def jobs_page(
    conn: AsyncConnection[Any], *, status: str | None, owner: str | None, after_id: int | None, limit: int
) -> list[ImportJobRow]:
    """Jobs newest first (keyset on id), optionally of one status, only `owner`'s when given
    (None: everyone's, for admins); UPLOADING ones never."""
    params = {"status": status, "mine": owner is not None, "owner": owner, "before_id": after_id, "limit": limit}
    cur: AsyncCursor[ImportJobRow]
    async with conn.cursor(row_factory=class_row(ImportJobRow)) as cur:
        await cur.execute(JOBS_PAGE, params)
        return await cur.fetchall()


# import_error_job_idx (job_id, row_no, id) serves the row-value keyset.
ERRORS_PAGE: LiteralString = (
    "SELECT id, row_no, sod_number, column_name, code, message, raw FROM import_error "
    "WHERE job_id = %(job_id)s "
    "AND (%(row_no)s::bigint IS NULL OR (row_no, id) > (%(row_no)s::bigint, %(id)s::bigint)) "
    "ORDER BY row_no, id LIMIT %(limit)s"
)


async def errors_page(
    conn: AsyncConnection[Any], job_id: int, *, after: tuple[int, int] | None, limit: int
) -> list[ImportErrorRow]:
    """A job's row errors in file order, after the (row_no, id) keyset."""
    row_no, error_id = after if after is not None else (None, None)
    params = {"job_id": job_id, "row_no": row_no, "id": error_id, "limit": limit}
    cur: AsyncCursor[ImportErrorRow]
    async with conn.cursor(row_factory=class_row(ImportErrorRow)) as cur:
        await cur.execute(ERRORS_PAGE, params)
        return await cur.fetchall()


# QUEUED stops at once; RUNNING is asked to stop (the worker checks at its next chunk).
# Under READ COMMITTED the row is re-checked after a worker's concurrent claim, so a
# job that just became RUNNING gets the request rather than a status it would overwrite.
CANCEL: LiteralString = (
    "UPDATE import_job SET cancel_requested = true, "
    "status = CASE WHEN status = 'QUEUED' THEN 'CANCELLED'::import_status ELSE status END, "
    "message = CASE WHEN status = 'QUEUED' THEN 'cancelled before it started' ELSE message END, "
    "finished_at = CASE WHEN status = 'QUEUED' THEN now() ELSE finished_at END, "
    "lsn = CASE WHEN status = 'QUEUED' THEN pg_current_wal_lsn() ELSE lsn END "
    "WHERE id = %s AND status IN ('QUEUED', 'RUNNING') RETURNING status::text"
)


async def cancel(conn: AsyncConnection[Any], job_id: int) -> str | None:
    """Cancel a QUEUED job (CANCELLED), or ask a RUNNING one to stop (RUNNING); None when it is neither."""
    cur = await conn.execute(CANCEL, (job_id,))
    row = await cur.fetchone()
    return None if row is None else str(row[0])


NEXT_CHUNK: LiteralString = (
    "SELECT seq, data FROM import_upload_chunk WHERE job_id = %s AND seq > %s ORDER BY seq LIMIT 1"
)


def upload_chunks(conn: psycopg.Connection[Any], job_id: int) -> Iterator[bytes]:
    """The stored upload's bytes, chunk by chunk in order; one short statement per chunk,
    so no transaction or cursor stays open between them (PgBouncer transaction mode)."""
    seq = -1
    while True:
        row = conn.execute(NEXT_CHUNK, (job_id, seq)).fetchone()
        if row is None:
            return
        seq = row[0]
        yield bytes(row[1])

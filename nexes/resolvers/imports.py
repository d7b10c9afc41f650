"""Import jobs: reads on the primary (progress must be fresh), start and cancel.

Operators see and cancel only the jobs they started (created_by, their token's subject);
admins every one. Someone else's job answers exactly as a job that does not exist (null,
NOT_FOUND), so its existence is not revealed either."""

from __future__ import annotations

from typing import Any

import strawberry
from psycopg import AsyncConnection

from nexes.db import audit
from nexes.db import imports as db
from nexes.db.imports import FINAL_STATUSES, ImportErrorRow, ImportJobRow
from nexes.errors import Code, NexesError
from nexes.imports.upload import StoredUpload, enqueue
from nexes.resolvers.audit import actor
from nexes.resolvers.context import Info
from nexes.resolvers.ids import global_id, parse_global_id
from nexes.resolvers.pagination import PageArgs, build_page, page_request
from nexes.schema.imports import (
    CancelImportPayload,
    ImportErrorConnection,
    ImportJob,
    ImportJobConnection,
    ImportJobStatus,
    ImportRowError,
    StartImportPayload,
)
from nexes.schema.payloads import user_error

JOBS_ORDER = "IMPORT_JOBS_ID_DESC"
ERRORS_ORDER = "IMPORT_ERRORS_ROW_NO"


def to_import_job(row: ImportJobRow) -> ImportJob:
    final = row.status in FINAL_STATUSES
    return ImportJob(
        id=strawberry.ID(global_id("ImportJob", row.id)),
        status=ImportJobStatus(row.status),
        filename=row.filename,
        size_bytes=float(row.size_bytes),
        sha256=row.sha256,
        processed_rows=row.processed_rows,
        total_rows=row.total_rows,
        inserted=row.inserted,
        updated=row.updated,
        unchanged=row.unchanged,
        failed=row.failed,
        message=row.message,
        request_id=row.request_id,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        lsn=row.lsn if final else None,
        created_by=row.created_by,
        row_id=row.id,
        errors_of=import_errors,
    )


def finished_changes(row: ImportJobRow) -> dict[str, Any]:
    """The import.finished audit row's changes (as imports_apply.FINISHED_AUDIT writes them)."""
    counts = {"totalRows": row.total_rows, "processedRows": row.processed_rows, "inserted": row.inserted}
    counts |= {"updated": row.updated, "unchanged": row.unchanged, "failed": row.failed}
    return {"status": row.status, **counts, "message": row.message}


def to_row_error(row: ImportErrorRow) -> ImportRowError:
    return ImportRowError(
        row_no=row.row_no,
        sod_number=row.sod_number,
        column=row.column_name,
        code=row.code,
        message=row.message,
        raw=row.raw,
    )


async def import_job_by_key(info: Info, key: int) -> ImportJob | None:
    """The job, when it exists and the caller owns it (or is an admin); else None."""
    if info.context.viewer.analyst_only:
        # Its reads run as nexes_analyst, which may not read import jobs (nexes/db/grants.py);
        # an analyst never starts an import, so it owns none.
        return None
    row = await info.context.router.read(lambda conn: db.get_job(conn, key), fresh=True)
    return to_import_job(row) if row is not None and info.context.viewer.owns(row.created_by) else None


async def import_job(info: Info, id: strawberry.ID) -> ImportJob | None:
    return await import_job_by_key(info, parse_global_id(id, "ImportJob"))


async def import_jobs(info: Info, status: str | None, first: int | None, after: str | None) -> ImportJobConnection:
    ctx = info.context
    request = page_request(PageArgs(first, after), max_size=ctx.settings.max_page_size)
    after_id = ctx.cursors.decode(request.cursor, JOBS_ORDER, str).id if request.cursor is not None else None
    owner = None if ctx.viewer.is_admin else ctx.viewer.subject

    async def work(conn: AsyncConnection[Any]) -> list[ImportJobRow]:
        return await db.jobs_page(conn, status=status, owner=owner, after_id=after_id, limit=request.limit + 1)

    rows = await ctx.router.read(work, fresh=True) if request.limit else []
    edges, page_info = build_page(
        rows, request, node=to_import_job, cursor=lambda r: ctx.cursors.encode(JOBS_ORDER, "", r.id)
    )
    return ImportJobConnection(edges=edges, page_info=page_info)


async def import_errors(info: Info, job_id: int, first: int | None, after: str | None) -> ImportErrorConnection:
    ctx = info.context
    request = page_request(PageArgs(first, after), max_size=ctx.settings.max_page_size)
    keyset = None
    if request.cursor is not None:
        position = ctx.cursors.decode(request.cursor, ERRORS_ORDER, str)
        if not position.value.isdigit():
            raise NexesError(Code.BAD_CURSOR, "the cursor's position is malformed; take one from a page")
        keyset = (int(position.value), position.id)

    async def work(conn: AsyncConnection[Any]) -> list[ImportErrorRow]:
        return await db.errors_page(conn, job_id, after=keyset, limit=request.limit + 1)

    rows = await ctx.router.read(work, fresh=True) if request.limit else []
    edges, page_info = build_page(
        rows, request, node=to_row_error, cursor=lambda r: ctx.cursors.encode(ERRORS_ORDER, str(r.row_no), r.id)
    )
    return ImportErrorConnection(edges=edges, page_info=page_info)


async def start_import(info: Info, upload: StoredUpload) -> StartImportPayload:
    """The upload is stored and QUEUED already: enqueue it (once, even if named twice)."""
    await enqueue(upload)
    return StartImportPayload(import_job=await import_job_by_key(info, upload.job_id), errors=[])


async def cancel_import(info: Info, id: strawberry.ID) -> CancelImportPayload:
    try:
        key = parse_global_id(id, "ImportJob")
    except NexesError as exc:
        return CancelImportPayload(import_job=None, errors=[user_error(exc.code, exc.message, exc.field)])

    viewer, by = info.context.viewer, actor(info)

    async def work(conn: AsyncConnection[Any]) -> tuple[str | None, ImportJobRow | None]:
        async with conn.transaction():
            found = await db.get_job(conn, key)
            if found is None or not viewer.owns(found.created_by):
                return None, None
            status = await db.cancel(conn, key)
            after = await db.get_job(conn, key)
            if status is not None and after is not None:
                job = audit.entity_id("ImportJob", key)
                changes = {"status": [found.status, status]}
                await audit.record(conn, by, "cancelImport", entity="ImportJob", key=job, changes=changes)
                if after.status in FINAL_STATUSES:  # it never ran: this is its end, as a worker would write it
                    changes = finished_changes(after)
                    await audit.record(conn, by, "import.finished", entity="ImportJob", key=job, changes=changes)
            return status, after

    cancelled, row = await info.context.router.write(work)
    if row is None:
        return CancelImportPayload(
            import_job=None, errors=[user_error(Code.NOT_FOUND, "no import job has this id", "id")]
        )
    job = to_import_job(row)
    if cancelled:
        return CancelImportPayload(import_job=job, errors=[])
    message = f"the import job is already {job.status.value}; only QUEUED or RUNNING jobs can be cancelled"
    return CancelImportPayload(import_job=job, errors=[user_error(Code.INVALID_TRANSITION, message, "id")])

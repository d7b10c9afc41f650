"""Import jobs in GraphQL: the job, its rejected rows and the payloads of startImport and cancelImport."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Annotated, Any

import strawberry

from nexes.schema.connections import AFTER, FIRST, Edge, PageInfo
from nexes.schema.payloads import UserError
from nexes.schema.types import Node, value_descriptions


@value_descriptions(
    QUEUED="Stored and waiting for a worker.",
    RUNNING="A worker is applying it, chunk by chunk; see processedRows.",
    SUCCEEDED="Final: every row landed.",
    PARTIAL="Final: the good rows landed, some were rejected (errors).",
    FAILED="Final: the file could not be read (BAD_FILE, BAD_ENCODING); nothing landed.",
    CANCELLED="Final: stopped by cancelImport; chunks already committed stay.",
)
@strawberry.enum(
    description="QUEUED → RUNNING → SUCCEEDED (every row landed), PARTIAL (some rows rejected), "
    "FAILED (the file could not be read) or CANCELLED."
)
class ImportJobStatus(Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    PARTIAL = "PARTIAL"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@strawberry.type(description="A rejected row of an import file, with its raw text.")
class ImportRowError:
    row_no: int = strawberry.field(description="The row's number in the file; the header is row 1.")
    sod_number: str | None = strawberry.field(description="The order the row was for, when it could be read.")
    column: str | None = strawberry.field(description="The column at fault, as named in the header; null: the row.")
    code: str = strawberry.field(
        description="Stable reason: BAD_ROW, UNKNOWN_SKU, UNKNOWN_CUSTOMER, DUPLICATE_CONFLICT, INVALID_TRANSITION, "
        "CREATED_AT_OUT_OF_RANGE, ORDER_REJECTED... (docs/import-format.md)."
    )
    message: str = strawberry.field(description="What is wrong with the row and how to fix it, for a person.")
    raw: str = strawberry.field(description="The row as it was in the file, to correct and send again.")


@strawberry.type(description="A page of an import's rejected rows, in file order.")
class ImportErrorConnection:
    edges: list[Edge[ImportRowError]] = strawberry.field(description="The page's rejected rows, each with its cursor.")
    page_info: PageInfo = strawberry.field(description="Whether more rows follow, and the cursor to ask for them.")


# A job's page of rejected rows: (info, job row id, first, after). The resolver that builds an
# ImportJob gives it one, so no type imports a resolver.
ImportErrors = Callable[[strawberry.Info[Any, Any], int, int | None, str | None], Awaitable[ImportErrorConnection]]


@strawberry.type(description="An uploaded CSV/XLSX file and its import into service orders.")
class ImportJob(Node):
    id: strawberry.ID = strawberry.field(description="Global id (type ImportJob); give it to importJob(id:).")
    status: ImportJobStatus = strawberry.field(description="Where the job is; poll until it is final.")
    filename: str | None = strawberry.field(description="The uploaded file's name as the client sent it.")
    size_bytes: float = strawberry.field(description="Bytes uploaded (a Float: GraphQL's Int has 32 bits).")
    sha256: str | None = strawberry.field(description="SHA-256 of the uploaded bytes, in hex.")
    processed_rows: int = strawberry.field(
        description="Rows read and decided so far (committed chunk by chunk): progress is processedRows / totalRows."
    )
    total_rows: int | None = strawberry.field(description="Known once the file has been read through.")
    inserted: int = strawberry.field(description="Orders created.")
    updated: int = strawberry.field(description="Orders changed to match the file.")
    unchanged: int = strawberry.field(description="Orders already identical to the file.")
    failed: int = strawberry.field(description="Rows rejected; see errors.")
    message: str | None = strawberry.field(description="Why the job FAILED or was CANCELLED, for a person.")
    request_id: str | None = strawberry.field(description="The request id of the upload, for the logs.")
    created_at: dt.datetime = strawberry.field(description="When the upload was stored (UTC).")
    started_at: dt.datetime | None = strawberry.field(
        description="When a worker first took it (UTC); null while QUEUED."
    )
    finished_at: dt.datetime | None = strawberry.field(description="When it reached a final status (UTC).")
    lsn: str | None = strawberry.field(
        description="Once finished: the primary's WAL position; send it as X-Nexes-Min-LSN to read the result."
    )
    created_by: str | None = strawberry.field(
        description="Who started it: the token's subject, or cli:<os user> for `nexes import`; "
        "null for jobs from before owners were recorded (only admins see those)."
    )
    row_id: strawberry.Private[int]
    errors_of: strawberry.Private[ImportErrors]

    @strawberry.field(
        description="Rejected rows in file order, with their raw text. Default 20 per page. Only the job's "
        "creator and admins may read them: null (with a FORBIDDEN error) for anyone else."
    )
    async def errors(
        self,
        info: strawberry.Info,
        first: Annotated[int | None, strawberry.argument(description=FIRST)] = None,
        after: Annotated[str | None, strawberry.argument(description=AFTER)] = None,
    ) -> ImportErrorConnection | None:
        return await self.errors_of(info, self.row_id, first, after)


@strawberry.type(description="A page of import jobs, newest first.")
class ImportJobConnection:
    edges: list[Edge[ImportJob]] = strawberry.field(description="The page's jobs, each with its cursor.")
    page_info: PageInfo = strawberry.field(description="Whether more jobs follow, and the cursor to ask for them.")


@strawberry.type(description="What startImport answers: the queued job, or why the upload was refused.")
class StartImportPayload:
    import_job: ImportJob | None = strawberry.field(
        description="The new job, QUEUED; null when the upload was refused."
    )
    errors: list[UserError] = strawberry.field(description="Why nothing was queued; empty on success.")


@strawberry.type(description="What cancelImport answers: the job as it is now, or why it cannot be cancelled.")
class CancelImportPayload:
    import_job: ImportJob | None = strawberry.field(
        description="The job after the request: CANCELLED, or RUNNING until its current chunk ends."
    )
    errors: list[UserError] = strawberry.field(
        description="NOT_FOUND (no such job of yours) or INVALID_TRANSITION (already final); empty on success."
    )

"""Import jobs in GraphQL: the job, its rejected rows and the payloads of startImport and cancelImport."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any

import strawberry

from nexes.schema.connections import Edge, PageInfo
from nexes.schema.payloads import UserError
from nexes.schema.types import Node


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
    sod_number: str | None
    column: str | None
    code: str
    message: str
    raw: str


@strawberry.type
class ImportErrorConnection:
    edges: list[Edge[ImportRowError]]
    page_info: PageInfo


# A job's page of rejected rows: (info, job row id, first, after). The resolver that builds an
# ImportJob gives it one, so no type imports a resolver.
ImportErrors = Callable[[strawberry.Info[Any, Any], int, int | None, str | None], Awaitable[ImportErrorConnection]]


@strawberry.type(description="An uploaded CSV/XLSX file and its import into service orders.")
class ImportJob(Node):
    id: strawberry.ID
    status: ImportJobStatus
    filename: str | None
    size_bytes: float = strawberry.field(description="Bytes uploaded (a Float: GraphQL's Int has 32 bits).")
    sha256: str | None = strawberry.field(description="SHA-256 of the uploaded bytes, in hex.")
    processed_rows: int
    total_rows: int | None = strawberry.field(description="Known once the file has been read through.")
    inserted: int = strawberry.field(description="Orders created.")
    updated: int = strawberry.field(description="Orders changed to match the file.")
    unchanged: int = strawberry.field(description="Orders already identical to the file.")
    failed: int = strawberry.field(description="Rows rejected; see errors.")
    message: str | None
    request_id: str | None = strawberry.field(description="The request id of the upload, for the logs.")
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
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
        self, info: strawberry.Info, first: int | None = None, after: str | None = None
    ) -> ImportErrorConnection | None:
        return await self.errors_of(info, self.row_id, first, after)


@strawberry.type
class ImportJobConnection:
    edges: list[Edge[ImportJob]]
    page_info: PageInfo


@strawberry.type
class StartImportPayload:
    import_job: ImportJob | None
    errors: list[UserError]


@strawberry.type
class CancelImportPayload:
    import_job: ImportJob | None
    errors: list[UserError]

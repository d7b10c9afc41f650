"""Import files and import jobs: CSV lines, uploads stored as `nexes import` stores them,
a job's row, and the API's headers and ids for jobs."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg

from nexes.db.connect.conninfo import for_role
from nexes.db.connect.worker import close_worker_pools
from nexes.imports.parse import COLUMNS
from nexes.imports.store import CHUNK_BYTES, UploadWriter
from nexes.settings import Settings
from tests.support.waits import wait_for

HEADER = ",".join(COLUMNS)
# In a live quarter (the seed makes partitions up to now), with a non-UTC offset.
CREATED_AT = (datetime.now(UTC) - timedelta(days=20)).replace(microsecond=0)
CREATED = CREATED_AT.astimezone(timezone(timedelta(hours=1))).isoformat()
CSRF = {"X-Nexes-CSRF": "1"}
UNFINISHED = ("UPLOADING", "QUEUED", "RUNNING")


def line(
    sod: str,
    line_no: object = 1,
    *,
    created_at: str = CREATED,
    customer: str = "C000001",
    status: str = "OPEN",
    description: str = "Boiler service",
    currency: str = "EUR",
    sku: str = "SKU-00001",
    quantity: object = 2,
    price: str = "49.90",
) -> str:
    """One CSV line (fields written as given: no quoting)."""
    fields = (sod, created_at, customer, status, description, currency, line_no, sku, quantity, price)
    return ",".join(str(f) for f in fields)


def csv_bytes(*lines: str, header: str = HEADER) -> bytes:
    return ("\n".join([header, *lines]) + "\n").encode()


async def store_async(
    settings: Settings, data: bytes, filename: str = "orders.csv", created_by: str = "cli:tests"
) -> int:
    """Store `data` as a QUEUED job exactly as `nexes import` does, without enqueueing it."""
    conninfo = for_role(settings.primary_url, settings, "nexes_worker", application_name="nexes-import")
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:

        async def run(work: Any) -> Any:
            return await work(conn)

        writer = UploadWriter(
            run,
            filename=filename,
            max_bytes=settings.import_max_bytes,
            retention_days=settings.import_retention_days,
            created_by=created_by,
        )
        await writer.start()
        for start in range(0, len(data), CHUNK_BYTES):
            await writer.write(data[start : start + CHUNK_BYTES])
        upload = await writer.finish()
    return upload.job_id


def store(settings: Settings, data: bytes, filename: str = "orders.csv", created_by: str = "cli:tests") -> int:
    return asyncio.run(store_async(settings, data, filename, created_by))


def close_worker_pool() -> None:
    """The runner keeps a pool per database per process: close them before a drop."""
    close_worker_pools()


def job_row(db: psycopg.Connection, job: int) -> dict[str, Any]:
    cur = db.execute(
        "SELECT status::text, inserted, updated, unchanged, failed, processed_rows, total_rows, message, "
        "lease_owner, finished_at, lsn::text, applied_through FROM import_job WHERE id = %s",
        [job],
    )
    names = [c.name for c in cur.description or ()]
    row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


def job_key(global_id_value: str) -> int:
    """The import_job id inside an ImportJob global id."""
    raw = base64.urlsafe_b64decode(global_id_value + "=" * (-len(global_id_value) % 4)).decode()
    type_name, _, key = raw.partition(":")
    assert type_name == "ImportJob"
    return int(key)


def wait_for_job(settings: Settings, job_id: int, timeout: float = 60.0) -> str:
    """Until the job has finished (or `timeout` s have passed); returns its status then."""
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:

        def status() -> str:
            row = conn.execute("SELECT status::text FROM import_job WHERE id = %s", [job_id]).fetchone()
            assert row is not None
            return str(row[0])

        wait_for(lambda: status() not in UNFINISHED, timeout, 0.1)
        return status()

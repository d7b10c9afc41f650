"""Storing an upload in PostgreSQL while it streams: the API's and the CLI's (`nexes import`)
one way to store a file.

Bytes are buffered only up to one chunk (1 MiB) plus the one being stored, so a 1 GiB
upload keeps the process's memory flat. Each chunk is its own short autocommit
statement, stored while the next one is read; reading waits when a chunk is still being
stored, so a fast client is held back by the database (backpressure), never buffered.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from psycopg import AsyncConnection

from nexes.db import imports as import_jobs
from nexes.errors import Code, NexesError
from nexes.imports.upload import StoredUpload
from nexes.observability import current_traceparent, request_id_var

log = logging.getLogger(__name__)
T = TypeVar("T")
CHUNK_BYTES = 1 << 20
MAX_FILENAME = 255


class Runner(Protocol):
    """Runs one unit of database work on the primary: `Router.write`, or a CLI's connection."""

    def __call__(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]], /) -> Awaitable[T]: ...


def too_large(limit: int) -> NexesError:
    return NexesError(Code.PAYLOAD_TOO_LARGE, f"the upload is larger than the limit of {limit} bytes")


def clean_filename(name: str | None) -> str | None:
    """The base name a client sent, without control characters, at most 255 characters."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(ch for ch in base if ch >= " " and ch != "\x7f")[:MAX_FILENAME]
    return cleaned or None


class UploadWriter:
    """One file streaming into import_upload_chunk: `start`, `write`..., then `finish` or `abort`."""

    def __init__(
        self, run: Runner, *, filename: str | None, max_bytes: int, retention_days: int, created_by: str
    ) -> None:
        self._run = run
        self.created_by = created_by  # the job's owner: the token's sub, or cli:<os user>
        self.filename = clean_filename(filename)
        self._max_bytes = max_bytes
        self._retention_days = retention_days
        self.job_id: int | None = None
        self.stored: StoredUpload | None = None
        self._buffer = bytearray()
        self._seq = 0
        self._size = 0
        self._hash = hashlib.sha256()
        self._inflight: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Create the UPLOADING job, owned by its creator, tagged with the request id and trace context."""
        request_id, traceparent = request_id_var.get(), current_traceparent()
        self.job_id = await self._run(
            lambda conn: import_jobs.create_job(
                conn,
                filename=self.filename,
                request_id=request_id,
                traceparent=traceparent,
                created_by=self.created_by,
            )
        )

    async def write(self, data: bytes) -> None:
        """Take the next bytes; returns once every full chunk but the last is stored."""
        self._size += len(data)
        if self._size > self._max_bytes:
            raise too_large(self._max_bytes)
        self._hash.update(data)
        self._buffer += data
        while len(self._buffer) >= CHUNK_BYTES:
            chunk = bytes(self._buffer[:CHUNK_BYTES])
            del self._buffer[:CHUNK_BYTES]
            await self._store(chunk)

    async def _store(self, chunk: bytes) -> None:
        """Store `chunk` in the background while the next one is read; at most one in flight."""
        await self._drain()
        job_id, seq = self._require_job(), self._seq
        self._seq += 1
        self._inflight = asyncio.ensure_future(
            self._run(lambda conn: import_jobs.append_chunk(conn, job_id, seq, chunk))
        )

    async def _drain(self) -> None:
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    async def finish(self) -> StoredUpload:
        """Store the last chunk and mark the job QUEUED (not yet enqueued), with its
        import.accepted audit row."""
        if self._buffer:
            await self._store(bytes(self._buffer))
            self._buffer.clear()
        await self._drain()
        job_id, size, digest = self._require_job(), self._size, self._hash.hexdigest()
        row = await self._run(
            lambda conn: import_jobs.finalize(
                conn, job_id, size_bytes=size, sha256=digest, retention_days=self._retention_days
            )
        )
        if row is None:
            raise NexesError(Code.INTERNAL, "the upload's job disappeared while it was stored")
        self.stored = StoredUpload(job_id, self.filename, size, digest)
        return self.stored

    async def abort(self) -> None:
        """Delete what was stored; safe to call twice, and after `finish` for an unused upload."""
        self._buffer.clear()
        task, self._inflight = self._inflight, None
        if task is not None:  # let the one insert in flight end (its outcome no longer matters)
            await asyncio.gather(task, return_exceptions=True)
        job_id, self.job_id = self.job_id, None
        if job_id is not None:
            await self._run(lambda conn: import_jobs.abort(conn, job_id))

    def _require_job(self) -> int:
        if self.job_id is None:
            raise RuntimeError("UploadWriter.start() was not called")
        return self.job_id


async def abort_all(writers: list[UploadWriter], *, keep_enqueued: bool = False) -> None:
    """Abort every writer (or every one whose upload was not enqueued); failures are logged,
    since the request's own outcome matters more, and the job expires in any case."""
    for writer in writers:
        if keep_enqueued and writer.stored is not None and writer.stored.enqueued:
            continue
        try:
            await writer.abort()
        except Exception:
            log.warning("could not delete upload of job %s; it expires on its own", writer.job_id, exc_info=True)

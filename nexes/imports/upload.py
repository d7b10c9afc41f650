"""A stored upload: the record the `Upload` scalar carries, and sending its job to the workers.

The bytes are stored by nexes.imports.store.UploadWriter (the API's and the CLI's one way
to store a file); schema and resolvers need only this record, not the HTTP edge.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class StoredUpload:
    """A stored, finalized upload whose job is QUEUED: the value of the `Upload` scalar."""

    job_id: int
    filename: str | None
    size_bytes: int
    sha256: str
    enqueued: bool = False


async def enqueue(upload: StoredUpload) -> None:
    """Send the upload's job to the workers, once. Dramatiq's Redis client blocks, so it runs
    in a thread (which inherits the request id for the message).

    The job is already durable and QUEUED: when the broker is down the message is logged
    as lost and the workers' sweep re-sends QUEUED jobs, so the upload is not refused.
    """
    if upload.enqueued:
        return
    upload.enqueued = True
    from nexes.jobs.imports import enqueue_import  # importing nexes.jobs configures the broker

    try:
        await asyncio.to_thread(enqueue_import, upload.job_id)
    except Exception:  # redis, dramatiq and socket errors alike: the sweep covers them all
        log.error("could not enqueue import job %d; it stays QUEUED for the sweep", upload.job_id, exc_info=True)

"""The import actor: a stored upload, parsed, staged and applied order by order.

`run_import` is a plain (thread) actor, not an async one: parsing is CPU work and
must not block the event loop that the AsyncIO middleware shares between actors.
"""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.middleware import CurrentMessage

from nexes.jobs import runtime

log = logging.getLogger(__name__)

QUEUE = "imports"


@dramatiq.actor(queue_name=QUEUE, max_retries=20, min_backoff=1_000, max_backoff=30_000, time_limit=6 * 3_600_000)
def run_import(job_id: int) -> None:
    """Run (or resume) import job `job_id`; a no-op when another worker holds its lease."""
    from nexes.jobs.imports_runner import run

    message = CurrentMessage.get_current_message()
    options = message.options if message is not None else {}
    run(
        job_id,
        runtime.settings,
        request_id=options.get("nexes_request_id"),
        traceparent=options.get("nexes_traceparent"),
    )


def enqueue_import(job_id: int) -> None:
    """Send the job to the workers; the broker's `TraceContext` middleware adds the caller's
    request id and trace context (nexes_request_id, nexes_traceparent) to the message."""
    run_import.send(job_id)

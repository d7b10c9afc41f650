"""The import actor: a stored upload, parsed, staged and applied order by order.

`run_import` is a plain (thread) actor, not an async one: parsing is CPU work and
must not block the event loop that the AsyncIO middleware shares between actors.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from nexes.observability import request_id_var, traceparent_var

log = logging.getLogger(__name__)

QUEUE = "imports"


@dramatiq.actor(queue_name=QUEUE, max_retries=20, min_backoff=1_000, max_backoff=30_000, time_limit=6 * 3_600_000)
def run_import(job_id: int) -> None:
    """Run (or resume) import job `job_id`; a no-op when another worker holds its lease."""
    from nexes.jobs import settings, tag_worker_logs
    from nexes.jobs.import_runner import run

    tag_worker_logs()
    message = CurrentMessage.get_current_message()
    options = message.options if message is not None else {}
    run(
        job_id,
        settings,
        request_id=options.get("nexes_request_id"),
        traceparent=options.get("nexes_traceparent"),
    )


def enqueue_import(job_id: int) -> None:
    """Send the job to the workers, with the caller's request id and trace context."""
    options: dict[str, Any] = {"nexes_request_id": request_id_var.get(), "nexes_traceparent": traceparent_var.get()}
    run_import.send_with_options(args=(job_id,), **{k: v for k, v in options.items() if v})

"""Dramatiq broker and actors. `dramatiq nexes.jobs` imports this module to run workers.

The broker is configured here, at import, because that import is the worker
process's entry point; settings are read once, from the environment.
"""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO, CurrentMessage

from nexes import settings as settings_module
from nexes.observability import request_id_var, traceparent_var

settings = settings_module.load()


def tag_worker_logs() -> None:
    """Every log record of a worker process carries the request id (and trace) of the
    job it serves. Dramatiq owns the worker processes' handlers and format (children
    pipe their records to the parent), so the tag goes into the record itself. Called
    by the actors (worker processes only; the API's JSON logs carry the ids already)."""
    global _tagging
    if _tagging:
        return
    _tagging = True
    make_record = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        request_id = request_id_var.get()
        if request_id:
            traceparent = traceparent_var.get()
            record.request_id = request_id
            record.msg = record.getMessage() + f" [request_id={request_id} traceparent={traceparent or '-'}]"
            record.args = None
        return record

    logging.setLogRecordFactory(factory)


_tagging = False
broker = RedisBroker(url=settings.redis_url)  # type: ignore[no-untyped-call]
broker.add_middleware(AsyncIO())
broker.add_middleware(CurrentMessage())
dramatiq.set_broker(broker)

from nexes.jobs import imports, maintenance, search  # noqa: E402  (actors register on the broker set above)

__all__ = ["broker", "imports", "maintenance", "search", "settings"]

"""Request identity for logs and SQL: the request id contextvar, JSON logs, SQL comments.

`sql_comment()` is the one audited place where text is added to SQL: it is built
only from values that passed `valid_request_id` / `TRACEPARENT`, so it can hold no
quote, no `*/` and no `%`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

import orjson

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

request_id_var: ContextVar[str | None] = ContextVar("nexes_request_id", default=None)
traceparent_var: ContextVar[str | None] = ContextVar("nexes_traceparent", default=None)
# Statements sent and time spent in the database for the current request.
sql_stats_var: ContextVar[list[float] | None] = ContextVar("nexes_sql_stats", default=None)


def valid_request_id(value: str | None) -> str | None:
    """`value` when it is a safe request id (<= 128 of [A-Za-z0-9._-]), else None."""
    return value if value is not None and REQUEST_ID.fullmatch(value) else None


def new_request_id() -> str:
    return uuid.uuid4().hex


def sql_comment() -> str:
    """The sqlcommenter-style comment for the current request, or '' outside one."""
    request_id = valid_request_id(request_id_var.get())
    if request_id is None:
        return ""
    traceparent = traceparent_var.get()
    if traceparent is not None and TRACEPARENT.fullmatch(traceparent):
        return f"/*request_id='{request_id}',traceparent='{traceparent}'*/ "
    return f"/*request_id='{request_id}'*/ "


def record_sql(seconds: float) -> None:
    stats = sql_stats_var.get()
    if stats is not None:
        stats.append(seconds)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the context that logged it."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def logging_config(level: str) -> dict[str, Any]:
    """dictConfig for the process, uvicorn's loggers included."""
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": ["default"], "level": level, "propagate": False},
        },
    }

"""Request identity for logs and SQL: the request id, the trace context, the log format, SQL comments.

`sql_comment()` is the one audited place where text is added to SQL: it is built
only from values that passed `valid_request_id` / `TRACEPARENT`, so it can hold no
quote, no `*/` and no `%`.

Traces are OpenTelemetry's (docs/design.md §9): `configure_tracing` installs the SDK once
per process when the standard OTEL_* variables name an OTLP endpoint. Without one,
only the API's no-op tracer runs: it records nothing and costs next to nothing, yet a
W3C `traceparent` that came in still becomes the current span context, so logs, SQL
comments and job messages carry it. `current_traceparent()` is what they all read.
"""

from __future__ import annotations

import logging
import logging.config
import os
import re
import time
from collections.abc import Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Link
    from opentelemetry.trace.span import SpanContext, TraceState
    from opentelemetry.util.types import Attributes

    from nexes.settings import Settings

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

request_id_var: ContextVar[str | None] = ContextVar("nexes_request_id", default=None)
# The trace context of a job when no span is current (set by the import runner from its
# message or its stored job); `current_traceparent()` prefers the current span's.
traceparent_var: ContextVar[str | None] = ContextVar("nexes_traceparent", default=None)
W3C = TraceContextTextMapPropagator()
# The Dramatiq message being processed, as (job_id, actor): set by the workers' TraceContext middleware.
job_var: ContextVar[tuple[str, str] | None] = ContextVar("nexes_job", default=None)
# Statements sent and time spent in the database for the current request.
sql_stats_var: ContextVar[list[float] | None] = ContextVar("nexes_sql_stats", default=None)


def valid_request_id(value: str | None) -> str | None:
    """`value` when it is a safe request id (<= 128 of [A-Za-z0-9._-]), else None."""
    return value if value is not None and REQUEST_ID.fullmatch(value) else None


def new_request_id() -> str:
    """32 hex digits of 128 random bits: uuid4().hex's shape at a fifth of its cost (0.6 us
    against 2.9, timeit; uuid4 was 1% of a shared dashboard request's CPU in py-spy, issue 21)."""
    return os.urandom(16).hex()


def format_traceparent(span_context: SpanContext) -> str:
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, else `traceparent_var`, else None."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return format_traceparent(span_context)
    return traceparent_var.get()


def extract_traceparent(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The context that continues a W3C `traceparent` (None when there is none, or it is malformed)."""
    if not traceparent:
        return None
    carrier = (
        {"traceparent": traceparent} if tracestate is None else {"traceparent": traceparent, "tracestate": tracestate}
    )
    context = W3C.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def sql_comment() -> str:
    """The sqlcommenter-style comment for the current request or job, or '' outside one."""
    request_id = valid_request_id(request_id_var.get())
    traceparent = current_traceparent()
    if traceparent is not None and not TRACEPARENT.fullmatch(traceparent):
        traceparent = None
    if request_id is None:
        return "" if traceparent is None else f"/*traceparent='{traceparent}'*/ "
    if traceparent is None:
        return f"/*request_id='{request_id}'*/ "
    return f"/*request_id='{request_id}',traceparent='{traceparent}'*/ "


def record_sql(seconds: float) -> None:
    stats = sql_stats_var.get()
    if stats is not None:
        stats.append(seconds)


def log_context() -> dict[str, str]:
    """What every log line carries besides its message: request_id, trace_id, span_id, and
    in a job job_id and actor (each only when known)."""
    fields: dict[str, str] = {}
    request_id = request_id_var.get()
    if request_id is not None:
        fields["request_id"] = request_id
    traceparent = current_traceparent()
    if traceparent is not None:
        fields["trace_id"], fields["span_id"] = traceparent[3:35], traceparent[36:52]
    job = job_var.get()
    if job is not None:
        fields["job_id"], fields["actor"] = job
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the context's fields (log_context)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            **log_context(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


# ANSI colours of the console format, by level.
COLOURS = {"DEBUG": "\x1b[2m", "INFO": "\x1b[32m", "WARNING": "\x1b[33m", "ERROR": "\x1b[31m", "CRITICAL": "\x1b[1;31m"}
DIM, RESET = "\x1b[2m", "\x1b[0m"


class ConsoleFormatter(logging.Formatter):
    """The same records as JsonFormatter, as one readable, coloured line each (NEXES_LOG_FORMAT=console,
    the development default): time, level, logger, message, then the request, job and trace ids dimmed."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        colour = COLOURS.get(record.levelname, "")
        fields = log_context()
        fields.pop("span_id", None)
        if "trace_id" in fields:
            fields["trace_id"] = fields["trace_id"][:8]
        context = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{stamp} {colour}{record.levelname:<7}{RESET} {DIM}{record.name}{RESET} {record.getMessage()}"
        if context:
            line += f"  {DIM}{context}{RESET}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def logging_config(level: str, log_format: str = "json") -> dict[str, Any]:
    """dictConfig for the process, uvicorn's loggers included; `log_format` is json or console.

    APScheduler logs two INFO lines per run of every job (the sweeps run every few
    seconds), httpx one per request: they log at WARNING; the periodic actors log at INFO
    when they did something."""
    handler = {"class": "logging.StreamHandler", "formatter": log_format, "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}, "console": {"()": ConsoleFormatter}},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": ["default"], "level": level, "propagate": False},
            "apscheduler": {"level": "WARNING"},
            # A line per request to Typesense (and per OTLP export): the spans and metrics have them.
            "httpx": {"level": "WARNING"},
            # RabbitMQ away: pika logs six ERROR lines (with the address) per failed connect,
            # and Dramatiq's consumers retry every few seconds each (about 50 lines a second in
            # the broker-restart drill); Dramatiq's own CRITICAL line per attempt and the
            # health check's code say it already.
            "pika": {"level": "CRITICAL"},
        },
    }


def configure_logging(level: str, log_format: str = "json") -> None:
    """Once per process, at its entry point (and again once its settings are read): every
    record through one handler on stderr, in one format."""
    logging.config.dictConfig(logging_config(level, log_format))


_provider: TracerProvider | None = None


def tracing_enabled() -> bool:
    """Whether this process records spans (the SDK is installed)."""
    return _provider is not None


def configure_tracing(settings: Settings, service: str) -> None:
    """Once per process, at its entry point: export spans over OTLP/HTTP when OTEL_* asks for it.

    `service` names the process unless OTEL_SERVICE_NAME does; the exporter, the batch
    processor and the sampler read their OTEL_* variables themselves. A later call, or
    one without an endpoint, changes nothing."""
    if settings.otel_traces_export and _provider is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        install_tracing(service, OTLPSpanExporter())


def install_tracing(service: str, exporter: SpanExporter) -> TracerProvider:
    """The SDK with `exporter` behind a batch processor, and httpx's instrumentation (Typesense);
    HTTP spans are made by `nexes.http.app`, SQL spans by psycopg's instrumentor on the pools'
    connections (`nexes.db.connect.traced`). Idempotent: the first provider installed stays."""
    global _provider
    if _provider is not None:
        return _provider
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)  # its sampler comes from OTEL_TRACES_SAMPLER(_ARG)
    provider.sampler = NoOrphanClientSpans(provider.sampler)
    provider.add_span_processor(BatchSpanProcessor(exporter))  # OTEL_BSP_*: export never blocks a request
    trace.set_tracer_provider(provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)  # Typesense's clients are httpx
    _provider = provider
    return provider


class NoOrphanClientSpans(Sampler):
    """The configured sampler, except that a client span with no parent is dropped: a call
    made outside any request or job (a health probe) is not a trace of its own."""

    def __init__(self, sampler: Sampler) -> None:
        self._sampler = sampler

    def should_sample(  # noqa: PLR0917  (the SDK's Sampler signature)
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if kind is SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
            return SamplingResult(Decision.DROP)
        return self._sampler.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"NoOrphanClientSpans{{{self._sampler.get_description()}}}"

"""One GraphQL operation, seen from outside: its span and its metrics.

The span is named after the operation (`query serviceOrders`), current while it runs, so
the SQL of its resolvers hangs under it; it carries the operation's type, its cost, the
error codes of its answer and the caller's roles. Related rows are fetched per batch
(a JOIN or one prefetch per connection, docs/design.md §7), so their SQL spans are one
per batch, not one per field: nothing here makes a span per resolver (Strawberry's
OpenTelemetry extension does, and costs as much as the page on wide pages).

The metrics: a latency histogram by operation name, type and outcome (the first error's
code, or OK), and a counter of error codes. Operation names come from the caller, so
the label takes at most MAX_NAMES distinct ones per process; later ones count as
`_other`, and a name that is not a plain GraphQL name of at most 64 characters too.
"""

from __future__ import annotations

import re
import time
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context as OtelContext
from opentelemetry.trace import Span, StatusCode

from nexes.errors import Code
from nexes.metrics import GRAPHQL_ERRORS, GRAPHQL_REQUESTS
from nexes.observability import tracing_enabled

TRACER = trace.get_tracer("nexes.graphql")
MAX_NAMES = 200
NAME = re.compile(r"[_A-Za-z][_0-9A-Za-z]{0,63}")
OTHER = "_other"
ANONYMOUS = "_anonymous"
# Codes that say the server failed, not the caller: the span's status is ERROR.
SERVER_CODES = frozenset({Code.INTERNAL, Code.SERVICE_UNAVAILABLE, Code.TIMEOUT})
_names: set[str] = set()


def label_of(name: str | None) -> str:
    """The operation's name as a metric label (bounded, see the module's docstring)."""
    if name is None:
        return ANONYMOUS
    if name in _names:
        return name
    if len(_names) < MAX_NAMES and NAME.fullmatch(name):
        _names.add(name)
        return name
    return OTHER


_children: dict[tuple[Any, ...], Any] = {}


def _series(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, kept: the label lookup costs more than the observation."""
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


class Operation:
    """Started before the operation runs; `finish` once its answer is made."""

    __slots__ = ("context", "span", "started", "token")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.context: Any = None  # the resolvers' Context, once made (nexes.resolvers.context)
        self.span: Span | None = None
        self.token: Token[OtelContext] | None = None
        if tracing_enabled():
            self.span = TRACER.start_span("graphql")
            self.token = otel_context.attach(trace.set_span_in_context(self.span))

    def finish(self, payload: dict[str, Any] | None, operation_name: str | None) -> None:
        """Record the operation: `payload` is its answer (None: it raised)."""
        node = getattr(self.context, "operation", None)
        kind = node.operation.value if node is not None else "unknown"
        name = label_of(node.name.value if node is not None and node.name else operation_name)
        codes = [error["extensions"]["code"] for error in payload.get("errors", ())] if payload else [Code.INTERNAL]
        outcome = codes[0] if codes else "OK"
        _series(GRAPHQL_REQUESTS, name, kind, outcome).observe(time.perf_counter() - self.started)
        for code in codes:
            _series(GRAPHQL_ERRORS, code).inc()
        if self.span is not None:
            self._end_span(kind, name, codes)

    def _end_span(self, kind: str, name: str, codes: list[str]) -> None:
        assert self.span is not None
        span = self.span
        span.update_name(kind if name == ANONYMOUS else f"{kind} {name}")
        attributes: dict[str, Any] = {"graphql.operation.type": kind}
        if name != ANONYMOUS:
            attributes["graphql.operation.name"] = name
        cost = getattr(self.context, "cost", None)
        if cost is not None:
            attributes["nexes.graphql.cost"] = cost.requested
        if codes:
            attributes["nexes.graphql.error_codes"] = codes
        viewer = getattr(self.context, "viewer", None)
        if viewer is not None:
            attributes["nexes.viewer.roles"] = sorted(viewer.roles)
        span.set_attributes(attributes)
        if SERVER_CODES.intersection(codes):
            span.set_status(StatusCode.ERROR, codes[0])
        if self.token is not None:
            otel_context.detach(self.token)
        span.end()

"""ASGI app factory: middleware, routes, lifespan."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nexes.auth.ratelimit import RateLimiter
from nexes.auth.revocation import Revocations
from nexes.auth.tokens import TokenVerifier
from nexes.db.connect.monitor import ReplicaMonitor
from nexes.db.connect.pools import Pools
from nexes.db.connect.router import AnalystRouter, Router
from nexes.db.keyset import CursorCodec
from nexes.errors import HTTP_STATUS, Code, NexesError
from nexes.execution.documents import Documents
from nexes.execution.hooks import Hooks
from nexes.execution.pipeline import DEFAULT_HOOKS, Pipeline
from nexes.execution.schema import schema
from nexes.http import exports, graphql, headers, health, ide, spa, uploads
from nexes.http.admission import AdmissionMiddleware
from nexes.http.auth import Authenticator, AuthMiddleware
from nexes.http.errors import error_payload, media_type_of, send_json
from nexes.http.opscheck import OpsCheck
from nexes.metrics import HTTP_REQUESTS, record_pools
from nexes.observability import (
    configure_tracing,
    extract_traceparent,
    format_traceparent,
    new_request_id,
    request_id_var,
    sql_stats_var,
    tracing_enabled,
    valid_request_id,
)
from nexes.search.engine import service_for
from nexes.search.health import SearchCheck
from nexes.settings import Settings


class RequestContextMiddleware:
    """X-Request-ID in (when safe) or made, set for logs and SQL, echoed back with a
    Server-Timing entry for the database work; bodies past the limit get 413, bodies
    that come too slowly 408.

    Uploads (POST /api/imports, multipart POST /graphql) stream into PostgreSQL and may
    reach `upload_max_bytes` plus one ordinary body for their other fields; the upload
    code enforces the exact per-file limit as it stores.

    Slow bodies (slowloris): an ordinary body must have arrived whole within
    `body_read_seconds` of the request's start; an upload, however long, may not pause
    more than `upload_idle_seconds` between two chunks. Both are read from the app's
    settings unless given. Header size and header time are the reverse proxy's to cap
    (README, "Behind a reverse proxy"): uvicorn with httptools has no setting for them."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        upload_max_bytes: int = 0,
        body_read_seconds: float | None = None,
        upload_idle_seconds: float | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.upload_max_bytes = upload_max_bytes + max_body_bytes
        self.body_read_seconds = body_read_seconds
        self.upload_idle_seconds = upload_idle_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == headers.REQUEST_ID.raw:
                incoming = valid_request_id(value.decode("latin-1"))
        request_id = incoming or new_request_id()
        request_id_var.set(request_id)
        stats: list[float] = []
        sql_stats_var.set(stats)
        started = time.perf_counter()
        responded = False

        async def send_with_headers(message: Message) -> None:
            nonlocal responded
            if message["type"] == "http.response.start":
                responded = True
                count_response(scope["path"], message["status"])
                db_ms = sum(stats) * 1000
                total_ms = (time.perf_counter() - started) * 1000
                timing = f'db;dur={db_ms:.2f};desc="{len(stats)} statements", app;dur={total_ms:.2f}'
                message["headers"] = [
                    *message.get("headers", []),
                    (headers.REQUEST_ID.raw, request_id.encode()),
                    (headers.SERVER_TIMING.raw, timing.encode()),
                ]
            await send(message)

        request_headers = dict(scope["headers"])
        upload = _is_upload(scope, request_headers)
        limit = self.upload_max_bytes if upload else self.max_body_bytes
        length = request_headers.get(headers.CONTENT_LENGTH.raw)
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _too_large(send_with_headers, limit, media_type_of(scope))
            return
        if _has_body(scope, request_headers):
            receive = self._guarded(scope, receive, limit, upload=upload)
        try:
            await self.app(scope, receive, send_with_headers)
        except _BodyRefused as exc:
            if responded:  # an endpoint that answered before it read the body: nothing left to say
                raise
            payload = {"errors": [error_payload(exc.code, exc.message)]}
            await send_json(send_with_headers, payload, exc.status, media_type=media_type_of(scope))

    def _guarded(self, scope: Scope, receive: Receive, limit: int, *, upload: bool) -> Receive:
        """`receive` with the size limit and the read deadlines, until the body is whole;
        afterwards (an endpoint waiting for the client to disconnect) unbounded."""
        # An upload's budget is per pause between two chunks; an ordinary body's, for all of it.
        configured = self.upload_idle_seconds if upload else self.body_read_seconds
        if configured is None:  # the app's settings (Starlette puts the app in the scope)
            settings = scope["app"].state.settings
            configured = settings.upload_idle_seconds if upload else settings.body_read_seconds
        budget = float(configured)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        seen = 0
        complete = False

        async def guarded() -> Message:
            nonlocal seen, complete
            if complete:
                return await receive()
            wait = budget if upload else deadline - loop.time()
            try:
                # asyncio.timeout, not wait_for: no task of its own around each receive (wait_for
                # made one per body message, 3% of a cached page's CPU).
                async with asyncio.timeout(max(wait, 0.0)):
                    message = await receive()
            except TimeoutError:
                raise _too_slow(upload, budget) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyRefused(Code.PAYLOAD_TOO_LARGE, _too_large_message(limit))
            return message

        return guarded


_counters: dict[tuple[str, int], Any] = {}


def count_response(path: str, status: int) -> None:
    """One more answer of `status` on the route of `path` (any other path is `other`: no
    label per path a client makes up)."""
    key = (path if path in ROUTES else "other", status)
    counter = _counters.get(key)
    if counter is None:
        counter = _counters[key] = HTTP_REQUESTS.labels(key[0], str(status))
    counter.inc()


def _has_body(scope: Scope, request_headers: dict[bytes, bytes]) -> bool:
    """Whether the request announces a body. Without one, `receive` only ever reports the
    client's disconnect, which an endpoint streaming its answer (the export) may await for
    as long as it streams: no deadline applies to that."""
    if request_headers.get(b"transfer-encoding") is not None:
        return True
    return request_headers.get(headers.CONTENT_LENGTH.raw, b"0") not in (b"0", b"")


class _BodyRefused(NexesError):
    """The body broke a limit of the HTTP edge: too large, or too slow. Raised from
    `receive`, so the endpoint's own error handling sees it; answered by the middleware
    when it escapes an endpoint before the response started."""

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]


def _too_slow(upload: bool, seconds: float) -> _BodyRefused:
    if upload:
        message = f"the upload paused for more than {seconds:g} s between two chunks (NEXES_UPLOAD_IDLE_SECONDS)"
    else:
        message = f"the request body did not arrive whole within {seconds:g} s (NEXES_BODY_READ_SECONDS)"
    return _BodyRefused(Code.REQUEST_TIMEOUT, message + "; send it again, faster")


def _too_large_message(limit: int) -> str:
    return f"the request body is larger than {limit} bytes"


async def _too_large(send: Send, limit: int, media_type: str) -> None:
    payload = {"errors": [error_payload(Code.PAYLOAD_TOO_LARGE, _too_large_message(limit))]}
    await send_json(send, payload, 413, media_type=media_type)


class TracingMiddleware:
    """A server span per HTTP request, continuing an incoming W3C `traceparent`; responses
    carry it back in `traceresponse`. With no SDK installed (nothing to export), the no-op
    tracer makes no span and only continues the caller's context, so that logs, SQL comments
    and job messages still carry the caller's trace.

    Hand-made, not opentelemetry-instrumentation-asgi: on this middleware stack that one
    added 120 us of CPU to a request (57 us when not sampled), mostly in attributes and
    header scans; this one adds 38 us (7 us)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        traceparent = tracestate = None
        for name, value in scope["headers"]:
            if name == headers.TRACEPARENT.raw:
                traceparent = value.decode("latin-1")
            elif name == headers.TRACESTATE.raw:
                tracestate = value.decode("latin-1")
        parent = extract_traceparent(traceparent, tracestate)
        if not tracing_enabled() or scope["path"] in UNTRACED_PATHS:
            await self._continued(parent, scope, receive, send)
            return
        method = scope["method"]
        span = HTTP_TRACER.start_span(
            f"{method} {scope['path']}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
            },
        )
        response_header = (headers.TRACERESPONSE.raw, format_traceparent(span.get_span_context()).encode())

        async def send_traced(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                span.set_attribute("http.response.status_code", status)
                if status == 404:  # not a route: no path in the name (unbounded names)
                    span.update_name(method)
                elif status >= 500:
                    span.set_status(StatusCode.ERROR)
                message["headers"] = [*message.get("headers", []), response_header]
            await send(message)

        token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            await self.app(scope, receive, send_traced)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, type(exc).__name__)
            raise
        finally:
            span.end()
            otel_context.detach(token)

    async def _continued(self, parent: Context | None, scope: Scope, receive: Receive, send: Send) -> None:
        if parent is None:
            await self.app(scope, receive, send)
            return
        token = otel_context.attach(parent)
        try:
            await self.app(scope, receive, send)
        finally:
            otel_context.detach(token)


def _is_upload(scope: Scope, request_headers: dict[bytes, bytes]) -> bool:
    if scope["method"] != "POST":
        return False
    if scope["path"] == IMPORTS_PATH:
        return True
    content_type = request_headers.get(headers.CONTENT_TYPE.raw, b"")
    return scope["path"] == graphql.PATH and content_type.lower().startswith(headers.MULTIPART.encode())


IMPORTS_PATH = "/api/imports"


def create_app(settings: Settings, hooks: Hooks = DEFAULT_HOOKS) -> Starlette:
    """The API; `hooks` are the GraphQL pipeline's (nexes.execution.hooks).

    Refuses (SettingsError) without a JWT key source or a cursor secret."""
    settings.check_api()
    configure_tracing(settings, "nexes-api")  # once per process: a later call changes nothing
    pools = Pools.for_api(settings)
    monitor = ReplicaMonitor.for_settings(settings)
    verifier = TokenVerifier(settings)
    revocations = Revocations(settings.redis_url, settings.redis_timeout)
    limiter = RateLimiter(settings.redis_url, settings.redis_timeout)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pools.open()
        # uvicorn accepts only once this returns: a new worker (a rolling restart) takes
        # requests with its connections made and its search client warm.
        await pools.wait(settings.pool_timeout)
        await monitor.start()
        await verifier.start()
        await service_for(settings).warm()
        # Start-up objects live forever: keep the collector from scanning them again.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 20)  # requests allocate many short-lived objects
        try:
            yield
        finally:
            await monitor.stop()
            await pools.close()
            await revocations.close()
            await app.state.documents.close()
            await limiter.close()

    app = Starlette(
        routes=[
            Route(graphql.PATH, graphql.endpoint, methods=["GET", "POST"]),
            Route(IMPORTS_PATH, uploads.imports, methods=["POST"]),
            Route(health.PATH, health.health),
            Route(health.DETAIL_PATH, health.health_detail),
            Route(health.LIVE_PATH, health.health_live),
            Route(EXPORT_PATH, exports.service_orders_csv),
            # No /metrics here: `nexes serve` serves it on NEXES_OPS_LISTEN only (nexes/metrics.py).
            *ide.routes(settings),  # GraphiQL, in development or with NEXES_GRAPHIQL=on
            *spa.routes(settings),  # the reference SPA at /app, in development with NEXES_SPA_DIR
        ],
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.pools = pools
    app.state.monitor = monitor
    app.state.router = Router(
        pools, health=monitor, replica_timeout=settings.replica_probe_timeout, share_reads=settings.share_reads
    )
    # Health reads the monitor's last round; Redis, the broker and search are probed in the same round.
    monitor.add_check(health.RedisCheck(settings))
    monitor.add_check(health.BrokerCheck(settings))  # Dramatiq's, Redis or RabbitMQ
    monitor.add_check(SearchCheck(settings, app.state.router, timeout=settings.typesense_timeout))
    monitor.add_check(OpsCheck(app.state.router, timeout=settings.replica_probe_timeout * 3))
    monitor.add_tick(lambda: record_pools(pools.all()))  # the pool gauges of /metrics, each round
    app.state.analyst_router = AnalystRouter(app.state.router)
    app.state.cursors = CursorCodec(str(settings.cursor_secret).encode())
    app.state.limiter = limiter
    app.state.pipeline = Pipeline(schema, hooks, cache_bytes=settings.document_cache_bytes)
    # Persisted queries and the allow-list (NEXES_TRUSTED_DOCUMENTS), before parsing.
    app.state.documents = Documents(settings, app.state.router)
    app.add_middleware(graphql.GraphQLMiddleware)  # inside the request context: it sees the request id
    # Who is asking, before any endpoint (the GraphQL one included); its 401s carry the request id.
    app.state.authenticator = Authenticator(verifier, revocations)
    app.add_middleware(AuthMiddleware, authenticator=app.state.authenticator)
    # At most NEXES_MAX_CONCURRENT_REQUESTS at once, before the token is checked; 503 past it.
    app.add_middleware(AdmissionMiddleware)
    app.add_middleware(
        RequestContextMiddleware, max_body_bytes=settings.max_body_bytes, upload_max_bytes=settings.import_max_bytes
    )
    app.add_middleware(TracingMiddleware)  # outside the request context: its logs and SQL are in the span
    if settings.cors_origins:  # outermost: preflights never reach the app
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[h.name for h in headers.CORS_ALLOWED],
            expose_headers=[h.name for h in headers.CORS_EXPOSED],
            max_age=600,
        )
    return app


EXPORT_PATH = "/api/exports/service-orders.csv"
ROUTES = frozenset({graphql.PATH, IMPORTS_PATH, health.PATH, health.DETAIL_PATH, health.LIVE_PATH, EXPORT_PATH})
# Probes and scrapes every few seconds: not worth a trace each.
UNTRACED_PATHS = frozenset({health.PATH, health.DETAIL_PATH, health.LIVE_PATH})
HTTP_TRACER = trace.get_tracer("nexes.http")


def app_from_env() -> Starlette:
    """Entry point for uvicorn's factory mode: settings from the environment."""
    from nexes import settings as settings_module

    return create_app(settings_module.load())

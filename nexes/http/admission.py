"""Admission control: at most NEXES_MAX_CONCURRENT_REQUESTS requests run at once in one
API process; past it, a new request is answered 503 SERVICE_UNAVAILABLE with Retry-After
at once, instead of queueing without bound behind the pools and the event loop.

Who: every HTTP request but the liveness probe (`/api/health/live`: a saturated process is
alive, and an orchestrator that saw it fail would restart it and lose every request in
flight). It runs before authentication, so a refusal costs no token check.
Cost: a counter, up and down. Reveals: that this process is busy, no more.

A plain ASGI middleware rather than uvicorn's `--limit-concurrency`: uvicorn counts
connections and tasks, idle keep-alive connections included, and answers a bare 503
without the error registry's body, the request id or Retry-After.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from nexes.errors import Code
from nexes.http import headers
from nexes.http.errors import error_payload, media_type_of, send_json
from nexes.http.health import LIVE_PATH
from nexes.metrics import REQUESTS_REFUSED

RETRY_AFTER_SECONDS = 1


class AdmissionMiddleware:
    """Counts the requests in flight; refuses past `max_requests` (default: the app's
    settings, `max_concurrent_requests`)."""

    def __init__(self, app: ASGIApp, max_requests: int | None = None, exempt: frozenset[str] = frozenset({LIVE_PATH})):
        self.app = app
        self.max_requests = max_requests
        self.exempt = exempt
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        limit = self.max_requests
        if limit is None:  # the app's settings (Starlette puts the app in the scope)
            limit = self.max_requests = scope["app"].state.settings.max_concurrent_requests
        if self.in_flight >= limit:
            await _refuse(send, limit, media_type_of(scope))
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def _refuse(send: Send, limit: int, media_type: str) -> None:
    REQUESTS_REFUSED.inc()
    message = (
        f"this server runs {limit} requests at once (NEXES_MAX_CONCURRENT_REQUESTS) and all are taken; "
        f"retry in {RETRY_AFTER_SECONDS} s"
    )
    payload = {"errors": [error_payload(Code.SERVICE_UNAVAILABLE, message)]}
    retry = [(headers.RETRY_AFTER.raw, str(RETRY_AFTER_SECONDS).encode())]
    await send_json(send, payload, 503, retry, media_type)

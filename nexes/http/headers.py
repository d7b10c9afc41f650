"""Every HTTP header Nexes reads or writes, named once.

`name` is the documented spelling (CORS lists, messages); `key` is the lower-case form
Starlette's Headers take; `raw` is the bytes an ASGI scope or message carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Header:
    name: str
    key: str = field(init=False)
    raw: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.name.lower())
        object.__setattr__(self, "raw", self.name.lower().encode("latin-1"))


# Nexes' own (docs/design.md §5)
MIN_LSN = Header("X-Nexes-Min-LSN")  # in: reads must see this WAL position
LSN = Header("X-Nexes-LSN")  # out: the primary's WAL position after a request that wrote
CSRF = Header("X-Nexes-CSRF")  # in: uploads need it, or one of Apollo's two below (any non-empty value)
APOLLO_PREFLIGHT = Header("Apollo-Require-Preflight")  # in: Apollo's conventional non-simple header
APOLLO_OPERATION = Header("X-Apollo-Operation-Name")  # in: Apollo's other one
# Any of these makes an upload a non-simple request, which a browser preflights (CORS).
CSRF_HEADERS = (CSRF, APOLLO_PREFLIGHT, APOLLO_OPERATION)
# Identity (nexes.http.auth)
AUTHORIZATION = Header("Authorization")  # in: Bearer <JWT>
WWW_AUTHENTICATE = Header("WWW-Authenticate")  # out: with every 401
# Rate limits (GitHub's names) and when to come back
RATE_LIMITS = tuple(Header(f"X-RateLimit-{part}") for part in ("Limit", "Remaining", "Reset", "Used", "Resource"))
RETRY_AFTER = Header("Retry-After")
# Request identity and timing
REQUEST_ID = Header("X-Request-ID")  # in (when safe) and out
SERVER_TIMING = Header("Server-Timing")  # out: database and total time
TRACEPARENT = Header("traceparent")  # in: W3C trace context
TRACESTATE = Header("tracestate")  # in
TRACERESPONSE = Header("traceresponse")  # out: the server span
# HTTP's own
ACCEPT = Header("Accept")  # in: application/graphql-response+json or application/json (nexes.http.errors)
CONTENT_TYPE = Header("Content-Type")
CONTENT_LENGTH = Header("Content-Length")
CONTENT_DISPOSITION = Header("Content-Disposition")  # in: a raw import's filename; out: the export's

# Media types
JSON = "application/json"
JSON_RAW = JSON.encode()
GRAPHQL_RESPONSE = "application/graphql-response+json"  # GraphQL over HTTP's own
MULTIPART = "multipart/form-data"
CSV = "text/csv; charset=utf-8"

# The SPA reads these from responses, and sends these with requests (CORS; docs/design.md §5).
CORS_EXPOSED = (LSN, REQUEST_ID, SERVER_TIMING, TRACERESPONSE, WWW_AUTHENTICATE, *RATE_LIMITS, RETRY_AFTER)
CORS_ALLOWED = (CONTENT_TYPE, AUTHORIZATION, MIN_LSN, *CSRF_HEADERS, REQUEST_ID, TRACEPARENT, TRACESTATE)


def scope_header(scope_headers: list[tuple[bytes, bytes]], header: Header) -> str:
    """The first value of a header in an ASGI scope's list, or ""."""
    raw = header.raw
    for key, value in scope_headers:
        if key == raw:
            return value.decode("latin-1")
    return ""

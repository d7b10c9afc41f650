"""Every error the HTTP edge answers, built here: a GraphQL `errors` list whose entries
carry a registry code and the request id, and the HTTP status of a GraphQL response
under the media type the client asked for (`negotiate`, `response_status`: the status
table of GraphQL over HTTP, README "Error codes").

Starlette endpoints answer with `error_response`; the plain-ASGI paths (JSON POST
/graphql, the body limit) with `send_json`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson
from graphql import GraphQLError
from starlette.responses import Response
from starlette.types import Scope, Send

from nexes.db.connect.router import translate
from nexes.errors import HTTP_STATUS, Code, NexesError
from nexes.http import headers
from nexes.http.response_size import TooLarge, dumps_within
from nexes.observability import request_id_var
from nexes.schema.rendered import default

log = logging.getLogger(__name__)
Payload = dict[str, Any]


def error_payload(code: Code, message: str, **extra: Any) -> Payload:
    """One entry of an `errors` list."""
    return {"message": message, "extensions": {"code": code.value, "requestId": request_id_var.get(), **extra}}


def refusal(code: Code, message: str, status: int) -> tuple[Payload, int]:
    """The payload and status of a request refused with one error and no data."""
    return {"errors": [error_payload(code, message)]}, status


def error_result(exc: NexesError) -> tuple[Payload, int]:
    """The payload and HTTP status of a request refused before execution."""
    extra: dict[str, Any] = {"field": exc.field} if exc.field else {}
    if exc.extensions:
        extra.update(exc.extensions)
    return {"errors": [error_payload(exc.code, exc.message, **extra)]}, HTTP_STATUS[exc.code]


def format_error(error: GraphQLError) -> Payload:
    """A GraphQL error as the client sees it: a registry code, the request id, no trace."""
    original = error.original_error
    translated = translate(original) if original is not None else None
    extra: dict[str, Any] = {}
    if isinstance(original, NexesError):
        code, message = original.code, original.message
        if original.field:
            extra["field"] = original.field
        if original.extensions:
            extra.update(original.extensions)
    elif translated is not None:
        code, message = translated.code, translated.message
    elif error.path is None:
        # Parse, validation and variable coercion errors: graphql-core's messages say what is wrong.
        code, message = Code.BAD_USER_INPUT, error.message
    else:
        log.error("unexpected error at %s", error.path, exc_info=original or error)
        code, message = Code.INTERNAL, f"internal error; quote request id {request_id_var.get()}"
    payload = error_payload(code, message, **extra)
    if error.locations:
        payload["locations"] = [{"line": loc.line, "column": loc.column} for loc in error.locations]
    if error.path is not None:
        payload["path"] = error.path
    return payload


JSON = headers.JSON
GRAPHQL_RESPONSE = headers.GRAPHQL_RESPONSE

# Codes about the request itself (who asks, how often, how much, whether the server can
# take it), not about the operation's result: when nothing was answered (no `data`, or
# `data: null`) the response carries the code's own status under either media type.
REQUEST_CODES = (
    Code.UNAUTHENTICATED,
    Code.FORBIDDEN,  # operation-level, refused before execution; a field's FORBIDDEN comes with data
    Code.DOCUMENT_NOT_TRUSTED,
    Code.RATE_LIMITED,
    Code.PAYLOAD_TOO_LARGE,
    Code.REQUEST_TIMEOUT,
    Code.SERVICE_UNAVAILABLE,
    Code.CSRF_HEADER_REQUIRED,
)
# A GraphQL response without `data` under application/graphql-response+json must be 4xx
# or 5xx: the code's status, but for the one whose registry status is a 200 for Apollo's
# clients under application/json (404, which Apollo's persisted-query link retries
# without turning persisted queries off, as it does on 400 and 500).
_WITHOUT_DATA = {code: status if status >= 400 else 404 for code, status in HTTP_STATUS.items()}
# Seconds a 503 asks the client to wait when the error names none.
RETRY_AFTER_UNAVAILABLE = 1


def media_type_of(scope: Scope) -> str:
    """The negotiated media type of an answer to this ASGI request (its Accept header)."""
    return negotiate(headers.scope_header(scope["headers"], headers.ACCEPT))


def negotiate(accept: str) -> str:
    """The media type of a GraphQL answer from the request's Accept: graphql-response+json
    when Accept prefers it (higher q; the first listed on a tie), else application/json,
    also for no Accept, `*/*`, `application/*` or only types Nexes does not answer in."""
    best, best_q = JSON, 0.0
    for part in accept.split(","):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        if media == GRAPHQL_RESPONSE:
            kind = GRAPHQL_RESPONSE
        elif media in (JSON, "application/*", "*/*"):
            kind = JSON
        else:
            continue
        q = _quality(params)
        if q > best_q:
            best, best_q = kind, q
    return best


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return min(max(float(value.strip()), 0.0), 1.0)
            except ValueError:
                return 0.0  # a malformed weight accepts nothing
    return 1.0


def response_status(payload: Payload, media_type: str) -> int:
    """The HTTP status of a GraphQL response, the one place it is decided.

    - A request code (REQUEST_CODES) on a response that answered nothing: its status
      (401, 403, 429, 413, 408, 503, ...) under both media types.
    - application/json: 200 for everything else, the code in `extensions.code` (parse,
      validation and variable errors, BAD_CURSOR, QUERY_TOO_COMPLEX, TIMEOUT, ...).
    - application/graphql-response+json: 200 when `data` is present (null included);
      without `data`, the code's 4xx or 5xx: 400 for parse, validation and variable
      errors (BAD_USER_INPUT), 400 when the errors carry different codes.

    A request that is not a GraphQL-over-HTTP request at all (the body not JSON, `query`
    not a string, ...) is 400 under both (`error_result`), a mutation over GET 405."""
    errors = payload.get("errors")
    if not errors:
        return 200
    codes = [Code(e["extensions"]["code"]) for e in errors]
    if payload.get("data") is None:
        for code in codes:
            if code in REQUEST_CODES:
                return HTTP_STATUS[code]
    if media_type != GRAPHQL_RESPONSE or "data" in payload:
        return 200
    first = codes[0]
    return _WITHOUT_DATA[first] if all(code is first for code in codes) else 400


def status_of(code: Code, media_type: str) -> int:
    """The status of a response whose one error carries `code` and no data (the README's table)."""
    return response_status({"errors": [{"extensions": {"code": code.value}}]}, media_type)


def status_table() -> list[tuple[Code, int, int]]:
    """Every code with its status under application/json and application/graphql-response+json
    when the response has no data (the README's table, checked by tests/test_api_errors.py)."""
    return [(code, status_of(code, JSON), status_of(code, GRAPHQL_RESPONSE)) for code in Code]


def retry_headers(payload: Payload, status: int) -> list[tuple[bytes, bytes]]:
    """Retry-After on a 503 whose errors name no wait of their own (a 429's comes with
    the rate limiter's retryAfter, in nexes.http.graphql.response_headers)."""
    if status != 503 or any("retryAfter" in e["extensions"] for e in payload.get("errors", ())):
        return []
    return [(headers.RETRY_AFTER.raw, str(RETRY_AFTER_UNAVAILABLE).encode())]


def json_response(payload: Any, status: int = 200, media_type: str = JSON, max_bytes: int = 0) -> Response:
    """`max_bytes` (NEXES_MAX_RESPONSE_BYTES; 0: none): past it RESPONSE_TOO_LARGE instead."""
    content, status = _dumps(payload, status, media_type, max_bytes)
    return Response(content, status_code=status, media_type=media_type)


def _dumps(payload: Any, status: int, media_type: str, max_bytes: int) -> tuple[bytes, int]:
    """The body and status of `payload`, written in parts under `max_bytes` when given."""
    if not max_bytes:
        return orjson.dumps(payload, default=default), status
    try:
        return dumps_within(payload, max_bytes), status
    except TooLarge:
        refused = too_large(payload, max_bytes)
        return orjson.dumps(refused), response_status(refused, media_type)


def too_large(payload: Any, limit: int) -> Payload:
    """The answer that replaces one past the cap; its extensions (cost, consistency) kept."""
    message = (
        f"the answer is larger than {limit} bytes (NEXES_MAX_RESPONSE_BYTES); ask for fewer rows or fields "
        "(smaller pages, fewer nested connections)"
    )
    refused: Payload = {"errors": [error_payload(Code.RESPONSE_TOO_LARGE, message)]}
    if isinstance(payload, dict) and "extensions" in payload:
        refused["extensions"] = payload["extensions"]
    return refused


def error_response(exc: NexesError, media_type: str = JSON) -> Response:
    return json_response(*error_result(exc), media_type=media_type)


async def send_json(
    send: Send,
    payload: Any,
    status: int,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
    media_type: str = JSON,
    *,
    max_bytes: int = 0,
) -> None:
    """A whole JSON response on a plain ASGI `send`; `max_bytes` as json_response's."""
    content, status = _dumps(payload, status, media_type, max_bytes)
    response_headers = [
        (headers.CONTENT_LENGTH.raw, str(len(content)).encode()),
        (headers.CONTENT_TYPE.raw, media_type.encode()),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": content})

"""Every error the HTTP edge answers, built here: a GraphQL `errors` list whose entries
carry a registry code and the request id, with the HTTP status the code implies.

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
from starlette.types import Send

from nexes.db.connect.router import translate
from nexes.errors import HTTP_STATUS, Code, NexesError
from nexes.http import headers
from nexes.http.response_size import TooLarge, dumps_within
from nexes.observability import request_id_var

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


def request_status(errors: list[Payload]) -> int:
    """The status of a response without data: its code's when all errors share one, else 400."""
    codes = {e["extensions"]["code"] for e in errors}
    if len(codes) == 1:
        return HTTP_STATUS[Code(codes.pop())]
    return 400


def json_response(payload: Any, status: int = 200, max_bytes: int = 0) -> Response:
    """`max_bytes` (NEXES_MAX_RESPONSE_BYTES; 0: none): past it RESPONSE_TOO_LARGE instead."""
    content, status = _dumps(payload, status, max_bytes)
    return Response(content, status_code=status, media_type=headers.JSON)


def _dumps(payload: Any, status: int, max_bytes: int) -> tuple[bytes, int]:
    """The body and status of `payload`, written in parts under `max_bytes` when given."""
    if not max_bytes:
        return orjson.dumps(payload), status
    try:
        return dumps_within(payload, max_bytes), status
    except TooLarge:
        refused = too_large(payload, max_bytes)
        return orjson.dumps(refused), HTTP_STATUS[Code.RESPONSE_TOO_LARGE]


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


def error_response(exc: NexesError) -> Response:
    return json_response(*error_result(exc))


async def send_json(
    send: Send, payload: Any, status: int, extra_headers: Iterable[tuple[bytes, bytes]] = (), max_bytes: int = 0
) -> None:
    """A whole JSON response on a plain ASGI `send`; `max_bytes` as json_response's."""
    content, status = _dumps(payload, status, max_bytes)
    response_headers = [
        (headers.CONTENT_LENGTH.raw, str(len(content)).encode()),
        (headers.CONTENT_TYPE.raw, headers.JSON_RAW),
        *extra_headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": content})

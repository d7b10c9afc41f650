"""POST /graphql with a JSON body, as a plain ASGI middleware in front of Starlette's routing.

This is the API's hot path. Starlette's router, its Request and Response objects and
its exception middleware cost about a tenth of a cached 50-row page's CPU; this does
the same work as `endpoints.graphql` for a JSON POST (`request_from_json`,
`execute_graphql`, one orjson dump) without them. Everything else (GET, multipart
uploads, other content types and paths) goes on to Starlette unchanged, and errors
that escape still reach Starlette's ServerErrorMiddleware outside this one.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from nexes.errors import NexesError
from nexes.http.endpoints import error_result, execute_graphql, lsn_of, request_from_json

JSON = b"application/json"


def _is_json_post(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["path"] != "/graphql" or scope["method"] != "POST":
        return False
    for name, value in scope["headers"]:
        if name == b"content-type":  # the first one, as Starlette's Headers.get reads it
            return bool(value.startswith(JSON))
    return False


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return ""


async def _body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client went away first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class GraphQLPostMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_json_post(scope):
            await self.app(scope, receive, send)
            return
        try:
            body = await _body(receive)
            if body is None:
                return
            gql = request_from_json(body)
        except NexesError as exc:
            payload, status = error_result(exc)
        else:
            payload, status = await execute_graphql(
                scope["app"].state, gql, _header(scope, b"x-nexes-admin-token"), _header(scope, b"x-nexes-min-lsn")
            )
        content = orjson.dumps(payload)
        headers = [(b"content-length", str(len(content)).encode()), (b"content-type", JSON)]
        lsn = lsn_of(payload)
        if lsn is not None:
            headers.append((b"x-nexes-lsn", lsn.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

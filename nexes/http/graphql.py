"""GraphQL over HTTP: /graphql, the one endpoint.

- A JSON POST (the API's hot path) is answered in plain ASGI (`json_post`): one orjson
  parse, one pipeline run, one orjson dump. `GraphQLMiddleware` takes it in front of
  Starlette's routing, whose router, Request and Response objects and exception
  middleware cost about a tenth of a cached 50-row page's CPU.
- GET (queries only; GraphiQL's page, nexes.http.ide, when it is on) and multipart uploads (nexes.http.uploads
  stores the files, then the operation runs here) go through Starlette's route, `endpoint`.

Either way the request runs through the app's nexes.execution.pipeline.Pipeline, and
errors are formatted by nexes.http.errors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from nexes.auth.identity import Viewer
from nexes.db.connect.lsn import parse_lsn
from nexes.db.connect.router import Consistency, consistency_var
from nexes.errors import Code, NexesError, bad_input
from nexes.execution.cost import CostReport, count_nodes
from nexes.execution.documents import persisted_hash
from nexes.execution.pipeline import OperationNotAllowed, UnknownOperation
from nexes.http import headers, ide
from nexes.http.auth import viewer_of
from nexes.http.errors import (
    JSON,
    Payload,
    error_response,
    error_result,
    format_error,
    json_response,
    negotiate,
    refusal,
    response_status,
    retry_headers,
    send_json,
)
from nexes.http.operations import Operation
from nexes.http.uploads import graphql_multipart, is_multipart
from nexes.observability import request_id_var
from nexes.resolvers.context import Context

PATH = "/graphql"


@dataclass(frozen=True, slots=True)
class GraphQLRequest:
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None
    queries_only: bool  # GET
    # extensions.persistedQuery.sha256Hash (lowercase); `query` is "" when only the hash came
    persisted: str | None = None
    dry_run: bool = False  # extensions.dryRun: the cost, without executing


def request_from_json(body: bytes) -> GraphQLRequest:
    """The GraphQL parameters of a JSON POST body, validated; else NexesError."""
    return request_from_params(_loads(body, "the body"), queries_only=False)


def request_from_params(params: Any, *, queries_only: bool) -> GraphQLRequest:
    if not isinstance(params, dict):
        raise bad_input("the request body must be a JSON object with a 'query'")
    query, variables, operation_name = params.get("query"), params.get("variables"), params.get("operationName")
    if isinstance(variables, str):
        variables = _loads(variables.encode(), "'variables'")
    extensions = params.get("extensions")
    if isinstance(extensions, str):  # GET: a JSON query parameter
        extensions = _loads(extensions.encode(), "'extensions'")
    persisted = persisted_hash(extensions)
    if persisted is not None and query in (None, ""):
        query = ""  # a persisted query by its hash alone (nexes.execution.documents)
    elif not isinstance(query, str) or not query.strip():
        raise bad_input("'query' must be a non-empty string")
    if variables is not None and not isinstance(variables, dict):
        raise bad_input("'variables' must be a JSON object")
    if operation_name is not None and not isinstance(operation_name, str):
        raise bad_input("'operationName' must be a string")
    return GraphQLRequest(query, variables, operation_name, queries_only, persisted, dry_run=_dry_run(extensions))


def _dry_run(extensions: dict[str, Any] | None) -> bool:
    """`extensions: {"dryRun": true}`; `extensions` already parsed and checked to be an
    object (persisted_hash)."""
    if extensions is None:
        return False
    dry_run = extensions.get("dryRun", False)
    if not isinstance(dry_run, bool):
        raise bad_input("'extensions.dryRun' must be true or false")
    return dry_run


def _loads(raw: bytes, what: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_input(f"{what} is not valid JSON") from None


async def execute(
    app: Any, gql: GraphQLRequest, viewer: Viewer, min_lsn: str = "", media_type: str = JSON
) -> tuple[Payload, int]:
    """`answer`, as one operation's span and metrics (nexes.http.operations)."""
    operation = Operation()
    payload: Payload | None = None
    try:
        payload, status = await answer(app, gql, viewer, min_lsn, media_type, operation=operation)
    finally:
        operation.finish(payload, gql.operation_name)
    return payload, status


async def answer(
    app: Any, gql: GraphQLRequest, viewer: Viewer, min_lsn: str, media_type: str, *, operation: Operation
) -> tuple[Payload, int]:
    """The payload and HTTP status of a parsed request, run with the app's state; the
    status as GraphQL over HTTP gives it under `media_type` (nexes.http.errors.response_status).

    `min_lsn` (X-Nexes-Min-LSN) keeps reads off replicas that have not replayed it; a
    request that wrote gets the primary's position after its commit in
    `extensions.consistency.lsn` (and the response in X-Nexes-LSN)."""
    if gql.persisted is not None or app.documents.allow_list:
        try:  # the text to run: the query, a registered document or a stored one
            gql = replace(gql, query=await app.documents.resolve(gql.query, gql.persisted, viewer))
        except NexesError as exc:
            payload = error_result(exc)[0]
            return payload, response_status(payload, media_type)
    consistency = Consistency()
    if min_lsn:
        consistency.min_lsn = parse_lsn(min_lsn)
        if consistency.min_lsn is None:
            return error_result(bad_input(f"{headers.MIN_LSN.name} must be a WAL position like 16/B374D848"))
    token = consistency_var.set(consistency)
    try:
        payload, status = await _run(app, gql, viewer, media_type, operation)
    finally:
        consistency_var.reset(token)
    if consistency.lsn is not None:
        payload.setdefault("extensions", {})["consistency"] = {"lsn": consistency.lsn_text}
    return payload, status


async def _run(
    app: Any, gql: GraphQLRequest, viewer: Viewer, media_type: str, operation: Operation
) -> tuple[Payload, int]:
    context = operation.context = Context(
        request_id=request_id_var.get() or "",
        settings=app.settings,
        # An analyst's reads run under the analyst role on the analyst pools, always.
        router=app.analyst_router if viewer.analyst_only else app.router,
        cursors=app.cursors,
        viewer=viewer,
        limiter=getattr(app, "limiter", None),
    )
    try:
        result = await app.pipeline.run(
            gql.query,
            gql.variables,
            gql.operation_name,
            context,
            queries_only=gql.queries_only,
            dry_run=gql.dry_run,
        )
    except OperationNotAllowed:
        return refusal(Code.BAD_USER_INPUT, "GET runs only queries; send mutations with POST", 405)
    except UnknownOperation:  # a GraphQL request error, as graphql-core's own would be
        message = "the document has no operation by that operationName (or several and no operationName)"
        payload = refusal(Code.BAD_USER_INPUT, message, 400)[0]
        return payload, response_status(payload, media_type)
    cost = context.cost
    if result.errors and result.data is None and all(e.path is None for e in result.errors):
        # Refused before execution (syntax, validation, permissions, cost): no `data` at all.
        errors = [format_error(e) for e in result.errors]
        payload = _with_cost({"errors": errors}, cost)
        return payload, response_status(payload, media_type)
    if gql.dry_run:  # priced, not run
        return _with_cost({}, cost), 200
    payload = {"data": result.data}
    if result.errors:
        payload["errors"] = [format_error(e) for e in result.errors]
    if cost is not None:
        cost.actual_nodes = count_nodes(result.data)
    return _with_cost(payload, cost), response_status(payload, media_type)


def _with_cost(payload: Payload, cost: CostReport | None) -> Payload:
    """`extensions.cost` (requested, actualNodes, limit, remaining) and the rate limit's
    state the headers are made from."""
    if cost is not None:
        report: dict[str, Any] = cost.extensions()
        if cost.rate_limit and cost.remaining is not None:
            report["rateLimit"] = {
                "limit": cost.rate_limit,
                "remaining": cost.remaining,
                "used": cost.rate_limit - cost.remaining,
                "reset": cost.reset,
                "cost": cost.points,
            }
        payload.setdefault("extensions", {})["cost"] = report
    return payload


def response_headers(payload: Payload) -> list[tuple[bytes, bytes]]:
    """The headers a GraphQL answer carries: X-Nexes-LSN after a write, the rate limit's
    (GitHub's names) when one was charged, Retry-After when refused for it."""
    out: list[tuple[bytes, bytes]] = []
    lsn = lsn_of(payload)
    if lsn is not None:
        out.append((headers.LSN.raw, lsn.encode()))
    extensions = payload.get("extensions") or {}
    rate = (extensions.get("cost") or {}).get("rateLimit")
    if rate:
        limit, remaining, reset, used, resource = headers.RATE_LIMITS
        out += [
            (limit.raw, str(rate["limit"]).encode()),
            (remaining.raw, str(rate["remaining"]).encode()),
            (reset.raw, str(rate["reset"]).encode()),
            (used.raw, str(rate["used"]).encode()),
            (resource.raw, b"graphql"),
        ]
    for error in payload.get("errors", ()):
        retry = error["extensions"].get("retryAfter")
        if retry is not None:
            out.append((headers.RETRY_AFTER.raw, str(retry).encode()))
            break
    return out


def lsn_of(payload: Payload) -> str | None:
    """The WAL position a mutation's payload carries (extensions.consistency.lsn), if any."""
    extensions = payload.get("extensions")
    return extensions["consistency"]["lsn"] if extensions and "consistency" in extensions else None


# JSON POST, plain ASGI


def is_json_post(scope: Scope) -> bool:
    """A POST whose Content-Type is application/json, with parameters (charset) or not."""
    if scope["method"] != "POST":
        return False
    raw = headers.CONTENT_TYPE.raw
    for name, value in scope["headers"]:
        if name == raw:  # the first one, as Starlette's Headers.get reads it
            return bool(value.split(b";", 1)[0].strip().lower() == headers.JSON_RAW)
    return False


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


async def json_post(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers a JSON POST to /graphql, in the media type its Accept prefers."""
    scope_headers = scope["headers"]
    media_type = negotiate(headers.scope_header(scope_headers, headers.ACCEPT))
    try:
        body = await _body(receive)
        if body is None:
            return
        gql = request_from_json(body)
    except NexesError as exc:
        payload, status = error_result(exc)
    else:
        payload, status = await execute(
            scope["app"].state,
            gql,
            viewer_of(scope),
            headers.scope_header(scope_headers, headers.MIN_LSN),
            media_type,
        )
    max_bytes = scope["app"].state.settings.max_response_bytes
    extra_headers = [*response_headers(payload), *retry_headers(payload, status)]
    await send_json(send, payload, status, extra_headers, max_bytes=max_bytes, media_type=media_type)


class GraphQLMiddleware:
    """Answers JSON POSTs to /graphql before Starlette's routing; everything else goes on.
    Errors that escape still reach Starlette's ServerErrorMiddleware outside this one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and is_json_post(scope):
            await json_post(scope, receive, send)
        else:
            await self.app(scope, receive, send)


# Starlette's route: GET, multipart uploads, anything else


class Endpoint:
    """/graphql behind Starlette's routing, as an ASGI app (GET and POST; JSON POSTs too
    when no GraphQLMiddleware takes them first)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if is_json_post(scope):
            await json_post(scope, receive, send)
            return
        request = Request(scope, receive)
        response = await _answer(request)
        await response(scope, receive, send)


endpoint = Endpoint()


async def _answer(request: Request) -> Response:
    app = request.app.state
    if request.method == "GET":
        if not {"query", "extensions"} & request.query_params.keys() and ide.enabled(app.settings):
            return ide.page_response(app.settings)
        return await _params(request, dict(request.query_params), queries_only=True)
    if is_multipart(request.headers.get(headers.CONTENT_TYPE.key, "")):
        return await graphql_multipart(request, lambda operations: _params(request, operations, queries_only=False))
    media_type = negotiate(request.headers.get(headers.ACCEPT.key, ""))
    return error_response(bad_input("send GraphQL as application/json (or GET for queries)"), media_type)


async def _params(request: Request, params: Any, *, queries_only: bool) -> Response:
    request_headers = request.headers
    media_type = negotiate(request_headers.get(headers.ACCEPT.key, ""))
    try:
        gql = request_from_params(params, queries_only=queries_only)
    except NexesError as exc:
        return error_response(exc, media_type)
    payload, status = await execute(
        request.app.state,
        gql,
        viewer_of(request.scope),
        request_headers.get(headers.MIN_LSN.key, ""),
        media_type,
    )
    max_bytes = request.app.state.settings.max_response_bytes
    response = json_response(payload, status, max_bytes=max_bytes, media_type=media_type)
    for name, value in [*response_headers(payload), *retry_headers(payload, status)]:
        response.headers.append(name.decode("latin-1"), value.decode("latin-1"))
    return response

"""HTTP endpoints: GraphQL (POST JSON, GET for queries), health and liveness.

GraphQL over HTTP is handled here rather than by Strawberry's view: one orjson
parse, one `schema.execute`, one orjson dump, and error formatting with the
registry's codes and the request id, in one place.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from graphql import GraphQLError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from strawberry.http.ides import get_graphql_ide_html

from nexes.context import Context
from nexes.db import health as db_health
from nexes.db.router import translate
from nexes.errors import HTTP_STATUS, Code, NexesError, bad_input
from nexes.observability import request_id_var
from nexes.schema import execution

log = logging.getLogger(__name__)


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def error_payload(code: Code, message: str, **extra: Any) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code.value, "requestId": request_id_var.get(), **extra}}


def format_error(error: GraphQLError) -> dict[str, Any]:
    """A GraphQL error as the client sees it: a registry code, the request id, no trace."""
    original = error.original_error
    translated = translate(original) if original is not None else None
    extra: dict[str, Any] = {}
    if isinstance(original, NexesError):
        code, message = original.code, original.message
        if original.field:
            extra["field"] = original.field
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


def _request_status(errors: list[dict[str, Any]]) -> int:
    codes = {e["extensions"]["code"] for e in errors}
    if len(codes) == 1:
        return HTTP_STATUS[Code(codes.pop())]
    return 400


@dataclass(frozen=True)
class GraphQLRequest:
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None
    queries_only: bool  # GET


async def parse_request(request: Request) -> GraphQLRequest:
    """The GraphQL parameters of a POST (JSON) or GET request, validated; else NexesError."""
    if request.method == "GET":
        params: dict[str, Any] = dict(request.query_params)
        queries_only = True
    else:
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise bad_input("send GraphQL as application/json (or GET for queries)")
        params = _loads(await request.body(), "the body")
        queries_only = False
    if not isinstance(params, dict):
        raise bad_input("the request body must be a JSON object with a 'query'")
    query, variables, operation_name = params.get("query"), params.get("variables"), params.get("operationName")
    if isinstance(variables, str):
        variables = _loads(variables.encode(), "'variables'")
    if not isinstance(query, str) or not query.strip():
        raise bad_input("'query' must be a non-empty string")
    if variables is not None and not isinstance(variables, dict):
        raise bad_input("'variables' must be a JSON object")
    if operation_name is not None and not isinstance(operation_name, str):
        raise bad_input("'operationName' must be a string")
    return GraphQLRequest(query, variables, operation_name, queries_only)


def _loads(raw: bytes, what: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_input(f"{what} is not valid JSON") from None


async def graphql(request: Request) -> Response:
    app = request.app.state
    if request.method == "GET" and "query" not in request.query_params and app.settings.development:
        return HTMLResponse(get_graphql_ide_html(graphql_ide="graphiql"))
    try:
        gql = await parse_request(request)
    except NexesError as exc:
        return _json({"errors": [error_payload(exc.code, exc.message)]}, HTTP_STATUS[exc.code])
    context = Context(
        request_id=request_id_var.get() or "", settings=app.settings, router=app.router, cursors=app.cursors
    )
    try:
        result = await execution.run(
            gql.query, gql.variables, gql.operation_name, context, queries_only=gql.queries_only
        )
    except execution.OperationNotAllowed:
        message = "GET runs only queries; send mutations with POST"
        return _json({"errors": [error_payload(Code.BAD_USER_INPUT, message)]}, 405)
    except execution.UnknownOperation:
        message = "the document has no operation by that operationName (or several and no operationName)"
        return _json({"errors": [error_payload(Code.BAD_USER_INPUT, message)]}, 400)
    payload: dict[str, Any] = {"data": result.data}
    status = 200
    if result.errors:
        payload["errors"] = [format_error(e) for e in result.errors]
        if result.data is None:
            status = _request_status(payload["errors"])
    return _json(payload, status)


async def health_live(request: Request) -> Response:
    """Liveness: answers without touching any dependency."""
    return _json({"status": "ok"})


async def _redis_ok(url: str) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        await client.ping()
        return {"reachable": True}
    except (aioredis.RedisError, OSError) as exc:
        return {"reachable": False, "error": str(exc)[:200]}
    finally:
        await client.aclose()


async def _typesense_ok(url: str) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            resp = await client.get(f"{url.rstrip('/')}/health")
        return {"reachable": resp.status_code == 200 and resp.json().get("ok") is True}
    except (httpx.HTTPError, ValueError) as exc:
        return {"reachable": False, "error": str(exc)[:200] or type(exc).__name__}


async def health(request: Request) -> Response:
    """Readiness: each server probed directly, pools, broker, search.

    503 only when no database can serve; "degraded" when something is down but reads go on.
    """
    app = request.app.state
    settings = app.settings
    (primary, replicas), redis_state, search_state = await asyncio.gather(
        db_health.probe_all(settings.admin_url, settings.replica_admin_urls),
        _redis_ok(settings.redis_url),
        _typesense_ok(settings.typesense_url),
    )
    serving = primary.reachable or any(r.reachable for r in replicas)
    healthy = primary.reachable and all(r.reachable for r in replicas) and redis_state["reachable"]
    status = "ok" if healthy else "degraded" if serving else "down"
    body = {
        "status": status,
        "primary": primary.as_dict(),
        "replicas": [r.as_dict() for r in replicas],
        "pools": app.pools.stats(),
        "redis": redis_state,
        "typesense": search_state,
    }
    return JSONResponse(body, status_code=200 if serving else 503)

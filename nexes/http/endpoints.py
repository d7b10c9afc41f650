"""HTTP endpoints: GraphQL (POST JSON, GET for queries, multipart uploads), imports, health.

GraphQL over HTTP is handled here rather than by Strawberry's view: one orjson
parse, one `schema.execute`, one orjson dump, and error formatting with the
registry's codes and the request id, in one place.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from graphql import GraphQLError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from strawberry.http.ides import get_graphql_ide_html

from nexes.db import migrate
from nexes.db.connect import probes as db_health
from nexes.db.connect.lsn import parse_lsn
from nexes.db.connect.router import Consistency, consistency_var, translate
from nexes.errors import HTTP_STATUS, Code, NexesError, bad_input
from nexes.execution import pipeline as execution
from nexes.http import multipart
from nexes.http.uploads import StoredUpload, UploadWriter, abort_all, enqueue
from nexes.observability import request_id_var
from nexes.resolvers.context import Context, Viewer
from nexes.resolvers.ids import global_id
from nexes.search.health import search_health
from nexes.settings import Settings

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
        return request_from_params(dict(request.query_params), queries_only=True)
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise bad_input("send GraphQL as application/json (or GET for queries)")
    return request_from_json(await request.body())


def request_from_json(body: bytes) -> GraphQLRequest:
    """The GraphQL parameters of a JSON POST body, validated; else NexesError."""
    return request_from_params(_loads(body, "the body"), queries_only=False)


def request_from_params(params: Any, *, queries_only: bool) -> GraphQLRequest:
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
    if request.method == "POST" and multipart.is_multipart(request.headers.get("content-type", "")):
        return await graphql_multipart(request)
    try:
        gql = await parse_request(request)
    except NexesError as exc:
        return _error(exc)
    return await _execute(request, gql)


ADMIN_HEADER = "x-nexes-admin-token"


def viewer_of(given: str, settings: Settings) -> Viewer:
    """Admin when the request carries the configured admin token (`given`, compared in
    constant time); in development with no token configured, everyone is admin."""
    token = str(settings.admin_token)
    if (token and hmac.compare_digest(given.encode(), token.encode())) or (not token and settings.development):
        return ADMIN
    return Viewer()


ADMIN = Viewer(subject="admin", roles=frozenset({"admin"}))


MIN_LSN_HEADER = "x-nexes-min-lsn"


async def _execute(request: Request, gql: GraphQLRequest) -> Response:
    headers = request.headers
    payload, status = await execute_graphql(
        request.app.state, gql, headers.get(ADMIN_HEADER, ""), headers.get(MIN_LSN_HEADER, "")
    )
    response = _json(payload, status)
    lsn = lsn_of(payload)
    if lsn is not None:
        response.headers["x-nexes-lsn"] = lsn
    return response


def lsn_of(payload: dict[str, Any]) -> str | None:
    """The WAL position a mutation's payload carries (extensions.consistency.lsn), if any."""
    extensions = payload.get("extensions")
    return extensions["consistency"]["lsn"] if extensions and "consistency" in extensions else None


async def execute_graphql(
    app: Any, gql: GraphQLRequest, admin_token: str = "", min_lsn: str = ""
) -> tuple[dict[str, Any], int]:
    """The payload and HTTP status of a parsed request, executed with the app's state
    (also by nexes.http.graphql_post, the plain-ASGI path of JSON POSTs).

    `min_lsn` (X-Nexes-Min-LSN) keeps reads off replicas that have not replayed it; a
    request that wrote gets the primary's position after its commit in
    `extensions.consistency.lsn` (and the endpoints put it in X-Nexes-LSN)."""
    consistency = Consistency()
    if min_lsn:
        consistency.min_lsn = parse_lsn(min_lsn)
        if consistency.min_lsn is None:
            return error_result(bad_input("X-Nexes-Min-LSN must be a WAL position like 16/B374D848"))
    token = consistency_var.set(consistency)
    try:
        payload, status = await _execute_graphql(app, gql, admin_token)
    finally:
        consistency_var.reset(token)
    if consistency.lsn is not None:
        payload["extensions"] = {"consistency": {"lsn": consistency.lsn_text}}
    return payload, status


async def _execute_graphql(app: Any, gql: GraphQLRequest, admin_token: str) -> tuple[dict[str, Any], int]:
    context = Context(
        request_id=request_id_var.get() or "",
        settings=app.settings,
        router=app.router,
        cursors=app.cursors,
        viewer=viewer_of(admin_token, app.settings),
    )
    try:
        result = await execution.run(
            gql.query, gql.variables, gql.operation_name, context, queries_only=gql.queries_only
        )
    except execution.OperationNotAllowed:
        message = "GET runs only queries; send mutations with POST"
        return {"errors": [error_payload(Code.BAD_USER_INPUT, message)]}, 405
    except execution.UnknownOperation:
        message = "the document has no operation by that operationName (or several and no operationName)"
        return {"errors": [error_payload(Code.BAD_USER_INPUT, message)]}, 400
    payload: dict[str, Any] = {"data": result.data}
    status = 200
    if result.errors:
        payload["errors"] = [format_error(e) for e in result.errors]
        if result.data is None:
            status = _request_status(payload["errors"])
    return payload, status


def _error(exc: NexesError) -> Response:
    return _json(*error_result(exc))


def error_result(exc: NexesError) -> tuple[dict[str, Any], int]:
    """The payload and HTTP status of a request refused before execution."""
    extra = {"field": exc.field} if exc.field else {}
    return {"errors": [error_payload(exc.code, exc.message, **extra)]}, HTTP_STATUS[exc.code]


CSRF_HEADER = "x-nexes-csrf"


def _csrf_error(request: Request) -> Response | None:
    """Uploads need a non-simple header: a browser cannot send one cross-site without CORS."""
    if request.headers.get(CSRF_HEADER, "").strip():
        return None
    message = "uploads need the header X-Nexes-CSRF (any non-empty value)"
    return _json({"errors": [error_payload(Code.CSRF_HEADER_REQUIRED, message)]}, 400)


def _writer_factory(request: Request) -> multipart.WriterFactory:
    app = request.app.state

    def new_writer(filename: str | None) -> UploadWriter:
        return UploadWriter(
            app.router.write,
            filename=filename,
            max_bytes=app.settings.import_max_bytes,
            retention_days=app.settings.import_retention_days,
        )

    return new_writer


async def graphql_multipart(request: Request) -> Response:
    """The GraphQL multipart request spec: files stored as they stream, then the operation runs
    with each file's `StoredUpload` in its variables; uploads it did not enqueue are deleted."""
    refused = _csrf_error(request)
    if refused is not None:
        return refused
    reader = multipart.GraphQLMultipartReader(
        _writer_factory(request), max_field_bytes=request.app.state.settings.max_body_bytes
    )
    try:
        await reader.read(request)
        assert reader.operations is not None
        gql = request_from_params(reader.operations, queries_only=False)
    except (NexesError, ClientDisconnect) as exc:
        await abort_all(reader.writers)
        return _upload_failed(exc)
    except BaseException:
        await abort_all(reader.writers)
        raise
    try:
        return await _execute(request, gql)
    finally:
        await abort_all(reader.writers, keep_enqueued=True)


async def imports(request: Request) -> Response:
    """POST /api/imports: a multipart field `file`, or the raw body (filename from ?filename=
    or Content-Disposition); stored, then enqueued. 202 with the job's id and status."""
    refused = _csrf_error(request)
    if refused is not None:
        return refused
    new_writer = _writer_factory(request)
    content_type = request.headers.get("content-type", "")
    writers: list[UploadWriter] = []
    try:
        if multipart.is_multipart(content_type):
            reader = multipart.FileFieldReader(new_writer)
            writers = reader.writers
            await reader.read(request)
            assert reader.upload is not None
            upload = reader.upload
        else:
            writer = new_writer(_raw_filename(request))
            writers.append(writer)
            upload = await _store_body(request, writer)
    except (NexesError, ClientDisconnect) as exc:
        await abort_all(writers)
        return _upload_failed(exc)
    except BaseException:
        await abort_all(writers)
        raise
    await enqueue(upload)
    return _json({"id": global_id("ImportJob", upload.job_id), "status": "QUEUED"}, 202)


def _upload_failed(exc: NexesError | ClientDisconnect) -> Response:
    if isinstance(exc, NexesError):
        return _error(exc)
    log.info("the client went away mid-upload; what was stored is deleted")
    return _error(bad_input("the client disconnected before the upload was complete"))


def _raw_filename(request: Request) -> str | None:
    name = request.query_params.get("filename")
    if name:
        return name
    _, options = parse_options_header(request.headers.get("content-disposition", ""))
    raw = options.get(b"filename")
    return raw.decode("utf-8", "replace") if raw else None


async def _store_body(request: Request, writer: UploadWriter) -> StoredUpload:
    await writer.start()
    async for block in request.stream():
        await writer.write(block)
    return await writer.finish()


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


def _with_rotation(app: Any, index: int, probed: dict[str, Any]) -> dict[str, Any]:
    """A replica's direct probe, with the lag monitor's verdict: state, in_rotation, lag."""
    monitor = getattr(app, "monitor", None)
    if monitor is not None and index < len(monitor.status):
        probed.update(monitor.describe(index))
    return probed


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
    # Code newer than the schema writes wrongly (e.g. customer stats counted by a trigger
    # the missing migration would have told to stand aside): degraded until `nexes migrate`.
    schema = migrate.behind(primary.schema_version) if primary.schema_version is not None else None
    healthy = primary.reachable and all(r.reachable for r in replicas) and redis_state["reachable"] and not schema
    status = "ok" if healthy else "degraded" if serving else "down"
    body = {
        "status": status,
        **({"schema": schema} if schema else {}),
        "primary": primary.as_dict(),
        "replicas": [_with_rotation(app, i, r.as_dict()) for i, r in enumerate(replicas)],
        "pools": app.pools.stats(),
        "redis": redis_state,
        "typesense": search_state,
        "search": await search_health(settings, app.router),
    }
    return JSONResponse(body, status_code=200 if serving else 503)

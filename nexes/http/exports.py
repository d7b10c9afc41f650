"""GET /api/exports/service-orders.csv: service orders as the import's CSV, streamed.

The rows come from `COPY ... TO STDOUT` on a healthy replica under the analyst role
(never the primary: SERVICE_UNAVAILABLE when no replica serves), in blocks, so
memory stays flat whatever the size. A client that hangs up cancels the query at
once: the response watches for `http.disconnect` while it streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from nexes.db.connect.router import Router
from nexes.db.exports import copy_orders_csv
from nexes.db.orders import OrderFilter
from nexes.errors import Code, NexesError, bad_input
from nexes.http import headers
from nexes.http.errors import error_response
from nexes.resolvers.orders import order_filter
from nexes.schema.types import STATUS_BY_NAME, ServiceOrderFilter

log = logging.getLogger(__name__)
PARAMS = {"status", "customerId", "createdFrom", "createdTo", "sodNumberPrefix", "includeArchived"}


def export_filter(request: Request) -> OrderFilter:
    """The serviceOrders filter from the query string (`status` repeatable), validated."""
    query = request.query_params
    unknown = set(query) - PARAMS
    if unknown:
        raise bad_input(f"unknown parameter(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(PARAMS))}")
    statuses = []
    for name in query.getlist("status"):
        if name not in STATUS_BY_NAME:
            raise bad_input(f"status {name!r} is not one of {', '.join(STATUS_BY_NAME)}", field="status")
        statuses.append(STATUS_BY_NAME[name])
    archived = query.get("includeArchived", "false").lower()
    if archived not in ("true", "false", "1", "0"):
        raise bad_input("includeArchived must be true or false", field="includeArchived")
    flt = ServiceOrderFilter(
        status=statuses or None,
        customer_id=query.get("customerId"),  # type: ignore[arg-type]  # an ID is a str
        created_from=_datetime(query.get("createdFrom"), "createdFrom"),
        created_to=_datetime(query.get("createdTo"), "createdTo"),
        sod_number_prefix=query.get("sodNumberPrefix"),
        include_archived=archived in ("true", "1"),
    )
    return order_filter(flt)


def _datetime(value: str | None, name: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise bad_input(f"{name} must be an ISO-8601 date-time with an offset", field=name) from None
    if parsed.tzinfo is None:
        raise bad_input(f"{name} must carry a UTC offset (such as Z or +01:00)", field=name)
    return parsed


async def service_orders_csv(request: Request) -> Response:
    try:
        flt = export_filter(request)
    except NexesError as exc:
        return error_response(exc)
    return CopyResponse(request.app.state.router, flt)


class CopyResponse(Response):
    """Streams the export; answers an error as JSON when it fails before the first byte."""

    def __init__(self, router: Router, flt: OrderFilter) -> None:
        super().__init__(status_code=200)
        self.router = router
        self.flt = flt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with self.router.analyst_connection() as conn, conn.transaction():
                await self._stream(conn, receive, send)
        except NexesError as exc:
            if self.started:
                log.warning("export failed mid-stream: %s", exc.message)
                return
            await error_response(exc)(scope, receive, send)

    started = False

    async def _stream(self, conn: Any, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self._send_all(conn, send))
        watching = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({streaming, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not streaming.done():
                # The client went away: stop the query on the server now, not when its
                # output next fills a buffer.
                log.info("export: the client disconnected; cancelling the query")
                with contextlib.suppress(Exception):
                    await conn.cancel_safe(timeout=2)
                streaming.cancel()
                with contextlib.suppress(BaseException):
                    await streaming
                raise _Gone
        streaming.result()

    async def _send_all(self, conn: Any, send: Send) -> None:
        blocks = copy_orders_csv(conn, self.flt)
        first = await anext(blocks, b"")  # errors (timeouts, a vanished replica) come before the headers
        response_headers = [
            (headers.CONTENT_TYPE.raw, headers.CSV.encode()),
            (headers.CONTENT_DISPOSITION.raw, b'attachment; filename="service-orders.csv"'),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": response_headers})
        self.started = True
        await send({"type": "http.response.body", "body": first, "more_body": True})
        async for block in blocks:
            await send({"type": "http.response.body", "body": block, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Gone(NexesError):
    def __init__(self) -> None:
        super().__init__(Code.SERVICE_UNAVAILABLE, "the client disconnected")


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return

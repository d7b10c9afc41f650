"""The /graphql endpoint behind Starlette's routing alone (no GraphQLMiddleware), on a
running app's state: what multipart and GET requests take, to compare with the JSON path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from nexes.http import graphql
from nexes.http.app import RequestContextMiddleware
from nexes.http.auth import AuthMiddleware


@asynccontextmanager
async def plain_endpoint(state: Any, headers: httpx.Headers | dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the route-only app on `state` (the running app's), sending `headers`."""
    plain = Starlette(routes=[Route(graphql.PATH, graphql.endpoint, methods=["GET", "POST"])])
    for name in ("settings", "router", "analyst_router", "cursors", "pipeline", "limiter", "documents"):
        setattr(plain.state, name, getattr(state, name))
    plain.add_middleware(AuthMiddleware, authenticator=state.authenticator)
    plain.add_middleware(RequestContextMiddleware, max_body_bytes=state.settings.max_body_bytes)
    transport = httpx.ASGITransport(app=plain)
    async with httpx.AsyncClient(transport=transport, base_url="http://nexes.test", headers=headers) as client:
        yield client

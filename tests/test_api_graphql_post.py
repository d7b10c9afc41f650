"""JSON POSTs to /graphql take the plain-ASGI path (nexes.http.graphql_post); Starlette's
endpoint answers everything else. Both must answer a JSON POST identically."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from nexes.http import endpoints
from nexes.http.app import RequestContextMiddleware

BODIES = [
    b'{"query": "{ serviceOrders(first: 3) { edges { cursor node { id sodNumber status createdAt totalAmount customer { name } } } pageInfo { hasNextPage endCursor } } }"}',  # noqa: E501
    b'{"query": "query($n: Int) { serviceOrders(first: $n) { edges { node { id } } } }", "variables": {"n": 2}}',
    b'{"query": "{ serviceOrders(first: 1000) { edges { node { id } } } }"}',
    b'{"query": "{ serviceOrders(after: \\"bogus\\") { edges { node { id } } } }"}',
    b'{"query": "query A { __typename } query B { __typename }"}',
    b'{"query": "{ noSuchField }"}',
    b'{"query": "{ serviceOrders(first: ) }"}',
    b'{"query": 42}',
    b"[1, 2]",
    b"{not json",
]


@pytest.mark.parametrize("body", BODIES)
async def test_json_post_answers_as_the_starlette_endpoint_does(app_client: httpx.AsyncClient, body: bytes) -> None:
    state = app_client.app.state  # type: ignore[attr-defined]
    plain = Starlette(routes=[Route("/graphql", endpoints.graphql, methods=["GET", "POST"])])
    plain.state.settings, plain.state.router, plain.state.cursors = state.settings, state.router, state.cursors
    plain.add_middleware(RequestContextMiddleware, max_body_bytes=state.settings.max_body_bytes)
    headers = {"content-type": "application/json", "x-request-id": "same-request"}
    transport = httpx.ASGITransport(app=plain)
    async with httpx.AsyncClient(transport=transport, base_url="http://nexes.test") as reference:
        expected = await reference.post("/graphql", content=body, headers=headers)
    got = await app_client.post("/graphql", content=body, headers=headers)
    assert (got.status_code, got.json()) == (expected.status_code, expected.json())
    assert got.headers["content-type"] == expected.headers["content-type"]
    assert got.headers["x-request-id"] == "same-request"
    assert "statements" in got.headers["server-timing"]

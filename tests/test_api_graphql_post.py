"""JSON POSTs to /graphql: answered in plain ASGI (nexes.http.graphql.json_post), taken by
GraphQLMiddleware before Starlette's routing; the route itself answers them the same way
when no middleware takes them first (one implementation, two ways in)."""

from __future__ import annotations

import httpx
import pytest

from tests.support.apps import plain_endpoint

# (body, status, the errors' codes or None for a response without errors, data present)
BODIES = [
    (
        b'{"query": "{ serviceOrders(first: 3) { edges { cursor node { id sodNumber status createdAt totalAmount customer { name } } } pageInfo { hasNextPage endCursor } } }"}',  # noqa: E501
        200,
        None,
    ),
    (
        b'{"query": "query($n: Int) { serviceOrders(first: $n) { edges { node { id } } } }", "variables": {"n": 2}}',
        200,
        None,
    ),
    (b'{"query": "{ serviceOrders(first: 1000) { edges { node { id } } } }"}', 400, ["BAD_USER_INPUT"]),
    (b'{"query": "{ serviceOrders(after: \\"bogus\\") { edges { node { id } } } }"}', 400, ["BAD_CURSOR"]),
    (b'{"query": "query A { __typename } query B { __typename }"}', 400, ["BAD_USER_INPUT"]),
    (b'{"query": "{ noSuchField }"}', 400, ["BAD_USER_INPUT"]),
    (b'{"query": "{ serviceOrders(first: ) }"}', 400, ["BAD_USER_INPUT"]),
    (b'{"query": 42}', 400, ["BAD_USER_INPUT"]),
    (b"[1, 2]", 400, ["BAD_USER_INPUT"]),
    (b"{not json", 400, ["BAD_USER_INPUT"]),
]


async def _post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    headers = {"content-type": "application/json", "x-request-id": "same-request"}
    return await client.post("/graphql", content=body, headers=headers)


@pytest.mark.parametrize(("body", "status", "codes"), BODIES)
async def test_json_post_answers_its_status_codes_and_headers_on_both_ways_in(
    app_client: httpx.AsyncClient, body: bytes, status: int, codes: list[str] | None
) -> None:
    got = await _post(app_client, body)
    payload = got.json()
    assert got.status_code == status
    assert [e["extensions"]["code"] for e in payload.get("errors", [])] == (codes or [])
    assert all(e["extensions"]["requestId"] == "same-request" for e in payload.get("errors", []))
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-request-id"] == "same-request"
    assert "statements" in got.headers["server-timing"]

    async with plain_endpoint(app_client.app.state, app_client.headers) as route:  # type: ignore[attr-defined]
        expected = await _post(route, body)
    assert (expected.status_code, expected.json()) == (got.status_code, payload)
    assert expected.headers["content-type"] == got.headers["content-type"]

"""JSON POSTs to /graphql: answered in plain ASGI (nexes.http.graphql.json_post), taken by
GraphQLMiddleware before Starlette's routing; the route itself answers them the same way
when no middleware takes them first (one implementation, two ways in). Both media types
of GraphQL over HTTP, chosen by Accept, with the status each gives
(nexes.http.errors.response_status)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from nexes.http.errors import GRAPHQL_RESPONSE, JSON, negotiate
from tests.support.apps import plain_endpoint

# (body, status under application/json, under application/graphql-response+json, the
# errors' codes or None for a response without errors, `data` present)
BODIES = [
    (
        b'{"query": "{ serviceOrders(first: 3) { edges { cursor node { id sodNumber status createdAt totalAmount customer { name } } } pageInfo { hasNextPage endCursor } } }"}',  # noqa: E501
        200,
        200,
        None,
        True,
    ),
    (
        b'{"query": "query($n: Int) { serviceOrders(first: $n) { edges { node { id } } } }", "variables": {"n": 2}}',
        200,
        200,
        None,
        True,
    ),
    # Execution errors come with `data` (null where the field failed): 200 under both.
    (b'{"query": "{ serviceOrders(first: 1000) { edges { node { id } } } }"}', 200, 200, ["BAD_USER_INPUT"], True),
    (b'{"query": "{ serviceOrders(after: \\"bogus\\") { edges { node { id } } } }"}', 200, 200, ["BAD_CURSOR"], True),
    # GraphQL request errors (operation choice, validation, parse, variables): no `data`.
    (b'{"query": "query A { __typename } query B { __typename }"}', 200, 400, ["BAD_USER_INPUT"], False),
    (b'{"query": "{ noSuchField }"}', 200, 400, ["BAD_USER_INPUT"], False),
    (b'{"query": "{ serviceOrders(first: ) }"}', 200, 400, ["BAD_USER_INPUT"], False),
    (b'{"query": "query($id: ID!) { __typename }", "variables": {"id": null}}', 200, 400, ["BAD_USER_INPUT"], False),
    # Not a GraphQL-over-HTTP request at all: 400 under both.
    (b'{"query": 42}', 400, 400, ["BAD_USER_INPUT"], False),
    (b"[1, 2]", 400, 400, ["BAD_USER_INPUT"], False),
    (b"{not json", 400, 400, ["BAD_USER_INPUT"], False),
]
ACCEPTS = (JSON, GRAPHQL_RESPONSE)


async def _post(client: httpx.AsyncClient, body: bytes, accept: str) -> httpx.Response:
    headers = {"content-type": "application/json", "x-request-id": "same-request", "accept": accept}
    return await client.post("/graphql", content=body, headers=headers)


def _without_cost(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload but its extensions.cost (the rate limiter's remaining points move on)."""
    extensions = {k: v for k, v in payload.get("extensions", {}).items() if k != "cost"}
    return {k: v for k, v in payload.items() if k != "extensions"} | ({"extensions": extensions} if extensions else {})


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("case", BODIES)
async def test_json_post_answers_its_status_codes_and_headers_on_both_ways_in(
    app_client: httpx.AsyncClient, accept: str, case: tuple[bytes, int, int, list[str] | None, bool]
) -> None:
    body, json_status, graphql_status, codes, data = case
    got = await _post(app_client, body, accept)
    payload = got.json()
    assert got.status_code == (json_status if accept == JSON else graphql_status)
    assert [e["extensions"]["code"] for e in payload.get("errors", [])] == (codes or [])
    assert ("data" in payload) is data
    assert all(e["extensions"]["requestId"] == "same-request" for e in payload.get("errors", []))
    assert got.headers["content-type"] == accept
    assert got.headers["x-request-id"] == "same-request"
    assert "statements" in got.headers["server-timing"]

    async with plain_endpoint(app_client.app.state, app_client.headers) as route:  # type: ignore[attr-defined]
        expected = await _post(route, body, accept)
    assert (expected.status_code, _without_cost(expected.json())) == (got.status_code, _without_cost(payload))
    assert expected.headers["content-type"] == got.headers["content-type"]


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("", JSON),
        ("*/*", JSON),
        ("application/*", JSON),
        ("text/html", JSON),
        ("application/json", JSON),
        ("application/graphql-response+json", GRAPHQL_RESPONSE),
        ("Application/GraphQL-Response+JSON", GRAPHQL_RESPONSE),
        # Apollo Client's and graphql-http's own
        ("application/graphql-response+json,application/json;q=0.9", GRAPHQL_RESPONSE),
        ("application/graphql-response+json, application/json", GRAPHQL_RESPONSE),
        ("application/json, application/graphql-response+json", JSON),  # a tie: the first listed
        ("application/json;q=0.5, application/graphql-response+json", GRAPHQL_RESPONSE),
        ("application/graphql-response+json;q=0, application/json", JSON),
        ("application/graphql-response+json;q=zero", JSON),  # a malformed weight accepts nothing
        ("*/*;q=0.8, application/graphql-response+json;q=0.9", GRAPHQL_RESPONSE),
    ],
)
def test_accept_chooses_the_media_type(accept: str, media_type: str) -> None:
    assert negotiate(accept) == media_type


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/json;charset=UTF-8", "Application/JSON"]
)
async def test_json_with_a_charset_or_in_capitals_is_json(app_client: httpx.AsyncClient, content_type: str) -> None:
    body = '{"query": "{ __type(name: \\"Run🏃Swim🏊\\") { name } }"}'.encode()
    got = await app_client.post("/graphql", content=body, headers={"content-type": content_type})
    assert got.status_code == 200
    assert got.json()["data"] == {"__type": None}
    assert got.headers["content-type"] == JSON


async def test_get_answers_in_the_media_type_accept_prefers(app_client: httpx.AsyncClient) -> None:
    for accept, status in ((JSON, 200), (GRAPHQL_RESPONSE, 400)):
        bad = await app_client.get("/graphql", params={"query": "{ noSuchField }"}, headers={"accept": accept})
        assert (bad.status_code, bad.headers["content-type"]) == (status, accept)
        assert "data" not in bad.json()
        ok = await app_client.get("/graphql", params={"query": "{ __typename }"}, headers={"accept": accept})
        assert (ok.status_code, ok.headers["content-type"], ok.json()["data"]) == (200, accept, {"__typename": "Query"})
        # A mutation over GET is about the request: 405 under both.
        mutation = await app_client.get("/graphql", params={"query": "mutation { x }"}, headers={"accept": accept})
        assert (mutation.status_code, mutation.headers["content-type"]) == (405, accept)


async def test_a_post_without_json_is_400_in_the_media_type_accept_prefers(app_client: httpx.AsyncClient) -> None:
    got = await app_client.post(
        "/graphql", content=b"query=x", headers={"content-type": "text/plain", "accept": GRAPHQL_RESPONSE}
    )
    assert (got.status_code, got.headers["content-type"]) == (400, GRAPHQL_RESPONSE)
    assert [e["extensions"]["code"] for e in got.json()["errors"]] == ["BAD_USER_INPUT"]

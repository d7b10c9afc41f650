"""Hostile and broken input gets its documented code, never a 500."""

from __future__ import annotations

import base64
import hashlib
import hmac

import httpx
import pytest

from nexes.db.keyset import b64url, unb64url
from nexes.settings import Settings
from tests.conftest import error_codes, gql

PAGE = "query($first: Int, $after: String, $order: ServiceOrderOrder) { serviceOrders(first: $first, after: $after, orderBy: $order) { edges { cursor node { id } } } }"  # noqa: E501


async def first_cursor(client: httpx.AsyncClient, order: str = "CREATED_AT_DESC") -> str:
    body = await gql(client, PAGE, {"first": 1, "order": order})
    cursor: str = body["data"]["serviceOrders"]["edges"][0]["cursor"]
    return cursor


async def test_malformed_cursors_are_bad_cursor_in_a_200(app_client: httpx.AsyncClient) -> None:
    good = await first_cursor(app_client)
    body, sig = good.split(".")
    tampered_body = base64.urlsafe_b64encode(b'[1,"CREATED_AT_DESC",0,1]').decode().rstrip("=")
    for cursor in ["", "garbage", "a.b", good + "x", f"{tampered_body}.{sig}", body, "%%%.%%%", "🙂" * 40]:
        result = await gql(app_client, PAGE, {"first": 5, "after": cursor})
        assert error_codes(result) == ["BAD_CURSOR"], cursor
        assert result["_response"].status_code == 200  # a GraphQL error, which clients read from a 200


def _hmac_signed(cursor: str, secret: bytes) -> str:
    """The cursor's payload signed as Nexes signed cursors before BLAKE2b: HMAC-SHA256, 12 bytes."""
    body = cursor.partition(".")[0]
    return f"{body}.{b64url(hmac.new(secret, unb64url(body), hashlib.sha256).digest()[:12])}"


async def test_cursors_are_signed_with_keyed_blake2b(app_client: httpx.AsyncClient, seeded: Settings) -> None:
    body, sig = (await first_cursor(app_client)).split(".")
    key = hashlib.blake2b(str(seeded.cursor_secret).encode(), digest_size=32, person=b"nexes.cursor").digest()
    assert sig == b64url(hashlib.blake2b(unb64url(body), key=key, digest_size=12).digest())


async def test_a_cursor_signed_with_hmac_by_an_earlier_version_still_pages(
    app_client: httpx.AsyncClient, seeded: Settings
) -> None:
    """A client holding a cursor from before the upgrade (rolling restart) gets its next page."""
    cursor = await first_cursor(app_client)
    legacy = _hmac_signed(cursor, str(seeded.cursor_secret).encode())
    assert legacy != cursor
    now = await gql(app_client, PAGE, {"first": 5, "after": cursor})
    before = await gql(app_client, PAGE, {"first": 5, "after": legacy})
    assert "errors" not in before
    assert len(before["data"]["serviceOrders"]["edges"]) == 5
    assert before["data"] == now["data"]


async def test_a_cursor_signed_with_another_secret_is_bad_cursor(app_client: httpx.AsyncClient) -> None:
    cursor = await first_cursor(app_client)
    body = cursor.partition(".")[0]
    other = hashlib.blake2b(b"another secret", digest_size=32, person=b"nexes.cursor").digest()
    forged = f"{body}.{b64url(hashlib.blake2b(unb64url(body), key=other, digest_size=12).digest())}"
    for bad in (forged, _hmac_signed(cursor, b"another secret")):
        result = await gql(app_client, PAGE, {"first": 5, "after": bad})
        assert error_codes(result) == ["BAD_CURSOR"], bad


async def test_cursor_from_another_order_is_bad_cursor(app_client: httpx.AsyncClient) -> None:
    cursor = await first_cursor(app_client, "UPDATED_AT_DESC")
    result = await gql(app_client, PAGE, {"first": 5, "after": cursor, "order": "CREATED_AT_DESC"})
    assert error_codes(result) == ["BAD_CURSOR"]
    assert "UPDATED_AT_DESC" in result["errors"][0]["message"]


async def test_page_size_past_the_maximum_is_bad_user_input(app_client: httpx.AsyncClient) -> None:
    for first in (1000, 101, -1):
        result = await gql(app_client, PAGE, {"first": first})
        assert error_codes(result) == ["BAD_USER_INPUT"]
        assert "first must be between 0 and 100" in result["errors"][0]["message"]


async def test_first_and_last_together_are_refused(app_client: httpx.AsyncClient) -> None:
    result = await gql(app_client, "{ serviceOrders(first: 2, last: 2) { edges { cursor } } }")
    assert error_codes(result) == ["BAD_USER_INPUT"]


async def test_naive_datetime_is_bad_user_input(app_client: httpx.AsyncClient) -> None:
    query = "query($from: DateTime) { serviceOrders(filter: {createdFrom: $from}) { edges { cursor } } }"
    result = await gql(app_client, query, {"from": "2025-01-01T00:00:00"})
    assert error_codes(result) == ["BAD_USER_INPUT"]
    assert "no offset" in result["errors"][0]["message"]
    inline = await gql(app_client, '{ serviceOrders(filter: {createdFrom: "2025-01-01"}) { edges { cursor } } }')
    assert error_codes(inline) == ["BAD_USER_INPUT"]


async def test_nan_and_infinity_are_refused_as_decimal() -> None:
    from nexes.schema.scalars import parse_decimal

    for value in ("NaN", "Infinity", "-Infinity", "sNaN", "abc", ""):
        with pytest.raises(ValueError, match=r"finite|not a number"):
            parse_decimal(value)
    assert str(parse_decimal("12.50")) == "12.50"


async def test_global_id_of_the_wrong_type_is_bad_user_input(app_client: httpx.AsyncClient) -> None:
    page = await gql(app_client, "{ serviceOrders(first: 1) { edges { node { id } } } }")
    order_id = page["data"]["serviceOrders"]["edges"][0]["node"]["id"]
    query = "query($c: ID) { serviceOrders(filter: {customerId: $c}) { edges { cursor } } }"
    result = await gql(app_client, query, {"c": order_id})
    assert error_codes(result) == ["BAD_USER_INPUT"]
    assert result["errors"][0]["extensions"]["field"] == "filter.customerId"
    for bad in ("not-base64!", base64.b64encode(b"Planet:1").decode()):
        node = await gql(app_client, "query($id: ID!) { node(id: $id) { id } }", {"id": bad})
        assert error_codes(node) == ["BAD_USER_INPUT"]


async def test_too_many_node_ids_are_refused(app_client: httpx.AsyncClient) -> None:
    result = await gql(app_client, "query($ids: [ID!]!) { nodes(ids: $ids) { id } }", {"ids": ["x"] * 101})
    assert error_codes(result) == ["BAD_USER_INPUT"]


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        # Not a GraphQL-over-HTTP request: 400.
        (b"{not json", "application/json", 400),
        (b"[1, 2]", "application/json", 400),
        (b'{"query": 42}', "application/json", 400),
        (b'{"query": "{ serviceOrders { edges { cursor } } }", "variables": [1]}', "application/json", 400),
        (b"query=x", "application/x-www-form-urlencoded", 400),
        # A GraphQL request error (parse, validation) under application/json: 200, no data.
        (b'{"query": "{ serviceOrders(first: ) }"}', "application/json", 200),
        (b'{"query": "{ noSuchField }"}', "application/json", 200),
    ],
)
async def test_broken_requests_are_bad_user_input(
    app_client: httpx.AsyncClient, content: bytes, content_type: str, status: int
) -> None:
    response = await app_client.post("/graphql", content=content, headers={"content-type": content_type})
    assert response.status_code == status
    assert "data" not in response.json()
    assert [e["extensions"]["code"] for e in response.json()["errors"]] == ["BAD_USER_INPUT"]
    assert "Traceback" not in response.text


async def test_oversized_body_is_payload_too_large(app_client: httpx.AsyncClient) -> None:
    query = "{ serviceOrders { edges { cursor } } }" + " " * 2_000_000
    response = await app_client.post("/graphql", json={"query": query})
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_deep_and_wide_hostile_queries_are_refused(app_client: httpx.AsyncClient) -> None:
    deep = "{ serviceOrders { edges { node { customer { serviceOrders { edges { node { customer { serviceOrders { edges { node { customer { name } } } } } } } } } } } } }"  # noqa: E501
    assert error_codes(await gql(app_client, deep)) == ["BAD_USER_INPUT"]
    aliases = "{ " + " ".join(f"a{i}: dashboard {{ totalCount }}" for i in range(40)) + " }"
    assert "BAD_USER_INPUT" in error_codes(await gql(app_client, aliases))


async def test_get_runs_queries_but_not_mutations(app_client: httpx.AsyncClient) -> None:
    ok = await app_client.get("/graphql", params={"query": "{ dashboard { totalCount } }"})
    assert ok.status_code == 200 and ok.json()["data"]["dashboard"]["totalCount"] > 0
    refused = await app_client.get("/graphql", params={"query": "mutation { x }"})
    assert refused.status_code == 405
    assert refused.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    unknown = await app_client.post(
        "/graphql", json={"query": "query A { dashboard { totalCount } }", "operationName": "B"}
    )
    assert unknown.status_code == 200  # a GraphQL request error under application/json
    assert unknown.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "data" not in unknown.json()


async def test_statement_timeout_is_timeout_in_a_200(fresh_db: object) -> None:
    import psycopg

    from nexes.settings import Settings
    from tests.conftest import client_for
    from tests.support.databases import superuser_url

    assert isinstance(fresh_db, Settings)
    dbname = psycopg.conninfo.conninfo_to_dict(fresh_db.admin_url)["dbname"]
    with psycopg.connect(superuser_url(fresh_db.admin_url, str(dbname)), autocommit=True) as conn:
        conn.execute(f"ALTER ROLE nexes_api IN DATABASE {dbname} SET statement_timeout = '1ms'")
        conn.execute("INSERT INTO customer (code, name) SELECT 'C' || i, 'n' FROM generate_series(1, 50000) i")
    from prometheus_client import REGISTRY

    def timeouts() -> float:
        return REGISTRY.get_sample_value("nexes_db_statement_timeouts_total") or 0.0

    before = timeouts()
    async with client_for(fresh_db) as client:
        query = '{ customers(first: 5, filter: {nameContains: "zzz"}) { edges { cursor } } }'
        result = await gql(client, query)
    assert error_codes(result) == ["TIMEOUT"]
    assert timeouts() == before + 1
    assert result["_response"].status_code == 200  # `data` is there, null where the field timed out
    assert "data" in result


async def test_graphiql_only_in_development(seeded: object) -> None:
    from dataclasses import replace

    from nexes.settings import Settings
    from tests.conftest import client_for

    assert isinstance(seeded, Settings)
    async with client_for(replace(seeded, env="production")) as client:
        production = await client.get("/graphql", headers={"accept": "text/html"})
    async with client_for(replace(seeded, env="development")) as client:
        development = await client.get("/graphql", headers={"accept": "text/html"})
    assert production.status_code == 400
    assert production.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert development.status_code == 200 and "graphiql" in development.text.lower()


def test_every_error_code_is_documented_in_the_readme_with_its_status_under_each_media_type() -> None:
    from pathlib import Path

    from nexes.errors import Code
    from nexes.http.errors import status_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for code, json_status, graphql_status in status_table():
        assert f"| `{code.value}` | {json_status} | {graphql_status} |" in readme, code
    assert {row[0] for row in status_table()} == set(Code)


@pytest.mark.parametrize("accept", ["application/json", "application/graphql-response+json"])
async def test_request_errors_keep_their_status_under_both_media_types(seeded: object, accept: str) -> None:
    from nexes.settings import Settings
    from tests.conftest import client_for

    assert isinstance(seeded, Settings) and not seeded.development  # introspection: analysts and admins only
    headers = {"accept": accept}
    async with client_for(seeded, roles=()) as anonymous:
        unauthenticated = await anonymous.post("/graphql", json={"query": "{ __typename }"}, headers=headers)
    async with client_for(seeded, roles=("viewer",), subject="media-types") as viewer:
        forbidden = await viewer.post(
            "/graphql", json={"query": "{ __schema { queryType { name } } }"}, headers=headers
        )
        too_large = await viewer.post("/graphql", json={"query": "{ __typename }" + " " * 2_000_000}, headers=headers)
    for response, status, code in (
        (unauthenticated, 401, "UNAUTHENTICATED"),
        (forbidden, 403, "FORBIDDEN"),
        (too_large, 413, "PAYLOAD_TOO_LARGE"),
    ):
        assert response.status_code == status, response.text
        assert [e["extensions"]["code"] for e in response.json()["errors"]] == [code]
        assert "data" not in response.json()


def test_the_status_table_keeps_request_codes_and_answers_json_with_200() -> None:
    from nexes.http.errors import REQUEST_CODES, status_table

    for code, json_status, graphql_status in status_table():
        if code in REQUEST_CODES:
            assert json_status == graphql_status >= 400, code
        else:
            assert json_status == 200, code
            assert 400 <= graphql_status < 600, code


def test_a_request_code_with_null_data_keeps_its_status_and_a_503_says_when_to_retry() -> None:
    from nexes.http.errors import GRAPHQL_RESPONSE, JSON, response_status, retry_headers

    unavailable = {"data": None, "errors": [{"extensions": {"code": "SERVICE_UNAVAILABLE"}, "path": ["report"]}]}
    field = {"data": {"a": None, "b": 1}, "errors": [{"extensions": {"code": "SERVICE_UNAVAILABLE"}, "path": ["a"]}]}
    cursor = {"data": None, "errors": [{"extensions": {"code": "BAD_CURSOR"}, "path": ["serviceOrders"]}]}
    for media_type in (JSON, GRAPHQL_RESPONSE):
        assert response_status(unavailable, media_type) == 503
        assert response_status(field, media_type) == 200  # the rest of the answer is there
        assert response_status(cursor, media_type) == 200  # `data` is present, if null
    assert retry_headers(unavailable, 503) == [(b"retry-after", b"1")]
    limited = {"errors": [{"extensions": {"code": "RATE_LIMITED", "retryAfter": 30}}]}
    assert retry_headers(limited, 429) == []  # the rate limiter's own, in response_headers

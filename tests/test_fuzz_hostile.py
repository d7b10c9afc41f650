"""Hostile GraphQL requests, one kind per test, through the real app on a seeded database
of this module's own (some cases are mutations): each gets a clear error code, never
INTERNAL, never a 5xx, writes nothing, and the server answers a normal query after it.

Batched requests (a JSON array body) are not supported: they answer 400 BAD_USER_INPUT
saying that the body must be one JSON object.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from nexes.settings import Settings
from tests.conftest import client_for, error_codes
from tests.support.databases import own_database
from tests.support.replicas import wait_for_replica

SQL_LIKE = [
    "' OR '1'='1",
    "'; DROP TABLE service_order; --",
    "%' UNION SELECT sod_number FROM service_order --",
    '") OR 1=1 --',
    "$$; SELECT pg_sleep(10); $$",
    "\\'; SELECT 1; --",
    "%",
    "_",
]


# Every filter argument of schema.graphql taking text, with the query that sends it.
def _q(variable: str, selection: str) -> str:
    return f"query($v: {variable}) {{ {selection} }}"


def _m(variables: str, selection: str) -> str:
    return f"mutation({variables}) {{ {selection} {{ errors {{ code }} }} }}"


ORDERS = "{ totalCount edges { node { id } } }"
# Every filter argument of schema.graphql (and the other text arguments of the queries),
# with the query that sends it as $v.
FILTERS = {
    "serviceOrders.sodNumberPrefix": _q("String", f"serviceOrders(filter: {{sodNumberPrefix: $v}}) {ORDERS}"),
    "serviceOrders.customerId": _q("ID", f"serviceOrders(filter: {{customerId: $v}}) {ORDERS}"),
    "serviceOrders.createdFrom": _q("DateTime", f"serviceOrders(filter: {{createdFrom: $v}}) {ORDERS}"),
    "serviceOrders.createdTo": _q("DateTime", f"serviceOrders(filter: {{createdTo: $v}}) {ORDERS}"),
    "customer.serviceOrders.sodNumberPrefix": _q(
        "String",
        "customers(first: 2) { edges { node { serviceOrders(filter: {sodNumberPrefix: $v}) { totalCount } } } }",
    ),
    "customers.nameContains": _q("String", f"customers(filter: {{nameContains: $v}}) {ORDERS}"),
    "customers.code": _q("String", f"customers(filter: {{code: $v}}) {ORDERS}"),
    "stockItems.nameContains": _q("String", f"stockItems(filter: {{nameContains: $v}}) {ORDERS}"),
    "stockItems.sku": _q("String", f"stockItems(filter: {{sku: $v}}) {ORDERS}"),
    "search.query": _q("String!", "search(query: $v) { found edges { node { id } } }"),
    "search.createdFrom": _q("DateTime", 'search(query: "a", filter: {createdFrom: $v}) { found }'),
    "auditEvents.entity": _q("String", "auditEvents(entity: $v) { edges { cursor } }"),
    "auditEvents.entityId": _q("String", "auditEvents(entityId: $v) { edges { cursor } }"),
    "auditEvents.actor": _q("String", "auditEvents(actor: $v) { edges { cursor } }"),
    "auditEvents.from": _q("DateTime", "auditEvents(from: $v) { edges { cursor } }"),
    "importJobs.status": _q("ImportJobStatus", "importJobs(status: $v) { edges { cursor } }"),
    "serviceOrder.sodNumber": _q("String!", "serviceOrder(sodNumber: $v) { id }"),
    "node.id": _q("ID!", "node(id: $v) { id }"),
    "dashboard.from": _q("Date", "dashboard(from: $v) { totalCount }"),
}

# The mutations' text arguments, for NUL bytes and long strings (none may be written).
MUTATIONS = {
    "createCustomer": _m("$v: String!", "createCustomer(input: {code: $v, name: $v})"),
    "createStockItem": _m("$v: String!", "createStockItem(input: {sku: $v, name: $v})"),
    "receiveStock": _m("$v: String!", 'receiveStock(sku: $v, quantity: 1, reference: "r")'),
    "receiveStock.reference": _m("$v: String!, $sku: String!", "receiveStock(sku: $sku, quantity: 1, reference: $v)"),
    "updateServiceOrder.description": _m(
        "$v: String!, $sod: String!", "updateServiceOrder(sodNumber: $sod, input: {description: $v})"
    ),
    "createServiceOrder.description": _m(
        "$v: String!, $sku: String!",
        'createServiceOrder(input: {sodNumber: "HOSTILE-1", description: $v, customerCode: "C-HOSTILE",'
        ' lines: [{sku: $sku, quantity: 1, unitPrice: "1.00"}]})',
    ),
}

NORMAL = "{ serviceOrders(first: 1) { edges { node { id sodNumber } } } }"


@pytest.fixture(scope="module")
def hostile_settings(template_settings: Settings) -> Iterator[Settings]:
    with own_database(template_settings, "nexes_fuzz_hostile", orders=50) as own:
        wait_for_replica(own, timeout=120)
        yield own


@pytest.fixture(scope="module")
async def client(hostile_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(hostile_settings, subject="hostile") as http:
        yield http


@pytest.fixture(scope="module")
def real(hostile_settings: Settings) -> dict[str, str]:
    """A real SKU and SOD number, for the mutations that need one to reach their input's text."""
    with psycopg.connect(hostile_settings.admin_url) as conn:
        sku = conn.execute("SELECT sku FROM stock_item ORDER BY id LIMIT 1").fetchone()
        sod = conn.execute("SELECT sod_number FROM service_order ORDER BY id LIMIT 1").fetchone()
    assert sku and sod
    return {"sku": sku[0], "sod": sod[0]}


def row_counts(settings: Settings) -> tuple[int, ...]:
    with psycopg.connect(settings.admin_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM service_order), (SELECT count(*) FROM customer),"
            " (SELECT count(*) FROM stock_item), (SELECT count(*) FROM stock_movement),"
            " (SELECT max(updated_at) FROM service_order)::text"
        ).fetchone()
    assert row is not None
    return tuple(row)


async def post(client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None) -> httpx.Response:
    return await client.post("/graphql", json={"query": query, "variables": variables or {}})


def clear(response: httpx.Response, *allowed: str) -> dict[str, Any]:
    """The answer's body, once checked: no 5xx, errors all with a code among `allowed`."""
    assert response.status_code < 500, response.text[:2000]
    body: dict[str, Any] = response.json()
    codes = error_codes(body)
    assert "INTERNAL" not in codes, body
    assert set(codes) <= set(allowed), body
    return body


async def still_answers(client: httpx.AsyncClient) -> None:
    response = await post(client, NORMAL)
    assert response.status_code == 200, response.text[:2000]
    assert response.json()["data"]["serviceOrders"]["edges"], response.json()


async def test_sql_like_strings_in_every_filter_argument_are_plain_values(
    client: httpx.AsyncClient, hostile_settings: Settings
) -> None:
    before = row_counts(hostile_settings)
    for name, query in FILTERS.items():
        for value in SQL_LIKE:
            body = clear(await post(client, query, {"v": value}), "BAD_USER_INPUT")
            data = body.get("data") or {}
            for connection in data.values():
                # a value is compared as text: none of the seed's rows holds these strings
                if isinstance(connection, dict) and "totalCount" in connection and value not in ("%", "_"):
                    assert connection["totalCount"] == 0, (name, value, body)
    assert row_counts(hostile_settings) == before
    await still_answers(client)


async def test_10000_aliases_are_refused_before_execution(client: httpx.AsyncClient) -> None:
    for field in ("__typename", "stockItems(first: 1) { totalCount }"):
        query = "{ " + " ".join(f"a{i}: {field}" for i in range(10_000)) + " }"
        body = clear(await post(client, query), "BAD_USER_INPUT", "QUERY_TOO_COMPLEX")
        assert "data" not in body or body["data"] is None, body
        assert error_codes(body), body
    await still_answers(client)


async def test_deep_fragments_are_refused_before_execution(client: httpx.AsyncClient) -> None:
    step = "customer {{ serviceOrders(first: 1) {{ edges {{ node {{ ...F{next} }} }} }} }}"
    for depth in (30, 150):
        spreads = " ".join(f"fragment F{i} on ServiceOrder {{ {step.format(next=i + 1)} }}" for i in range(depth))
        root = "{ serviceOrders(first: 1) { edges { node { ...F0 } } } }"
        query = f"{root} {spreads} fragment F{depth} on ServiceOrder {{ id }}"
        body = clear(await post(client, query), "BAD_USER_INPUT", "QUERY_TOO_COMPLEX")
        assert body.get("data") is None and error_codes(body), body
    await still_answers(client)


async def test_circular_fragment_spreads_are_a_validation_error(client: httpx.AsyncClient) -> None:
    for query in (
        "fragment A on Query { ...B } fragment B on Query { ...A } { ...A }",
        "fragment A on Query { __typename ...A } { ...A }",
        "fragment A on ServiceOrder { customer { serviceOrders { edges { node { ...A } } } } }"
        " { serviceOrders { edges { node { ...A } } } }",
    ):
        body = clear(await post(client, query), "BAD_USER_INPUT")
        assert error_codes(body) and "within itself" in body["errors"][0]["message"], body
    await still_answers(client)


async def test_huge_integers_in_int_and_in_first_last_are_bad_user_input(
    client: httpx.AsyncClient, hostile_settings: Settings, real: dict[str, str]
) -> None:
    before = row_counts(hostile_settings)
    huge = [2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 2**64 + 1, 10**400]
    sku = real["sku"]
    templates = [
        "{{ serviceOrders(first: {n}) {{ totalCount }} }}",
        "{{ serviceOrders(last: {n}) {{ totalCount }} }}",
        "{{ customers(first: {n}) {{ totalCount }} }}",
        '{{ reports {{ topCustomers(from: "2025-01-01", to: "2025-02-01", limit: {n}) {{ currency }} }} }}',
        'mutation {{ receiveStock(sku: "' + sku + '", quantity: {n}, reference: "huge") {{ errors {{ code }} }} }}',
    ]
    raw = (
        b'{"query": "query($n: Int) { serviceOrders(first: $n) { totalCount } }", "variables": {"n": '
        + b"9" * 5000
        + b"}}"
    )
    for template in templates:
        for n in [*huge, "9" * 5000]:
            clear(await post(client, template.format(n=n)), "BAD_USER_INPUT")
        variable = template.replace("{n}", "$n").replace("{{", "{").replace("}}", "}")
        variable = (
            ("mutation($n: Int)" + variable[len("mutation") :])
            if variable.startswith("mutation")
            else f"query($n: Int) {variable}"
        )
        for n in huge:
            # the cost is priced from the raw variable, before graphql-core coerces it
            clear(await post(client, variable, {"n": n}), "BAD_USER_INPUT", "QUERY_TOO_COMPLEX")
        # beyond what a JSON number parser holds: the body itself is refused
        raw = (
            b'{"query": "query($n: Int) { serviceOrders(first: $n) { totalCount } }", "variables": {"n": '
            + b"9" * 5000
            + b"}}"
        )
        clear(
            await client.post("/graphql", content=raw, headers={"content-type": "application/json"}), "BAD_USER_INPUT"
        )
    assert row_counts(hostile_settings) == before
    await still_answers(client)


async def test_nul_bytes_in_strings_and_in_variables_are_bad_user_input(
    client: httpx.AsyncClient, hostile_settings: Settings, real: dict[str, str]
) -> None:
    before = row_counts(hostile_settings)
    for value in ("\x00", "a\x00b", "C-\x00' OR 1=1 --"):
        for query in FILTERS.values():
            clear(await post(client, query, {"v": value}), "BAD_USER_INPUT")
        for name, query in MUTATIONS.items():
            body = clear(await post(client, query, {"v": value, **real}), "BAD_USER_INPUT")
            payload = (body.get("data") or {}).get(name.split(".")[0]) or {}
            assert error_codes(body) or payload.get("errors"), (name, body)
    # in the document's own string literals, as \u0000
    for query in (
        '{ customers(filter: {nameContains: "a\\u0000b"}) { totalCount } }',
        '{ search(query: "\\u0000") { found } }',
        'mutation { createCustomer(input: {code: "C-\\u0000", name: "n"}) { errors { code } } }',
    ):
        body = clear(await post(client, query), "BAD_USER_INPUT")
        assert error_codes(body) or any(v and v.get("errors") for v in (body.get("data") or {}).values()), body
    assert row_counts(hostile_settings) == before
    await still_answers(client)


async def test_1mb_strings_are_bad_user_input_or_payload_too_large(
    client: httpx.AsyncClient, hostile_settings: Settings, real: dict[str, str]
) -> None:
    before = row_counts(hostile_settings)
    under = "x" * (hostile_settings.max_body_bytes - 2_000)
    for name, query in {**FILTERS, **MUTATIONS}.items():
        body = clear(await post(client, query, {"v": under, **real}), "BAD_USER_INPUT")
        payload = (body.get("data") or {}).get(name.split(".")[0]) or {}
        assert error_codes(body) or payload.get("errors"), (name, body)
    over = "x" * 1_048_576
    response = await post(client, FILTERS["customers.nameContains"], {"v": over})
    assert response.status_code == 413 and error_codes(response.json()) == ["PAYLOAD_TOO_LARGE"], response.text[:500]
    response = await post(client, '{ search(query: "' + over + '") { found } }')
    assert response.status_code == 413 and error_codes(response.json()) == ["PAYLOAD_TOO_LARGE"], response.text[:500]
    assert row_counts(hostile_settings) == before
    await still_answers(client)


async def test_batched_requests_are_not_supported_and_answer_bad_user_input(client: httpx.AsyncClient) -> None:
    for raw in (
        b'[{"query": "{ __typename }"}, {"query": "{ __typename }"}]',
        b"[]",
        b'[{"query": "mutation { reconcileDashboard { queued } }"}]',
    ):
        response = await client.post("/graphql", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        body = clear(response, "BAD_USER_INPUT")
        assert error_codes(body) == ["BAD_USER_INPUT"] and "JSON object" in body["errors"][0]["message"], body
    await still_answers(client)


async def test_a_global_id_of_non_ascii_digits_is_bad_user_input(client: httpx.AsyncClient) -> None:
    for key in ("\u00b2", "\u0661\u0662\u0663", "\U0001d7d9"):  # ², Arabic-Indic 123, a double-struck 1
        encoded = base64.urlsafe_b64encode(f"ServiceOrder:{key}".encode()).decode().rstrip("=")
        for query in ("query($v: ID!) { node(id: $v) { id } }", "query($v: ID!) { nodes(ids: [$v]) { id } }"):
            body = clear(await post(client, query, {"v": encoded}), "BAD_USER_INPUT")
            assert error_codes(body) == ["BAD_USER_INPUT"] or body["data"] in ({"node": None}, {"nodes": [None]}), body
        body = clear(
            await post(client, "query($v: ID!) { importJob(id: $v) { id } }", {"v": encoded}), "BAD_USER_INPUT"
        )
        assert error_codes(body) == ["BAD_USER_INPUT"], body
    await still_answers(client)

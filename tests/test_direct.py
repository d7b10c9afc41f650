"""Cached queries run directly (nexes.execution.direct): the stock executor's data and errors,
without graphql-core's executor where the plan allows it, and graphql-core's where it does not,
against the real database and replica."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import strawberry
from strawberry.schema.config import StrawberryConfig

from nexes.auth.identity import ADMIN_VIEWER as ADMIN
from nexes.execution import deadline
from nexes.execution.executor import FastExecutor
from nexes.execution.hooks import Hooks
from nexes.execution.pipeline import Pipeline
from nexes.resolvers.context import Context
from nexes.schema.scalars import SCALAR_MAP
from nexes.settings import Settings
from tests.conftest import client_for, gql
from tests.support.deadlines import SLACK, active_backends, customers_locked, with_deadlines
from tests.support.equivalence import stock_and_fast as stock_and_app
from tests.support.rendered import plain


@contextmanager
def graphql_core_runs() -> Iterator[list[str]]:
    """The operation names (or "") graphql-core's execute ran while inside: a spy on our own
    module's reference to it, not a stand-in for a service."""
    ran: list[str] = []
    original = deadline.execute

    def spy(*args: Any, **kwargs: Any) -> Any:
        ran.append(kwargs.get("operation_name") or "")
        return original(*args, **kwargs)

    deadline.execute = spy  # type: ignore[assignment]
    try:
        yield ran
    finally:
        deadline.execute = original


def described(result: Any) -> list[tuple[str, Any, Any, Any]]:
    """Each error's message, path, locations and Nexes code, in order."""
    return [
        (
            e.message,
            e.path,
            [(loc.line, loc.column) for loc in e.locations or []],
            getattr(e.original_error, "code", None),
        )
        for e in result.errors or []
    ]


# (document, variables): each runs without graphql-core's executor.
DIRECT = [
    (
        "query($f: Date!, $t: Date!) { dashboard(from: $f, to: $t) { totalCount statuses { status count amounts { currency amount } } } }",  # noqa: E501
        {"f": "2024-01-01", "t": "2024-12-31"},
    ),
    (
        "{ serviceOrders(first: 5) { edges { cursor node { id sodNumber status createdAt totalAmount customer { id name } } } pageInfo { hasNextPage endCursor } } }",  # noqa: E501
        None,
    ),
    (
        "query($s: [Status!]) { a: serviceOrders(first: 3, filter: {status: $s}) { edges { node { sodNumber status } } } __typename b: customers(first: 2) { edges { node { name } } } }",  # noqa: E501
        {"s": ["OPEN"]},
    ),
    ("{ __typename t: __typename }", None),
    ('{ serviceOrder(sodNumber: "NO-SUCH-ORDER") { id } }', None),
    # an interface: each runtime type completed by its own compiled completer
    (
        "query($a: ID!, $b: ID!, $c: ID!) { a: node(id: $a) { id ... on ServiceOrder { sodNumber status lines { lineNo quantity unitPrice } } } b: node(id: $b) { __typename ... on Customer { code name } } c: node(id: $c) { id } }",  # noqa: E501
        {"a": "@order", "b": "@customer", "c": "U2VydmljZU9yZGVyOjk5OTk5OTk5OQ"},
    ),
    # a field filled by batches under a list (Customer.serviceOrders, compiled.Slot)
    (
        "{ customers(first: 6) { edges { node { name serviceOrders(first: 3) { edges { cursor node { id sodNumber status createdAt totalAmount } } pageInfo { hasNextPage endCursor } } } } } }",  # noqa: E501
        None,
    ),
    # errors from resolvers, located at their fields
    ('{ node(id: "not-a-global-id") { id } }', None),
    ('{ dashboard(from: "2024-12-31", to: "2024-01-01") { totalCount } }', None),  # non-null: no data
    ("{ serviceOrders(first: 500) { edges { node { id } } } }", None),
    (  # a nullable field's error: null there, its siblings answered
        '{ bad: serviceOrder(sodNumber: "not a sod!") { id } ok: customers(first: 1) { edges { node { name } } } }',
        None,
    ),
    (  # a non-null field's error nulls the whole data
        '{ ok: customers(first: 1) { edges { node { name } } } bad: serviceOrders(first: 2, after: "not-a-cursor") { edges { node { id } } } }',  # noqa: E501
        None,
    ),
]

# (document, variables): graphql-core's executor runs these (see the module doc of direct).
STOCK = [
    ("{ serviceOrders(first: 3) { edges { node { id } } totalCount } }", None),  # a resolver below the root
    ('{ nodes(ids: ["U2VydmljZU9yZGVyOjE"]) { id } }', None),  # a list of an abstract type
    ("query($y: Boolean!) { customers(first: 1) { edges { node { name @include(if: $y) } } } }", {"y": True}),
    ("{ ...Q } fragment Q on Query { customers(first: 1) { edges { node { name } } } }", None),
    # variables that do not coerce: the stock path reports them
    # a batch that fails: completed again the stock way, its errors per customer with their paths
    (
        '{ customers(first: 3) { edges { node { serviceOrders(first: 2, after: "not-a-cursor") { edges { node { id } } } } } } }',  # noqa: E501
        None,
    ),
    ("{ customers(first: 3) { edges { node { serviceOrders(first: 500) { edges { node { id } } } } } } }", None),
    ("query($f: Date!) { dashboard(from: $f) { totalCount } }", {"f": "not-a-date"}),
    ("query($f: Date!) { dashboard(from: $f) { totalCount } }", {}),
]


async def _ids(seeded: Settings, variables: dict[str, Any] | None) -> dict[str, Any] | None:
    """`variables` with "@order" and "@customer" replaced by a seeded order's and customer's ids."""
    if not variables or not any(v in ("@order", "@customer") for v in variables.values()):
        return variables
    async with client_for(seeded) as client:
        body = await gql(
            client,
            "{ o: serviceOrders(first: 1) { edges { node { id } } } c: customers(first: 1) { edges { node { id } } } }",
        )
    ids = {
        "@order": body["data"]["o"]["edges"][0]["node"]["id"],
        "@customer": body["data"]["c"]["edges"][0]["node"]["id"],
    }
    return {k: ids[v] if v in ("@order", "@customer") else v for k, v in variables.items()}


@pytest.mark.parametrize(("document", "variables"), DIRECT)
async def test_direct_queries_match_the_stock_executor_without_graphql_core(
    seeded: Settings, document: str, variables: dict[str, Any] | None
) -> None:
    variables = await _ids(seeded, variables)
    with graphql_core_runs() as ran:
        expected, got = await stock_and_app(seeded, document, variables)
    assert ran == [""]  # the stock reference only; the app's pipeline ran it directly
    assert plain(got.data) == expected.data
    assert described(got) == described(expected)
    assert expected.data is not None or expected.errors


@pytest.mark.parametrize(("document", "variables"), STOCK)
async def test_what_the_direct_path_does_not_take_runs_the_stock_way_with_the_same_answer(
    seeded: Settings, document: str, variables: dict[str, Any] | None
) -> None:
    with graphql_core_runs() as ran:
        expected, got = await stock_and_app(seeded, document, variables)
    assert ran == ["", ""]  # the reference and the app: both through graphql-core
    assert plain(got.data) == expected.data
    assert described(got) == described(expected)


@strawberry.type
class Thing:
    name: str
    count: int
    tags: list[str]


@strawberry.type
class Things:
    items: list[Thing]
    first: Thing | None
    strict: Thing
    mixed: list[Thing] = strawberry.field(default_factory=list)


def _thing(i: int, **over: Any) -> Thing:
    return Thing(**{"name": f"t{i}", "count": i, "tags": ["a", "b"], **over})


@strawberry.type
class QueryRoot:
    @strawberry.field
    def things(self) -> Things:
        return Things(items=[_thing(i) for i in range(4)], first=_thing(9), strict=_thing(1))

    @strawberry.field
    def broken(self) -> Things:
        # Values the compiled completer refuses: a null in a non-null leaf, an Int past 32
        # bits, an object of another type in a list.
        other = Things(items=[], first=None, strict=_thing(0))
        return Things(
            items=[_thing(1), _thing(2, name=None)],
            first=_thing(4, count=2**40),
            strict=_thing(5, name=None),
            mixed=[_thing(3), other],  # type: ignore[list-item]
        )


def _pipelines(settings: Settings) -> tuple[Pipeline, Pipeline, Context]:
    def build(executor: type | None) -> Pipeline:
        schema = strawberry.Schema(
            query=QueryRoot, config=StrawberryConfig(scalar_map=SCALAR_MAP), execution_context_class=executor
        )
        return Pipeline(schema, Hooks())

    context = Context(request_id="direct", settings=settings, router=None, cursors=None, viewer=ADMIN)  # type: ignore[arg-type]
    return build(None), build(FastExecutor), context


@pytest.mark.parametrize(
    "document",
    [
        "{ broken { items { name count } } }",  # a null in a non-null leaf
        "{ broken { first { name } strict { count name } } }",  # a null nulling its parent
        "{ broken { mixed { name } } }",  # an object of another type in a list
        "{ broken { first { count } } }",  # an Int past 32 bits
    ],
)
async def test_a_value_the_completer_refuses_is_completed_again_the_stock_way(
    settings: Settings, document: str
) -> None:
    stock, fast, context = _pipelines(settings)
    with graphql_core_runs() as ran:
        expected = await stock.run(document, None, None, context, queries_only=True)
        got = await fast.run(document, None, None, context, queries_only=True)
    assert fast._direct is not None
    plan = next(iter(fast._direct._plans.values()))[1]
    assert plan is not None  # the direct path planned it, then gave it back
    assert ran == ["", ""]
    assert got.data == expected.data
    assert described(got) == described(expected) and expected.errors


async def test_the_direct_path_plans_once_per_document_and_serves_every_caller(settings: Settings) -> None:
    _, fast, context = _pipelines(settings)
    assert fast._direct is not None
    document = "{ things { items { name count tags } strict { name } } }"
    with graphql_core_runs() as ran:
        first = await fast.run(document, None, None, context, queries_only=True)
        other = dataclasses.replace(context, viewer=dataclasses.replace(ADMIN, subject="someone-else"))
        second = await fast.run(document, None, None, other, queries_only=True)
    assert ran == []
    assert first.data == second.data and first.data is not None and not first.errors
    assert len(fast._direct._plans) == 1


async def test_past_its_deadline_a_direct_query_gets_timeout_and_leaves_no_statement_running(
    seeded: Settings,
) -> None:
    settings = with_deadlines(seeded, 1.0)
    document = "{ __typename customers(first: 2) { edges { node { name } } } }"
    async with client_for(settings, roles=("viewer",), subject="direct-deadline") as client:
        warm = await gql(client, document)  # planned, and its statement prepared if it prepares
        assert "errors" not in warm
        with graphql_core_runs() as ran, customers_locked(seeded) as replica:
            started = time.monotonic()
            body = await gql(client, document)
            took = time.monotonic() - started
            left = active_backends(replica)
            for _ in range(20):
                if not left:
                    break
                await asyncio.sleep(0.1)
                left = active_backends(replica)
    assert ran == []  # no graphql-core: the direct path stopped it
    assert 1.0 <= took < 1.0 + SLACK, took
    assert left == [], f"statements left running on the replica: {left}"
    assert body["data"] is None  # customers is non-null
    [error] = body["errors"]
    assert error["path"] == ["customers"] and error["extensions"]["code"] == "TIMEOUT"
    assert "NEXES_REQUEST_DEADLINE_VIEWER" in error["message"]

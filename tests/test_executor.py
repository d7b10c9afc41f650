"""The fast executor gives exactly the stock executor's data and errors."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import Enum
from typing import Any

import pytest
import strawberry
from strawberry.schema.config import StrawberryConfig

from nexes.execution.executor import FastExecutor, _completers, _plans
from nexes.schema.scalars import SCALAR_MAP
from nexes.settings import Settings
from tests.conftest import client_for
from tests.support.equivalence import stock_and_fast
from tests.support.rendered import plain


@strawberry.enum
class Color(Enum):
    RED = "RED"
    BLUE = "BLUE"


@strawberry.type
class Leafy:
    name: str
    maybe: str | None
    must: str  # set to None on purpose in some rows: a non-null violation
    count: int
    color: Color
    at: dt.datetime
    amount: Decimal
    flag: bool

    @strawberry.field
    def computed(self) -> str:
        return self.name.upper()

    @strawberry.field
    def boom(self) -> str | None:
        raise ValueError("resolver failed")

    @strawberry.field
    def greet(self, who: str = "you") -> str:
        return f"hi {who}"


@strawberry.interface
class Named:
    name: str


@strawberry.type
class Tagged(Named):
    name: str
    tags: list[str]
    maybe_tags: list[str | None] | None
    counts: list[int]
    children: list[Leafy | None]


@strawberry.type
class Holder:
    items: list[Leafy]
    first: Leafy | None
    strict: Leafy
    tagged: list[Tagged] = strawberry.field(default_factory=list)
    named: Named | None = None


def row(i: int, **over: Any) -> Leafy:
    values: dict[str, Any] = {
        "name": f"n{i}",
        "maybe": None if i % 2 else f"m{i}",
        "must": f"x{i}",
        "count": i,
        "color": Color.RED if i % 3 else Color.BLUE,
        "at": dt.datetime(2025, 1, 1, 8, 0, i, 123, tzinfo=dt.UTC),
        "amount": Decimal(f"{i}.50"),
        "flag": i % 2 == 0,
    }
    values.update(over)
    return Leafy(**values)


@strawberry.type
class QueryRoot:
    @strawberry.field
    def holder(self) -> Holder:
        return Holder(items=[row(i) for i in range(5)], first=row(9), strict=row(1))

    @strawberry.field
    def broken(self) -> Holder:
        # A null in a non-null leaf, and an int field holding text: both must error like stock.
        return Holder(
            items=[row(1), row(2, must=None), row(3, count="not a number")], first=None, strict=row(4, must=None)
        )

    @strawberry.field
    async def later(self) -> list[Leafy]:
        return [row(i) for i in range(3)]

    @strawberry.field
    def tagged(self) -> Holder:
        good = Tagged(name="t", tags=["a", "b"], maybe_tags=[None, "c"], counts=[1, 2], children=[row(1), None])
        return Holder(items=[], first=None, strict=row(1), tagged=[good, good], named=good)

    @strawberry.field
    def odd(self) -> Holder:
        # Values the compiled path must hand back to graphql-core: an Int past 32 bits,
        # a string where an enum belongs, a number in a String list, a None in a
        # non-null list, a bool given as 1, the wrong object in a list.
        bad = Tagged(name="t", tags=["a", 5], maybe_tags=None, counts=[1, 2**40], children=[None])
        return Holder(
            items=[row(1, color="RED"), row(2, flag=1), Holder(items=[], first=None, strict=row(1))],  # type: ignore[list-item]
            first=row(3, count=2**40),
            strict=row(4),
            tagged=[bad, Tagged(name="u", tags=None, maybe_tags=[], counts=[], children=[])],  # type: ignore[arg-type]
        )


def schemas() -> tuple[strawberry.Schema, strawberry.Schema]:
    def build(executor: type | None) -> strawberry.Schema:
        return strawberry.Schema(
            query=QueryRoot, config=StrawberryConfig(scalar_map=SCALAR_MAP), execution_context_class=executor
        )

    return build(None), build(FastExecutor)


DOCUMENTS = [
    "{ holder { items { name maybe must count color at amount flag } } }",
    "{ holder { items { __typename name computed } first { __typename } } }",
    "{ holder { items { a: name b: name c: count name } } }",
    "fragment F on Leafy { name count } { holder { items { ...F ... on Leafy { color } maybe } } }",
    "query($yes: Boolean!) { holder { items { name @include(if: $yes) count @skip(if: $yes) maybe } } }",
    "{ holder { items { name boom } } }",
    '{ holder { items { greet(who: "x") other: greet } } }',
    "{ broken { items { name must } } }",
    "{ broken { items { name count } } }",
    "{ broken { first { name } strict { name must } } }",
    "{ later { name count color } }",
    "{ holder { strict { must name } first { must } } }",
    "{ tagged { tagged { __typename name tags maybeTags counts children { name count } } named { name } } }",
    "{ tagged { tagged { ... on Named { name } ... on Tagged { tags } } strict { ...L } } } fragment L on Leafy { at }",
    "{ odd { tagged { name tags } } }",
    "{ odd { tagged { counts maybeTags } } }",
    "{ odd { tagged { children { name } } } }",
    "{ odd { items { color } } }",
    "{ odd { items { flag } } }",
    "{ odd { items { name } } }",
    "{ odd { first { count } strict { count } } }",
]


# Only fields with resolvers and arguments: nothing for a fast path to take.
STOCK_ONLY = {'{ holder { items { greet(who: "x") other: greet } } }'}


@pytest.mark.parametrize("document", DOCUMENTS)
async def test_fast_executor_matches_stock_data_and_errors(document: str) -> None:
    _plans.clear()
    _completers.clear()
    stock, fast = schemas()
    variables = {"yes": True}
    expected = await stock.execute(document, variable_values=variables)
    got = await fast.execute(document, variable_values=variables)
    assert plain(got.data) == expected.data
    assert [e.formatted for e in got.errors or []] == [e.formatted for e in expected.errors or []]
    # The comparison means something only where the document yields data or errors,
    # and only if a fast path (leaf plans or compiled completion) really read Leafy itself.
    assert expected.data is not None or expected.errors
    fast_types = _completers.compiled_types() | {key[0] for key, plan in _plans.items() if plan}
    assert fast_types & {"Leafy", "Tagged"} or document in STOCK_ONLY


REAL_DOCUMENTS = [
    "{ serviceOrders(first: 30) { edges { cursor node { id sodNumber status createdAt updatedAt totalAmount currency description customer { id code name } lines { lineNo quantity unitPrice stockItem { id sku name onHand } } } } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } totalCount totalCountExact } }",  # noqa: E501
    "{ serviceOrders(first: 10, orderBy: TOTAL_AMOUNT_DESC, filter: {status: [OPEN, DRAFT]}) { edges { node { __typename ... on Node { id } ... on ServiceOrder { status totalAmount } } } } }",  # noqa: E501
    "{ customers(first: 5) { edges { node { name serviceOrders(first: 2) { edges { node { sodNumber } } } } } } }",
    '{ dashboard(from: "2024-01-01", to: "2024-12-31") { totalCount statuses { status count amounts { currency amount } } } }',  # noqa: E501
]


@pytest.mark.parametrize("document", REAL_DOCUMENTS)
async def test_fast_executor_matches_stock_on_the_real_api(seeded: Settings, document: str) -> None:
    expected, got = await stock_and_fast(seeded, document)
    assert expected.errors is None and got.errors is None
    assert plain(got.data) == expected.data


BATCHED_DOCUMENTS = [
    # Customer.serviceOrders under a list of customers: one batch (compiled.Slot) for all
    "{ customers(first: 6) { edges { node { name serviceOrders(first: 3) { edges { cursor node { id sodNumber status createdAt totalAmount } } pageInfo { hasNextPage startCursor endCursor } } } } } }",  # noqa: E501
    "{ customers(first: 4) { edges { node { a: serviceOrders(first: 1) { edges { node { sodNumber } } } b: serviceOrders(first: 2, orderBy: TOTAL_AMOUNT_DESC) { edges { node { totalAmount } } } } } } }",  # noqa: E501
    "query Q($n: Int, $s: [Status!]) { customers(first: 5) { edges { node { ...C } } } } fragment C on Customer { serviceOrders(first: $n, filter: {status: $s}) { edges { node { status customer { name serviceOrders(first: 1) { edges { node { sodNumber } } } } } } } }",  # noqa: E501
    "{ customers(first: 3) { edges { node { serviceOrders(first: 0) { edges { node { id } } pageInfo { hasNextPage endCursor } } } } } }",  # noqa: E501
    # errors: the stock path reports them, per customer, with their paths
    '{ customers(first: 3) { edges { node { serviceOrders(first: 2, after: "not-a-cursor") { edges { node { id } } } } } } }',  # noqa: E501
    "{ customers(first: 3) { edges { node { serviceOrders(first: 500) { edges { node { id } } } } } } }",
    '{ customers(first: 2) { edges { node { serviceOrders(filter: {customerId: "Q3VzdG9tZXI6MQ"}) { edges { node { id } } } } } } }',  # noqa: E501
]


@pytest.mark.parametrize("document", BATCHED_DOCUMENTS)
async def test_batched_fields_match_the_stock_executor_data_errors_and_paths(seeded: Settings, document: str) -> None:
    variables = {"n": 2, "s": ["OPEN", "DRAFT"]} if "$n" in document else None
    expected, got = await stock_and_fast(seeded, document, variables)
    assert plain(got.data) == expected.data

    def described(result: Any) -> list[tuple[str, Any, Any]]:
        return sorted((e.message, e.path, (e.extensions or {}).get("code")) for e in result.errors or [])

    assert described(got) == described(expected)
    if "not-a-cursor" not in document and "500" not in document and "customerId" not in document:
        assert expected.errors is None and got.data is not None


async def test_customers_orders_come_from_one_batch_not_one_resolver_per_customer(seeded: Settings) -> None:
    from nexes.execution import executor

    batches: list[int] = []
    original = executor.FastExecutor._batch

    def counted(self: Any, slot: Any, sources: list[Any]) -> Any:
        batches.append(len(sources))
        return original(self, slot, sources)

    document = "{ customers(first: 7) { edges { node { name serviceOrders(first: 2) { edges { node { id } } } } } } }"
    executor.FastExecutor._batch = counted  # type: ignore[method-assign]  # a spy on our own code, not a service
    try:
        async with client_for(seeded) as client:
            response = await client.post("/graphql", json={"query": document})
    finally:
        executor.FastExecutor._batch = original  # type: ignore[method-assign]
    body = response.json()
    assert "errors" not in body
    assert len(body["data"]["customers"]["edges"]) == 7
    assert batches == [7]  # the seven customers' pages: one batch

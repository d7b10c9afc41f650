"""Query.customers reads its customers' pages of orders in its own round trip (the
executor's look ahead: nexes.execution.executor.Ahead, nexes.resolvers.orders
.customer_pages_ahead): the stock executor's answers, in one read of the database where
the customers and their batch took two; and two reads again wherever the look ahead does
not apply, or its pages are not for exactly the customers shown. Against the real
database and replica."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from nexes.auth.identity import ADMIN_VIEWER as ADMIN
from nexes.db.connect.router import Router, Work
from nexes.execution.pipeline import Pipeline
from nexes.execution.schema import make_schema
from nexes.resolvers.context import Context
from nexes.settings import Settings
from tests.conftest import client_for, gql
from tests.support.rendered import plain

ORDERS = "edges { node { id sodNumber status createdAt totalAmount } }"

# (document, variables): customers and their orders in one read.
AHEAD = [
    # the benchmark's read 5 (bench/api.py)
    (f"{{ customers(first: 20) {{ edges {{ node {{ id name serviceOrders(first: 10) {{ {ORDERS} }} }} }} }} }}", None),
    # customers read backward (their shown rows are the last ones), orders backward
    (
        "query($n: Int!) { customers(last: $n) { edges { node { code serviceOrders(last: 3) "
        "{ edges { node { sodNumber } } } } } pageInfo { hasPreviousPage } } }",
        {"n": 4},
    ),
    # filtered by name (ILIKE: a plan per pattern), orders by status and amount with hasNextPage
    (
        '{ customers(first: 5, filter: {nameContains: "a"}) { edges { node { name serviceOrders(first: 4, '
        "filter: {status: [OPEN, IN_PROGRESS]}, orderBy: TOTAL_AMOUNT_DESC) { edges { node { sodNumber status "
        "totalAmount } } pageInfo { hasNextPage } } } } } }",
        None,
    ),
    # a root fragment: graphql-core's own executor runs it (nexes.execution.direct), and looks ahead too
    (
        "{ ...Q } fragment Q on Query { customers(first: 3) { edges { node { code serviceOrders(first: 2) "
        "{ edges { node { sodNumber } } } } } } }",
        None,
    ),
    # the orders' customer, rendered inside each page
    (
        "{ customers(first: 3) { edges { node { code serviceOrders(first: 2) { edges { node { sodNumber "
        "customer { code } } } } } } } }",
        None,
    ),
]

# (document, variables, reads): what the look ahead leaves to the batch, with the reads it takes.
NOT_AHEAD = [
    # lines: pages read row by row (with their lines, in the batch's one read): not packed
    (
        "{ customers(first: 3) { edges { node { code serviceOrders(first: 2) "
        "{ edges { node { lines { lineNo } } } } } } } }",
        None,
        2,
    ),
    # edge cursors: not a packed page
    (
        "{ customers(first: 3) { edges { node { code serviceOrders(first: 2) "
        "{ edges { cursor node { sodNumber } } } } } } }",
        None,
        2,
    ),
    # two batches below the customers: which would it read for?
    (
        "{ customers(first: 3) { edges { node { a: serviceOrders(first: 2) { edges { node { sodNumber } } } "
        "b: serviceOrders(last: 1) { edges { node { sodNumber } } } } } } }",
        None,
        3,
    ),
    # no orders asked for
    (
        "{ customers(first: 3) { edges { node { code serviceOrders(first: 0) { edges { node { sodNumber } } } } } } }",
        None,
        1,
    ),
    # the orders' arguments are wrong: the batch reports it, at each customer's field (the
    # direct path's batch fails, and the stock path runs the operation again: the customers twice)
    (
        '{ customers(first: 2) { edges { node { code serviceOrders(first: 2, after: "not-a-cursor") '
        "{ edges { node { sodNumber } } } } } } }",
        None,
        2,
    ),
]


class CountingRouter(Router):
    """The app's own router, counting its reads (a count of our own calls, not a stand-in:
    every read still goes to the real replica)."""

    def __init__(self, base: Router) -> None:
        super().__init__(base.pools, base.health, base.replica_timeout)
        self.reads = 0

    async def read(self, work: Work[Any], *, fresh: bool = False, shared: Hashable | None = None) -> Any:
        self.reads += 1
        return await super().read(work, fresh=fresh, shared=shared)


@dataclass
class Runs:
    expected: Any  # the stock executor, Python building every answer: no look ahead
    got: Any  # the app's pipeline
    reads: int  # the app's reads of the database


async def _run(
    seeded: Settings, document: str, variables: dict[str, Any] | None, context_class: type = Context
) -> Runs:
    async with client_for(seeded) as client:
        state = client.app.state  # type: ignore[attr-defined]

        def context(router: Router, render: bool) -> Context:
            settings = replace(state.settings, render_sql=render)
            return context_class(  # type: ignore[no-any-return]
                request_id="read-ahead", settings=settings, router=router, cursors=state.cursors, viewer=ADMIN
            )

        expected = await Pipeline(make_schema(None)).run(
            document, variables, None, context(state.router, False), queries_only=True
        )
        counting = CountingRouter(state.router)
        got = await state.pipeline.run(document, variables, None, context(counting, True), queries_only=True)
    return Runs(expected, got, counting.reads)


def _errors(result: Any) -> list[tuple[str, Any]]:
    return [(e.message, e.path) for e in result.errors or []]


@pytest.mark.parametrize(("document", "variables"), AHEAD)
async def test_customers_and_their_orders_are_one_read_with_the_stock_answer(
    seeded: Settings, document: str, variables: dict[str, Any] | None
) -> None:
    for _ in range(2):  # the first request plans and compiles; the second runs the plans
        runs = await _run(seeded, document, variables)
        assert runs.expected.errors is None and runs.got.errors is None
        assert plain(runs.got.data) == runs.expected.data
        assert runs.reads == 1
    customers = runs.expected.data["customers"]["edges"]
    assert customers and any(edge["node"][_orders_key(edge["node"])]["edges"] for edge in customers)


def _orders_key(node: dict[str, Any]) -> str:
    return next(key for key in node if key.startswith("serviceOrders"))


@pytest.mark.parametrize(("document", "variables", "reads"), NOT_AHEAD)
async def test_what_the_look_ahead_leaves_to_the_batch_reads_as_before(
    seeded: Settings, document: str, variables: dict[str, Any] | None, reads: int
) -> None:
    runs = await _run(seeded, document, variables)
    assert plain(runs.got.data) == runs.expected.data
    assert _errors(runs.got) == _errors(runs.expected)
    assert runs.reads == reads


class _Missing(dict[Any, Any]):
    """Pages read ahead as if a customer had been written between the customers' statement and
    the pages' (each takes its own snapshot): the first customer's page is left out. A fault
    the real database gives only by a race, simulated on our own object."""

    def __setitem__(self, key: Any, pages: Any) -> None:
        spec, _ = key
        pages = dict(list(pages.items())[1:])
        super().__setitem__((spec, frozenset(pages)), pages)


class _RacedContext(Context):
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "prefetched" and value is not None and not isinstance(value, _Missing):
            value = _Missing(value)
        super().__setattr__(name, value)


async def test_pages_read_ahead_for_other_customers_than_those_shown_are_read_again(seeded: Settings) -> None:
    document, variables = AHEAD[0]
    runs = await _run(seeded, document, variables, context_class=_RacedContext)
    assert runs.got.errors is None
    assert plain(runs.got.data) == runs.expected.data
    assert runs.reads == 2  # the customers with their pages, then the batch's own read


async def test_two_pages_of_customers_each_take_their_own_orders_read_ahead(seeded: Settings) -> None:
    """The same orders' page below two root fields, over customers that overlap: each root's
    read carries its own customers' pages, and each batch takes its own."""
    orders = "serviceOrders(first: 3) { edges { node { sodNumber createdAt } } }"
    document = (
        f"{{ a: customers(first: 2) {{ edges {{ node {{ code {orders} }} }} }} "
        f"b: customers(first: 4) {{ edges {{ node {{ code {orders} }} }} }} }}"
    )
    runs = await _run(seeded, document, None)
    assert runs.expected.errors is None and runs.got.errors is None
    assert plain(runs.got.data) == runs.expected.data
    assert runs.reads == 2
    a, b = runs.expected.data["a"]["edges"], runs.expected.data["b"]["edges"]
    assert a == b[:2] and any(edge["node"]["serviceOrders"]["edges"] for edge in a)


async def test_customers_with_their_orders_over_http_take_one_round_trip(seeded: Settings) -> None:
    """Server-Timing's statement count and the routing counter, as a client and an operator see them."""
    document = AHEAD[0][0]
    async with client_for(seeded) as client:
        await gql(client, document)
        body = await gql(client, document)
    assert "errors" not in body
    timing = body["_response"].headers["server-timing"]
    assert 'desc="2 statements"' in timing  # the customers' and the pages', in one pipeline
    assert len(body["data"]["customers"]["edges"]) == 20

"""Every hook point of the execution pipeline runs on both executors: the compiled fast
executor (the API's) and graphql-core's stock execution (make_schema(None)), on the real
schema and the seeded database."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    ValidationRule,
)

from nexes.auth.identity import ADMIN_VIEWER as ADMIN
from nexes.auth.identity import Viewer
from nexes.errors import Code, NexesError
from nexes.execution.executor import FastExecutor, HookedExecutor, _completers, _plans
from nexes.execution.hooks import FieldGuard, Hooks
from nexes.execution.pipeline import DEFAULT_HOOKS, Pipeline
from nexes.execution.schema import make_schema, schema
from nexes.resolvers.context import Context
from nexes.settings import Settings
from tests.conftest import client_for
from tests.support.auth import bearer_for

EXECUTORS = ["compiled", "stock"]
PAGE = "{ serviceOrders(first: 3) { edges { node { sodNumber totalAmount lines { lineNo stockItem { sku } } } } pageInfo { hasNextPage endCursor } totalCount } }"  # noqa: E501


def pipeline(executor: str, hooks: Hooks) -> Pipeline:
    return Pipeline(schema if executor == "compiled" else make_schema(None), hooks)


@pytest.fixture
async def context(app_client: httpx.AsyncClient) -> AsyncIterator[Callable[[], Context]]:
    state = app_client.app.state  # type: ignore[attr-defined]

    def make() -> Context:
        return Context(
            request_id="pipeline", settings=state.settings, router=state.router, cursors=state.cursors, viewer=ADMIN
        )

    yield make


async def run(p: Pipeline, context: Context, query: str = PAGE) -> ExecutionResult:
    return await p.run(query, None, None, context, queries_only=False)


def codes(result: ExecutionResult) -> list[str]:
    return [e.original_error.code for e in result.errors or [] if isinstance(e.original_error, NexesError)]


def refuse(context: Context, coordinate: str, source: Any) -> None:
    raise NexesError(Code.FORBIDDEN, f"{coordinate} is not for {context.viewer.subject}")


class NoTotalCount(ValidationRule):
    def enter_field(self, node: FieldNode, *_: Any) -> None:
        if node.name.value == "totalCount":
            self.report_error(GraphQLError("totalCount is not allowed here", node))


def refuse_mutations(document: DocumentNode, operation: OperationDefinitionNode, context: Context) -> None:
    if operation.operation is OperationType.MUTATION:
        raise NexesError(Code.FORBIDDEN, "read-only")


CANCEL = 'mutation { cancelServiceOrder(sodNumber: "NO-SUCH-ORDER") { errors { code } } }'


async def test_the_fields_guarded_below_are_on_the_fast_path_when_unguarded(context: Callable[[], Context]) -> None:
    _plans.clear()
    _completers.clear()
    result = await run(Pipeline(schema, dataclasses.replace(DEFAULT_HOOKS, field_guards=())), context())
    assert result.errors is None
    fast_types = _completers.compiled_types() | {key[0] for key, plan in _plans.items() if plan}
    assert {"PageInfo", "ServiceOrder", "ServiceOrderLine"} <= fast_types


def test_empty_hooks_leave_the_executors_as_they_are() -> None:
    assert Pipeline(schema, Hooks())._executor is FastExecutor
    assert Pipeline(make_schema(None), Hooks())._executor is HookedExecutor
    # The permission table's nested rules: the stock path with their guards.
    assert issubclass(Pipeline(make_schema(None), DEFAULT_HOOKS)._executor, HookedExecutor)


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_a_document_rule_refuses_a_document(executor: str, context: Callable[[], Context]) -> None:
    p = pipeline(executor, Hooks(document_rules=(*DEFAULT_HOOKS.document_rules, NoTotalCount)))
    refused = await run(p, context())
    assert refused.data is None
    assert [e.message for e in refused.errors or []] == ["totalCount is not allowed here"]
    allowed = await run(p, context(), "{ serviceOrders(first: 1) { edges { node { sodNumber } } } }")
    assert allowed.errors is None and allowed.data is not None


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_the_default_limits_refuse_deep_and_wide_documents(executor: str, context: Callable[[], Context]) -> None:
    p = pipeline(executor, DEFAULT_HOOKS)
    aliases = "{ " + " ".join(f"a{i}: __typename" for i in range(31)) + " }"
    wide = await run(p, context(), aliases)
    assert wide.data is None and "aliases" in (wide.errors or [])[0].message
    deep = "{ serviceOrders { edges { node { customer { serviceOrders { edges { node { customer { serviceOrders { edges { node { id } } } } } } } } } } } }"  # noqa: E501
    refused = await run(p, context(), deep)
    assert refused.data is None and "exceeds maximum operation depth" in (refused.errors or [])[0].message


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_an_operation_guard_refuses_a_mutation_before_it_runs(
    executor: str, context: Callable[[], Context]
) -> None:
    p = pipeline(executor, Hooks(operation_guards=(refuse_mutations,)))
    refused = await run(p, context(), CANCEL)
    assert refused.data is None and codes(refused) == [Code.FORBIDDEN]
    read = await run(p, context())
    assert read.errors is None and read.data is not None


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_a_field_guard_refuses_a_plain_scalar_leaf(executor: str, context: Callable[[], Context]) -> None:
    p = pipeline(executor, Hooks(field_guards=(FieldGuard.on({"PageInfo.endCursor"}, refuse),)))
    result = await run(p, context())
    assert result.data is not None
    page = result.data["serviceOrders"]
    assert page["pageInfo"] == {"hasNextPage": True, "endCursor": None}
    assert len(page["edges"]) == 3 and page["edges"][0]["node"]["sodNumber"]
    assert codes(result) == [Code.FORBIDDEN]
    assert (result.errors or [])[0].path == ["serviceOrders", "pageInfo", "endCursor"]


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_a_field_guard_on_a_non_null_leaf_in_a_list_nulls_as_a_resolver_error_would(
    executor: str, context: Callable[[], Context]
) -> None:
    def only_first(context: Context, coordinate: str, source: Any) -> None:
        if source.sod_number != first:
            refuse(context, coordinate, source)

    unguarded = await run(pipeline(executor, DEFAULT_HOOKS), context())
    assert unguarded.data is not None
    first = unguarded.data["serviceOrders"]["edges"][0]["node"]["sodNumber"]
    p = pipeline(executor, Hooks(field_guards=(FieldGuard.on({"ServiceOrder.totalAmount"}, only_first),)))
    result = await run(p, context())
    # ServiceOrderEdge.node and the connection are non-null: the refusal nulls serviceOrders, then data.
    assert result.data is None
    assert codes(result) == [Code.FORBIDDEN]
    assert (result.errors or [])[0].path == ["serviceOrders", "edges", 1, "node", "totalAmount"]


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_a_field_guard_refuses_a_nested_object(executor: str, context: Callable[[], Context]) -> None:
    p = pipeline(executor, Hooks(field_guards=(FieldGuard.on({"ServiceOrderLine.stockItem"}, refuse),)))
    result = await run(p, context())
    assert result.data is not None
    lines = [line for edge in result.data["serviceOrders"]["edges"] for line in edge["node"]["lines"]]
    assert lines and all(line["stockItem"] is None and line["lineNo"] for line in lines)
    assert codes(result) == [Code.FORBIDDEN] * len(lines)
    assert all(e.path and e.path[-1] == "stockItem" for e in result.errors or [])


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_a_field_guard_sees_the_context(executor: str, context: Callable[[], Context]) -> None:
    def admins_only(context: Context, coordinate: str, source: Any) -> None:
        if "admin" not in context.viewer.roles:
            refuse(context, coordinate, source)

    p = pipeline(executor, Hooks(field_guards=(FieldGuard.on({"PageInfo.endCursor"}, admins_only),)))
    allowed = await run(p, context())  # the fixture's context is an admin's
    assert allowed.errors is None and allowed.data is not None
    assert allowed.data["serviceOrders"]["pageInfo"]["endCursor"]
    viewer = context()
    viewer.viewer = Viewer(subject="someone", roles=frozenset({"viewer"}))
    refused = await run(p, viewer)
    assert codes(refused) == [Code.FORBIDDEN]


@pytest.mark.parametrize("executor", EXECUTORS)
async def test_a_result_mask_changes_a_value(executor: str, context: Callable[[], Context]) -> None:
    def hide_counts(result: ExecutionResult, context: Context) -> ExecutionResult:
        if result.data is not None and "serviceOrders" in result.data:
            result.data["serviceOrders"]["totalCount"] = None
        return result

    p = pipeline(executor, Hooks(result_masks=(hide_counts,)))
    result = await run(p, context())
    assert result.errors is None and result.data is not None
    assert result.data["serviceOrders"]["totalCount"] is None
    assert len(result.data["serviceOrders"]["edges"]) == 3


@asynccontextmanager
async def app_with(settings: Settings, hooks: Hooks) -> AsyncIterator[httpx.AsyncClient]:
    from nexes.http.app import create_app

    app = create_app(settings, hooks)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        auth = bearer_for(settings, "admin")
        async with httpx.AsyncClient(transport=transport, base_url="http://nexes.test", headers=auth) as client:
            yield client


async def test_the_app_answers_a_refused_operation_with_its_code_and_status(seeded: Settings) -> None:
    async with app_with(seeded, Hooks(operation_guards=(refuse_mutations,))) as client:
        response = await client.post("/graphql", json={"query": CANCEL})
        query = await client.get("/graphql", params={"query": "{ __typename }"})
    assert response.status_code == 403
    assert response.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert "data" not in response.json()  # refused before execution: no data at all
    assert query.status_code == 200


async def test_the_app_runs_its_default_hooks(seeded: Settings) -> None:
    async with client_for(seeded) as client:
        assert client.app.state.pipeline.hooks is DEFAULT_HOOKS  # type: ignore[attr-defined]

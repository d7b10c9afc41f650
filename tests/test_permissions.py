"""The permission table (nexes.auth.permissions) against every role, on both executors.

Each root field and mutation is tried by each role and by a token with no role:
- the gate: an operation whose field carries `@include(if: $run)` with `$run` (and every
  input) left out. The permission check runs before execution; variable coercion, the
  first step of execution, then fails. So a role the table refuses gets FORBIDDEN (and
  nothing runs), and a role it allows gets past the check to the variable error: no
  mutation runs, no job is queued, whatever the role.
- the reads, run in full by every role the table allows: they answer without errors
  (an analyst's through the analyst pools).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from graphql import ExecutionResult, build_schema

from nexes.auth.identity import Role, Viewer
from nexes.auth.permissions import NESTED, ROOT, ROUTES, markdown
from nexes.errors import Code
from nexes.execution.executor import FastExecutor
from nexes.execution.permissions import FIELD_GUARDS, root_fields
from nexes.execution.pipeline import DEFAULT_HOOKS, Pipeline
from nexes.execution.schema import make_schema
from nexes.resolvers.context import Context
from nexes.settings import Settings
from tests.conftest import client_for, gql

ROOT_DIR = Path(__file__).resolve().parent.parent
CALLERS: list[tuple[str, ...]] = [(), *((r.value,) for r in Role)]
EXECUTORS = ("compiled", "stock")

# Each root field's gate: its arguments as variables, the field under @include(if: $run).
GATES: dict[str, str] = {
    "Query.search": "query($run: Boolean!, $q: String!) { search(query: $q) @include(if: $run) { found } }",
    "Query.importJob": "query($run: Boolean!, $id: ID!) { importJob(id: $id) @include(if: $run) { id } }",
    "Query.importJobs": "query($run: Boolean!) { importJobs @include(if: $run) { edges { node { id } } } }",
    "Query.auditEvents": "query($run: Boolean!) { auditEvents @include(if: $run) { edges { node { action } } } }",
    "Query.reports": "query($run: Boolean!) { reports @include(if: $run) { aging { bucket } } }",
    "Query.node": "query($run: Boolean!, $id: ID!) { node(id: $id) @include(if: $run) { id } }",
    "Query.nodes": "query($run: Boolean!, $ids: [ID!]!) { nodes(ids: $ids) @include(if: $run) { id } }",
    "Query.serviceOrder": "query($run: Boolean!, $s: String!) "
    "{ serviceOrder(sodNumber: $s) @include(if: $run) { id } }",
    "Query.serviceOrders": "query($run: Boolean!) { serviceOrders @include(if: $run) { edges { node { id } } } }",
    "Query.customers": "query($run: Boolean!) { customers @include(if: $run) { edges { node { id } } } }",
    "Query.stockItems": "query($run: Boolean!) { stockItems @include(if: $run) { edges { node { id } } } }",
    "Query.dashboard": "query($run: Boolean!) { dashboard @include(if: $run) { totalCount } }",
    "Mutation.createServiceOrder": "mutation($run: Boolean!, $i: CreateServiceOrderInput!) "
    "{ createServiceOrder(input: $i) @include(if: $run) { errors { code } } }",
    "Mutation.updateServiceOrder": "mutation($run: Boolean!, $s: String!, $i: UpdateServiceOrderInput!) "
    "{ updateServiceOrder(sodNumber: $s, input: $i) @include(if: $run) { errors { code } } }",
    "Mutation.cancelServiceOrder": "mutation($run: Boolean!, $s: String!) "
    "{ cancelServiceOrder(sodNumber: $s) @include(if: $run) { errors { code } } }",
    "Mutation.createCustomer": "mutation($run: Boolean!, $i: CreateCustomerInput!) "
    "{ createCustomer(input: $i) @include(if: $run) { errors { code } } }",
    "Mutation.createStockItem": "mutation($run: Boolean!, $i: CreateStockItemInput!) "
    "{ createStockItem(input: $i) @include(if: $run) { errors { code } } }",
    "Mutation.receiveStock": "mutation($run: Boolean!, $s: String!, $n: Int!, $r: String!) "
    "{ receiveStock(sku: $s, quantity: $n, reference: $r) @include(if: $run) { errors { code } } }",
    "Mutation.startImport": "mutation($run: Boolean!, $f: Upload!) "
    "{ startImport(file: $f) @include(if: $run) { errors { code } } }",
    "Mutation.cancelImport": "mutation($run: Boolean!, $id: ID!) "
    "{ cancelImport(id: $id) @include(if: $run) { errors { code } } }",
    "Mutation.reconcileDashboard": "mutation($run: Boolean!) { reconcileDashboard @include(if: $run) { queued } }",
    "Mutation.reindexSearch": "mutation($run: Boolean!) { reindexSearch @include(if: $run) { queued } }",
}

# The reads, run in full (the import and audit reads are tried by their own tests).
READS: dict[str, str] = {
    "Query.search": '{ search(query: "SOD", first: 2) { found edges { node { sodNumber } } } }',
    "Query.reports": "{ reports { aging { bucket currency orderCount } } }",
    "Query.serviceOrder": '{ serviceOrder(sodNumber: "NO-SUCH-SOD") { id } }',
    "Query.serviceOrders": "{ serviceOrders(first: 2) { edges { node { sodNumber customer { name } } } } }",
    "Query.customers": "{ customers(first: 2) { edges { node { code } } } }",
    "Query.stockItems": "{ stockItems(first: 2) { edges { node { sku } } } }",
    "Query.dashboard": "{ dashboard { totalCount } }",
    "Query.nodes": "{ nodes(ids: []) { id } }",
    "Query.importJobs": "{ importJobs(first: 1) { edges { node { id } } } }",
}


def permitted(coordinate: str, caller: tuple[str, ...]) -> bool:
    return not ROOT[coordinate].isdisjoint(caller)


def codes(result: ExecutionResult) -> list[str]:
    return [getattr(e.original_error, "code", "GRAPHQL") for e in result.errors or []]


def test_every_root_field_and_mutation_of_the_schema_has_an_entry_and_a_gate() -> None:
    sdl = build_schema((ROOT_DIR / "schema.graphql").read_text())
    in_schema = {
        f"{root.name}.{name}"
        for root in (sdl.query_type, sdl.mutation_type)
        if root is not None
        for name in root.fields
    }
    assert set(ROOT) == in_schema, "every root field needs a row in nexes.auth.permissions.ROOT (and no stale one)"
    assert set(GATES) == in_schema


def test_the_nested_rules_name_real_fields_and_have_guards() -> None:
    sdl = build_schema((ROOT_DIR / "schema.graphql").read_text())
    for coordinate in NESTED:
        type_name, field = coordinate.split(".")
        assert field in sdl.type_map[type_name].fields  # type: ignore[union-attr]
    assert {c for c in NESTED if any(g.covers(c) for g in FIELD_GUARDS)} == set(NESTED)
    assert set(FIELD_GUARDS) <= set(DEFAULT_HOOKS.field_guards)


def test_the_readme_shows_the_table_generated_from_the_code() -> None:
    assert markdown() in (ROOT_DIR / "README.md").read_text(), "paste nexes.auth.permissions.markdown() into README"


@pytest.fixture(scope="module")
async def app_state(seeded: Settings) -> Any:
    async with client_for(seeded) as client:
        yield client.app.state  # type: ignore[attr-defined]


def pipeline_of(executor: str, state: Any) -> Pipeline:
    return state.pipeline if executor == "compiled" else Pipeline(make_schema(None))


def context_for(state: Any, caller: tuple[str, ...]) -> Context:
    viewer = Viewer(subject="matrix", roles=frozenset(caller))
    router = state.analyst_router if viewer.analyst_only else state.router
    return Context(request_id="matrix", settings=state.settings, router=router, cursors=state.cursors, viewer=viewer)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("caller", CALLERS, ids=lambda c: "+".join(c) or "no-role")
async def test_each_role_against_every_root_field_and_mutation(
    app_state: Any, executor: str, caller: tuple[str, ...]
) -> None:
    pipeline = pipeline_of(executor, app_state)
    assert issubclass(pipeline._executor, FastExecutor) == (executor == "compiled")
    outcome = {}
    for coordinate, document in GATES.items():
        result = await pipeline.run(document, {}, None, context_for(app_state, caller), queries_only=False)
        assert result.data is None
        outcome[coordinate] = codes(result)
    for coordinate, got in outcome.items():
        if permitted(coordinate, caller):
            # Past the permission check: execution starts and stops at the missing variables.
            assert Code.FORBIDDEN not in got, (coordinate, got)
            assert got and set(got) == {"GRAPHQL"}, (coordinate, got)
        else:
            assert got == [Code.FORBIDDEN], (coordinate, got)


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("caller", CALLERS[1:], ids="+".join)
async def test_every_read_a_role_may_use_answers_on_both_executors(
    app_state: Any, executor: str, caller: tuple[str, ...]
) -> None:
    pipeline = pipeline_of(executor, app_state)
    for coordinate, document in READS.items():
        if not permitted(coordinate, caller):
            continue
        result = await pipeline.run(document, None, None, context_for(app_state, caller), queries_only=True)
        assert result.errors is None, (coordinate, caller, result.errors)
        assert result.data is not None


async def test_over_http_a_refused_operation_is_403_without_data_naming_field_and_roles(seeded: Settings) -> None:
    document = "{ serviceOrders(first: 1) { edges { node { id } } } } "
    async with client_for(seeded, roles=("viewer",), subject="v") as client:
        allowed = await gql(client, document)
        body = await gql(client, 'mutation { cancelServiceOrder(sodNumber: "X") { errors { code } } }')
        mixed = await gql(client, "{ dashboard { totalCount } reports { aging { bucket } } }")
    assert allowed["_response"].status_code == 200 and allowed["data"]["serviceOrders"]["edges"]
    for refused, field in ((body, "cancelServiceOrder"), (mixed, "reports")):
        assert refused["_response"].status_code == 403
        assert "data" not in refused
        (error,) = refused["errors"]
        assert error["extensions"]["code"] == "FORBIDDEN" and error["extensions"]["field"] == field
        assert f"`{field}` needs one of" in error["message"] and "the token has viewer" in error["message"]


async def test_fragments_and_aliases_do_not_bypass_the_check(seeded: Settings) -> None:
    sneaky = [
        "query { ...F } fragment F on Query { r: reports { aging { bucket } } }",
        "query { ... on Query { ... on Query { reports { aging { bucket } } } } }",
        "query { a: dashboard { totalCount } b: reports { aging { bucket } } }",
    ]
    async with client_for(seeded, roles=("viewer",)) as client:
        for document in sneaky:
            body = await gql(client, document)
            assert body["_response"].status_code == 403, document
            assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_introspection_in_production_is_for_analysts_and_admins(seeded: Settings) -> None:
    import dataclasses

    assert not seeded.development  # the tests' settings: NEXES_ENV's default, production
    introspect = "{ __typename __schema { queryType { name } } }"
    async with client_for(seeded, roles=("viewer",)) as client:
        refused = await gql(client, introspect)
        typename = await gql(client, "{ __typename }")
    assert refused["_response"].status_code == 403 and "data" not in refused
    assert refused["errors"][0]["extensions"] == {**refused["errors"][0]["extensions"], "code": "FORBIDDEN"}
    assert "`__schema` needs one of analyst, admin" in refused["errors"][0]["message"]
    assert typename["data"] == {"__typename": "Query"}
    for role in ("analyst", "admin"):
        async with client_for(seeded, roles=(role,)) as client:
            body = await gql(client, introspect)
        assert body["_response"].status_code == 200 and body["data"]["__schema"]["queryType"]["name"] == "Query"
    async with client_for(dataclasses.replace(seeded, env="development"), roles=("viewer",)) as client:
        body = await gql(client, introspect)
    assert body["_response"].status_code == 200 and body["data"]["__schema"]["queryType"]["name"] == "Query"


def test_root_fields_are_found_through_fragments_once_each() -> None:
    from graphql import parse

    document = parse("query { a: x ...F ... on Query { y } } fragment F on Query { x z ...F }")
    operation = document.definitions[0]
    assert root_fields(document, operation) == ["x", "z", "y"]  # type: ignore[arg-type]


async def test_an_analysts_reads_go_through_the_analyst_role(seeded: Settings) -> None:
    from prometheus_client import REGISTRY

    def analyst_routes() -> float:
        value = REGISTRY.get_sample_value("nexes_db_route_total", {"target": "replica", "reason": "analyst"})
        return value or 0.0

    before = analyst_routes()
    async with client_for(seeded, roles=("analyst",)) as client:
        body = await gql(client, "{ serviceOrders(first: 3) { edges { node { sodNumber customer { name } } } } }")
        refused = await gql(client, 'mutation { cancelServiceOrder(sodNumber: "X") { errors { code } } }')
    assert body["_response"].status_code == 200 and len(body["data"]["serviceOrders"]["edges"]) == 3
    assert analyst_routes() >= before + 1  # the page (its customers joined) on the analyst pools
    assert refused["_response"].status_code == 403


@pytest.mark.parametrize(
    ("method", "path", "allowed_roles"),
    [(m, p, roles) for (m, p), roles in ROUTES.items()],
)
async def test_each_route_with_roles_refuses_the_others(
    seeded: Settings, method: str, path: str, allowed_roles: frozenset[Role]
) -> None:
    for role in Role:
        async with client_for(seeded, roles=(role.value,)) as client:
            response = await client.request(method, path, headers={"X-Nexes-CSRF": "1"}, content=b"")
        if role in allowed_roles:
            assert response.status_code != 403, (role, path, response.text)
        else:
            assert response.status_code == 403, (role, path)
            assert response.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"


def test_the_nested_rule_masks_an_import_job_of_someone_else() -> None:
    from types import SimpleNamespace

    from nexes.errors import NexesError

    (guard,) = [g for g in FIELD_GUARDS if g.covers("ImportJob.errors")]
    job = SimpleNamespace(created_by="alice")

    def context(subject: str, *roles: str) -> Context:
        viewer = Viewer(subject=subject, roles=frozenset(roles))
        return Context(request_id="r", settings=None, router=None, cursors=None, viewer=viewer)  # type: ignore[arg-type]

    guard.check(context("alice", "operator"), "ImportJob.errors", job)
    guard.check(context("root", "admin"), "ImportJob.errors", job)
    with pytest.raises(NexesError) as caught:
        guard.check(context("bob", "operator"), "ImportJob.errors", job)
    assert caught.value.code == Code.FORBIDDEN
    with pytest.raises(NexesError):
        guard.check(context("bob", "operator"), "ImportJob.errors", SimpleNamespace(created_by=None))

"""Cached queries run without graphql-core's per-request executor.

For each request graphql-core builds an executor (operation lookup, variable coercion, an
incremental executor with its maps and error collector), collects the root fields, and
wraps each root resolver's awaitable in its completion machinery; Strawberry's resolver
then converts the arguments and calls the resolver. For a query whose root fields are
plain resolvers and whose selections compile (nexes.execution.compiled), everything but
the variables, the arguments and the resolver call is the same on every request. Under
load that per-request part was about 45 us of a 300 us dashboard read in process (issue 21).

A `DirectPlan` is made once per cached document and operation, with graphql-core's own
executor (its root field collection, the compiled completers the fast executor would
use). A request then:
- coerces its variables with graphql-core's `get_variable_values`;
- for each root field: its arguments with graphql-core's `get_argument_values`, a real
  `GraphQLResolveInfo`, and the field's own resolver (Strawberry's, which converts the
  arguments and runs permissions-free resolvers the same way), awaited under the request's
  deadline (`DeadlineSignal.bound`, as the fast executor's `with_abort_signal`);
- completes each value with the compiled completer: for an interface or a union (node), the
  completer of the type its `resolve_type` names; for a selection that fills fields by batch
  (compiled.Slot: customers with their orders), with an executor built for the request,
  whose batches the fast executor runs (`FastExecutor._run`).

What it does not take (the stock path, nexes.execution.executor, runs them): mutations and
subscriptions; any directive, root fragment or deferred selection; a root field without its
own resolver, or with permissions, extensions or a field guard; a selection the completer
cannot compile (a resolver below the root, such as totalCount; a list of an abstract type).
At run time: variables that do not coerce (the stock path reports them), a value the
completer refuses (a null in a non-null place, a wrong type, a type it did not compile) and
a batch that fails: the whole operation then runs again the stock way, which reports exactly
what went wrong where. A query's resolvers only read, so running one twice is safe; it
costs the read again, on an error's path.

A resolver's error is reported as graphql-core reports it: located at the field with its
path; a nullable field is null, a non-null one nulls the whole data.

Who: every caller, after the same operation guards, budget and rate limit (nexes.execution
.pipeline): the plan holds no caller's state. Cost: one plan per cached document (bounded:
PLAN_LIMIT, cleared when full). Reveals: exactly what the stock path's answer holds (tests
compare the two on the real API, errors included).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    GraphQLError,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfo,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    is_abstract_type,
    located_error,
)
from graphql.execution.collect_fields import collect_fields
from graphql.execution.values import get_argument_values, get_variable_values
from graphql.pyutils import Path
from graphql.pyutils.gather_with_cancel import gather_with_cancel
from graphql.type.definition import GraphQLNonNull, GraphQLResolveInfoHelpers
from strawberry.execution.is_awaitable import optimized_is_awaitable

from nexes.execution.compiled import Completer, no_directives
from nexes.execution.deadline import DeadlineSignal
from nexes.execution.executor import FastExecutor

PLAN_LIMIT = 2_000
MAX_COERCION_ERRORS = 50  # graphql-core's default; more variables' errors go the stock way anyway
_TYPENAME = "__typename"


class Fallback(Exception):
    """The completer refused a value: the operation runs again the stock way."""


def _gather(awaitables: Sequence[Awaitable[Any]]) -> Awaitable[list[Any]]:
    return gather_with_cancel(*awaitables)


def _no_tracking(_: Sequence[Any]) -> None:
    raise RuntimeError("info.async_helpers.track is not available on the direct path")


# Nexes' resolvers track no work of their own; graphql-core uses these for abstract types,
# which the direct path never completes (the compiled completers refuse them).
_HELPERS = GraphQLResolveInfoHelpers(gather=_gather, track=_no_tracking)
# A bool-returning check, as Strawberry gives graphql-core (nexes.execution.deadline).
_IS_AWAITABLE: Any = optimized_is_awaitable


@dataclass(frozen=True, slots=True)
class RootField:
    key: str  # the response name
    nodes: list[FieldNode]
    field_def: Any  # GraphQLField
    resolve: Callable[..., Any] | None  # None: __typename
    has_args: bool
    completer: Completer | None  # None: __typename, or an abstract type (by_type)
    path: Path
    non_null: bool
    # An interface or union: the completer of each possible type that compiles, by name.
    by_type: dict[str, Completer] | None = None
    batched: bool = False  # the completer leaves fields to batches (compiled.Slot)


def _refuse() -> Any:
    raise Fallback


@dataclass(frozen=True, slots=True)
class DirectPlan:
    schema: GraphQLSchema
    executor: type[FastExecutor]
    document: DocumentNode  # held: the plan is found by the document's id
    operation: OperationDefinitionNode
    operation_name: str | None
    root_type: GraphQLObjectType
    fragments: dict[str, Any]  # name -> FragmentDefinitionNode, as GraphQLResolveInfo has them
    fields: tuple[RootField, ...]

    async def run(
        self, context: Any, variables: dict[str, Any] | None, signal: DeadlineSignal
    ) -> ExecutionResult | None:
        """The operation's result, or None when the stock path must run it (see the module doc)."""
        coerced = get_variable_values(
            self.schema, self.operation.variable_definitions or (), variables or {}, MAX_COERCION_ERRORS
        )
        if isinstance(coerced, list):
            return None
        data: dict[str, Any] = {}
        errors: list[GraphQLError] = []
        resolving = [f for f in self.fields if f.resolve is not None]
        try:
            if len(resolving) == 1:
                answers = [await self._field(resolving[0], context, variables, coerced, signal)]
            else:
                answers = await gather_with_cancel(
                    *(self._field(f, context, variables, coerced, signal) for f in resolving)
                )
        except Fallback:
            return None
        by_key = dict(zip((f.key for f in resolving), answers, strict=True))
        for field in self.fields:
            if field.resolve is None:
                data[field.key] = self.root_type.name
                continue
            value, error = by_key[field.key]
            if error is not None:
                errors.append(error)
                if field.non_null:
                    return ExecutionResult(data=None, errors=errors)
            data[field.key] = value
        return ExecutionResult(data=data, errors=errors or None)

    async def _field(
        self,
        field: RootField,
        context: Any,
        variables: dict[str, Any] | None,
        coerced: Any,
        signal: DeadlineSignal,
    ) -> tuple[Any, GraphQLError | None]:
        """(completed value, None), or (None, the located error) when its resolver failed."""
        info = GraphQLResolveInfo(
            field.nodes[0].name.value,
            field.nodes,
            field.field_def.type,
            self.root_type,
            field.path,
            self.schema,
            self.fragments,
            None,
            self.operation,
            coerced,
            context,
            _IS_AWAITABLE,
            signal,
            _HELPERS,
        )
        assert field.resolve is not None
        built = None
        if field.batched:
            # Batches need an executor (its _fill and _batch): built for this request only,
            # before the resolver, which may look ahead at them (FastExecutor.look_ahead).
            built = self.executor.build(
                self.schema,
                self.document,
                None,
                context,
                variables,
                self.operation_name,
                is_awaitable=_IS_AWAITABLE,
                abort_signal=signal,
            )
            if isinstance(built, list):
                raise Fallback
            cast(FastExecutor, built).look_ahead(context, field.key, field.completer)
        try:
            args = get_argument_values(field.field_def, field.nodes[0], coerced) if field.has_args else {}
            value = field.resolve(None, info, **args)
            if optimized_is_awaitable(value):
                value = await signal.bound(value)
        except Exception as raw_error:
            return None, located_error(raw_error, field.nodes, field.path.as_list())
        try:
            if field.by_type is not None:
                return self._abstract(field, value, info), None
            assert field.completer is not None
            if built is None:
                return field.completer(value), None
            completed = cast(FastExecutor, built)._run(field.completer, value, _refuse)
            return (await completed if _IS_AWAITABLE(completed) else completed), None
        except Exception:
            raise Fallback from None

    def _abstract(self, field: RootField, value: Any, info: GraphQLResolveInfo[Any]) -> Any:
        """An interface's or union's value, completed for its runtime type (its resolve_type,
        as graphql-core asks it); anything unusual raises for the stock path."""
        assert field.by_type is not None
        if value is None:
            if field.non_null:
                raise Fallback
            return None
        abstract = _named(field.field_def.type)
        name = abstract.resolve_type(value, info, abstract)
        completer = field.by_type.get(name) if isinstance(name, str) else None
        if completer is None:
            if _IS_AWAITABLE(name):
                name.close()  # never awaited: the stock path resolves it
            raise Fallback
        return completer(value)


class DirectPlans:
    """Plans by document and operation name; None where the stock path must run."""

    def __init__(self, executor: type[FastExecutor], limit: int = PLAN_LIMIT) -> None:
        self.executor = executor
        self.limit = limit
        self._plans: dict[tuple[int, str | None], tuple[DocumentNode, DirectPlan | None]] = {}

    def get(
        self,
        schema: GraphQLSchema,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        operation_name: str | None,
        context: Any,
        variables: dict[str, Any] | None,
    ) -> DirectPlan | None:
        key = (id(document), operation_name)
        entry = self._plans.get(key)
        if entry is not None and entry[0] is document:
            return entry[1]
        if operation.operation is not OperationType.QUERY or operation.directives:
            plan = None
        else:
            built = self.executor.build(
                schema, document, None, context, variables, operation_name, is_awaitable=_IS_AWAITABLE
            )
            if isinstance(built, list):
                return None  # this request's variables: not the document's fault; the stock path reports them
            plan = _plan(cast(FastExecutor, built), schema, document, operation, operation_name)
        if len(self._plans) >= self.limit:
            self._plans.clear()
        self._plans[key] = (document, plan)
        return plan

    def clear(self) -> None:
        self._plans.clear()


def _plan(
    executor: FastExecutor,
    schema: GraphQLSchema,
    document: DocumentNode,
    operation: OperationDefinitionNode,
    operation_name: str | None,
) -> DirectPlan | None:
    if any(not isinstance(s, FieldNode) or s.directives for s in operation.selection_set.selections):
        return None
    root_type = schema.query_type
    assert root_type is not None
    collected = collect_fields(schema, executor.fragments, executor.variable_values, root_type, operation)
    if collected.new_defer_usages:
        return None
    fields = []
    for key, details in collected.grouped_field_set.items():
        nodes = [d.node for d in details]
        if any(d.defer_usage is not None or d.fragment_variable_values is not None for d in details):
            return None
        name = nodes[0].name.value
        path = Path(None, key, root_type.name)
        if name == _TYPENAME:
            fields.append(RootField(key, nodes, None, None, False, None, path, True))
            continue
        field = _root_field(executor, schema, root_type, key, details, nodes, path)
        if field is None:
            return None
        fields.append(field)
    if not fields:
        return None
    return DirectPlan(
        schema,
        type(executor),
        document,
        operation,
        operation_name,
        root_type,
        executor.fragment_definitions,
        tuple(fields),
    )


def _root_field(
    executor: FastExecutor,
    schema: GraphQLSchema,
    root_type: GraphQLObjectType,
    key: str,
    details: Any,
    nodes: list[FieldNode],
    path: Path,
) -> RootField | None:
    name = nodes[0].name.value
    field_def = root_type.fields.get(name)
    if field_def is None or field_def.resolve is None or getattr(field_def.resolve, "_is_default", True):
        return None
    definition = field_def.extensions.get("strawberry-definition")
    if definition is None or definition.permission_classes or definition.extensions:
        return None
    if executor.is_guarded(root_type.name, name) or not no_directives(nodes, executor.fragments):
        return None
    return_type: GraphQLOutputType = field_def.type
    has_args = bool(field_def.args) or any(node.arguments for node in nodes)
    non_null = isinstance(return_type, GraphQLNonNull)
    named = _named(return_type)
    if is_abstract_type(named):
        by_type = _by_type(executor, schema, named, details)
        completer = None
    else:
        by_type = None
        completer = executor._completer(return_type, details)
    if not by_type and completer is None:
        return None
    batched = getattr(completer, "namespace", None) is not None
    return RootField(key, nodes, field_def, field_def.resolve, has_args, completer, path, non_null, by_type, batched)


def _by_type(executor: FastExecutor, schema: GraphQLSchema, abstract: Any, details: Any) -> dict[str, Completer]:
    """The completers of an abstract type's possible types for this selection, where they
    compile without batches."""
    by_type = {}
    for possible in schema.get_possible_types(abstract):
        completer = executor._completer(possible, details)
        if completer is not None and getattr(completer, "namespace", None) is None:
            by_type[possible.name] = completer
    return by_type


def _named(type_: Any) -> Any:
    return type_.of_type if isinstance(type_, GraphQLNonNull) else type_

"""The pipeline's hook points, where cross-cutting concerns (identity, permissions, cost
limits, tracing) plug in without touching the executors.

A request meets them in this order:

1. document rules: validation rules, run with graphql-core's own on the parsed document
   (cached with it by query text, so a rule must judge the document alone);
2. operation guards: called with the document, the operation and the context before it
   executes; then the budget (nexes.execution.cost): the operation's cost, refused over the
   caller's limit, charged to the caller's rate limit; a dry run stops here;
3. field guards: called with the context and the parent object before each field they
   cover resolves, on the fast path and the stock path alike (the fast path hands covered
   fields to the stock path, decided once per selection set);
4. result masks: post-process the result for the context.

A guard refuses by raising NexesError: at the operation, the request answers that error
with its code and no data; at a field, the field is null with the error (and a non-null
field nulls its parent), as when a resolver raises. Empty hook points cost nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from graphql import ASTValidationRule, DocumentNode, ExecutionResult, GraphQLSchema, OperationDefinitionNode

from nexes.resolvers.context import Context

DocumentRule = type[ASTValidationRule]
OperationGuard = Callable[[DocumentNode, OperationDefinitionNode, Context], None]
# (schema, document, operation, variables, context, dry_run): prices the operation and
# charges the caller's budget before it runs; refuses by raising NexesError.
BudgetCheck = Callable[
    [GraphQLSchema, DocumentNode, OperationDefinitionNode, "dict[str, Any] | None", Context, bool], Awaitable[None]
]
# (context, field coordinate such as "ServiceOrder.totalAmount", the parent object)
FieldCheck = Callable[[Context, str, Any], None]
ResultMask = Callable[[ExecutionResult, Context], ExecutionResult]


@dataclass(frozen=True, slots=True)
class FieldGuard:
    """Refuses fields for a context. `covers` is asked once per field coordinate
    ("Type.field"), when the executor plans a selection; `check` runs before every
    covered field resolves."""

    covers: Callable[[str], bool]
    check: FieldCheck

    @classmethod
    def on(cls, coordinates: Iterable[str], check: FieldCheck) -> FieldGuard:
        """A guard on these field coordinates, such as {"ServiceOrder.totalAmount"}."""
        covered = frozenset(coordinates)
        return cls(covered.__contains__, check)


@dataclass(frozen=True, slots=True)
class Hooks:
    """What a pipeline runs besides parsing, graphql-core's validation and execution."""

    document_rules: tuple[DocumentRule, ...] = ()
    operation_guards: tuple[OperationGuard, ...] = ()
    budget: BudgetCheck | None = None
    field_guards: tuple[FieldGuard, ...] = ()
    result_masks: tuple[ResultMask, ...] = ()

"""Executing a GraphQL request: the one path every request takes.

parse (cached, token limit) -> validate (cached, graphql-core's rules and the document
rules) -> operation guards -> execute (the executor the schema names, with the field
guards) -> result masks. The hook points are `hooks.Hooks`; the limits below are their
default, and the only definition of the limits.

This is what `strawberry.Schema.execute` does for this schema, without its per-request
extension machinery (a runner, hooks and extension objects per request), which costs
more than parsing and validating from a cache. The schema itself, its types and
resolvers stay Strawberry's; the equivalence tests run both executors.
"""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    parse,
    specified_rules,
    validate,
)
from strawberry.extensions.max_aliases import create_validator as aliases_validator
from strawberry.extensions.query_depth_limiter import create_validator as depth_validator

from nexes.errors import NexesError
from nexes.execution.cost import charge
from nexes.execution.deadline import execute_within
from nexes.execution.direct import DirectPlans
from nexes.execution.executor import FastExecutor, HookedExecutor
from nexes.execution.hooks import Hooks
from nexes.execution.permissions import FIELD_GUARDS, require_roles
from nexes.execution.text_cache import TextCache
from nexes.resolvers.context import Context

MAX_DEPTH = 10
MAX_ALIASES = 30
MAX_TOKENS = 5000
CACHE_SIZE = 1000  # documents, by query text: the parse cache and the validation cache each
CACHE_BYTES = 4_000_000  # their texts, summed (NEXES_DOCUMENT_CACHE_BYTES)

# Made once: a validation rule is a class, and new classes per request would be new rules.
LIMIT_RULES = (depth_validator(MAX_DEPTH, None, None), aliases_validator(MAX_ALIASES))
DEFAULT_HOOKS = Hooks(
    document_rules=LIMIT_RULES, operation_guards=(require_roles,), budget=charge, field_guards=FIELD_GUARDS
)


class OperationNotAllowed(Exception):
    """A mutation sent where only queries run (GET)."""


class UnknownOperation(Exception):
    """No operation by that name, or several and no name."""


def _parse(query: str) -> DocumentNode | GraphQLError:
    """The parsed document, or its syntax error."""
    try:
        return parse(query, max_tokens=MAX_TOKENS)
    except GraphQLError as error:
        return error


class Pipeline:
    """One schema with its hooks; `run` executes a request. Its caches are bounded."""

    def __init__(self, schema: strawberry.Schema, hooks: Hooks = DEFAULT_HOOKS, cache_bytes: int = CACHE_BYTES) -> None:
        self.hooks = hooks
        self._schema = schema._schema
        # The executor the schema names; the stock path (make_schema(None)) runs the field guards too.
        named: type = schema.execution_context_class
        executor: type[HookedExecutor] = named if issubclass(named, HookedExecutor) else HookedExecutor
        self._executor = executor.with_guards(hooks.field_guards)
        # Cached queries without graphql-core's per-request executor (nexes.execution.direct),
        # with the fast executor only: the stock one is the tests' reference.
        self._direct = DirectPlans(self._executor) if issubclass(self._executor, FastExecutor) else None
        self._rules = (*specified_rules, *hooks.document_rules)
        self._parsed = TextCache(_parse, CACHE_SIZE, cache_bytes)
        self._validation_errors = TextCache(self._validate, CACHE_SIZE, cache_bytes)

    def _validate(self, query: str) -> tuple[GraphQLError, ...]:
        document = self._parsed(query)
        assert isinstance(document, DocumentNode)
        return tuple(validate(self._schema, document, self._rules))

    async def run(
        self,
        query: str,
        variables: dict[str, Any] | None,
        operation_name: str | None,
        context: Context,
        *,
        queries_only: bool,
        dry_run: bool = False,
    ) -> ExecutionResult:
        """Execute one request; raises OperationNotAllowed or UnknownOperation before executing.
        A dry run stops before executing: `context.cost` holds the price."""
        document = self._parsed(query)
        if isinstance(document, GraphQLError):
            return ExecutionResult(data=None, errors=[document])
        operation = context.operation = _operation(document, operation_name)
        if queries_only and operation.operation is not OperationType.QUERY:
            raise OperationNotAllowed
        errors = self._validation_errors(query)
        if errors:
            return ExecutionResult(data=None, errors=list(errors))
        hooks = self.hooks
        try:
            for guard in hooks.operation_guards:
                guard(document, operation, context)
            if hooks.budget is not None:
                await hooks.budget(self._schema, document, operation, variables, context, dry_run)
        except NexesError as refused:
            return ExecutionResult(data=None, errors=[GraphQLError(refused.message, operation, original_error=refused)])
        if dry_run:
            return ExecutionResult(data=None, errors=None)
        # Aborted at the caller's deadline: TIMEOUT where it did not finish (nexes.execution.deadline).
        plan = None
        if self._direct is not None:
            plan = self._direct.get(self._schema, document, operation, operation_name, context, variables)
        result = await execute_within(
            self._schema,
            document,
            context,
            variables,
            operation_name,
            self._executor,
            None if plan is None else plan.run,
        )
        for mask in hooks.result_masks:
            result = mask(result, context)
        return result


def _operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name is None:
        if len(operations) != 1:
            raise UnknownOperation
        return operations[0]
    for operation in operations:
        if operation.name is not None and operation.name.value == name:
            return operation
    raise UnknownOperation

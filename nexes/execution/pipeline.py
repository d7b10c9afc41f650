"""Executing a GraphQL request: cached parse and validation, then the fast executor.

This is what `strawberry.Schema.execute` does for this schema, without its per-request
extension machinery (a runner, hooks and extension objects per request), which
costs more than parsing and validating from a cache. The schema itself, its types and
resolvers stay Strawberry's; the equivalence tests run both paths.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    GraphQLError,
    OperationDefinitionNode,
    OperationType,
    execute,
    parse,
    specified_rules,
    validate,
)
from strawberry.execution.is_awaitable import optimized_is_awaitable

from nexes.execution.executor import FastExecutor
from nexes.execution.schema import LIMIT_RULES, MAX_TOKENS, schema

CACHE_SIZE = 1000
RULES = (*specified_rules, *LIMIT_RULES)


class OperationNotAllowed(Exception):
    """A mutation sent where only queries run (GET)."""


class UnknownOperation(Exception):
    """No operation by that name, or several and no name."""


@lru_cache(maxsize=CACHE_SIZE)
def _parsed(query: str) -> DocumentNode | GraphQLError:
    """The parsed document, or its syntax error; cached by query text."""
    try:
        return parse(query, max_tokens=MAX_TOKENS)
    except GraphQLError as error:
        return error


@lru_cache(maxsize=CACHE_SIZE)
def _validation_errors(query: str) -> tuple[GraphQLError, ...]:
    document = _parsed(query)
    assert isinstance(document, DocumentNode)
    return tuple(validate(schema._schema, document, RULES))


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


async def run(
    query: str,
    variables: dict[str, Any] | None,
    operation_name: str | None,
    context: Any,
    *,
    queries_only: bool,
) -> ExecutionResult:
    """Execute one request; raises OperationNotAllowed or UnknownOperation before executing."""
    document = _parsed(query)
    if isinstance(document, GraphQLError):
        return ExecutionResult(data=None, errors=[document])
    operation = _operation(document, operation_name)
    if queries_only and operation.operation is not OperationType.QUERY:
        raise OperationNotAllowed
    errors = _validation_errors(query)
    if errors:
        return ExecutionResult(data=None, errors=list(errors))
    result = execute(
        schema._schema,
        document,
        context_value=context,
        variable_values=variables,
        operation_name=operation_name,
        executor_class=FastExecutor,
        is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]  # a bool-returning check, as Strawberry's
    )
    return result if isinstance(result, ExecutionResult) else await result

"""The executable schema: the root types with their scalars and executor.

Requests run through nexes.execution.pipeline, which holds the limits (validation rules,
the token limit) and the parse and validation caches; `NexesSchema.execute`, which only
tests and tools call, runs none of them."""

from __future__ import annotations

from typing import Any

import strawberry
from strawberry.schema.config import StrawberryConfig

from nexes.execution.executor import FastExecutor
from nexes.schema.root import Mutation, Query
from nexes.schema.scalars import SCALAR_MAP
from nexes.schema.types import Customer, ServiceOrder, StockItem


class NexesSchema(strawberry.Schema):
    def process_errors(self, errors: Any, execution_context: Any = None) -> None:
        """Strawberry logs every error with its trace; expected ones are data here, and
        http.errors.format_error logs the unexpected ones with the request id."""


def make_schema(execution_context_class: type | None = FastExecutor) -> NexesSchema:
    """The schema; tests make one with the stock executor (None) to compare the two: a
    Pipeline runs the executor its schema names, with its hooks."""
    return NexesSchema(
        query=Query,
        mutation=Mutation,
        types=[ServiceOrder, Customer, StockItem],
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        execution_context_class=execution_context_class,
    )


schema = make_schema()

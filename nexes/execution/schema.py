"""The executable schema: the root types with their scalars, limits and executor."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import ASTValidationRule
from strawberry.extensions import AddValidationRules, MaxTokensLimiter, ParserCache, ValidationCache
from strawberry.extensions.max_aliases import create_validator as aliases_validator
from strawberry.extensions.query_depth_limiter import create_validator as depth_validator
from strawberry.schema.config import StrawberryConfig

from nexes.execution.executor import FastExecutor
from nexes.schema.root import Mutation, Query
from nexes.schema.scalars import SCALAR_MAP
from nexes.schema.types import Customer, ServiceOrder, StockItem

LIMIT_RULES: list[type[ASTValidationRule]] = [depth_validator(10, None, None), aliases_validator(30)]
MAX_TOKENS = 5000


class NexesSchema(strawberry.Schema):
    def process_errors(self, errors: Any, execution_context: Any = None) -> None:
        """Strawberry logs every error with its trace; expected ones are data here, and
        endpoints.format_error logs the unexpected ones with the request id."""


def make_schema(execution_context_class: type | None = FastExecutor) -> NexesSchema:
    """The schema; tests make one with the stock executor (None) to compare the two."""
    return NexesSchema(
        query=Query,
        mutation=Mutation,
        types=[ServiceOrder, Customer, StockItem],
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        execution_context_class=execution_context_class,
        # Factories: Strawberry makes the extensions per request; the caches are shared by maxsize.
        # The limits are validation rules made once, so the validation cache (keyed by the
        # rule classes) hits; QueryDepthLimiter(...) per request would make new classes and miss.
        extensions=[
            lambda: ParserCache(maxsize=1000),
            lambda: ValidationCache(maxsize=1000),
            lambda: AddValidationRules(LIMIT_RULES),
            lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        ],
    )


schema = make_schema()

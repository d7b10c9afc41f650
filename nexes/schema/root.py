"""The GraphQL schema: queries over orders, customers, stock and the dashboard."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import strawberry
from graphql import ASTValidationRule
from strawberry.extensions import AddValidationRules, MaxTokensLimiter, ParserCache, ValidationCache
from strawberry.extensions.max_aliases import create_validator as aliases_validator
from strawberry.extensions.query_depth_limiter import create_validator as depth_validator
from strawberry.schema.config import StrawberryConfig

from nexes.execution.executor import FastExecutor
from nexes.resolvers import catalog, dashboard, nodes, orders
from nexes.resolvers.pagination import PageArgs
from nexes.schema.connections import (
    CustomerConnection,
    CustomerFilter,
    ServiceOrderConnection,
    ServiceOrderFilter,
    ServiceOrderOrder,
    StockItemConnection,
    StockItemFilter,
)
from nexes.schema.dashboard import Dashboard
from nexes.schema.imports import ImportMutation, ImportQuery
from nexes.schema.mutations import AdminMutation, OrderMutation
from nexes.schema.reports import ReportsQuery
from nexes.schema.scalars import SCALAR_MAP
from nexes.schema.search import SearchMutation, SearchQueries
from nexes.schema.types import Customer, Node, ServiceOrder, StockItem

Info = orders.Info


@strawberry.type
class Query(SearchQueries, ImportQuery, ReportsQuery):
    @strawberry.field(description="Any object by its global id.")
    async def node(self, info: Info, id: strawberry.ID) -> Node | None:
        return await nodes.node(info, id)

    @strawberry.field(description="Objects by global id (at most 100), in the order asked; null where missing.")
    async def nodes(self, info: Info, ids: list[strawberry.ID]) -> list[Node | None]:
        return await nodes.nodes(info, ids)

    @strawberry.field(description="One order by its SOD number, live or archived.")
    async def service_order(self, info: Info, sod_number: str) -> ServiceOrder | None:
        return await orders.service_order(info, sod_number)

    @strawberry.field(description="Orders, keyset-paginated. Default 20 per page, at most 100.")
    async def service_orders(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        filter: ServiceOrderFilter | None = None,
        order_by: ServiceOrderOrder | None = ServiceOrderOrder.CREATED_AT_DESC,
    ) -> ServiceOrderConnection:
        return await orders.service_orders(info, PageArgs(first, after, last, before), filter, order_by)

    @strawberry.field(description="Customers, ordered by name.")
    async def customers(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        filter: CustomerFilter | None = None,
    ) -> CustomerConnection:
        return await catalog.customers(info, PageArgs(first, after, last, before), filter)

    @strawberry.field(description="Stock items, ordered by name.")
    async def stock_items(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        filter: StockItemFilter | None = None,
    ) -> StockItemConnection:
        return await catalog.stock_items(info, PageArgs(first, after, last, before), filter)

    @strawberry.field(description="Per-status counts and amounts over whole UTC days (both ends inclusive).")
    async def dashboard(
        self,
        info: Info,
        from_: Annotated[dt.date | None, strawberry.argument(name="from")] = None,
        to: dt.date | None = None,
    ) -> Dashboard:
        return await dashboard.dashboard(info, from_, to)


@strawberry.type
class Mutation(OrderMutation, ImportMutation, AdminMutation, SearchMutation):
    """Writes, all on the primary."""


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

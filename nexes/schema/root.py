"""The root types: Query and Mutation, each field bound to its resolver."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import strawberry

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
from nexes.schema.search import SearchMutation, SearchQueries
from nexes.schema.types import Node, ServiceOrder

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

"""Relay connections, their filters and orders."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Generic, TypeVar

import strawberry

from nexes.schema.types import Customer, ServiceOrder, Status, StockItem

N = TypeVar("N")
Counter = Callable[[], Awaitable[tuple[int, bool]]]


@strawberry.type
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type
class Edge(Generic[N]):
    cursor: str
    node: N


@strawberry.enum
class ServiceOrderOrder(Enum):
    CREATED_AT_DESC = "CREATED_AT_DESC"
    CREATED_AT_ASC = "CREATED_AT_ASC"
    UPDATED_AT_DESC = "UPDATED_AT_DESC"
    TOTAL_AMOUNT_DESC = "TOTAL_AMOUNT_DESC"


@strawberry.input(description="All given conditions must hold. createdFrom is inclusive, createdTo exclusive.")
class ServiceOrderFilter:
    status: list[Status] | None = None
    customer_id: strawberry.ID | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None
    sod_number_prefix: str | None = None
    include_archived: bool = False


@strawberry.input
class CustomerFilter:
    name_contains: str | None = strawberry.field(default=None, description="case-insensitive substring")
    code: str | None = None


@strawberry.input
class StockItemFilter:
    name_contains: str | None = strawberry.field(default=None, description="case-insensitive substring")
    sku: str | None = None
    negative_only: bool = strawberry.field(default=False, description="only items whose on_hand is below 0")


@strawberry.type
class Counted:
    """totalCount and totalCountExact share one count, computed only when asked for."""

    _counter: strawberry.Private[Counter]
    _count: strawberry.Private[asyncio.Future[tuple[int, bool]] | None] = None

    async def _counted(self) -> tuple[int, bool]:
        if self._count is None:
            self._count = asyncio.ensure_future(self._counter())
        return await self._count

    @strawberry.field(description="Matching rows: exact, or estimated when counting would be slow.")
    async def total_count(self) -> int | None:
        return (await self._counted())[0]

    @strawberry.field(description="Whether totalCount is exact.")
    async def total_count_exact(self) -> bool:
        return (await self._counted())[1]


@strawberry.type
class ServiceOrderConnection(Counted):
    edges: list[Edge[ServiceOrder]]
    page_info: PageInfo


@strawberry.type
class CustomerConnection(Counted):
    edges: list[Edge[Customer]]
    page_info: PageInfo


@strawberry.type
class StockItemConnection(Counted):
    edges: list[Edge[StockItem]]
    page_info: PageInfo

"""The Relay pieces every connection is made of: PageInfo, Edge[N] and the shared count."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import strawberry

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

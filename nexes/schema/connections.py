"""The Relay pieces every connection is made of: PageInfo, Edge[N] and the shared count."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import strawberry

N = TypeVar("N")
Counter = Callable[[], Awaitable[tuple[int, bool]]]

# The Relay arguments and fields, described once for every connection.
FIRST = (
    "Page forward: at most this many items, 0 to 100 (NEXES_MAX_PAGE_SIZE; BAD_USER_INPUT past it); default 20. "
    "Cost: this many nodes per parent."
)
AFTER = "Page forward from this cursor (pageInfo.endCursor of the page before); BAD_CURSOR if it is not one."
LAST = "Page backward: at most this many items, 0 to 100; not with first or after (BAD_USER_INPUT)."
BEFORE = "Page backward from this cursor (pageInfo.startCursor of the page after); BAD_CURSOR if it is not one."
EDGES = "The page's items in order, each with its cursor."
PAGE_INFO = "Where the page is: whether more pages follow or precede, and the cursors to ask for them."


@strawberry.type(description="Where a page is in its connection (Relay's PageInfo).")
class PageInfo:
    has_next_page: bool = strawberry.field(
        description="Paging forward: whether more items follow (ask again with after: endCursor); paging "
        "backward: whether the page was asked before a cursor."
    )
    has_previous_page: bool = strawberry.field(
        description="Paging backward: whether more items precede (ask again with before: startCursor); paging "
        "forward: whether the page was asked after a cursor."
    )
    start_cursor: str | None = strawberry.field(description="Cursor of the first edge; null on an empty page.")
    end_cursor: str | None = strawberry.field(description="Cursor of the last edge; null on an empty page.")


@strawberry.type(description="One item of a connection's page, with its position.")
class Edge(Generic[N]):
    cursor: str = strawberry.field(
        description="Opaque, signed position of this item, bound to the connection's sort order; valid in after or "
        "before, not across orderings (BAD_CURSOR)."
    )
    node: N = strawberry.field(description="The item at this position.")


@strawberry.type
class Counted:
    """totalCount and totalCountExact share one count, computed only when asked for."""

    _counter: strawberry.Private[Counter]
    _count: strawberry.Private[asyncio.Future[tuple[int, bool]] | None] = None

    async def _counted(self) -> tuple[int, bool]:
        if self._count is None:
            self._count = asyncio.ensure_future(self._counter())
        return await self._count

    @strawberry.field(
        description="How many items match the filter (all pages): exact from the daily statistics when the filter "
        "is statuses and whole UTC days, else counted up to NEXES_COUNT_CAP (100,000) rows within "
        "NEXES_COUNT_BUDGET (0.1 s), else estimated. Cost: 10 nodes per connection."
    )
    async def total_count(self) -> int | None:
        return (await self._counted())[0]

    @strawberry.field(description="Whether totalCount is exact (false: an estimate or a capped count).")
    async def total_count_exact(self) -> bool:
        return (await self._counted())[1]

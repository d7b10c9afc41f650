"""Relay pagination arguments, validated once for every connection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from nexes.errors import bad_input
from nexes.schema.connections import Edge, PageInfo

R = TypeVar("R")
N = TypeVar("N")


@dataclass(frozen=True)
class PageArgs:
    """The four Relay arguments, as the client sent them."""

    first: int | None = None
    after: str | None = None
    last: int | None = None
    before: str | None = None


@dataclass(frozen=True)
class PageRequest:
    limit: int
    backward: bool
    cursor: str | None


def page_request(args: PageArgs, *, max_size: int, default: int = 20) -> PageRequest:
    """first/after pages forward, last/before backward; mixing the two is refused."""
    first, after, last, before = args.first, args.after, args.last, args.before
    if first is not None and last is not None:
        raise bad_input("give either first or last, not both", field="first")
    if (first is not None and before is not None) or (last is not None and after is not None):
        raise bad_input("page forward with first/after or backward with last/before", field="after")
    if after is not None and before is not None:
        raise bad_input("give either after or before, not both", field="before")
    backward = last is not None or before is not None
    size = last if backward and last is not None else first if first is not None else default
    name = "last" if backward else "first"
    if size < 0 or size > max_size:
        raise bad_input(f"{name} must be between 0 and {max_size}, not {size}", field=name)
    return PageRequest(limit=size, backward=backward, cursor=before if backward else after)


def build_page(
    rows: Sequence[R],
    request: PageRequest,
    *,
    node: Callable[[R], N],
    cursor: Callable[[R], str],
    edge_cursors: bool = True,
    page_cursors: bool = True,
    edges_of: Callable[[Sequence[R]], Any] | None = None,
) -> tuple[Any, PageInfo]:
    """Edges and PageInfo from `limit + 1` fetched rows: the extra row only says there is more.

    Signing a cursor costs (an HMAC): when the query selects no `edges.cursor`, none is
    made per row (`edge_cursors=False`), and when it selects neither of pageInfo's cursors,
    not even the page's first and last (`page_cursors=False`: 20 customers' pages of orders
    signed 40 cursors no one asked for). `edges_of` makes the edges of the page's rows
    instead of an Edge per row (nexes.schema.rendered.RenderedEdges).
    """
    more = len(rows) > request.limit
    if more:
        rows = rows[1:] if request.backward else rows[: request.limit]
    edges = (
        edges_of(rows)
        if edges_of is not None
        else [Edge(cursor=cursor(r) if edge_cursors else "", node=node(r)) for r in rows]
    )
    info = page_info(
        request,
        more=more,
        start=cursor(rows[0]) if rows and page_cursors else None,
        end=cursor(rows[-1]) if rows and page_cursors else None,
    )
    return edges, info


def page_info(request: PageRequest, *, more: bool, start: str | None, end: str | None) -> PageInfo:
    """A page's PageInfo: `more`, whether rows lie past it in the direction it was read."""
    return PageInfo(
        has_next_page=more if not request.backward else request.cursor is not None,
        has_previous_page=more if request.backward else request.cursor is not None,
        start_cursor=start,
        end_cursor=end,
    )

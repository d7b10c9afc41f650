"""Per-request DataLoaders for what the connection prefetches cannot reach: node, nodes and
Customer.serviceOrders under a list of customers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, TypeVar

from psycopg import AsyncConnection
from strawberry.dataloader import DataLoader

from nexes.db.connect.router import Router

K = TypeVar("K")
V = TypeVar("V")
S = TypeVar("S", bound=Hashable)
# One batch: the values of `keys`, in their order, read in one statement per table. The
# shape (None, or a page's spec) is part of the loader's identity.
Batch = Callable[[AsyncConnection[Any], S, Sequence[K]], Awaitable[list[V]]]


class Loaders:
    """The request's loaders, one per batch function and shape, each made on first use.

    The resolvers own their batch functions (`orders.orders_by_id`, ...), so this module
    imports none of them and the context can hold it.
    """

    def __init__(self, router: Router) -> None:
        self.router = router
        self._made: dict[tuple[Callable[..., Any], Hashable], DataLoader[Any, Any]] = {}

    def of(self, batch: Batch[S, K, V], shape: S) -> DataLoader[K, V]:
        loader = self._made.get((batch, shape))
        if loader is None:

            async def load(keys: Sequence[K]) -> list[V]:
                # A batch's answer is only read (the DataLoader hands its items out): shared
                # (Router.read) by the batch, its shape and its keys.
                return await self.router.read(lambda conn: batch(conn, shape, keys), shared=(batch, shape, tuple(keys)))

            loader = self._made[batch, shape] = DataLoader(load)
        return loader

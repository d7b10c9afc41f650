"""The request context handed to every resolver: request id, viewer, router, loaders; and
`Info`, the type of every resolver's `info`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import strawberry

from nexes.auth.identity import ANONYMOUS, Viewer
from nexes.db.connect.router import Router
from nexes.db.keyset import CursorCodec
from nexes.resolvers.loaders import Loaders
from nexes.settings import Settings


@dataclass
class Context:
    request_id: str
    settings: Settings
    router: Router
    cursors: CursorCodec
    viewer: Viewer = ANONYMOUS
    # The rate limiter (nexes.auth.ratelimit.RateLimiter; None: no rate limit) and the
    # operation's price once the pipeline computed it (nexes.execution.cost.CostReport).
    limiter: Any = None
    cost: Any = None
    # The operation being run (graphql's OperationDefinitionNode), once the pipeline chose it.
    operation: Any = None
    # What each root field's completion will batch (nexes.execution.executor.Ahead), by the
    # field's response name, set by the executor before its resolver runs (`batch_ahead`).
    ahead: dict[str, Any] | None = None
    # Data a resolver read ahead for a batch below it, by what was read (a page spec and the
    # customers' ids): the batch takes it when it reads exactly that
    # (nexes.resolvers.orders.customers_connections).
    prefetched: dict[Any, Any] | None = None

    @cached_property
    def loaders(self) -> Loaders:
        """Per-request DataLoaders, made on first use: most requests need none."""
        return Loaders(self.router)


Info = strawberry.Info[Context, Any]


def batch_ahead(info: Info, batch: Any) -> tuple[Any, dict[str, Any]] | None:
    """The info and arguments the field that `batch` fills below this root field's value will
    get (nexes.execution.compiled.Slot), before this resolver returns; None when the
    executor cannot tell (not a root field, no such field, or more than one)."""
    ahead = info.context.ahead
    if ahead is None:
        return None
    found = ahead.get(str(info.path.key))
    return None if found is None else found.call(batch)

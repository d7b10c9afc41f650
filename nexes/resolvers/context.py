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

    @cached_property
    def loaders(self) -> Loaders:
        """Per-request DataLoaders, made on first use: most requests need none."""
        return Loaders(self.router)


Info = strawberry.Info[Context, Any]

"""Order and master-data mutations (in progress)."""

from __future__ import annotations

import strawberry


@strawberry.type
class OrderMutation:
    @strawberry.mutation(description="Placeholder until order mutations land.")
    def order_ping(self) -> bool:
        return False

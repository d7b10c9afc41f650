"""Object types. Nested fields are plain attributes filled by the connection resolvers,
never async resolvers: each async field would become an asyncio task per row."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Annotated

import strawberry

if TYPE_CHECKING:
    from nexes.schema.connections import ServiceOrderConnection, ServiceOrderFilter, ServiceOrderOrder


@strawberry.enum(
    description="Where an order is in its life: DRAFT → OPEN → IN_PROGRESS → COMPLETED; "
    "any state that is not final → CANCELLED."
)
class Status(Enum):
    DRAFT = "DRAFT"
    OPEN = "OPEN"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"


STATUS_BY_NAME = {s.value: s for s in Status}


@strawberry.interface(description="An object with a global id, fetchable with node(id:).")
class Node:
    id: strawberry.ID


@strawberry.type
class StockItem(Node):
    id: strawberry.ID
    sku: str
    name: str
    on_hand: int


@strawberry.type
class ServiceOrderLine:
    line_no: int
    stock_item: StockItem | None
    quantity: int
    unit_price: Decimal


@strawberry.type
class Customer(Node):
    id: strawberry.ID
    code: str
    name: str
    row_id: strawberry.Private[int]

    @strawberry.field(description="This customer's orders, newest first by default.")
    async def service_orders(
        self,
        info: strawberry.Info,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        filter: Annotated[ServiceOrderFilter, strawberry.lazy("nexes.schema.connections")] | None = None,
        order_by: Annotated[ServiceOrderOrder, strawberry.lazy("nexes.schema.connections")] | None = "CREATED_AT_DESC",  # type: ignore[assignment]
    ) -> Annotated[ServiceOrderConnection, strawberry.lazy("nexes.schema.connections")]:
        from nexes.resolvers.orders import customer_orders
        from nexes.resolvers.pagination import PageArgs

        return await customer_orders(info, self.row_id, PageArgs(first, after, last, before), filter, order_by)


@strawberry.type
class ServiceOrder(Node):
    id: strawberry.ID
    sod_number: str
    status: Status
    created_at: dt.datetime
    updated_at: dt.datetime
    total_amount: Decimal
    currency: str
    description: str
    customer: Customer
    lines: list[ServiceOrderLine]

"""Object types, with their connections, filters and orders. Nested fields are plain
attributes filled by the connection resolvers, never async resolvers: each async field
would become an asyncio task per row. The one nested field with arguments,
Customer.serviceOrders, calls the loader its resolver gave the Customer."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable
from decimal import Decimal
from enum import Enum
from typing import Any, Protocol

import strawberry

from nexes.schema.connections import Counted, Edge, PageInfo


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


class CustomerOrders(Protocol):
    """A customer's page of orders. The resolver that builds a Customer gives it one
    (resolvers.orders.customer_orders), so no type imports a resolver."""

    def __call__(
        self,
        info: strawberry.Info[Any, Any],
        customer_id: int,
        *,
        first: int | None,
        after: str | None,
        last: int | None,
        before: str | None,
        filter: ServiceOrderFilter | None,
        order_by: ServiceOrderOrder | None,
    ) -> Awaitable[ServiceOrderConnection]: ...


@strawberry.type
class Customer(Node):
    id: strawberry.ID
    code: str
    name: str
    row_id: strawberry.Private[int]
    orders_of: strawberry.Private[CustomerOrders]

    @strawberry.field(description="This customer's orders, newest first by default.")
    async def service_orders(
        self,
        info: strawberry.Info,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        filter: ServiceOrderFilter | None = None,
        order_by: ServiceOrderOrder | None = ServiceOrderOrder.CREATED_AT_DESC,
    ) -> ServiceOrderConnection:
        return await self.orders_of(
            info, self.row_id, first=first, after=after, last=last, before=before, filter=filter, order_by=order_by
        )


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

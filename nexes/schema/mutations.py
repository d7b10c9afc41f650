"""The inputs and payloads of the order and master-data mutations. Each answers with a
payload: the object it made, changed or found, and `errors` (empty on success)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import strawberry

from nexes.schema.payloads import UserError
from nexes.schema.types import Customer, ServiceOrder, Status, StockItem


@strawberry.input(description="One order line; lines are numbered by position unless lineNo is given.")
class ServiceOrderLineInput:
    sku: str
    quantity: int
    unit_price: Decimal
    line_no: int | None = None


@strawberry.input(description="A new order. Create-or-identical: the same input again returns the same order.")
class CreateServiceOrderInput:
    sod_number: str
    lines: list[ServiceOrderLineInput]
    customer_id: strawberry.ID | None = None
    customer_code: str | None = None
    created_at: dt.datetime | None = strawberry.field(default=None, description="Default: now. Never changes later.")
    status: Status = Status.DRAFT
    description: str = ""
    currency: str = "EUR"


@strawberry.input(description="What to change; omitted fields stay. `lines` replaces all lines.")
class UpdateServiceOrderInput:
    status: Status | None = None
    description: str | None = None
    lines: list[ServiceOrderLineInput] | None = None
    expected_updated_at: dt.datetime | None = strawberry.field(
        default=None, description="The updatedAt you read; if the order changed since, the answer is CONFLICT."
    )


@strawberry.input
class CreateCustomerInput:
    code: str
    name: str


@strawberry.input
class CreateStockItemInput:
    sku: str
    name: str
    on_hand: int = strawberry.field(default=0, description="The opening balance, booked as one OPENING movement.")


@strawberry.type
class ServiceOrderPayload:
    service_order: ServiceOrder | None
    errors: list[UserError]


@strawberry.type
class CustomerPayload:
    customer: Customer | None
    errors: list[UserError]


@strawberry.type
class StockItemPayload:
    stock_item: StockItem | None
    errors: list[UserError]


@strawberry.type
class ReconcilePayload:
    queued: bool = strawberry.field(description="The reconciliation job was sent to the workers.")
    errors: list[UserError]

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
    sku: str = strawberry.field(description="The stock item to consume, by SKU (UNKNOWN_SKU if none has it).")
    quantity: int = strawberry.field(description="Units, 1 to 1,000,000 (BAD_USER_INPUT otherwise).")
    unit_price: Decimal = strawberry.field(
        description="Price of one unit in the order's currency, 0 to 9,999,999,999.99, at most 2 decimals."
    )
    line_no: int | None = strawberry.field(
        default=None, description="Position 1 to 999, unique in the order; default: the line's place in the list."
    )


@strawberry.input(description="A new order. Create-or-identical: the same input again returns the same order.")
class CreateServiceOrderInput:
    sod_number: str = strawberry.field(
        description="The new order's number, 1-40 of A-Z a-z 0-9 -; an existing order with other content is "
        "DUPLICATE_CONFLICT."
    )
    lines: list[ServiceOrderLineInput] = strawberry.field(
        description="The lines, at most 999; each moves its quantity out of stock once."
    )
    customer_id: strawberry.ID | None = strawberry.field(
        default=None, description="The customer by global id; give this or customerCode (UNKNOWN_CUSTOMER if none)."
    )
    customer_code: str | None = strawberry.field(
        default=None, description="The customer by code; give this or customerId (UNKNOWN_CUSTOMER if none)."
    )
    created_at: dt.datetime | None = strawberry.field(
        default=None,
        description="Default: now. Never changes later. Must fall in a partition (CREATED_AT_OUT_OF_RANGE): "
        "NEXES_PARTITION_YEARS_BACK years back to NEXES_PARTITIONS_AHEAD quarters ahead.",
    )
    status: Status = strawberry.field(default=Status.DRAFT, description="Starting status; usually DRAFT or OPEN.")
    description: str = strawberry.field(default="", description="What is to be done, up to 2,000 characters.")
    currency: str = strawberry.field(default="EUR", description="ISO 4217 code of the unit prices, e.g. EUR or USD.")


@strawberry.input(description="What to change; omitted fields stay. `lines` replaces all lines.")
class UpdateServiceOrderInput:
    status: Status | None = strawberry.field(
        default=None, description="New status, along the order's life (INVALID_TRANSITION otherwise)."
    )
    description: str | None = strawberry.field(default=None, description="New work text, up to 2,000 characters.")
    lines: list[ServiceOrderLineInput] | None = strawberry.field(
        default=None, description="The complete new set of lines; stock moves by the difference to the old set."
    )
    expected_updated_at: dt.datetime | None = strawberry.field(
        default=None, description="The updatedAt you read; if the order changed since, the answer is CONFLICT."
    )


@strawberry.input(description="A new customer. Create-or-identical: the same input again returns the same customer.")
class CreateCustomerInput:
    code: str = strawberry.field(
        description="Customer number, 1-40 of A-Z a-z 0-9 -; taken by another name: DUPLICATE_CONFLICT."
    )
    name: str = strawberry.field(description="Legal or trading name, as shown to people.")


@strawberry.input(description="A new stock item. Create-or-identical: the same input again returns the same item.")
class CreateStockItemInput:
    sku: str = strawberry.field(
        description="Stock keeping unit, 1-40 of A-Z a-z 0-9 . _ -; taken by another item: DUPLICATE_CONFLICT."
    )
    name: str = strawberry.field(description="What the item is, as shown to people.")
    on_hand: int = strawberry.field(default=0, description="The opening balance, booked as one OPENING movement.")


@strawberry.type(
    description="What an order mutation answers. After a change, the response's X-Nexes-LSN header (and "
    "extensions.consistency.lsn) lets later reads see it: send it as X-Nexes-Min-LSN."
)
class ServiceOrderPayload:
    service_order: ServiceOrder | None = strawberry.field(
        description="The order as it is now (read on the primary); null when errors is not empty."
    )
    errors: list[UserError] = strawberry.field(
        description="Why nothing changed: DUPLICATE_CONFLICT, INVALID_TRANSITION, UNKNOWN_SKU, UNKNOWN_CUSTOMER, "
        "CONFLICT, NOT_FOUND, CREATED_AT_OUT_OF_RANGE, BAD_USER_INPUT; empty on success."
    )


@strawberry.type(description="What createCustomer answers.")
class CustomerPayload:
    customer: Customer | None = strawberry.field(description="The customer made or found; null on errors.")
    errors: list[UserError] = strawberry.field(
        description="Why nothing was made: DUPLICATE_CONFLICT or BAD_USER_INPUT; empty on success."
    )


@strawberry.type(description="What createStockItem and receiveStock answer.")
class StockItemPayload:
    stock_item: StockItem | None = strawberry.field(
        description="The item as it is now, with its onHand; null on errors."
    )
    errors: list[UserError] = strawberry.field(
        description="Why nothing changed: DUPLICATE_CONFLICT, UNKNOWN_SKU or BAD_USER_INPUT; empty on success."
    )


@strawberry.type(description="What reconcileDashboard answers.")
class ReconcilePayload:
    queued: bool = strawberry.field(description="The reconciliation job was sent to the workers.")
    errors: list[UserError] = strawberry.field(description="Why nothing was queued; empty on success.")

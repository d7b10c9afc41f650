"""Order and master-data mutations. Each answers with a payload: the object it made,
changed or found, and `errors` (empty on success)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import strawberry

from nexes.resolvers import mutations as m
from nexes.resolvers.orders import Info
from nexes.schema.payloads import UserError
from nexes.schema.types import Customer, ServiceOrder, Status, StockItem


@strawberry.input(description="One order line; lines are numbered by position unless lineNo is given.")
class ServiceOrderLineInput:
    sku: str
    quantity: int
    unit_price: Decimal
    line_no: int | None = None

    def to_line(self) -> m.LineIn:
        return m.LineIn(self.sku, self.quantity, self.unit_price, self.line_no)


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
class OrderMutation:
    @strawberry.mutation(description="Create an order, or find the identical one; moves its stock once.")
    async def create_service_order(self, info: Info, input: CreateServiceOrderInput) -> ServiceOrderPayload:
        order = m.OrderIn(
            sod_number=input.sod_number,
            customer_id=input.customer_id,
            customer_code=input.customer_code,
            created_at=input.created_at,
            status=input.status.value,
            description=input.description,
            currency=input.currency,
            lines=[line.to_line() for line in input.lines],
        )
        found, errors = await m.create_service_order(info, order)
        return ServiceOrderPayload(service_order=found, errors=errors)

    @strawberry.mutation(description="Change status, description or lines; stock moves by the difference.")
    async def update_service_order(
        self, info: Info, sod_number: str, input: UpdateServiceOrderInput
    ) -> ServiceOrderPayload:
        change = m.OrderChange(
            status=input.status.value if input.status else None,
            description=input.description,
            lines=[line.to_line() for line in input.lines] if input.lines is not None else None,
            expected_updated_at=input.expected_updated_at,
        )
        found, errors = await m.update_service_order(info, sod_number, change)
        return ServiceOrderPayload(service_order=found, errors=errors)

    @strawberry.mutation(description="Cancel an order and give its stock back, exactly once (again: no change).")
    async def cancel_service_order(self, info: Info, sod_number: str) -> ServiceOrderPayload:
        found, errors = await m.update_service_order(info, sod_number, m.OrderChange(status="CANCELLED"))
        return ServiceOrderPayload(service_order=found, errors=errors)

    @strawberry.mutation(description="Create a customer, or find the identical one.")
    async def create_customer(self, info: Info, input: CreateCustomerInput) -> CustomerPayload:
        found, errors = await m.create_customer(info, input.code, input.name)
        return CustomerPayload(customer=found, errors=errors)

    @strawberry.mutation(description="Create a stock item with its opening balance, or find the identical one.")
    async def create_stock_item(self, info: Info, input: CreateStockItemInput) -> StockItemPayload:
        found, errors = await m.create_stock_item(info, input.sku, input.name, input.on_hand)
        return StockItemPayload(stock_item=found, errors=errors)

    @strawberry.mutation(description="Book received stock once per reference (the same call again moves nothing).")
    async def receive_stock(self, info: Info, sku: str, quantity: int, reference: str) -> StockItemPayload:
        found, errors = await m.receive_stock(info, sku, quantity, reference)
        return StockItemPayload(stock_item=found, errors=errors)


@strawberry.type
class ReconcilePayload:
    queued: bool = strawberry.field(description="The reconciliation job was sent to the workers.")
    errors: list[UserError]


@strawberry.type
class AdminMutation:
    @strawberry.mutation(
        description="Admin: recompute dashboard_stat from all orders, correct and record drift (stat_drift), "
        "and check the stock invariants, in a background job (nexes reconcile runs the same)."
    )
    async def reconcile_dashboard(self, info: Info) -> ReconcilePayload:
        errors = await m.reconcile_dashboard(info)
        return ReconcilePayload(queued=not errors, errors=errors)

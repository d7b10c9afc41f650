"""Object types, with their connections, filters and orders. Nested fields are plain
attributes filled by the connection resolvers, never async resolvers: each async field
would become an asyncio task per row. The one nested field with arguments,
Customer.serviceOrders, calls the loader its resolver gave the Customer."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Protocol, TypeVar

import strawberry

from nexes.schema.connections import AFTER, BEFORE, EDGES, FIRST, LAST, PAGE_INFO, Counted, Edge, PageInfo

# A field's metadata key for its batch: `async (sources, info, **arguments) -> values`, the
# field of every source at once (nexes.execution.compiled calls it for a list of objects).
BATCH = "nexes.batch"
ORDER_FILTER = "Only the orders that match every given condition."
ORDER_BY = "Sort order of the pages; the cursors are bound to it (BAD_CURSOR with another)."


E = TypeVar("E", bound=type[Enum])


def value_descriptions(**descriptions: str) -> Callable[[E], E]:
    """Describe each value of a strawberry enum (applied above @strawberry.enum).

    strawberry.enum_value(description=...) would do it in the class body, but it types each
    member's `.value` as an EnumValueDefinition, and every resolver that reads it as a str
    would need a cast; this sets the same field of the enum's GraphQL definition instead."""

    def describe(enum: E) -> E:
        values = enum.__strawberry_definition__.values  # type: ignore[attr-defined]
        named = {value.name for value in values}
        if named != descriptions.keys():
            raise TypeError(f"{enum.__name__}: describe exactly the values {sorted(named)}")
        for value in values:
            value.description = descriptions[value.name]
        return enum

    return describe


@value_descriptions(
    DRAFT="Being prepared; not yet promised to the customer.",
    OPEN="Accepted and waiting for a technician.",
    IN_PROGRESS="Work has started on site.",
    COMPLETED="Work done; final (a later change is INVALID_TRANSITION).",
    CANCELLED="Called off; final, and its lines' stock has been given back exactly once.",
)
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
    id: strawberry.ID = strawberry.field(
        description="Global id: opaque, stable, unique across types; give it to node(id:) or nodes(ids:)."
    )


@strawberry.type(
    description="A part or material the technicians use. Its stock is a ledger: every change is a movement "
    "(opening balance, receipt, order deduction or correction)."
)
class StockItem(Node):
    id: strawberry.ID = strawberry.field(description="Global id (type StockItem); node(id:) finds it.")
    sku: str = strawberry.field(description="Stock keeping unit: unique, 1-40 of A-Z a-z 0-9 . _ -.")
    name: str = strawberry.field(description="What the item is, as shown to people.")
    on_hand: int = strawberry.field(
        description="Units in stock now: the sum of the item's movements. May be negative (reported, not refused)."
    )


@strawberry.type(description="One line of an order: a quantity of a stock item at a unit price.")
class ServiceOrderLine:
    line_no: int = strawberry.field(description="Position in the order, 1 to 999; lines come in this order.")
    stock_item: StockItem | None = strawberry.field(
        description="The item the line consumes (null only if it no longer exists)."
    )
    quantity: int = strawberry.field(
        description="Units consumed, 1 to 1,000,000; taken from stock unless the order is CANCELLED."
    )
    unit_price: Decimal = strawberry.field(
        description="Price of one unit in the order's currency, 2 decimals, 0 to 9,999,999,999.99."
    )


@value_descriptions(
    CREATED_AT_DESC="Newest first (the default).",
    CREATED_AT_ASC="Oldest first.",
    UPDATED_AT_DESC="Most recently changed first.",
    TOTAL_AMOUNT_DESC="Largest amount first, whatever the currency (amounts are not converted).",
)
@strawberry.enum(
    description="How a page of orders is sorted; ties are broken by id in the same direction, so every page "
    "has a stable place (keyset pagination: page 200,000 costs what page 1 costs)."
)
class ServiceOrderOrder(Enum):
    CREATED_AT_DESC = "CREATED_AT_DESC"
    CREATED_AT_ASC = "CREATED_AT_ASC"
    UPDATED_AT_DESC = "UPDATED_AT_DESC"
    TOTAL_AMOUNT_DESC = "TOTAL_AMOUNT_DESC"


@strawberry.input(description="All given conditions must hold. createdFrom is inclusive, createdTo exclusive.")
class ServiceOrderFilter:
    status: list[Status] | None = strawberry.field(
        default=None, description="Any of these statuses; null or omitted: every status."
    )
    customer_id: strawberry.ID | None = strawberry.field(
        default=None, description="Only this customer's orders (a Customer's global id; BAD_USER_INPUT otherwise)."
    )
    created_from: dt.datetime | None = strawberry.field(
        default=None,
        description="Created at or after this instant (inclusive). Whole UTC days here and in createdTo keep "
        "totalCount exact and cheap.",
    )
    created_to: dt.datetime | None = strawberry.field(
        default=None, description="Created before this instant (exclusive); not before createdFrom (BAD_USER_INPUT)."
    )
    sod_number_prefix: str | None = strawberry.field(
        default=None, description="SOD numbers starting with this text, e.g. SOD-2025-; 1-40 of A-Z a-z 0-9 -."
    )
    include_archived: bool = strawberry.field(
        default=False, description="Also archived orders (quarters older than NEXES_ARCHIVE_AFTER_YEARS years)."
    )


class CustomerOrders(Protocol):
    """Customers' pages of orders, one per customer. The resolver that builds a Customer
    gives it one (resolvers.orders.customer_orders), so no type imports a resolver."""

    def __call__(
        self,
        info: strawberry.Info[Any, Any],
        customer_ids: Sequence[int],
        *,
        first: int | None,
        after: str | None,
        last: int | None,
        before: str | None,
        filter: ServiceOrderFilter | None,
        order_by: ServiceOrderOrder | None,
    ) -> Awaitable[list[ServiceOrderConnection]]: ...


async def orders_of_customers(
    customers: list[Customer], info: strawberry.Info[Any, Any], **arguments: Any
) -> list[ServiceOrderConnection]:
    """Customer.serviceOrders of a whole list of customers at once, with the arguments of
    the field: the batch the compiled executor calls (nexes.execution.compiled, BATCH)
    instead of the resolver once per customer. Customers built apart may carry different
    loaders: each loader gets its own customers."""
    by_loader: dict[CustomerOrders, list[int]] = {}
    for customer in customers:
        by_loader.setdefault(customer.orders_of, []).append(customer.row_id)
    pages: dict[tuple[CustomerOrders, int], ServiceOrderConnection] = {}
    for orders_of, ids in by_loader.items():
        pages.update(zip(((orders_of, i) for i in ids), await orders_of(info, ids, **arguments), strict=True))
    return [pages[c.orders_of, c.row_id] for c in customers]


@strawberry.type(description="A company or person the service orders are for.")
class Customer(Node):
    id: strawberry.ID = strawberry.field(description="Global id (type Customer); use it in filter.customerId.")
    code: str = strawberry.field(description="Customer number: unique, 1-40 of A-Z a-z 0-9 -, e.g. C000042.")
    name: str = strawberry.field(description="Legal or trading name, as shown to people.")
    row_id: strawberry.Private[int]
    orders_of: strawberry.Private[CustomerOrders]

    @strawberry.field(
        description="This customer's orders, newest first by default; the same arguments as Query.serviceOrders "
        "(filter.customerId is this customer). Cost: first (default 20) per customer on the page.",
        metadata={BATCH: orders_of_customers},
    )
    async def service_orders(
        self,
        info: strawberry.Info,
        first: Annotated[int | None, strawberry.argument(description=FIRST)] = None,
        after: Annotated[str | None, strawberry.argument(description=AFTER)] = None,
        last: Annotated[int | None, strawberry.argument(description=LAST)] = None,
        before: Annotated[str | None, strawberry.argument(description=BEFORE)] = None,
        filter: Annotated[ServiceOrderFilter | None, strawberry.argument(description=ORDER_FILTER)] = None,
        order_by: Annotated[
            ServiceOrderOrder | None, strawberry.argument(description=ORDER_BY)
        ] = ServiceOrderOrder.CREATED_AT_DESC,
    ) -> ServiceOrderConnection:
        (page,) = await self.orders_of(
            info, [self.row_id], first=first, after=after, last=last, before=before, filter=filter, order_by=order_by
        )
        return page


@strawberry.type(
    description="A service order: work for a customer, with the stock items it consumes. Identified by its SOD "
    "number, unique forever (archived orders included)."
)
class ServiceOrder(Node):
    id: strawberry.ID = strawberry.field(description="Global id (type ServiceOrder); node(id:) finds it.")
    sod_number: str = strawberry.field(
        description="Service order document number, unique across live and archived orders, e.g. "
        "SOD-2025-0001234; 1-40 of A-Z a-z 0-9 -."
    )
    status: Status = strawberry.field(description="Where the order is in its life (see Status).")
    created_at: dt.datetime = strawberry.field(
        description="When the order was created (UTC, microseconds); never changes, and decides its quarter partition."
    )
    updated_at: dt.datetime = strawberry.field(
        description="When the order last changed (UTC); send it back as expectedUpdatedAt to detect a CONFLICT."
    )
    total_amount: Decimal = strawberry.field(
        description="Sum of quantity times unitPrice over the lines, in currency, 2 decimals."
    )
    currency: str = strawberry.field(description="ISO 4217 code of every amount of the order, e.g. EUR.")
    description: str = strawberry.field(description="What is to be done, free text up to 2,000 characters.")
    customer: Customer = strawberry.field(description="Who the work is for (loaded with the page, in one query).")
    lines: list[ServiceOrderLine] = strawberry.field(
        description="The lines in lineNo order (at most 999). Cost: counted as 10 nodes per order."
    )


@strawberry.input(description="All given conditions must hold.")
class CustomerFilter:
    name_contains: str | None = strawberry.field(
        default=None, description="Names containing this text, case-insensitive; at most 200 characters."
    )
    code: str | None = strawberry.field(default=None, description="Only the customer with exactly this code.")


@strawberry.input(description="All given conditions must hold.")
class StockItemFilter:
    name_contains: str | None = strawberry.field(
        default=None, description="Names containing this text, case-insensitive; at most 200 characters."
    )
    sku: str | None = strawberry.field(default=None, description="Only the item with exactly this SKU.")
    negative_only: bool = strawberry.field(
        default=False, description="Only items whose onHand is below 0 (stock to recount or reorder)."
    )


@strawberry.type(description="A page of orders (Relay connection), with the count of all that match.")
class ServiceOrderConnection(Counted):
    edges: list[Edge[ServiceOrder]] = strawberry.field(description=EDGES)
    page_info: PageInfo = strawberry.field(description=PAGE_INFO)


@strawberry.type(description="A page of customers (Relay connection), with the count of all that match.")
class CustomerConnection(Counted):
    edges: list[Edge[Customer]] = strawberry.field(description=EDGES)
    page_info: PageInfo = strawberry.field(description=PAGE_INFO)


@strawberry.type(description="A page of stock items (Relay connection), with the count of all that match.")
class StockItemConnection(Counted):
    edges: list[Edge[StockItem]] = strawberry.field(description=EDGES)
    page_info: PageInfo = strawberry.field(description=PAGE_INFO)

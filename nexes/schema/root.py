"""The root types: Query and Mutation (and the Reports namespace), each field bound to its
resolver. Only nexes.execution imports this module; the rest of nexes.schema never does."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import strawberry

from nexes.resolvers import audit, catalog, dashboard, imports, mutations, nodes, orders, reports, search
from nexes.resolvers.context import Info
from nexes.resolvers.pagination import PageArgs
from nexes.schema.audit import AuditEventConnection
from nexes.schema.connections import AFTER, BEFORE, FIRST, LAST
from nexes.schema.dashboard import Dashboard
from nexes.schema.imports import (
    CancelImportPayload,
    ImportJob,
    ImportJobConnection,
    ImportJobStatus,
    StartImportPayload,
)
from nexes.schema.mutations import (
    CreateCustomerInput,
    CreateServiceOrderInput,
    CreateStockItemInput,
    CustomerPayload,
    ReconcilePayload,
    ServiceOrderPayload,
    StockItemPayload,
    UpdateServiceOrderInput,
)
from nexes.schema.reports import AgingBucket, CustomerAmount, PeriodFigures, ReportGranularity
from nexes.schema.scalars import Upload
from nexes.schema.search import ReindexSearchPayload, SearchConnection, SearchFilter
from nexes.schema.types import (
    CustomerConnection,
    CustomerFilter,
    Node,
    ServiceOrder,
    ServiceOrderConnection,
    ServiceOrderFilter,
    ServiceOrderOrder,
    StockItemConnection,
    StockItemFilter,
)


def arg(description: str) -> object:
    """An argument's description (strawberry.argument), kept short at each use."""
    return strawberry.argument(description=description)


ANY_ROLE = "Roles: any signed-in user."
DAY_FROM = "First UTC day (inclusive), YYYY-MM-DD."
DAY_TO = "Last UTC day (inclusive), YYYY-MM-DD; not before from (BAD_USER_INPUT)."


@strawberry.type(
    description="Reports for analysts (roles: analyst, admin), read from replicas only as the read-only "
    "nexes_analyst role, from summary tables: their cost does not grow with the number of orders. "
    "SERVICE_UNAVAILABLE when no replica is healthy."
)
class Reports:
    @strawberry.field(
        description="Per day, week (from Monday) or month, status and currency over UTC days from..to "
        "(inclusive); MONTH counts the whole months that hold them. DAY spans at most 1,100 days."
    )
    async def orders_by_period(
        self,
        info: Info,
        from_: Annotated[dt.date, strawberry.argument(name="from", description=DAY_FROM)],
        to: Annotated[dt.date, arg(DAY_TO)],
        granularity: Annotated[ReportGranularity, arg("Length of each period.")] = ReportGranularity.DAY,
    ) -> list[PeriodFigures]:
        return await reports.orders_by_period(info, from_, to, granularity.value)

    @strawberry.field(
        description="The customers with the largest amounts, per currency, over the whole months that hold "
        "from..to (at most 100)."
    )
    async def top_customers(
        self,
        info: Info,
        from_: Annotated[dt.date, strawberry.argument(name="from", description=DAY_FROM)],
        to: Annotated[dt.date, arg(DAY_TO)],
        limit: Annotated[
            int, arg("Customers per currency, 1 to 100 (BAD_USER_INPUT otherwise). Cost: this many.")
        ] = 10,
        currency: Annotated[str | None, arg("Only this ISO 4217 currency; null: each currency's own ranking.")] = None,
    ) -> list[CustomerAmount]:
        return await reports.top_customers(info, from_, to, limit, currency)

    @strawberry.field(description="Open orders by age: 0-7, 8-30, 31-90 and 90+ days, per currency.")
    async def aging(self, info: Info) -> list[AgingBucket]:
        return await reports.aging(info)


@strawberry.type(
    description="Reads. Each operation costs the nodes it may return (first times parents, totalCount 10), "
    "refused past the role's limit with QUERY_TOO_COMPLEX, and charges ceil(cost / 100) points of the hourly "
    "rate limit (RATE_LIMITED); extensions.cost reports both. Send X-Nexes-Min-LSN to read your own writes."
)
class Query:
    @strawberry.field(
        description="Orders matching part of a SOD number, a customer's name or code (typos allowed), or words "
        "of a description; best match first. Default 20 per page. Engine Typesense, else the PostgreSQL "
        "fallback (engine says which). SERVICE_UNAVAILABLE when too many searches run at once. " + ANY_ROLE
    )
    async def search(
        self,
        info: Info,
        query: Annotated[
            str, arg("What to look for: a letter or digit, at most 200 characters (BAD_USER_INPUT otherwise).")
        ],
        first: Annotated[int | None, arg(FIRST)] = None,
        after: Annotated[str | None, arg(AFTER)] = None,
        filter: Annotated[SearchFilter | None, arg("Only hits that match every given condition.")] = None,
    ) -> SearchConnection:
        return await search.search(info, query, first, after, filter)

    @strawberry.field(
        description="One import job by its global id (read from the primary: progress is fresh); null when there "
        "is none you may see. Roles: operator (own jobs), admin (all)."
    )
    async def import_job(
        self, info: Info, id: Annotated[strawberry.ID, arg("The job's global id, from startImport or importJobs.")]
    ) -> ImportJob | None:
        return await imports.import_job(info, id)

    @strawberry.field(
        description="Import jobs, newest first, optionally of one status. Default 20 per page. "
        "Roles: operator (own jobs), admin (all)."
    )
    async def import_jobs(
        self,
        info: Info,
        status: Annotated[ImportJobStatus | None, arg("Only jobs in this status; null: all.")] = None,
        first: Annotated[int | None, arg(FIRST)] = None,
        after: Annotated[str | None, arg(AFTER)] = None,
    ) -> ImportJobConnection:
        return await imports.import_jobs(info, status.value if status else None, first, after)

    @strawberry.field(
        description="The audit trail (admins): who did what, newest first, filtered by entity, its id, actor and "
        "time (from inclusive, to exclusive). Default 20 per page, at most 100."
    )
    async def audit_events(
        self,
        info: Info,
        first: Annotated[int | None, arg(FIRST)] = None,
        after: Annotated[str | None, arg(AFTER)] = None,
        entity: Annotated[str | None, arg("Only changes of this kind of object, e.g. ServiceOrder.")] = None,
        entity_id: Annotated[str | None, arg("Only changes of this object (its global id, or its name).")] = None,
        actor: Annotated[str | None, arg("Only changes made by this token subject, e.g. cli:root.")] = None,
        from_: Annotated[
            dt.datetime | None, strawberry.argument(name="from", description="Changes at or after this instant.")
        ] = None,
        to: Annotated[dt.datetime | None, arg("Changes before this instant (exclusive).")] = None,
    ) -> AuditEventConnection:
        return await audit.audit_events(
            info, first=first, after=after, entity=entity, entity_id=entity_id, actor=actor, since=from_, until=to
        )

    @strawberry.field(description="Analyst reports (replicas only; SERVICE_UNAVAILABLE when none is healthy).")
    def reports(self) -> Reports:
        return Reports()

    @strawberry.field(
        description="Any object by its global id; null when none has it (archived orders included). " + ANY_ROLE
    )
    async def node(
        self, info: Info, id: Annotated[strawberry.ID, arg("A global id, as any id field gives it.")]
    ) -> Node | None:
        return await nodes.node(info, id)

    @strawberry.field(
        description="Objects by global id (at most 100), in the order asked; null where missing. Cost: one node "
        "per id. " + ANY_ROLE
    )
    async def nodes(
        self, info: Info, ids: Annotated[list[strawberry.ID], arg("Up to 100 global ids (BAD_USER_INPUT past it).")]
    ) -> list[Node | None]:
        return await nodes.nodes(info, ids)

    @strawberry.field(description="One order by its SOD number, live or archived; null when none has it. " + ANY_ROLE)
    async def service_order(
        self, info: Info, sod_number: Annotated[str, arg("The exact SOD number, e.g. SOD-2025-0001234.")]
    ) -> ServiceOrder | None:
        return await orders.service_order(info, sod_number)

    @strawberry.field(
        description="Orders, keyset-paginated: any page costs what the first costs. Default 20 per page, at most "
        "100. Live orders unless filter.includeArchived. " + ANY_ROLE
    )
    async def service_orders(
        self,
        info: Info,
        first: Annotated[int | None, arg(FIRST)] = None,
        after: Annotated[str | None, arg(AFTER)] = None,
        last: Annotated[int | None, arg(LAST)] = None,
        before: Annotated[str | None, arg(BEFORE)] = None,
        filter: Annotated[ServiceOrderFilter | None, arg("Only the orders that match every given condition.")] = None,
        order_by: Annotated[
            ServiceOrderOrder | None, arg("Sort order; cursors are bound to it (BAD_CURSOR with another).")
        ] = ServiceOrderOrder.CREATED_AT_DESC,
    ) -> ServiceOrderConnection:
        return await orders.service_orders(info, PageArgs(first, after, last, before), filter, order_by)

    @strawberry.field(description="Customers, ordered by name, then id. " + ANY_ROLE)
    async def customers(
        self,
        info: Info,
        first: Annotated[int | None, arg(FIRST)] = None,
        after: Annotated[str | None, arg(AFTER)] = None,
        last: Annotated[int | None, arg(LAST)] = None,
        before: Annotated[str | None, arg(BEFORE)] = None,
        filter: Annotated[CustomerFilter | None, arg("Only the customers that match every given condition.")] = None,
    ) -> CustomerConnection:
        return await catalog.customers(info, PageArgs(first, after, last, before), filter)

    @strawberry.field(description="Stock items, ordered by name, then id. " + ANY_ROLE)
    async def stock_items(
        self,
        info: Info,
        first: Annotated[int | None, arg(FIRST)] = None,
        after: Annotated[str | None, arg(AFTER)] = None,
        last: Annotated[int | None, arg(LAST)] = None,
        before: Annotated[str | None, arg(BEFORE)] = None,
        filter: Annotated[StockItemFilter | None, arg("Only the items that match every given condition.")] = None,
    ) -> StockItemConnection:
        return await catalog.stock_items(info, PageArgs(first, after, last, before), filter)

    @strawberry.field(
        description="Per-status counts and amounts over whole UTC days (both ends inclusive), from the daily "
        "statistics: cheap at any size. " + ANY_ROLE
    )
    async def dashboard(
        self,
        info: Info,
        from_: Annotated[
            dt.date | None,
            strawberry.argument(name="from", description="First UTC day (inclusive); null: since the first order."),
        ] = None,
        to: Annotated[
            dt.date | None, arg("Last UTC day (inclusive); null: no end. Before from: BAD_USER_INPUT.")
        ] = None,
    ) -> Dashboard:
        return await dashboard.dashboard(info, from_, to)


@strawberry.type(
    description="Writes, all on the primary, each in one transaction with its audit event. Expected failures "
    "come back in the payload's errors with a stable code, nothing half-written. Roles: operator and admin, "
    "unless a field says admin."
)
class Mutation:
    """Writes, all on the primary."""

    @strawberry.mutation(description="Create an order, or find the identical one; moves its stock once.")
    async def create_service_order(
        self, info: Info, input: Annotated[CreateServiceOrderInput, arg("The order to create.")]
    ) -> ServiceOrderPayload:
        return await mutations.create_service_order(info, input)

    @strawberry.mutation(description="Change status, description or lines; stock moves by the difference.")
    async def update_service_order(
        self,
        info: Info,
        sod_number: Annotated[str, arg("The order to change (NOT_FOUND if none has it).")],
        input: Annotated[UpdateServiceOrderInput, arg("What to change; omitted fields stay.")],
    ) -> ServiceOrderPayload:
        return await mutations.update_service_order(info, sod_number, input)

    @strawberry.mutation(description="Cancel an order and give its stock back, exactly once (again: no change).")
    async def cancel_service_order(
        self, info: Info, sod_number: Annotated[str, arg("The order to cancel (NOT_FOUND if none has it).")]
    ) -> ServiceOrderPayload:
        return await mutations.cancel_service_order(info, sod_number)

    @strawberry.mutation(description="Admin: create a customer, or find the identical one.")
    async def create_customer(
        self, info: Info, input: Annotated[CreateCustomerInput, arg("The customer to create.")]
    ) -> CustomerPayload:
        return await mutations.create_customer(info, input)

    @strawberry.mutation(description="Admin: create a stock item with its opening balance, or find the identical one.")
    async def create_stock_item(
        self, info: Info, input: Annotated[CreateStockItemInput, arg("The item to create.")]
    ) -> StockItemPayload:
        return await mutations.create_stock_item(info, input)

    @strawberry.mutation(description="Book received stock once per reference (the same call again moves nothing).")
    async def receive_stock(
        self,
        info: Info,
        sku: Annotated[str, arg("The item received (UNKNOWN_SKU if none has it).")],
        quantity: Annotated[int, arg("Units received, 1 to 1,000,000,000.")],
        reference: Annotated[
            str,
            arg(
                "The delivery's reference (e.g. a delivery note number), 1-100 printable characters without "
                "spaces; used again with another item or quantity: DUPLICATE_CONFLICT."
            ),
        ],
    ) -> StockItemPayload:
        return await mutations.receive_stock(info, sku, quantity, reference)

    @strawberry.mutation(
        description="Import an uploaded CSV or XLSX file (a multipart request with one of the headers "
        "X-Nexes-CSRF, Apollo-Require-Preflight or X-Apollo-Operation-Name); the job is queued for the workers. "
        "Operators and admins; the job is the caller's own (createdBy)."
    )
    async def start_import(
        self,
        info: Info,
        file: Annotated[
            Upload, arg("The CSV or XLSX file (docs/import-format.md), at most NEXES_IMPORT_MAX_BYTES (1 GiB).")
        ],
    ) -> StartImportPayload:
        return await imports.start_import(info, file)

    @strawberry.mutation(
        description="Cancel a QUEUED job at once, or ask a RUNNING one to stop after its current chunk."
    )
    async def cancel_import(
        self, info: Info, id: Annotated[strawberry.ID, arg("The job's global id (your own job; admins any).")]
    ) -> CancelImportPayload:
        return await imports.cancel_import(info, id)

    @strawberry.mutation(
        description="Admin: recompute dashboard_stat from all orders, correct and record drift (stat_drift), "
        "and check the stock invariants, in a background job (nexes reconcile runs the same)."
    )
    async def reconcile_dashboard(self, info: Info) -> ReconcilePayload:
        return await mutations.reconcile_dashboard(info)

    @strawberry.mutation(
        description="Admin: rebuild the search index into a new collection and swap the alias to it, in a "
        "background job (nexes reindex runs the same); searches keep answering throughout."
    )
    async def reindex_search(self, info: Info) -> ReindexSearchPayload:
        return await search.reindex_search(info)

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


@strawberry.type(description="Reports for analysts, from replicas only.")
class Reports:
    @strawberry.field(
        description="Per day, week (from Monday) or month, status and currency over UTC days from..to "
        "(inclusive); MONTH counts the whole months that hold them. DAY spans at most 1,100 days."
    )
    async def orders_by_period(
        self,
        info: Info,
        from_: Annotated[dt.date, strawberry.argument(name="from")],
        to: dt.date,
        granularity: ReportGranularity = ReportGranularity.DAY,
    ) -> list[PeriodFigures]:
        return await reports.orders_by_period(info, from_, to, granularity.value)

    @strawberry.field(
        description="The customers with the largest amounts, per currency, over the whole months that hold "
        "from..to (at most 100)."
    )
    async def top_customers(
        self,
        info: Info,
        from_: Annotated[dt.date, strawberry.argument(name="from")],
        to: dt.date,
        limit: int = 10,
        currency: str | None = None,
    ) -> list[CustomerAmount]:
        return await reports.top_customers(info, from_, to, limit, currency)

    @strawberry.field(description="Open orders by age: 0-7, 8-30, 31-90 and 90+ days, per currency.")
    async def aging(self, info: Info) -> list[AgingBucket]:
        return await reports.aging(info)


@strawberry.type
class Query:
    @strawberry.field(
        description="Orders matching part of a SOD number, a customer's name or code (typos allowed), or words "
        "of a description; best match first. Default 20 per page."
    )
    async def search(
        self,
        info: Info,
        query: str,
        first: int | None = None,
        after: str | None = None,
        filter: SearchFilter | None = None,
    ) -> SearchConnection:
        return await search.search(info, query, first, after, filter)

    @strawberry.field(description="One import job by its global id (read from the primary: progress is fresh).")
    async def import_job(self, info: Info, id: strawberry.ID) -> ImportJob | None:
        return await imports.import_job(info, id)

    @strawberry.field(description="Import jobs, newest first, optionally of one status. Default 20 per page.")
    async def import_jobs(
        self,
        info: Info,
        status: ImportJobStatus | None = None,
        first: int | None = None,
        after: str | None = None,
    ) -> ImportJobConnection:
        return await imports.import_jobs(info, status.value if status else None, first, after)

    @strawberry.field(
        description="The audit trail (admins): who did what, newest first, filtered by entity, its id, actor and "
        "time (from inclusive, to exclusive). Default 20 per page, at most 100."
    )
    async def audit_events(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        entity: str | None = None,
        entity_id: str | None = None,
        actor: str | None = None,
        from_: Annotated[dt.datetime | None, strawberry.argument(name="from")] = None,
        to: dt.datetime | None = None,
    ) -> AuditEventConnection:
        return await audit.audit_events(
            info, first=first, after=after, entity=entity, entity_id=entity_id, actor=actor, since=from_, until=to
        )

    @strawberry.field(description="Analyst reports (replicas only; SERVICE_UNAVAILABLE when none is healthy).")
    def reports(self) -> Reports:
        return Reports()

    @strawberry.field(description="Any object by its global id.")
    async def node(self, info: Info, id: strawberry.ID) -> Node | None:
        return await nodes.node(info, id)

    @strawberry.field(description="Objects by global id (at most 100), in the order asked; null where missing.")
    async def nodes(self, info: Info, ids: list[strawberry.ID]) -> list[Node | None]:
        return await nodes.nodes(info, ids)

    @strawberry.field(description="One order by its SOD number, live or archived.")
    async def service_order(self, info: Info, sod_number: str) -> ServiceOrder | None:
        return await orders.service_order(info, sod_number)

    @strawberry.field(description="Orders, keyset-paginated. Default 20 per page, at most 100.")
    async def service_orders(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        filter: ServiceOrderFilter | None = None,
        order_by: ServiceOrderOrder | None = ServiceOrderOrder.CREATED_AT_DESC,
    ) -> ServiceOrderConnection:
        return await orders.service_orders(info, PageArgs(first, after, last, before), filter, order_by)

    @strawberry.field(description="Customers, ordered by name.")
    async def customers(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        filter: CustomerFilter | None = None,
    ) -> CustomerConnection:
        return await catalog.customers(info, PageArgs(first, after, last, before), filter)

    @strawberry.field(description="Stock items, ordered by name.")
    async def stock_items(
        self,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        filter: StockItemFilter | None = None,
    ) -> StockItemConnection:
        return await catalog.stock_items(info, PageArgs(first, after, last, before), filter)

    @strawberry.field(description="Per-status counts and amounts over whole UTC days (both ends inclusive).")
    async def dashboard(
        self,
        info: Info,
        from_: Annotated[dt.date | None, strawberry.argument(name="from")] = None,
        to: dt.date | None = None,
    ) -> Dashboard:
        return await dashboard.dashboard(info, from_, to)


@strawberry.type
class Mutation:
    """Writes, all on the primary."""

    @strawberry.mutation(description="Create an order, or find the identical one; moves its stock once.")
    async def create_service_order(self, info: Info, input: CreateServiceOrderInput) -> ServiceOrderPayload:
        return await mutations.create_service_order(info, input)

    @strawberry.mutation(description="Change status, description or lines; stock moves by the difference.")
    async def update_service_order(
        self, info: Info, sod_number: str, input: UpdateServiceOrderInput
    ) -> ServiceOrderPayload:
        return await mutations.update_service_order(info, sod_number, input)

    @strawberry.mutation(description="Cancel an order and give its stock back, exactly once (again: no change).")
    async def cancel_service_order(self, info: Info, sod_number: str) -> ServiceOrderPayload:
        return await mutations.cancel_service_order(info, sod_number)

    @strawberry.mutation(description="Create a customer, or find the identical one.")
    async def create_customer(self, info: Info, input: CreateCustomerInput) -> CustomerPayload:
        return await mutations.create_customer(info, input)

    @strawberry.mutation(description="Create a stock item with its opening balance, or find the identical one.")
    async def create_stock_item(self, info: Info, input: CreateStockItemInput) -> StockItemPayload:
        return await mutations.create_stock_item(info, input)

    @strawberry.mutation(description="Book received stock once per reference (the same call again moves nothing).")
    async def receive_stock(self, info: Info, sku: str, quantity: int, reference: str) -> StockItemPayload:
        return await mutations.receive_stock(info, sku, quantity, reference)

    @strawberry.mutation(
        description="Import an uploaded CSV or XLSX file (a multipart request with one of the headers "
        "X-Nexes-CSRF, Apollo-Require-Preflight or X-Apollo-Operation-Name); the job is queued for the workers. "
        "Operators and admins; the job is the caller's own (createdBy)."
    )
    async def start_import(self, info: Info, file: Upload) -> StartImportPayload:
        return await imports.start_import(info, file)

    @strawberry.mutation(
        description="Cancel a QUEUED job at once, or ask a RUNNING one to stop after its current chunk."
    )
    async def cancel_import(self, info: Info, id: strawberry.ID) -> CancelImportPayload:
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

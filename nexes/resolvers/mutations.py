"""Mutations: validate, resolve references, stage and apply on the primary, in one
transaction each. Expected failures come back as payload errors (UserError), never as
GraphQL errors; the transaction then rolls back, so nothing is half-written."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg import AsyncConnection

from nexes import rules
from nexes.db import master_write as db
from nexes.db import orders as orders_db
from nexes.db.audit import Actor
from nexes.errors import Code, NexesError
from nexes.resolvers.audit import actor, send_audited
from nexes.resolvers.catalog import to_stock_item
from nexes.resolvers.context import Info
from nexes.resolvers.ids import parse_global_id
from nexes.resolvers.orders import hydrate, to_customer
from nexes.schema.mutations import (
    CreateCustomerInput,
    CreateServiceOrderInput,
    CreateStockItemInput,
    CustomerPayload,
    ReconcilePayload,
    ServiceOrderLineInput,
    ServiceOrderPayload,
    StockItemPayload,
    UpdateServiceOrderInput,
)
from nexes.schema.payloads import UserError, user_error
from nexes.schema.types import Customer, ServiceOrder, StockItem

REFERENCE = re.compile(r"[\x21-\x7e]{1,100}")
log = logging.getLogger(__name__)
MAX_PRICE = Decimal("9999999999.99")


class Rejected(Exception):
    """Payload errors: the mutation's transaction rolls back and they are returned."""

    def __init__(self, errors: list[UserError]) -> None:
        super().__init__(errors[0].message if errors else "rejected")
        self.errors = errors


@dataclass(frozen=True)
class LineIn:
    sku: str
    quantity: int
    unit_price: Decimal
    line_no: int | None = None


@dataclass(frozen=True)
class OrderIn:
    sod_number: str
    customer_id: str | None
    customer_code: str | None
    created_at: datetime | None
    status: str
    description: str
    currency: str
    lines: Sequence[LineIn]


def check_lines(lines: Sequence[LineIn], errors: list[UserError]) -> list[tuple[int, LineIn]]:
    """Validated (line_no, line) pairs: numbered by position unless lineNo is given."""
    if len(lines) > rules.MAX_LINES:
        errors.append(user_error(Code.BAD_USER_INPUT, f"at most {rules.MAX_LINES} lines per order", "lines"))
        return []
    numbered: list[tuple[int, LineIn]] = []
    seen: set[int] = set()
    for i, line in enumerate(lines):
        where = f"lines.{i}"
        line_no = line.line_no if line.line_no is not None else i + 1
        if not 1 <= line_no <= rules.MAX_LINES:
            errors.append(user_error(Code.BAD_USER_INPUT, f"lineNo must be 1-{rules.MAX_LINES}", f"{where}.lineNo"))
        elif line_no in seen:
            errors.append(user_error(Code.BAD_USER_INPUT, f"lineNo {line_no} appears twice", f"{where}.lineNo"))
        seen.add(line_no)
        if not rules.SKU.fullmatch(line.sku.strip()):
            errors.append(user_error(Code.BAD_USER_INPUT, "sku must be 1-40 of A-Z a-z 0-9 . _ -", f"{where}.sku"))
        if not 1 <= line.quantity <= rules.MAX_QUANTITY:
            errors.append(
                user_error(Code.BAD_USER_INPUT, f"quantity must be 1 to {rules.MAX_QUANTITY:,}", f"{where}.quantity")
            )
        price = line.unit_price
        if price < 0 or price > MAX_PRICE or price != price.quantize(Decimal("0.01")):
            errors.append(
                user_error(
                    Code.BAD_USER_INPUT,
                    "unitPrice must be 0 or more, with at most 2 decimal places and 10 digits before the point",
                    f"{where}.unitPrice",
                )
            )
        numbered.append((line_no, line))
    return numbered


def check_order_fields(order: OrderIn, errors: list[UserError]) -> None:
    if not rules.SOD_NUMBER.fullmatch(order.sod_number):
        errors.append(user_error(Code.BAD_USER_INPUT, "sodNumber must be 1-40 of A-Z a-z 0-9 -", "sodNumber"))
    if len(order.description) > rules.MAX_DESCRIPTION:
        errors.append(
            user_error(
                Code.BAD_USER_INPUT, f"description is longer than {rules.MAX_DESCRIPTION:,} characters", "description"
            )
        )
    if not rules.is_currency(order.currency):
        errors.append(user_error(Code.BAD_USER_INPUT, "currency must be an ISO 4217 code, e.g. EUR", "currency"))
    if (order.customer_id is None) == (order.customer_code is None):
        errors.append(user_error(Code.BAD_USER_INPUT, "give exactly one of customerId and customerCode", "customerId"))


async def resolve_skus(
    conn: AsyncConnection[Any], numbered: list[tuple[int, LineIn]], errors: list[UserError]
) -> dict[str, int]:
    skus = {line.sku.strip() for _, line in numbered}
    found = await db.stock_item_ids_by_sku(conn, skus) if skus else {}
    for i, (_, line) in enumerate(numbered):
        if line.sku.strip() not in found:
            errors.append(user_error(Code.UNKNOWN_SKU, f"no stock item has SKU {line.sku.strip()!r}", f"lines.{i}.sku"))
    return found


async def resolve_customer(conn: AsyncConnection[Any], order: OrderIn, errors: list[UserError]) -> int | None:
    if order.customer_id is not None:
        try:
            customer_id = parse_global_id(order.customer_id, "Customer", field="customerId")
        except NexesError as exc:
            errors.append(user_error(exc.code, exc.message, "customerId"))
            return None
        if not await db.customer_exists(conn, customer_id):
            errors.append(user_error(Code.UNKNOWN_CUSTOMER, "no customer has this id", "customerId"))
            return None
        return customer_id
    code = (order.customer_code or "").strip()
    found = await db.customer_ids_by_code(conn, [code]) if rules.CUSTOMER_CODE.fullmatch(code) else {}
    if code not in found:
        errors.append(user_error(Code.UNKNOWN_CUSTOMER, f"no customer has code {code[:40]!r}", "customerCode"))
        return None
    return found[code]


async def apply_one(
    conn: AsyncConnection[Any],
    *,
    sod_number: str,
    created_at: datetime | None,
    customer_id: int,
    status: str,
    description: str,
    currency: str,
    lines: list[tuple[int, int, int, Decimal]],
    mode: str,
    by: Actor,
    action: str,
    expected_updated_at: datetime | None = None,
) -> None:
    """Stage one order and apply it, with its audit row when it changed; a rejection
    raises Rejected (so the caller's transaction rolls back)."""
    order = (
        sod_number,
        created_at or datetime.now().astimezone(),
        created_at is not None,
        customer_id,
        status,
        description,
        currency,
        expected_updated_at,
        mode,
    )
    staged = [(sod_number, line_no, item, qty, price) for line_no, item, qty, price in lines]
    ((_, outcome, code, field, message, _, _),) = await db.stage(conn, [order], staged, by=by, action=action)
    if outcome == "rejected":
        raise Rejected([user_error(code, message, field)])


async def order_payload(conn: AsyncConnection[Any], info: Info, sod_number: str) -> ServiceOrder | None:
    row = await orders_db.order_by_sod_number(conn, sod_number)
    if row is None:
        return None
    (order,) = await hydrate(conn, [row], customers=True, lines=True, archived=True)
    return order


def _lines(lines: Sequence[ServiceOrderLineInput]) -> list[LineIn]:
    return [LineIn(line.sku, line.quantity, line.unit_price, line.line_no) for line in lines]


async def create_service_order(info: Info, input: CreateServiceOrderInput) -> ServiceOrderPayload:
    order = OrderIn(
        sod_number=input.sod_number,
        customer_id=input.customer_id,
        customer_code=input.customer_code,
        created_at=input.created_at,
        status=input.status.value,
        description=input.description,
        currency=input.currency,
        lines=_lines(input.lines),
    )
    found, errors = await _create_order(info, order)
    return ServiceOrderPayload(service_order=found, errors=errors)


async def _create_order(info: Info, order: OrderIn) -> tuple[ServiceOrder | None, list[UserError]]:
    errors: list[UserError] = []
    order = OrderIn(**{**order.__dict__, "sod_number": order.sod_number.strip(), "currency": order.currency.upper()})
    check_order_fields(order, errors)
    numbered = check_lines(order.lines, errors)
    if errors:
        return None, errors

    async def work(conn: AsyncConnection[Any]) -> ServiceOrder | None:
        async with db.order_transaction(conn):
            found: list[UserError] = []
            customer_id = await resolve_customer(conn, order, found)
            items = await resolve_skus(conn, numbered, found)
            if found or customer_id is None:
                raise Rejected(found)
            lines = [(n, items[line.sku.strip()], line.quantity, line.unit_price) for n, line in numbered]
            await apply_one(
                conn,
                sod_number=order.sod_number,
                created_at=order.created_at,
                customer_id=customer_id,
                status=order.status,
                description=order.description,
                currency=order.currency,
                lines=lines,
                mode="create",
                by=actor(info),
                action="createServiceOrder",
            )
            return await order_payload(conn, info, order.sod_number)

    return await _run(info, work)


@dataclass(frozen=True)
class OrderChange:
    status: str | None = None
    description: str | None = None
    lines: Sequence[LineIn] | None = None
    expected_updated_at: datetime | None = None


async def update_service_order(info: Info, sod_number: str, input: UpdateServiceOrderInput) -> ServiceOrderPayload:
    change = OrderChange(
        status=input.status.value if input.status else None,
        description=input.description,
        lines=_lines(input.lines) if input.lines is not None else None,
        expected_updated_at=input.expected_updated_at,
    )
    found, errors = await _update_order(info, sod_number, change, "updateServiceOrder")
    return ServiceOrderPayload(service_order=found, errors=errors)


async def cancel_service_order(info: Info, sod_number: str) -> ServiceOrderPayload:
    found, errors = await _update_order(info, sod_number, OrderChange(status="CANCELLED"), "cancelServiceOrder")
    return ServiceOrderPayload(service_order=found, errors=errors)


async def _update_order(
    info: Info, sod_number: str, change: OrderChange, action: str
) -> tuple[ServiceOrder | None, list[UserError]]:
    errors: list[UserError] = []
    sod = sod_number.strip()
    if not rules.SOD_NUMBER.fullmatch(sod):
        errors.append(user_error(Code.BAD_USER_INPUT, "sodNumber must be 1-40 of A-Z a-z 0-9 -", "sodNumber"))
    if change.description is not None and len(change.description) > rules.MAX_DESCRIPTION:
        errors.append(
            user_error(
                Code.BAD_USER_INPUT, f"description is longer than {rules.MAX_DESCRIPTION:,} characters", "description"
            )
        )
    numbered = check_lines(change.lines, errors) if change.lines is not None else None
    if errors:
        return None, errors

    async def work(conn: AsyncConnection[Any]) -> ServiceOrder | None:
        async with db.order_transaction(conn):
            # The key's lock first: what is read below cannot change before it is applied.
            if not await db.lock_order(conn, sod):
                raise Rejected([user_error(Code.NOT_FOUND, f"no order has SOD number {sod!r}", "sodNumber")])
            row = await orders_db.order_by_sod_number(conn, sod)
            if row is None:
                raise Rejected([user_error(Code.NOT_FOUND, f"no order has SOD number {sod!r}", "sodNumber")])
            if numbered is None:
                lines = [tuple(r) for r in await db.current_lines(conn, row.id, row.created_at)]
            else:
                found: list[UserError] = []
                items = await resolve_skus(conn, numbered, found)
                if found:
                    raise Rejected(found)
                lines = [(n, items[line.sku.strip()], line.quantity, line.unit_price) for n, line in numbered]
            await apply_one(
                conn,
                sod_number=sod,
                created_at=row.created_at,
                customer_id=row.customer_id,
                status=change.status or row.status,
                description=change.description if change.description is not None else row.description,
                currency=row.currency,
                lines=lines,
                mode="upsert",
                by=actor(info),
                action=action,
                expected_updated_at=change.expected_updated_at,
            )
            return await order_payload(conn, info, sod)

    return await _run(info, work)


async def _run(info: Info, work: Any) -> tuple[Any, list[UserError]]:
    """Run a mutation's work on the primary; Rejected becomes payload errors."""
    from nexes.jobs.search import after_commit  # importing nexes.jobs configures the broker

    try:
        return after_commit(await info.context.router.write(work)), []
    except Rejected as exc:
        return None, exc.errors


async def create_customer(info: Info, input: CreateCustomerInput) -> CustomerPayload:
    found, errors = await _create_customer(info, input.code.strip(), input.name.strip())
    return CustomerPayload(customer=found, errors=errors)


async def _create_customer(info: Info, code: str, name: str) -> tuple[Customer | None, list[UserError]]:
    errors: list[UserError] = []
    if not rules.CUSTOMER_CODE.fullmatch(code):
        errors.append(user_error(Code.BAD_USER_INPUT, "code must be 1-40 of A-Z a-z 0-9 -", "code"))
    if not 1 <= len(name) <= 200:
        errors.append(user_error(Code.BAD_USER_INPUT, "name must be 1-200 characters", "name"))
    if errors:
        return None, errors

    async def work(conn: AsyncConnection[Any]) -> Customer:
        async with conn.transaction():
            row, made = await db.create_customer(conn, code, name, by=actor(info))
            if not made and row.name != name:
                message = f"customer {code} exists with the name {row.name!r}"
                raise Rejected([user_error(Code.DUPLICATE_CONFLICT, message, "code")])
            return to_customer(row)

    return await _run(info, work)


async def create_stock_item(info: Info, input: CreateStockItemInput) -> StockItemPayload:
    found, errors = await _create_stock_item(info, input.sku.strip(), input.name.strip(), input.on_hand)
    return StockItemPayload(stock_item=found, errors=errors)


async def _create_stock_item(info: Info, sku: str, name: str, on_hand: int) -> tuple[StockItem | None, list[UserError]]:
    errors: list[UserError] = []
    if not rules.SKU.fullmatch(sku):
        errors.append(user_error(Code.BAD_USER_INPUT, "sku must be 1-40 of A-Z a-z 0-9 . _ -", "sku"))
    if not 1 <= len(name) <= 200:
        errors.append(user_error(Code.BAD_USER_INPUT, "name must be 1-200 characters", "name"))
    if not 0 <= on_hand <= 1_000_000_000:
        errors.append(
            user_error(Code.BAD_USER_INPUT, "onHand (the opening balance) must be 0 to 1,000,000,000", "onHand")
        )
    if errors:
        return None, errors

    async def work(conn: AsyncConnection[Any]) -> StockItem:
        async with conn.transaction():
            row, made, opening = await db.create_stock_item(conn, sku, name, on_hand, by=actor(info))
            if not made and (row.name != name or opening != on_hand):
                message = f"stock item {sku} exists with the name {row.name!r} and opening balance {opening}"
                raise Rejected([user_error(Code.DUPLICATE_CONFLICT, message, "sku")])
            return to_stock_item(row)

    return await _run(info, work)


async def receive_stock(info: Info, sku: str, quantity: int, reference: str) -> StockItemPayload:
    found, errors = await _receive_stock(info, sku.strip(), quantity, reference.strip())
    return StockItemPayload(stock_item=found, errors=errors)


async def _receive_stock(
    info: Info, sku: str, quantity: int, reference: str
) -> tuple[StockItem | None, list[UserError]]:
    errors: list[UserError] = []
    if not 1 <= quantity <= 1_000_000_000:
        errors.append(user_error(Code.BAD_USER_INPUT, "quantity must be 1 to 1,000,000,000", "quantity"))
    if not REFERENCE.fullmatch(reference):
        errors.append(
            user_error(Code.BAD_USER_INPUT, "reference must be 1-100 printable characters without spaces", "reference")
        )
    if errors:
        return None, errors

    async def work(conn: AsyncConnection[Any]) -> StockItem:
        async with conn.transaction():
            found = await db.stock_item_ids_by_sku(conn, [sku]) if rules.SKU.fullmatch(sku) else {}
            if sku not in found:
                raise Rejected([user_error(Code.UNKNOWN_SKU, f"no stock item has SKU {sku[:40]!r}", "sku")])
            _, earlier = await db.receive_stock(conn, found[sku], quantity, reference, by=actor(info))
            if earlier is not None and earlier != (found[sku], quantity):
                message = f"reference {reference!r} was already used for another receipt (another item or quantity)"
                raise Rejected([user_error(Code.DUPLICATE_CONFLICT, message, "reference")])
            return to_stock_item(await db.stock_item(conn, found[sku]))

    return await _run(info, work)


async def reconcile_dashboard(info: Info) -> ReconcilePayload:
    """Send the reconciliation actor (admins only); its findings land in stat_drift."""
    errors = await _send_reconcile(info)
    return ReconcilePayload(queued=not errors, errors=errors)


async def _send_reconcile(info: Info) -> list[UserError]:
    if not info.context.viewer.is_admin:  # the permission table refuses others first; kept as a backstop
        return [user_error(Code.FORBIDDEN, "reconcileDashboard needs the admin role")]
    # Imported on first use: importing nexes.jobs configures the broker (a Redis client),
    # which an API process that never enqueues does not need.
    from nexes.jobs.maintenance import reconcile_stats

    try:
        await send_audited(info, reconcile_stats.send, "reconcileDashboard", "Dashboard", "dashboard_stat")
    except Exception as exc:  # the broker is down: say so, the caller may retry
        log.warning("reconcileDashboard: could not enqueue (%s)", exc)
        return [user_error(Code.SERVICE_UNAVAILABLE, "the job queue is unreachable; retry shortly")]
    return []

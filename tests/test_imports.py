"""Imports end to end on the real primary: uploads stored the way `nexes import` stores
them, run by the worker's own code (`import_runner.run`, in-process, no broker), and
checked in the database: orders, lines, ledger, on-hand, counts, errors, invariants.

Each test uses SOD numbers of its own prefix in one module database, so tests that
compare on-hand figures measure differences around their own imports.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import threading
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import psycopg
import pytest

from bench.gen_import import generate_csv
from nexes.db import imports_apply as import_apply
from nexes.db.invariants import check_all
from nexes.imports.parse import COLUMNS
from nexes.jobs import imports_runner as import_runner
from nexes.resolvers.ids import global_id
from nexes.settings import Settings
from tests.conftest import client_for, gql
from tests.support.databases import (
    own_database,
    superuser_url,
)
from tests.support.imports import (
    CREATED_AT,
    HEADER,
    csv_bytes,
    job_row,
    line,
    store,
    store_async,
)

OPENING = 1_000_000  # every seeded stock item's opening balance


# -- fixtures and helpers ------------------------------------------------------------


@pytest.fixture(scope="module")
def import_db(template_settings: Settings, test_db_name: str) -> Iterator[Settings]:
    """A database of this module's own, seeded small (200 customers, SKU-00001..SKU-00050)."""
    with own_database(template_settings, f"{test_db_name}_imports"[:63], orders=100) as settings:
        yield settings


@pytest.fixture
def db_settings(import_db: Settings) -> Settings:
    return import_db


def run_file(settings: Settings, data: bytes, filename: str = "orders.csv") -> tuple[int, str]:
    job = store(settings, data, filename)
    return job, import_runner.run(job, settings)


def counts(db: psycopg.Connection, job: int) -> tuple[str, int, int, int, int]:
    j = job_row(db, job)
    return j["status"], j["inserted"], j["updated"], j["unchanged"], j["failed"]


def errors(db: psycopg.Connection, job: int) -> list[tuple[int, str | None, str | None, str]]:
    rows = db.execute(
        "SELECT row_no, sod_number, column_name, code FROM import_error WHERE job_id = %s ORDER BY row_no, id",
        [job],
    ).fetchall()
    return [(int(r[0]), r[1], r[2], r[3]) for r in rows]


def raws(db: psycopg.Connection, job: int) -> dict[int, str]:
    rows = db.execute("SELECT row_no, raw FROM import_error WHERE job_id = %s", [job]).fetchall()
    return {int(r[0]): r[1] for r in rows}


def ledger(db: psycopg.Connection, prefix: str) -> dict[tuple[str, int], int]:
    """Movements summed per (sod_number, line_no) for one test's orders."""
    rows = db.execute(
        "SELECT sod_number, line_no, sum(quantity) FROM stock_movement WHERE sod_number LIKE %s GROUP BY 1, 2",
        [prefix + "%"],
    ).fetchall()
    return {(r[0], int(r[1])): int(r[2]) for r in rows}


def nonzero(sums: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """Lines of cancelled orders have no movements, or ones that sum to 0."""
    return {k: v for k, v in sums.items() if v}


def movement_count(db: psycopg.Connection, prefix: str) -> int:
    row = db.execute("SELECT count(*) FROM stock_movement WHERE sod_number LIKE %s", [prefix + "%"]).fetchone()
    assert row is not None
    return int(row[0])


def on_hand(db: psycopg.Connection) -> dict[str, int]:
    return {r[0]: int(r[1]) for r in db.execute("SELECT sku, on_hand FROM stock_item").fetchall()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {sku: after[sku] - before[sku] for sku in after if after[sku] != before.get(sku, 0)}


def orders(db: psycopg.Connection, prefix: str) -> dict[str, tuple[Any, ...]]:
    """Business data of one test's orders, SOD number without its prefix → fields and lines."""
    rows = db.execute(
        """
        SELECT o.sod_number, o.created_at, c.code, o.status::text, o.description, o.currency, o.total_amount,
               (SELECT array_agg(ARRAY[l.line_no::text, s.sku, l.quantity::text, l.unit_price::text]
                                 ORDER BY l.line_no)
                FROM service_order_line AS l JOIN stock_item AS s ON s.id = l.stock_item_id
                WHERE l.order_id = o.id AND l.created_at = o.created_at)
        FROM service_order AS o JOIN customer AS c ON c.id = o.customer_id
        WHERE o.sod_number LIKE %s
        """,
        [prefix + "%"],
    ).fetchall()
    return {r[0][len(prefix) :]: tuple(r[1:]) for r in rows}


def lines_of(db: psycopg.Connection, sod: str) -> dict[int, tuple[str, int]]:
    rows = db.execute(
        "SELECT l.line_no, s.sku, l.quantity FROM service_order AS o "
        "JOIN service_order_line AS l ON l.order_id = o.id AND l.created_at = o.created_at "
        "JOIN stock_item AS s ON s.id = l.stock_item_id WHERE o.sod_number = %s",
        [sod],
    ).fetchall()
    return {int(r[0]): (r[1], int(r[2])) for r in rows}


def assert_invariants(settings: Settings) -> None:
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        assert check_all(conn) == []


def expected_stock(data: bytes) -> tuple[dict[tuple[str, int], int], dict[str, int]]:
    """From a valid file: each line's ledger target, and each SKU's total change."""
    per_line: dict[tuple[str, int], int] = {}
    per_sku: Counter[str] = Counter()
    for rec in csv.DictReader(io.StringIO(data.decode())):
        q = 0 if rec["status"] == "CANCELLED" else -int(rec["quantity"])
        per_line[(rec["sod_number"], int(rec["line_no"]))] = q
        per_sku[rec["sku"]] += q
    return per_line, {k: v for k, v in per_sku.items() if v}


def generated(tmp_path: Path, orders_: int, prefix: str, *, seed_: int = 1) -> bytes:
    path = tmp_path / f"{prefix}.csv"
    generate_csv(path, orders_, prefix=prefix, seed=seed_, start=CREATED_AT - timedelta(days=60), days=59)
    return path.read_bytes()


# -- 1. every bad input --------------------------------------------------------------


def bad_input_file() -> tuple[bytes, list[tuple[int, str | None, str | None, str]], dict[int, str]]:
    """Good orders G-1..G-3 among one bad order per broken rule, most with a good sibling.

    Returns the file, the expected errors (row, sod, column, code) and the raw text of rows.
    """
    rows: list[str | bytes] = []
    expected: list[tuple[int, str | None, str | None, str]] = []

    def add(text: str | bytes) -> int:
        rows.append(text)
        return len(rows) + 1  # the header is row 1

    def bad_order(sod: str, column: str | None, code: str, bad: str | bytes) -> None:
        sibling = add(line(f"B-{sod}", 1))
        own = add(bad)
        expected.append((sibling, f"B-{sod}", None, "ORDER_REJECTED"))
        expected.append((own, f"B-{sod}", column, code))

    add(line("G-1", 1, quantity=3))
    add(line("G-1", 2, sku="SKU-00002", quantity=1, price="10"))
    # Column rules, one broken per order (the bad line is line 2 of its order).
    cases: list[tuple[str, str, str, dict[str, Any]]] = [
        ("NAIVE", "created_at", "BAD_USER_INPUT", {"created_at": "2026-03-01T09:30:00"}),
        ("GARBAGE", "created_at", "BAD_USER_INPUT", {"created_at": "yesterday"}),
        ("CUST", "customer_code", "UNKNOWN_CUSTOMER", {"customer": "C999999"}),
        ("STATUS", "status", "BAD_USER_INPUT", {"status": "SHIPPED"}),
        ("DESC", "description", "BAD_USER_INPUT", {"description": "x" * 2001}),
        ("CUR", "currency", "BAD_USER_INPUT", {"currency": "EURO"}),
        ("LINE0", "line_no", "BAD_USER_INPUT", {"line_no": 0}),
        ("LINE1000", "line_no", "BAD_USER_INPUT", {"line_no": 1000}),
        ("SKU", "sku", "UNKNOWN_SKU", {"sku": "SKU-99999"}),
        ("QTY0", "quantity", "BAD_USER_INPUT", {"quantity": 0}),
        ("QTYBIG", "quantity", "BAD_USER_INPUT", {"quantity": 1_000_001}),
        ("QTYFRAC", "quantity", "BAD_USER_INPUT", {"quantity": "1.5"}),
        ("NEG", "unit_price", "BAD_USER_INPUT", {"price": "-1.00"}),
        ("CENTS3", "unit_price", "BAD_USER_INPUT", {"price": "1.005"}),
        ("NAN", "unit_price", "BAD_USER_INPUT", {"price": "NaN"}),
    ]
    for sod, column, code, change in cases:
        fields = {"line_no": 2, **change}
        line_no = fields.pop("line_no")
        if column == "customer_code":  # every line of an order names its customer
            expected.append((add(line(f"B-{sod}", 1, **fields)), f"B-{sod}", column, code))
            expected.append((add(line(f"B-{sod}", line_no, **fields)), f"B-{sod}", column, code))
        else:
            bad_order(sod, column, code, line(f"B-{sod}", line_no, **fields))
    # An order created in no live quarter: every row gets the code, on created_at.
    far = "2150-01-01T00:00:00+00:00"
    for n in (1, 2):
        expected.append((add(line("B-FAR", n, created_at=far)), "B-FAR", "created_at", "CREATED_AT_OUT_OF_RANGE"))
    # One line number twice with different content, and order fields that differ.
    for text in (line("B-DUP", 1), line("B-DUP", 1, quantity=5), line("B-DUP", 2)):
        expected.append((add(text), "B-DUP", None, "DUPLICATE_CONFLICT"))
    for text in (line("B-DUPF", 1), line("B-DUPF", 2, description="Another text")):
        expected.append((add(text), "B-DUPF", None, "DUPLICATE_CONFLICT"))
    # SOD numbers that cannot be read belong to no order: reported alone.
    expected.append((add(line("X" * 41)), None, "sod_number", "BAD_USER_INPUT"))
    expected.append((add(line("BAD_SOD!")), None, "sod_number", "BAD_USER_INPUT"))
    # A row with several broken columns reports each of them.
    both = add(line("B-TWO", 1, quantity=0, price="x"))
    expected += [(both, "B-TWO", "quantity", "BAD_USER_INPUT"), (both, "B-TWO", "unit_price", "BAD_USER_INPUT")]
    # Broken quoting: text after a closing quote; then a quote never closed (its line
    # alone is rejected, the lines after it are read again).
    bad_order("QUOTE", None, "BAD_ROW", line("B-QUOTE", 2, description='"Boiler"x'))
    bad_order("FIELDS", None, "BAD_ROW", line("B-FIELDS", 2) + ",extra")
    # Bytes that are not UTF-8.
    bad_order("BYTES", "description", "BAD_ENCODING", line("B-BYTES", 2).encode().replace(b"Boiler", b"Boi\xffler"))
    add(line("G-2", 1, sku="SKU-00003", quantity=4))
    add(line("G-2", 1, sku="SKU-00003", quantity=4))  # an exact repeat is one line, not a conflict
    unclosed = add(line("B-OPEN", 1, description='"Boiler service'))
    expected.append((unclosed, "B-OPEN", None, "BAD_ROW"))
    expected.append((add(line("B-OPEN", 2)), "B-OPEN", None, "ORDER_REJECTED"))
    add(line("G-3", 1, sku="SKU-00004", quantity=1, status="cancelled"))
    data = HEADER.encode() + b"\n" + b"\n".join(r if isinstance(r, bytes) else r.encode() for r in rows) + b"\n"
    raw = {i + 2: (r.decode("utf-8", "backslashreplace") if isinstance(r, bytes) else r) for i, r in enumerate(rows)}
    return data, sorted(expected), raw


def test_every_bad_input_is_reported_with_its_row_and_code_while_good_orders_land(
    import_db: Settings, db: psycopg.Connection
) -> None:
    data, expected, raw = bad_input_file()
    before = on_hand(db)
    job, result = run_file(import_db, data)
    assert result == "PARTIAL"
    got = errors(db, job)
    assert sorted(set(got)) == expected
    assert len(got) == len(expected), "no row is reported twice with the same code"
    bad_rows = {e[0] for e in expected}
    assert raws(db, job) == {n: raw[n] for n in bad_rows}
    messages = db.execute("SELECT message FROM import_error WHERE job_id = %s", [job]).fetchall()
    assert all(m[0] for m in messages)
    j = job_row(db, job)
    assert (j["inserted"], j["updated"], j["unchanged"]) == (3, 0, 0)
    assert j["failed"] == len(bad_rows), "failed counts rejected rows"
    assert j["processed_rows"] == j["total_rows"] == len(raw)
    assert j["finished_at"] is not None and j["lease_owner"] is None and j["lsn"] is not None
    # The good orders landed, with their stock; no rejected order left anything.
    assert lines_of(db, "G-1") == {1: ("SKU-00001", 3), 2: ("SKU-00002", 1)}
    assert lines_of(db, "G-2") == {1: ("SKU-00003", 4)}
    assert lines_of(db, "G-3") == {1: ("SKU-00004", 1)}
    assert ledger(db, "G-") == {("G-1", 1): -3, ("G-1", 2): -1, ("G-2", 1): -4}
    assert delta(before, on_hand(db)) == {"SKU-00001": -3, "SKU-00002": -1, "SKU-00003": -4}
    keys = db.execute("SELECT count(*) FROM service_order_key WHERE sod_number LIKE 'B-%'").fetchone()
    assert keys == (0,)
    staged = db.execute("SELECT count(*) FROM import_row WHERE job_id = %s", [job]).fetchone()
    assert staged == (0,)
    assert_invariants(import_db)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "the file is empty"),
        (b"\n\n", "the file is empty"),
        (
            b"sod_number,created_at,customer,status,description,currency,line_no,sku,qty,unit_price\nA,B\n",
            "lacks the required column(s) customer_code, quantity",
        ),
        (HEADER.replace("sku", "status").encode() + b"\n", "lacks the required column(s) sku"),
    ],
    ids=["empty", "blank-lines", "wrong-headers", "doubled-header"],
)
def test_a_file_that_cannot_be_read_fails_the_job_with_a_message(
    import_db: Settings, db: psycopg.Connection, data: bytes, fragment: str
) -> None:
    job, result = run_file(import_db, data)
    assert result == "FAILED"
    j = job_row(db, job)
    assert j["status"] == "FAILED"
    assert fragment in j["message"]
    assert (j["inserted"], j["updated"], j["unchanged"], j["failed"]) == (0, 0, 0, 0)
    assert j["finished_at"] is not None and j["lease_owner"] is None
    assert errors(db, job) == []
    assert_invariants(import_db)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return out.getvalue()


def test_a_zip_that_is_not_an_xlsx_fails_the_job(import_db: Settings, db: psycopg.Connection) -> None:
    data = zip_bytes({"orders.csv": csv_bytes(line("Z-1"))})
    job, result = run_file(import_db, data, "orders.xlsx")
    assert result == "FAILED"
    assert "not an XLSX workbook" in job_row(db, job)["message"]
    assert orders(db, "Z-") == {}


def xlsx_bytes(rows: list[list[object]]) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for values in rows:
        sheet.append(values)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def with_cached_value(data: bytes, formula: str, cached: str) -> bytes:
    """Store `cached` as the formula's computed value, as Excel does when it saves
    (openpyxl writes formulas without one)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        parts = {n: archive.read(n) for n in archive.namelist()}
    sheet = parts["xl/worksheets/sheet1.xml"].decode()
    cell = re.compile(rf"(<c r=\"[A-Z]+[0-9]+\"[^>]*>)<f>{re.escape(formula)}</f><v />")
    assert cell.search(sheet)
    parts["xl/worksheets/sheet1.xml"] = cell.sub(rf"\1<f>{formula}</f><v>{cached}</v>", sheet).encode()
    return zip_bytes(parts)


def test_an_xlsx_with_formulas_and_dates_lands_its_good_orders(import_db: Settings, db: psycopg.Connection) -> None:
    when = CREATED_AT.replace(tzinfo=None)  # a date cell has no time zone

    def cells(sod: str, line_no: object, quantity: object, **changes: object) -> list[object]:
        values: dict[str, object] = {
            "sod_number": sod,
            "created_at": when,
            "customer_code": "C000002",
            "status": "OPEN",
            "description": "Annual inspection",
            "currency": "EUR",
            "line_no": line_no,
            "sku": "SKU-00005",
            "quantity": quantity,
            "unit_price": 12.3,
        }
        values.update(changes)
        return [values[c] for c in COLUMNS]

    data = xlsx_bytes(
        [
            list(COLUMNS),
            cells("XL-1", 1, "=1+2"),
            cells("XL-1", 2.0, 1, sku="SKU-00006"),
            cells("XL-2", 1, "=2*2"),  # no computed value stored
            cells("XL-2", 2, 1),
            cells("XL-3", 1, 2, created_at="2026-03-01T09:30"),  # text without an offset
        ]
    )
    data = with_cached_value(data, "1+2", "3")
    before = on_hand(db)
    job, result = run_file(import_db, data, "orders.bin")
    assert result == "PARTIAL"
    assert errors(db, job) == [
        (4, "XL-2", "quantity", "BAD_USER_INPUT"),
        (5, "XL-2", None, "ORDER_REJECTED"),
        (6, "XL-3", "created_at", "BAD_USER_INPUT"),
    ]
    assert all(raw.startswith(("XL-2,", "XL-3,")) for raw in raws(db, job).values())
    assert lines_of(db, "XL-1") == {1: ("SKU-00005", 3), 2: ("SKU-00006", 1)}
    (order,) = orders(db, "XL-1").values()
    assert order[0] == when.replace(tzinfo=UTC)  # an Excel date is taken as UTC
    assert order[5] == Decimal("3") * Decimal("12.30") + Decimal("12.30")
    assert delta(before, on_hand(db)) == {"SKU-00005": -3, "SKU-00006": -1}
    assert counts(db, job) == ("PARTIAL", 1, 0, 0, 3)
    assert_invariants(import_db)


# -- 2. re-imports -------------------------------------------------------------------


def test_reimported_orders_move_exactly_the_differences(import_db: Settings, db: psycopg.Connection) -> None:
    later = (CREATED_AT + timedelta(hours=1)).isoformat()
    first = csv_bytes(
        line("R-1", 1, sku="SKU-00011", quantity=5),
        line("R-1", 2, sku="SKU-00012", quantity=3),
        line("R-1", 3, sku="SKU-00013", quantity=4),
        line("R-2", 1, sku="SKU-00014", quantity=2),
        line("R-2", 2, sku="SKU-00015", quantity=1),
        line("R-3", 1, sku="SKU-00016", quantity=7, status="DRAFT"),
        line("R-4", 1, sku="SKU-00017", quantity=1),
        line("R-5", 1, sku="SKU-00018", quantity=1, status="COMPLETED"),
        line("R-6", 1, sku="SKU-00019", quantity=1, status="IN_PROGRESS"),
        line("R-7", 1, sku="SKU-00020", quantity=6),
    )
    second = csv_bytes(
        line("R-1", 1, sku="SKU-00011", quantity=8, status="IN_PROGRESS"),  # up 3
        line("R-1", 2, sku="SKU-00012", quantity=1, status="IN_PROGRESS"),  # down 2; line 3 removed
        line("R-1", 4, sku="SKU-00021", quantity=2, status="IN_PROGRESS"),  # a new line
        line("R-2", 1, sku="SKU-00014", quantity=2, status="CANCELLED"),
        line("R-2", 2, sku="SKU-00015", quantity=1, status="CANCELLED"),
        line("R-3", 1, sku="SKU-00016", quantity=7, status="DRAFT"),  # identical
        line("R-4", 1, sku="SKU-00017", quantity=9, created_at=later),  # created_at changed
        line("R-5", 1, sku="SKU-00018", quantity=1, status="OPEN"),  # COMPLETED is final
        line("R-6", 1, sku="SKU-00019", quantity=1, status="COMPLETED"),
        line("R-7", 1, sku="SKU-00022", quantity=6),  # another item on the same line
    )
    before = on_hand(db)
    job, result = run_file(import_db, first)
    assert (result, *counts(db, job)[1:]) == ("SUCCEEDED", 7, 0, 0, 0)
    targets, skus = expected_stock(first)
    assert nonzero(ledger(db, "R-")) == nonzero(targets)
    assert delta(before, on_hand(db)) == skus
    unchanged_moves = db.execute("SELECT count(*) FROM stock_movement WHERE sod_number = 'R-3'").fetchone()

    before = on_hand(db)
    job, result = run_file(import_db, second)
    assert result == "PARTIAL"
    assert counts(db, job) == ("PARTIAL", 0, 4, 1, 2)
    assert errors(db, job) == [(8, "R-4", "created_at", "BAD_USER_INPUT"), (9, "R-5", "status", "INVALID_TRANSITION")]
    assert ledger(db, "R-") == {
        ("R-1", 1): -8,
        ("R-1", 2): -1,
        ("R-1", 3): 0,
        ("R-1", 4): -2,
        ("R-2", 1): 0,
        ("R-2", 2): 0,
        ("R-3", 1): -7,
        ("R-4", 1): -1,
        ("R-5", 1): -1,
        ("R-6", 1): -1,
        ("R-7", 1): -6,
    }
    assert delta(before, on_hand(db)) == {
        "SKU-00011": -3,
        "SKU-00012": 2,
        "SKU-00013": 4,
        "SKU-00021": -2,
        "SKU-00014": 2,
        "SKU-00015": 1,
        "SKU-00020": 6,
        "SKU-00022": -6,
    }
    assert lines_of(db, "R-1") == {1: ("SKU-00011", 8), 2: ("SKU-00012", 1), 4: ("SKU-00021", 2)}
    assert lines_of(db, "R-7") == {1: ("SKU-00022", 6)}
    assert db.execute("SELECT count(*) FROM stock_movement WHERE sod_number = 'R-3'").fetchone() == unchanged_moves
    got = orders(db, "R-")
    assert {sod: o[2] for sod, o in got.items()} == {
        "1": "IN_PROGRESS",
        "2": "CANCELLED",
        "3": "DRAFT",
        "4": "OPEN",
        "5": "COMPLETED",
        "6": "COMPLETED",
        "7": "OPEN",
    }
    # The rejected changes left nothing behind.
    assert got["4"][0] == CREATED_AT and lines_of(db, "R-4") == {1: ("SKU-00017", 1)}
    assert got["1"][5] == Decimal("8") * Decimal("49.90") + Decimal("49.90") + Decimal("2") * Decimal("49.90")
    assert_invariants(import_db)


# -- 3. the same file twice ------------------------------------------------------------


def test_the_same_file_twice_changes_nothing_the_second_time(
    import_db: Settings, db: psycopg.Connection, tmp_path: Path
) -> None:
    data = generated(tmp_path, 80, "TWICE")
    before = on_hand(db)
    job, result = run_file(import_db, data)
    assert (result, *counts(db, job)[1:]) == ("SUCCEEDED", 80, 0, 0, 0)
    targets, skus = expected_stock(data)
    assert nonzero(ledger(db, "TWICE-")) == nonzero(targets)
    assert delta(before, on_hand(db)) == skus
    state = (orders(db, "TWICE-"), ledger(db, "TWICE-"), movement_count(db, "TWICE-"), on_hand(db))

    job, result = run_file(import_db, data)
    assert (result, *counts(db, job)[1:]) == ("SUCCEEDED", 0, 0, 80, 0)
    assert (orders(db, "TWICE-"), ledger(db, "TWICE-"), movement_count(db, "TWICE-"), on_hand(db)) == state
    assert_invariants(import_db)


# -- 4. overlapping files at once -----------------------------------------------------


def run_as_actor(settings: Settings, job: int, failures: list[str]) -> str:
    """`run` as the actor runs it: an exception is retried (Dramatiq's Retries), and the
    retry takes the job once the failed run's lease is gone (released or run out)."""
    for _ in range(5):
        try:
            return import_runner.run(job, settings)
        except psycopg.errors.DeadlockDetected as exc:
            failures.append(repr(exc))
            with psycopg.connect(settings.admin_url, autocommit=True) as conn:
                conn.execute("UPDATE import_job SET lease_until = now() WHERE id = %s AND status = 'RUNNING'", [job])
    raise AssertionError(f"job {job} did not finish: {failures}")


def split_orders(data: bytes) -> tuple[str, list[list[str]]]:
    """The file's header line and its lines grouped by order, in file order."""
    text = data.decode().splitlines()
    groups: dict[str, list[str]] = defaultdict(list)
    for raw in text[1:]:
        groups[raw.split(",", 1)[0]].append(raw)
    return text[0], list(groups.values())


def test_overlapping_files_imported_at_once_double_nothing(
    import_db: Settings, db: psycopg.Connection, tmp_path: Path
) -> None:
    union = generated(tmp_path, 150, "OVL", seed_=4)
    header, groups = split_orders(union)
    one = csv_bytes(*(raw for g in groups[:100] for raw in g), header=header)
    two = csv_bytes(*(raw for g in reversed(groups[50:]) for raw in g), header=header)  # other order of rows
    settings = replace(import_db, import_chunk_orders=7)
    jobs = [store(settings, one), store(settings, two)]
    before = on_hand(db)
    results: dict[int, str] = {}
    start = threading.Barrier(2)

    deadlocks: list[str] = []

    def work(job: int) -> None:
        start.wait()
        results[job] = run_as_actor(settings, job, deadlocks)

    threads = [threading.Thread(target=work, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [results.get(job) for job in jobs] == ["SUCCEEDED", "SUCCEEDED"]
    # Stock items are locked in id order, FOR NO KEY UPDATE, as the hot rows' last step
    # (with the foreign keys of 0001, FOR UPDATE deadlocked here about 2 runs in 3).
    assert deadlocks == []
    (a_ins, a_upd, a_same), (b_ins, b_upd, b_same) = (counts(db, job)[1:4] for job in jobs)
    assert (a_ins + b_ins, a_upd + b_upd, a_same + b_same) == (150, 0, 50)
    targets, skus = expected_stock(union)
    assert len(orders(db, "OVL-")) == 150
    assert nonzero(ledger(db, "OVL-")) == nonzero(targets)
    # One movement per line taken, none for a line of a cancelled order: nothing doubled.
    assert movement_count(db, "OVL-") == sum(1 for q in targets.values() if q)
    assert delta(before, on_hand(db)) == skus
    line_count = db.execute(
        "SELECT count(*) FROM service_order_line AS l JOIN service_order_key AS k ON k.id = l.order_id "
        "WHERE k.sod_number LIKE 'OVL-%'"
    ).fetchone()
    assert line_count == (len(targets),)
    assert_invariants(import_db)


# -- 5. the actor delivered twice, and a job taken over -------------------------------


def test_a_job_run_twice_at_once_and_again_after_is_applied_once(
    import_db: Settings, db: psycopg.Connection, tmp_path: Path
) -> None:
    data = generated(tmp_path, 60, "TWO", seed_=5)
    job = store(import_db, data)
    before = on_hand(db)
    results: list[str] = []
    start = threading.Barrier(2)

    def work() -> None:
        start.wait()
        results.append(import_runner.run(job, import_db))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == ["SUCCEEDED", "skipped"]
    state = (job_row(db, job), orders(db, "TWO-"), ledger(db, "TWO-"), movement_count(db, "TWO-"))
    assert import_runner.run(job, import_db) == "skipped"
    assert (job_row(db, job), orders(db, "TWO-"), ledger(db, "TWO-"), movement_count(db, "TWO-")) == state
    assert counts(db, job) == ("SUCCEEDED", 60, 0, 0, 0)
    targets, skus = expected_stock(data)
    assert nonzero(ledger(db, "TWO-")) == nonzero(targets)
    assert delta(before, on_hand(db)) == skus
    assert_invariants(import_db)


def with_bad_rows(data: bytes, prefix: str) -> bytes:
    """A generated file plus a row without a usable SOD number and a rejected order."""
    extra = [line("no such sod!"), line(f"{prefix}-BAD", 1), line(f"{prefix}-BAD", 2, quantity=0)]
    return data + ("\n".join(extra) + "\n").encode()


def outcome(db: psycopg.Connection, job: int, prefix: str) -> tuple[Any, ...]:
    """What a job did, comparable between prefixes: counts, errors, orders, ledger."""
    j = job_row(db, job)
    errs = [(n, sod and sod[len(prefix) :], col, code) for n, sod, col, code in errors(db, job)]
    ledger_ = {(sod[len(prefix) :], n): q for (sod, n), q in ledger(db, prefix).items()}
    jobs = {k: j[k] for k in ("status", "inserted", "updated", "unchanged", "failed", "processed_rows", "total_rows")}
    return jobs, errs, orders(db, prefix), ledger_, movement_count(db, prefix)


def test_a_job_taken_over_after_its_lease_ran_out_ends_as_a_clean_run(
    import_db: Settings, db: psycopg.Connection, tmp_path: Path
) -> None:
    settings = replace(import_db, import_chunk_orders=3)
    clean_job, result = run_file(settings, with_bad_rows(generated(tmp_path, 120, "CLEAN", seed_=6), "CLEAN"))
    assert result == "PARTIAL"
    clean = outcome(db, clean_job, "CLEAN")

    job = store(settings, with_bad_rows(generated(tmp_path, 120, "TAKEN", seed_=6), "TAKEN"))
    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(import_runner.run(job, settings)))
    first.start()
    # Mid-way through the chunks, the worker stalls: its lease runs out and another takes it.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if job_row(db, job)["applied_through"]:
            break
        time.sleep(0.005)
    stolen = db.execute(
        "UPDATE import_job SET lease_owner = 'another-worker', lease_until = now() - interval '1 second' "
        "WHERE id = %s AND status = 'RUNNING' RETURNING applied_through",
        [job],
    ).fetchone()
    first.join(60)
    assert stolen is not None, "the job finished before it could be taken over"
    assert results == ["lease-lost"]
    assert job_row(db, job)["status"] == "RUNNING"
    assert import_runner.run(job, settings) == "PARTIAL"
    assert outcome(db, job, "TAKEN") == clean
    assert import_runner.run(job, settings) == "skipped"
    assert_invariants(import_db)


def _lose_staged_rows(db: psycopg.Connection, job: int) -> int:
    """What a server crash (or a failover) does to the job's staged rows: import_row is
    unlogged and comes back empty. Faked by a DELETE: crashing the shared stack's primary
    (pg_ctl stop -m immediate) would take its replica and every other test with it."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not job_row(db, job)["applied_through"]:
        time.sleep(0.005)
    return db.execute("DELETE FROM import_row WHERE job_id = %s", [job]).rowcount


def test_staged_rows_lost_between_runs_are_staged_again_and_the_job_ends_as_a_clean_run(
    import_db: Settings, db: psycopg.Connection, tmp_path: Path
) -> None:
    settings = replace(import_db, import_chunk_orders=3)
    clean_job, result = run_file(settings, with_bad_rows(generated(tmp_path, 120, "LOSTA", seed_=7), "LOSTA"))
    assert result == "PARTIAL"
    clean = outcome(db, clean_job, "LOSTA")

    job = store(settings, with_bad_rows(generated(tmp_path, 120, "LOSTB", seed_=7), "LOSTB"))
    results: list[str] = []

    def work() -> None:
        try:
            results.append(import_runner.run(job, settings))
        except import_apply.StagedRowsLost:  # a chunk saw the rows gone before the lease
            results.append("rows-lost")

    first = threading.Thread(target=work)
    first.start()
    # Mid-apply the server "crashes": the rows go, and the worker with it (its lease is
    # taken away, so it stops at its next chunk without committing it).
    with db.transaction():
        lost = _lose_staged_rows(db, job)
        db.execute(
            "UPDATE import_job SET lease_owner = 'crashed', lease_until = now() - interval '1 second' WHERE id = %s",
            [job],
        )
    first.join(60)
    assert lost > 0 and results in (["lease-lost"], ["rows-lost"])
    state = job_row(db, job)
    assert state["status"] == "RUNNING" and state["applied_through"]

    assert import_runner.run(job, settings) == "PARTIAL"
    assert outcome(db, job, "LOSTB") == clean
    assert db.execute("SELECT count(*) FROM import_row WHERE job_id = %s", [job]).fetchone() == (0,)
    assert_invariants(import_db)


def test_staged_rows_lost_while_a_worker_applies_fail_the_run_and_the_retry_ends_as_a_clean_run(
    import_db: Settings, db: psycopg.Connection, tmp_path: Path
) -> None:
    """The worker lives on through the "crash" (its pool reconnects): its chunks find no
    rows. It must not checkpoint past orders it never applied, nor call the job done."""
    settings = replace(import_db, import_chunk_orders=3, import_apply_parallel=1)
    clean_job, result = run_file(settings, with_bad_rows(generated(tmp_path, 120, "LOSTC", seed_=8), "LOSTC"))
    assert result == "PARTIAL"
    clean = outcome(db, clean_job, "LOSTC")

    job = store(settings, with_bad_rows(generated(tmp_path, 120, "LOSTD", seed_=8), "LOSTD"))
    failures: list[BaseException] = []

    def work() -> None:
        try:
            failures.append(RuntimeError(f"finished as {import_runner.run(job, settings)}"))
        except Exception as exc:
            failures.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    lost = _lose_staged_rows(db, job)
    worker.join(60)
    assert lost > 0
    assert len(failures) == 1 and "staged rows" in str(failures[0]), failures
    state = job_row(db, job)
    assert state["status"] == "RUNNING" and state["finished_at"] is None
    assert len(orders(db, "LOSTD")) < 120, "every order landed before the rows went: nothing was tested"

    assert import_runner.run(job, settings) == "PARTIAL"
    assert outcome(db, job, "LOSTD") == clean
    assert_invariants(import_db)


def test_a_chunk_killed_mid_pipeline_rolls_back_the_chunks_after_it_and_the_job_resumes(
    import_db: Settings, db: psycopg.Connection, tmp_path: Path
) -> None:
    """Three chunks in flight at once; the server backend of one of them is terminated (a
    real fault: pg_terminate_backend, as a crashed or restarted server would do). No chunk
    after the last checkpoint stays committed, and the retry ends as a run one chunk at a
    time would."""
    sequential = replace(import_db, import_chunk_orders=4, import_apply_parallel=1)
    clean_job, result = run_file(sequential, with_bad_rows(generated(tmp_path, 200, "PLCLEAN", seed_=9), "PLCLEAN"))
    assert result == "PARTIAL"
    clean = outcome(db, clean_job, "PLCLEAN")

    settings = replace(import_db, import_chunk_orders=4, import_apply_parallel=3)
    job = store(settings, with_bad_rows(generated(tmp_path, 200, "PLKILL", seed_=9), "PLKILL"))
    failures: list[BaseException] = []

    def work() -> None:
        try:
            failures.append(RuntimeError(f"finished as {import_runner.run(job, settings)}"))
        except Exception as exc:  # the run must fail: one of its chunks lost its server
            failures.append(exc)

    worker = threading.Thread(target=work)
    killed: list[int] = []
    with psycopg.connect(superuser_url(import_db.admin_url, str(db.info.dbname)), autocommit=True) as su:
        worker.start()
        deadline = time.monotonic() + 60
        while not killed and worker.is_alive() and time.monotonic() < deadline:
            row = su.execute(
                "SELECT pid FROM pg_stat_activity WHERE usename = 'nexes_worker' AND state = 'active' "
                "AND datname = current_database() AND query LIKE %s LIMIT 1",
                ["%CREATE TEMP TABLE w_bounds%"],
            ).fetchone()
            if row and su.execute("SELECT pg_terminate_backend(%s)", [row[0]]).fetchone() == (True,):
                killed.append(row[0])
            time.sleep(0.002)
        worker.join(60)
    assert killed, "no chunk was seen running"
    assert len(failures) == 1 and isinstance(failures[0], psycopg.Error), failures

    state = job_row(db, job)
    assert state["status"] == "RUNNING"
    through = state["applied_through"] or ""
    landed = orders(db, "PLKILL")
    assert all(f"PLKILL{sod}" <= through for sod in landed), "a chunk after the checkpoint stayed committed"
    assert len(landed) == state["inserted"] < 200

    # The failed run gave its lease up: the retry takes the job at once.
    assert import_runner.run(job, settings) == "PARTIAL"
    assert outcome(db, job, "PLKILL") == clean
    assert_invariants(import_db)


def test_a_worker_on_code_newer_than_the_schema_leaves_the_job_queued(
    import_db: Settings, db: psycopg.Connection, tmp_path: Path
) -> None:
    job = store(import_db, generated(tmp_path, 5, "SCHEMA", seed_=3))
    newest = db.execute(
        "DELETE FROM schema_migration WHERE version = (SELECT max(version) FROM schema_migration) "
        "RETURNING version, name, checksum, applied_at"
    ).fetchone()
    assert newest is not None
    try:
        assert import_runner.run(job, import_db) == "schema-behind"
        state = job_row(db, job)
        assert state["status"] == "QUEUED" and state["lease_owner"] is None
        assert orders(db, "SCHEMA") == {}
    finally:
        db.execute("INSERT INTO schema_migration (version, name, checksum, applied_at) VALUES (%s, %s, %s, %s)", newest)
    assert import_runner.run(job, import_db) == "SUCCEEDED"
    assert len(orders(db, "SCHEMA")) == 5


# -- 6. cancel -------------------------------------------------------------------------

CANCEL = """
mutation($id: ID!) {
  cancelImport(id: $id) { importJob { status inserted } errors { code message } }
}"""


async def test_cancel_import_stops_a_running_job_at_its_next_chunk(
    import_db: Settings, db: psycopg.Connection, tmp_path: Path
) -> None:
    settings = replace(import_db, import_chunk_orders=1)
    data = generated(tmp_path, 150, "CNL", seed_=7)
    job = await store_async(settings, data)
    async with client_for(import_db) as client:
        running = asyncio.create_task(asyncio.to_thread(import_runner.run, job, settings))
        for _ in range(3000):
            if job_row(db, job)["inserted"] >= 3:
                break
            await asyncio.sleep(0.005)
        body = await gql(client, CANCEL, {"id": global_id("ImportJob", job)})
        result = await asyncio.wait_for(running, 60)
    payload = body["data"]["cancelImport"]
    assert payload["errors"] == []
    assert payload["importJob"]["status"] == "RUNNING", "a running job is asked to stop, not marked at once"
    assert result == "CANCELLED"
    j = job_row(db, job)
    assert j["status"] == "CANCELLED" and "cancelled" in j["message"]
    assert j["finished_at"] is not None and j["lease_owner"] is None
    # Stopped at the next chunk (of one order): what was applied stays, nothing after.
    assert 3 <= j["inserted"] <= payload["importJob"]["inserted"] + 1 < 150
    assert j["processed_rows"] < j["total_rows"]
    assert len(orders(db, "CNL-")) == j["inserted"]
    staged = db.execute("SELECT count(*) FROM import_row WHERE job_id = %s", [job]).fetchone()
    assert staged == (0,)
    assert import_runner.run(job, settings) == "skipped"
    assert_invariants(import_db)


async def test_cancel_import_of_a_queued_job_means_it_never_runs(import_db: Settings, db: psycopg.Connection) -> None:
    job = await store_async(import_db, csv_bytes(line("CQ-1")))
    async with client_for(import_db) as client:
        body = await gql(client, CANCEL, {"id": global_id("ImportJob", job)})
    assert body["data"]["cancelImport"]["importJob"]["status"] == "CANCELLED"
    assert await asyncio.to_thread(import_runner.run, job, import_db) == "skipped"
    assert job_row(db, job)["status"] == "CANCELLED"
    assert orders(db, "CQ-") == {}


# -- 7. the job over GraphQL -----------------------------------------------------------

JOB = """
query($id: ID!) {
  importJob(id: $id) {
    status processedRows totalRows inserted updated unchanged failed lsn finishedAt
    errors(first: 5) { edges { node { rowNo sodNumber column code message raw } } pageInfo { hasNextPage } }
  }
}"""


async def test_import_job_over_graphql_shows_the_outcome_and_the_rejected_rows(
    import_db: Settings, db: psycopg.Connection
) -> None:
    bad = line("GQ-2", 2, sku="SKU-99999")
    data = csv_bytes(line("GQ-1"), line("GQ-2", 1), bad, line("GQ-3", 1, currency="E1"))
    job = await store_async(import_db, data)
    assert await asyncio.to_thread(import_runner.run, job, import_db) == "PARTIAL"
    async with client_for(import_db) as client:
        body = await gql(client, JOB, {"id": global_id("ImportJob", job)})
    got = body["data"]["importJob"]
    assert {k: got[k] for k in ("status", "processedRows", "totalRows", "inserted", "updated", "unchanged")} == {
        "status": "PARTIAL",
        "processedRows": 4,
        "totalRows": 4,
        "inserted": 1,
        "updated": 0,
        "unchanged": 0,
    }
    assert got["failed"] == 3
    assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", got["lsn"])
    assert datetime.fromisoformat(got["finishedAt"]) <= datetime.now(UTC)
    nodes = [e["node"] for e in got["errors"]["edges"]]
    assert [(n["rowNo"], n["sodNumber"], n["column"], n["code"]) for n in nodes] == [
        (3, "GQ-2", None, "ORDER_REJECTED"),
        (4, "GQ-2", "sku", "UNKNOWN_SKU"),
        (5, "GQ-3", "currency", "BAD_USER_INPUT"),
    ]
    assert nodes[1]["raw"] == bad and "SKU-99999" in nodes[1]["message"]
    assert '"E1"' in nodes[2]["message"]
    assert got["errors"]["pageInfo"]["hasNextPage"] is False
    assert_invariants(import_db)


def test_reimporting_an_order_made_elsewhere_moves_only_the_difference(
    import_db: Settings, db: psycopg.Connection
) -> None:
    """A seeded order (its movements made by the seed, not by order_write) imported with
    one quantity changed: exactly that difference moves."""
    found = db.execute(
        """
        SELECT o.sod_number, o.created_at, c.code, o.status::text, o.description, o.currency,
               array_agg(ARRAY[l.line_no::text, s.sku, l.quantity::text, l.unit_price::text] ORDER BY l.line_no)
        FROM service_order AS o
        JOIN customer AS c ON c.id = o.customer_id
        JOIN service_order_line AS l ON l.order_id = o.id AND l.created_at = o.created_at
        JOIN stock_item AS s ON s.id = l.stock_item_id
        WHERE o.status IN ('OPEN', 'IN_PROGRESS') AND o.description NOT LIKE '%,%' AND o.description NOT LIKE '%"%'
        GROUP BY o.id, o.created_at, c.code HAVING count(*) >= 2
        ORDER BY o.sod_number LIMIT 1
        """
    ).fetchone()
    assert found is not None
    sod, created_at, customer, status, description, currency, seeded = found
    rows = [
        line(
            sod,
            int(n),
            created_at=created_at.isoformat(),
            customer=customer,
            status=status,
            description=description,
            currency=currency,
            sku=sku,
            quantity=int(q) + (5 if i == 0 else 0),
            price=price,
        )
        for i, (n, sku, q, price) in enumerate(seeded)
    ]
    first_sku = seeded[0][1]
    ledger_before = {k: v for k, v in ledger(db, sod).items() if k[0] == sod}
    before = on_hand(db)
    job, result = run_file(import_db, csv_bytes(*rows))
    assert (result, *counts(db, job)[1:]) == ("SUCCEEDED", 0, 1, 0, 0)
    first_line = int(seeded[0][0])
    assert {k: v for k, v in ledger(db, sod).items() if k[0] == sod} == {
        **ledger_before,
        (sod, first_line): ledger_before[(sod, first_line)] - 5,
    }
    assert delta(before, on_hand(db)) == {first_sku: -5}
    assert_invariants(import_db)

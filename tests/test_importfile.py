"""The import file reader: CSV and XLSX parsing and the column rules (no database).

XLSX files are made with openpyxl. openpyxl writes formulas without a computed value
and cannot compute one, so `with_cached_value` edits the sheet XML inside the zip to
add the <v> element Excel would have stored.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from bench.gen_import import generate_csv
from nexes.errors import Code
from nexes.imports.parse import (
    COLUMNS,
    MAX_RECORD_CHARS,
    FileError,
    Row,
    RowError,
    count_hint,
    detect_format,
    read_rows,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"
HEADER = ",".join(COLUMNS)
GOOD = "SOD-1,2026-03-01T09:30:00+01:00,C000001,OPEN,Boiler service,EUR,1,SKU-00001,2,49.9"
GOOD_VALUES = (
    "SOD-1",
    datetime(2026, 3, 1, 8, 30, tzinfo=UTC),
    "C000001",
    "OPEN",
    "Boiler service",
    "EUR",
    1,
    "SKU-00001",
    2,
    Decimal("49.90"),
)


def line(**changes: str) -> str:
    """GOOD with some columns replaced (values are written as given, unquoted)."""
    fields = GOOD.split(",")
    for column, value in changes.items():
        fields[COLUMNS.index(column)] = value
    return ",".join(fields)


def read(data: bytes | str, *, skip: int = 0) -> list[Row]:
    raw = data.encode() if isinstance(data, str) else data
    return list(read_rows(io.BytesIO(raw), skip=skip))


def csv_file(*lines: str, header: str = HEADER, end: str = "\n") -> str:
    return end.join([header, *lines]) + end


def value(row: Row, column: str) -> Any:
    return row.values[COLUMNS.index(column)]


# -- valid rows ----------------------------------------------------------------------


def test_valid_row_yields_normalized_values_and_its_line_number() -> None:
    (row,) = read(csv_file(GOOD))
    assert row == Row(2, GOOD, GOOD_VALUES, [])
    assert value(row, "created_at").utcoffset().total_seconds() == 0


def test_codes_are_trimmed_and_status_and_currency_upper_cased() -> None:
    (row,) = read(csv_file(line(sod_number=" SOD-1 ", status="in_progress", currency="gbp", sku=" SKU-00001")))
    assert row.errors == []
    assert (value(row, "sod_number"), value(row, "status"), value(row, "currency")) == ("SOD-1", "IN_PROGRESS", "GBP")
    assert value(row, "sku") == "SKU-00001"


@pytest.mark.parametrize(
    ("column", "text", "expected"),
    [
        ("sod_number", "A" * 40, "A" * 40),
        ("created_at", "2026-03-01T09:30:00Z", datetime(2026, 3, 1, 9, 30, tzinfo=UTC)),
        ("created_at", "2026-03-01T00:30:00-05:30", datetime(2026, 3, 1, 6, 0, tzinfo=UTC)),
        ("description", "", ""),
        ("description", "x" * 2_000, "x" * 2_000),
        ("line_no", "999", 999),
        ("sku", "a.b_c-9", "a.b_c-9"),
        ("quantity", "1000000", 1_000_000),
        ("unit_price", "0", Decimal("0.00")),
        ("unit_price", "9999999999.99", Decimal("9999999999.99")),
        ("unit_price", ".5", Decimal("0.50")),
    ],
)
def test_values_at_the_edge_of_each_rule_are_accepted(column: str, text: str, expected: object) -> None:
    (row,) = read(csv_file(line(**{column: text})))
    assert row.errors == []
    assert value(row, column) == expected


# -- column rules ------------------------------------------------------------------


BROKEN = [
    ("sod_number", "", "required"),
    ("sod_number", "SOD 1", '"SOD 1"'),
    ("sod_number", "S" * 41, "1 to 40 characters"),
    ("sod_number", "SOD_1", '"SOD_1"'),
    ("created_at", "2026-03-01T09:30:00", "no UTC offset"),
    ("created_at", "01/03/2026 09:30", '"01/03/2026 09:30" is not an ISO-8601'),
    ("created_at", "", "created_at is required"),
    ("customer_code", "", "customer_code is required"),
    ("customer_code", "C 1", '"C 1"'),
    ("status", "SHIPPED", '"SHIPPED" is not one of DRAFT, OPEN, IN_PROGRESS, COMPLETED, CANCELLED'),
    ("description", "d" * 2_001, "2,001 characters long; at most 2,000"),
    ("currency", "EURO", '"EURO" is not an ISO 4217 code'),
    ("currency", "E1R", '"E1R"'),
    ("currency", "XYZ", '"XYZ" is not an ISO 4217 code'),  # three letters, but no currency
    ("line_no", "0", '"0" is not a whole number from 1 to 999'),
    ("line_no", "1000", '"1000"'),
    ("line_no", "1.5", '"1.5"'),
    ("sku", "", "sku is required"),
    ("sku", "SKU/1", '"SKU/1"'),
    ("quantity", "0", '"0" is not a whole number from 1 to 1,000,000'),
    ("quantity", "1000001", '"1000001"'),
    ("quantity", "-3", '"-3"'),
    ("quantity", "2.0", '"2.0"'),
    ("unit_price", "-1.00", "negative"),
    ("unit_price", "1.234", "more than 2 decimal places"),
    ("unit_price", "12345678901", "more than 10 digits"),
    ("unit_price", "NaN", "not a plain decimal"),
    ("unit_price", "Infinity", "not a plain decimal"),
    ("unit_price", "1e3", "not a plain decimal"),
    ("unit_price", "", "unit_price is required"),
]


@pytest.mark.parametrize(("column", "text", "fragment"), BROKEN)
def test_each_broken_column_rule_is_reported_with_row_column_code_and_value(
    column: str, text: str, fragment: str
) -> None:
    rows = read(csv_file(GOOD, line(**{column: text})))
    assert rows[0].errors == []
    bad = rows[1]
    assert bad.row_no == 3
    assert [(e.column, e.code) for e in bad.errors] == [(column, Code.BAD_USER_INPUT)]
    assert fragment in bad.errors[0].message
    assert column in bad.errors[0].message
    assert value(bad, column) is None
    assert [v for c, v in zip(COLUMNS, bad.values, strict=True) if c != column] == [
        v for c, v in zip(COLUMNS, GOOD_VALUES, strict=True) if c != column
    ]


def test_a_long_bad_value_is_quoted_truncated() -> None:
    (row,) = read(csv_file(line(sku="x" * 500 + "!")))
    assert "x" * 60 + "…" in row.errors[0].message
    assert len(row.errors[0].message) < 200


def test_every_broken_column_of_a_row_is_reported() -> None:
    (row,) = read(csv_file(line(created_at="yesterday", status="NEW", quantity="0", unit_price="-1")))
    assert [e.column for e in row.errors] == ["created_at", "status", "quantity", "unit_price"]
    assert {e.code for e in row.errors} == {Code.BAD_USER_INPUT}
    assert value(row, "sod_number") == "SOD-1"


# -- CSV structure -----------------------------------------------------------------


def test_wrong_number_of_fields_is_a_bad_row_that_keeps_its_sod_number() -> None:
    rows = read(csv_file(GOOD + ",extra", GOOD.rsplit(",", 1)[0], GOOD))
    assert [(r.row_no, [(e.column, e.code) for e in r.errors]) for r in rows] == [
        (2, [(None, Code.BAD_ROW)]),
        (3, [(None, Code.BAD_ROW)]),
        (4, []),
    ]
    assert "11 fields; the header has 10" in rows[0].errors[0].message
    assert value(rows[1], "sod_number") == "SOD-1"
    assert rows[1].values[1:] == (None,) * 9


def test_an_unclosed_quote_rejects_only_its_own_line_and_later_rows_come_out() -> None:
    broken = line(sod_number="SOD-2", description='"never closed')
    rows = read(csv_file(GOOD, broken, line(sod_number="SOD-3"), line(sod_number="SOD-4")))
    assert [r.row_no for r in rows] == [2, 3, 4, 5]
    assert [e.code for e in rows[1].errors] == [Code.BAD_ROW]
    message = rows[1].errors[0].message
    assert "opened on line 3 is never closed" in message
    assert "lines 3 to 5" in message
    assert rows[1].raw == broken
    assert value(rows[1], "sod_number") == "SOD-2"
    assert [value(r, "sod_number") for r in rows[2:]] == ["SOD-3", "SOD-4"]
    assert all(r.errors == [] for r in (rows[0], *rows[2:]))


def test_a_stray_quote_paired_with_a_later_quoted_field_names_the_lines_and_loses_none() -> None:
    later = line(sod_number="SOD-5", description='"Smith, John"')
    rows = read(csv_file(line(sod_number="SOD-2", description='bad "quote'), line(description='"oops'), GOOD, later))
    # line 2: a quote inside an unquoted field is text (standard CSV), so that row is fine
    assert rows[0].errors == []
    assert value(rows[0], "description") == 'bad "quote'
    assert rows[1].row_no == 3
    assert "opened on line 3 runs over lines 3 to 5" in rows[1].errors[0].message
    assert [(r.row_no, r.errors) for r in rows[2:]] == [(4, []), (5, [])]
    assert value(rows[3], "description") == "Smith, John"


def test_text_after_a_closing_quote_is_a_bad_row() -> None:
    rows = read(csv_file(line(description='"closed"early'), GOOD))
    assert [e.code for e in rows[0].errors] == [Code.BAD_ROW]
    assert "broken quoting on line 2" in rows[0].errors[0].message
    assert rows[1].errors == []


def test_a_runaway_quote_is_bounded_and_every_later_row_comes_out() -> None:
    count = MAX_RECORD_CHARS // len(GOOD) + 100
    later = [line(sod_number=f"SOD-{n}") for n in range(count)]
    rows = read(csv_file(line(description='"runaway'), *later))
    assert "is never closed" in rows[0].errors[0].message
    assert "to the end of the file" not in rows[0].errors[0].message
    assert len(rows) == count + 1
    assert all(r.errors == [] for r in rows[1:])
    assert rows[-1].row_no == count + 2


def test_quoted_fields_hold_commas_quotes_and_line_breaks() -> None:
    multi = line(description='"Replace valve, flush ""main""\ncircuit\nand test"')
    rows = read(csv_file(multi, GOOD))
    assert value(rows[0], "description") == 'Replace valve, flush "main"\ncircuit\nand test'
    assert rows[0].raw == multi
    assert [r.row_no for r in rows] == [2, 5]
    assert all(r.errors == [] for r in rows)


def test_a_multi_line_record_with_the_wrong_field_count_is_rejected_line_by_line() -> None:
    multi = line(description='"two\nlines"') + ",extra"
    rows = read(csv_file(multi, GOOD))
    assert rows[0].row_no == 2
    assert "closes on line 3, leaving a record of 11 fields instead of 10" in rows[0].errors[0].message
    assert rows[-1].row_no == 4
    assert rows[-1].errors == []


def test_bytes_that_are_not_utf8_give_bad_encoding_and_other_rows_land() -> None:
    data = csv_file(GOOD, line(description="caf\udce9"), GOOD).encode("utf-8", "surrogateescape")
    rows = read(data)
    bad = rows[1]
    assert [(e.column, e.code) for e in bad.errors] == [("description", Code.BAD_ENCODING)]
    assert "caf\\xe9" in bad.raw
    assert "\\xe9" in bad.errors[0].message
    assert value(bad, "description") is None
    assert value(bad, "sod_number") == "SOD-1"
    assert [r.errors for r in (rows[0], rows[2])] == [[], []]
    bad.raw.encode("utf-8")  # storable as text


def test_non_utf8_bytes_in_an_ignored_column_still_flag_the_row() -> None:
    data = csv_file(GOOD + ",\udcff", header=HEADER + ",notes").encode("utf-8", "surrogateescape")
    (row,) = read(data)
    assert [(e.column, e.code) for e in row.errors] == [(None, Code.BAD_ENCODING)]


def test_a_nul_byte_is_bad_encoding() -> None:
    (row,) = read(csv_file(line(description="a\x00b")))
    assert [(e.column, e.code) for e in row.errors] == [("description", Code.BAD_ENCODING)]
    assert "\x00" not in row.raw


def test_utf8_bom_is_ignored() -> None:
    (row,) = read(b"\xef\xbb\xbf" + csv_file(GOOD).encode())
    assert row.values == GOOD_VALUES


def test_crlf_line_endings_are_read_like_lf() -> None:
    multi = line(description='"a\r\nb"')
    rows = read(csv_file(GOOD, multi, GOOD, end="\r\n"))
    assert [(r.row_no, r.raw, r.errors) for r in rows] == [(2, GOOD, []), (3, multi, []), (5, GOOD, [])]
    assert value(rows[1], "description") == "a\r\nb"


def test_blank_lines_are_skipped_and_line_numbers_stay_physical() -> None:
    rows = read(csv_file("", GOOD, "", "", ",,,,,,,,,", GOOD, ""))
    assert [r.row_no for r in rows] == [3, 7]


def test_headers_match_case_insensitively_in_any_order_and_extra_columns_are_ignored() -> None:
    order = list(reversed(COLUMNS))
    header = "notes," + ",".join(f" {c.upper()} " for c in order)
    fields = dict(zip(COLUMNS, GOOD.split(","), strict=True))
    (row,) = read(csv_file("n/a," + ",".join(fields[c] for c in order), header=header))
    assert row.values == GOOD_VALUES
    assert row.errors == []


def test_header_only_yields_no_rows() -> None:
    assert read(csv_file()) == []


@pytest.mark.parametrize("data", [b"", b"\xef\xbb\xbf", b"\n\r\n\n"])
def test_an_empty_file_is_a_file_error(data: bytes) -> None:
    with pytest.raises(FileError, match="empty"):
        read(data)


def test_a_missing_required_column_is_a_file_error_naming_it() -> None:
    header = HEADER.replace("currency", "curr").replace(",sku", ",article")
    with pytest.raises(FileError, match=r"lacks the required column\(s\) currency, sku"):
        read(csv_file(GOOD, header=header))


def test_a_duplicated_column_is_a_file_error_naming_it() -> None:
    with pytest.raises(FileError, match=r"names the column\(s\) status more than once"):
        read(csv_file(GOOD + ",OPEN", header=HEADER + ",Status"))


def test_a_file_without_a_header_is_a_file_error() -> None:
    with pytest.raises(FileError, match="no header row"):
        read(GOOD + "\n" + GOOD + "\n")


def test_skip_resumes_with_exactly_the_remaining_rows() -> None:
    data = csv_file(
        GOOD,
        "",
        line(description='"multi\nline"'),
        line(quantity="0"),
        line(description='"never closed'),
        ",,,,,,,,,",
        GOOD + ",extra",
        line(sod_number="SOD-9"),
    )
    everything = read(data)
    assert len(everything) == 6
    for skip in range(len(everything) + 2):
        assert read(data, skip=skip) == everything[skip:]


def test_a_temporary_file_is_read_and_left_open() -> None:
    import tempfile

    with tempfile.TemporaryFile() as file:
        file.write(csv_file(GOOD, GOOD).encode())
        assert len(list(read_rows(file))) == 2
        assert not file.closed


def test_count_hint_counts_the_data_lines_of_a_csv() -> None:
    assert count_hint(io.BytesIO(csv_file(GOOD, GOOD).encode())) == 2
    assert count_hint(io.BytesIO(csv_file(GOOD, GOOD).rstrip("\n").encode())) == 2
    assert count_hint(io.BytesIO(b"")) == 0


# -- format detection ----------------------------------------------------------------


def xlsx_bytes(rows: list[list[object]]) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    for values in rows:
        sheet.append(values)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def test_format_is_detected_by_content() -> None:
    workbook = xlsx_bytes([list(COLUMNS)])
    assert detect_format(csv_file(GOOD).encode()) == "csv"
    assert detect_format(workbook) == "xlsx"
    assert detect_format(workbook[:64]) == "xlsx"  # the directory is at the end: read_rows checks it


@pytest.mark.parametrize(
    ("head", "fragment"),
    [(b"", "empty"), (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1rest", ".xls"), (b"\xff\xfes\x00o\x00", "UTF-16")],
)
def test_unreadable_formats_are_file_errors(head: bytes, fragment: str) -> None:
    with pytest.raises(FileError, match=re.escape(fragment)):
        detect_format(head)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def test_a_zip_that_is_not_an_xlsx_is_a_file_error() -> None:
    data = zip_bytes({"orders.csv": csv_file(GOOD).encode()})
    with pytest.raises(FileError, match="not an XLSX workbook"):
        detect_format(data)
    with pytest.raises(FileError, match="not an XLSX workbook"):
        read(data)


def test_a_truncated_xlsx_is_a_file_error() -> None:
    data = xlsx_bytes([list(COLUMNS), GOOD.split(",")])
    with pytest.raises(FileError, match="damaged"):
        read(data[: len(data) // 2])


def test_an_xlsx_missing_its_sheet_is_a_file_error() -> None:
    data = xlsx_bytes([list(COLUMNS), GOOD.split(",")])
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        parts = {n: archive.read(n) for n in archive.namelist() if n != "xl/worksheets/sheet1.xml"}
    with pytest.raises(FileError, match=r"damaged: it lists 1 sheet\(s\) but holds 0"):
        read(zip_bytes(parts))


# -- XLSX ---------------------------------------------------------------------------


def with_cached_value(data: bytes, formula: str, cached: str, *, text: bool = False) -> bytes:
    """Store `cached` as the computed value of `formula`, as Excel does on save (a text
    result also marks its cell t="str")."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        parts = {n: archive.read(n) for n in archive.namelist()}
    sheet = parts["xl/worksheets/sheet1.xml"].decode()
    cell = re.compile(rf'(<c r="[A-Z]+[0-9]+")([^>]*>)<f>{re.escape(formula)}</f><v />')
    assert cell.search(sheet)
    kind = ' t="str"' if text else ""
    parts["xl/worksheets/sheet1.xml"] = cell.sub(rf"\1{kind}\2<f>{formula}</f><v>{cached}</v>", sheet).encode()
    return zip_bytes(parts)


def sheet_row(**changes: object) -> list[object]:
    values: list[object] = list(GOOD.split(","))
    for column, v in changes.items():
        values[COLUMNS.index(column)] = v
    return values


def test_xlsx_cells_are_converted_by_column() -> None:
    data = xlsx_bytes(
        [
            ["Notes", *(c.upper() for c in COLUMNS)],
            ["x", *sheet_row(created_at=datetime(2026, 3, 1, 8, 30), line_no=1.0, quantity=2, unit_price=49.9)],
            [None, *sheet_row(sod_number=12345, sku=678.0, unit_price=0.1, created_at="2026-03-01T10:30:00+02:00")],
            [],
            ["  "],
        ]
    )
    first, second = read(data)
    assert (first.row_no, first.values, first.errors) == (2, GOOD_VALUES, [])
    assert first.raw.startswith("x,SOD-1,2026-03-01T08:30:00,C000001,OPEN,Boiler service,EUR,1,")
    assert second.errors == []
    assert (value(second, "sod_number"), value(second, "sku"), value(second, "unit_price")) == (
        "12345",
        "678",
        Decimal("0.10"),
    )
    assert value(second, "created_at") == datetime(2026, 3, 1, 8, 30, tzinfo=UTC)


def test_xlsx_numbers_that_break_a_rule_are_column_errors() -> None:
    data = xlsx_bytes(
        [list(COLUMNS), sheet_row(quantity=3.5, line_no=True, unit_price=1.005, created_at=46082.5, sku="")]
    )
    (row,) = read(data)
    assert [(e.column, e.code) for e in row.errors] == [
        ("created_at", Code.BAD_USER_INPUT),
        ("line_no", Code.BAD_USER_INPUT),
        ("sku", Code.BAD_USER_INPUT),
        ("quantity", Code.BAD_USER_INPUT),
        ("unit_price", Code.BAD_USER_INPUT),
    ]
    assert '"3.5"' in row.errors[3].message
    assert "TRUE/FALSE" in row.errors[1].message


def test_xlsx_formula_with_a_cached_value_is_read_and_without_one_is_an_error() -> None:
    data = xlsx_bytes([list(COLUMNS), sheet_row(quantity="=1+2"), sheet_row(quantity="=2*2", description="=A1")])
    data = with_cached_value(data, "2*2", "4")
    data = with_cached_value(data, "A1", "copied", text=True)
    no_value, cached = read(data)
    assert [(e.column, e.code) for e in no_value.errors] == [("quantity", Code.BAD_USER_INPUT)]
    assert "formula without a computed value" in no_value.errors[0].message
    assert "1+2" in no_value.errors[0].message
    assert cached.errors == []
    assert (value(cached, "quantity"), value(cached, "description")) == (4, "copied")


def test_xlsx_skip_resumes_with_exactly_the_remaining_rows() -> None:
    data = xlsx_bytes([list(COLUMNS), sheet_row(), [], sheet_row(quantity=0), sheet_row(line_no=2)])
    everything = read(data)
    assert [r.row_no for r in everything] == [2, 4, 5]
    for skip in range(4):
        assert read(data, skip=skip) == everything[skip:]


def test_an_xlsx_with_a_header_only_yields_no_rows_and_an_empty_sheet_is_a_file_error() -> None:
    assert read(xlsx_bytes([list(COLUMNS)])) == []
    with pytest.raises(FileError, match="worksheet is empty"):
        read(xlsx_bytes([]))


# -- published samples and the benchmark file -----------------------------------------


def sample_workbook(csv_path: Path) -> bytes:
    """docs/sample-import.xlsx from the CSV sample: created_at as real date cells (UTC)
    except on the first order, numbers as numbers. Regenerate with
    `python -c "from tests.test_importfile import *; write_sample_workbook()"`."""
    with csv_path.open(newline="", encoding="utf-8") as f:
        records = list(csv.reader(f))
    rows: list[list[object]] = [records[0]]
    for record in records[1:]:
        cells: list[object] = list(record)
        if not record[0].endswith("0001"):
            cells[1] = datetime.fromisoformat(record[1]).astimezone(UTC).replace(tzinfo=None)
        cells[6], cells[8], cells[9] = int(record[6]), int(record[8]), float(record[9])
        rows.append(cells)
    return xlsx_bytes(rows)


def write_sample_workbook() -> None:
    (DOCS / "sample-import.xlsx").write_bytes(sample_workbook(DOCS / "sample-import.csv"))


def test_the_published_samples_are_valid_and_say_the_same() -> None:
    with (DOCS / "sample-import.csv").open("rb") as f:
        from_csv = list(read_rows(f))
    with (DOCS / "sample-import.xlsx").open("rb") as f:
        from_xlsx = list(read_rows(f))
    assert len(from_csv) == 12
    assert len({value(r, "sod_number") for r in from_csv}) == 5
    assert all(r.errors == [] for r in from_csv + from_xlsx)
    assert [r.values for r in from_xlsx] == [r.values for r in from_csv]
    sheet = openpyxl.load_workbook(DOCS / "sample-import.xlsx").worksheets[0]
    assert any(isinstance(c.value, datetime) for c in sheet["B"])


def test_the_benchmark_generator_writes_valid_deterministic_orders(tmp_path: Path) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    lines = generate_csv(first, 300, first=7, prefix="T", start=start, days=30, seed=3)
    assert generate_csv(second, 300, first=7, prefix="T", start=start, days=30, seed=3) == lines
    assert first.read_bytes() == second.read_bytes()
    with first.open("rb") as f:
        rows = list(read_rows(f))
    assert len(rows) == lines
    assert 600 < lines < 1_200
    assert all(r.errors == [] for r in rows)
    orders = {value(r, "sod_number") for r in rows}
    assert orders == {f"T-{n:08d}" for n in range(7, 307)}
    assert all(start <= value(r, "created_at") <= datetime(2026, 1, 31, tzinfo=UTC) for r in rows)


def test_row_errors_carry_registry_codes() -> None:
    (row,) = read(csv_file(line(status="?")))
    assert row.errors == [RowError("status", Code.BAD_USER_INPUT, row.errors[0].message)]
    assert row.errors[0].code in set(Code)

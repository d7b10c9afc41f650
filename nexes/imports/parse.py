"""Reading an import file (CSV or XLSX) into validated rows, one per order line.

Pure parsing: the worker stages what `read_rows` yields and applies it set-based.
The rules are the published ones in docs/import-format.md. A broken row is data
(a `Row` with errors); only a file that cannot be read at all raises `FileError`.
"""

from __future__ import annotations

import csv
import functools
import io
import re
import zipfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from operator import itemgetter
from typing import Any, BinaryIO, Literal

from nexes import rules
from nexes.errors import Code

COLUMNS: tuple[str, ...] = (
    "sod_number",
    "created_at",
    "customer_code",
    "status",
    "description",
    "currency",
    "line_no",
    "sku",
    "quantity",
    "unit_price",
)
STATUSES = ("DRAFT", "OPEN", "IN_PROGRESS", "COMPLETED", "CANCELLED")
# A quoted field may hold line breaks, but one unclosed quote must not swallow the
# rest of the file: past this many characters the record is declared broken, and
# reading resumes on the line after the one that opened the quote.
MAX_RECORD_CHARS = 65_536
# No physical line may be longer either: lines are read at most this long, so a file of
# one endless line (no line break in 1 GiB) costs 64 KiB of memory, not gigabytes.
MAX_LINE_CHARS = MAX_RECORD_CHARS

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_BOM = b"\xef\xbb\xbf"
_MEMO_SIZE = 4_096
_SHOWN = 60  # characters of a bad value quoted in a message


@dataclass(slots=True)
class RowError:
    column: str | None
    code: str
    message: str


@dataclass(slots=True)
class Row:
    row_no: int
    raw: str
    values: tuple[Any, ...]
    errors: list[RowError]


class FileError(Exception):
    """The file cannot be read at all; the job fails with `message` (code BAD_FILE), at once:
    reading it again would fail the same way."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


DEFAULT_MAX_CELLS = 64


@dataclass(frozen=True, slots=True)
class Limits:
    """What one file may cost to read (NEXES_XLSX_MAX_*, NEXES_IMPORT_MAX_CELLS_PER_ROW):
    past any of them the file is refused (FileError) before it costs more."""

    xlsx_max_uncompressed_bytes: int = 2 << 30
    xlsx_max_ratio: int = 100
    xlsx_max_shared_strings: int = 2_000_000
    max_cells_per_row: int = DEFAULT_MAX_CELLS


# A member smaller than this is not held to the ratio: tiny parts compress oddly, and cost nothing.
_RATIO_FLOOR = 1 << 20


def detect_format(head: bytes) -> Literal["csv", "xlsx"]:
    """Tell CSV from XLSX by content; `head` is the start of the file (or all of it)."""
    if not head:
        raise FileError("the file is empty: upload a CSV or XLSX file with a header row and order lines")
    if head.startswith(_OLE2_MAGIC):
        raise FileError("this is an old binary Excel file (.xls): save it as .xlsx or as CSV (UTF-8)")
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise FileError("this is UTF-16 text: save the CSV as UTF-8")
    if not head.startswith(_ZIP_MAGIC):
        return "csv"
    # The ZIP directory sits at the end: a head that is the whole file can be
    # checked here, otherwise read_rows checks it on the full file.
    try:
        with zipfile.ZipFile(io.BytesIO(head)) as archive:
            _require_workbook(archive)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError):
        pass  # only a partial head, or damaged: read_rows checks the whole file
    return "xlsx"


def read_rows(file: BinaryIO, *, skip: int = 0, limits: Limits = Limits()) -> Iterator[Row]:
    """Yield the file's data records as validated rows, after the first `skip` of them."""
    file.seek(0)
    kind = detect_format(file.read(8))
    file.seek(0)
    if kind == "xlsx":
        return _file_errors(_xlsx_rows(file, skip, limits))
    return _file_errors(_csv_rows(file, skip, limits.max_cells_per_row))


def _file_errors(rows: Iterator[Row]) -> Iterator[Row]:
    """Whatever else a parser raises is the file's fault too (a zlib error, a parser's
    KeyError, a lying ZIP directory): a FileError, so the job fails once instead of being
    retried. Parsing is pure, so nothing transient can fail in here."""
    try:
        yield from rows
    except FileError:
        raise
    except Exception as exc:
        raise FileError(f"the file cannot be read ({_describe(exc)}); save it again or export CSV") from exc


def count_hint(file: BinaryIO) -> int | None:
    """About how many data records the file holds (physical lines for CSV), for progress."""
    file.seek(0)
    head = file.read(8)
    file.seek(0)
    if head.startswith(_ZIP_MAGIC):
        return None
    lines, last = 0, b"\n"
    while chunk := file.read(1 << 20):
        lines += chunk.count(b"\n")
        last = chunk[-1:]
    file.seek(0)
    return max(lines - (last == b"\n"), 0)


# -- column rules ------------------------------------------------------------------


class _Bad:
    """A broken column: its message (and code) go into a RowError, its value is None."""

    __slots__ = ("code", "message")

    def __init__(self, message: str, code: Code = Code.BAD_USER_INPUT) -> None:
        self.message = message
        self.code = code


def _shown(value: str) -> str:
    text = value if len(value) <= _SHOWN else value[:_SHOWN] + "…"
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return '"' + text.replace("\x00", "\\x00") + '"'


_DIGITS = re.compile(r"[0-9]{1,9}").fullmatch
_PRICE = re.compile(r"0*[0-9]{1,10}(?:\.[0-9]{0,2})?|\.[0-9]{1,2}").fullmatch
_CENT = Decimal("0.01")
_CODE_RULE = '1 to 40 characters of A-Z, a-z, 0-9 and "-"'
_ISO_EXAMPLE = "2026-03-01T09:30:00+01:00"


def _code_rule(column: str, pattern: re.Pattern[str]) -> Callable[[str], object]:
    def check(s: str) -> object:
        s = s.strip()
        if pattern.fullmatch(s):
            return s
        if not s:
            return _Bad(f"{column} is required ({_CODE_RULE})")
        return _Bad(f"{column} {_shown(s)} is not valid: use {_CODE_RULE}")

    return check


def _created_at(s: str) -> object:
    s = s.strip()
    try:
        value = datetime.fromisoformat(s)
    except ValueError:
        if not s:
            return _Bad(f"created_at is required: an ISO-8601 date-time with an offset, e.g. {_ISO_EXAMPLE}")
        return _Bad(f"created_at {_shown(s)} is not an ISO-8601 date-time with an offset, e.g. {_ISO_EXAMPLE}")
    if value.tzinfo is None:
        return _Bad(f"created_at {_shown(s)} has no UTC offset: add one (e.g. +01:00 or Z), as in {_ISO_EXAMPLE}")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return _Bad(f"created_at {_shown(s)} is out of range once converted to UTC")


def _status(s: str) -> object:
    name = s.strip().upper()
    if name in STATUSES:
        return name
    return _Bad(f"status {_shown(s)} is not one of {', '.join(STATUSES)}")


def _description(s: str) -> object:
    if len(s) <= rules.MAX_DESCRIPTION:
        return s
    return _Bad(f"description is {len(s):,} characters long; at most {rules.MAX_DESCRIPTION:,} are allowed")


def _currency(s: str) -> object:
    code = s.strip().upper()
    if rules.is_currency(code):
        return code
    return _Bad(f"currency {_shown(s)} is not an ISO 4217 code, such as EUR or USD")


def _integer(column: str, high: int) -> Callable[[str], object]:
    def check(s: str) -> object:
        t = s.strip()
        if _DIGITS(t) and 1 <= (n := int(t)) <= high:
            return n
        if not t:
            return _Bad(f"{column} is required: a whole number from 1 to {high:,}")
        return _Bad(f"{column} {_shown(s)} is not a whole number from 1 to {high:,}")

    return check


def _sku(s: str) -> object:
    s = s.strip()
    if rules.SKU.fullmatch(s):
        return s
    rule = '1 to 40 characters of A-Z, a-z, 0-9, ".", "_" and "-"'
    if not s:
        return _Bad(f"sku is required ({rule})")
    return _Bad(f"sku {_shown(s)} is not valid: use {rule}")


def _unit_price(s: str) -> object:
    t = s.strip()
    if len(t) <= 40 and _PRICE(t):
        return Decimal(t).quantize(_CENT)
    if not t:
        return _Bad("unit_price is required: a decimal number ≥ 0 with at most 2 decimal places, such as 12.50")
    return _Bad(f"unit_price {_shown(s)} {_price_problem(t)}")


def _price_problem(t: str) -> str:
    if t.startswith("-"):
        return "is negative: a price must be ≥ 0"
    whole, _, fraction = t.partition(".")
    if whole.isdigit() and (not fraction or fraction.isdigit()):
        if len(fraction) > 2:
            return "has more than 2 decimal places"
        return "has more than 10 digits before the decimal point"
    return "is not a plain decimal number ≥ 0 such as 12.50 (no exponent, sign, NaN or Infinity)"


# The export's guard against CSV injection puts a single quote before a text cell that
# begins with =, +, -, @, a tab or a carriage return (after any quotes already there);
# one such quote is dropped here, so an export imports back unchanged.
_NEUTRALISED = re.compile("'+[-=+@\t\r]").match


def _unneutralised(check: Callable[[str], object]) -> Callable[[str], object]:
    def unquoted(s: str) -> object:
        return check(s[1:] if _NEUTRALISED(s) else s)

    return unquoted


_CHECKS: tuple[Callable[[str], object], ...] = (
    _unneutralised(_code_rule("sod_number", rules.SOD_NUMBER)),
    _created_at,
    _unneutralised(_code_rule("customer_code", rules.CUSTOMER_CODE)),
    _status,
    _unneutralised(_description),
    _currency,
    _integer("line_no", rules.MAX_LINES),
    _unneutralised(_sku),
    _integer("quantity", rules.MAX_QUANTITY),
    _unit_price,
)


def _dirty(s: str) -> bool:
    """Whether `s` holds undecodable bytes (as surrogates) or NUL, neither storable as text."""
    if "\x00" in s:
        return True
    if s.isascii():
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


_NOT_TEXT = "holds bytes that are not UTF-8 (or a NUL byte): save the file as UTF-8 text"


def _escaped(s: str) -> str:
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


class _Validator:
    """Checks rows column by column; values already seen are looked up, not re-parsed.

    An order's fields repeat on each of its lines and codes repeat across orders, so
    a small per-column memo (cleared when full, which keeps it bounded) saves most work.
    """

    def __init__(self) -> None:
        # Only valid values are memoized, and none of them is None: None means "not seen".
        self._memos: tuple[dict[str, object], ...] = tuple({} for _ in COLUMNS)

    def row(self, row_no: int, raw: str, texts: Sequence[str]) -> Row:
        values = list(map(dict.get, self._memos, texts))
        if None in values:
            return self._check(row_no, raw, texts, values)
        return Row(row_no, raw, tuple(values), [])

    def _check(self, row_no: int, raw: str, texts: Sequence[str], values: list[object]) -> Row:
        bad = False
        for i, (s, memo, check) in enumerate(zip(texts, self._memos, _CHECKS, strict=True)):
            if values[i] is not None:
                continue
            values[i] = value = check(s)
            if type(value) is _Bad:
                bad = True
                continue
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            memo[s] = value
        if bad:
            return _finish(row_no, raw, values)
        return Row(row_no, raw, tuple(values), [])

    def dirty_row(self, row_no: int, raw: str, texts: Sequence[str]) -> Row:
        """A row with bytes that are not UTF-8 (or NUL): those columns are errors."""
        items: list[object] = []
        for column, s, check in zip(COLUMNS, texts, _CHECKS, strict=True):
            if _dirty(s):
                items.append(_Bad(f"{column} {_shown(s)} {_NOT_TEXT}", Code.BAD_ENCODING))
            else:
                items.append(check(s))
        row = _finish(row_no, _escaped(raw), items)
        if not any(e.code == Code.BAD_ENCODING for e in row.errors):
            message = f"the row {_NOT_TEXT} (in a column Nexes does not read)"
            row.errors.append(RowError(None, Code.BAD_ENCODING, message))
        return row


def _finish(row_no: int, raw: str, items: Sequence[object]) -> Row:
    errors = [
        RowError(column, item.code, item.message)
        for column, item in zip(COLUMNS, items, strict=True)
        if type(item) is _Bad
    ]
    values = tuple(None if type(item) is _Bad else item for item in items)
    return Row(row_no, raw, values, errors)


def _bad_row(row_no: int, raw: str, message: str, sod: object = None) -> Row:
    """A record that is not a row at all; its SOD number is kept when readable so the
    worker can still reject that whole order."""
    sod = sod if isinstance(sod, str) else None
    values = (sod,) + (None,) * (len(COLUMNS) - 1)
    errors = [RowError(None, Code.BAD_ROW, message)]
    if _dirty(raw):
        raw = _escaped(raw)
        errors.append(RowError(None, Code.BAD_ENCODING, f"the row {_NOT_TEXT}"))
    return Row(row_no, raw, values, errors)


def _header_index(names: Sequence[object], where: str) -> tuple[int, ...]:
    """The position of each of COLUMNS in the header; FileError when one is missing or doubled."""
    seen: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        key = str(name if name is not None else "").strip().lstrip("\ufeff").strip().lower()
        seen.setdefault(key, []).append(i)
    found = [c for c in COLUMNS if c in seen]
    expected = ", ".join(COLUMNS)
    if not found:
        raise FileError(f"no header row: {where} must name the columns ({expected}); found {_shown(str(names))}")
    missing = [c for c in COLUMNS if c not in seen]
    if missing:
        raise FileError(f"the header ({where}) lacks the required column(s) {', '.join(missing)}; expected {expected}")
    doubled = [c for c in COLUMNS if len(seen[c]) > 1]
    if doubled:
        raise FileError(f"the header ({where}) names the column(s) {', '.join(doubled)} more than once")
    return tuple(seen[c][0] for c in COLUMNS)


# -- CSV ---------------------------------------------------------------------------


def _chomp(s: str) -> str:
    if s.endswith("\r\n"):
        return s[:-2]
    if s.endswith(("\n", "\r")):
        return s[:-1]
    return s


_Record = tuple[int, str, list[str] | None, str | None]  # line, raw, fields, problem


class _CsvRecords:
    """Splits the text into records with their first line numbers.

    Lines without a quote are split on commas directly (what the csv module would do
    with them, much faster); lines with one go through `csv` in strict mode. Lines
    given back after a broken quote are re-read first, from `_pending`.
    """

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self._pending: deque[str] = deque()
        self.line_no = 0
        self.width = 0  # fields per record, once the header is read

    def __iter__(self) -> Iterator[_Record]:
        lines, pending = self._lines, self._pending
        while True:
            while pending:
                self.line_no += 1
                record = self._record(pending.popleft())
                if record is not None:
                    yield record
            for line in lines:
                self.line_no += 1
                if len(line) > MAX_LINE_CHARS:
                    raise _too_long(self.line_no)
                if '"' in line:
                    record = self._quoted(line)
                    yield record
                    if pending:
                        break
                    continue
                body = line.rstrip("\r\n")
                if body:
                    yield self.line_no, body, body.split(","), None
            else:
                return

    def _take(self) -> str | None:
        line = self._pending.popleft() if self._pending else next(self._lines, None)
        if line is not None:
            self.line_no += 1
            if len(line) > MAX_LINE_CHARS:
                raise _too_long(self.line_no)
        return line

    def _record(self, line: str) -> _Record | None:
        if '"' in line:
            return self._quoted(line)
        body = line.rstrip("\r\n")
        return (self.line_no, body, body.split(","), None) if body else None

    def _quoted(self, first: str) -> _Record:
        start = self.line_no
        taken = [first]
        size = len(first)

        def feed() -> Iterator[str]:
            nonlocal size
            yield first
            while size <= MAX_RECORD_CHARS:
                line = self._take()
                if line is None:
                    return
                taken.append(line)
                size += len(line)
                yield line

        fields: list[str] | None
        try:
            fields, problem = next(csv.reader(feed(), strict=True)), None
        except csv.Error as exc:
            fields, problem = None, str(exc)
        if len(taken) == 1:
            if problem is not None:
                problem = f"broken quoting on line {start} ({problem}): {_QUOTING_RULE}"
            return start, _chomp(first), fields, problem
        end = start + len(taken) - 1
        if fields is not None and (self.width == 0 or len(fields) == self.width):
            return start, _chomp("".join(taken)), fields, None
        # Give the lines back: one bad quote costs its own line, never the ones after it.
        self._pending.extendleft(reversed(taken[1:]))
        self.line_no = start
        if fields is not None:
            what = f"closes on line {end}, leaving a record of {len(fields)} fields instead of {self.width}"
        elif problem is not None and "unexpected end of data" in problem:
            what = f"is never closed (it would run over lines {start} to {end}"
            what += ", to the end of the file)" if size <= MAX_RECORD_CHARS else ")"
        else:
            what = f"runs over lines {start} to {end} and then breaks ({problem})"
        message = (
            f"broken quoting: the quoted field opened on line {start} {what}; line {start} is rejected "
            f"and reading goes on at line {start + 1}. {_QUOTING_RULE}"
        )
        return start, _chomp(first), None, message


def _too_long(line_no: int) -> FileError:
    return FileError(
        f"line {line_no} is longer than {MAX_LINE_CHARS:,} characters, far more than an order line "
        "(a 2,000-character description and nine short fields) can hold: is this the right file?"
    )


_QUOTING_RULE = 'a field holding a comma, quote or line break must be quoted whole, with each inner " doubled'


def _csv_rows(file: BinaryIO, skip: int, max_cells: int = DEFAULT_MAX_CELLS) -> Iterator[Row]:
    file.seek(0)
    if file.read(3) != _BOM:
        file.seek(0)
    text = io.TextIOWrapper(file, encoding="utf-8", errors="surrogateescape", newline="")
    lines = iter(functools.partial(text.readline, MAX_LINE_CHARS + 1), "")  # bounded lines
    try:
        yield from _csv_records(_CsvRecords(lines), skip, max_cells)
    finally:
        text.detach()


def too_many_cells(where: str, cells: int, limit: int) -> FileError:
    return FileError(
        f"{where} has {cells:,} cells; at most {limit} are read (NEXES_IMPORT_MAX_CELLS_PER_ROW): "
        f"the file must hold the columns {', '.join(COLUMNS)}"
    )


def _csv_records(records: _CsvRecords, skip: int, max_cells: int = DEFAULT_MAX_CELLS) -> Iterator[Row]:
    stream = iter(records)
    header = next(stream, None)
    if header is None:
        raise FileError("the file is empty: upload a CSV or XLSX file with a header row and order lines")
    line_no, _, names, problem = header
    if names is None:
        raise FileError(f"the header on line {line_no} cannot be read: {problem}")
    if len(names) > max_cells:
        raise too_many_cells(f"the header (line {line_no})", len(names), max_cells)
    index = _header_index(names, f"line {line_no}")
    width = records.width = len(names)
    pick: Callable[[list[str]], Sequence[str]] | None = None
    if index != tuple(range(width)):
        pick = itemgetter(*index)
    first = index[0]
    validator = _Validator()
    for line_no, raw, fields, problem in stream:
        if fields is not None and len(fields) > max_cells:
            raise too_many_cells(f"line {line_no}", len(fields), max_cells)
        if fields is None or len(fields) != width:
            if skip:
                skip -= 1
                continue
            message = problem or f"line {line_no} has {len(fields or ())} fields; the header has {width}"
            yield _bad_row(line_no, raw, message, _salvage_sod(fields, raw, first))
            continue
        if (not fields[first] or fields[first].isspace()) and all(not f or f.isspace() for f in fields):
            continue  # a blank record, such as ",,,,,,,,," from a spreadsheet
        if skip:
            skip -= 1
            continue
        texts = fields if pick is None else pick(fields)
        if _dirty(raw):
            yield validator.dirty_row(line_no, raw, texts)
        else:
            yield validator.row(line_no, raw, texts)


def _salvage_sod(fields: list[str] | None, raw: str, position: int) -> object:
    """The SOD number of a broken record, when the fields up to it are intact."""
    if fields is None:
        parts = raw.split(",", position + 1)
        if len(parts) <= position or '"' in ",".join(parts[: position + 1]):
            return None
        fields = parts
    if len(fields) <= position:
        return None
    return _CHECKS[0](fields[position])


# -- XLSX --------------------------------------------------------------------------


_SHEET_TAG = re.compile(rb"<(?:\w+:)?sheet\b")


def _require_workbook(archive: zipfile.ZipFile) -> None:
    if "xl/workbook.xml" not in archive.namelist():
        raise FileError("this is a ZIP archive but not an XLSX workbook (it has no xl/workbook.xml)")


def _xlsx_rows(file: BinaryIO, skip: int, limits: Limits = Limits()) -> Iterator[Row]:
    try:
        with zipfile.ZipFile(file) as archive:
            _require_workbook(archive)
            _check_sizes(archive, limits)
            declared = len(_SHEET_TAG.findall(_member(archive, "xl/workbook.xml", limits)))
            _check_shared_strings(archive, limits)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as exc:
        raise FileError(f"the XLSX file is damaged and cannot be opened ({exc})") from exc
    import openpyxl.xml  # imported here: CSV-only workers never pay for it
    from openpyxl import load_workbook

    if not openpyxl.xml.DEFUSEDXML:  # OPENPYXL_DEFUSEDXML=False, or defusedxml missing
        raise FileError("this server cannot read XLSX files safely (defusedxml is off): upload CSV")

    book = _open_book(load_workbook, file, data_only=True)
    if len(book.sheetnames) < declared:  # openpyxl skips a sheet whose part is missing
        book.close()
        raise FileError(f"the XLSX file is damaged: it lists {declared} sheet(s) but holds {len(book.sheetnames)}")
    formulas = _Formulas(lambda: _open_book(load_workbook, file, data_only=False))
    try:
        yield from _sheet_rows(_first_sheet(book), formulas, skip, limits.max_cells_per_row)
    finally:
        book.close()
        formulas.close()


def _check_sizes(archive: zipfile.ZipFile, limits: Limits) -> None:
    """The ZIP directory's sizes against the caps, before anything is decompressed. The
    directory may lie: zipfile never yields more than a member's declared size (and fails
    its CRC check when the data holds more), and _member counts what it decompresses."""
    total = 0
    for info in archive.infolist():
        total += info.file_size
        if total > limits.xlsx_max_uncompressed_bytes:
            raise FileError(
                f"the XLSX file unpacks to more than {limits.xlsx_max_uncompressed_bytes:,} bytes "
                "(NEXES_XLSX_MAX_UNCOMPRESSED_BYTES): split it, or export CSV"
            )
        if info.file_size >= _RATIO_FLOOR and info.file_size > limits.xlsx_max_ratio * max(info.compress_size, 1):
            raise FileError(
                f"the XLSX part {info.filename} unpacks {info.file_size // max(info.compress_size, 1):,} times "
                f"larger than it is stored; at most {limits.xlsx_max_ratio} (NEXES_XLSX_MAX_RATIO): "
                "a workbook saved by a spreadsheet never does that"
            )


def _member(archive: zipfile.ZipFile, name: str, limits: Limits) -> bytes:
    """A small member, read within the size cap however the directory lies."""
    with archive.open(name) as member:
        data = member.read(limits.xlsx_max_uncompressed_bytes + 1)
    if len(data) > limits.xlsx_max_uncompressed_bytes:
        raise FileError(f"the XLSX part {name} unpacks to more than {limits.xlsx_max_uncompressed_bytes:,} bytes")
    return data


_SHARED_STRING = re.compile(rb"<(?:[A-Za-z_][\w.-]{0,31}:)?si[\s/>]")
_SHARED_TAIL = 40  # longer than any match: a tag cut by a block boundary is found in the next


def _check_shared_strings(archive: zipfile.ZipFile, limits: Limits) -> None:
    """Count the shared strings by streaming their part (openpyxl loads them all into a list,
    and the part's own `count` attributes may lie); refuse more than the cap."""
    names = {info.filename for info in archive.infolist()}
    name = next((n for n in ("xl/sharedStrings.xml", "xl/sharedstrings.xml") if n in names), None)
    if name is None:
        return
    count, tail, size = 0, b"", 0
    with archive.open(name) as member:
        while block := member.read(1 << 20):
            size += len(block)
            if size > limits.xlsx_max_uncompressed_bytes:
                raise FileError(
                    f"the XLSX shared strings unpack to more than {limits.xlsx_max_uncompressed_bytes:,} bytes"
                )
            data = tail + block
            end = 0
            for match in _SHARED_STRING.finditer(data):
                count, end = count + 1, match.end()
            tail = data[max(end, len(data) - _SHARED_TAIL) :]  # after the last match: none counted twice
            if count > limits.xlsx_max_shared_strings:
                raise FileError(
                    f"the XLSX file holds more than {limits.xlsx_max_shared_strings:,} distinct texts (shared "
                    "strings; NEXES_XLSX_MAX_SHARED_STRINGS): split it, or export CSV"
                )


def _open_book(load: Callable[..., Any], file: BinaryIO, *, data_only: bool) -> Any:
    file.seek(0)
    try:
        return load(file, read_only=True, data_only=data_only)
    except Exception as exc:  # openpyxl raises many kinds (zip, XML, KeyError) for one cause
        raise FileError(f"the XLSX workbook cannot be read ({_describe(exc)}); save it again or export CSV") from exc


def _describe(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    root: BaseException = exc
    while (below := root.__cause__ or root.__context__) is not None and below is not exc:
        root = below
    # openpyxl words every XML failure alike; the root names it (defusedxml's EntitiesForbidden, say)
    return text if root is exc else f"{text}; cause: {type(root).__name__}"


def _first_sheet(book: Any) -> Iterator[tuple[Any, ...]]:
    if not book.worksheets:
        raise FileError("the workbook has no worksheet: the first sheet must hold the header and the order lines")
    sheet = book.worksheets[0]
    sheet.reset_dimensions()  # a stale <dimension> would otherwise cut rows off silently
    rows = sheet.iter_rows()
    while True:
        try:
            row = next(rows, None)
        except Exception as exc:  # a damaged sheet part fails while it streams
            raise FileError(f"the first worksheet cannot be read ({_describe(exc)}); save it again") from exc
        if row is None:
            return
        yield row


class _Formulas:
    """A second, formula-preserving pass over the sheet, opened only when a cell is empty.

    With data_only=True a formula without a cached value reads as an empty cell; only
    this pass can tell the two apart. It streams in step with the first, so memory
    stays bounded.
    """

    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener = opener
        self._book: Any = None
        self._rows: Iterator[tuple[Any, ...]] | None = None
        self._at = 0
        self._row: tuple[Any, ...] = ()

    def formula(self, row_no: int, column: int) -> str | None:
        if self._rows is None:
            self._book = self._opener()
            self._rows = _first_sheet(self._book)
        while self._at < row_no:
            self._at += 1
            self._row = next(self._rows, ())
        cell = self._row[column] if column < len(self._row) else None
        if cell is not None and cell.data_type == "f":
            return str(cell.value)
        return None

    def close(self) -> None:
        if self._book is not None:
            self._book.close()


def _sheet_rows(
    rows: Iterator[tuple[Any, ...]], formulas: _Formulas, skip: int, max_cells: int = DEFAULT_MAX_CELLS
) -> Iterator[Row]:
    index: tuple[int, ...] | None = None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="")
    for row_no, cells in enumerate(rows, 1):
        if len(cells) > max_cells:
            raise too_many_cells(f"row {row_no} of the first sheet", len(cells), max_cells)
        values = [cell.value for cell in cells]
        if all(v is None or (isinstance(v, str) and not v.strip()) for v in values):
            continue
        if index is None:
            index = _header_index(values, f"row {row_no} of the first sheet")
            continue
        if skip:
            skip -= 1
            continue
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(["" if v is None else _cell_text(v) for v in values])
        yield _sheet_row(row_no, buffer.getvalue(), values, index, formulas)
    if index is None:
        raise FileError("the first worksheet is empty: it must hold a header row and order lines")


def _sheet_row(row_no: int, raw: str, values: list[Any], index: tuple[int, ...], formulas: _Formulas) -> Row:
    items = [_sheet_item(row_no, values, i, position, formulas) for position, i in enumerate(index)]
    return _finish(row_no, _escaped(raw) if _dirty(raw) else raw, items)


def _sheet_item(row_no: int, values: list[Any], i: int, position: int, formulas: _Formulas) -> object:
    column = COLUMNS[position]
    value = values[i] if i < len(values) else None
    if value is None and (formula := formulas.formula(row_no, i)) is not None:
        return _Bad(
            f"{column} is a formula without a computed value ({_shown(formula)}): open and save the file "
            "in Excel so that the value is stored, or paste the values"
        )
    item = _cell_item(column, value)
    if not isinstance(item, str):
        return item
    if _dirty(item):
        return _Bad(f"{column} {_shown(item)} {_NOT_TEXT}", Code.BAD_ENCODING)
    return _CHECKS[position](item)


def _cell_item(column: str, value: object) -> object:
    """A cell as text for the column's rule, or already its value (dates), or an error."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return _Bad(f"{column} is a TRUE/FALSE cell; it must hold {_WANTED[column]}")
    if column == "created_at":
        return _cell_time(value)
    if isinstance(value, float):
        # A float's shortest repr is what the user typed (12.3, not 12.2999...); whole
        # floats (3.0) count as integers for the integer and code columns.
        return str(int(value)) if value.is_integer() and column != "unit_price" else repr(value)
    return _cell_text(value)


def _cell_time(value: object) -> object:
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(), UTC)
    if isinstance(value, time):
        return _Bad(f"created_at is a time of day ({value.isoformat()}) without a date")
    return _cell_text(value)


def _cell_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


_WANTED = {
    "sod_number": "an SOD number",
    "created_at": "a date-time",
    "customer_code": "a customer code",
    "status": "a status name",
    "description": "text",
    "currency": "a currency code",
    "line_no": "a whole number",
    "sku": "a SKU",
    "quantity": "a whole number",
    "unit_price": "a price",
}

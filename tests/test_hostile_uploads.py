"""Hostile uploads on the real stack: the caps (files per multipart request, XLSX size
unpacked, compression ratio, shared strings, cells per row), XML through defusedxml
(billion laughs, external entities), a ZIP directory that lies, a file that breaks the
parser failing once with BAD_FILE, and the CSRF headers uploads accept.

Files are stored as `nexes import` stores them and run by the worker's own code
(`import_runner.run`, in process); a run that returns without raising is one Dramatiq
delivery with no retry (the actor retries only what raises).
"""

from __future__ import annotations

import io
import re
import struct
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import dramatiq
import openpyxl
import openpyxl.xml
import orjson
import psycopg
import pytest

from nexes.imports.parse import COLUMNS
from nexes.jobs import imports_runner as import_runner
from nexes.settings import Settings, load
from tests.conftest import client_for, error_codes
from tests.support.brokers import empty, send, take_message
from tests.support.databases import drop_database, own_database
from tests.support.imports import CSRF, close_worker_pool, csv_bytes, job_key, job_row, line, store
from tests.support.waits import wait_for
from tests.support.workers import app_worker_environ, fresh, start_worker, stop_worker

README = Path(__file__).resolve().parent.parent / "README.md"
BOUNDARY = "hostile-boundary-51"
COLUMNS_ROW = list(COLUMNS)


@pytest.fixture(scope="module")
def upload_db(template_settings: Settings, test_db_name: str) -> Iterator[Settings]:
    with own_database(template_settings, f"{test_db_name}_hostile_up"[:63], orders=20) as settings:
        yield settings


@pytest.fixture
def db_settings(upload_db: Settings) -> Settings:
    return upload_db


def xlsx(rows: list[list[object]]) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for values in rows:
        sheet.append(values)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def rezip(data: bytes, replace_parts: dict[str, bytes], extra: dict[str, bytes] | None = None) -> bytes:
    """The workbook `data` with some parts replaced (and some added), deflated."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, replace_parts.get(info.filename, src.read(info.filename)))
        for name, body in (extra or {}).items():
            dst.writestr(name, body)
    return out.getvalue()


SST_REL = (
    b'<Relationship Id="rIdSst" Target="sharedStrings.xml" '
    b'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings"/></Relationships>'
)
SST_TYPE = (
    b'<Override PartName="/xl/sharedStrings.xml" '
    b'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/></Types>'
)


def with_shared_strings(sst: bytes, sheet: bytes | None = None) -> bytes:
    """A good workbook (openpyxl writes inline strings) given a shared-strings part `sst`,
    registered as Excel registers it; `sheet` replaces the first sheet when given."""
    data = xlsx(good_rows())
    with zipfile.ZipFile(io.BytesIO(data)) as book:
        rels = book.read("xl/_rels/workbook.xml.rels").replace(b"</Relationships>", SST_REL)
        types = book.read("[Content_Types].xml").replace(b"</Types>", SST_TYPE)
    parts = {"xl/_rels/workbook.xml.rels": rels, "[Content_Types].xml": types}
    if sheet is not None:
        parts["xl/worksheets/sheet1.xml"] = sheet
    return rezip(data, parts, {"xl/sharedStrings.xml": sst})


def good_rows() -> list[list[object]]:
    return [COLUMNS_ROW, line("HU-1").split(",")]


def run_bad(settings: Settings, db: psycopg.Connection, data: bytes, fragment: str, name: str = "f.xlsx") -> None:
    """The file fails its job at once: FAILED, BAD_FILE, `fragment` in the message, one attempt."""
    job = store(settings, data, name)
    outcome = import_runner.run(job, settings)  # returns: no exception, so no Dramatiq retry
    row = job_row(db, job)
    (attempts,) = db.execute("SELECT attempts FROM import_job WHERE id = %s", [job]).fetchone() or (None,)
    assert outcome == "FAILED", row
    assert row["message"].startswith("BAD_FILE: "), row
    assert fragment in row["message"], row
    assert attempts == 1
    assert row["lease_owner"] is None and row["finished_at"] is not None


def test_openpyxl_parses_xml_with_defusedxml() -> None:
    assert openpyxl.xml.DEFUSEDXML is True


def test_a_zip_bomb_by_ratio_is_refused_before_it_is_unpacked(upload_db: Settings, db: psycopg.Connection) -> None:
    bomb = rezip(xlsx(good_rows()), {}, {"xl/media/zeros.bin": bytes(50 << 20)})  # 50 MiB of zeros, ~50 KiB stored
    assert len(bomb) < 200_000
    run_bad(upload_db, db, bomb, "NEXES_XLSX_MAX_RATIO")


def test_a_workbook_past_the_uncompressed_cap_is_refused(upload_db: Settings, db: psycopg.Connection) -> None:
    run_bad(replace(upload_db, xlsx_max_uncompressed_bytes=4_000), db, xlsx(good_rows()), "NEXES_XLSX_MAX_UNCOMPRESSED")


def test_a_zip_directory_that_understates_a_size_fails_the_job_once(
    upload_db: Settings, db: psycopg.Connection
) -> None:
    """The central directory says the sheet is 100 bytes: zipfile yields no more than that
    and the CRC check fails, so the lie costs nothing and the job fails once."""
    data = bytearray(xlsx(good_rows()))
    at = data.find(b"PK\x01\x02")
    patched = 0
    while at >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_len] == b"xl/worksheets/sheet1.xml":
            struct.pack_into("<I", data, at + 24, 100)  # uncompressed size
            patched += 1
        at = data.find(b"PK\x01\x02", at + 4)
    assert patched == 1
    run_bad(upload_db, db, bytes(data), "BAD_FILE")


def shared_strings(count: int) -> bytes:
    items = "".join(f"<si><t>text {i}</t></si>" for i in range(count))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" count="1" uniqueCount="1">'
        f"{items}</sst>"
    ).encode()


def test_too_many_shared_strings_are_refused_though_the_part_claims_one(
    upload_db: Settings, db: psycopg.Connection
) -> None:
    capped = replace(upload_db, xlsx_max_shared_strings=25)
    run_bad(capped, db, with_shared_strings(shared_strings(26)), "NEXES_XLSX_MAX_SHARED_STRINGS")
    job = store(capped, with_shared_strings(shared_strings(25)), "ok.xlsx")  # at the cap: read
    assert import_runner.run(job, capped) == "SUCCEEDED", job_row(db, job)


def test_too_many_cells_per_row_is_refused_in_csv_and_xlsx(upload_db: Settings, db: psycopg.Connection) -> None:
    wide_header = ",".join(COLUMNS_ROW + [f"x{i}" for i in range(60)])
    run_bad(upload_db, db, csv_bytes(line("HC-1"), header=wide_header), "NEXES_IMPORT_MAX_CELLS_PER_ROW", "w.csv")
    wide_line = csv_bytes(line("HC-2") + "," * 100)
    run_bad(upload_db, db, wide_line, "line 2 has 110 cells", "w.csv")
    run_bad(upload_db, db, xlsx([COLUMNS_ROW, [*line("HC-3").split(","), *(["x"] * 80)]]), "row 2 of the first sheet")


def test_a_csv_of_one_endless_line_is_refused_with_bounded_memory(upload_db: Settings, db: psycopg.Connection) -> None:
    endless = csv_bytes(line("HL-1")) + b"x," * (8 << 20)  # 16 MiB with no line break
    run_bad(upload_db, db, endless, "line 3 is longer than 65,536 characters", "endless.csv")


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><si><t>&lol9;</t></si></sst>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE worksheet [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>
<row r="1"><c r="A1" t="inlineStr"><is><t>&xxe;</t></is></c></row></sheetData></worksheet>"""


def max_job(db: psycopg.Connection) -> int:
    (job,) = db.execute("SELECT max(id) FROM import_job").fetchone() or (0,)
    return int(job)


def test_a_billion_laughs_workbook_is_refused(upload_db: Settings, db: psycopg.Connection) -> None:
    run_bad(upload_db, db, with_shared_strings(BILLION_LAUGHS), "EntitiesForbidden")


def test_an_external_entity_workbook_is_refused(upload_db: Settings, db: psycopg.Connection) -> None:
    data = rezip(xlsx(good_rows()), {"xl/worksheets/sheet1.xml": EXTERNAL_ENTITY})
    run_bad(upload_db, db, data, "EntitiesForbidden")
    assert "root:" not in job_row(db, max_job(db))["message"]


def test_a_file_that_crashes_the_parser_fails_once_with_bad_file(upload_db: Settings, db: psycopg.Connection) -> None:
    """xl/workbook.xml with a garbage deflate stream: zlib.error, which the parser let out
    before, so the job was retried (Dramatiq, then the sweep) up to 50 times."""
    src = xlsx(good_rows())
    with zipfile.ZipFile(io.BytesIO(src)) as book:
        padded = book.read("xl/workbook.xml") + b"<!--" + b"pad" * 3000 + b"-->"
    data = bytearray(rezip(src, {"xl/workbook.xml": padded}))
    start = data.find(b"xl/workbook.xml") + len(b"xl/workbook.xml")  # the local header's name; data follows
    data[start + 10 : start + 60] = bytes(range(50))
    run_bad(upload_db, db, bytes(data), "while decompressing")


def test_a_good_file_still_imports_under_the_caps(upload_db: Settings, db: psycopg.Connection) -> None:
    job = store(upload_db, xlsx(good_rows()), "ok.xlsx")
    assert import_runner.run(job, upload_db) == "SUCCEEDED", job_row(db, job)


# -- the HTTP edge of uploads ---------------------------------------------------------


def part(name: str, body: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + body + b"\r\n"


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
START = (
    "mutation($a: Upload!, $b: Upload!) { "
    "a: startImport(file: $a) { errors { code } } b: startImport(file: $b) { errors { code } } }"
)


def jobs(settings: Settings) -> int:
    with psycopg.connect(settings.admin_url) as conn:
        (n,) = conn.execute("SELECT count(*) FROM import_job").fetchone() or (0,)
    return int(n)


def forget(settings: Settings, job_id: int) -> None:
    """Take the job's message off the broker's queue, so that no worker of another test runs it."""
    from nexes.jobs import broker

    take_message(broker, "imports", lambda m: m["args"] == [job_id])


async def test_two_files_in_one_multipart_request_are_refused_and_leave_nothing(upload_db: Settings) -> None:
    before = jobs(upload_db)
    data = csv_bytes(line("HM-1"))
    async with client_for(upload_db) as api:
        form = multipart(part("file", data, "a.csv"), part("other", data, "b.csv"))
        raw = await api.post("/api/imports", content=form, headers={**MULTIPART, **CSRF})
        ops = orjson.dumps({"query": START, "variables": {"a": None, "b": None}})
        gql_form = multipart(
            part("operations", ops),
            part("map", b'{"0": ["variables.a"], "1": ["variables.b"]}'),
            part("0", data, "a.csv"),
            part("1", data, "b.csv"),
        )
        graphql = await api.post("/graphql", content=gql_form, headers={**MULTIPART, **CSRF})
    for response in (raw, graphql):
        assert response.status_code == 413, response.text
        assert error_codes(response.json()) == ["PAYLOAD_TOO_LARGE"]
        assert "NEXES_UPLOAD_MAX_FILES" in response.json()["errors"][0]["message"]
    assert jobs(upload_db) == before


@pytest.mark.parametrize(
    "header", ["X-Nexes-CSRF", "Apollo-Require-Preflight", "X-Apollo-Operation-Name", "apollo-require-preflight"]
)
async def test_each_csrf_header_lets_an_upload_in(upload_db: Settings, header: str) -> None:
    async with client_for(upload_db) as api:
        response = await api.post("/api/imports", content=csv_bytes(line("HX-1")), headers={header: "1"})
    assert response.status_code == 202, response.text
    forget(upload_db, job_key(response.json()["id"]))


async def test_an_upload_with_none_of_the_csrf_headers_or_an_empty_one_is_refused(upload_db: Settings) -> None:
    before = jobs(upload_db)
    async with client_for(upload_db) as api:
        bare = await api.post("/api/imports", content=b"a")
        empty = await api.post("/api/imports", content=b"a", headers={"Apollo-Require-Preflight": " "})
        preflight = await api.options(
            "/api/imports",
            headers={
                "Origin": "http://spa.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "apollo-require-preflight,x-apollo-operation-name",
            },
        )
    for response in (bare, empty):
        assert response.status_code == 400
        assert error_codes(response.json()) == ["CSRF_HEADER_REQUIRED"]
        assert "Apollo-Require-Preflight" in response.json()["errors"][0]["message"]
    assert jobs(upload_db) == before
    allowed = preflight.headers.get("access-control-allow-headers", "").lower()
    if preflight.status_code == 200 and allowed:  # CORS is on when origins are configured
        assert "apollo-require-preflight" in allowed and "x-apollo-operation-name" in allowed


def readme_default(variable: str) -> str:
    match = re.search(rf"^\| `{variable}` \| `([^`]*)` \|", README.read_text(), re.MULTILINE)
    assert match, f"{variable} is missing from the README's table"
    return match[1]


def test_the_caps_and_their_defaults_are_in_the_readme() -> None:
    s = load({"NEXES_PRIMARY_URL": "postgresql://h/db", "NEXES_ADMIN_URL": "postgresql://h/db"})
    expected: dict[str, Any] = {
        "NEXES_UPLOAD_MAX_FILES": s.upload_max_files,
        "NEXES_XLSX_MAX_UNCOMPRESSED_BYTES": s.xlsx_max_uncompressed_bytes,
        "NEXES_XLSX_MAX_RATIO": s.xlsx_max_ratio,
        "NEXES_XLSX_MAX_SHARED_STRINGS": s.xlsx_max_shared_strings,
        "NEXES_IMPORT_MAX_CELLS_PER_ROW": s.import_max_cells_per_row,
        "NEXES_BODY_READ_SECONDS": s.body_read_seconds,
        "NEXES_UPLOAD_IDLE_SECONDS": s.upload_idle_seconds,
        "NEXES_REDIS_TIMEOUT": s.redis_timeout,
    }
    for variable, value in expected.items():
        assert type(value)(readme_default(variable)) == value, variable


def test_a_bad_file_is_attempted_once_by_a_real_worker(template_settings: Settings, tmp_path: Path) -> None:
    """Through a real `nexes worker` (Dramatiq: Redis db 7, or RabbitMQ) with the sweep's
    settings: the job ends FAILED with BAD_FILE and is never claimed again."""
    name = "nexes_t_hostile_worker"
    settings = fresh(template_settings, name)
    data = rezip(xlsx(good_rows()), {}, {"xl/media/zeros.bin": bytes(50 << 20)})
    job = store(settings, data, "bomb.xlsx")
    empty(settings)
    worker = start_worker(app_worker_environ(name), tmp_path / "worker.log")
    try:
        message = dramatiq.Message(queue_name="imports", actor_name="run_import", args=(job,), kwargs={}, options={})
        send(settings, message)
        with psycopg.connect(settings.admin_url, autocommit=True) as db:

            def final() -> bool:
                return job_row(db, job)["status"] not in ("QUEUED", "RUNNING")

            assert wait_for(final, 60, 0.1), (tmp_path / "worker.log").read_text()
            time.sleep(3)  # a retry (min backoff 1 s) would have claimed it again by now
            row = job_row(db, job)
            (attempts,) = db.execute("SELECT attempts FROM import_job WHERE id = %s", [job]).fetchone() or (None,)
        assert row["status"] == "FAILED" and row["message"].startswith("BAD_FILE: "), row
        assert attempts == 1
    finally:
        stop_worker(worker)
        empty(settings)
        close_worker_pool()
        drop_database(template_settings.admin_url, name)

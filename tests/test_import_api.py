"""The import API: uploads stored in chunks while they stream, jobs read and cancelled.

No worker runs here, so every enqueued job stays QUEUED; the message itself is taken
back off the broker's queue (Redis, or RabbitMQ under `make test-rabbitmq`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from nexes.db import imports as import_jobs
from nexes.db.connect.conninfo import environ_for_database
from nexes.resolvers.ids import global_id
from nexes.settings import Settings
from tests.conftest import client_for, error_codes, gql
from tests.support.brokers import take_message
from tests.support.imports import CSRF, job_key

BOUNDARY = "nexes-test-boundary-7f3a"
START = (
    "mutation($file: Upload!) { startImport(file: $file) { "
    "importJob { id status filename sizeBytes sha256 requestId processedRows lsn } errors { code message } } }"
)
JOB = "query($id: ID!) { importJob(id: $id) { id status filename sizeBytes sha256 requestId } }"


def payload(size: int, seed: int = 1) -> bytes:
    """Deterministic bytes that do not compress into one repeated chunk."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def part(name: str, body: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if filename:
        head += "Content-Type: application/octet-stream\r\n"
    return head.encode() + b"\r\n" + body + b"\r\n"


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def operations(query: str = START, variables: dict[str, Any] | None = None) -> bytes:
    return orjson.dumps({"query": query, "variables": {"file": None} if variables is None else variables})


def headers(**extra: str) -> dict[str, str]:
    return {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", **CSRF, **extra}


def counts(settings: Settings) -> tuple[int, int]:
    with psycopg.connect(settings.admin_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM import_job), (SELECT count(*) FROM import_upload_chunk)"
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def stored(settings: Settings, key: int) -> tuple[dict[str, Any], bytes]:
    """The job row and the bytes read back through the workers' generator."""
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT status::text, filename, size_bytes, sha256, request_id, trace_context, "
            "expires_at > now() + interval '29 days' AS kept_for_retention "
            "FROM import_job WHERE id = %s",
            [key],
        )
        names = [d.name for d in cur.description or []]
        row = cur.fetchone()
        assert row is not None, f"job {key} is not stored"
        data = b"".join(import_jobs.upload_chunks(conn, key))
    return dict(zip(names, row, strict=True)), data


def queued_message(job_id: int) -> dict[str, Any] | None:
    """The run_import message for `job_id` on the API's broker (taken off it, to leave no trace)."""
    from nexes.jobs import broker

    return take_message(broker, "imports", lambda m: m["actor_name"] == "run_import" and m["args"] == [job_id])


async def test_graphql_multipart_upload_stores_the_exact_bytes_and_queues_the_job(
    app_client: httpx.AsyncClient, seeded: Settings
) -> None:
    data = payload(2_500_000)
    body = multipart(
        part("operations", operations()), part("map", b'{"0": ["variables.file"]}'), part("0", data, "orders.csv")
    )
    response = await app_client.post("/graphql", content=body, headers=headers(**{"X-Request-ID": "upload-req-1"}))
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "upload-req-1"
    result = response.json()["data"]["startImport"]
    assert result["errors"] == []
    job = result["importJob"]
    digest = hashlib.sha256(data).hexdigest()
    assert job["status"] == "QUEUED" and job["requestId"] == "upload-req-1" and job["lsn"] is None
    assert (job["filename"], job["sizeBytes"], job["sha256"]) == ("orders.csv", len(data), digest)
    key = job_key(job["id"])
    row, back = stored(seeded, key)
    assert back == data and hashlib.sha256(back).hexdigest() == digest
    assert row["status"] == "QUEUED" and row["request_id"] == "upload-req-1" and row["kept_for_retention"]
    with psycopg.connect(seeded.admin_url) as conn:
        chunks = conn.execute("SELECT count(*), max(length(data)) FROM import_upload_chunk WHERE job_id = %s", [key])
        assert chunks.fetchone() == (3, 1 << 20)  # ~1 MiB chunks
    message = queued_message(key)
    assert message is not None, "run_import was not sent to the imports queue"
    assert message["queue_name"] == "imports" and message["options"]["nexes_request_id"] == "upload-req-1"


async def test_api_imports_takes_a_multipart_file_field(app_client: httpx.AsyncClient, seeded: Settings) -> None:
    data = b"sod_number,created_at\nSOD-1,2025-01-01T00:00:00Z\n"
    body = multipart(part("note", b"ignored"), part("file", data, "first.csv"))
    response = await app_client.post("/api/imports", content=body, headers=headers())
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["status"] == "QUEUED" and response.headers["x-request-id"]
    row, back = stored(seeded, job_key(answer["id"]))
    assert (row["filename"], back, row["sha256"]) == ("first.csv", data, hashlib.sha256(data).hexdigest())
    assert queued_message(job_key(answer["id"])) is not None


async def test_api_imports_takes_a_raw_body_named_by_query_or_content_disposition(
    app_client: httpx.AsyncClient, seeded: Settings
) -> None:
    data = payload(1_200_000, seed=2)
    by_query = await app_client.post("/api/imports?filename=raw.csv", content=data, headers=CSRF)
    assert by_query.status_code == 202, by_query.text
    row, back = stored(seeded, job_key(by_query.json()["id"]))
    assert (row["filename"], row["size_bytes"], back) == ("raw.csv", len(data), data)
    disposition = {**CSRF, "Content-Disposition": 'attachment; filename="C:\\\\exports\\\\named.xlsx"'}
    by_header = await app_client.post("/api/imports", content=b"x", headers=disposition)
    assert by_header.status_code == 202, by_header.text
    assert stored(seeded, job_key(by_header.json()["id"]))[0]["filename"] == "named.xlsx"
    for answer in (by_query, by_header):
        queued_message(job_key(answer.json()["id"]))


async def test_an_empty_upload_is_stored_for_the_worker_to_fail(
    app_client: httpx.AsyncClient, seeded: Settings
) -> None:
    response = await app_client.post("/api/imports", content=b"", headers=CSRF)
    assert response.status_code == 202, response.text
    key = job_key(response.json()["id"])
    row, back = stored(seeded, key)
    assert (row["status"], row["size_bytes"], back) == ("QUEUED", 0, b"")
    assert row["sha256"] == hashlib.sha256(b"").hexdigest()
    queued_message(key)


async def test_uploads_without_the_csrf_header_are_refused(app_client: httpx.AsyncClient, seeded: Settings) -> None:
    before = counts(seeded)
    raw = await app_client.post("/api/imports", content=b"a,b\n")
    body = multipart(part("operations", operations()), part("map", b'{"0": ["variables.file"]}'), part("0", b"a"))
    form = await app_client.post("/graphql", content=body, headers={"Content-Type": headers()["Content-Type"]})
    for response in (raw, form):
        assert response.status_code == 400
        assert error_codes(response.json()) == ["CSRF_HEADER_REQUIRED"]
        assert response.json()["errors"][0]["extensions"]["requestId"] == response.headers["x-request-id"]
    assert counts(seeded) == before


async def chunks_of(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_an_upload_past_the_limit_is_413_and_leaves_nothing(seeded: Settings) -> None:
    limit = 3 * (1 << 20) + 100
    small = dataclasses.replace(seeded, import_max_bytes=limit)
    before = counts(seeded)
    data = payload(4 * (1 << 20), seed=3)
    async with client_for(small) as client:
        # Streamed (no Content-Length): three chunks are stored before the limit is seen.
        raw = await client.post("/api/imports", content=chunks_of(data), headers=CSRF)
        body = multipart(part("operations", operations()), part("map", b'{"0": ["variables.file"]}'), part("0", data))
        form = await client.post("/graphql", content=chunks_of(body), headers=headers())
        # Announced too large: refused before a byte is read.
        announced = await client.post("/api/imports", content=payload(limit + 2_000_000), headers=CSRF)
        # Within the limit still passes, though far past the 1 MB of ordinary requests.
        fits = await client.post("/api/imports", content=chunks_of(payload(limit)), headers=CSRF)
    for response in (raw, form, announced):
        assert response.status_code == 413, response.text
        assert error_codes(response.json()) == ["PAYLOAD_TOO_LARGE"]
    assert fits.status_code == 202, fits.text
    queued_message(job_key(fits.json()["id"]))
    assert counts(seeded) == (before[0] + 1, before[1] + 4)


@pytest.mark.parametrize(
    ("name", "parts", "message"),
    [
        (
            "bad operations JSON",
            [part("operations", b"{not json"), part("map", b'{"0": ["variables.file"]}'), part("0", b"a", "f")],
            "'operations' is not valid JSON",
        ),
        (
            "map names a missing file",
            [
                part("operations", operations(variables={"file": None, "other": None})),
                part("map", b'{"0": ["variables.file"], "1": ["variables.other"]}'),
                part("0", payload(1_500_000), "f.csv"),
            ],
            "'map' names the file '1'",
        ),
        (
            "file before operations",
            [part("0", b"a", "f.csv"), part("operations", operations()), part("map", b'{"0": ["variables.file"]}')],
            "must come before '0'",
        ),
        (
            "map path outside the variables",
            [part("operations", operations()), part("map", b'{"0": ["variables.nothing"]}'), part("0", b"a", "f")],
            "names no element",
        ),
        (
            "file not in map",
            [part("operations", operations()), part("map", b'{"0": ["variables.file"]}'), part("9", b"a", "f")],
            "is not named in 'map'",
        ),
        ("no closing boundary", [part("operations", operations())], "ends before its closing boundary"),
    ],
)
async def test_malformed_graphql_multipart_is_bad_user_input_and_stores_nothing(
    app_client: httpx.AsyncClient, seeded: Settings, name: str, parts: list[bytes], message: str
) -> None:
    before = counts(seeded)
    body = b"".join(parts) if name == "no closing boundary" else multipart(*parts)
    response = await app_client.post("/graphql", content=body, headers=headers())
    assert response.status_code == 400, response.text
    assert error_codes(response.json()) == ["BAD_USER_INPUT"]
    assert message in response.json()["errors"][0]["message"]
    assert counts(seeded) == before


async def test_an_upload_no_operation_uses_is_deleted(app_client: httpx.AsyncClient, seeded: Settings) -> None:
    before = counts(seeded)
    unused = operations("query { importJobs(first: 1) { edges { cursor } } }")
    body = multipart(part("operations", unused), part("map", b'{"0": ["variables.file"]}'), part("0", b"abc", "x"))
    response = await app_client.post("/graphql", content=body, headers=headers())
    assert response.status_code == 200, response.text
    assert "errors" not in response.json()
    invalid = multipart(
        part("operations", operations(START.replace("startImport", "startImports"))),
        part("map", b'{"0": ["variables.file"]}'),
        part("0", b"abc", "x"),
    )
    failed = await app_client.post("/graphql", content=invalid, headers=headers())
    assert error_codes(failed.json()) == ["BAD_USER_INPUT"]
    assert counts(seeded) == before


async def test_one_file_mapped_twice_is_one_job_enqueued_once(app_client: httpx.AsyncClient, seeded: Settings) -> None:
    twice = (
        "mutation($a: Upload!, $b: Upload!) { a: startImport(file: $a) { importJob { id } } "
        "b: startImport(file: $b) { importJob { id } } }"
    )
    body = multipart(
        part("operations", operations(twice, {"a": None, "b": None})),
        part("map", b'{"0": ["variables.a", "variables.b"]}'),
        part("0", b"a,b\n", "x.csv"),
    )
    response = await app_client.post("/graphql", content=body, headers=headers())
    data = response.json()["data"]
    assert data["a"]["importJob"]["id"] == data["b"]["importJob"]["id"]
    key = job_key(data["a"]["importJob"]["id"])
    assert queued_message(key) is not None and queued_message(key) is None


async def test_upload_scalar_refuses_json_values(app_client: httpx.AsyncClient) -> None:
    result = await gql(app_client, START, {"file": "not a file"})
    assert error_codes(result) == ["BAD_USER_INPUT"]
    assert "multipart request" in result["errors"][0]["message"]


def insert_job(settings: Settings, status: str, **columns: Any) -> int:
    values = {"status": status, "filename": f"{status.lower()}.csv", "request_id": "sql-made", **columns}
    query = sql.SQL("INSERT INTO import_job ({}) VALUES ({}) RETURNING id").format(
        sql.SQL(", ").join(map(sql.Identifier, values)), sql.SQL(", ").join(sql.Placeholder() * len(values))
    )
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        row = conn.execute(query, list(values.values())).fetchone()
    assert row is not None
    return int(row[0])


async def test_import_job_reads_lists_by_status_and_resolves_as_node(
    app_client: httpx.AsyncClient, seeded: Settings
) -> None:
    queued = [insert_job(seeded, "QUEUED") for _ in range(3)]
    done = insert_job(
        seeded, "PARTIAL", total_rows=10, processed_rows=10, inserted=7, failed=3, lsn="0/16B3748", finished_at="now"
    )
    uploading = insert_job(seeded, "UPLOADING")
    fields = "id status totalRows processedRows inserted failed lsn finishedAt requestId"
    one = await gql(app_client, f"query($id: ID!) {{ importJob(id: $id) {{ {fields} }} }}", {"id": gid(done)})
    job = one["data"]["importJob"]
    assert (job["status"], job["totalRows"], job["inserted"], job["failed"]) == ("PARTIAL", 10, 7, 3)
    assert job["lsn"] == "0/16B3748" and job["finishedAt"] and job["requestId"] == "sql-made"
    hidden = await gql(app_client, JOB, {"id": gid(uploading)})
    assert hidden["data"]["importJob"] is None
    page = "query($s: ImportJobStatus, $after: String) { importJobs(status: $s, first: 2, after: $after) { edges { cursor node { id status } } pageInfo { hasNextPage endCursor } } }"  # noqa: E501
    first = (await gql(app_client, page, {"s": "QUEUED"}))["data"]["importJobs"]
    ids = [e["node"]["id"] for e in first["edges"]]
    assert ids == [gid(queued[2]), gid(queued[1])] and first["pageInfo"]["hasNextPage"]
    second = (await gql(app_client, page, {"s": "QUEUED", "after": first["pageInfo"]["endCursor"]}))["data"]
    assert second["importJobs"]["edges"][0]["node"]["id"] == gid(queued[0])
    assert all(e["node"]["status"] == "QUEUED" for e in second["importJobs"]["edges"])
    everything = (await gql(app_client, "{ importJobs(first: 100) { edges { node { id status } } } }"))["data"]
    listed = {e["node"]["id"] for e in everything["importJobs"]["edges"]}
    assert gid(done) in listed and gid(uploading) not in listed
    node = await gql(
        app_client, "query($id: ID!) { node(id: $id) { __typename ... on ImportJob { status } } }", {"id": gid(done)}
    )
    assert node["data"]["node"] == {"__typename": "ImportJob", "status": "PARTIAL"}


def gid(key: int) -> str:
    return global_id("ImportJob", key)


async def test_import_job_errors_connection_pages_in_file_order(
    app_client: httpx.AsyncClient, seeded: Settings
) -> None:
    key = insert_job(seeded, "PARTIAL", failed=3, finished_at="now")
    with psycopg.connect(seeded.admin_url, autocommit=True) as conn:
        for row_no, code in ((7, "UNKNOWN_SKU"), (3, "BAD_ROW"), (7, "ORDER_REJECTED")):
            conn.execute(
                "INSERT INTO import_error (job_id, row_no, sod_number, column_name, code, message, raw) "
                "VALUES (%s, %s, 'SOD-9', 'sku', %s, 'bad', %s)",
                [key, row_no, code, f"raw,{row_no}"],
            )
    query = "query($id: ID!, $after: String) { importJob(id: $id) { errors(first: 2, after: $after) { edges { node { rowNo sodNumber column code message raw } } pageInfo { hasNextPage endCursor } } } }"  # noqa: E501
    first = (await gql(app_client, query, {"id": gid(key)}))["data"]["importJob"]["errors"]
    assert [(e["node"]["rowNo"], e["node"]["code"]) for e in first["edges"]] == [(3, "BAD_ROW"), (7, "UNKNOWN_SKU")]
    assert first["edges"][0]["node"] == {
        "rowNo": 3, "sodNumber": "SOD-9", "column": "sku", "code": "BAD_ROW", "message": "bad", "raw": "raw,3"
    }  # fmt: skip
    assert first["pageInfo"]["hasNextPage"]
    after = first["pageInfo"]["endCursor"]
    second = (await gql(app_client, query, {"id": gid(key), "after": after}))["data"]["importJob"]["errors"]
    assert [e["node"]["code"] for e in second["edges"]] == ["ORDER_REJECTED"] and not second["pageInfo"]["hasNextPage"]
    bad = await gql(app_client, query, {"id": gid(key), "after": "garbage"})
    assert error_codes(bad) == ["BAD_CURSOR"]


CANCEL = "mutation($id: ID!) { cancelImport(id: $id) { importJob { id status message finishedAt } errors { code field message } } }"  # noqa: E501


async def test_cancel_import_stops_a_queued_job_and_refuses_a_finished_one(
    app_client: httpx.AsyncClient, seeded: Settings
) -> None:
    queued = insert_job(seeded, "QUEUED")
    cancelled = (await gql(app_client, CANCEL, {"id": gid(queued)}))["data"]["cancelImport"]
    assert cancelled["errors"] == [] and cancelled["importJob"]["status"] == "CANCELLED"
    assert cancelled["importJob"]["finishedAt"]
    again = (await gql(app_client, CANCEL, {"id": gid(queued)}))["data"]["cancelImport"]
    assert [e["code"] for e in again["errors"]] == ["INVALID_TRANSITION"]
    assert "already CANCELLED" in again["errors"][0]["message"]
    finished = insert_job(seeded, "SUCCEEDED", finished_at="now")
    refused = (await gql(app_client, CANCEL, {"id": gid(finished)}))["data"]["cancelImport"]
    assert refused["importJob"]["status"] == "SUCCEEDED"
    assert [(e["code"], e["field"]) for e in refused["errors"]] == [("INVALID_TRANSITION", "id")]
    running = insert_job(seeded, "RUNNING", started_at="now")
    requested = (await gql(app_client, CANCEL, {"id": gid(running)}))["data"]["cancelImport"]
    assert requested["errors"] == [] and requested["importJob"]["status"] == "RUNNING"
    with psycopg.connect(seeded.admin_url) as conn:
        flag = conn.execute("SELECT cancel_requested FROM import_job WHERE id = %s", [running]).fetchone()
    assert flag == (True,)
    missing = (await gql(app_client, CANCEL, {"id": gid(10**12)}))["data"]["cancelImport"]
    assert [e["code"] for e in missing["errors"]] == ["NOT_FOUND"] and missing["importJob"] is None


async def test_a_wrong_type_id_is_bad_user_input(app_client: httpx.AsyncClient) -> None:
    order_id = global_id("ServiceOrder", 1)
    read = await gql(app_client, JOB, {"id": order_id})
    assert error_codes(read) == ["BAD_USER_INPUT"]
    assert read["errors"][0]["extensions"]["field"] == "id"
    cancel = (await gql(app_client, CANCEL, {"id": order_id}))["data"]["cancelImport"]
    assert [(e["code"], e["field"]) for e in cancel["errors"]] == [("BAD_USER_INPUT", "id")]


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    dbname = conninfo_to_dict(settings.admin_url)["dbname"]
    env = environ_for_database(os.environ, str(dbname))
    return subprocess.run(
        [sys.executable, "-m", "nexes.cli", "import", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_nexes_import_cli_stores_the_file_and_waits_with_a_timeout(seeded: Settings, tmp_path: Path) -> None:
    data = payload(2_200_000, seed=4)
    path = tmp_path / "cli-orders.csv"
    path.write_bytes(data)
    done = run_cli(seeded, str(path))
    assert done.returncode == 0, done.stderr
    key = job_key(done.stdout.strip())
    row, back = stored(seeded, key)
    assert (row["status"], row["filename"], back) == ("QUEUED", "cli-orders.csv", data)
    assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["request_id"]
    assert queued_message(key) is not None
    started = time.monotonic()
    waited = run_cli(seeded, str(path), "--wait", "--timeout", "1")  # no worker here: it stays QUEUED
    assert waited.returncode == 2 and "timed out: still QUEUED" in waited.stdout
    assert time.monotonic() - started < 30
    queued_message(job_key(waited.stdout.splitlines()[0]))
    missing = run_cli(seeded, str(tmp_path / "nope.csv"))
    assert missing.returncode == 1 and "not a readable file" in missing.stderr


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def body_blocks(total: int, block: int = 64 * 1024) -> Iterator[bytes]:
    piece = payload(block, seed=5)
    for _ in range(total // block):
        yield piece


async def test_a_50_mb_upload_keeps_memory_flat(seeded: Settings) -> None:
    total = 50 * (1 << 20)

    async def multipart_body() -> AsyncIterator[bytes]:
        yield part("operations", operations()) + part("map", b'{"0": ["variables.file"]}')
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="0"; filename="big.csv"\r\n\r\n'.encode()
        for block in body_blocks(total):
            yield block
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    async with client_for(seeded) as client:
        warm = multipart(part("operations", operations()), part("map", b'{"0": ["variables.file"]}'), part("0", b"a"))
        warmed = await client.post("/graphql", content=warm, headers=headers())  # imports, caches, pool
        warm_key = job_key(warmed.json()["data"]["startImport"]["importJob"]["id"])
        queued_message(warm_key)
        baseline = peak = rss_bytes()
        done = False

        async def sample() -> None:
            nonlocal peak
            while not done:
                peak = max(peak, rss_bytes())
                await asyncio.sleep(0.005)

        sampler = asyncio.create_task(sample())
        started = time.perf_counter()
        response = await client.post("/graphql", content=multipart_body(), headers=headers())
        elapsed = time.perf_counter() - started
        done = True
        await sampler
    assert response.status_code == 200, response.text
    job = response.json()["data"]["startImport"]["importJob"]
    assert job["sizeBytes"] == total
    growth = peak - baseline
    print(f"\n50 MiB upload: {elapsed:.2f}s ({total / elapsed / 1e6:.0f} MB/s), RSS growth {growth / 1e6:.1f} MB")
    assert growth < 20 * (1 << 20), f"RSS grew by {growth / 1e6:.1f} MB for a {total / 1e6:.0f} MB upload"
    key = job_key(job["id"])
    queued_message(key)
    with psycopg.connect(seeded.admin_url, autocommit=True) as conn:
        conn.execute("DELETE FROM import_job WHERE id = %s", [key])

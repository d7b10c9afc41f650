"""Slow clients at the HTTP edge, over real sockets against uvicorn (httptools) serving
the app: an ordinary body that does not arrive whole within NEXES_BODY_READ_SECONDS, and
an upload that pauses longer than NEXES_UPLOAD_IDLE_SECONDS, get 408 REQUEST_TIMEOUT and
leave nothing stored; an upload that keeps sending within the pause limit may take longer
than the ordinary body's whole budget."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import orjson
import psycopg
import pytest
import uvicorn

from nexes.http.app import create_app
from nexes.settings import Settings
from tests.support.auth import bearer_for
from tests.support.imports import csv_bytes, line
from tests.support.waits import wait_for

BUDGET = 1.0  # both limits, in seconds, for these tests


@pytest.fixture(scope="module")
def edge_settings(settings: Settings) -> Settings:
    return replace(settings, body_read_seconds=BUDGET, upload_idle_seconds=BUDGET)


@pytest.fixture(scope="module")
def server(edge_settings: Settings) -> Iterator[tuple[str, int]]:
    """uvicorn (httptools, as `nexes serve` runs it) serving the app on a free port, in a thread."""
    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(edge_settings), http="httptools", lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, 0.05)
    yield sock.getsockname()[:2]
    server.should_exit = True
    thread.join(30)
    sock.close()


def request_head(path: str, settings: Settings, **fields: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: nexes.test"]
    lines += [f"{k}: {v}" for k, v in bearer_for(settings, "admin").items()]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(conn: socket.socket, timeout: float) -> tuple[int, dict[str, object]]:
    """The status and JSON body of one response (Content-Length framed)."""
    conn.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, f"the server closed the connection without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += conn.recv(65536)
    return status, orjson.loads(body[:length])


def test_an_ordinary_body_that_trickles_past_its_budget_gets_408(
    server: tuple[str, int], edge_settings: Settings
) -> None:
    body = orjson.dumps({"query": "{ __typename }"})
    with socket.create_connection(server) as conn:
        started = time.monotonic()
        conn.sendall(
            request_head("/graphql", edge_settings, Content_Type="application/json", Content_Length=str(len(body)))
        )
        for byte in body[:8]:  # one byte every 0.3 s: each pause is short, the whole is too slow
            conn.sendall(bytes([byte]))
            time.sleep(0.3)
        status, payload = read_response(conn, 10)
        took = time.monotonic() - started
    assert status == 408, payload
    assert payload["errors"][0]["extensions"]["code"] == "REQUEST_TIMEOUT"  # type: ignore[index]
    assert "NEXES_BODY_READ_SECONDS" in payload["errors"][0]["message"]  # type: ignore[index]
    assert BUDGET <= took < BUDGET + 2


def test_an_ordinary_body_within_its_budget_is_answered(server: tuple[str, int], edge_settings: Settings) -> None:
    body = orjson.dumps({"query": "{ __typename }"})
    with socket.create_connection(server) as conn:
        conn.sendall(
            request_head("/graphql", edge_settings, Content_Type="application/json", Content_Length=str(len(body)))
        )
        conn.sendall(body[:5])
        time.sleep(BUDGET / 2)
        conn.sendall(body[5:])
        status, payload = read_response(conn, 10)
    assert status == 200, payload
    assert payload["data"] == {"__typename": "Query"}


def jobs(settings: Settings) -> int:
    with psycopg.connect(settings.admin_url) as conn:
        (n,) = conn.execute("SELECT count(*) FROM import_job").fetchone() or (0,)
    return int(n)


def test_an_upload_that_pauses_too_long_gets_408_and_leaves_nothing(
    server: tuple[str, int], edge_settings: Settings
) -> None:
    data = csv_bytes(*(line(f"EDGE-{i}") for i in range(200)))
    before = jobs(edge_settings)
    with socket.create_connection(server) as conn:
        conn.sendall(
            request_head(
                "/api/imports?filename=slow.csv", edge_settings, X_Nexes_CSRF="1", Content_Length=str(len(data))
            )
        )
        conn.sendall(data[:1000])
        time.sleep(BUDGET + 0.5)  # one pause longer than NEXES_UPLOAD_IDLE_SECONDS
        status, payload = read_response(conn, 10)
    assert status == 408, payload
    assert payload["errors"][0]["extensions"]["code"] == "REQUEST_TIMEOUT"  # type: ignore[index]
    assert "NEXES_UPLOAD_IDLE_SECONDS" in payload["errors"][0]["message"]  # type: ignore[index]
    wait_for(lambda: jobs(edge_settings) == before, 5, 0.1)


def test_an_upload_may_outlast_the_body_budget_while_it_keeps_sending(
    server: tuple[str, int], edge_settings: Settings
) -> None:
    data = csv_bytes(*(line(f"EDGE-{i}") for i in range(200)))
    pieces = [data[i : i + len(data) // 5 + 1] for i in range(0, len(data), len(data) // 5 + 1)]
    with socket.create_connection(server) as conn:
        started = time.monotonic()
        conn.sendall(
            request_head(
                "/api/imports?filename=steady.csv", edge_settings, X_Nexes_CSRF="1", Content_Length=str(len(data))
            )
        )
        for piece in pieces:  # 5 pauses of 0.5 s: 2.5 s in all, past the 1 s an ordinary body gets
            time.sleep(BUDGET / 2)
            conn.sendall(piece)
        status, payload = read_response(conn, 10)
        took = time.monotonic() - started
    assert status == 202, payload
    assert took > 2 * BUDGET
    with psycopg.connect(edge_settings.admin_url, autocommit=True) as conn2:
        conn2.execute("DELETE FROM import_job WHERE filename = 'steady.csv'")

"""The API's HTTP protocol (nexes.http.draining) writes a response's head with its body, on a
real uvicorn server and real sockets; a head whose body comes later still goes out at once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from nexes.http.draining import DrainingProtocol
from tests.support.processes import free_port

writes: list[bytes] = []


class CountingProtocol(DrainingProtocol):
    """The real protocol, its real transport's writes recorded (a spy, not a stand-in)."""

    def connection_made(self, transport: Any) -> None:
        write = transport.write

        def recorded(data: bytes) -> None:
            writes.append(bytes(data))
            write(data)

        transport.write = recorded
        super().connection_made(transport)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/later":  # the head now, the body a second later (a streamed answer)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await asyncio.sleep(1.0)
        await send({"type": "http.response.body", "body": b"later"})
        return
    body = b'{"data":{"__typename":"Query"}}'
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def served() -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=CountingProtocol, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        await task


async def _exchange(port: int, path: str, until: bytes) -> tuple[bytes, float]:
    """Sends GET `path`; returns what came until `until` was seen, and when `until` came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    received = b""
    while until not in received:
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, received
        received += chunk
    took = time.monotonic() - started
    writer.close()
    return received, took


async def test_a_response_head_and_its_body_go_out_in_one_write() -> None:
    writes.clear()
    async with served() as port:
        received, _ = await _exchange(port, "/graphql", b'"Query"}}')
        answered = list(writes)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b'{"data":{"__typename":"Query"}}')
    assert answered == [received]  # one write: the head and the body together


async def test_a_head_whose_body_comes_later_is_written_at_once() -> None:
    writes.clear()
    async with served() as port:
        head, head_took = await _exchange(port, "/later", b"\r\n\r\n")
        whole, whole_took = await _exchange(port, "/later", b"later")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"later" not in head
    assert head_took < 0.5, head_took  # not held back until the body, a second later
    assert whole.endswith(b"\r\n\r\nlater") and whole_took >= 1.0
    # The first client left before its body; the second got its head, then its body.
    assert writes[0] == head and writes[1] == whole[: -len(b"later")] and writes[2:] == [b"later"]

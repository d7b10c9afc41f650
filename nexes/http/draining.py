"""uvicorn's httptools protocol, with a shutdown that drains idle keep-alive connections
instead of cutting them (`nexes serve --workers N` and a rolling restart: issue 20), and a
response's head written with its body (`_Coalescing`).

uvicorn's own shutdown closes every idle connection at once. A request the client sent
just before, that the worker has not read yet, is then lost: the client gets a reset
(unread bytes in the socket make the close a RST) or an empty answer, and only clients
that re-send on a new connection recover. A connection the worker had just accepted,
before its first request was read, counts as idle too, so a fresh connection failed the
same way. Here a worker that shuts down stops accepting (uvicorn closes the listener
first), answers whatever arrives on its open connections with `Connection: close`, and
lets uvicorn's keep-alive timer close the ones that stay idle; uvicorn waits for them
(`timeout_graceful_shutdown`), and the other workers take the new connections.

Hand-rolled (an override of one method of uvicorn's protocol, passed as `http=`) because
neither uvicorn nor the other ASGI servers pinned here drain idle connections."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Coalescing:
    """The connection's transport for one response: its first write (uvicorn's status line
    and headers) waits for the next one (the body), and both go in one write: one send(2)
    and one TCP segment for a small answer, where uvicorn makes two. Should no body follow
    in the same turn of the event loop (a streamed answer's first chunk comes later), the
    head goes out at the end of that turn. Any other use of the transport writes it first.

    Measured with `{ __typename }` under wrk -c50 (issue 21): see bench/README.md."""

    __slots__ = ("_head", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = b""  # b"": nothing written yet; None: the head is out

    def write(self, data: bytes) -> None:
        head = self._head
        if head is None:
            self._transport.write(data)
        elif head:
            self._head = None
            self._transport.write(head + data)
        else:
            self._head = data
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        head, self._head = self._head, None
        if head and not self._transport.is_closing():
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        self.flush()
        return getattr(self._transport, name)


class DrainingProtocol(HttpToolsProtocol):
    """HttpToolsProtocol whose `shutdown` drains: see the module's docstring."""

    draining = False

    def shutdown(self) -> None:
        self.draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a request in progress: its answer closes the connection
        elif self.timeout_keep_alive_task is None:
            # Accepted, and no request read yet: the keep-alive timer is armed only after an
            # answer, so arm it here, or the connection would hold the shutdown up to its end.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = _Coalescing(self.transport)  # type: ignore[assignment]
            if self.draining:
                self.cycle.keep_alive = False  # the last request of this connection

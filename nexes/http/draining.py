"""uvicorn's httptools protocol, with a shutdown that drains idle keep-alive connections
instead of cutting them (`nexes serve --workers N` and a rolling restart: issue 20).

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

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # the last request of this connection

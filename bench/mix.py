"""The load generators' shared parts (bench.replicas, bench.drills): one keep-alive HTTP/1.1
connection over raw asyncio streams, and the read mix's requests (first pages, next pages,
`node`, search) built from what a client has seen.

Raw streams on uvloop, not httpx: 1000 httpx clients cost several times the CPU per
request, on the 2 cores the API needs."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Sequence
from typing import Any

import orjson

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)
PAGE = "edges { node { id sodNumber status createdAt totalAmount customer { name } } } pageInfo { endCursor }"
FIRST = "query { serviceOrders(first: 50) { " + PAGE + " } }"
NEXT = "query($a: String) { serviceOrders(first: 50, after: $a) { " + PAGE + " } }"


class Closed(Exception):
    """A kept-alive connection was closed before any byte of the answer came."""


class Conn:
    """One keep-alive HTTP/1.1 connection; POSTs JSON to /graphql, reads a Content-Length body.

    A request on a reused connection that gets not a byte of answer (the server closed it
    while idle: a worker that died, restarted or timed the connection out) raises Closed,
    for the caller to send again once on a new connection, as browsers and proxies do."""

    def __init__(self, port: int, auth: str, host: str = "127.0.0.1") -> None:
        self.host, self.port, self.auth = host, port, auth.encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        reused = self.writer is not None
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(
                b"POST /graphql HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                b"authorization: %s\r\ncontent-length: %d\r\n\r\n%s" % (self.auth, len(body), body)
            )
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            self.close()
            if reused and not getattr(exc, "partial", b""):
                raise Closed from None
            raise
        length = CONTENT_LENGTH.search(head)
        if length is None:
            self.close()
            raise RuntimeError(f"no content-length: {head[:200]!r}")
        payload = await self.reader.readexactly(int(length[1]))
        if b"\r\nconnection: close" in head.lower():
            self.close()
        return int(head[9:12]), payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def choose(mix: Sequence[tuple[str, float]], state: dict[str, Any]) -> str:
    """A request kind from `mix` ((kind, cumulative share)); a next page or a `node` the
    client has nothing for yet becomes a first page."""
    r = random.random()
    kind = next(k for k, share in mix if r < share)
    if (kind == "next_page" and not state.get("cursor")) or (kind == "node" and not state.get("ids")):
        return "first_page"
    return kind


def read_body(kind: str, state: dict[str, Any], *, node: str, search: str, term: str) -> bytes:
    """The request of a read kind: first_page, next_page, node (`node`'s document) or
    search (`search`'s document for `term`)."""
    if kind == "first_page":
        return orjson.dumps({"query": FIRST})
    if kind == "next_page":
        return orjson.dumps({"query": NEXT, "variables": {"a": state["cursor"]}})
    if kind == "node":
        return orjson.dumps({"query": node, "variables": {"id": random.choice(state["ids"])}})
    if kind == "search":
        return orjson.dumps({"query": search, "variables": {"q": term}})
    raise ValueError(f"not a read kind: {kind}")


def remember_page(state: dict[str, Any], page: dict[str, Any]) -> bool:
    """Keep a page's cursor, ids, SOD numbers and customer names for the client's next
    requests; False when the page was empty (the cursor is dropped)."""
    edges = page["edges"]
    if not edges:
        state["cursor"] = None
        return False
    state["cursor"] = page["pageInfo"]["endCursor"]
    state["ids"] = [e["node"]["id"] for e in edges]
    state["sods"] = [e["node"]["sodNumber"] for e in edges]
    state["names"] = [e["node"]["customer"]["name"] for e in edges]
    return True

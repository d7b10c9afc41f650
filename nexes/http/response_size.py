"""A response's size, capped while it is serialised (NEXES_MAX_RESPONSE_BYTES).

Who: every GraphQL answer (JSON POST, GET, multipart). Cost: a walk of the answer's
objects down to its lists, and one orjson call per chunk of list items: a 50-row page is
one call for its rows, about 10 us more than one orjson call for the whole (8 us). Reveals:
the cap and its variable, never the data.

How: orjson writes one value at a time, so the answer is written in parts: objects key by
key, and every list in chunks of CHUNK items, each chunk one orjson call; a list whose
items hold lists themselves (a connection inside a connection) is walked item by item,
since one of its items may be large. The bytes are counted as the parts come; past the
cap the writing stops, so the serialised body never grows much past the cap (by one
chunk at most) however large the result is. The result objects themselves are bounded
before: by the cost limit (nexes.execution.cost) and the deadline.

A GraphQL list's items share one selection, so the first item says whether the others
hold lists (abstract types may differ: then a chunk may be larger, never unbounded).

An answer that holds no more objects than one chunk of list items (`extensions.cost.
actualNodes`, counted before it is written) is written in one orjson call: it can grow no
further past the cap than one chunk would. The dashboard and an order with its lines are
such answers; walking them object by object cost 50 us of a 500 us request (issue 21).
"""

from __future__ import annotations

from typing import Any

import orjson

from nexes.schema.rendered import default

CHUNK = 64  # list items per orjson call


class TooLarge(Exception):
    """The serialised answer passed the cap."""


class _Writer:
    def __init__(self, limit: int) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit

    def write(self, part: bytes) -> None:
        self.size += len(part)
        if self.size > self.limit:
            raise TooLarge
        self.parts.append(part)

    def value(self, value: Any) -> None:
        if isinstance(value, list) and value:
            self._list(value)
        elif isinstance(value, dict) and _holds_list(value):
            self._object(value)
        else:  # a scalar, or an object of objects and scalars (one row): at once
            self.write(orjson.dumps(value, default=default))

    def _object(self, value: dict[str, Any]) -> None:
        separator = b"{"
        for key, item in value.items():
            self.write(separator + orjson.dumps(key) + b":")
            self.value(item)
            separator = b","
        self.write(b"}" if separator == b"," else b"{}")

    def _list(self, value: list[Any]) -> None:
        if _holds_list(next((item for item in value if item is not None), None)):
            separator = b"["
            for item in value:
                self.write(separator)
                self.value(item)
                separator = b","
            self.write(b"]")
            return
        for start in range(0, len(value), CHUNK):
            chunk = orjson.dumps(value[start : start + CHUNK], default=default)
            # Chunks join into one array: "[a,b" + ",c,d" + ... + "]".
            first, last = start == 0, start + CHUNK >= len(value)
            self.write((b"" if first else b",") + chunk[0 if first else 1 : len(chunk) if last else -1])


def _holds_list(value: Any) -> bool:
    """Whether a list or a non-empty one sits anywhere inside `value` (objects followed)."""
    if isinstance(value, list):
        return True
    if isinstance(value, dict):
        for item in value.values():  # a loop, not any(): this runs on every answer
            if isinstance(item, list) or (isinstance(item, dict) and _holds_list(item)):
                return True
    return False


def dumps_within(payload: Any, limit: int) -> bytes:
    """`payload` as JSON, written in parts; TooLarge once it passes `limit` bytes
    (nexes.http.errors answers RESPONSE_TOO_LARGE instead)."""
    nodes = _counted_nodes(payload)
    if nodes is not None and nodes <= CHUNK:
        body = orjson.dumps(payload, default=default)
        if len(body) > limit:
            raise TooLarge
        return body
    writer = _Writer(limit)
    writer.value(payload)
    return b"".join(writer.parts)


def _counted_nodes(payload: Any) -> int | None:
    """The objects under the answer's `data`, as its cost report counted them (None: not counted)."""
    if not isinstance(payload, dict):
        return None
    extensions = payload.get("extensions")
    cost = extensions.get("cost") if isinstance(extensions, dict) else None
    nodes = cost.get("actualNodes") if isinstance(cost, dict) else None
    return nodes if type(nodes) is int else None

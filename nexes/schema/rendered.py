"""Objects whose JSON PostgreSQL built: the selection they were built for, and their output.

Why: on a page of orders, Python spent more per row (a row tuple, a Strawberry object, a
global id, an ISO timestamp, the completed dict, its count and its serialisation, about
15 µs) than PostgreSQL spent finding the row. For a selection of plain columns only
(nexes.db.rendering.RENDERABLE), the page's statement also builds each order's JSON
(`rendered_column` there), and the compiled completer (nexes.execution.compiled) puts that
JSON into the answer as it is, through `Rendered` and orjson's Fragment.

Who: any caller whose selection under a connection's `edges { node { ... } }` is plain
fields of RENDERABLE, with no fragment, directive or argument
(nexes.resolvers.selection.node_render_spec); the field guards and the cost limit apply as
before (a guarded field is never compiled, so never rendered). Cost: one concatenated
expression per row in the page's statement (20 customers' pages of 11 orders: 0.85 ms to
plan, 1.0 ms to run at 10M). Reveals: the same fields and values, once parsed, as the
objects they stand for; tests compare the two on hostile text (tests/test_rendered.py).

The object a resolver returns for a rendered row (nexes.resolvers.orders.RenderedOrder)
carries its JSON and spec in `_rendered_json` and `_rendered_spec`, which the completer
looks for; it is still a full ServiceOrder: anything that reads its attributes instead
(graphql-core's own path, a completer compiled for another selection) gets the order read
back from that JSON, on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from nexes.db.rendering import Spec


class Rendered:
    """A completed value whose JSON is already made: what the compiled completer puts into
    the answer in place of the dict it would have built. `nodes` is its count of objects."""

    __slots__ = ("json", "nodes")

    def __init__(self, json: str, nodes: int) -> None:
        self.json = json
        self.nodes = nodes

    def __repr__(self) -> str:
        return f"Rendered({self.json!r})"


def default(value: Any) -> Any:
    """orjson's `default`: a Rendered value as its JSON, unchanged."""
    if value.__class__ is Rendered:
        return orjson.Fragment(value.json)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class RenderedEdges:
    """A page's edges when their selection is `{ node { ... } }` and PostgreSQL rendered every
    node: the compiled completer writes them as one JSON array (`rendered`), with no Edge
    object, completion call or count per row. Anything else that iterates them (graphql-core's
    own path, a completer for another selection) gets the Edge objects, made then by `make`.

    `spec` is the edges' selection: ((node's response name, "node", node's spec),)."""

    __slots__ = ("_items", "count", "make", "packed", "spec", "texts")

    def __init__(self, texts: list[str], spec: Spec, make: Callable[[], list[Any]]) -> None:
        self.texts = texts
        self.spec = spec
        self.make = make
        self.packed: str | None = None
        self.count = len(texts)
        self._items: list[Any] | None = None

    @classmethod
    def of_packed(cls, edges: str, count: int, spec: Spec, make: Callable[[], list[Any]]) -> RenderedEdges:
        """Edges PostgreSQL also joined (nexes.db.orders.packed_sql): `count` edge objects,
        each `edge_head(spec)`, its node's JSON and `}`, comma-separated."""
        made = cls([], spec, make)
        made.packed, made.count = edges, count
        return made

    def __iter__(self) -> Iterator[Any]:
        if self._items is None:
            self._items = self.make()
        return iter(self._items)

    def __len__(self) -> int:
        return self.count

    def rendered(self, nodes_per_edge: int) -> Rendered:
        """The edges' JSON array: each `{"<node>":<the node's JSON>}`."""
        if self.packed is not None:
            return Rendered("[" + self.packed + "]", nodes_per_edge * self.count)
        if not self.texts:
            return Rendered("[]", 0)
        head = edge_head(self.spec)
        return Rendered("[" + head + ("}," + head).join(self.texts) + "}]", nodes_per_edge * len(self.texts))


def edge_head(spec: Spec) -> str:
    """The start of one edge's JSON object for the edges' selection `spec`, up to its node's JSON."""
    return "{" + orjson.dumps(spec[0][0]).decode() + ":"

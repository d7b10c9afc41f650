"""Answers with JSON made by PostgreSQL (nexes.schema.rendered), as a client reads them."""

from __future__ import annotations

from typing import Any

import orjson

from nexes.schema.rendered import Rendered


def plain(value: Any) -> Any:
    """An answer with its Rendered values parsed: the plain data a client would read."""
    if value.__class__ is Rendered:
        return orjson.loads(value.json)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value

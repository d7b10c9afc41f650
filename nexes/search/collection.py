"""The service-order collection: its schema, the document of an order, versioned names
behind the alias, and the alias swap."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
import typesense
from typesense.exceptions import ObjectNotFound

from nexes.db.search import DocRow

log = logging.getLogger(__name__)

# Query fields, in query_by order, with their typo policies: SOD numbers match exactly or
# by prefix (never by typo: 0001235 is another order); names are typo-tolerant; codes exact
# or prefix; descriptions allow one typo.
QUERY_BY = "sod_number,customer_name,customer_code,description"
NUM_TYPOS = "0,2,0,1"
# A query that could be part of a SOD number (one word of SOD characters with a digit) is
# also searched by prefix in `sod_suffixes` (no typos): `01234` finds SOD-2025-0001234.
SOD_QUERY_BY = "sod_number,sod_suffixes,customer_name,customer_code,description"
SOD_NUM_TYPOS = "0,0,2,0,1"
# A collection made before `sod_suffixes` existed (its `sod_number` indexed for infix) answers
# such queries with Typesense's infix search until the next reindex replaces it.
LEGACY_INFIX = "always,off,off,off"
MIN_SUFFIX = 3  # the shortest SOD fragment found in the middle of a part
# Any other query is first looked up as a customer's name in `customer_key`: the name in
# one token (casefolded letters and digits), the query folded alike, by prefix with up to
# two typos. A name's words are common words ("Summit", "Facilities", "LLC"), each in a
# large share of 10M orders, so matching them word by word intersects posting lists of
# millions (135 ms p50, 250 ms p95 at 10M); the whole name's token has one customer's
# orders (5 ms p50, 8 ms p95 at 10M). The word-by-word search answers when no name matches.
NAME_QUERY_BY = "customer_key"
NAME_NUM_TYPOS = "2"
MIN_NAME_KEY = 3

FIELDS: list[dict[str, Any]] = [
    {"name": "sod_number", "type": "string"},
    # Every suffix of every part of the SOD number, of MIN_SUFFIX characters or more, and
    # the parts themselves (so `2025-01234` matches in this one field). A prefix search
    # here is an infix search of the SOD, but a lookup in the token tree instead of
    # Typesense's infix scan of every SOD token (50 ms at 1M documents, 400 ms at 10M;
    # this: 5-10 ms at 1M, bench/README.md "Search").
    {"name": "sod_suffixes", "type": "string[]", "optional": True},
    {"name": "customer_name", "type": "string"},
    {"name": "customer_key", "type": "string", "optional": True},
    {"name": "customer_code", "type": "string"},
    {"name": "description", "type": "string"},
    {"name": "status", "type": "string", "facet": True},
    {"name": "currency", "type": "string", "facet": True},
    {"name": "created_at", "type": "int64"},  # epoch seconds: sort and range filter
    {"name": "total_amount", "type": "float"},
    # Display-only: stored, not indexed. updated_at lets the drift check see stale documents.
    {"name": "updated_at", "type": "int64", "index": False, "optional": True},
]


def schema(name: str) -> dict[str, Any]:
    # "-" separates tokens, so SOD-2025-0001234 is sod / 2025 / 0001234: prefix search on
    # each part, and on each part's suffixes for any fragment of one.
    return {"name": name, "fields": FIELDS, "default_sorting_field": "created_at", "token_separators": ["-"]}


def customer_key(name: str) -> str:
    """A name (or a query) folded into one token: its letters and digits, casefolded."""
    return "".join(ch for ch in name.casefold() if ch.isalnum())


def sod_suffixes(sod_number: str) -> list[str]:
    """Each `-`-separated part of a SOD number and its suffixes of MIN_SUFFIX characters or
    longer: SOD-2025-0001234 gives sod, 2025, 025, 0001234, 001234, 01234, 1234 and 234."""
    found: dict[str, None] = {}
    for part in sod_number.lower().split("-"):
        if part:
            found[part] = None
        for start in range(1, len(part) - MIN_SUFFIX + 1):
            found[part[start:]] = None
    return list(found)


def document(row: DocRow) -> dict[str, Any]:
    """An order as its search document (id = the order's database id)."""
    return {
        "id": str(row.id),
        "sod_number": row.sod_number,
        "sod_suffixes": sod_suffixes(row.sod_number),
        "customer_name": row.customer_name,
        "customer_key": customer_key(row.customer_name),
        "customer_code": row.customer_code,
        "description": row.description,
        "status": row.status,
        "currency": row.currency,
        "created_at": int(row.created_at.timestamp()),
        "total_amount": float(row.total_amount),
        "updated_at": updated_stamp(row.updated_at),
    }


def updated_stamp(value: datetime) -> int:
    """updated_at as integer microseconds: exact, so the drift check can compare it."""
    return int(value.timestamp() * 1_000_000)


def jsonl(rows: list[DocRow]) -> bytes:
    return b"\n".join(orjson.dumps(document(r)) for r in rows)


def versioned_name(alias: str, now: datetime | None = None) -> str:
    """A new collection's name: the alias plus its creation time (sortable, unique enough)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%f")
    return f"{alias}_v{stamp}"


def alias_target(client: typesense.Client, alias: str) -> str | None:
    """The collection the alias points at, or None when there is no alias yet."""
    try:
        found: dict[str, Any] = client.aliases[alias].retrieve()  # type: ignore[assignment]
    except ObjectNotFound:
        return None
    return str(found["collection_name"])


def create(client: typesense.Client, name: str) -> None:
    client.collections.create(schema(name))  # type: ignore[arg-type]


def point_alias(client: typesense.Client, alias: str, collection: str) -> None:
    """Swap the alias in one call: searches see the old collection, then the new one."""
    client.aliases.upsert(alias, {"collection_name": collection})


def versions(client: typesense.Client, alias: str) -> list[str]:
    """Every versioned collection of this alias."""
    prefix = f"{alias}_v"
    return sorted(str(c["name"]) for c in client.collections.retrieve() if str(c["name"]).startswith(prefix))


def drop_except(client: typesense.Client, alias: str, keep: str) -> list[str]:
    """Drop the alias's other versions (the previous one, and any left by a dead reindex)."""
    dropped = []
    for name in versions(client, alias):
        if name != keep:
            try:
                client.collections[name].delete()
            except ObjectNotFound:
                continue
            dropped.append(name)
    return dropped


def ensure(client: typesense.Client, alias: str) -> str:
    """The alias's collection, made empty on first use (a reindex then fills it)."""
    target = alias_target(client, alias)
    if target is None:
        target = versioned_name(alias)
        create(client, target)
        point_alias(client, alias, target)
        log.info("search: created %s behind alias %s", target, alias)
    return target


def parse_import(answer: str | bytes) -> list[dict[str, Any]]:
    """The import API's answer, one JSON object per document line (HTTP 200 even when some failed)."""
    raw = answer.encode() if isinstance(answer, str) else answer
    return [orjson.loads(line) for line in raw.splitlines() if line.strip()]

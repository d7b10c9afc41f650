"""The drift check: Typesense's document count and a sample of documents against PostgreSQL;
every missing, stale or extra document is queued for the sync to repair."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any

import psycopg
import typesense

from nexes.db import search as search_db
from nexes.search import collection

log = logging.getLogger(__name__)
ID_CHUNK = 200
# Documents the index may lack, beyond the outbox's pending rows, before the counts alone
# ask for a reindex (and a thousandth of the orders, at scale): writes between the two counts.
COUNT_TOLERANCE = 100


@dataclass
class DriftReport:
    database_count: int
    index_count: int
    sampled: int = 0
    missing: list[int] = field(default_factory=list)
    stale: list[int] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)
    queued: int = 0
    reindex_asked: bool = False


def check(conn: psycopg.Connection[Any], client: typesense.Client, alias: str, *, sample: int = 500) -> DriftReport:
    """Compare, queue repairs (the sync upserts what exists and deletes what does not)."""
    documents = client.collections[alias].documents
    index_count = int(client.collections[alias].retrieve()["num_documents"])
    report = DriftReport(database_count=search_db.count_orders(conn), index_count=index_count)
    rows = search_db.random_documents(conn, sample)
    report.sampled = len(rows)
    indexed: dict[int, int] = {}
    for start in range(0, len(rows), ID_CHUNK):  # search is a GET: its query string is bounded
        ids = ",".join(str(r.id) for r in rows[start : start + ID_CHUNK])
        indexed |= _indexed(documents, f"id:[{ids}]", ID_CHUNK)
    for row in rows:
        stamp = indexed.get(row.id)
        if stamp is None:
            report.missing.append(row.id)
        elif stamp != collection.updated_stamp(row.updated_at):
            report.stale.append(row.id)
    if index_count > report.database_count or report.missing:
        report.extra = _extra(conn, documents, index_count, sample)
    repairs = sorted(set(report.missing + report.stale + report.extra))
    if repairs:
        report.queued = search_db.queue_repairs(conn, repairs)
    # A sample finds a few lost documents among millions only by luck; the counts find
    # them all, but not which. A gap that the outbox's pending rows do not explain asks the
    # sweep for a reindex (zero-downtime, behind the alias), the one repair that finds them.
    pending, _ = search_db.outbox_lag_sync(conn)
    gap = abs(report.database_count - report.index_count)
    if gap > pending + max(COUNT_TOLERANCE, report.database_count // 1000):
        search_db.ask_reindex(conn)
        report.reindex_asked = True
    log.info(
        "search drift: %d in PostgreSQL, %d in Typesense; sample of %d: %d missing, %d stale; %d extra; %d queued"
        + ("; counts differ: reindex asked" if report.reindex_asked else ""),
        report.database_count,
        report.index_count,
        report.sampled,
        len(report.missing),
        len(report.stale),
        len(report.extra),
        report.queued,
    )
    return report


def _indexed(documents: Any, filter_by: str, per_page: int) -> dict[int, int]:
    """id -> updated_at stamp of the documents matching `filter_by`."""
    found: dict[int, int] = {}
    for page in range(1, per_page // 250 + 2):
        answer = documents.search(
            {"q": "*", "filter_by": filter_by, "per_page": 250, "page": page, "include_fields": "id,updated_at"}
        )
        hits = answer.get("hits", [])
        for hit in hits:
            doc = hit["document"]
            found[int(doc["id"])] = int(doc.get("updated_at", -1))
        if len(hits) < 250:
            break
    return found


def _extra(conn: psycopg.Connection[Any], documents: Any, index_count: int, sample: int) -> list[int]:
    """Documents of a random stretch of the index whose order is not live."""
    pages = max(1, -(-index_count // 250))
    ids: list[int] = []
    for page in random.sample(range(1, pages + 1), min(pages, max(1, sample // 250))):
        answer = documents.search({"q": "*", "per_page": 250, "page": page, "include_fields": "id"})
        ids += [int(h["document"]["id"]) for h in answer.get("hits", [])]
    live = search_db.existing_orders(conn, ids)
    return [i for i in ids if i not in live]

"""The outbox sync: claim rows, lock their orders, read them fresh, write them to Typesense,
delete only the rows it wrote.

One transaction per batch on the primary holds the claimed rows (FOR UPDATE SKIP LOCKED)
and a transaction-scoped advisory lock per order until the Typesense write is done, so two
syncs never write the same order at once, and the later one reads the newer state
(Typesense has no conditional write). Rows of orders that failed stay for the next run.

Writes go to the collection the alias names, never through the alias: Typesense 0.24.1
lost documents written through an alias when it restarted (measured: 100 imported through
an alias, 40 left after a restart; written to the collection by name, all 100 stayed).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import typesense
from psycopg_pool import ConnectionPool
from typesense.exceptions import ObjectNotFound

from nexes.db import search as search_db
from nexes.search import collection

log = logging.getLogger(__name__)
# Ids a delete request: they travel in the query string, which httpx caps at 64 KB.
DELETE_CHUNK = 1_000


@dataclass
class SyncReport:
    """What one drain did."""

    batches: int = 0
    upserted: int = 0
    deleted: int = 0
    failed: int = 0
    rows: int = 0
    failures: list[str] = field(default_factory=list)


def sync_batch(conn: psycopg.Connection[Any], client: typesense.Client, alias: str, limit: int) -> SyncReport | None:
    """One claimed batch, in one transaction; None when nothing could be claimed."""
    report = SyncReport(batches=1)
    with conn.transaction():
        claim = search_db.claim(conn, limit)
        if not claim.rows_by_order:
            return None
        run = search_db.running_reindex(conn)
        # Resolved while this transaction holds the reindex gate: a run that swaps later waits
        # for it to finish and re-queues what it wrote; one that swapped before is seen here.
        target = collection.ensure(client, alias)
        order_ids = sorted(claim.rows_by_order)
        rows = search_db.fresh_documents(conn, order_ids)
        written = _upsert(client, target, rows, report)
        written |= _delete(client, target, set(order_ids) - {r.id for r in rows}, report)
        handled = [row_id for order_id in written for row_id in claim.rows_by_order[order_id]]
        report.rows = search_db.delete_handled(conn, handled)
        if run is not None and written:
            search_db.record_changes(conn, run, sorted(written))
    return report


def _upsert(client: typesense.Client, alias: str, rows: list[search_db.DocRow], report: SyncReport) -> set[int]:
    if not rows:
        return set()
    answer = client.collections[alias].documents.import_(collection.jsonl(rows), {"action": "upsert"})
    results = collection.parse_import(answer)
    if len(results) != len(rows):
        raise RuntimeError(f"Typesense answered {len(results)} lines for {len(rows)} documents")
    ok: set[int] = set()
    for row, result in zip(rows, results, strict=True):
        if result.get("success") is True:
            ok.add(row.id)
        else:
            report.failed += 1
            report.failures.append(f"{row.id}: {result.get('error')}")
            log.warning("search sync: order %d not indexed: %s", row.id, result.get("error"))
    report.upserted += len(ok)
    return ok


def _delete(client: typesense.Client, alias: str, gone: set[int], report: SyncReport) -> set[int]:
    """Orders no longer live (deleted, or archived) leave the index; absent ones are done already."""
    # By filter, a chunk a request: archiving queues a whole quarter (~500k orders at 10M).
    # A request per document (1.5 ms each) held a 5,000-row batch open 7.5 s; by filter, 75 ms.
    ids = sorted(gone)
    for start in range(0, len(ids), DELETE_CHUNK):
        chunk = ",".join(str(order_id) for order_id in ids[start : start + DELETE_CHUNK])
        with contextlib.suppress(ObjectNotFound):
            client.collections[alias].documents.delete({"filter_by": f"id:[{chunk}]"})
    report.deleted += len(ids)
    return set(ids)


def drain(
    pool: ConnectionPool, client: typesense.Client, alias: str, *, batch: int, budget: float = 30.0
) -> SyncReport:
    """Run batches until the outbox is empty (of rows this sync can claim) or `budget` seconds pass."""
    total = SyncReport()
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        with pool.connection() as conn:
            report = sync_batch(conn, client, alias, batch)
        if report is None:
            break
        _add(total, report)
        if report.rows == 0 or report.failed:  # held by another sync, or failing: retry later
            break
    return total


def _add(total: SyncReport, report: SyncReport) -> None:
    total.batches += report.batches
    total.upserted += report.upserted
    total.deleted += report.deleted
    total.failed += report.failed
    total.rows += report.rows
    total.failures.extend(report.failures[:10])

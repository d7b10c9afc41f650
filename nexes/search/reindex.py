"""The zero-downtime reindex: a new versioned collection built from a replica snapshot,
streamed through a server-side cursor, then the alias swap.

Changes made while it runs: the sync keeps writing through the alias (the old collection)
and records each order it writes; after the swap this run queues them into the outbox
again, so the sync rewrites their fresh state into the new collection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg
import psycopg.errors
import typesense
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from nexes.db import search as search_db
from nexes.db.connect import probes
from nexes.db.connect.conninfo import for_role
from nexes.search import collection
from nexes.settings import Settings

log = logging.getLogger(__name__)
STALE_AFTER = 120.0  # seconds without a heartbeat before another run takes over
REPLAY_WAIT = 60.0
STREAM_ATTEMPTS = 3


class ReindexBusy(Exception):
    """Another reindex is running."""


@dataclass
class ReindexReport:
    collection: str
    documents: int = 0
    failed: int = 0
    requeued: int = 0
    seconds: float = 0.0
    dropped: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.documents / self.seconds if self.seconds else 0.0


def _connect(url: str, settings: Settings, name: str) -> psycopg.Connection[tuple[object, ...]]:
    """A direct-from-the-pool connection; PgBouncer refuses logins for a while after a
    server failed one (server_login_retry), so connecting is retried for up to a minute."""
    conninfo = for_role(url, settings, "nexes_worker", application_name=name)
    for attempt in Retrying(
        retry=retry_if_exception_type((psycopg.OperationalError, psycopg.errors.ProtocolViolation)),
        stop=stop_after_delay(60),
        wait=wait_fixed(1),
        reraise=True,
    ):
        with attempt:
            conn = psycopg.connect(conninfo, autocommit=True, prepare_threshold=None)
            try:
                probes.ping(conn)  # PgBouncer logs in to the server only now
            except psycopg.Error:
                conn.close()
                raise
            return conn
    raise AssertionError("unreachable: tenacity reraises")


def reindex(
    settings: Settings,
    client: typesense.Client,
    *,
    batch: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReindexReport:
    """Build, swap, drop the old version, `batch` documents a request (default:
    `settings.reindex_batch`). `progress(done, estimated_total)` after each batch."""
    started = time.monotonic()
    batch = batch or settings.reindex_batch
    alias = settings.typesense_collection
    name = collection.versioned_name(alias)
    replica_url = settings.replica_urls[0] if settings.replica_urls else settings.primary_url
    with _connect(settings.primary_url, settings, "nexes-reindex") as primary:
        run = search_db.start_reindex(primary, name, stale_after=STALE_AFTER)
        if run is None:
            raise ReindexBusy("a reindex is running; try again when it has finished")
        report = ReindexReport(collection=name)
        swapped = False
        try:
            collection.create(client, name)
            lsn = search_db.current_lsn(primary)  # after the run is registered
            failed_ids = _stream_with_retries(
                settings,
                replica_url=replica_url,
                lsn=lsn,
                client=client,
                name=name,
                run=run,
                batch=batch,
                report=report,
                progress=progress,
            )
            collection.point_alias(client, alias, name)
            swapped = True
        finally:
            report.requeued = search_db.finish_reindex(primary, run, report.documents, swapped=swapped)
            if not swapped:
                _drop_quietly(client, name)
        if failed_ids:  # the sync retries them, and keeps them queued while they fail
            search_db.queue_repairs(primary, failed_ids)
        search_db.reindex_done(primary)
    report.dropped = collection.drop_except(client, alias, name)
    report.seconds = time.monotonic() - started
    log.info(
        "reindex %s: %d documents in %.1fs (%.0f/s), %d failed, %d changed meanwhile re-queued",
        name,
        report.documents,
        report.seconds,
        report.rate,
        report.failed,
        report.requeued,
    )
    return report


def _stream_with_retries(
    settings: Settings,
    *,
    replica_url: str,
    lsn: str,
    client: typesense.Client,
    name: str,
    run: int,
    batch: int,
    report: ReindexReport,
    progress: Callable[[int, int], None] | None,
) -> list[int]:
    """Stream from a replica; a stream cut short (a recovery conflict, a restart) starts over
    into an emptied collection, from a new snapshot: changes since the run began are recorded."""
    for attempt in range(1, STREAM_ATTEMPTS + 1):
        try:
            with (
                _connect(replica_url, settings, "nexes-reindex-stream") as replica,
                _connect(settings.primary_url, settings, "nexes-reindex") as primary,
            ):
                _wait_for_replay(replica, lsn)
                report.documents = report.failed = 0
                return _stream(
                    replica=replica,
                    primary=primary,
                    client=client,
                    name=name,
                    run=run,
                    batch=batch,
                    report=report,
                    total=search_db.estimate_orders(replica),
                    progress=progress,
                )
        except psycopg.Error as exc:
            if attempt == STREAM_ATTEMPTS:
                raise
            log.warning("reindex: the stream failed (%s: %s); starting it over", type(exc).__name__, exc)
            _drop_quietly(client, name)
            collection.create(client, name)
    raise AssertionError("unreachable")


def _wait_for_replay(replica: psycopg.Connection[tuple[object, ...]], lsn: str) -> None:
    """The snapshot must include everything committed before the run was registered:
    a change the sync wrote before then is not recorded for re-queueing."""
    deadline = time.monotonic() + REPLAY_WAIT
    while not search_db.replayed(replica, lsn):
        if time.monotonic() > deadline:
            position = search_db.standby_position(replica)
            raise TimeoutError(f"the replica has not replayed {lsn} after {REPLAY_WAIT:.0f}s: {position}")
        time.sleep(0.05)


def _stream(
    *,
    replica: psycopg.Connection[tuple[object, ...]],
    primary: psycopg.Connection[tuple[object, ...]],
    client: typesense.Client,
    name: str,
    run: int,
    batch: int,
    report: ReindexReport,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> list[int]:
    """Read the next batch while Typesense imports the previous one (one import in flight)."""
    failed: list[int] = []
    documents = client.collections[name].documents
    with ThreadPoolExecutor(max_workers=1) as pool, replica.transaction():
        pending: tuple[list[search_db.DocRow], Future[str]] | None = None
        for rows in search_db.stream_documents(replica, batch):
            future = pool.submit(_import, documents, collection.jsonl(rows))
            if pending is not None:
                failed += _check(*pending, report)
                search_db.heartbeat(primary, run, report.documents)
                if progress:
                    progress(report.documents, total)
            pending = (rows, future)
        if pending is not None:
            failed += _check(*pending, report)
            if progress:
                progress(report.documents, total)
    return failed


def _import(documents: Any, body: bytes) -> str:
    # "create": nothing else writes the new collection before the swap.
    return cast(str, documents.import_(body, {"action": "create"}))


def _check(rows: list[search_db.DocRow], future: Future[str], report: ReindexReport) -> list[int]:
    """Every line of the import's answer: ids of the documents that failed."""
    results = collection.parse_import(future.result())
    if len(results) != len(rows):
        raise RuntimeError(f"Typesense answered {len(results)} lines for {len(rows)} documents")
    failed = [row.id for row, result in zip(rows, results, strict=True) if result.get("success") is not True]
    for row, result in zip(rows, results, strict=True):
        if result.get("success") is not True and len(failed) <= 10:
            log.warning("reindex: order %d not indexed: %s", row.id, result.get("error"))
    report.documents += len(rows) - len(failed)
    report.failed += len(failed)
    return failed


def _drop_quietly(client: typesense.Client, name: str) -> None:
    try:
        client.collections[name].delete()
    except Exception as exc:  # the run failed already; a leftover version is dropped by the next run
        log.warning("reindex: could not drop %s (%s)", name, exc)

"""Periodic maintenance actors: partitions ahead of time, reconciliation, archive.

The DDL ones (partitions, archive) are on the ddl queue, which only the worker given the
owner's URL consumes (nexes.jobs.runtime.OwnerQueues); the others run as nexes_worker on
the maintenance queue. Reconciliation is among those: it recomputes and corrects rows
(dashboard_stat, customer figures, stat_drift) with DML that nexes_worker's grants allow."""

from __future__ import annotations

import logging

import dramatiq
import psycopg

from nexes.db import audit, imports_apply, partitions
from nexes.db.connect.worker import worker_pool
from nexes.jobs.metrics import RECONCILE_DRIFT
from nexes.jobs.runtime import DDL_QUEUE, settings

log = logging.getLogger(__name__)


@dramatiq.actor(queue_name=DDL_QUEUE, max_retries=5, min_backoff=10_000, max_backoff=600_000, time_limit=600_000)
def maintain_partitions() -> None:
    """Create the quarters the settings ask for, and audit_event's months ahead; drop its
    months past NEXES_AUDIT_RETENTION_DAYS (DDL, so as the owner, directly)."""
    with psycopg.connect(settings.owner_url(), autocommit=True) as conn:
        created = partitions.ensure(
            conn, years_back=settings.partition_years_back, quarters_ahead=settings.partitions_ahead
        )
        audit.maintain(conn, audit.scheduler(), retention_days=settings.audit_retention_days, quarters_created=created)
    # A periodic job logs at INFO only when it did something.
    log.log(logging.INFO if created else logging.DEBUG, "partitions ensured, %d created", created)


@dramatiq.actor(
    queue_name="maintenance", max_retries=3, min_backoff=60_000, max_backoff=3_600_000, time_limit=3_600_000
)
def reconcile_stats() -> None:
    """Recompute dashboard_stat slice by slice and check stock (safe while imports run)."""
    from nexes.db.connect.conninfo import for_role
    from nexes.db.reconcile import reconcile

    report = reconcile(
        for_role(settings.primary_url, settings, "nexes_worker", application_name="nexes-reconcile"),
        line_seconds=settings.reconcile_line_seconds,
    )
    corrections = report.stat_corrections + report.customer_stat_corrections + report.customer_cum_corrections
    for check, corrected, count in (
        ("dashboard_stat", "true", report.stat_corrections),
        ("customer_stat", "true", report.customer_stat_corrections + report.customer_cum_corrections),
        ("on_hand", "false", report.on_hand_mismatches),
        ("negative_stock", "false", report.negative_items),
        ("lines", "false", report.line_mismatches),
    ):
        RECONCILE_DRIFT.labels(check, corrected).inc(count)
    if corrections:  # the corrections are committed slice by slice; this row says they were made
        with worker_pool(settings).connection() as conn:
            changes = {"runId": str(report.run_id), "corrections": corrections}
            by = audit.scheduler()
            audit.record_sync(conn, by, "reconcile", entity="Dashboard", key="dashboard_stat", changes=changes)
    log.info(
        "reconciliation %s: %d corrections, %d on-hand mismatches, %d negative items, %d lines whose movements "
        "differ (lines of %d quarters checked, %d left for the next runs)",
        report.run_id,
        report.stat_corrections + report.customer_stat_corrections + report.customer_cum_corrections,
        report.on_hand_mismatches,
        report.negative_items,
        report.line_mismatches,
        report.line_quarters,
        report.line_quarters_left,
    )
    # The search index is part of the daily check: its count and a sample against
    # PostgreSQL, repairs queued (its own actor, queue and retries).
    from nexes.jobs.search import check_search_drift

    check_search_drift.send()


@dramatiq.actor(queue_name=DDL_QUEUE, max_retries=5, min_backoff=60_000, max_backoff=3_600_000, time_limit=3_600_000)
def archive_quarters() -> None:
    """Move quarters older than the setting to the archive tables (DDL, so as the owner, directly).

    Safe to run twice or after a crash at any step: each run finishes what the catalog
    shows unfinished, under an advisory lock. A detach can wait for old transactions, so
    the time limit is generous; one cut short is left "detach pending" and finalized next time.
    """
    from nexes.db.archive import archive

    steps = archive(settings.owner_url(), after_years=settings.archive_after_years)
    if steps:
        with worker_pool(settings).connection() as conn:
            changes = {"steps": steps[:20], "stepCount": len(steps)}
            by = audit.scheduler()
            audit.record_sync(conn, by, "archiveQuarters", entity="Partition", key="service_order", changes=changes)
    log.info("archive: %d step(s) done", len(steps))


@dramatiq.actor(queue_name="maintenance", max_retries=0, time_limit=60_000)
def sweep_imports() -> None:
    """Send again the import jobs whose worker died (lease ran out) or whose message
    was lost; finish a cancel asked of a dead job. The lease makes a resend harmless."""
    from nexes.jobs.imports import enqueue_import

    with worker_pool(settings).connection() as conn:
        swept = imports_apply.sweep(
            conn,
            retention=settings.import_retention_days,
            lease=settings.import_lease_seconds,
            actor=audit.scheduler().name,
        )
    for job_id in swept.resend:
        enqueue_import(job_id)
    if swept.resend or swept.cancelled or swept.given_up:
        log.info(
            "import sweep: %d sent again, %d cancelled, %d given up",
            len(swept.resend),
            len(swept.cancelled),
            len(swept.given_up),
        )


@dramatiq.actor(queue_name="maintenance", max_retries=3, min_backoff=60_000, max_backoff=600_000, time_limit=600_000)
def purge_imports() -> None:
    """Delete import jobs past their retention (uploads and error rows go with them)."""
    total, batch = 0, 100
    while True:  # bounded batches: each a short transaction
        with worker_pool(settings).connection() as conn:
            deleted = imports_apply.purge(conn, batch)
            if deleted:
                changes = {"deleted": deleted, "retentionDays": settings.import_retention_days}
                by = audit.scheduler()
                audit.record_sync(conn, by, "purgeImports", entity="ImportJob", key="expired", changes=changes)
        total += deleted
        if deleted < batch:
            break
    log.info("import purge: %d expired jobs deleted", total)

"""Periodic maintenance actors: partitions ahead of time, reconciliation, archive."""

from __future__ import annotations

import logging

import dramatiq
import psycopg

from nexes.db import partitions
from nexes.jobs import settings

log = logging.getLogger(__name__)


@dramatiq.actor(queue_name="maintenance", max_retries=5, min_backoff=10_000, max_backoff=600_000, time_limit=600_000)
def maintain_partitions() -> None:
    """Create the quarters the settings ask for (DDL, so as the owner, directly)."""
    with psycopg.connect(settings.admin_url, autocommit=True) as conn:
        created = partitions.ensure(
            conn, years_back=settings.partition_years_back, quarters_ahead=settings.partitions_ahead
        )
    log.info("partitions ensured, %d created", created)


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


@dramatiq.actor(
    queue_name="maintenance", max_retries=5, min_backoff=60_000, max_backoff=3_600_000, time_limit=3_600_000
)
def archive_quarters() -> None:
    """Move quarters older than the setting to the archive tables (DDL, so as the owner, directly).

    Safe to run twice or after a crash at any step: each run finishes what the catalog
    shows unfinished, under an advisory lock. A detach can wait for old transactions, so
    the time limit is generous; one cut short is left "detach pending" and finalized next time.
    """
    from nexes.db.archive import archive

    steps = archive(settings.admin_url, after_years=settings.archive_after_years)
    log.info("archive: %d step(s) done", len(steps))


@dramatiq.actor(queue_name="maintenance", max_retries=0, time_limit=60_000)
def sweep_imports() -> None:
    """Send again the import jobs whose worker died (lease ran out) or whose message
    was lost; finish a cancel asked of a dead job. The lease makes a resend harmless."""
    from nexes.db import imports_apply as import_apply
    from nexes.jobs.imports import enqueue_import
    from nexes.jobs.imports_runner import worker_pool

    with worker_pool(settings).connection() as conn:
        retention = {"retention": settings.import_retention_days}
        cancelled = conn.execute(import_apply.SWEEP_CANCEL, retention).fetchall()
        given_up = conn.execute(import_apply.SWEEP_GIVE_UP, retention).fetchall()
        resend = conn.execute(import_apply.SWEEP, {"lease": settings.import_lease_seconds}).fetchall()
    for (job_id,) in resend:
        enqueue_import(job_id)
    if resend or cancelled or given_up:
        log.info("import sweep: %d sent again, %d cancelled, %d given up", len(resend), len(cancelled), len(given_up))


@dramatiq.actor(queue_name="maintenance", max_retries=3, min_backoff=60_000, max_backoff=600_000, time_limit=600_000)
def purge_imports() -> None:
    """Delete import jobs past their retention (uploads and error rows go with them)."""
    from nexes.db import imports_apply as import_apply
    from nexes.jobs.imports_runner import worker_pool

    total, batch = 0, 100
    while True:  # bounded batches: each a short transaction
        with worker_pool(settings).connection() as conn:
            row = conn.execute(import_apply.PURGE, {"limit": batch}).fetchone()
        deleted = int(row[0]) if row else 0
        total += deleted
        if deleted < batch:
            break
    log.info("import purge: %d expired jobs deleted", total)

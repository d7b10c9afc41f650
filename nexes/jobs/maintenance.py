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
    from nexes.db.conninfo import for_role
    from nexes.db.reconcile import reconcile

    report = reconcile(for_role(settings.primary_url, settings, "nexes_worker", application_name="nexes-reconcile"))
    log.info(
        "reconciliation %s: %d corrections, %d on-hand mismatches, %d negative items",
        report.run_id,
        report.stat_corrections,
        report.on_hand_mismatches,
        report.negative_items,
    )


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

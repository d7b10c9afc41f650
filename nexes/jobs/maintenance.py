"""Periodic maintenance actors: partitions ahead of time, reconciliation."""

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

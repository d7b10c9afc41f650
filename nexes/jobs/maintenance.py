"""Periodic maintenance actors: partitions ahead of time."""

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

"""What the API's monitor reads for the jobs' gauges of /metrics: import jobs by state,
the most overdue lease of a running import, and how far ahead the order partitions reach."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, LiteralString

from psycopg import AsyncConnection
from psycopg.rows import class_row

# One statement. Import jobs: their number is bounded by the retention (NEXES_IMPORT_RETENTION_DAYS);
# the running ones come from import_job_active_idx. The horizon: the upper bound of the last
# partition of service_order, from the catalog (readable by every role).
OPS_STATE: LiteralString = """
SELECT
  (SELECT coalesce(jsonb_object_agg(status, n), '{}'::jsonb)
     FROM (SELECT status::text AS status, count(*) AS n FROM import_job GROUP BY 1) AS s) AS jobs,
  (SELECT coalesce(extract(epoch FROM max(now() - lease_until)), 0)::float8
     FROM import_job WHERE status = 'RUNNING' AND lease_until < now()) AS overdue_seconds,
  (SELECT extract(epoch FROM max((regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]
                                 ::timestamptz) - now())::float8
     FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'service_order'::regclass) AS horizon_seconds
"""


@dataclass(frozen=True, slots=True)
class OpsState:
    jobs: dict[str, int]
    overdue_seconds: float
    horizon_seconds: float | None


async def ops_state(conn: AsyncConnection[Any]) -> OpsState:
    """Import jobs by state, the most overdue running lease (0: none), the partition horizon from now."""
    async with conn.cursor(row_factory=class_row(OpsState)) as cur:
        await cur.execute(OPS_STATE)
        row = await cur.fetchone()
    assert row is not None
    return row

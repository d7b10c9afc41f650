"""The worker process's pool: nexes_worker on the primary, through PgBouncer.

Sync (the import runner and the search actors run on worker threads), opened on first
use in the process that uses it, so never before Dramatiq forks its workers. One per
database: a worker serves one, tests run jobs in many.
"""

from __future__ import annotations

import threading

from psycopg_pool import ConnectionPool

from nexes.db.connect.conninfo import for_role
from nexes.db.connect.tagged import SyncTaggedCursor
from nexes.db.connect.traced import trace_sync_connection
from nexes.settings import Settings

_pools: dict[str, ConnectionPool] = {}
_lock = threading.Lock()


def worker_pool(settings: Settings) -> ConnectionPool:
    """This process's pool for the settings' primary (opened, or reopened after close_worker_pools)."""
    conninfo = for_role(settings.primary_url, settings, "nexes_worker", application_name="nexes-worker")
    with _lock:
        pool = _pools.get(conninfo)
        if pool is None or pool.closed:
            pool = _pools[conninfo] = ConnectionPool(
                conninfo,
                min_size=1,
                max_size=max(2, settings.worker_pool_size),
                timeout=30,
                name="worker-primary",
                kwargs={"prepare_threshold": None, "autocommit": True, "cursor_factory": SyncTaggedCursor},
                configure=trace_sync_connection,  # SQL spans (nexes.db.connect.traced)
                open=True,
            )
        return pool


def open_pools() -> list[ConnectionPool]:
    """This process's open worker pools (their gauges and health reports)."""
    with _lock:
        return [pool for pool in _pools.values() if not pool.closed]


def close_worker_pools() -> None:
    """Close every worker pool of this process (tests, before dropping a database)."""
    with _lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()

"""Connection pools: one per (role, target) per process, opened in the app's lifespan."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from nexes.db.connect import session_tag
from nexes.db.connect.conninfo import for_role
from nexes.db.connect.tagged import TaggedCursor
from nexes.db.connect.traced import trace_connection
from nexes.settings import Settings


def make_pool(
    url: str, settings: Settings, role: str, *, name: str, size: int, spa: bool = False
) -> AsyncConnectionPool:
    """A closed pool; PgBouncer in transaction mode means no server-side prepared statements.

    `spa`, the pools of the SPA's requests:
    - every connection opens with the pool (min_size = max_size), so a request never waits
      while one is made. A client connection to PgBouncer costs it a few kB and no server
      backend, so keeping them all open is cheap; the analysts' pools grow on demand.
    - the pool follows NEXES_PREPARE and NEXES_SQL_TAG (`session_tag.pool_kwargs`); the
      analysts' keep the request comment and never prepare (their statements rarely repeat)."""
    kwargs: dict[str, Any] = {"prepare_threshold": None, "autocommit": True, "cursor_factory": TaggedCursor}
    if spa:
        kwargs.update(session_tag.pool_kwargs(settings))
    return AsyncConnectionPool(
        for_role(url, settings, role, application_name=f"nexes-{name}"),
        min_size=max(1, size) if spa else 1,
        max_size=max(1, size),
        timeout=settings.pool_timeout,
        name=name,
        open=False,
        kwargs=kwargs,
        configure=trace_connection,  # SQL spans (nexes.db.connect.traced)
        connection_class=AsyncConnection,
        reconnect_timeout=60,
    )


@dataclass
class Pools:
    """The API process's pools: api@primary, api@each replica, analyst@each replica."""

    primary: AsyncConnectionPool
    replicas: list[AsyncConnectionPool] = field(default_factory=list)
    analyst: list[AsyncConnectionPool] = field(default_factory=list)

    @classmethod
    def for_api(cls, settings: Settings) -> Pools:
        size = settings.api_pool_size
        return cls(
            primary=make_pool(settings.primary_url, settings, "nexes_api", name="api-primary", size=size, spa=True),
            replicas=[
                make_pool(url, settings, "nexes_api", name=f"api-replica-{i}", size=size, spa=True)
                for i, url in enumerate(settings.replica_urls)
            ],
            analyst=[
                make_pool(url, settings, "nexes_analyst", name=f"analyst-replica-{i}", size=settings.analyst_pool_size)
                for i, url in enumerate(settings.replica_urls)
            ],
        )

    def all(self) -> list[AsyncConnectionPool]:
        return [self.primary, *self.replicas, *self.analyst]

    async def open(self) -> None:
        # wait=False: the API starts even when a server is down; requests then get
        # SERVICE_UNAVAILABLE (or another server) instead of a process that never starts.
        for pool in self.all():
            await pool.open(wait=False)

    async def wait(self, timeout: float) -> None:
        """Until the SPA's pools hold their connections, at most `timeout` seconds each: a
        worker that starts (a rolling restart) takes traffic only once it can serve it
        without making connections first. A server that is down only delays the start."""
        for pool in (self.primary, *self.replicas):
            with contextlib.suppress(PoolTimeout):
                await pool.wait(timeout)

    async def close(self) -> None:
        for pool in self.all():
            await pool.close(timeout=5)

    def stats(self) -> dict[str, dict[str, int]]:
        return {pool.name: pool.get_stats() for pool in self.all()}

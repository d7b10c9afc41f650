"""Search on the real stack: a module's own database, Redis db and Typesense collection,
indexed; the outbox synced in process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict

from nexes import settings as settings_module
from nexes.db.connect import worker as worker_pools
from nexes.db.seed import seed
from nexes.search import collection
from nexes.search.client import sync_client
from nexes.search.reindex import reindex
from nexes.search.sync import drain
from nexes.settings import Settings
from tests.support.databases import TEMPLATE_DB, drop_database, environ_for, recreate_database
from tests.support.imports import close_worker_pool

SEARCH = """
query($q: String!, $first: Int, $after: String, $filter: SearchFilter) {
  search(query: $q, first: $first, after: $after, filter: $filter) {
    engine found foundExact
    pageInfo { hasNextPage endCursor }
    edges { cursor score highlights { field snippet }
            node { id sodNumber status description createdAt customer { name code } } }
  }
}"""


def search_environ(db: str, redis_db: int, **extra: str) -> dict[str, str]:
    """The stack's variables for a search module's own database, Redis db and collection."""
    env = environ_for(db)
    url = urlsplit(env["NEXES_REDIS_URL"])
    env.update(
        NEXES_REDIS_URL=url._replace(path=f"/{redis_db}").geturl(),
        NEXES_TYPESENSE_COLLECTION=f"{db}_service_orders",
        **extra,
    )
    return env


@contextmanager
def indexed_database(template_settings: Settings, env: dict[str, str], orders: int) -> Iterator[Settings]:
    """A database re-created from the template, seeded with `orders` orders and reindexed;
    afterwards its collections, alias, Redis db and database are gone."""
    db = str(conninfo_to_dict(env["NEXES_ADMIN_URL"])["dbname"])
    recreate_database(template_settings.admin_url, db, template=TEMPLATE_DB)
    close_worker_pool()
    settings = settings_module.load(env)
    seed(settings.admin_url, orders, defer=False)
    client = sync_client(settings)
    reindex(settings, client)
    try:
        yield settings
    finally:
        for name in collection.versions(client, settings.typesense_collection):
            client.collections[name].delete()
        client.aliases[settings.typesense_collection].delete()
        close_worker_pool()
        redis.Redis.from_url(settings.redis_url).flushdb()
        drop_database(template_settings.admin_url, db)


def worker_pool(settings: Settings) -> Any:
    return worker_pools.worker_pool(settings)


def sync_now(settings: Settings) -> None:
    """Drain the search outbox into Typesense, in this process."""
    drain(worker_pool(settings), sync_client(settings), settings.typesense_collection, batch=500)


def pick(conn: psycopg.Connection, where: str = "TRUE") -> tuple[int, str, str, str]:
    """The first order matching `where` (trusted test SQL): (id, sod_number, customer name, description)."""
    row = conn.execute(
        "SELECT o.id, o.sod_number, c.name, o.description FROM service_order o JOIN customer c ON c.id = o.customer_id "
        f"WHERE {where} ORDER BY o.id LIMIT 1"
    ).fetchone()
    assert row
    return row

"""`nexes seed`: realistic demo and benchmark data, generated inside PostgreSQL.

Everything is set-based (generate_series), in chunks of consecutive orders, one
transaction per chunk, two chunks at a time (one per core). Pseudo-random choices
come from `hashint8` of the order's index, so a seed is repeatable. Each chunk
writes keys, orders, lines, ledger movements, on-hand and dashboard stats together,
so every invariant holds after every committed chunk. The search outbox is skipped
(`nexes.skip_outbox`); a full reindex is requested instead.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from nexes.db import partitions
from nexes.db import search as search_db
from nexes.db.sql import load

log = logging.getLogger(__name__)
# The fold of customer_stat_cum after a load that deferred it (db/sql/seed.sql).
CUM_FOLD = load("seed")["cum_fold"]

CHUNK = 50_000
YEARS = 5
# Measured on a 10M-order seed (bench/README.md), with a margin: heap, indexes and
# WAL of an order with its ~2.2 lines and their movements.
BYTES_PER_ORDER = 2_600
SEED_LOCK = 0x5EED  # serialises the on-hand and dashboard updates of parallel chunks


class SeedError(RuntimeError):
    """The seed cannot run (disk space, a missing schema)."""


class DeferredIndexRefused(SeedError):
    """A deferred_index row is not a definition `defer_indexes` records: it is not run."""


@dataclass(frozen=True)
class Plan:
    orders: int
    base_id: int  # the first order id; order i gets base_id + i
    start: datetime
    span_seconds: float
    customer_ids: list[int]
    item_ids: list[int]


CUSTOMERS = """
INSERT INTO customer (code, name)
SELECT 'C' || lpad(n::text, 6, '0'),
       (ARRAY['Acme', 'Northwind', 'Bluewater', 'Granite', 'Summit', 'Riverside', 'Oakridge', 'Harbor',
              'Lakeside', 'Pioneer', 'Evergreen', 'Keystone', 'Redwood', 'Silverline', 'Brightway',
              'Cedar', 'Ironbridge', 'Meadow', 'Westfield', 'Highland'])[1 + abs(hashint8(n)) %% 20]
       || ' ' ||
       (ARRAY['Facilities', 'Property', 'Logistics', 'Hospital', 'Hotels', 'Schools', 'Foods', 'Retail',
              'Energy', 'Housing', 'Labs', 'Motors', 'Offices', 'Dairy', 'Clinics'])[1 + abs(hashint8(n + 7)) %% 15]
       || ' ' ||
       (ARRAY['Ltd', 'GmbH', 'Inc', 'LLC', 'AG', 'BV', 'plc', 'SA'])[1 + abs(hashint8(n + 13)) %% 8]
       || CASE WHEN n > 6000 THEN ' ' || (n / 6000)::text ELSE '' END
FROM generate_series(%(first)s::int, %(last)s::int) AS n
ON CONFLICT (code) DO NOTHING
"""

STOCK_ITEMS = """
WITH item AS (
    INSERT INTO stock_item (sku, name, on_hand)
    SELECT 'SKU-' || lpad(n::text, 5, '0'),
           (ARRAY['Copper pipe', 'Ball valve', 'Thermostat', 'Filter cartridge', 'Circuit breaker',
                  'Pump seal kit', 'Fan motor', 'Gasket', 'Pressure sensor', 'Relay', 'Heat exchanger',
                  'Expansion vessel', 'Cable', 'Fuse', 'Compressor oil'])[1 + abs(hashint8(n)) %% 15]
           || ' ' ||
           (ARRAY['15mm', '22mm', '28mm', 'DN20', 'DN25', '230V', '400V', 'small', 'large', '10m'])
               [1 + abs(hashint8(n + 3)) %% 10],
           %(opening)s::bigint
    FROM generate_series(%(first)s::int, %(last)s::int) AS n
    ON CONFLICT (sku) DO NOTHING
    RETURNING id, sku, on_hand
)
INSERT INTO stock_movement (stock_item_id, quantity, kind, idempotency_key)
SELECT id, on_hand, 'OPENING', 'opening:' || sku FROM item
"""

RESERVE_IDS = """
SELECT setval('service_order_id_seq', nextval('service_order_id_seq') + %(n)s - 1) - %(n)s + 1
"""

# Order i (0-based) of the plan; the columns the later statements read.
CHUNK_ORDERS = """
CREATE TEMP TABLE seed_order ON COMMIT DROP AS
WITH g AS (
    SELECT i,
           %(base)s + i AS id,
           %(start)s::timestamptz
             + make_interval(secs => %(span)s * (i + (abs(hashint8(i)) %% 1000) / 1000.0) / %(n)s) AS created_at
    FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i
), aged AS (
    SELECT g.*, extract(epoch FROM now() - created_at) / 86400 AS age_days, abs(hashint8(i * 7 + 1)) %% 1000 AS r
    FROM g
)
SELECT id,
       date_trunc('microseconds', created_at) AS created_at,
       'SOD-' || extract(year FROM created_at AT TIME ZONE 'UTC')::int || '-'
           || lpad(id::text, greatest(7, length(id::text)), '0')
           AS sod_number,
       (%(customers)s::bigint[])[1 + floor(cardinality(%(customers)s::bigint[])
           * power((abs(hashint8(i + 11)) %% 100000) / 100000.0, 2))::int] AS customer_id,
       (CASE
            WHEN age_days > 90 THEN
                CASE WHEN r < 880 THEN 'COMPLETED' WHEN r < 960 THEN 'CANCELLED' WHEN r < 975 THEN 'IN_PROGRESS'
                     WHEN r < 992 THEN 'OPEN' ELSE 'DRAFT' END
            WHEN age_days > 14 THEN
                CASE WHEN r < 600 THEN 'COMPLETED' WHEN r < 660 THEN 'CANCELLED' WHEN r < 810 THEN 'IN_PROGRESS'
                     WHEN r < 960 THEN 'OPEN' ELSE 'DRAFT' END
            ELSE
                CASE WHEN r < 200 THEN 'COMPLETED' WHEN r < 240 THEN 'CANCELLED' WHEN r < 540 THEN 'IN_PROGRESS'
                     WHEN r < 890 THEN 'OPEN' ELSE 'DRAFT' END
        END)::order_status AS status,
       (ARRAY['Annual service of', 'Repair of', 'Installation of', 'Inspection of', 'Emergency call-out for',
              'Replacement of', 'Maintenance of', 'Commissioning of'])[1 + abs(hashint8(i + 17)) %% 8]
       || ' ' ||
       (ARRAY['boiler', 'heat pump', 'air conditioning', 'ventilation unit', 'fire alarm panel',
              'water heater', 'electrical panel', 'cold store', 'elevator drive', 'backup generator'])
           [1 + abs(hashint8(i + 19)) %% 10]
       || ' at ' ||
       (ARRAY['main building', 'warehouse', 'north wing', 'basement', 'roof', 'kitchen', 'plant room',
              'reception', 'site office'])[1 + abs(hashint8(i + 23)) %% 9] AS description,
       (CASE WHEN abs(hashint8(i + 29)) %% 100 < 85 THEN 'EUR'
             WHEN abs(hashint8(i + 29)) %% 100 < 95 THEN 'USD' ELSE 'GBP' END)::char(3) AS currency,
       CASE WHEN abs(hashint8(i + 31)) %% 100 < 35 THEN 1 WHEN abs(hashint8(i + 31)) %% 100 < 65 THEN 2
            WHEN abs(hashint8(i + 31)) %% 100 < 85 THEN 3 WHEN abs(hashint8(i + 31)) %% 100 < 95 THEN 4
            ELSE 5 END AS nlines
FROM aged
"""

CHUNK_LINES = """
CREATE TEMP TABLE seed_line ON COMMIT DROP AS
SELECT o.id, o.created_at, o.sod_number, o.status, l.line_no::smallint AS line_no,
       (%(items)s::bigint[])[1 + abs(hashint8(o.id * 8 + l.line_no)) %% cardinality(%(items)s::bigint[])]
           AS stock_item_id,
       (1 + abs(hashint8(o.id * 8 + l.line_no + 1)) %% 10)::int AS quantity,
       (5 + (abs(hashint8(o.id * 8 + l.line_no + 2)) %% 40000) / 100.0)::numeric(12, 2) AS unit_price
FROM seed_order AS o, generate_series(1, o.nlines) AS l (line_no)
"""

CHUNK_KEYS = """
INSERT INTO service_order_key (sod_number, id, created_at)
SELECT sod_number, id, created_at FROM seed_order
"""

CHUNK_TOTALS = """
CREATE TEMP TABLE seed_total ON COMMIT DROP AS
SELECT id, sum(quantity * unit_price) AS total FROM seed_line GROUP BY id
"""

CHUNK_INSERT_ORDERS = """
INSERT INTO service_order
    (id, created_at, sod_number, customer_id, status, description, currency, total_amount, updated_at)
SELECT o.id, o.created_at, o.sod_number, o.customer_id, o.status, o.description, o.currency, t.total,
       o.created_at + make_interval(hours => (CASE WHEN o.status = 'DRAFT' THEN 0 ELSE 1 + o.id % 200 END)::int)
FROM seed_order AS o JOIN seed_total AS t USING (id)
ORDER BY o.created_at
"""

CHUNK_INSERT_LINES = """
INSERT INTO service_order_line (order_id, created_at, line_no, stock_item_id, quantity, unit_price)
SELECT id, created_at, line_no, stock_item_id, quantity, unit_price FROM seed_line ORDER BY created_at
"""

# A line of an order that is not CANCELLED has consumed its quantity; a CANCELLED
# order in the seed never reached the stock, so its lines have no movements (sum 0).
CHUNK_MOVEMENTS = """
INSERT INTO stock_movement (stock_item_id, quantity, kind, sod_number, line_no, idempotency_key, created_at)
SELECT stock_item_id, -quantity, 'CONSUMPTION', sod_number, line_no,
       'order:' || sod_number || ':' || line_no || ':0', created_at
FROM seed_line WHERE status <> 'CANCELLED'
"""

CHUNK_ON_HAND = """
UPDATE stock_item AS s SET on_hand = s.on_hand - d.consumed, updated_at = now()
FROM (SELECT stock_item_id, sum(quantity) AS consumed FROM seed_line
      WHERE status <> 'CANCELLED' GROUP BY stock_item_id) AS d
WHERE s.id = d.stock_item_id
"""

CHUNK_STATS = """
INSERT INTO dashboard_stat AS d (day, status, currency, order_count, total_amount)
SELECT (o.created_at AT TIME ZONE 'UTC')::date, o.status, o.currency, count(*), sum(t.total)
FROM seed_order AS o JOIN seed_total AS t USING (id)
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
ON CONFLICT (day, status, currency) DO UPDATE
SET order_count = d.order_count + excluded.order_count, total_amount = d.total_amount + excluded.total_amount
"""


# The plain secondary indexes of the big tables; unique ones stay, since concurrent
# writers' ON CONFLICT needs them. pg_get_indexdef shows a partitioned parent's index
# as "ON ONLY", which would build no child index, hence the replace().
DEFERRABLE_INDEXES = """
SELECT i.relname, replace(pg_get_indexdef(i.oid), ' ON ONLY ', ' ON ')
FROM pg_index AS x
JOIN pg_class AS i ON i.oid = x.indexrelid
JOIN pg_class AS t ON t.oid = x.indrelid
WHERE t.relname IN ('service_order', 'stock_movement') AND t.relnamespace = 'public'::regnamespace
  AND NOT x.indisunique
ORDER BY i.relname
"""


# What defer_indexes records (pg_get_indexdef of DEFERRABLE_INDEXES), and nothing else:
# a plain index of one of those tables on bare columns (no expression, no function call),
# at most a "column IS NOT NULL" predicate. The rows are run as the owner (by `nexes
# migrate` and `nexes seed`), so a row of any other shape is refused, never run; no
# application role may write the table either (migration 0030).
_COLUMN = r"[a-z_][a-z0-9_]*(?: gin_trgm_ops)?(?: DESC)?"
DEFERRED_DEFINITION = re.compile(
    r"CREATE INDEX (?:CONCURRENTLY )?(?P<name>[a-z_][a-z0-9_]*) ON public\.(?:service_order|stock_movement) "
    rf"USING (?:btree|gin) \({_COLUMN}(?:, {_COLUMN})*\)(?: WHERE \([a-z_][a-z0-9_]* IS NOT NULL\))?"
)


def check_deferred(name: str, definition: str) -> None:
    """Refuse a deferred_index row that `defer_indexes` cannot have written."""
    match = DEFERRED_DEFINITION.fullmatch(definition)
    if not match or match["name"] != name:
        raise DeferredIndexRefused(
            f"deferred_index row {name[:63]!r} is not an index definition nexes records "
            f"({definition[:200]!r}); nothing was run. Find out who wrote it, then delete that row "
            "of deferred_index as the owner and run the command again"
        )


def has_orders(conn: psycopg.Connection) -> bool:
    """Whether the database holds any order, live or archived (`nexes seed --if-empty`)."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM service_order_key)").fetchone()
    return bool(row and row[0])


def defer_indexes(conn: psycopg.Connection) -> list[str]:
    """Drop the secondary indexes, recording them first; returns their names."""
    with conn.transaction():
        found = conn.execute(DEFERRABLE_INDEXES).fetchall()
        for name, definition in found:
            conn.execute(
                "INSERT INTO deferred_index (name, definition) VALUES (%s, %s) ON CONFLICT (name) DO NOTHING",
                [name, definition],
            )
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    return [name for name, _ in found]


def rebuild_deferred_indexes(conn: psycopg.Connection, progress: Callable[[str], None] | None = None) -> int:
    """Build every index a bulk load deferred, each in the transaction that forgets it.

    Every row is checked first (check_deferred): one of another shape stops the rebuild
    before anything runs (DeferredIndexRefused)."""
    pending = conn.execute("SELECT name, definition FROM deferred_index ORDER BY name").fetchall()
    for name, definition in pending:
        check_deferred(name, definition)
    for name, definition in pending:
        if progress:
            progress(f"building index {name}")
        with conn.transaction():
            # PostgreSQL's own pg_get_indexdef output, of the one shape check_deferred lets through.
            conn.execute(sql.SQL(definition))
            conn.execute("DELETE FROM deferred_index WHERE name = %s", [name])
    return len(pending)


def should_defer(conn: psycopg.Connection, orders: int) -> bool:
    """Bulk mode pays off when the load dwarfs what is there (and nobody else writes)."""
    row = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM service_order_key LIMIT %s) AS s", [orders // 10 + 1]
    ).fetchone()
    return orders >= 200_000 and row is not None and row[0] <= orders // 10


def required_bytes(orders: int) -> int:
    return orders * BYTES_PER_ORDER


def check_disk(conn: psycopg.Connection, orders: int) -> None:
    """Refuse to start when the database server's disk cannot hold the data."""
    try:
        row = conn.execute("SELECT current_setting('data_directory')").fetchone()
        data_dir = row[0] if row else None
        free = shutil.disk_usage(data_dir).free if data_dir else None
    except psycopg.errors.InsufficientPrivilege:
        conn.rollback()
        free = None  # the role may not read data_directory (pg_monitor grants it)
    except OSError:
        free = None  # a remote server: its disk is not ours to measure
    if free is None:
        log.warning("cannot see the database server's disk; not checking free space")
        return
    need = required_bytes(orders)
    if free < need * 1.2:
        raise SeedError(
            f"seeding {orders:,} orders needs about {need / 2**30:.1f} GiB (+20% margin) on the database "
            f"server's disk, and {data_dir} has {free / 2**30:.1f} GiB free; free space or seed fewer orders"
        )


def prepare(conn: psycopg.Connection, orders: int, now: datetime) -> Plan:
    """Customers, stock items and their opening balances, partitions; then the plan."""
    customers = max(200, min(50_000, orders // 200))
    items = max(50, min(2_000, orders // 50))
    with conn.transaction():
        conn.execute(CUSTOMERS, {"first": 1, "last": customers})
        conn.execute(STOCK_ITEMS, {"first": 1, "last": items, "opening": 1_000_000})
    start = now - timedelta(days=365 * YEARS)
    partitions.ensure_range(conn, start.date(), now.date())
    # customer_stat_cum ends at its horizon, and the fold at the end (CUM_FOLD) fills it up to
    # there only: in a database whose upkeep last ran in an earlier year (before that year's
    # December), this year's orders would be left out of it, and so out of the top-customers
    # report, which reads nothing past the horizon. The write path rolls it for its orders
    # itself (customer_stat_cum_add); the seed defers that, so it rolls it as the upkeep does.
    conn.execute("SELECT customer_stat_cum_roll(%s)", [partitions.cum_horizon(now.date())])
    (base,) = conn.execute(RESERVE_IDS, {"n": orders}).fetchone() or (0,)
    customer_ids = [r[0] for r in conn.execute("SELECT id FROM customer ORDER BY id LIMIT %s", [customers])]
    item_ids = [r[0] for r in conn.execute("SELECT id FROM stock_item ORDER BY id LIMIT %s", [items])]
    return Plan(orders, int(base), start, (now - start).total_seconds(), customer_ids, item_ids)


def seed_chunk(conninfo: str, plan: Plan, lo: int, hi: int) -> int:
    """Orders lo..hi of the plan, in one transaction; returns how many."""
    params = {
        "lo": lo,
        "hi": hi,
        "n": plan.orders,
        "base": plan.base_id,
        "start": plan.start,
        "span": plan.span_seconds,
        "customers": plan.customer_ids,
        "items": plan.item_ids,
    }
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL nexes.skip_outbox = 'on'")
        conn.execute("SET LOCAL nexes.defer_customer_cum = 'on'")  # folded once at the end
        conn.execute("SET LOCAL synchronous_commit = off")  # a lost chunk is simply re-seeded
        conn.execute(CHUNK_ORDERS, params)
        conn.execute(CHUNK_LINES, params)
        conn.execute(CHUNK_TOTALS)
        conn.execute(CHUNK_KEYS)
        conn.execute(CHUNK_INSERT_ORDERS)
        conn.execute(CHUNK_INSERT_LINES)
        conn.execute(CHUNK_MOVEMENTS)
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [SEED_LOCK])
        conn.execute(CHUNK_ON_HAND)
        conn.execute(CHUNK_STATS)
    return hi - lo + 1


def seed(
    conninfo: str,
    orders: int,
    *,
    parallel: int = 2,
    defer: bool | None = None,
    progress: Callable[[int], None] | None = None,
    status: Callable[[str], None] | None = None,
    now: datetime | None = None,
) -> Plan:
    """Add `orders` service orders (with customers, stock and everything they imply).

    `defer` (default: when the load dwarfs the existing data) drops the secondary
    indexes for the load and rebuilds them after: sorted builds beat incremental
    inserts several times over. Reads are slow meanwhile, so it is for loading.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)  # its date is the partitions' and the horizon's (UTC)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        check_disk(conn, orders)
        rebuild_deferred_indexes(conn)
        plan = prepare(conn, orders, now)
        if defer if defer is not None else should_defer(conn, orders):
            deferred = defer_indexes(conn)
            if status:
                status(f"deferred {len(deferred)} indexes until the load ends")
    ranges = [(lo, min(lo + CHUNK, orders) - 1) for lo in range(0, orders, CHUNK)]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for done in pool.map(lambda r: seed_chunk(conninfo, plan, *r), ranges):
            if progress:
                progress(done)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rebuild_deferred_indexes(conn, progress=status)
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = 0")
            conn.execute(CUM_FOLD)
        search_db.ask_reindex(conn)
        for table in (
            "customer",
            "stock_item",
            "service_order_key",
            "service_order",
            "service_order_line",
            "stock_movement",
            "dashboard_stat",
        ):
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    return plan

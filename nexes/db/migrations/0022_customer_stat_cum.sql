-- The top-customers report over any range of whole months, in O(customers) whatever
-- the range. Per (year, customer, currency): the orders and amounts of every earlier
-- year (before_n, before_a) and, within the year, cumulative up to each month (nMM and
-- aMM cover months 1..MM). The total up to the end of month MM of year Y is before + MM
-- of row Y, so a range is two rows per customer (its last month's row minus the one
-- before its first month): two index scans on the year, not a sum over every month.
-- Amounts are in cents and the key leads with the customer id: a report adds, joins and
-- sorts one pair per customer, and bigint arithmetic and comparisons are several times
-- cheaper than numeric and char(3) (measured at 10M orders).
--
-- Rows are dense per (customer, currency), from the first year with orders to the
-- horizon year, so a lookup finds the row or knows there were no orders up to then. A
-- change in year Y touches the rows Y..horizon (one or two for current orders). The
-- horizon advances (customer_stat_cum_roll) when partitions reach a new year, or at the
-- first write past it.
--
-- Fed by statement-level triggers on customer_stat_month, so every path that moves that
-- table (the service_order triggers, reconciliation's corrections) moves this one in the
-- same transaction. Reconciliation compares it with customer_stat_cum_expected.
CREATE TABLE customer_stat_cum (
    year        int NOT NULL,
    currency    char(3) NOT NULL,
    customer_id bigint NOT NULL,
    before_n    bigint NOT NULL DEFAULT 0,
    before_a    bigint NOT NULL DEFAULT 0,
    n01 bigint NOT NULL DEFAULT 0, a01 bigint NOT NULL DEFAULT 0,
    n02 bigint NOT NULL DEFAULT 0, a02 bigint NOT NULL DEFAULT 0,
    n03 bigint NOT NULL DEFAULT 0, a03 bigint NOT NULL DEFAULT 0,
    n04 bigint NOT NULL DEFAULT 0, a04 bigint NOT NULL DEFAULT 0,
    n05 bigint NOT NULL DEFAULT 0, a05 bigint NOT NULL DEFAULT 0,
    n06 bigint NOT NULL DEFAULT 0, a06 bigint NOT NULL DEFAULT 0,
    n07 bigint NOT NULL DEFAULT 0, a07 bigint NOT NULL DEFAULT 0,
    n08 bigint NOT NULL DEFAULT 0, a08 bigint NOT NULL DEFAULT 0,
    n09 bigint NOT NULL DEFAULT 0, a09 bigint NOT NULL DEFAULT 0,
    n10 bigint NOT NULL DEFAULT 0, a10 bigint NOT NULL DEFAULT 0,
    n11 bigint NOT NULL DEFAULT 0, a11 bigint NOT NULL DEFAULT 0,
    n12 bigint NOT NULL DEFAULT 0, a12 bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (year, customer_id, currency)
) WITH (fillfactor = 80);

CREATE TABLE customer_stat_cum_horizon (
    single boolean PRIMARY KEY DEFAULT true CHECK (single),
    year   int NOT NULL
);
INSERT INTO customer_stat_cum_horizon (year)
SELECT greatest(extract(year FROM now() AT TIME ZONE 'UTC')::int + 1,
                (SELECT extract(year FROM max(month))::int FROM customer_stat_month));

-- Writers hold this advisory lock shared, a roll holds it exclusive: a roll never misses
-- the rows a concurrent writer adds below the old horizon. 0x6E65786573 is "nexes".
CREATE FUNCTION customer_stat_cum_roll(target int) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    h int;
BEGIN
    PERFORM pg_advisory_xact_lock(x'6E657865730C'::bigint);
    SELECT year INTO h FROM customer_stat_cum_horizon;
    IF target <= h THEN
        RETURN;
    END IF;
    INSERT INTO customer_stat_cum (year, currency, customer_id, before_n, before_a)
    SELECT g.y, c.currency, c.customer_id, c.before_n + c.n12, c.before_a + c.a12
    FROM customer_stat_cum AS c, generate_series(h + 1, target) AS g(y)
    WHERE c.year = h
    ORDER BY 1, 3, 2;
    UPDATE customer_stat_cum_horizon SET year = target;
END
$$;

-- Adds deltas (rows shaped like customer_stat_month: month, currency, customer, orders,
-- amount): each one to its own year's months and to every later year's `before`.
CREATE FUNCTION customer_stat_cum_add(deltas customer_stat_month[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    h int;
    top int;
BEGIN
    SELECT extract(year FROM max(month))::int INTO top FROM unnest(deltas);
    IF top IS NULL THEN
        RETURN;
    END IF;
    SELECT year INTO h FROM customer_stat_cum_horizon;
    IF top > h THEN
        PERFORM customer_stat_cum_roll(top);
    ELSE
        PERFORM pg_advisory_xact_lock_shared(x'6E657865730C'::bigint);
    END IF;
    SELECT year INTO h FROM customer_stat_cum_horizon;  -- read again under the lock
    INSERT INTO customer_stat_cum AS c (year, currency, customer_id, before_n, before_a, n01, a01, n02, a02, n03, a03, n04, a04, n05, a05, n06, a06, n07, a07, n08, a08, n09, a09, n10, a10, n11, a11, n12, a12)
    SELECT t.y, d.currency, d.customer_id,
           coalesce(sum(d.n) FILTER (WHERE d.y < t.y), 0), coalesce(sum(d.a) FILTER (WHERE d.y < t.y), 0),
           coalesce(sum(d.n) FILTER (WHERE d.y = t.y AND d.m <= 1), 0), coalesce(sum(d.a) FILTER (WHERE d.y = t.y AND d.m <= 1), 0),
           coalesce(sum(d.n) FILTER (WHERE d.y = t.y AND d.m <= 2), 0), coalesce(sum(d.a) FILTER (WHERE d.y = t.y AND d.m <= 2), 0),
           coalesce(sum(d.n) FILTER (WHERE d.y = t.y AND d.m <= 3), 0), coalesce(sum(d.a) FILTER (WHERE d.y = t.y AND d.m <= 3), 0),
           coalesce(sum(d.n) FILTER (WHERE d.y = t.y AND d.m <= 4), 0), coalesce(sum(d.a) FILTER (WHERE d.y = t.y AND d.m <= 4), 0),
           coalesce(sum(d.n) FILTER (WHERE d.y = t.y AND d.m <= 5), 0), coalesce(sum(d.a) FILTER (WHERE d.y = t.y AND d.m <= 5), 0),
           coalesce(sum(d.n) FILTER (WHERE d.y = t.y AND d.m <= 6), 0), coalesce(sum(d.a) FILTER (WHERE d.y = t.y AND d.m <= 6), 0),
           coalesce(sum(d.n) FILTER (WHERE d.y = t.y AND d.m <= 7), 0), coalesce(sum(d.a) FILTER (WHERE d.y = t.y AND d.m <= 7), 0),
           coalesce(sum(d.n) FILTER (WHERE d.y = t.y AND d.m <= 8), 0), coalesce(sum(d.a) FILTER (WHERE d.y = t.y AND d.m <= 8), 0),
           coalesce(sum(d.n) FILTER (WHERE d.y = t.y AND d.m <= 9), 0), coalesce(sum(d.a) FILTER (WHERE d.y = t.y AND d.m <= 9), 0),
           coalesce(sum(d.n) FILTER (WHERE d.y = t.y AND d.m <= 10), 0), coalesce(sum(d.a) FILTER (WHERE d.y = t.y AND d.m <= 10), 0),
           coalesce(sum(d.n) FILTER (WHERE d.y = t.y AND d.m <= 11), 0), coalesce(sum(d.a) FILTER (WHERE d.y = t.y AND d.m <= 11), 0),
           coalesce(sum(d.n) FILTER (WHERE d.y = t.y AND d.m <= 12), 0), coalesce(sum(d.a) FILTER (WHERE d.y = t.y AND d.m <= 12), 0)
    FROM (SELECT extract(year FROM month)::int AS y, extract(month FROM month)::int AS m, currency, customer_id,
                 order_count AS n, (total_amount * 100)::bigint AS a
          FROM unnest(deltas) WHERE order_count <> 0 OR total_amount <> 0) AS d,
         generate_series(d.y, h) AS t(y)
    GROUP BY 1, 2, 3
    ORDER BY 1, 3, 2
    ON CONFLICT (year, currency, customer_id) DO UPDATE SET
        before_n = c.before_n + excluded.before_n, before_a = c.before_a + excluded.before_a,
        n01 = c.n01 + excluded.n01, a01 = c.a01 + excluded.a01,
        n02 = c.n02 + excluded.n02, a02 = c.a02 + excluded.a02,
        n03 = c.n03 + excluded.n03, a03 = c.a03 + excluded.a03,
        n04 = c.n04 + excluded.n04, a04 = c.a04 + excluded.a04,
        n05 = c.n05 + excluded.n05, a05 = c.a05 + excluded.a05,
        n06 = c.n06 + excluded.n06, a06 = c.a06 + excluded.a06,
        n07 = c.n07 + excluded.n07, a07 = c.a07 + excluded.a07,
        n08 = c.n08 + excluded.n08, a08 = c.a08 + excluded.a08,
        n09 = c.n09 + excluded.n09, a09 = c.a09 + excluded.a09,
        n10 = c.n10 + excluded.n10, a10 = c.a10 + excluded.a10,
        n11 = c.n11 + excluded.n11, a11 = c.a11 + excluded.a11,
        n12 = c.n12 + excluded.n12, a12 = c.a12 + excluded.a12;
END
$$;

-- Bulk loaders (the seed) set `nexes.defer_customer_cum` locally and fold the table
-- from customer_stat_month once at the end (nexes.db.reconcile.CUM_FOLD): a load
-- spread over past years would otherwise rewrite every later year's rows per chunk.
CREATE FUNCTION customer_stat_cum_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('nexes.defer_customer_cum', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM customer_stat_cum_add(ARRAY(
            SELECT ROW(month, currency, customer_id, order_count, total_amount)::customer_stat_month FROM new_rows));
    ELSE
        PERFORM customer_stat_cum_add(ARRAY(
            SELECT ROW(month, currency, customer_id, sum(n)::bigint, sum(a))::customer_stat_month
            FROM (SELECT month, currency, customer_id, order_count AS n, total_amount AS a FROM new_rows
                  UNION ALL
                  SELECT month, currency, customer_id, -order_count, -total_amount FROM old_rows) AS x
            GROUP BY month, currency, customer_id));
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER customer_stat_cum_insert AFTER INSERT ON customer_stat_month
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION customer_stat_cum_apply();
CREATE TRIGGER customer_stat_cum_update AFTER UPDATE ON customer_stat_month
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION customer_stat_cum_apply();

-- What customer_stat_cum must hold, from customer_stat_month: for the backfill below, the
-- invariant check and reconciliation.
CREATE VIEW customer_stat_cum_expected AS
WITH months AS (
    SELECT year, currency, customer_id,
           sum(order_count) AS year_n, sum(a) AS year_a,
           sum(order_count) FILTER (WHERE m <= 1) AS n01, sum(a) FILTER (WHERE m <= 1) AS a01,
           sum(order_count) FILTER (WHERE m <= 2) AS n02, sum(a) FILTER (WHERE m <= 2) AS a02,
           sum(order_count) FILTER (WHERE m <= 3) AS n03, sum(a) FILTER (WHERE m <= 3) AS a03,
           sum(order_count) FILTER (WHERE m <= 4) AS n04, sum(a) FILTER (WHERE m <= 4) AS a04,
           sum(order_count) FILTER (WHERE m <= 5) AS n05, sum(a) FILTER (WHERE m <= 5) AS a05,
           sum(order_count) FILTER (WHERE m <= 6) AS n06, sum(a) FILTER (WHERE m <= 6) AS a06,
           sum(order_count) FILTER (WHERE m <= 7) AS n07, sum(a) FILTER (WHERE m <= 7) AS a07,
           sum(order_count) FILTER (WHERE m <= 8) AS n08, sum(a) FILTER (WHERE m <= 8) AS a08,
           sum(order_count) FILTER (WHERE m <= 9) AS n09, sum(a) FILTER (WHERE m <= 9) AS a09,
           sum(order_count) FILTER (WHERE m <= 10) AS n10, sum(a) FILTER (WHERE m <= 10) AS a10,
           sum(order_count) FILTER (WHERE m <= 11) AS n11, sum(a) FILTER (WHERE m <= 11) AS a11,
           sum(order_count) FILTER (WHERE m <= 12) AS n12, sum(a) FILTER (WHERE m <= 12) AS a12
    FROM (SELECT extract(year FROM month)::int AS year, extract(month FROM month)::int AS m,
                 currency, customer_id, order_count, (total_amount * 100)::bigint AS a
          FROM customer_stat_month) AS c
    GROUP BY 1, 2, 3
), span AS (
    SELECT currency, customer_id, min(year) AS first FROM months GROUP BY 1, 2
), years AS (
    SELECT s.currency, s.customer_id, g.year
    FROM span AS s, customer_stat_cum_horizon AS h, generate_series(s.first, greatest(h.year, s.first)) AS g(year)
)
SELECT y.year, y.currency, y.customer_id,
       (coalesce(sum(m.year_n) OVER w, 0) - coalesce(m.year_n, 0))::bigint AS before_n,
       (coalesce(sum(m.year_a) OVER w, 0) - coalesce(m.year_a, 0))::bigint AS before_a,
       coalesce(m.n01, 0)::bigint AS n01, coalesce(m.a01, 0)::bigint AS a01,
       coalesce(m.n02, 0)::bigint AS n02, coalesce(m.a02, 0)::bigint AS a02,
       coalesce(m.n03, 0)::bigint AS n03, coalesce(m.a03, 0)::bigint AS a03,
       coalesce(m.n04, 0)::bigint AS n04, coalesce(m.a04, 0)::bigint AS a04,
       coalesce(m.n05, 0)::bigint AS n05, coalesce(m.a05, 0)::bigint AS a05,
       coalesce(m.n06, 0)::bigint AS n06, coalesce(m.a06, 0)::bigint AS a06,
       coalesce(m.n07, 0)::bigint AS n07, coalesce(m.a07, 0)::bigint AS a07,
       coalesce(m.n08, 0)::bigint AS n08, coalesce(m.a08, 0)::bigint AS a08,
       coalesce(m.n09, 0)::bigint AS n09, coalesce(m.a09, 0)::bigint AS a09,
       coalesce(m.n10, 0)::bigint AS n10, coalesce(m.a10, 0)::bigint AS a10,
       coalesce(m.n11, 0)::bigint AS n11, coalesce(m.a11, 0)::bigint AS a11,
       coalesce(m.n12, 0)::bigint AS n12, coalesce(m.a12, 0)::bigint AS a12
FROM years AS y LEFT JOIN months AS m USING (year, currency, customer_id)
WINDOW w AS (PARTITION BY y.currency, y.customer_id ORDER BY y.year);

INSERT INTO customer_stat_cum SELECT * FROM customer_stat_cum_expected ORDER BY 1, 3, 2;

ALTER TABLE stat_drift DROP CONSTRAINT stat_drift_check_name_check;
ALTER TABLE stat_drift ADD CONSTRAINT stat_drift_check_name_check
    CHECK (check_name IN ('dashboard_stat', 'on_hand', 'negative_stock', 'line_ledger', 'customer_stat',
                          'customer_stat_cum'));

-- The top-customers report reads each year's leaders by whole-year amount first
-- (nexes.db.reports.top_customers: Fagin's threshold algorithm).
CREATE INDEX customer_stat_cum_year_total_idx ON customer_stat_cum (year, currency, a12 DESC);

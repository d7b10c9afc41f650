-- Reconciliation statements (nexes.db.reconcile), one per named block (nexes.db.sql.load).
-- Written out in full, not templated: the statistics tables share a shape, and the blocks
-- repeat it on purpose so that each reads as the statement the server runs.

-- name: slice
-- dashboard_stat for one quarter [%(lo)s, %(hi)s): drift recorded in stat_drift and added as a delta;
-- returns the buckets corrected.
WITH truth AS (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, status, currency,
           count(*) AS order_count, sum(total_amount) AS total_amount
    FROM (
    SELECT created_at, status, currency, customer_id, total_amount FROM service_order
    WHERE created_at >= %(lo)s::date AT TIME ZONE 'UTC' AND created_at < %(hi)s::date AT TIME ZONE 'UTC'
    UNION ALL
    SELECT created_at, status, currency, customer_id, total_amount FROM service_order_archive
    WHERE created_at >= %(lo)s::date AT TIME ZONE 'UTC' AND created_at < %(hi)s::date AT TIME ZONE 'UTC') AS o
    GROUP BY 1, 2, 3
), kept AS (
    SELECT day, status, currency, order_count, total_amount FROM dashboard_stat WHERE day >= %(lo)s AND day < %(hi)s
), diff AS (
    SELECT day, status, currency,
           coalesce(t.order_count, 0) - coalesce(k.order_count, 0) AS order_count,
           coalesce(t.total_amount, 0) - coalesce(k.total_amount, 0) AS total_amount,
           coalesce(t.order_count, 0) AS expected, coalesce(k.order_count, 0) AS found,
           coalesce(t.total_amount, 0) AS expected_amount, coalesce(k.total_amount, 0) AS found_amount
    FROM truth AS t FULL JOIN kept AS k USING (day, status, currency)
), drift AS (
    SELECT * FROM diff WHERE order_count <> 0 OR total_amount <> 0
)
, recorded AS (
    INSERT INTO stat_drift (run_id, check_name, bucket, expected, found, corrected)
    SELECT %(run)s, 'dashboard_stat', day || ' ' || status || ' ' || currency || f.suffix, f.expected, f.found, true
    FROM drift, LATERAL (VALUES ('', expected, found), (' amount', expected_amount, found_amount))
                    AS f(suffix, expected, found)
    WHERE f.suffix = '' OR f.expected <> f.found
)
, fixed AS (
    INSERT INTO dashboard_stat AS c (day, status, currency, order_count, total_amount)
    SELECT day, status, currency, order_count, total_amount FROM drift ORDER BY day, status, currency
    ON CONFLICT (day, status, currency) DO UPDATE SET
        order_count = c.order_count + excluded.order_count,
        total_amount = c.total_amount + excluded.total_amount
)
SELECT count(*) FROM drift;

-- name: customer_slice
-- customer_stat_month for one quarter (orders that are not CANCELLED, per UTC month, currency
-- and customer), recorded and corrected like slice.
WITH truth AS (
    SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month, currency, customer_id,
           count(*) AS order_count, sum(total_amount) AS total_amount
    FROM (
    SELECT created_at, status, currency, customer_id, total_amount FROM service_order
    WHERE created_at >= %(lo)s::date AT TIME ZONE 'UTC' AND created_at < %(hi)s::date AT TIME ZONE 'UTC'
    UNION ALL
    SELECT created_at, status, currency, customer_id, total_amount FROM service_order_archive
    WHERE created_at >= %(lo)s::date AT TIME ZONE 'UTC' AND created_at < %(hi)s::date AT TIME ZONE 'UTC') AS o
    WHERE status <> 'CANCELLED'
    GROUP BY 1, 2, 3
), kept AS (
    SELECT month, currency, customer_id, order_count, total_amount FROM customer_stat_month WHERE month >= %(lo)s AND month < %(hi)s
), diff AS (
    SELECT month, currency, customer_id,
           coalesce(t.order_count, 0) - coalesce(k.order_count, 0) AS order_count,
           coalesce(t.total_amount, 0) - coalesce(k.total_amount, 0) AS total_amount,
           coalesce(t.order_count, 0) AS expected, coalesce(k.order_count, 0) AS found,
           coalesce(t.total_amount, 0) AS expected_amount, coalesce(k.total_amount, 0) AS found_amount
    FROM truth AS t FULL JOIN kept AS k USING (month, currency, customer_id)
), drift AS (
    SELECT * FROM diff WHERE order_count <> 0 OR total_amount <> 0
)
, recorded AS (
    INSERT INTO stat_drift (run_id, check_name, bucket, expected, found, corrected)
    SELECT %(run)s, 'customer_stat', month || ' ' || currency || ' customer ' || customer_id || f.suffix, f.expected, f.found, true
    FROM drift, LATERAL (VALUES ('', expected, found), (' amount', expected_amount, found_amount))
                    AS f(suffix, expected, found)
    WHERE f.suffix = '' OR f.expected <> f.found
)
, fixed AS (
    INSERT INTO customer_stat_month AS c (month, currency, customer_id, order_count, total_amount)
    SELECT month, currency, customer_id, order_count, total_amount FROM drift ORDER BY month, currency, customer_id
    ON CONFLICT (month, currency, customer_id) DO UPDATE SET
        order_count = c.order_count + excluded.order_count,
        total_amount = c.total_amount + excluded.total_amount
)
SELECT count(*) FROM drift;

-- name: cum_suspects
-- Customers whose customer_stat_cum rows break a local rule (see reconcile.py). Twelve plain
-- scans (UNION ALL) and a hash join on the month's date: a lateral unnest or a join on
-- extracted numbers planned a memoize or sorts and took twice as long.
WITH chained AS (
    SELECT year, customer_id, before_n, before_a,
           lag(year) OVER w AS prev_year, lead(year) OVER w AS next_year,
           lag(before_n + n12) OVER w AS prev_n, lag(before_a + a12) OVER w AS prev_a
    FROM customer_stat_cum
    WINDOW w AS (PARTITION BY currency, customer_id ORDER BY year)
), unchained AS (
    SELECT c.customer_id FROM chained AS c, customer_stat_cum_horizon AS h
    WHERE c.before_n <> coalesce(c.prev_n, 0) OR c.before_a <> coalesce(c.prev_a, 0)
       OR c.year <> coalesce(c.prev_year + 1, c.year) OR (c.next_year IS NULL AND c.year <> h.year)
), kept AS (
    SELECT customer_id, currency, make_date(year, 1, 1) AS month, n01 AS kn, a01 AS ka
    FROM customer_stat_cum WHERE n01 <> 0 OR a01 <> 0
    UNION ALL SELECT customer_id, currency, make_date(year, 2, 1) AS month, n02 - n01 AS kn, a02 - a01 AS ka
    FROM customer_stat_cum WHERE n02 - n01 <> 0 OR a02 - a01 <> 0
    UNION ALL SELECT customer_id, currency, make_date(year, 3, 1) AS month, n03 - n02 AS kn, a03 - a02 AS ka
    FROM customer_stat_cum WHERE n03 - n02 <> 0 OR a03 - a02 <> 0
    UNION ALL SELECT customer_id, currency, make_date(year, 4, 1) AS month, n04 - n03 AS kn, a04 - a03 AS ka
    FROM customer_stat_cum WHERE n04 - n03 <> 0 OR a04 - a03 <> 0
    UNION ALL SELECT customer_id, currency, make_date(year, 5, 1) AS month, n05 - n04 AS kn, a05 - a04 AS ka
    FROM customer_stat_cum WHERE n05 - n04 <> 0 OR a05 - a04 <> 0
    UNION ALL SELECT customer_id, currency, make_date(year, 6, 1) AS month, n06 - n05 AS kn, a06 - a05 AS ka
    FROM customer_stat_cum WHERE n06 - n05 <> 0 OR a06 - a05 <> 0
    UNION ALL SELECT customer_id, currency, make_date(year, 7, 1) AS month, n07 - n06 AS kn, a07 - a06 AS ka
    FROM customer_stat_cum WHERE n07 - n06 <> 0 OR a07 - a06 <> 0
    UNION ALL SELECT customer_id, currency, make_date(year, 8, 1) AS month, n08 - n07 AS kn, a08 - a07 AS ka
    FROM customer_stat_cum WHERE n08 - n07 <> 0 OR a08 - a07 <> 0
    UNION ALL SELECT customer_id, currency, make_date(year, 9, 1) AS month, n09 - n08 AS kn, a09 - a08 AS ka
    FROM customer_stat_cum WHERE n09 - n08 <> 0 OR a09 - a08 <> 0
    UNION ALL SELECT customer_id, currency, make_date(year, 10, 1) AS month, n10 - n09 AS kn, a10 - a09 AS ka
    FROM customer_stat_cum WHERE n10 - n09 <> 0 OR a10 - a09 <> 0
    UNION ALL SELECT customer_id, currency, make_date(year, 11, 1) AS month, n11 - n10 AS kn, a11 - a10 AS ka
    FROM customer_stat_cum WHERE n11 - n10 <> 0 OR a11 - a10 <> 0
    UNION ALL SELECT customer_id, currency, make_date(year, 12, 1) AS month, n12 - n11 AS kn, a12 - a11 AS ka
    FROM customer_stat_cum WHERE n12 - n11 <> 0 OR a12 - a11 <> 0
), months AS (
    SELECT customer_id, currency, month, order_count AS tn, (total_amount * 100)::bigint AS ta
    FROM customer_stat_month WHERE order_count <> 0 OR total_amount <> 0
), differs AS (
    SELECT customer_id FROM months FULL JOIN kept USING (customer_id, month, currency)
    WHERE coalesce(tn, 0) <> coalesce(kn, 0) OR coalesce(ta, 0) <> coalesce(ka, 0)
)
SELECT array(SELECT customer_id FROM unchained UNION SELECT customer_id FROM differs ORDER BY 1);

-- name: cum_correction
-- The exact customer_stat_cum drift of the customers in %(customers)s, recorded and corrected.
WITH truth AS (SELECT * FROM customer_stat_cum_expected_for(%(customers)s)
), kept AS (
    SELECT year, currency, customer_id, before_n, before_a, n01, a01, n02, a02, n03, a03, n04, a04, n05, a05, n06, a06, n07, a07, n08, a08, n09, a09, n10, a10, n11, a11, n12, a12 FROM customer_stat_cum WHERE customer_id = ANY (%(customers)s)
), diff AS (
    SELECT year, currency, customer_id,
           coalesce(t.before_n, 0) - coalesce(k.before_n, 0) AS before_n,
           coalesce(t.before_a, 0) - coalesce(k.before_a, 0) AS before_a,
           coalesce(t.n01, 0) - coalesce(k.n01, 0) AS n01,
           coalesce(t.a01, 0) - coalesce(k.a01, 0) AS a01,
           coalesce(t.n02, 0) - coalesce(k.n02, 0) AS n02,
           coalesce(t.a02, 0) - coalesce(k.a02, 0) AS a02,
           coalesce(t.n03, 0) - coalesce(k.n03, 0) AS n03,
           coalesce(t.a03, 0) - coalesce(k.a03, 0) AS a03,
           coalesce(t.n04, 0) - coalesce(k.n04, 0) AS n04,
           coalesce(t.a04, 0) - coalesce(k.a04, 0) AS a04,
           coalesce(t.n05, 0) - coalesce(k.n05, 0) AS n05,
           coalesce(t.a05, 0) - coalesce(k.a05, 0) AS a05,
           coalesce(t.n06, 0) - coalesce(k.n06, 0) AS n06,
           coalesce(t.a06, 0) - coalesce(k.a06, 0) AS a06,
           coalesce(t.n07, 0) - coalesce(k.n07, 0) AS n07,
           coalesce(t.a07, 0) - coalesce(k.a07, 0) AS a07,
           coalesce(t.n08, 0) - coalesce(k.n08, 0) AS n08,
           coalesce(t.a08, 0) - coalesce(k.a08, 0) AS a08,
           coalesce(t.n09, 0) - coalesce(k.n09, 0) AS n09,
           coalesce(t.a09, 0) - coalesce(k.a09, 0) AS a09,
           coalesce(t.n10, 0) - coalesce(k.n10, 0) AS n10,
           coalesce(t.a10, 0) - coalesce(k.a10, 0) AS a10,
           coalesce(t.n11, 0) - coalesce(k.n11, 0) AS n11,
           coalesce(t.a11, 0) - coalesce(k.a11, 0) AS a11,
           coalesce(t.n12, 0) - coalesce(k.n12, 0) AS n12,
           coalesce(t.a12, 0) - coalesce(k.a12, 0) AS a12,
           coalesce(t.before_n + t.n12, 0) AS expected, coalesce(k.before_n + k.n12, 0) AS found,
           coalesce((t.before_a + t.a12) / 100.0, 0) AS expected_amount, coalesce((k.before_a + k.a12) / 100.0, 0) AS found_amount
    FROM truth AS t FULL JOIN kept AS k USING (year, currency, customer_id)
), drift AS (
    SELECT * FROM diff WHERE before_n <> 0 OR before_a <> 0 OR n01 <> 0 OR a01 <> 0 OR n02 <> 0 OR a02 <> 0 OR n03 <> 0 OR a03 <> 0 OR n04 <> 0 OR a04 <> 0 OR n05 <> 0 OR a05 <> 0 OR n06 <> 0 OR a06 <> 0 OR n07 <> 0 OR a07 <> 0 OR n08 <> 0 OR a08 <> 0 OR n09 <> 0 OR a09 <> 0 OR n10 <> 0 OR a10 <> 0 OR n11 <> 0 OR a11 <> 0 OR n12 <> 0 OR a12 <> 0
)
, recorded AS (
    INSERT INTO stat_drift (run_id, check_name, bucket, expected, found, corrected)
    SELECT %(run)s, 'customer_stat_cum', year || ' ' || currency || ' customer ' || customer_id || f.suffix, f.expected, f.found, true
    FROM drift, LATERAL (VALUES ('', expected, found), (' amount', expected_amount, found_amount))
                    AS f(suffix, expected, found)
    WHERE f.suffix = '' OR f.expected <> f.found
)
, fixed AS (
    INSERT INTO customer_stat_cum AS c (year, currency, customer_id, before_n, before_a, n01, a01, n02, a02, n03, a03, n04, a04, n05, a05, n06, a06, n07, a07, n08, a08, n09, a09, n10, a10, n11, a11, n12, a12)
    SELECT year, currency, customer_id, before_n, before_a, n01, a01, n02, a02, n03, a03, n04, a04, n05, a05, n06, a06, n07, a07, n08, a08, n09, a09, n10, a10, n11, a11, n12, a12 FROM drift ORDER BY year, customer_id, currency
    ON CONFLICT (year, currency, customer_id) DO UPDATE SET
        before_n = c.before_n + excluded.before_n,
        before_a = c.before_a + excluded.before_a,
        n01 = c.n01 + excluded.n01,
        a01 = c.a01 + excluded.a01,
        n02 = c.n02 + excluded.n02,
        a02 = c.a02 + excluded.a02,
        n03 = c.n03 + excluded.n03,
        a03 = c.a03 + excluded.a03,
        n04 = c.n04 + excluded.n04,
        a04 = c.a04 + excluded.a04,
        n05 = c.n05 + excluded.n05,
        a05 = c.a05 + excluded.a05,
        n06 = c.n06 + excluded.n06,
        a06 = c.a06 + excluded.a06,
        n07 = c.n07 + excluded.n07,
        a07 = c.a07 + excluded.a07,
        n08 = c.n08 + excluded.n08,
        a08 = c.a08 + excluded.a08,
        n09 = c.n09 + excluded.n09,
        a09 = c.a09 + excluded.a09,
        n10 = c.n10 + excluded.n10,
        a10 = c.a10 + excluded.a10,
        n11 = c.n11 + excluded.n11,
        a11 = c.a11 + excluded.a11,
        n12 = c.n12 + excluded.n12,
        a12 = c.a12 + excluded.a12
)
SELECT count(*) FROM drift;

-- When reconciliation last compared each quarter's lines with their stock movements. That
-- check reads every line and probes the ledger per line (about 70 s of CPU at 10M
-- orders), so a daily run checks the newest quarters and then the least recently
-- checked ones until its time budget is spent: every quarter comes round within a few
-- runs, and `nexes reconcile --all-lines` checks them all at once.
CREATE TABLE reconcile_line_check (
    quarter    date PRIMARY KEY,
    checked_at timestamptz NOT NULL,
    run_id     uuid NOT NULL,
    mismatches bigint NOT NULL
);

-- What customer_stat_cum must hold for some customers (all when `customers` is NULL), from
-- customer_stat_month: the view of 0022 with a filter inside, so that reconciliation can
-- recompute only the customers its cheap check suspects (the view's CTEs are
-- materialised, so a filter on the view itself would still aggregate every customer).
CREATE FUNCTION customer_stat_cum_expected_for(customers bigint[]) RETURNS SETOF customer_stat_cum
LANGUAGE sql STABLE AS $$
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
              FROM customer_stat_month
              WHERE customers IS NULL OR customer_id = ANY (customers)) AS c
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
    WINDOW w AS (PARTITION BY y.currency, y.customer_id ORDER BY y.year)
$$;

CREATE OR REPLACE VIEW customer_stat_cum_expected AS SELECT * FROM customer_stat_cum_expected_for(NULL);

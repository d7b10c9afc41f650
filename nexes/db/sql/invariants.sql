-- The data invariants (nexes.db.invariants), one check per named block (nexes.db.sql.load).
-- Each returns at most a sample of offending rows, as text. "All orders" are
-- service_order plus service_order_archive (and their lines).

-- name: order_without_key
-- Orders (live and archived) whose service_order_key row is missing or differs.
SELECT o.sod_number FROM (SELECT * FROM service_order UNION ALL SELECT * FROM service_order_archive) AS o
LEFT JOIN service_order_key AS k ON k.id = o.id
WHERE k.id IS NULL OR k.sod_number <> o.sod_number OR k.created_at <> o.created_at
LIMIT 20;

-- name: key_without_order
-- service_order_key rows without their order.
SELECT k.sod_number FROM service_order_key AS k
WHERE NOT EXISTS (SELECT 1 FROM (SELECT * FROM service_order UNION ALL SELECT * FROM service_order_archive) AS o WHERE o.id = k.id AND o.created_at = k.created_at)
LIMIT 20;

-- name: on_hand_differs_from_ledger
-- Stock items whose on_hand differs from the sum of their movements.
SELECT s.sku || ': on_hand ' || s.on_hand || ', ledger ' || coalesce(m.total, 0)
FROM stock_item AS s
LEFT JOIN (SELECT stock_item_id, sum(quantity) AS total FROM stock_movement GROUP BY 1) AS m
       ON m.stock_item_id = s.id
WHERE s.on_hand <> coalesce(m.total, 0)
LIMIT 20;

-- name: line_movements_differ
-- Lines whose movements differ from what their order's status implies. Set-based: the
-- ledger aggregated per line once, hash-joined to every line (live and archived) and its
-- order; the violations are materialized before the LIMIT, which otherwise makes the
-- planner hope for early rows and pick a nested loop over the whole ledger per line (more
-- than 7 minutes at 1M orders; this form about 10 s).
WITH expected AS (
    SELECT o.sod_number, l.line_no, CASE WHEN o.status = 'CANCELLED' THEN 0 ELSE -l.quantity END AS expected
    FROM (SELECT * FROM service_order_line UNION ALL SELECT * FROM service_order_line_archive) AS l
    JOIN (SELECT * FROM service_order UNION ALL SELECT * FROM service_order_archive) AS o
      ON o.id = l.order_id AND o.created_at = l.created_at
), ledger AS (
    SELECT sod_number, line_no, sum(quantity) AS total FROM stock_movement
    WHERE sod_number IS NOT NULL GROUP BY 1, 2
), wrong AS MATERIALIZED (
    SELECT e.sod_number, e.line_no, e.expected, coalesce(m.total, 0) AS total
    FROM expected AS e LEFT JOIN ledger AS m USING (sod_number, line_no)
    WHERE coalesce(m.total, 0) <> e.expected
)
SELECT sod_number || ' line ' || line_no || ': expected ' || expected || ', ledger ' || total FROM wrong
LIMIT 20;

-- name: movements_of_missing_lines
-- Movements of lines that no longer exist and do not sum to zero. Set-based like the
-- check above: the ledger per line once, anti-joined (hashed) to every line's SOD number.
WITH ledger AS (
    SELECT sod_number, line_no, sum(quantity) AS total FROM stock_movement
    WHERE sod_number IS NOT NULL GROUP BY 1, 2 HAVING sum(quantity) <> 0
), lines AS (
    SELECT k.sod_number, l.line_no
    FROM (SELECT * FROM service_order_line UNION ALL SELECT * FROM service_order_line_archive) AS l
    JOIN service_order_key AS k ON k.id = l.order_id
), wrong AS MATERIALIZED (
    SELECT m.sod_number, m.line_no, m.total FROM ledger AS m
    WHERE NOT EXISTS (SELECT 1 FROM lines WHERE lines.sod_number = m.sod_number AND lines.line_no = m.line_no)
)
SELECT sod_number || ' line ' || line_no || ': ledger ' || total FROM wrong
LIMIT 20;

-- name: dashboard_stat_differs
-- dashboard_stat against the orders, per UTC day and status.
WITH truth AS (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, status, count(*) AS n
    FROM (SELECT * FROM service_order UNION ALL SELECT * FROM service_order_archive) AS o GROUP BY 1, 2
), kept AS (
    SELECT day, status, sum(order_count) AS n FROM dashboard_stat GROUP BY 1, 2 HAVING sum(order_count) <> 0
)
SELECT coalesce(t.day, k.day) || ' ' || coalesce(t.status, k.status) || ': orders '
       || coalesce(t.n, 0) || ', stat ' || coalesce(k.n, 0)
FROM truth AS t FULL JOIN kept AS k ON k.day = t.day AND k.status = t.status
WHERE coalesce(t.n, 0) <> coalesce(k.n, 0)
LIMIT 20;

-- name: customer_stat_month_differs
-- customer_stat_month against the orders that are not CANCELLED.
WITH truth AS (
    SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month, currency, customer_id,
           count(*) AS n, sum(total_amount) AS amount
    FROM (SELECT * FROM service_order UNION ALL SELECT * FROM service_order_archive) AS o WHERE status <> 'CANCELLED' GROUP BY 1, 2, 3
), kept AS (
    SELECT month, currency, customer_id, order_count AS n, total_amount AS amount
    FROM customer_stat_month WHERE order_count <> 0 OR total_amount <> 0
)
SELECT coalesce(t.month, k.month) || ' ' || coalesce(t.currency, k.currency) || ' customer '
       || coalesce(t.customer_id, k.customer_id) || ': orders ' || coalesce(t.n, 0)
       || ', stat ' || coalesce(k.n, 0)
FROM truth AS t FULL JOIN kept AS k USING (month, currency, customer_id)
WHERE coalesce(t.n, 0) <> coalesce(k.n, 0) OR coalesce(t.amount, 0) <> coalesce(k.amount, 0)
LIMIT 20;

-- name: customer_stat_cum_differs
-- customer_stat_cum against customer_stat_cum_expected (the same drift as the reconciliation's).
WITH truth AS (SELECT * FROM customer_stat_cum_expected
), kept AS (
    SELECT year, currency, customer_id, before_n, before_a, n01, a01, n02, a02, n03, a03, n04, a04, n05, a05, n06, a06, n07, a07, n08, a08, n09, a09, n10, a10, n11, a11, n12, a12 FROM customer_stat_cum WHERE true
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
SELECT year || ' ' || currency || ' customer ' || customer_id FROM drift LIMIT 20;

-- name: dashboard_month_differs
-- dashboard_stat_month against the sum of its days.
WITH days AS (
    SELECT date_trunc('month', day)::date AS month, status, currency, sum(order_count) AS n,
           sum(total_amount) AS amount
    FROM dashboard_stat GROUP BY 1, 2, 3
)
SELECT coalesce(d.month, m.month) || ' ' || coalesce(d.status, m.status) || ' '
       || coalesce(d.currency, m.currency) || ': days ' || coalesce(d.n, 0)
       || ', month ' || coalesce(m.order_count, 0)
FROM days AS d FULL JOIN dashboard_stat_month AS m USING (month, status, currency)
WHERE coalesce(d.n, 0) <> coalesce(m.order_count, 0) OR coalesce(d.amount, 0) <> coalesce(m.total_amount, 0)
LIMIT 20;

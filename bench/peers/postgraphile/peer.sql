-- Run by `python -m bench.run api` on nexes_bench (as the owner) before the peer starts.
-- Since migration 0028 statement-level checks, not foreign keys, hold service_order to
-- customer and lines to their order, so PostGraphile would make no relation from them:
-- smart comments declare what the keys declared. Nexes ignores comments.
COMMENT ON TABLE service_order IS E'@foreignKey (customer_id) references customer (id)';
COMMENT ON TABLE service_order_line IS E'@foreignKey (order_id, created_at) references service_order (id, created_at)';

-- The dashboard read for the peer: the statement of nexes.db.dashboard.BY_STATUS, with the
-- whole months inside [day_from, day_to] computed here instead of in Python.
CREATE OR REPLACE FUNCTION dashboard_month(day_from date, day_to date)
RETURNS TABLE (status text, currency text, order_count bigint, total_amount numeric)
LANGUAGE sql STABLE AS $$
    WITH span AS (
        SELECT lo, greatest(lo, hi) AS hi
        FROM (SELECT CASE WHEN extract(day FROM day_from) = 1 THEN day_from
                          ELSE (date_trunc('month', day_from) + interval '1 month')::date END AS lo,
                     CASE WHEN extract(day FROM day_to + 1) = 1 THEN day_to + 1
                          ELSE date_trunc('month', day_to)::date END AS hi) AS bounds
    )
    SELECT status::text, currency::text, sum(order_count)::bigint, sum(total_amount)
    FROM (
        SELECT m.status, m.currency, m.order_count, m.total_amount
        FROM dashboard_stat_month m, span WHERE m.month >= span.lo AND m.month < span.hi
        UNION ALL
        SELECT d.status, d.currency, d.order_count, d.total_amount
        FROM dashboard_stat d, span
        WHERE d.day >= day_from AND d.day <= day_to AND (d.day < span.lo OR d.day >= span.hi)
    ) AS figures
    GROUP BY status, currency
    HAVING sum(order_count) <> 0
    ORDER BY status, currency
$$;

-- dashboard_stat_month kept by statement-level triggers with transition tables, as
-- customer_stat_month is: a write of N dashboard buckets (an import chunk touches a
-- few thousand) was N trigger calls and up to 2N single-row statements (192 ms of an
-- import chunk's 2.5 s at 10M orders, bench/README.md); it is now one upsert of the
-- months' net changes, in month order.
DROP TRIGGER dashboard_stat_rollup ON dashboard_stat;
DROP FUNCTION dashboard_stat_rollup();

CREATE FUNCTION dashboard_stat_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO dashboard_stat_month AS m (month, status, currency, order_count, total_amount)
        SELECT date_trunc('month', day)::date, status, currency, sum(order_count), sum(total_amount)
        FROM new_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (month, status, currency) DO UPDATE
        SET order_count = m.order_count + excluded.order_count, total_amount = m.total_amount + excluded.total_amount;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO dashboard_stat_month AS m (month, status, currency, order_count, total_amount)
        SELECT date_trunc('month', day)::date, status, currency, -sum(order_count), -sum(total_amount)
        FROM old_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (month, status, currency) DO UPDATE
        SET order_count = m.order_count + excluded.order_count, total_amount = m.total_amount + excluded.total_amount;
    ELSE
        INSERT INTO dashboard_stat_month AS m (month, status, currency, order_count, total_amount)
        SELECT month, status, currency, sum(n), sum(amount)
        FROM (SELECT date_trunc('month', day)::date AS month, status, currency, order_count AS n, total_amount AS amount
              FROM new_rows
              UNION ALL
              SELECT date_trunc('month', day)::date, status, currency, -order_count, -total_amount FROM old_rows) AS d
        GROUP BY 1, 2, 3 HAVING sum(n) <> 0 OR sum(amount) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (month, status, currency) DO UPDATE
        SET order_count = m.order_count + excluded.order_count, total_amount = m.total_amount + excluded.total_amount;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER dashboard_stat_rollup_insert AFTER INSERT ON dashboard_stat
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dashboard_stat_rollup();
CREATE TRIGGER dashboard_stat_rollup_update AFTER UPDATE ON dashboard_stat
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION dashboard_stat_rollup();
CREATE TRIGGER dashboard_stat_rollup_delete AFTER DELETE ON dashboard_stat
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION dashboard_stat_rollup();

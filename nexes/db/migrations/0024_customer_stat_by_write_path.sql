-- The write path (nexes/db/order_write.py) folds its orders into customer_stat_month
-- itself, from its own outcome table and as one of its last statements, with the other
-- hot rows (stock items, dashboard buckets). The row locks on customer_stat_month and
-- customer_stat_cum are then held from the end of the transaction only, not from its
-- first INSERT on: import chunks applied side by side no longer queue on each other's
-- customers for their whole length. `nexes.customer_stat_by_caller` (SET LOCAL) tells
-- this trigger that the caller does it; every other writer of service_order keeps the
-- trigger.
CREATE OR REPLACE FUNCTION customer_stat_month_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('nexes.customer_stat_by_caller', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO customer_stat_month AS m (month, currency, customer_id, order_count, total_amount)
        SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date, currency, customer_id, count(*), sum(total_amount)
        FROM new_rows WHERE status <> 'CANCELLED' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
        ON CONFLICT (month, currency, customer_id) DO UPDATE
        SET order_count = m.order_count + excluded.order_count, total_amount = m.total_amount + excluded.total_amount;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE customer_stat_month m SET order_count = m.order_count - d.n, total_amount = m.total_amount - d.amount
        FROM (SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month, currency, customer_id,
                     count(*) AS n, sum(total_amount) AS amount
              FROM old_rows WHERE status <> 'CANCELLED' GROUP BY 1, 2, 3) d
        WHERE (m.month, m.currency, m.customer_id) = (d.month, d.currency, d.customer_id);
    ELSE
        INSERT INTO customer_stat_month AS m (month, currency, customer_id, order_count, total_amount)
        SELECT month, currency, customer_id, sum(n), sum(amount) FROM (
            SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month, currency, customer_id,
                   1 AS n, total_amount AS amount FROM new_rows WHERE status <> 'CANCELLED'
            UNION ALL
            SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date, currency, customer_id,
                   -1, -total_amount FROM old_rows WHERE status <> 'CANCELLED'
        ) d GROUP BY 1, 2, 3 HAVING sum(n) <> 0 OR sum(amount) <> 0 ORDER BY 1, 2, 3
        ON CONFLICT (month, currency, customer_id) DO UPDATE
        SET order_count = m.order_count + excluded.order_count, total_amount = m.total_amount + excluded.total_amount;
    END IF;
    RETURN NULL;
END
$$;

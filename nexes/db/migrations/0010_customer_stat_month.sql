-- Per UTC month, customer and currency: orders (not CANCELLED) and their amounts, for
-- the analysts' "top customers" report. Statement-level triggers with transition
-- tables keep it in the same transaction as every write of service_order, whatever
-- path made it (mutations, imports, seed): one upsert per statement, not per row.
-- Archiving detaches partitions without touching rows, so archived orders stay
-- counted, as in dashboard_stat.
CREATE TABLE customer_stat_month (
    month        date NOT NULL CHECK (extract(day FROM month) = 1),
    currency     char(3) NOT NULL,
    customer_id  bigint NOT NULL,
    order_count  bigint NOT NULL DEFAULT 0,
    total_amount numeric(18, 2) NOT NULL DEFAULT 0,
    PRIMARY KEY (month, currency, customer_id)
);

CREATE FUNCTION customer_stat_month_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
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

CREATE TRIGGER customer_stat_month_insert AFTER INSERT ON service_order
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION customer_stat_month_apply();
CREATE TRIGGER customer_stat_month_update AFTER UPDATE ON service_order
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION customer_stat_month_apply();
CREATE TRIGGER customer_stat_month_delete AFTER DELETE ON service_order
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION customer_stat_month_apply();

-- Backfill from every order there is, live and archived.
INSERT INTO customer_stat_month (month, currency, customer_id, order_count, total_amount)
SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date, currency, customer_id, count(*), sum(total_amount)
FROM (SELECT created_at, currency, customer_id, total_amount, status FROM service_order
      UNION ALL
      SELECT created_at, currency, customer_id, total_amount, status FROM service_order_archive) o
WHERE status <> 'CANCELLED'
GROUP BY 1, 2, 3;


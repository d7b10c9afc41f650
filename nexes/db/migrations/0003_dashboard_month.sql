-- Monthly rollup of dashboard_stat, so a dashboard over years reads ~60 rows per
-- status and currency instead of ~1,800. A trigger keeps it in step with every
-- change of dashboard_stat, in the same transaction, whatever path made it.
CREATE TABLE dashboard_stat_month (
    month        date NOT NULL CHECK (extract(day FROM month) = 1),
    status       order_status NOT NULL,
    currency     char(3) NOT NULL,
    order_count  bigint NOT NULL DEFAULT 0,
    total_amount numeric(18, 2) NOT NULL DEFAULT 0,
    PRIMARY KEY (month, status, currency)
);

CREATE FUNCTION dashboard_stat_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE dashboard_stat_month
        SET order_count = order_count - OLD.order_count, total_amount = total_amount - OLD.total_amount
        WHERE month = date_trunc('month', OLD.day)::date AND status = OLD.status AND currency = OLD.currency;
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO dashboard_stat_month AS m (month, status, currency, order_count, total_amount)
        VALUES (date_trunc('month', NEW.day)::date, NEW.status, NEW.currency, NEW.order_count, NEW.total_amount)
        ON CONFLICT (month, status, currency) DO UPDATE
        SET order_count = m.order_count + excluded.order_count, total_amount = m.total_amount + excluded.total_amount;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER dashboard_stat_rollup AFTER INSERT OR UPDATE OR DELETE ON dashboard_stat
    FOR EACH ROW EXECUTE FUNCTION dashboard_stat_rollup();

INSERT INTO dashboard_stat_month (month, status, currency, order_count, total_amount)
SELECT date_trunc('month', day)::date, status, currency, sum(order_count), sum(total_amount)
FROM dashboard_stat GROUP BY 1, 2, 3;

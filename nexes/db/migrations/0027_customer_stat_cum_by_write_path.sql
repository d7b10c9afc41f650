-- The write path (nexes/db/order_write.py) folds its customer deltas into
-- customer_stat_cum itself, once, from the deltas it has just added to
-- customer_stat_month: its upsert fired two statement triggers (the inserted months and
-- the updated ones), each unpacking its transition tables and aggregating again, 135 ms
-- of a 5,000-order import chunk's 722 ms at 10M orders (bench/README.md). Under
-- `nexes.customer_stat_by_caller` (0024) these triggers now stand aside too; every
-- other writer of customer_stat_month (the service_order triggers, reconciliation's
-- corrections) keeps them.
DROP TRIGGER customer_stat_cum_insert ON customer_stat_month;
DROP TRIGGER customer_stat_cum_update ON customer_stat_month;

CREATE TRIGGER customer_stat_cum_insert AFTER INSERT ON customer_stat_month
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    WHEN (coalesce(current_setting('nexes.customer_stat_by_caller', true), '') <> 'on')
    EXECUTE FUNCTION customer_stat_cum_apply();
CREATE TRIGGER customer_stat_cum_update AFTER UPDATE ON customer_stat_month
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    WHEN (coalesce(current_setting('nexes.customer_stat_by_caller', true), '') <> 'on')
    EXECUTE FUNCTION customer_stat_cum_apply();

-- The horizon: the current year, and the next one from December on (nexes/db/partitions.py
-- `cum_horizon`), no longer the last partition's year, which is next year all year round.
-- An order of year Y writes one row per year from Y to the horizon: two for each order
-- of the current year before, one now for eleven months of twelve. Years past the
-- horizon hold only carried totals (no data there), so dropping them loses nothing, and
-- reports read the horizon's row for them (nexes/db/reports.py).
SELECT pg_advisory_xact_lock(x'6E657865730C'::bigint);  -- customer_stat_cum_roll's lock

CREATE TEMP TABLE cum_target ON COMMIT DROP AS
SELECT greatest(
    extract(year FROM now() AT TIME ZONE 'UTC')::int + (extract(month FROM now() AT TIME ZONE 'UTC') = 12)::int,
    (SELECT extract(year FROM max(month))::int FROM customer_stat_month)) AS year;

DELETE FROM customer_stat_cum WHERE year > (SELECT year FROM cum_target);
UPDATE customer_stat_cum_horizon SET year = (SELECT year FROM cum_target) WHERE year > (SELECT year FROM cum_target);

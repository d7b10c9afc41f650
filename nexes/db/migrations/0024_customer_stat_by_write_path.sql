-- The write path (nexes/db/order_write.py) folds its orders into customer_stat_month
-- itself, from its own outcome table and as one of its last statements, with the other
-- hot rows (stock items, dashboard buckets). The row locks on customer_stat_month and
-- customer_stat_cum are then held from the end of the transaction only, not from its
-- first INSERT on: import chunks applied side by side no longer queue on each other's
-- customers for their whole length. `nexes.customer_stat_by_caller` (SET LOCAL) tells
-- these triggers that the caller does it; every other writer of service_order keeps them.
DROP TRIGGER customer_stat_month_insert ON service_order;
DROP TRIGGER customer_stat_month_update ON service_order;
DROP TRIGGER customer_stat_month_delete ON service_order;

CREATE TRIGGER customer_stat_month_insert AFTER INSERT ON service_order
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    WHEN (coalesce(current_setting('nexes.customer_stat_by_caller', true), '') <> 'on')
    EXECUTE FUNCTION customer_stat_month_apply();
CREATE TRIGGER customer_stat_month_update AFTER UPDATE ON service_order
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    WHEN (coalesce(current_setting('nexes.customer_stat_by_caller', true), '') <> 'on')
    EXECUTE FUNCTION customer_stat_month_apply();
CREATE TRIGGER customer_stat_month_delete AFTER DELETE ON service_order
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    WHEN (coalesce(current_setting('nexes.customer_stat_by_caller', true), '') <> 'on')
    EXECUTE FUNCTION customer_stat_month_apply();

-- Reconciliation also recomputes customer_stat_month (the top-customers report's table).
ALTER TABLE stat_drift DROP CONSTRAINT stat_drift_check_name_check;
ALTER TABLE stat_drift ADD CONSTRAINT stat_drift_check_name_check
    CHECK (check_name IN ('dashboard_stat', 'on_hand', 'negative_stock', 'line_ledger', 'customer_stat'));

-- What reconciliation found and did: one row per bucket whose kept figure differed
-- from the truth (dashboard_stat), or per stock item whose on_hand differed from its
-- ledger, or that went negative. Drift is visible, never silently overwritten.
CREATE TABLE stat_drift (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    found_at    timestamptz NOT NULL DEFAULT now(),
    run_id      uuid NOT NULL,
    check_name  text NOT NULL CHECK (check_name IN ('dashboard_stat', 'on_hand', 'negative_stock')),
    bucket      text NOT NULL,
    expected    numeric NOT NULL,
    found       numeric NOT NULL,
    corrected   boolean NOT NULL
);
CREATE INDEX stat_drift_found_idx ON stat_drift (found_at DESC);

-- No query reads stock_movement by stock item alone: the on-hand checks (invariants,
-- reconciliation) aggregate the whole ledger in one scan, and the per-line ledger is
-- read through stock_movement_line_idx (0 scans of this index in pg_stat_user_indexes at
-- 10M orders). Every movement paid an insert into it (an import writes about three per
-- order); nothing deletes stock items, so the foreign key never needs it either.
DROP INDEX stock_movement_item_idx;

-- No query reads stock_movement by stock item alone: the on-hand checks (invariants,
-- reconciliation) aggregate the whole ledger in one scan, and the per-line ledger is
-- read through stock_movement_line_idx. The index cost every movement an insert into
-- one of 2,000 hot leaf pages (an import writes three movements per order); nothing
-- deletes stock items, so the foreign key never needs it either.
DROP INDEX stock_movement_item_idx;

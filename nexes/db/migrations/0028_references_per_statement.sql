-- Orders name their customer; order lines and ledger movements name their stock item;
-- what they name must exist. The foreign keys checked it row by row: a query, with its
-- row lock, per order, per line and per movement, about 100 ms of a 5,000-order import
-- chunk's 722 ms at 10M orders (5,000 orders, 15,000 lines, 15,000 movements;
-- bench/README.md). The same rule now holds in two parts:
--   - a statement-level check per INSERT or UPDATE: one anti-join of the statement's
--     new rows against the table they name, failing with foreign_key_violation and the
--     foreign key's own message;
--   - customers and stock items are never deleted, truncated or renumbered (no writer
--     does any of it, and orders and the ledger must keep what they name), so a row
--     found once stays. That is what the keys' row locks guarded between the check and
--     the commit.
ALTER TABLE service_order DROP CONSTRAINT service_order_customer_id_fkey;
ALTER TABLE service_order_line DROP CONSTRAINT service_order_line_stock_item_id_fkey;
ALTER TABLE stock_movement DROP CONSTRAINT stock_movement_stock_item_id_fkey;

-- TG_ARGV: the table named, the naming column. Both are this file's constants.
CREATE FUNCTION reference_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
    EXECUTE format(
        'SELECT n.%1$I FROM new_rows AS n WHERE NOT EXISTS (SELECT 1 FROM %2$I AS r WHERE r.id = n.%1$I) LIMIT 1',
        TG_ARGV[1], TG_ARGV[0]) INTO missing;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'insert or update on table "%" violates the reference to "%"', TG_TABLE_NAME, TG_ARGV[0]
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (%s)=(%s) is not present in table "%s".', TG_ARGV[1], missing, TG_ARGV[0]);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER service_order_customer_insert AFTER INSERT ON service_order
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION reference_check('customer', 'customer_id');
CREATE TRIGGER service_order_customer_update AFTER UPDATE ON service_order
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION reference_check('customer', 'customer_id');
CREATE TRIGGER service_order_line_stock_item_insert AFTER INSERT ON service_order_line
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION reference_check('stock_item', 'stock_item_id');
CREATE TRIGGER service_order_line_stock_item_update AFTER UPDATE ON service_order_line
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION reference_check('stock_item', 'stock_item_id');
CREATE TRIGGER stock_movement_stock_item_insert AFTER INSERT ON stock_movement
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION reference_check('stock_item', 'stock_item_id');
CREATE TRIGGER stock_movement_stock_item_update AFTER UPDATE ON stock_movement
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION reference_check('stock_item', 'stock_item_id');

-- TG_ARGV: what names the rows of this table.
CREATE FUNCTION keep_referenced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are never deleted or renumbered: % refer to them', TG_TABLE_NAME, TG_ARGV[0]
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER customer_keep_delete BEFORE DELETE ON customer
    FOR EACH ROW EXECUTE FUNCTION keep_referenced('orders');
CREATE TRIGGER customer_keep_id BEFORE UPDATE OF id ON customer
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION keep_referenced('orders');
CREATE TRIGGER customer_keep_truncate BEFORE TRUNCATE ON customer
    FOR EACH STATEMENT EXECUTE FUNCTION keep_referenced('orders');
CREATE TRIGGER stock_item_keep_delete BEFORE DELETE ON stock_item
    FOR EACH ROW EXECUTE FUNCTION keep_referenced('order lines and the stock ledger');
CREATE TRIGGER stock_item_keep_id BEFORE UPDATE OF id ON stock_item
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION keep_referenced('order lines and the stock ledger');
CREATE TRIGGER stock_item_keep_truncate BEFORE TRUNCATE ON stock_item
    FOR EACH STATEMENT EXECUTE FUNCTION keep_referenced('order lines and the stock ledger');

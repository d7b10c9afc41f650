-- The search outbox, written once per statement instead of once per row: an import
-- chunk of 5,000 orders made 5,000 trigger calls and 5,000 single-row INSERTs; the
-- transition tables of a statement-level trigger make it one INSERT ... SELECT. Same
-- rows, same transaction, same `nexes.skip_outbox` switch for bulk loaders.
DROP TRIGGER service_order_outbox ON service_order;
DROP FUNCTION service_order_outbox();

CREATE FUNCTION service_order_outbox_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('nexes.skip_outbox', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO search_outbox (order_id, op) SELECT id, 'delete' FROM old_rows;
    ELSE
        INSERT INTO search_outbox (order_id, op) SELECT id, 'upsert' FROM new_rows;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER service_order_outbox_insert AFTER INSERT ON service_order
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION service_order_outbox_rows();
CREATE TRIGGER service_order_outbox_update AFTER UPDATE ON service_order
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION service_order_outbox_rows();
CREATE TRIGGER service_order_outbox_delete AFTER DELETE ON service_order
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION service_order_outbox_rows();

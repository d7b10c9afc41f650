-- Least privilege (issue 16): each application role gets, table by table, what its code
-- needs and nothing else (tests/test_grants.py compares every role's privileges with the
-- declared matrix in nexes/db/grants.py); and the database itself guarantees that every
-- order has its service_order_key row.
--
-- Until now every table was granted SELECT, INSERT, UPDATE, DELETE to nexes_api and
-- nexes_worker (and SELECT to nexes_analyst), by 0001 and its default privileges. That let
-- an application role write `deferred_index`, whose rows `nexes migrate` and `nexes seed`
-- run as the owner, `schema_migration`, and the maintenance flags.
--
-- Tables are named one by one (never ALL TABLES IN SCHEMA): a database that applied 0031
-- (audit_event, with grants of its own) before this file existed runs this one after it.

-- 1. Nothing by default: a table, partition or sequence made from now on grants an
--    application role only what its migration (or audit_event_add_month) says.
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM nexes_api, nexes_worker, nexes_analyst;
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM nexes_api, nexes_worker;

-- 2. Everything 0001 and its default privileges gave, taken back.
REVOKE ALL ON
    customer, stock_item, stock_movement,
    service_order_key, service_order, service_order_line, service_order_archive, service_order_line_archive,
    dashboard_stat, dashboard_stat_month, customer_stat_month, customer_stat_cum, customer_stat_cum_horizon,
    customer_stat_cum_expected,
    search_outbox, search_reindex, search_reindex_change, maintenance_flag,
    import_job, import_upload_chunk, import_row, import_error,
    stat_drift, reconcile_line_check, deferred_index, schema_migration
FROM PUBLIC, nexes_api, nexes_worker, nexes_analyst;

REVOKE ALL ON SEQUENCE
    customer_id_seq, stock_item_id_seq, stock_movement_id_seq, service_order_id_seq, search_outbox_id_seq,
    search_reindex_id_seq, import_job_id_seq, import_error_id_seq, stat_drift_id_seq
FROM PUBLIC, nexes_api, nexes_worker, nexes_analyst;

-- Where 0031 ran first, its sequence got 0001's default SELECT and UPDATE besides the
-- USAGE 0031 grants.
DO $$
BEGIN
    IF to_regclass('audit_event_id_seq') IS NOT NULL THEN
        REVOKE SELECT, UPDATE ON SEQUENCE audit_event_id_seq FROM PUBLIC, nexes_api, nexes_worker, nexes_analyst;
    END IF;
END
$$;

-- The quarters, attached, archived or standalone between two archive steps: the roles reach
-- orders and lines through the partitioned tables only (whose privileges are the ones checked).
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN
        SELECT c.oid::regclass FROM pg_class AS c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
          AND c.relname ~ '^service_order(_line)?_[0-9]{4}q[1-4]$'
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM PUBLIC, nexes_api, nexes_worker, nexes_analyst', part);
    END LOOP;
END
$$;

-- 3. What the code needs. The write path (nexes/db/order_write.py, by mutations as
--    nexes_api and by imports as nexes_worker) and the triggers it fires write orders,
--    lines, keys, the ledger, on-hand, the dashboard and customer stats and the outbox;
--    SELECT ... FOR UPDATE needs UPDATE too. Reads of analysts are SELECT only.
GRANT SELECT, INSERT ON customer TO nexes_api;                       -- createCustomer
GRANT SELECT ON customer TO nexes_worker, nexes_analyst;
GRANT SELECT, INSERT, UPDATE ON stock_item TO nexes_api;             -- createStockItem, receiveStock
GRANT SELECT, UPDATE ON stock_item TO nexes_worker;
GRANT SELECT ON stock_item TO nexes_analyst;
GRANT SELECT, INSERT ON stock_movement TO nexes_api, nexes_worker;
GRANT SELECT ON stock_movement TO nexes_analyst;

GRANT SELECT, INSERT, UPDATE, DELETE ON service_order_key TO nexes_api, nexes_worker;
GRANT SELECT ON service_order_key TO nexes_analyst;
GRANT USAGE ON SEQUENCE service_order_id_seq TO nexes_api, nexes_worker;
GRANT SELECT, INSERT, UPDATE ON service_order TO nexes_api, nexes_worker;
GRANT SELECT ON service_order TO nexes_analyst;
GRANT SELECT, INSERT, UPDATE, DELETE ON service_order_line TO nexes_api, nexes_worker;
GRANT SELECT ON service_order_line TO nexes_analyst;
GRANT SELECT ON service_order_archive, service_order_line_archive TO nexes_api, nexes_worker, nexes_analyst;

-- Kept by the write path, its triggers, and reconciliation (nexes_worker).
GRANT SELECT, INSERT, UPDATE ON dashboard_stat, dashboard_stat_month, customer_stat_month, customer_stat_cum
    TO nexes_api, nexes_worker;
GRANT SELECT, UPDATE ON customer_stat_cum_horizon TO nexes_api, nexes_worker;  -- customer_stat_cum_roll
GRANT SELECT ON dashboard_stat, dashboard_stat_month, customer_stat_month, customer_stat_cum,
    customer_stat_cum_horizon TO nexes_analyst;
GRANT SELECT, INSERT ON stat_drift TO nexes_worker;
GRANT SELECT, INSERT, UPDATE ON reconcile_line_check TO nexes_worker;

-- Search: the outbox trigger inserts as whoever writes orders; the sync (nexes_worker)
-- claims (FOR UPDATE) and deletes; search health and metrics (nexes_api) read the lag and
-- the latest reindex.
GRANT SELECT, INSERT ON search_outbox TO nexes_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON search_outbox TO nexes_worker;
GRANT SELECT ON search_reindex TO nexes_api;
GRANT SELECT, INSERT, UPDATE ON search_reindex TO nexes_worker;
GRANT SELECT, INSERT, DELETE ON search_reindex_change TO nexes_worker;

-- Imports: the API stores uploads and lists, cancels and reads jobs and their errors; the
-- workers (and `nexes import`, as nexes_worker) store, stage, apply, sweep and purge.
GRANT SELECT, INSERT, UPDATE, DELETE ON import_job TO nexes_api, nexes_worker;
GRANT INSERT ON import_upload_chunk TO nexes_api;
GRANT SELECT, INSERT ON import_upload_chunk TO nexes_worker;
GRANT SELECT, INSERT, DELETE ON import_row TO nexes_worker;
GRANT SELECT ON import_error TO nexes_api;
GRANT SELECT, INSERT ON import_error TO nexes_worker;

-- The import runner refuses to write to a database behind its code (migrate.behind), and
-- health compares the primary's newest migration with the code's (nexes_monitor, whose
-- only table privilege this is; pg_monitor and CONNECT are nexes migrate's, ensure_monitor).
GRANT SELECT ON schema_migration TO nexes_worker, nexes_monitor;

-- deferred_index and maintenance_flag: no application role writes them. The one flag the
-- workers raise and clear (a search reindex wanted, by the drift check; done, by the
-- reindex) goes through these two functions, which can do nothing else.
GRANT SELECT ON maintenance_flag TO nexes_worker;

CREATE FUNCTION search_reindex_ask() RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO public.maintenance_flag (name) VALUES ('search_reindex_needed')
    ON CONFLICT (name) DO UPDATE SET set_at = now()
$$;

CREATE FUNCTION search_reindex_done() RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM public.maintenance_flag WHERE name = 'search_reindex_needed'
$$;

REVOKE ALL ON FUNCTION search_reindex_ask(), search_reindex_done() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION search_reindex_ask(), search_reindex_done() TO nexes_worker;

-- 4. Every order has its key: the same id, SOD number and created_at (the key is what
--    makes SOD numbers unique across partitions, live and archived). Writers make the key
--    first (order_write.py's w_key, seed.py's CHUNK_KEYS), so the check runs at the end of
--    each INSERT statement on service_order, over its transition table: one anti-join per
--    statement (an import chunk of 5,000 orders), not a query per row. A key is never
--    deleted while its order (live or archived) exists, and neither side's identity changes.
--    Writers hold their keys' row locks (INSERT ... ON CONFLICT DO UPDATE), so a concurrent
--    delete of a key waits for the order's transaction and then sees its order.
--    Statement triggers fire for statements on the partitioned tables; the application roles
--    have no privilege on the partitions themselves (section 2).
CREATE FUNCTION service_order_key_present() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT n.id, n.sod_number, n.created_at INTO bad
    FROM new_rows AS n
    WHERE NOT EXISTS (SELECT 1 FROM service_order_key AS k
                      WHERE k.sod_number = n.sod_number AND k.id = n.id AND k.created_at = n.created_at)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'service order % (id %) has no service_order_key row with the same id, SOD number and created_at',
            bad.sod_number, bad.id
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (id, sod_number, created_at)=(%s, %s, %s) is not present in table "service_order_key".',
                                  bad.id, bad.sod_number, bad.created_at),
                  HINT = 'insert the key first, in the same transaction (nexes/db/order_write.py does)';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER service_order_key_present AFTER INSERT ON service_order
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION service_order_key_present();

CREATE FUNCTION service_order_key_in_use() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        IF EXISTS (SELECT 1 FROM service_order) OR EXISTS (SELECT 1 FROM service_order_archive) THEN
            RAISE EXCEPTION 'service_order_key cannot be truncated while orders exist'
                USING ERRCODE = 'restrict_violation';
        END IF;
        RETURN NULL;
    END IF;
    SELECT o.sod_number, o.id INTO bad
    FROM old_rows AS k
    JOIN LATERAL (SELECT s.sod_number, s.id FROM service_order AS s WHERE s.id = k.id AND s.created_at = k.created_at
                  UNION ALL
                  SELECT a.sod_number, a.id FROM service_order_archive AS a WHERE a.id = k.id AND a.created_at = k.created_at
                  LIMIT 1) AS o ON true
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'the key of service order % (id %) cannot be deleted: the order exists', bad.sod_number, bad.id
            USING ERRCODE = 'restrict_violation',
                  DETAIL = 'Every service_order row has its service_order_key row; orders are never deleted.';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER service_order_key_delete AFTER DELETE ON service_order_key
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION service_order_key_in_use();
CREATE TRIGGER service_order_key_truncate BEFORE TRUNCATE ON service_order_key
    FOR EACH STATEMENT EXECUTE FUNCTION service_order_key_in_use();

-- The identity columns: only listed in an UPDATE's SET do these fire (the write path's
-- upsert sets `revision`, its order update neither of them), and then only for a change.
CREATE FUNCTION service_order_identity_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: the id, SOD number and created_at of an order and of its key never change', TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation',
              DETAIL = format('Row (id, sod_number, created_at)=(%s, %s, %s).', OLD.id, OLD.sod_number, OLD.created_at);
END
$$;

CREATE TRIGGER service_order_key_identity BEFORE UPDATE OF id, sod_number, created_at ON service_order_key
    FOR EACH ROW WHEN ((OLD.id, OLD.sod_number, OLD.created_at) IS DISTINCT FROM (NEW.id, NEW.sod_number, NEW.created_at))
    EXECUTE FUNCTION service_order_identity_fixed();
CREATE TRIGGER service_order_identity BEFORE UPDATE OF id, sod_number, created_at ON service_order
    FOR EACH ROW WHEN ((OLD.id, OLD.sod_number, OLD.created_at) IS DISTINCT FROM (NEW.id, NEW.sod_number, NEW.created_at))
    EXECUTE FUNCTION service_order_identity_fixed();

-- What is there already must hold too (one anti-join over every order; a failure names one).
DO $$
DECLARE
    bad record;
BEGIN
    SELECT o.id, o.sod_number, o.created_at INTO bad
    FROM (SELECT id, sod_number, created_at FROM service_order
          UNION ALL
          SELECT id, sod_number, created_at FROM service_order_archive) AS o
    WHERE NOT EXISTS (SELECT 1 FROM service_order_key AS k
                      WHERE k.sod_number = o.sod_number AND k.id = o.id AND k.created_at = o.created_at)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'service order % (id %, created %) has no matching service_order_key row; repair it before migrating',
            bad.sod_number, bad.id, bad.created_at
            USING ERRCODE = 'foreign_key_violation';
    END IF;
END
$$;

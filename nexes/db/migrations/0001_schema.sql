-- The core schema: customers, stock and its ledger, partitioned service orders and
-- their lines, the global SOD-number key, dashboard stats, the search outbox and
-- the archive. Partitions themselves are created by `nexes migrate` from settings.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TYPE order_status AS ENUM ('DRAFT', 'OPEN', 'IN_PROGRESS', 'COMPLETED', 'CANCELLED');

CREATE TABLE customer (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code       text NOT NULL UNIQUE CHECK (code ~ '^[A-Za-z0-9-]{1,40}$'),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX customer_name_id_idx ON customer (name, id);
CREATE INDEX customer_name_trgm_idx ON customer USING gin (name gin_trgm_ops);

CREATE TABLE stock_item (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku        text NOT NULL UNIQUE CHECK (sku ~ '^[A-Za-z0-9._-]{1,40}$'),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    on_hand    bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stock_item_name_id_idx ON stock_item (name, id);

-- Every change of on_hand is a movement; the key names its cause, so a retried
-- cause finds its movement already there (ON CONFLICT DO NOTHING) and moves nothing.
--   opening:<sku>   receipt:<reference>   order:<sod>:<line_no>:<revision>
CREATE TABLE stock_movement (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stock_item_id   bigint NOT NULL REFERENCES stock_item (id),
    quantity        bigint NOT NULL CHECK (quantity <> 0),
    kind            text NOT NULL CHECK (kind IN ('OPENING', 'RECEIPT', 'CONSUMPTION', 'CORRECTION', 'RETURN')),
    sod_number      text,
    line_no         smallint,
    idempotency_key text NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((sod_number IS NULL) = (line_no IS NULL))
);
CREATE INDEX stock_movement_item_idx ON stock_movement (stock_item_id);
CREATE INDEX stock_movement_line_idx ON stock_movement (sod_number, line_no) WHERE sod_number IS NOT NULL;

-- A global unique index on sod_number is impossible on the partitioned table, so the
-- identity of an order lives here, unpartitioned; it covers live and archived orders.
CREATE SEQUENCE service_order_id_seq AS bigint;
CREATE TABLE service_order_key (
    sod_number text PRIMARY KEY CHECK (sod_number ~ '^[A-Za-z0-9-]{1,40}$'),
    id         bigint NOT NULL UNIQUE DEFAULT nextval('service_order_id_seq'),
    created_at timestamptz NOT NULL
);
ALTER SEQUENCE service_order_id_seq OWNED BY service_order_key.id;

CREATE TABLE service_order (
    id           bigint NOT NULL,
    created_at   timestamptz NOT NULL,
    sod_number   text NOT NULL,
    customer_id  bigint NOT NULL REFERENCES customer (id),
    status       order_status NOT NULL,
    description  text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    currency     char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    total_amount numeric(14, 2) NOT NULL CHECK (total_amount >= 0),
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

-- Keyset indexes: every supported (filter, order) pair of the read API is served by
-- one of these, scanned forward or backward, with (sort value, id) row comparison.
CREATE INDEX service_order_created_idx ON service_order (created_at DESC, id DESC);
CREATE INDEX service_order_status_created_idx ON service_order (status, created_at DESC, id DESC);
CREATE INDEX service_order_customer_created_idx ON service_order (customer_id, created_at DESC, id DESC);
CREATE INDEX service_order_updated_idx ON service_order (updated_at DESC, id DESC);
CREATE INDEX service_order_amount_idx ON service_order (total_amount DESC, id DESC);
CREATE INDEX service_order_sod_trgm_idx ON service_order USING gin (sod_number gin_trgm_ops);

-- No foreign key points into a partitioned table, so a quarter can always be detached.
CREATE TABLE service_order_line (
    order_id      bigint NOT NULL,
    created_at    timestamptz NOT NULL,
    line_no       smallint NOT NULL CHECK (line_no BETWEEN 1 AND 999),
    stock_item_id bigint NOT NULL REFERENCES stock_item (id),
    quantity      integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000000),
    unit_price    numeric(12, 2) NOT NULL CHECK (unit_price >= 0),
    PRIMARY KEY (order_id, line_no, created_at)
) PARTITION BY RANGE (created_at);

-- Archived quarters are detached from the live tables and attached here: the same
-- shapes, the same indexes, so attaching reuses each partition's own indexes.
CREATE TABLE service_order_archive (LIKE service_order INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (created_at);
ALTER TABLE service_order_archive ADD PRIMARY KEY (id, created_at);
CREATE INDEX service_order_archive_created_idx ON service_order_archive (created_at DESC, id DESC);
CREATE INDEX service_order_archive_status_created_idx ON service_order_archive (status, created_at DESC, id DESC);
CREATE INDEX service_order_archive_customer_created_idx
    ON service_order_archive (customer_id, created_at DESC, id DESC);
CREATE INDEX service_order_archive_updated_idx ON service_order_archive (updated_at DESC, id DESC);
CREATE INDEX service_order_archive_amount_idx ON service_order_archive (total_amount DESC, id DESC);
CREATE INDEX service_order_archive_sod_trgm_idx ON service_order_archive USING gin (sod_number gin_trgm_ops);

CREATE TABLE service_order_line_archive (LIKE service_order_line INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (created_at);
ALTER TABLE service_order_line_archive ADD PRIMARY KEY (order_id, line_no, created_at);

-- Per UTC day, status and currency, for all orders (archived included); kept by the
-- write path in the same transaction, checked and corrected by reconciliation.
CREATE TABLE dashboard_stat (
    day          date NOT NULL,
    status       order_status NOT NULL,
    currency     char(3) NOT NULL,
    order_count  bigint NOT NULL DEFAULT 0,
    total_amount numeric(18, 2) NOT NULL DEFAULT 0,
    PRIMARY KEY (day, status, currency)
);

-- One row per change of an order, written by a trigger so that no write path can
-- forget it. The sync claims rows with FOR UPDATE SKIP LOCKED, per order.
CREATE TABLE search_outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id    bigint NOT NULL,
    op          text NOT NULL CHECK (op IN ('upsert', 'delete')),
    enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX search_outbox_order_idx ON search_outbox (order_id);
CREATE INDEX search_outbox_enqueued_idx ON search_outbox (enqueued_at);

-- Bulk loaders (the seed) set `nexes.skip_outbox` locally and ask for a full reindex
-- instead (maintenance_flag 'search_reindex_needed'), rather than queue millions of rows.
CREATE FUNCTION service_order_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('nexes.skip_outbox', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO search_outbox (order_id, op) VALUES (OLD.id, 'delete');
    ELSE
        INSERT INTO search_outbox (order_id, op) VALUES (NEW.id, 'upsert');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER service_order_outbox AFTER INSERT OR UPDATE OR DELETE ON service_order
    FOR EACH ROW EXECUTE FUNCTION service_order_outbox();

CREATE TABLE maintenance_flag (
    name   text PRIMARY KEY,
    set_at timestamptz NOT NULL DEFAULT now()
);

-- Privileges: the API and workers read and write data, the analyst only reads; the
-- owner's default privileges extend the same to every table later migrations add.
GRANT USAGE ON SCHEMA public TO nexes_api, nexes_worker, nexes_analyst;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO nexes_api, nexes_worker;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO nexes_analyst;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO nexes_api, nexes_worker;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO nexes_api, nexes_worker;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO nexes_analyst;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO nexes_api, nexes_worker;

-- Search: the indexes of the pg_trgm fallback, and the bookkeeping of a running reindex.

-- The fallback (pg_trgm on a replica) matches SOD numbers (service_order_sod_trgm_idx),
-- customer names (customer_name_trgm_idx), and with these, descriptions and customer codes.
-- The archive gets the same index, so attaching a quarter to it reuses the partition's own.
CREATE INDEX service_order_description_trgm_idx ON service_order USING gin (description gin_trgm_ops);
CREATE INDEX service_order_archive_description_trgm_idx ON service_order_archive USING gin (description gin_trgm_ops);
CREATE INDEX customer_code_trgm_idx ON customer USING gin (code gin_trgm_ops);

-- A reindex builds a new collection from a replica snapshot while the sync keeps writing
-- through the alias. While a run is unfinished the sync records every order it writes
-- (search_reindex_change); after the alias swap the run queues them into the outbox
-- again, so a change the snapshot missed reaches the new collection too.
-- heartbeat_at lets a new run take over one whose process died.
CREATE TABLE search_reindex (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection   text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    outcome      text CHECK (outcome IN ('swapped', 'abandoned')),
    documents    bigint NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX search_reindex_running_idx ON search_reindex ((true)) WHERE finished_at IS NULL;

CREATE TABLE search_reindex_change (
    reindex_id bigint NOT NULL REFERENCES search_reindex (id) ON DELETE CASCADE,
    order_id   bigint NOT NULL,
    PRIMARY KEY (reindex_id, order_id)
);

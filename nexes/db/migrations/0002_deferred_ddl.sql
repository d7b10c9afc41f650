-- Secondary indexes that a bulk load (the seed) dropped and still has to rebuild.
-- A crash between the drop and the rebuild leaves the rows here; the next seed or
-- `nexes migrate` rebuilds them, so an index can never be silently lost.
CREATE TABLE deferred_index (
    name       text PRIMARY KEY,
    definition text NOT NULL,
    deferred_at timestamptz NOT NULL DEFAULT now()
);

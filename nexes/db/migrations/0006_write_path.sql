-- The write path: order revisions for ledger keys, and import jobs with their stored
-- upload, their staged rows and their per-row errors.

-- Every change of an order bumps its revision under the key row's lock; stock
-- corrections of that change are keyed order:<sod>:<line>:<revision>:<item>, so a
-- retried change can never move stock twice (and the seed's rev-0 keys stay unique).
ALTER TABLE service_order_key ADD COLUMN revision integer NOT NULL DEFAULT 0;

-- UPLOADING is internal: the upload is still streaming into import_upload_chunk, and
-- the job is neither listed nor enqueued until the last chunk is stored.
CREATE TYPE import_status AS ENUM ('UPLOADING', 'QUEUED', 'RUNNING', 'SUCCEEDED', 'PARTIAL', 'FAILED', 'CANCELLED');

CREATE TABLE import_job (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status           import_status NOT NULL DEFAULT 'UPLOADING',
    filename         text CHECK (length(filename) <= 255),
    size_bytes       bigint NOT NULL DEFAULT 0,
    sha256           text,
    format           text CHECK (format IN ('csv', 'xlsx')),
    request_id       text,
    trace_context    jsonb NOT NULL DEFAULT '{}',
    -- Checkpoints: `stage` stores parsed rows in import_row (staged_rows of them are
    -- committed); `apply` applies whole orders in sod_number order (applied_through is
    -- the last one committed).
    phase            text NOT NULL DEFAULT 'stage' CHECK (phase IN ('stage', 'apply', 'done')),
    staged_rows      bigint NOT NULL DEFAULT 0,
    applied_through  text,
    total_rows       bigint,
    processed_rows   bigint NOT NULL DEFAULT 0,
    inserted         bigint NOT NULL DEFAULT 0,
    updated          bigint NOT NULL DEFAULT 0,
    unchanged        bigint NOT NULL DEFAULT 0,
    failed           bigint NOT NULL DEFAULT 0,
    message          text,
    -- One executor at a time: a worker owns the job while lease_until is in the future.
    lease_owner      text,
    lease_until      timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    lsn              pg_lsn,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    expires_at       timestamptz
);
CREATE INDEX import_job_status_idx ON import_job (status, id DESC);
CREATE INDEX import_job_active_idx ON import_job (lease_until) WHERE status IN ('QUEUED', 'RUNNING');
CREATE INDEX import_job_expires_idx ON import_job (expires_at) WHERE expires_at IS NOT NULL;

-- The upload, in order, as it streamed in (about 1 MiB per chunk).
CREATE TABLE import_upload_chunk (
    job_id bigint NOT NULL REFERENCES import_job (id) ON DELETE CASCADE,
    seq    integer NOT NULL,
    data   bytea NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Parsed rows of a job, staged for the set-based apply. Unlogged (it is re-derivable
-- from the stored upload): after a server crash it is empty, the job sees its
-- staged_rows checkpoint disagree with the table and stages again from the start.
CREATE UNLOGGED TABLE import_row (
    job_id        bigint NOT NULL,
    row_no        bigint NOT NULL,
    sod_number    text,
    created_at    timestamptz,
    customer_code text,
    status        order_status,
    description   text,
    currency      text,
    line_no       smallint,
    sku           text,
    quantity      integer,
    unit_price    numeric(12, 2),
    -- The row's own errors, [{"column", "code", "message"}], or NULL when it is valid.
    errors        jsonb,
    raw           text NOT NULL,
    PRIMARY KEY (job_id, row_no)
);
CREATE INDEX import_row_sod_idx ON import_row (job_id, sod_number);

-- What an operator reads back: every rejected row, with its raw text.
CREATE TABLE import_error (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       bigint NOT NULL REFERENCES import_job (id) ON DELETE CASCADE,
    row_no       bigint NOT NULL,
    sod_number   text,
    column_name  text,
    code         text NOT NULL,
    message      text NOT NULL,
    raw          text NOT NULL
);
CREATE INDEX import_error_job_idx ON import_error (job_id, row_no, id);

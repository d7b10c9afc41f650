-- Who did what (issue 16): an append-only audit trail, and the owner of each import job.
--
-- audit_event holds one row per mutation, per import job accepted and finished, and per
-- periodic job that changed data, written in the transaction of the change
-- (nexes/db/audit.py). It is partitioned by month on `at`, so retention drops whole
-- months (DROP TABLE, never DELETE). Months are made ahead by the partition job
-- (audit_event_add_month); the DEFAULT partition only catches rows of a month nobody
-- made, so that a missed job never fails a mutation.
--
-- Append-only, twice over: the application roles are granted INSERT and SELECT only
-- (partitions made later get the same, in audit_event_add_month), and a trigger refuses
-- UPDATE, DELETE and TRUNCATE for everyone, the owner included.

CREATE SEQUENCE audit_event_id_seq AS bigint;

CREATE TABLE audit_event (
    -- A sequence, not an identity column: PostgreSQL 15 has none on partitioned tables.
    id         bigint NOT NULL DEFAULT nextval('audit_event_id_seq'),
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    action     text NOT NULL CHECK (length(action) BETWEEN 1 AND 100),
    entity     text NOT NULL CHECK (length(entity) BETWEEN 1 AND 100),
    entity_id  text NOT NULL CHECK (length(entity_id) <= 200),
    request_id text CHECK (length(request_id) <= 200),
    -- What changed, never a whole file or order: a few fields, counts, old and new values.
    changes    jsonb NOT NULL DEFAULT '{}' CHECK (pg_column_size(changes) <= 8192),
    -- Newest first, keyset on (at, id): the primary key's index, read backwards.
    PRIMARY KEY (at, id)
) PARTITION BY RANGE (at);

ALTER SEQUENCE audit_event_id_seq OWNED BY audit_event.id;

-- The connection's filters: one entity's history, one actor's doings.
CREATE INDEX audit_event_entity_idx ON audit_event (entity, entity_id, at DESC, id DESC);
CREATE INDEX audit_event_actor_idx ON audit_event (actor, at DESC, id DESC);

CREATE TABLE audit_event_default PARTITION OF audit_event DEFAULT;

CREATE FUNCTION audit_event_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_event is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'old months leave by retention (DROP of the month''s partition), rows never change';
END
$$;

-- Row triggers of a partitioned table are cloned onto every partition, present and future.
CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_event
    FOR EACH ROW EXECUTE FUNCTION audit_event_refuse();
CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event
    FOR EACH STATEMENT EXECUTE FUNCTION audit_event_refuse();

-- The same text as nexes.resolvers.ids.global_id ("Type:key", base64url without padding),
-- so entity_id is the id the API shows (tests/test_audit.py checks both agree).
CREATE FUNCTION audit_global_id(type_name text, key bigint) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN rtrim(translate(encode(convert_to(type_name || ':' || key, 'UTF8'), 'base64'), '+/', '-_'), '=');

-- The month starting at `month` (its first day), with the application roles' grants cut
-- to INSERT and SELECT; false when it exists already, or when the DEFAULT partition holds
-- rows of that month (PostgreSQL would refuse it; they stay there, and are said in a notice).
CREATE FUNCTION audit_event_add_month(month date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    name text := format('audit_event_%s', to_char(month, 'YYYY"m"MM'));
    lo timestamptz := (date_trunc('month', month)::date || ' 00:00:00+00')::timestamptz;
    hi timestamptz := ((date_trunc('month', month) + interval '1 month')::date || ' 00:00:00+00')::timestamptz;
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM audit_event_default WHERE at >= lo AND at < hi) THEN
        RAISE NOTICE 'audit_event_default holds rows of %; % is not made', to_char(month, 'YYYY-MM'), name;
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF audit_event FOR VALUES FROM (%L) TO (%L)', name, lo, hi);
    EXECUTE format('REVOKE ALL ON %I FROM PUBLIC, nexes_api, nexes_worker, nexes_analyst', name);
    EXECUTE format('GRANT SELECT, INSERT ON %I TO nexes_api, nexes_worker', name);
    RETURN true;
END
$$;

REVOKE ALL ON audit_event, audit_event_default FROM PUBLIC, nexes_api, nexes_worker, nexes_analyst;
GRANT SELECT, INSERT ON audit_event, audit_event_default TO nexes_api, nexes_worker;
GRANT USAGE ON SEQUENCE audit_event_id_seq TO nexes_api, nexes_worker;
REVOKE ALL ON FUNCTION audit_event_add_month(date) FROM PUBLIC;

-- Last month, this one and the next three; the partition job keeps them coming.
SELECT audit_event_add_month((date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => m))::date)
FROM generate_series(-1, 3) AS m;

-- The owner of an import job: the actor that started it (a token's sub, cli:<os user>).
-- Jobs from before have none, and only admins see them.
ALTER TABLE import_job ADD COLUMN created_by text CHECK (length(created_by) <= 200);
CREATE INDEX import_job_created_by_idx ON import_job (created_by, id DESC);

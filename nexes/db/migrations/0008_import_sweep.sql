-- When a job was last sent to the workers: the sweep re-sends a job whose lease ran out
-- (its worker died) at once, and a QUEUED job whose message may be lost only after a while.
ALTER TABLE import_job ADD COLUMN enqueued_at timestamptz;

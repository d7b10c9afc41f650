-- The audit trail (nexes.db.audit; table and partitions: migration 0031). Rows are
-- written in the caller's transaction, so a change and its row commit or vanish together.

-- name: record
-- One row: who (actor, request id), what (action), on what (entity, its id), and a small JSON.
INSERT INTO audit_event (actor, action, entity, entity_id, request_id, changes)
VALUES (%(actor)s, %(action)s, %(entity)s, %(entity_id)s, %(request_id)s, %(changes)s);

-- name: record_orders
-- One row per order the write path just inserted or updated (order_write's w_order, in
-- this transaction); unchanged and rejected orders write none. The changes name the
-- fields that moved, with old and new values (a description only by its length).
INSERT INTO audit_event (actor, action, entity, entity_id, request_id, changes)
SELECT %(actor)s, %(action)s, 'ServiceOrder', audit_global_id('ServiceOrder', w.id), %(request_id)s,
       jsonb_strip_nulls(jsonb_build_object(
           'sodNumber', w.sod_number,
           'revision', w.revision,
           'status', CASE WHEN w.outcome = 'inserted' THEN to_jsonb(w.status::text)
                          WHEN w.status IS DISTINCT FROM w.old_status
                          THEN jsonb_build_array(w.old_status::text, w.status::text) END,
           'customerId', CASE WHEN w.outcome = 'inserted' THEN to_jsonb(audit_global_id('Customer', w.customer_id)) END,
           'currency', CASE WHEN w.outcome = 'inserted' THEN to_jsonb(w.currency::text) END,
           'createdAt', CASE WHEN w.outcome = 'inserted' THEN to_jsonb(w.created_at) END,
           'totalAmount', CASE WHEN w.outcome = 'inserted' THEN to_jsonb(w.total_amount::text)
                               WHEN w.total_amount IS DISTINCT FROM w.old_total
                               THEN jsonb_build_array(w.old_total::text, w.total_amount::text) END,
           'descriptionLength', CASE WHEN w.outcome = 'inserted' OR w.description IS DISTINCT FROM w.old_description
                                     THEN to_jsonb(length(w.description)) END,
           'lines', CASE WHEN w.outcome = 'inserted'
                         THEN to_jsonb((SELECT count(*) FROM stage_line AS l WHERE l.sod_number = w.sod_number)) END
       ))
FROM w_order AS w
WHERE w.outcome IN ('inserted', 'updated')
ORDER BY w.sod_number;

-- name: events_page
-- Newest first, keyset on (at, id) backwards; each filter is optional. The primary key
-- serves the plain walk, audit_event_entity_idx / audit_event_actor_idx the filtered ones,
-- and `since` prunes the months before it.
SELECT id, at, actor, action, entity, entity_id, request_id, changes
FROM audit_event
WHERE (%(entity)s::text IS NULL OR entity = %(entity)s::text)
  AND (%(entity_id)s::text IS NULL OR entity_id = %(entity_id)s::text)
  AND (%(actor)s::text IS NULL OR actor = %(actor)s::text)
  AND (%(since)s::timestamptz IS NULL OR at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR at < %(until)s::timestamptz)
  AND (%(before_at)s::timestamptz IS NULL OR (at, id) < (%(before_at)s::timestamptz, %(before_id)s::bigint))
ORDER BY at DESC, id DESC
LIMIT %(limit)s;

-- name: add_month
-- The month holding this date, when missing (its grants cut to INSERT and SELECT); whether it was made.
SELECT audit_event_add_month(date_trunc('month', %(month)s::date)::date);

-- name: months
-- The monthly partitions (not the DEFAULT one) and where each ends, oldest first.
SELECT c.relname::text AS name, (m[1])::timestamptz AS lo, (m[2])::timestamptz AS hi
FROM pg_inherits AS i
JOIN pg_class AS c ON c.oid = i.inhrelid,
     regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\) TO \(''([^'']+)''\)') AS m
WHERE i.inhparent = 'audit_event'::regclass
ORDER BY 2;

-- Archived orders leave the search index. Archiving now queues a quarter's orders in the
-- outbox when it attaches the quarter to the archive (nexes/db/archive.py); quarters
-- archived before kept their documents, so theirs are queued once here. The sync finds
-- them gone from service_order and deletes their documents (none left after a reindex:
-- a no-op then). An empty archive, as on every new database, makes this instant.
INSERT INTO search_outbox (order_id, op) SELECT id, 'delete' FROM service_order_archive;

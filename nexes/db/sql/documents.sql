-- Trusted documents (nexes.db.documents; table: migration 0032). Written by
-- `nexes documents add` as the owner; read by the API (SELECT only).

-- name: add
-- One document; registering the same text again changes nothing (and returns no row).
INSERT INTO trusted_document (sha256, document, operation_names, added_by)
VALUES (%(sha256)s, %(document)s, %(operation_names)s, %(added_by)s)
ON CONFLICT (sha256) DO NOTHING
RETURNING sha256;

-- name: list
-- What `nexes documents list` shows: hashes, names, who added them and when; never the text.
SELECT sha256, operation_names, added_at, added_by
FROM trusted_document
ORDER BY added_at, sha256;

-- name: hashes
-- The API's copy of the registered hashes, bounded (nexes.db.documents.MAX_TRUSTED).
SELECT sha256 FROM trusted_document ORDER BY added_at DESC LIMIT %(limit)s;

-- name: document
-- One registered document's text, when a request names it by hash.
SELECT document FROM trusted_document WHERE sha256 = %(sha256)s;

-- Trusted documents (issue 17): the GraphQL documents viewers and operators may run when
-- NEXES_TRUSTED_DOCUMENTS=on. `nexes documents add` registers them as the owner; the API
-- reads them (SELECT, nothing else) into a per-process copy (nexes.execution.documents).
--
-- The key is the document's SHA-256 in lowercase hex, the `sha256Hash` Apollo's
-- persisted-query link sends; the database itself checks that it is the text's hash.
CREATE TABLE trusted_document (
    sha256          text PRIMARY KEY CHECK (sha256 = encode(sha256(convert_to(document, 'UTF8')), 'hex')),
    document        text NOT NULL CHECK (length(document) BETWEEN 1 AND 1000000),
    operation_names text[] NOT NULL DEFAULT '{}' CHECK (cardinality(operation_names) <= 100),
    added_at        timestamptz NOT NULL DEFAULT now(),
    added_by        text NOT NULL CHECK (length(added_by) BETWEEN 1 AND 200)
);

REVOKE ALL ON trusted_document FROM PUBLIC, nexes_api, nexes_worker, nexes_analyst;
GRANT SELECT ON trusted_document TO nexes_api;

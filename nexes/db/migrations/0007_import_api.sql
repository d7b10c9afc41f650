-- Uploads are mostly CSV text: lz4 stores them about 5x smaller than raw and writes them
-- several times faster than the default pglz (measured on a generated 290 MB import file:
-- pglz 12-13 s, no compression 9 s, lz4 3-6 s through `nexes import`). A server built
-- without lz4 keeps pglz: the upload path works the same, only slower.
DO $$
BEGIN
    ALTER TABLE import_upload_chunk ALTER COLUMN data SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available on this server; import_upload_chunk keeps pglz';
END
$$;

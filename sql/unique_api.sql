CREATE FUNCTION integrity.unique_active(tbl regclass, col text, deleted_col text DEFAULT 'deleted_at',
                                        concurrently boolean DEFAULT true)
RETURNS jsonb LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$ SELECT integrity.unique_active_by_oid($1::oid, $2, $3, $4) $$;
COMMENT ON FUNCTION integrity.unique_active(regclass, text, text, boolean) IS
'Keep col unique among live rows (deleted_col NULL, or not true for a boolean; deleted_col => NULL: all rows), case-insensitively for text: reports the duplicates that stand in the way ({"ok":false,"reason":"duplicates",…}) and builds nothing; else creates the partial unique index, CONCURRENTLY in a background worker once the calling transaction commits (status queued, see integrity.index_builds), or in the transaction for concurrently => false, temporary and partitioned tables.';
COMMENT ON FUNCTION integrity.unique_active_by_oid(oid, text, text, boolean) IS
'integrity.unique_active with the table given by OID.';

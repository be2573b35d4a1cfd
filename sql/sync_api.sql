COMMENT ON FUNCTION integrity.sync_start(uuid, text, text, text, jsonb, interval) IS
'Before syncing an entity to an integration: {"action": "create" | "update" | "skip" | "in_progress"}. skip: the payload''s fingerprint is the one last synced (or it failed for good); in_progress: another caller holds the lease (retry_after_ms). Takes the lease otherwise; create and update carry the lease''s attempt number, for sync_succeeded and sync_failed.';
COMMENT ON FUNCTION integrity.sync_succeeded(uuid, text, text, text, text, integer) IS
'The sync went through: link the entity to external_id. {"ok":true}; {"ok":false,"reason":"external_id_conflict","linked_to":{…}} when another entity of the org holds that external id. Reporting the same success twice is ok. With attempt (from sync_start), {"ok":false,"reason":"lease_lost"} and nothing written when a later sync_start took the link over.';
COMMENT ON FUNCTION integrity.sync_failed(uuid, text, text, text, text, boolean, integer) IS
'The sync failed: the lease is let go; retryable => false makes sync_start skip the same payload. With attempt (from sync_start), {"ok":false,"reason":"lease_lost"} and nothing written when a later sync_start took the link over.';
COMMENT ON FUNCTION integrity.sync_lookup(uuid, text, text) IS
'Which entity an external id of an integration is linked to ({"entity_type", "entity_id", "status", "synced_at"}), or NULL.';
COMMENT ON FUNCTION integrity.sync_health(text) IS
'An integration''s links at a glance, as jsonb: links per status (synced, syncing, failed, failed_permanently, orphaned), expired leases, links never synced, the oldest failure and the last sync.';

CREATE FUNCTION integrity.find_orphans(integration text, entity_table regclass, id_col text DEFAULT 'id',
                                       deleted_col text DEFAULT NULL, of_type text DEFAULT NULL,
                                       mark boolean DEFAULT false)
RETURNS TABLE (org_id uuid, entity_type text, entity_id text, external_id text, status text, reason text)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM integrity.find_orphans_by_oid(integration, entity_table::oid, id_col, deleted_col,
                                                  of_type, mark) $$;
COMMENT ON FUNCTION integrity.find_orphans(text, regclass, text, text, text, boolean) IS
'Links of an integration whose entity is gone from entity_table (reason missing) or soft-deleted there (deleted: deleted_col set, or true for a boolean). of_type: the links'' entity_type (default: the integration''s only one). mark => true sets them orphaned.';
COMMENT ON FUNCTION integrity.find_orphans_by_oid(text, oid, text, text, text, boolean) IS
'integrity.find_orphans with the entity table given by OID.';

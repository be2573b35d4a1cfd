COMMENT ON FUNCTION integrity.sync_start(uuid, text, text, text, jsonb, interval) IS
'Before syncing an entity to an integration: {"action": "create" | "update" | "skip" | "in_progress"}. skip: the payload''s fingerprint is the one last synced (or it failed for good); in_progress: another caller holds the lease (retry_after_ms). Takes the lease otherwise.';
COMMENT ON FUNCTION integrity.sync_succeeded(uuid, text, text, text, text) IS
'The sync went through: link the entity to external_id. {"ok":true}; {"ok":false,"reason":"external_id_conflict","linked_to":{…}} when another entity of the org holds that external id. Reporting the same success twice is ok.';
COMMENT ON FUNCTION integrity.sync_failed(uuid, text, text, text, text, boolean) IS
'The sync failed: the lease is let go; retryable => false makes sync_start skip the same payload.';
COMMENT ON FUNCTION integrity.sync_lookup(uuid, text, text) IS
'Which entity an external id of an integration is linked to ({"entity_type", "entity_id", "status", "synced_at"}), or NULL.';
COMMENT ON FUNCTION integrity.sync_health(text) IS
'An integration''s links at a glance, as jsonb: links per status (synced, syncing, failed, failed_permanently, orphaned), expired leases, links never synced, the oldest failure and the last sync.';

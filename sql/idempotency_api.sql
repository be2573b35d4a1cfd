COMMENT ON FUNCTION integrity.idem_begin(uuid, text, text, jsonb, interval, interval) IS
'Claim an idempotency key for a request. Returns {"outcome":"started","attempt"} (do the work), {"outcome":"replay","response_code","response"} (return the stored answer), {"outcome":"in_progress","retry_after_ms"} (HTTP 409), {"outcome":"mismatch"} (same key, different request: HTTP 422), or {"outcome":"resumed","recovery_point","attempt"} (the previous holder''s lease ran out). In one transaction with the business write and idem_complete, a concurrent duplicate waits and then replays.';
COMMENT ON FUNCTION integrity.idem_checkpoint(uuid, text, text, text) IS
'Record how far multi-transaction work got (handed to whoever resumes) and extend the lease. Returns {"ok":true,"recovery_point","locked_until"}; 55000 unless the key is processing under a live lease.';
COMMENT ON FUNCTION integrity.idem_complete(uuid, text, text, integer, jsonb) IS
'Store the response of a started key; retries with the same key replay it until the key expires. Returns {"ok":true,…}; 55000 unless the key is processing under a live lease.';
COMMENT ON FUNCTION integrity.idem_fail(uuid, text, text, boolean, jsonb, integer) IS
'Record a failure of a started key. retryable => true: the next idem_begin starts again; false: error (and response_code) become the stored answer that idem_begin replays. 55000 unless the key is processing under a live lease.';
COMMENT ON FUNCTION integrity.purge_idempotency_keys(interval) IS
'Delete idempotency keys whose expires_at is more than older_than in the past (default: every expired key). Returns how many. Run it from pg_cron or any scheduler.';

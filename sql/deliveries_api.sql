COMMENT ON FUNCTION integrity.enqueue(uuid, text, text, jsonb, integer, timestamptz, text, integer, boolean) IS
'Record a webhook or job in the caller''s transaction (the transactional outbox): {"id":…,"duplicate":bool}; the same (org_id, job_id) again is the first one''s id. Optional ordering_key (one at a time, in enqueue order), priority, review_on_dead_letter. NOTIFY integrity_deliveries with the event type.';
COMMENT ON FUNCTION integrity.claim(text, integer, interval, text[]) IS
'Hand up to batch (1 to 1000) due deliveries to worker under a lease (above zero, at most 24 hours), each to exactly one worker (FOR UPDATE SKIP LOCKED): highest priority then oldest; an ordering key''s deliveries one at a time in enqueue order. Expired leases are rescued first: their attempt is spent, the last one dead-letters. Each claim sets a fresh lease_token.';
COMMENT ON FUNCTION integrity.complete(bigint, uuid) IS
'Complete a delivery being processed: true; false when it is not processing or, with lease_token, its lease went to another worker.';
COMMENT ON FUNCTION integrity.fail(bigint, text, interval, uuid) IS
'The current attempt failed: retried after retry_in, the event type''s retry schedule, or exponential backoff with full jitter (integrity.retry_base, integrity.retry_cap); dead-lettered (and put up for review if asked) when it was the last attempt. {"ok":false,"reason":"not_found"|"not_processing"|"lease_lost"} as data.';
COMMENT ON FUNCTION integrity.requeue(bigint) IS
'Bring back one failed or dead-lettered delivery, attempts reset, due now. {"ok":false,"reason":"not_found"|"not_failed"} as data.';
COMMENT ON FUNCTION integrity.redrive(text, timestamptz) IS
'Bring back every dead letter (of event_type, dead-lettered since since), attempts reset, due now. Returns how many.';
COMMENT ON FUNCTION integrity.purge_deliveries(interval, integer, bigint) IS
'Remove completed and dead-lettered deliveries finished more than older_than ago, batch_size rows per statement, at most max_rows in all. Returns how many.';
COMMENT ON FUNCTION integrity.set_retry_schedule(text, interval[]) IS
'Set the waits before each retry of an event type (the n-th retry waits schedule[n], the last entry again after that); NULL or empty removes it.';

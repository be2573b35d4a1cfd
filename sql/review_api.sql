COMMENT ON FUNCTION integrity.review_enqueue(uuid, text, text, text, jsonb, integer) IS
'Put an item in front of a person: {"id":…,"duplicate":bool}. An open item of the same org, subject and reason is counted again (occurrences, payload, the higher priority), not duplicated.';
COMMENT ON FUNCTION integrity.review_take(text, integer) IS
'Take up to n pending items for a reviewer (1 to 1000), highest priority then oldest, skipping items another reviewer is taking (FOR UPDATE SKIP LOCKED). They become in_review, assigned to the reviewer.';
COMMENT ON FUNCTION integrity.review_resolve(bigint, text, boolean) IS
'Close an item as resolved (or dismissed) with the reviewer''s resolution. {"ok":false,"reason":"not_found"|"already_resolved"} as data.';

COMMENT ON FUNCTION integrity.saga_begin(uuid, text, jsonb, interval) IS
'Begin a saga of a kind (e.g. checkout) with its payload; returns its id. stuck_after: how long it may run before integrity.stuck_sagas lists it.';
COMMENT ON FUNCTION integrity.saga_step(uuid, text, jsonb) IS
'Record a step that took effect, with the compensation that undoes it (NULL: nothing to undo), in the same transaction as the step''s write. {"ok":true,"seq":n}; the same step again: ok with duplicate (also once completed); {"ok":false,"reason":"aborted","recorded":…} when the saga was aborted first: recorded true, its compensation is among those saga_abort hands out; false, undo the step yourself.';
COMMENT ON FUNCTION integrity.saga_complete(uuid) IS
'The saga''s work is done: {"ok":true,"status":"completed","steps":n}, also when it already was; {"ok":false,"reason":"aborted"} when it was aborted first.';
COMMENT ON FUNCTION integrity.saga_abort(uuid, text) IS
'Abort a saga: returns the compensations of its steps not yet confirmed, last step first (seq, step, compensation). Calling it again hands out the ones still pending. A completed saga is not aborted (55000).';
COMMENT ON FUNCTION integrity.saga_compensated(uuid, text) IS
'A compensation handed out by saga_abort was carried out: {"ok":true,"pending":n,"status":"compensating"|"compensated"}. Confirming twice is ok.';

COMMENT ON FUNCTION integrity.book(uuid, uuid, timestamptz, interval, uuid, jsonb, boolean) IS
'Book resource_id from starts_at for duration. Returns {"ok":true,"booking_id","starts_at","ends_at"}, or {"ok":false,"reason":"slot_taken","conflicts":[…]}, or with wait => false {"ok":false,"reason":"busy"} when another transaction holds the resource. Overlapping requests serialise on hour-wide slot locks; the resource''s advisory lock integrity.lock_key(''booking'', org_id::text, resource_id::text) is taken in SHARE mode (EXCLUSIVE with wait => false), so holding it EXCLUSIVE freezes the resource. Under REPEATABLE READ/SERIALIZABLE a lost race raises 40001: retry.';
COMMENT ON FUNCTION integrity.cancel(uuid, text) IS
'Cancel a booking (soft delete; it frees its slot) and record a cancelled event. Returns {"ok":true,…} or {"ok":false,"reason":"not_found"|"already_cancelled"}.';
COMMENT ON FUNCTION integrity.reschedule(uuid, timestamptz, interval, boolean) IS
'Move a booking in one atomic step: a new booking (rescheduled_from = the old one, same contact and metadata) and the old one cancelled with reason rescheduled. new_duration defaults to the old duration. Takes the resource lock EXCLUSIVE. On conflict the old booking is untouched and {"ok":false,"reason":"slot_taken","conflicts":[…]} is returned; also not_found, already_cancelled, busy.';
COMMENT ON FUNCTION integrity.slot_available(uuid, uuid, timestamptz, interval) IS
'true when no active booking of the resource overlaps [starts_at, starts_at + duration). A hint for UIs: only integrity.book claims a slot.';
COMMENT ON FUNCTION integrity.free_slots(uuid, uuid, tstzrange, interval) IS
'The slot-sized ranges [s, s + slot), aligned to the window''s lower bound and inside the window, that overlap no active booking, in order. More than integrity.max_slots candidates is refused with 22023.';

-- The functions' statements are planned once per backend and kept. A plan
-- made while the table was empty (a fresh install, a TRUNCATE + ANALYZE)
-- would be a sequential scan kept for the connection's life, and the
-- overlap checks would slow down as the table grows. Index access is always
-- right for them, so the planner is told to avoid sequential scans here.
-- (book scans the index directly; where it falls back to SQL it sets this
-- around that statement only, rather than paying a GUC change and restore
-- on every call.)
ALTER FUNCTION integrity.cancel(uuid, text) SET enable_seqscan = off;
ALTER FUNCTION integrity.reschedule(uuid, timestamptz, interval, boolean) SET enable_seqscan = off;
ALTER FUNCTION integrity.slot_available(uuid, uuid, timestamptz, interval) SET enable_seqscan = off;
ALTER FUNCTION integrity.free_slots(uuid, uuid, tstzrange, interval) SET enable_seqscan = off;

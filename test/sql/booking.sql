-- What a user sees from the booking API: results as data, mistakes as errors
-- with SQLSTATE, message and hint.
SET client_min_messages = warning;
SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
SET IntervalStyle = 'postgres';
BEGIN;
CREATE EXTENSION integrity CASCADE;
\i test/try.psql

-- A booking, a conflicting one (data, not an exception), an adjacent one.
SELECT r - 'booking_id' AS booked
FROM integrity.book('0000000a-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000001',
                    '2026-12-01 10:00+00', '30 minutes') r;
SELECT r->>'ok' AS ok, r->>'reason' AS reason, jsonb_array_length(r->'conflicts') AS conflicts,
       r->'conflicts'->0->>'starts_at' AS held_from
FROM integrity.book('0000000a-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000001',
                    '2026-12-01 10:15+00', '30 minutes') r;
SELECT (integrity.book('0000000a-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000001',
                       '2026-12-01 10:30+00', '30 minutes'))->>'ok' AS adjacent_ok;

-- Availability.
SELECT integrity.slot_available('0000000a-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000001',
                                '2026-12-01 10:45+00', '15 minutes') AS taken_slot_available,
       integrity.slot_available('0000000a-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000001',
                                '2026-12-01 11:00+00', '15 minutes') AS free_slot_available;
SELECT s AS free_slot
FROM integrity.free_slots('0000000a-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000001',
                          tstzrange('2026-12-01 09:00+00', '2026-12-01 12:00+00'), '30 minutes') s;

-- Cancel twice, cancel nothing.
SELECT r - 'booking_id' - 'cancelled_at' AS cancelled
FROM integrity.cancel((SELECT id FROM integrity.bookings WHERE lower(during) = '2026-12-01 10:00+00'), 'sick') r;
SELECT integrity.cancel((SELECT id FROM integrity.bookings WHERE lower(during) = '2026-12-01 10:00+00'));
SELECT integrity.cancel('00000000-0000-0000-0000-0000000000ff');

-- Reschedule into a taken slot (nothing changes), then into a free one.
SELECT (integrity.book('0000000a-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000001',
                       '2026-12-01 12:00+00', '1 hour'))->>'ok' AS noon_ok;
SELECT r->>'reason' AS reason, jsonb_array_length(r->'conflicts') AS conflicts
FROM integrity.reschedule((SELECT id FROM integrity.bookings WHERE lower(during) = '2026-12-01 10:30+00'),
                          '2026-12-01 11:45+00') r;
SELECT status, lower(during) AS starts_at FROM integrity.bookings ORDER BY lower(during);
SELECT r - 'booking_id' - 'previous_booking_id' AS moved
FROM integrity.reschedule((SELECT id FROM integrity.bookings WHERE lower(during) = '2026-12-01 10:30+00'),
                          '2026-12-01 14:00+00') r;
SELECT event, details - 'new_booking_id' AS details FROM integrity.booking_events ORDER BY id;

-- Keys are stable across machines and languages.
SELECT integrity.lock_key('ab', 'c') AS ab_c, integrity.lock_key('a', 'bc') AS a_bc;
SELECT integrity.fingerprint('{"b": 2, "a": 1}') = integrity.fingerprint('{"a":1,"b":2}') AS same_json_same_fingerprint;

-- Mistakes: SQLSTATE, message naming the argument, and a hint.
\pset format unaligned
\pset tuples_only on
SELECT pg_temp.try($$SELECT integrity.book(NULL, '00000000-0000-0000-0000-000000000001', now(), '1 hour')$$);
SELECT pg_temp.try($$SELECT integrity.book('0000000a-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000001',
                      '2026-12-02 10:00+00', '-30 minutes')$$);
SELECT pg_temp.try($$SELECT integrity.book('0000000a-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000001',
                      '2026-12-02 10:00+00', '2 days')$$);
SELECT pg_temp.try($$SELECT integrity.book('0000000a-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000001',
                      'infinity', '1 hour')$$);
SELECT pg_temp.try($$SELECT integrity.book('0000000a-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000001',
                      '2026-12-02 10:00+00', '1 hour', metadata => '[1, 2]')$$);
SELECT pg_temp.try($$SELECT integrity.book('0000000a-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000001',
                      '2026-12-02 10:00+00', '1 hour', wait => NULL)$$);
SELECT pg_temp.try($$SELECT integrity.cancel(NULL)$$);
SELECT pg_temp.try($$SELECT integrity.reschedule('00000000-0000-0000-0000-0000000000ff', 'infinity')$$);
SELECT pg_temp.try($$SELECT * FROM integrity.free_slots('0000000a-0000-0000-0000-000000000000',
                      '00000000-0000-0000-0000-000000000001', tstzrange('2026-12-01', NULL), '30 minutes')$$);
SELECT pg_temp.try($$SELECT * FROM integrity.free_slots('0000000a-0000-0000-0000-000000000000',
                      '00000000-0000-0000-0000-000000000001', 'empty', '30 minutes')$$);
SELECT pg_temp.try($$SELECT * FROM integrity.free_slots('0000000a-0000-0000-0000-000000000000',
                      '00000000-0000-0000-0000-000000000001', tstzrange('2026-12-01', '2026-12-31'), '1 minute')$$);
SELECT pg_temp.try($$SELECT integrity.lock_key(VARIADIC '{}'::text[])$$);
SELECT pg_temp.try($$SELECT integrity.fingerprint(NULL)$$);
SELECT pg_temp.try($$SELECT integrity.grant_access('no_such_role')$$);
-- Writing the table directly cannot create an overlap either.
SELECT pg_temp.try($$INSERT INTO integrity.bookings (org_id, resource_id, during)
                     VALUES ('0000000a-0000-0000-0000-000000000000', '00000000-0000-0000-0000-000000000001',
                             tstzrange('2026-12-01 14:15+00', '2026-12-01 14:45+00'))$$);
\pset format aligned
\pset tuples_only off

-- Every object documents itself.
SELECT p.proname, obj_description(p.oid, 'pg_proc') IS NOT NULL AS has_comment,
       p.proconfig AS pinned
FROM pg_proc p WHERE p.pronamespace = 'integrity'::regnamespace ORDER BY 1;
SELECT c.relname, obj_description(c.oid, 'pg_class') IS NOT NULL AS has_comment
FROM pg_class c WHERE c.relnamespace = 'integrity'::regnamespace AND c.relkind IN ('r', 'v') ORDER BY 1;
SELECT t.typname, obj_description(t.oid, 'pg_type') IS NOT NULL AS has_comment
FROM pg_type t WHERE t.typnamespace = 'integrity'::regnamespace AND t.typtype = 'd' ORDER BY 1;
SELECT count(*) AS uncommented_columns
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE c.relnamespace = 'integrity'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
  AND col_description(c.oid, a.attnum) IS NULL;
ROLLBACK;

-- What a user sees from the idempotency-key API: the README's examples,
-- every outcome, and mistakes as errors with SQLSTATE, message and hint.
-- Outcomes that need another transaction (in_progress, resumed) commit, so
-- this file creates the extension outside a transaction and drops it at
-- the end.
SET client_min_messages = warning;
SET TimeZone = 'UTC';
CREATE EXTENSION integrity CASCADE;
\i test/try.psql
CREATE TABLE charges (id serial PRIMARY KEY, amount int NOT NULL);

-- Single-transaction use (README): begin, the business write, complete.
BEGIN;
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /charges',
                            'key-123', '{"amount": 100, "currency": "eur"}');
INSERT INTO charges (amount) VALUES (100);
SELECT integrity.idem_complete('0000000a-0000-0000-0000-000000000000', 'POST /charges',
                               'key-123', 201, '{"charge": "ch_1"}');
COMMIT;
-- The retry: key order and spaces don't matter.
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /charges',
                            'key-123', '{"currency": "eur", "amount": 100}');
-- The same key with another request: refused, the stored request kept.
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /charges',
                            'key-123', '{"amount": 999, "currency": "eur"}');
SELECT status, response_code, response, attempts, fingerprint = integrity.fingerprint('{"amount": 100, "currency": "eur"}') AS first_request_kept
FROM integrity.idempotency_keys WHERE key = 'key-123';
-- Another tenant, another scope: other keys.
SELECT integrity.idem_begin('0000000b-0000-0000-0000-000000000000', 'POST /charges',
                            'key-123', '{"amount": 999}') ->> 'outcome' AS other_org;
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /refunds',
                            'key-123', '{"amount": 999}') ->> 'outcome' AS other_scope;
-- A transaction that rolls back leaves nothing: the key starts afresh.
BEGIN;
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /charges',
                            'key-rolled-back', '{"amount": 1}') ->> 'outcome' AS first;
ROLLBACK;
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /charges',
                            'key-rolled-back', '{"amount": 1}') ->> 'outcome' AS after_rollback;
SELECT count(*) AS charges FROM charges;

-- Multi-transaction use (README): the key stays processing under a lease.
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /refunds',
                            'key-9', '{"charge": "ch_1"}', lease => '30 seconds');
SELECT r ->> 'outcome' AS outcome, (r ->> 'retry_after_ms')::int BETWEEN 1 AND 30000 AS retry_within_lease
FROM integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /refunds',
                          'key-9', '{"charge": "ch_1"}') r;
SELECT r - 'locked_until' AS checkpointed, (r ->> 'locked_until')::timestamptz > now() AS lease_extended
FROM integrity.idem_checkpoint('0000000a-0000-0000-0000-000000000000', 'POST /refunds',
                               'key-9', 'refund_requested') r;
SELECT integrity.idem_complete('0000000a-0000-0000-0000-000000000000', 'POST /refunds',
                               'key-9', 200, '{"refund": "re_1"}');
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /refunds',
                            'key-9', '{"charge": "ch_1"}');
-- Completing twice, or a key never begun: 55000.
SELECT pg_temp.try($$SELECT integrity.idem_complete('0000000a-0000-0000-0000-000000000000', 'POST /refunds',
                                                    'key-9', 200, '{}')$$);
SELECT pg_temp.try($$SELECT integrity.idem_complete('0000000a-0000-0000-0000-000000000000', 'POST /refunds',
                                                    'never-begun', 200, '{}')$$);
SELECT pg_temp.try($$SELECT integrity.idem_checkpoint('0000000a-0000-0000-0000-000000000000', 'POST /refunds',
                                                      'never-begun', 'step')$$);
SELECT pg_temp.try($$SELECT integrity.idem_fail('0000000a-0000-0000-0000-000000000000', 'POST /refunds',
                                                'never-begun')$$);

-- The lease runs out (here: moved into the past, as if the holder's work
-- took too long): the holder can no longer complete, and the next caller
-- resumes from the last recovery point.
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /payouts',
                            'key-5', '{"payout": 1}', lease => '30 seconds') ->> 'outcome' AS first;
SELECT integrity.idem_checkpoint('0000000a-0000-0000-0000-000000000000', 'POST /payouts',
                                 'key-5', 'transfer_created') ->> 'recovery_point' AS checkpointed;
UPDATE integrity.idempotency_keys SET locked_until = now() - interval '1 second' WHERE key = 'key-5';
SELECT pg_temp.try($$SELECT integrity.idem_complete('0000000a-0000-0000-0000-000000000000', 'POST /payouts',
                                                    'key-5', 200, '{}')$$) AS complete_after_lease;
SELECT pg_temp.try($$SELECT integrity.idem_checkpoint('0000000a-0000-0000-0000-000000000000', 'POST /payouts',
                                                      'key-5', 'late')$$) AS checkpoint_after_lease;
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /payouts',
                            'key-5', '{"payout": 1}');
SELECT integrity.idem_complete('0000000a-0000-0000-0000-000000000000', 'POST /payouts',
                               'key-5', 200, '{"payout": "po_1"}');
-- A response may be NULL (say, a 204); it is replayed as null.
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'DELETE /cards',
                            'key-204', '{"card": "c_1"}') ->> 'outcome' AS first;
SELECT integrity.idem_complete('0000000a-0000-0000-0000-000000000000', 'DELETE /cards',
                               'key-204', 204, NULL);
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'DELETE /cards',
                            'key-204', '{"card": "c_1"}');

-- Failures (README): retryable starts again, not retryable is replayed.
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /charges',
                            'key-8', '{"amount": 5}') ->> 'outcome' AS first;
SELECT integrity.idem_fail('0000000a-0000-0000-0000-000000000000', 'POST /charges', 'key-8');
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /charges',
                            'key-8', '{"amount": 5}');
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /charges',
                            'key-7', '{"amount": 5}') ->> 'outcome' AS first;
SELECT integrity.idem_fail('0000000a-0000-0000-0000-000000000000', 'POST /charges', 'key-7',
                           retryable => false, error => '{"error": "card_declined"}', response_code => 402);
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /charges',
                            'key-7', '{"amount": 5}');

-- Bad input: clear errors, never a crash.
SELECT pg_temp.try($$SELECT integrity.idem_begin(NULL, 'POST /x', 'k', '{}')$$) AS null_org;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', NULL, 'k', '{}')$$) AS null_scope;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', '', 'k', '{}')$$) AS empty_scope;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', repeat('s', 256), 'k', '{}')$$) AS scope_of_256_bytes;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', NULL, '{}')$$) AS null_key;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', '', '{}')$$) AS empty_key;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', repeat('k', 255), '{}')$$) AS key_of_255_bytes;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', repeat('k', 256), '{}')$$) AS key_of_256_bytes;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', repeat('é', 128), '{}')$$) AS key_of_256_utf8_bytes;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', 'k', NULL)$$) AS null_request;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', 'k', '{}', lease => '0')$$) AS zero_lease;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', 'k', '{}', lease => '-1 hour')$$) AS negative_lease;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', 'k', '{}', lease => NULL)$$) AS null_lease;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', 'k', '{}', ttl => '0')$$) AS zero_ttl;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', 'k', '{}', ttl => 'infinity')$$) AS infinite_ttl;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', 'k', '{}', ttl => '1000000 years')$$) AS huge_ttl;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', 'k', '{}', lease => '178000000 years')$$) AS huge_lease;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', 'k-long', '{}', ttl => '1000 years')$$) AS ttl_of_1000_years;
SELECT pg_temp.try($$SELECT integrity.idem_checkpoint('0000000a-0000-0000-0000-000000000000', 'POST /x', 'k', NULL)$$) AS null_recovery_point;
SELECT pg_temp.try($$SELECT integrity.idem_complete('0000000a-0000-0000-0000-000000000000', 'POST /x', 'k', NULL, '{}')$$) AS null_response_code;
SELECT pg_temp.try($$SELECT integrity.idem_fail('0000000a-0000-0000-0000-000000000000', 'POST /x', 'k', NULL)$$) AS null_retryable;
SELECT pg_temp.try($$SELECT integrity.purge_idempotency_keys('-1 day')$$) AS negative_older_than;
SELECT pg_temp.try($$SELECT integrity.purge_idempotency_keys('9000 years')$$) AS older_than_before_4713_bc;
SELECT pg_temp.try($$SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /x', 'k', 'not json')$$) AS malformed_request;

-- Expiry: purge removes keys past expires_at, and an expired key is used afresh.
UPDATE integrity.idempotency_keys SET expires_at = now() - interval '2 days' WHERE key = 'key-7';
SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /charges',
                            'key-7', '{"amount": 6}') ->> 'outcome' AS expired_key_begun_afresh;
UPDATE integrity.idempotency_keys SET expires_at = now() - interval '2 days' WHERE key = 'key-8';
SELECT integrity.purge_idempotency_keys(older_than => '3 days') AS purged_older_than_3_days;
SELECT integrity.purge_idempotency_keys() AS purged;
SELECT count(*) FILTER (WHERE key = 'key-8') AS key_8_left, count(*) AS keys_left FROM integrity.idempotency_keys;

DROP TABLE charges;
DROP EXTENSION integrity CASCADE;

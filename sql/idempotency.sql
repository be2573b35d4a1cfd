-- Idempotency keys: a request retried with the same key has its effect once.

-- status as a domain, not a table CHECK: Postgres caches a domain's checks
-- for the session, while a table CHECK is re-read and re-planned on every
-- single-row INSERT and UPDATE (as booking_status does for bookings).
CREATE DOMAIN integrity.idempotency_status AS text
    CONSTRAINT idempotency_status_check CHECK (VALUE IN ('processing', 'completed', 'failed'));
COMMENT ON DOMAIN integrity.idempotency_status IS
'Status of an idempotency key: processing (work under way), completed (response stored) or failed.';

CREATE TABLE integrity.idempotency_keys (
    org_id          uuid        NOT NULL,
    scope           text        COLLATE "C" NOT NULL,
    key             text        COLLATE "C" NOT NULL,
    fingerprint     text        NOT NULL,
    status          integrity.idempotency_status NOT NULL DEFAULT 'processing',
    retryable       boolean,
    response_code   integer,
    response        jsonb,
    recovery_point  text,
    lease           interval    NOT NULL,
    locked_until    timestamptz,
    attempts        integer     NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    completed_at    timestamptz,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (key, scope, org_id)
) WITH (fillfactor = 85);
-- The primary key is (org_id, scope, key) as a set, its columns ordered
-- key first: keys are nearly all distinct, so nearly every comparison in
-- a probe or an insert is settled by the first column, where with org_id
-- first (one value for most of an org's keys) each one compared all
-- three. A wrapped request ran 6.4 % fewer instructions for it
-- (bash scripts/bench.sh instructions).
-- fillfactor 85: a key begun and settled in one transaction is written
-- once, settled; one still open at commit is written as processing and
-- updated later (idem_checkpoint, idem_complete, idem_fail, a resume);
-- room left on the page lets those updates be HOT updates (no new index
-- entries).
-- Keys are opaque byte strings: COLLATE "C" compares them byte by byte,
-- which is what equality means for them and far cheaper than a
-- linguistic collation in every primary-key probe.
-- BRIN, not btree: expires_at grows with insertion order, purge reads
-- whole ranges of old keys, and a BRIN entry costs almost nothing on
-- the idem_begin insert that every request pays.
-- pages_per_range is stated because purge_idempotency_keys forgets the
-- summary of each 128-page range it deleted from (see PURGE in
-- src/idempotency.rs): space freed by a purge is reused by new keys, whose
-- expires_at would otherwise widen the old ranges' summaries for good.
CREATE INDEX idempotency_keys_expires_idx ON integrity.idempotency_keys
    USING brin (expires_at) WITH (autosummarize = on, pages_per_range = 128);

COMMENT ON TABLE integrity.idempotency_keys IS
'One row per (org_id, scope, key): the request''s fingerprint, whether its work is processing (under a lease), completed or failed, and the response replayed to retries. Written through integrity.idem_begin / idem_checkpoint / idem_complete / idem_fail; purged by integrity.purge_idempotency_keys.';
COMMENT ON COLUMN integrity.idempotency_keys.org_id IS 'Tenant. The same key under two org_ids is two keys.';
COMMENT ON COLUMN integrity.idempotency_keys.scope IS 'What the key is for, e.g. the endpoint (''POST /charges''). Keys are unique per (org_id, scope).';
COMMENT ON COLUMN integrity.idempotency_keys.key IS 'The client''s idempotency key (1 to 255 bytes).';
COMMENT ON COLUMN integrity.idempotency_keys.fingerprint IS 'integrity.fingerprint(request) of the request that first used the key; a different request under the key is a mismatch.';
COMMENT ON COLUMN integrity.idempotency_keys.status IS 'processing (work under way, see locked_until), completed (response stored), or failed.';
COMMENT ON COLUMN integrity.idempotency_keys.retryable IS 'For failed keys: true lets the next idem_begin start again; false makes the stored failure the replayed answer.';
COMMENT ON COLUMN integrity.idempotency_keys.response_code IS 'Status code stored by idem_complete (or idem_fail), replayed to retries.';
COMMENT ON COLUMN integrity.idempotency_keys.response IS 'Response body stored by idem_complete (or the error of idem_fail), replayed to retries.';
COMMENT ON COLUMN integrity.idempotency_keys.recovery_point IS 'Last step recorded by idem_checkpoint; handed to whoever resumes after the lease ran out.';
COMMENT ON COLUMN integrity.idempotency_keys.lease IS 'How long a holder may work before others may resume; idem_checkpoint extends locked_until by it.';
COMMENT ON COLUMN integrity.idempotency_keys.locked_until IS 'End of the current holder''s lease (processing only).';
COMMENT ON COLUMN integrity.idempotency_keys.attempts IS 'How many times work on the key was started (1 + resumes + retries after retryable failures).';
COMMENT ON COLUMN integrity.idempotency_keys.created_at IS 'When the key was first used (or reused after expiring).';
COMMENT ON COLUMN integrity.idempotency_keys.completed_at IS 'When it was completed or failed.';
COMMENT ON COLUMN integrity.idempotency_keys.expires_at IS 'After this the key is forgotten: idem_begin starts afresh and purge_idempotency_keys removes it.';
COMMENT ON INDEX integrity.idempotency_keys_expires_idx IS 'Finds expired keys for purge_idempotency_keys.';

ALTER TABLE integrity.idempotency_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY idempotency_keys_org_scope ON integrity.idempotency_keys
    USING ((SELECT integrity.current_org()) IS NULL OR org_id = (SELECT integrity.current_org()));
COMMENT ON POLICY idempotency_keys_org_scope ON integrity.idempotency_keys IS
'Rows of the tenant in integrity.org_id only, when that GUC is set.';

SELECT pg_catalog.pg_extension_config_dump('integrity.idempotency_keys', '');

-- The delivery log: webhooks in and out, and jobs, with leases, retries,
-- ordering keys and a dead-letter queue.

CREATE TYPE integrity.delivery_status AS ENUM
    ('pending', 'processing', 'completed', 'failed', 'dead_letter');
COMMENT ON TYPE integrity.delivery_status IS
'pending: never tried (or requeued); processing: handed to a worker under a lease; completed; failed: waiting for its retry at next_attempt_at; dead_letter: out of attempts.';

CREATE SEQUENCE integrity.deliveries_queue_position_seq;
COMMENT ON SEQUENCE integrity.deliveries_queue_position_seq IS
'Places in the line of an ordering key: taken at enqueue, and again when a dead letter is brought back.';

CREATE TABLE integrity.deliveries (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id           uuid        NOT NULL,
    job_id           text        NOT NULL,
    event_type       text        NOT NULL,
    payload          jsonb       NOT NULL,
    status           integrity.delivery_status NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 5,
    priority         integer     NOT NULL DEFAULT 0,
    ordering_key     text,
    queue_position   bigint      NOT NULL DEFAULT pg_catalog.nextval('integrity.deliveries_queue_position_seq'),
    next_attempt_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    locked_until     timestamptz,
    worker           text,
    lease_token      uuid,
    review_on_dead_letter boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_attempt_at  timestamptz,
    completed_at     timestamptz,
    dead_at          timestamptz,
    processing_ms    double precision,
    last_error       text,
    CONSTRAINT deliveries_job_key UNIQUE (org_id, job_id),
    CONSTRAINT deliveries_attempts_check CHECK (attempts >= 0 AND max_attempts >= 1)
) WITH (fillfactor = 80);
-- fillfactor 80: a delivery is updated at each claim, completion and
-- failure; room on the page keeps those updates HOT.

-- Due work, in claim order: what claim scans.
CREATE INDEX deliveries_due_idx ON integrity.deliveries (priority DESC, id)
    WHERE status IN ('pending', 'failed');
-- Leases, to rescue the expired ones.
CREATE INDEX deliveries_lease_idx ON integrity.deliveries (locked_until)
    WHERE status = 'processing';
-- The unfinished deliveries of each ordering key, in enqueue order: the
-- first one is the only one of its key that may be claimed.
-- Places are taken under the key's lock, so a key's line is in commit
-- order, and a dead letter brought back joins the end of it: the first of
-- the line changes only when it finishes, whatever snapshot a claim reads.
CREATE INDEX deliveries_ordering_idx ON integrity.deliveries (org_id, ordering_key, queue_position)
    WHERE ordering_key IS NOT NULL AND status NOT IN ('completed', 'dead_letter');
-- Finished rows by age, for purge_deliveries and stats.
CREATE INDEX deliveries_created_idx ON integrity.deliveries USING brin (created_at);

COMMENT ON TABLE integrity.deliveries IS
'The delivery log: one row per webhook or job (unique per org_id, job_id), written in the caller''s transaction by integrity.enqueue and worked by claim / complete / fail with leases, retries with backoff, ordering keys and a dead-letter queue.';
COMMENT ON COLUMN integrity.deliveries.id IS 'Delivery id, in enqueue order.';
COMMENT ON COLUMN integrity.deliveries.org_id IS 'Tenant.';
COMMENT ON COLUMN integrity.deliveries.job_id IS 'The caller''s id for the work (a provider''s webhook id): a second enqueue of it is a duplicate.';
COMMENT ON COLUMN integrity.deliveries.event_type IS 'What kind of delivery (e.g. invoice.paid); claim can filter on it; retry schedules are per event type.';
COMMENT ON COLUMN integrity.deliveries.payload IS 'The work to do, as jsonb.';
COMMENT ON COLUMN integrity.deliveries.status IS 'pending, processing, completed, failed (waiting for a retry) or dead_letter.';
COMMENT ON COLUMN integrity.deliveries.attempts IS 'Hand-outs so far: each claim adds one, so a lease that ran out used its attempt.';
COMMENT ON COLUMN integrity.deliveries.max_attempts IS 'Hand-outs allowed; after the last one fails (or its lease runs out) the delivery is dead-lettered.';
COMMENT ON COLUMN integrity.deliveries.priority IS 'Higher first, then older first (within an ordering key, enqueue order wins).';
COMMENT ON COLUMN integrity.deliveries.ordering_key IS 'Deliveries of one (org_id, ordering_key) are claimed one at a time, in enqueue order; NULL: unordered.';
COMMENT ON COLUMN integrity.deliveries.queue_position IS 'Place in its ordering key''s line: taken at enqueue, taken again (at the end) when a dead letter is requeued or redriven.';
COMMENT ON COLUMN integrity.deliveries.next_attempt_at IS 'When it is due (pending or failed).';
COMMENT ON COLUMN integrity.deliveries.locked_until IS 'End of the current lease (processing).';
COMMENT ON COLUMN integrity.deliveries.worker IS 'The worker that claimed it last.';
COMMENT ON COLUMN integrity.deliveries.lease_token IS 'Fresh for each claim: complete and fail with it refuse to settle a lease lost to another worker.';
COMMENT ON COLUMN integrity.deliveries.review_on_dead_letter IS 'Whether dead-lettering it adds an item to integrity.review_queue.';
COMMENT ON COLUMN integrity.deliveries.created_at IS 'When it was enqueued.';
COMMENT ON COLUMN integrity.deliveries.last_attempt_at IS 'When it was last claimed.';
COMMENT ON COLUMN integrity.deliveries.completed_at IS 'When it was completed.';
COMMENT ON COLUMN integrity.deliveries.dead_at IS 'When it was dead-lettered.';
COMMENT ON COLUMN integrity.deliveries.processing_ms IS 'Milliseconds from its last claim to its completion.';
COMMENT ON COLUMN integrity.deliveries.last_error IS 'The error of its last failed attempt (or "lease expired").';
COMMENT ON INDEX integrity.deliveries_due_idx IS 'Due work in claim order (priority, then age).';
COMMENT ON INDEX integrity.deliveries_lease_idx IS 'Leases by expiry, to rescue deliveries whose worker died.';
COMMENT ON INDEX integrity.deliveries_ordering_idx IS 'Unfinished deliveries per ordering key in line order (enqueue order; a requeued dead letter at the end); the first is the only claimable one.';
COMMENT ON INDEX integrity.deliveries_created_idx IS 'Deliveries by age, for purging and statistics.';

ALTER TABLE integrity.deliveries ENABLE ROW LEVEL SECURITY;
CREATE POLICY deliveries_org_scope ON integrity.deliveries
    USING ((SELECT integrity.current_org()) IS NULL OR org_id = (SELECT integrity.current_org()));
COMMENT ON POLICY deliveries_org_scope ON integrity.deliveries IS
'Rows of the tenant in integrity.org_id only, when that GUC is set.';
SELECT pg_catalog.pg_extension_config_dump('integrity.deliveries', '');

CREATE TABLE integrity.retry_schedules (
    event_type  text        PRIMARY KEY,
    schedule    interval[]  NOT NULL CONSTRAINT retry_schedules_not_empty CHECK (pg_catalog.cardinality(schedule) > 0),
    updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE integrity.retry_schedules IS
'Per event type, the wait before each retry: the n-th failed attempt waits schedule[n] (the last entry for later ones). Without one, exponential backoff with full jitter (integrity.retry_base, integrity.retry_cap). Set with integrity.set_retry_schedule.';
COMMENT ON COLUMN integrity.retry_schedules.event_type IS 'The event type.';
COMMENT ON COLUMN integrity.retry_schedules.schedule IS 'Waits before retry 1, 2, …; the last is reused.';
COMMENT ON COLUMN integrity.retry_schedules.updated_at IS 'When it was last set.';
SELECT pg_catalog.pg_extension_config_dump('integrity.retry_schedules', '');

CREATE VIEW integrity.queue_health WITH (security_invoker = true) AS
SELECT pg_catalog.count(*) FILTER (WHERE d.status = 'pending')     AS pending,
       pg_catalog.count(*) FILTER (WHERE d.status = 'processing')  AS processing,
       pg_catalog.count(*) FILTER (WHERE d.status = 'failed')      AS failed,
       pg_catalog.count(*) FILTER (WHERE d.status = 'dead_letter') AS dead_letter,
       pg_catalog.count(*) FILTER (WHERE d.status = 'completed')   AS completed,
       pg_catalog.count(*) FILTER (WHERE d.status IN ('pending', 'failed')
                                     AND d.next_attempt_at <= pg_catalog.now()) AS due_now,
       pg_catalog.count(*) FILTER (WHERE d.status = 'processing'
                                     AND d.locked_until < pg_catalog.now()) AS expired_leases,
       pg_catalog.now() - pg_catalog.min(d.created_at) FILTER (WHERE d.status = 'pending')
                                                                    AS oldest_pending_age,
       pg_catalog.now() - pg_catalog.min(d.next_attempt_at)
           FILTER (WHERE d.status IN ('pending', 'failed') AND d.next_attempt_at <= pg_catalog.now())
                                                                    AS oldest_due_age
  FROM integrity.deliveries d;
COMMENT ON VIEW integrity.queue_health IS
'The queue at a glance: deliveries per status, how many are due now, expired leases (workers that died), the age of the oldest pending delivery and how long the oldest due one has waited.';

CREATE VIEW integrity.dead_letters WITH (security_invoker = true) AS
SELECT d.id, d.org_id, d.job_id, d.event_type, d.attempts, d.max_attempts, d.last_error,
       d.created_at, d.last_attempt_at, d.dead_at, d.ordering_key, d.payload
  FROM integrity.deliveries d
 WHERE d.status = 'dead_letter';
COMMENT ON VIEW integrity.dead_letters IS
'Deliveries that ran out of attempts, with their last error. Bring them back with integrity.requeue(id) or integrity.redrive().';

CREATE FUNCTION integrity.delivery_stats(range interval DEFAULT '24 hours')
RETURNS TABLE (event_type text, total bigint, completed bigint, failed bigint, dead_letter bigint,
               success_rate numeric, p50_ms double precision, p95_ms double precision,
               p99_ms double precision, avg_attempts numeric)
-- PL/pgSQL so that `range` is checked even when no delivery is read.
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
range := integrity.report_period('integrity.delivery_stats', 'range', range, interval '24 hours');
RETURN QUERY
SELECT d.event_type,
       count(*),
       count(*) FILTER (WHERE d.status = 'completed'),
       count(*) FILTER (WHERE d.status = 'failed'),
       count(*) FILTER (WHERE d.status = 'dead_letter'),
       round(count(*) FILTER (WHERE d.status = 'completed')::numeric
             / NULLIF(count(*) FILTER (WHERE d.status IN ('completed', 'dead_letter')), 0), 4),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY d.processing_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY d.processing_ms),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY d.processing_ms),
       round(avg(d.attempts), 2)
  FROM integrity.deliveries d
 WHERE d.created_at >= now() - range
 GROUP BY d.event_type
 ORDER BY d.event_type;
END
$$;
COMMENT ON FUNCTION integrity.delivery_stats(interval) IS
'Per event type, over deliveries enqueued within range: totals per status, success rate (completed / (completed + dead_letter)), p50/p95/p99 processing ms of completed ones (claim to completion), and average attempts.';

CREATE FUNCTION integrity.recent_failures(lim integer DEFAULT 20)
RETURNS TABLE (id bigint, org_id uuid, job_id text, event_type text, status integrity.delivery_status,
               attempts integer, max_attempts integer, last_error text, last_attempt_at timestamptz,
               next_attempt_at timestamptz)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- NULL is the default, as the reports' NULL range is theirs.
    lim := coalesce(lim, 20);
    IF lim < 0 THEN
        RAISE EXCEPTION 'integrity.recent_failures: lim must not be negative, got %', lim
            USING ERRCODE = '22023',
                  HINT = 'Pass how many failures to list, such as 20 (the default when left out).';
    END IF;
    RETURN QUERY
    SELECT d.id, d.org_id, d.job_id, d.event_type, d.status, d.attempts, d.max_attempts, d.last_error,
           d.last_attempt_at, CASE WHEN d.status = 'failed' THEN d.next_attempt_at END
      FROM integrity.deliveries d
     WHERE d.last_error IS NOT NULL AND d.status IN ('failed', 'dead_letter', 'pending', 'processing')
     ORDER BY d.last_attempt_at DESC NULLS LAST
     LIMIT lim;
END
$$;
COMMENT ON FUNCTION integrity.recent_failures(integer) IS
'The lim most recently failed deliveries that are not completed (waiting for a retry, dead-lettered, or retrying now), newest first, with their last error.';

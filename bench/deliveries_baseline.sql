-- The plain-SQL queue for bench/deliveries.rs: what a team writes by hand,
-- written well. A table with the same columns as integrity.deliveries'
-- essentials, deduped by (org_id, job_id), a partial index of due work,
-- and PL/pgSQL functions: claim with FOR UPDATE SKIP LOCKED and a lease,
-- complete. (It leaves out what integrity adds: rescuing expired leases
-- in claim, lease tokens, ordering keys, NOTIFY, retries and dead letters.)

CREATE TABLE plain_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id uuid NOT NULL,
    job_id text NOT NULL,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    attempts int NOT NULL DEFAULT 0,
    max_attempts int NOT NULL DEFAULT 5,
    priority int NOT NULL DEFAULT 0,
    run_at timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    worker text,
    created_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    last_error text,
    UNIQUE (org_id, job_id)
);
CREATE INDEX plain_jobs_due ON plain_jobs (priority DESC, id) WHERE status = 'pending';

CREATE FUNCTION plain_enqueue(org uuid, job text, etype text, p jsonb) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE i bigint;
BEGIN
  INSERT INTO plain_jobs (org_id, job_id, event_type, payload) VALUES (org, job, etype, p)
  ON CONFLICT (org_id, job_id) DO NOTHING RETURNING id INTO i;
  RETURN i;
END $$;

CREATE FUNCTION plain_claim(w text, n int, lease interval) RETURNS SETOF plain_jobs
LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY
  UPDATE plain_jobs j
     SET status = 'processing', attempts = j.attempts + 1, locked_until = now() + lease, worker = w
    FROM (SELECT id FROM plain_jobs WHERE status = 'pending' AND run_at <= now()
           ORDER BY priority DESC, id LIMIT n FOR UPDATE SKIP LOCKED) c
   WHERE j.id = c.id
  RETURNING j.*;
END $$;

CREATE FUNCTION plain_complete(i bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  UPDATE plain_jobs SET status = 'completed', completed_at = now(), locked_until = NULL
   WHERE id = i AND status = 'processing';
  RETURN FOUND;
END $$;

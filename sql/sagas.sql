-- Sagas: work that spans several systems, with the compensation of each
-- step done recorded in the same transaction as the step's own write.

CREATE TABLE integrity.sagas (
    id            uuid        PRIMARY KEY,
    org_id        uuid        NOT NULL,
    kind          text        NOT NULL,
    payload       jsonb       NOT NULL DEFAULT '{}',
    status        text        NOT NULL DEFAULT 'running'
                  CONSTRAINT sagas_status_check
                  CHECK (status IN ('running', 'completed', 'compensating', 'compensated')),
    steps         integer     NOT NULL DEFAULT 0,
    abort_reason  text,
    stuck_after   timestamptz NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    finished_at   timestamptz
);
CREATE INDEX sagas_open_idx ON integrity.sagas (stuck_after) WHERE status IN ('running', 'compensating');
COMMENT ON TABLE integrity.sagas IS
'One row per saga: begun by integrity.saga_begin, running until saga_complete, or aborted by saga_abort and compensating until every compensation is confirmed by saga_compensated.';
COMMENT ON COLUMN integrity.sagas.id IS 'Saga id (returned by saga_begin).';
COMMENT ON COLUMN integrity.sagas.org_id IS 'Tenant.';
COMMENT ON COLUMN integrity.sagas.kind IS 'What the saga does (e.g. checkout).';
COMMENT ON COLUMN integrity.sagas.payload IS 'What it was begun with.';
COMMENT ON COLUMN integrity.sagas.status IS 'running, completed, compensating (aborted, compensations pending) or compensated.';
COMMENT ON COLUMN integrity.sagas.steps IS 'Steps recorded.';
COMMENT ON COLUMN integrity.sagas.abort_reason IS 'Why it was aborted.';
COMMENT ON COLUMN integrity.sagas.stuck_after IS 'When a saga still running counts as stuck (saga_begin''s stuck_after from its start).';
COMMENT ON COLUMN integrity.sagas.started_at IS 'When it was begun.';
COMMENT ON COLUMN integrity.sagas.updated_at IS 'When it last changed.';
COMMENT ON COLUMN integrity.sagas.finished_at IS 'When it was completed, or its last compensation confirmed.';
COMMENT ON INDEX integrity.sagas_open_idx IS 'Sagas not finished, by when they count as stuck (for integrity.stuck_sagas).';

CREATE TABLE integrity.saga_steps (
    saga_id         uuid        NOT NULL REFERENCES integrity.sagas (id) ON DELETE CASCADE,
    seq             integer     NOT NULL,
    org_id          uuid        NOT NULL,
    step            text        NOT NULL,
    compensation    jsonb,
    done_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
    compensated_at  timestamptz,
    PRIMARY KEY (saga_id, seq),
    CONSTRAINT saga_steps_step_key UNIQUE (saga_id, step)
);
COMMENT ON TABLE integrity.saga_steps IS
'The steps of a saga that took effect, in order, each with what undoes it. Written by integrity.saga_step; saga_abort hands out the compensations in reverse order; saga_compensated confirms each.';
COMMENT ON COLUMN integrity.saga_steps.saga_id IS 'The saga.';
COMMENT ON COLUMN integrity.saga_steps.seq IS 'Order of the step in its saga, from 1.';
COMMENT ON COLUMN integrity.saga_steps.org_id IS 'Tenant (the saga''s).';
COMMENT ON COLUMN integrity.saga_steps.step IS 'Name of the step, unique in its saga.';
COMMENT ON COLUMN integrity.saga_steps.compensation IS 'What undoes the step, as jsonb for the compensating worker; NULL: nothing to undo.';
COMMENT ON COLUMN integrity.saga_steps.done_at IS 'When the step was recorded.';
COMMENT ON COLUMN integrity.saga_steps.compensated_at IS 'When its compensation was confirmed.';
COMMENT ON CONSTRAINT saga_steps_step_key ON integrity.saga_steps IS 'A step is recorded once per saga.';

CREATE VIEW integrity.stuck_sagas WITH (security_invoker = true) AS
SELECT s.id, s.org_id, s.kind, s.status, s.steps,
       (SELECT pg_catalog.count(*) FROM integrity.saga_steps t
         WHERE t.saga_id = s.id AND t.compensation IS NOT NULL AND t.compensated_at IS NULL)::integer
           AS pending_compensations,
       CASE s.status WHEN 'running' THEN 'running_too_long' ELSE 'compensations_pending' END AS reason,
       s.abort_reason, s.started_at, s.updated_at, pg_catalog.now() - s.started_at AS age
  FROM integrity.sagas s
 WHERE (s.status = 'running' AND s.stuck_after < pg_catalog.now())
    OR s.status = 'compensating';
COMMENT ON VIEW integrity.stuck_sagas IS
'Sagas that need attention: still running past their stuck_after, or aborted with compensations not yet confirmed.';

ALTER TABLE integrity.sagas ENABLE ROW LEVEL SECURITY;
CREATE POLICY sagas_org_scope ON integrity.sagas
    USING ((SELECT integrity.current_org()) IS NULL OR org_id = (SELECT integrity.current_org()));
COMMENT ON POLICY sagas_org_scope ON integrity.sagas IS
'Rows of the tenant in integrity.org_id only, when that GUC is set.';
SELECT pg_catalog.pg_extension_config_dump('integrity.sagas', '');
ALTER TABLE integrity.saga_steps ENABLE ROW LEVEL SECURITY;
CREATE POLICY saga_steps_org_scope ON integrity.saga_steps
    USING ((SELECT integrity.current_org()) IS NULL OR org_id = (SELECT integrity.current_org()));
COMMENT ON POLICY saga_steps_org_scope ON integrity.saga_steps IS
'Rows of the tenant in integrity.org_id only, when that GUC is set.';
SELECT pg_catalog.pg_extension_config_dump('integrity.saga_steps', '');

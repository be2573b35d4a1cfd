-- The manual review queue: what needs a person, taken one reviewer at a time.

CREATE TYPE integrity.review_status AS ENUM ('pending', 'in_review', 'resolved', 'dismissed');
COMMENT ON TYPE integrity.review_status IS
'pending: waiting for a reviewer; in_review: taken by one; resolved or dismissed: done.';

CREATE TABLE integrity.review_queue (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id        uuid        NOT NULL,
    subject_type  text        NOT NULL,
    subject_id    text        NOT NULL,
    reason        text        NOT NULL,
    payload       jsonb       NOT NULL DEFAULT '{}',
    priority      integer     NOT NULL DEFAULT 0,
    status        integrity.review_status NOT NULL DEFAULT 'pending',
    assigned_to   text,
    occurrences   integer     NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    taken_at      timestamptz,
    resolved_at   timestamptz,
    resolution    text
);
-- One open item per subject and reason.
CREATE UNIQUE INDEX review_queue_open_idx ON integrity.review_queue (org_id, subject_type, subject_id, reason)
    WHERE status IN ('pending', 'in_review');
CREATE INDEX review_queue_pending_idx ON integrity.review_queue (priority DESC, id)
    WHERE status = 'pending';

COMMENT ON TABLE integrity.review_queue IS
'Items that need a person (a dead-lettered delivery, a record that cannot be fixed automatically): added by integrity.review_enqueue, taken by integrity.review_take, closed by integrity.review_resolve. One open item per subject and reason.';
COMMENT ON COLUMN integrity.review_queue.id IS 'Item id.';
COMMENT ON COLUMN integrity.review_queue.org_id IS 'Tenant.';
COMMENT ON COLUMN integrity.review_queue.subject_type IS 'What kind of thing to review (e.g. delivery, call).';
COMMENT ON COLUMN integrity.review_queue.subject_id IS 'Which one, as text.';
COMMENT ON COLUMN integrity.review_queue.reason IS 'Why it needs review (e.g. dead_letter).';
COMMENT ON COLUMN integrity.review_queue.payload IS 'What the reviewer needs to know, as jsonb.';
COMMENT ON COLUMN integrity.review_queue.priority IS 'Higher first, then older first.';
COMMENT ON COLUMN integrity.review_queue.status IS 'pending, in_review, resolved or dismissed.';
COMMENT ON COLUMN integrity.review_queue.assigned_to IS 'The reviewer who took it.';
COMMENT ON COLUMN integrity.review_queue.occurrences IS 'How many times it was enqueued while open (duplicates fold into one item).';
COMMENT ON COLUMN integrity.review_queue.created_at IS 'When it was enqueued.';
COMMENT ON COLUMN integrity.review_queue.taken_at IS 'When a reviewer took it.';
COMMENT ON COLUMN integrity.review_queue.resolved_at IS 'When it was resolved or dismissed.';
COMMENT ON COLUMN integrity.review_queue.resolution IS 'What the reviewer decided.';
COMMENT ON INDEX integrity.review_queue_open_idx IS 'At most one open item per subject and reason.';
COMMENT ON INDEX integrity.review_queue_pending_idx IS 'Pending items in the order reviewers take them.';

ALTER TABLE integrity.review_queue ENABLE ROW LEVEL SECURITY;
CREATE POLICY review_queue_org_scope ON integrity.review_queue
    USING ((SELECT integrity.current_org()) IS NULL OR org_id = (SELECT integrity.current_org()));
COMMENT ON POLICY review_queue_org_scope ON integrity.review_queue IS
'Rows of the tenant in integrity.org_id only, when that GUC is set.';
SELECT pg_catalog.pg_extension_config_dump('integrity.review_queue', '');

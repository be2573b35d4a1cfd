-- Alerts: what checks find and what trigger functions correct.

CREATE DOMAIN integrity.severity AS text
    CONSTRAINT severity_check CHECK (VALUE IN ('info', 'warning', 'critical'));
COMMENT ON DOMAIN integrity.severity IS
'How much an alert matters: info, warning or critical.';

CREATE TABLE integrity.alerts (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id          uuid,
    check_name      text        NOT NULL,
    severity        integrity.severity NOT NULL DEFAULT 'warning',
    subject         text        NOT NULL,
    details         jsonb       NOT NULL DEFAULT '{}',
    auto_corrected  boolean     NOT NULL DEFAULT false,
    detected_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    last_seen_at    timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    alerted_at      timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    occurrences     integer     NOT NULL DEFAULT 1,
    resolved_at     timestamptz,
    resolution      text
);
-- One open alert per (check, subject); corrections are inserted resolved.
CREATE UNIQUE INDEX alerts_open_idx ON integrity.alerts (check_name, subject) WHERE resolved_at IS NULL;
CREATE INDEX alerts_detected_idx ON integrity.alerts USING brin (detected_at);

COMMENT ON TABLE integrity.alerts IS
'One row per problem found: by a consistency check (open until resolved), or corrected by an integrity trigger function (auto_corrected, resolved at once). details says what, as jsonb.';
COMMENT ON COLUMN integrity.alerts.id IS 'Alert id.';
COMMENT ON COLUMN integrity.alerts.org_id IS 'Tenant, when the subject belongs to one.';
COMMENT ON COLUMN integrity.alerts.check_name IS 'The check that found it, or the trigger function that corrected it (e.g. tg_implies).';
COMMENT ON COLUMN integrity.alerts.severity IS 'info, warning or critical.';
COMMENT ON COLUMN integrity.alerts.subject IS 'What it is about, e.g. public.calls(id)=(42).';
COMMENT ON COLUMN integrity.alerts.details IS 'For a correction: table, trigger, key (primary key columns and values, as text), column, before, after (as text; null for NULL).';
COMMENT ON COLUMN integrity.alerts.auto_corrected IS 'true when integrity corrected the data itself.';
COMMENT ON COLUMN integrity.alerts.detected_at IS 'When it was first found.';
COMMENT ON COLUMN integrity.alerts.last_seen_at IS 'When it was last found again (checks bump this instead of alerting twice).';
COMMENT ON COLUMN integrity.alerts.alerted_at IS 'When it was last raised: when found, and again when found after the check''s throttle has passed.';
COMMENT ON COLUMN integrity.alerts.occurrences IS 'How many times it was found.';
COMMENT ON COLUMN integrity.alerts.resolved_at IS 'When it was resolved (at once for an automatic correction); NULL while open.';
COMMENT ON COLUMN integrity.alerts.resolution IS 'How it was resolved (auto-corrected, a note, no longer found).';
COMMENT ON INDEX integrity.alerts_open_idx IS 'At most one open alert per check and subject; finds it.';
COMMENT ON INDEX integrity.alerts_detected_idx IS 'Alerts by time, for reports.';

-- Tenant sessions see and resolve their own alerts; anyone who may insert
-- may log one (a trigger correction is logged by whoever wrote the row).
ALTER TABLE integrity.alerts ENABLE ROW LEVEL SECURITY;
CREATE POLICY alerts_org_scope ON integrity.alerts
    USING ((SELECT integrity.current_org()) IS NULL OR org_id = (SELECT integrity.current_org()));
CREATE POLICY alerts_insert ON integrity.alerts FOR INSERT WITH CHECK (true);
COMMENT ON POLICY alerts_org_scope ON integrity.alerts IS
'Rows of the tenant in integrity.org_id only, when that GUC is set.';
COMMENT ON POLICY alerts_insert ON integrity.alerts IS
'Inserting is not scoped: a trigger correction is logged under the session that made the write.';

SELECT pg_catalog.pg_extension_config_dump('integrity.alerts', '');

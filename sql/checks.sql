-- Consistency checks: registered queries that find what is wrong, run by
-- integrity.run_checks() (from pg_cron or any scheduler), their runs, and
-- the views and report over them and integrity.alerts.

CREATE TABLE integrity.checks (
    name              text        PRIMARY KEY CONSTRAINT checks_name_check CHECK (name <> ''),
    description       text,
    severity          integrity.severity NOT NULL DEFAULT 'warning',
    query             text        NOT NULL,
    fix               text,
    auto_fix          boolean     NOT NULL DEFAULT false,
    checked           text,
    throttle          interval    NOT NULL DEFAULT '5 minutes'
                      CONSTRAINT checks_throttle_check CHECK (throttle >= '0'),
    enabled           boolean     NOT NULL DEFAULT true,
    incremental       boolean     NOT NULL DEFAULT false,
    search_path       text        NOT NULL,
    builtin           boolean     NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    last_run_at       timestamptz,
    last_success_at   timestamptz,
    last_violations   integer,
    last_duration_ms  double precision,
    last_error        text,
    last_sqlstate     text,
    CONSTRAINT checks_auto_fix_check CHECK (NOT auto_fix OR fix IS NOT NULL)
);

COMMENT ON TABLE integrity.checks IS
'Consistency checks: each a query returning (subject text, details jsonb), one row per violation. Register with integrity.add_check, run with integrity.run_checks.';
COMMENT ON COLUMN integrity.checks.name IS 'Check name, unique.';
COMMENT ON COLUMN integrity.checks.description IS 'What the check looks for, for people.';
COMMENT ON COLUMN integrity.checks.severity IS 'Severity of its alerts: info, warning or critical.';
COMMENT ON COLUMN integrity.checks.query IS 'SELECT returning (subject text, details jsonb) per violation; may use $1, the start of the last successful run (-infinity before the first).';
COMMENT ON COLUMN integrity.checks.fix IS 'Statement run for one violation: $1 = its subject (text), $2 = its details (jsonb). Runs only when auto_fix is on.';
COMMENT ON COLUMN integrity.checks.auto_fix IS 'Whether run_checks runs fix for each violation (the alert is then recorded as auto-corrected).';
COMMENT ON COLUMN integrity.checks.checked IS 'Optional query returning one bigint: how many subjects the run looked at (same $1); the denominator of the consistency rate.';
COMMENT ON COLUMN integrity.checks.throttle IS 'A subject already alerted within this interval is not alerted again; its open alert is bumped instead.';
COMMENT ON COLUMN integrity.checks.enabled IS 'Disabled checks are skipped by run_checks.';
COMMENT ON COLUMN integrity.checks.incremental IS 'true when the query uses $1: it sees only new rows, so a subject it no longer reports is not resolved automatically.';
COMMENT ON COLUMN integrity.checks.search_path IS 'The search_path in effect when the check was registered; its query, checked and fix run under it.';
COMMENT ON COLUMN integrity.checks.builtin IS 'Shipped with the extension (checks its own tables); can be disabled, not dropped.';
COMMENT ON COLUMN integrity.checks.created_at IS 'When the check was registered (or last replaced).';
COMMENT ON COLUMN integrity.checks.last_run_at IS 'Start of the last run.';
COMMENT ON COLUMN integrity.checks.last_success_at IS 'Start of the last run that succeeded: the $1 of the next run.';
COMMENT ON COLUMN integrity.checks.last_violations IS 'Violations found by the last run (NULL if it failed).';
COMMENT ON COLUMN integrity.checks.last_duration_ms IS 'Duration of the last run, in milliseconds.';
COMMENT ON COLUMN integrity.checks.last_error IS 'Error message of the last run, NULL when it succeeded.';
COMMENT ON COLUMN integrity.checks.last_sqlstate IS 'SQLSTATE of the last run''s error (57014 for a timeout).';
COMMENT ON CONSTRAINT checks_auto_fix_check ON integrity.checks IS 'auto_fix needs a fix statement.';

CREATE TABLE integrity.check_runs (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    check_name   text        NOT NULL,
    started_at   timestamptz NOT NULL,
    duration_ms  double precision NOT NULL,
    violations   integer,
    checked      bigint,
    new_alerts   integer     NOT NULL DEFAULT 0,
    fixed        integer     NOT NULL DEFAULT 0,
    resolved     integer     NOT NULL DEFAULT 0,
    error        text,
    sqlstate     text
);
CREATE INDEX check_runs_started_idx ON integrity.check_runs USING brin (started_at);

COMMENT ON TABLE integrity.check_runs IS
'One row per check per run_checks call: what it found, raised, fixed and resolved, or its error. consistency_report reads it.';
COMMENT ON COLUMN integrity.check_runs.id IS 'Run id.';
COMMENT ON COLUMN integrity.check_runs.check_name IS 'The check.';
COMMENT ON COLUMN integrity.check_runs.started_at IS 'When the check started.';
COMMENT ON COLUMN integrity.check_runs.duration_ms IS 'How long it took, in milliseconds.';
COMMENT ON COLUMN integrity.check_runs.violations IS 'Rows its query returned (NULL when it failed).';
COMMENT ON COLUMN integrity.check_runs.checked IS 'Subjects it looked at, from its checked query (NULL without one).';
COMMENT ON COLUMN integrity.check_runs.new_alerts IS 'Alerts raised: new ones, and open ones raised again after their throttle.';
COMMENT ON COLUMN integrity.check_runs.fixed IS 'Violations its fix corrected.';
COMMENT ON COLUMN integrity.check_runs.resolved IS 'Open alerts resolved because the check no longer found their subject.';
COMMENT ON COLUMN integrity.check_runs.error IS 'Error message when the check failed (its work was rolled back).';
COMMENT ON COLUMN integrity.check_runs.sqlstate IS 'SQLSTATE of that error.';
COMMENT ON INDEX integrity.check_runs_started_idx IS 'Runs by time, for reports.';

SELECT pg_catalog.pg_extension_config_dump('integrity.checks', 'WHERE NOT builtin');
SELECT pg_catalog.pg_extension_config_dump('integrity.check_runs', '');

-- Built-in checks on the extension's own tables. Their queries are
-- schema-qualified; they run under search_path pg_catalog, pg_temp.
INSERT INTO integrity.checks (name, description, severity, query, search_path, builtin, throttle) VALUES
('integrity.overlapping_bookings',
 'Two active bookings of one resource overlap (impossible while the exclusion constraint bookings_no_overlap exists).',
 'critical',
 $q$SELECT 'booking ' || a.id::text,
          pg_catalog.jsonb_build_object('booking', a.id, 'other', b.id, 'org_id', a.org_id,
                                        'resource_id', a.resource_id, 'during', a.during::text)
     FROM integrity.bookings a
     JOIN integrity.bookings b
       ON b.org_id = a.org_id AND b.resource_id = a.resource_id AND b.id > a.id
      AND b.during OPERATOR(pg_catalog.&&) a.during
    WHERE a.status = 'booked' AND b.status = 'booked'$q$,
 'pg_catalog, pg_temp', true, '1 hour'),
('integrity.stuck_idempotency_keys',
 'Idempotency keys still processing an hour after their lease ran out: a client began work and never completed or failed it.',
 'warning',
 $q$SELECT pg_catalog.format('%s %s %s', k.org_id, k.scope, k.key),
          pg_catalog.jsonb_build_object('org_id', k.org_id, 'scope', k.scope, 'key', k.key,
                                        'locked_until', k.locked_until, 'attempts', k.attempts,
                                        'recovery_point', k.recovery_point)
     FROM integrity.idempotency_keys k
    WHERE k.status = 'processing'
      AND k.locked_until < pg_catalog.now() - interval '1 hour'$q$,
 'pg_catalog, pg_temp', true, '1 hour');

CREATE VIEW integrity.alert_summary WITH (security_invoker = true) AS
SELECT a.check_name,
       a.severity,
       pg_catalog.count(*) FILTER (WHERE a.resolved_at IS NULL)  AS open,
       pg_catalog.count(*) FILTER (WHERE a.auto_corrected)       AS auto_corrected,
       pg_catalog.count(*)                                       AS total,
       pg_catalog.sum(a.occurrences)                             AS occurrences,
       pg_catalog.min(a.detected_at) FILTER (WHERE a.resolved_at IS NULL) AS oldest_open_at,
       pg_catalog.max(a.last_seen_at)                            AS last_seen_at
  FROM integrity.alerts a
 GROUP BY a.check_name, a.severity;
COMMENT ON VIEW integrity.alert_summary IS
'Alerts per check and severity: open, auto-corrected, total, how often found, the oldest open one and the last sighting.';

CREATE VIEW integrity.check_status WITH (security_invoker = true) AS
SELECT c.name,
       c.severity,
       c.enabled,
       c.builtin,
       c.incremental,
       c.auto_fix,
       CASE WHEN NOT c.enabled THEN 'disabled'
            WHEN c.last_run_at IS NULL THEN 'never_run'
            WHEN c.last_error IS NOT NULL THEN 'error'
            WHEN o.open > 0 THEN 'failing'
            ELSE 'ok' END                                 AS status,
       c.last_run_at,
       c.last_success_at,
       c.last_violations,
       c.last_duration_ms,
       c.last_error,
       c.last_sqlstate,
       o.open                                             AS open_alerts
  FROM integrity.checks c
  LEFT JOIN LATERAL (SELECT pg_catalog.count(*) AS open FROM integrity.alerts a
                      WHERE a.check_name = c.name AND a.resolved_at IS NULL) o ON true;
COMMENT ON VIEW integrity.check_status IS
'Each check with its state: ok, failing (open alerts), error (last run failed), disabled or never_run; and its last run.';

-- PL/pgSQL so that `since` is checked even when nothing else is read.
CREATE FUNCTION integrity.consistency_report(since interval DEFAULT '1 day')
RETURNS jsonb LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
since := integrity.report_period('integrity.consistency_report', 'since', since, interval '1 day');
RETURN (
WITH w AS (SELECT now() - since AS t),
runs AS (
    SELECT r.check_name,
           count(*)                              AS runs,
           count(*) FILTER (WHERE r.error IS NOT NULL) AS failed_runs,
           coalesce(sum(r.violations), 0)        AS violations,
           sum(r.checked)                        AS checked,
           sum(r.violations) FILTER (WHERE r.checked IS NOT NULL) AS violations_of_checked,
           sum(r.new_alerts)                     AS new_alerts,
           sum(r.fixed)                          AS fixed,
           sum(r.resolved)                       AS resolved
      FROM integrity.check_runs r, w
     WHERE r.started_at >= w.t
     GROUP BY r.check_name),
alerts AS (
    SELECT a.check_name, count(*) AS alerts, count(*) FILTER (WHERE a.auto_corrected) AS auto
      FROM integrity.alerts a, w
     WHERE a.detected_at >= w.t
     GROUP BY a.check_name),
names AS (SELECT check_name FROM runs UNION SELECT check_name FROM alerts)
SELECT jsonb_build_object(
    'since', (SELECT t FROM w),
    'checks', coalesce((
        SELECT jsonb_object_agg(n.check_name, jsonb_build_object(
                   'runs', coalesce(r.runs, 0),
                   'failed_runs', coalesce(r.failed_runs, 0),
                   'violations', coalesce(r.violations, 0),
                   'checked', r.checked,
                   'alerts', coalesce(a.alerts, 0),
                   'new_alerts', coalesce(r.new_alerts, 0),
                   'fixed', coalesce(r.fixed, 0),
                   'auto_corrected', coalesce(a.auto, 0),
                   'resolved', coalesce(r.resolved, 0),
                   'consistency_rate', CASE WHEN r.checked > 0
                       THEN round(1 - r.violations_of_checked::numeric / r.checked, 6) END))
          FROM names n
          LEFT JOIN runs r USING (check_name)
          LEFT JOIN alerts a USING (check_name)), '{}'::jsonb),
    'open_alerts', (
        SELECT jsonb_build_object(
                   'info', count(*) FILTER (WHERE a.severity = 'info'),
                   'warning', count(*) FILTER (WHERE a.severity = 'warning'),
                   'critical', count(*) FILTER (WHERE a.severity = 'critical'))
          FROM integrity.alerts a WHERE a.resolved_at IS NULL),
    'auto_corrected_rate', (
        SELECT CASE WHEN count(*) > 0
                    THEN round(count(*) FILTER (WHERE a.auto_corrected)::numeric / count(*), 6) END
          FROM integrity.alerts a, w WHERE a.detected_at >= w.t),
    'consistency_rate', (
        SELECT CASE WHEN sum(r.checked) > 0
                    THEN round(1 - sum(r.violations)::numeric / sum(r.checked), 6) END
          FROM integrity.check_runs r, w
         WHERE r.started_at >= w.t AND r.checked IS NOT NULL AND r.error IS NULL)));
END
$$;
COMMENT ON FUNCTION integrity.consistency_report(interval) IS
'The daily report, as jsonb: per check its runs, violations, alerts, fixes and consistency rate; open alerts by severity; the share of alerts auto-corrected; and the consistency rate over checks that count what they looked at (1 - violations / checked).';

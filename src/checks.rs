//! Consistency checks, alerts and the report, run inside the database.
//!
//! A check is a query returning `(subject text, details jsonb)`, one row per
//! violation. `add_check` validates it when it is registered (it must parse
//! and return those two columns) under the caller's `search_path`, which is
//! stored with it. `run_checks` runs each check in its own subtransaction
//! under a per-check timeout (`integrity.check_timeout`): a check that
//! fails or runs too long is rolled back and reported in its row of the
//! output, and the others still run. For each violation it raises an alert,
//! or, within the check's throttle, bumps the open one; with `auto_fix` it
//! runs the check's fix for the violation instead and records the alert as
//! auto-corrected. A full check (one not using `$1`) resolves the open
//! alerts whose subject it no longer finds.
//!
//! Checks are serialized by an advisory lock per check, held to the end of
//! the transaction, so two `run_checks` at once never raise the same alert
//! twice; the unique index on open alerts is the last line of defence.

use crate::errors::{in_subtransaction, raise, required, Caught, Kind, OrBug};
use crate::gucs;
use crate::plans::{run, with_settings, Stmt};
use pgrx::datum::{DatumWithOid, Interval};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::JsonB;
use std::ffi::CString;

pgrx::extension_sql_file!(
    "../sql/checks.sql",
    name = "checks",
    requires = ["alerts", "booking_tables", "idempotency_tables"]
);
pgrx::extension_sql_file!(
    "../sql/checks_api.sql",
    name = "checks_api",
    requires = [
        "checks",
        add_check,
        run_checks,
        resolve_alert,
        enable_check,
        disable_check,
        drop_check
    ]
);

const ADD_CHECK: &str = "integrity.add_check";
const RUN_CHECKS: &str = "integrity.run_checks";

// ---------------------------------------------------------------------------
// Statements: what a statement is, once parsed and analyzed

/// What `sql` is, parsed and analyzed with parameters of types `args`.
struct Shape {
    /// Statements in the text.
    statements: usize,
    /// Whether it is one plain SELECT.
    select: bool,
    /// Types of its result columns.
    columns: Vec<Oid>,
}

/// Parse and analyze `sql` (nothing runs) under the current settings; a
/// parser or analyzer error comes back with its SQLSTATE and message.
fn shape(sql: &str, args: &[Oid]) -> Result<Shape, Caught> {
    let c = CString::new(sql).unwrap_or_default();
    let mut args = args.to_vec();
    in_subtransaction(|| {
        Spi::connect(|_| {
            // SAFETY: SPI is connected; the plan and its sources are read,
            // then freed. SPI_prepare raises on a parse error (caught above).
            unsafe {
                let plan = pg_sys::SPI_prepare(c.as_ptr(), args.len() as i32, args.as_mut_ptr());
                if plan.is_null() {
                    let code = std::ptr::addr_of!(pg_sys::SPI_result).read();
                    crate::errors::bug(format!("SPI_prepare: {code}"));
                }
                let list = pg_sys::SPI_plan_get_plan_sources(plan);
                let n = if list.is_null() {
                    0
                } else {
                    (*list).length as usize
                };
                let mut shape = Shape {
                    statements: n,
                    select: false,
                    columns: Vec::new(),
                };
                if n == 1 {
                    let src = (*(*list).elements).ptr_value as *mut pg_sys::CachedPlanSource;
                    shape.select = (*src).commandTag == pg_sys::CommandTag::CMDTAG_SELECT;
                    let desc = (*src).resultDesc;
                    if !desc.is_null() {
                        shape.columns = (*desc)
                            .attrs
                            .as_slice((*desc).natts as usize)
                            .iter()
                            .filter(|a| !a.attisdropped)
                            .map(|a| a.atttypid)
                            .collect();
                    }
                }
                pg_sys::SPI_freeplan(plan);
                shape
            }
        })
    })
}

/// Settings for running a check's own SQL: its stored search_path.
fn under_path<R>(search_path: &str, f: impl FnOnce() -> R) -> R {
    let path = CString::new(search_path).unwrap_or_default();
    with_settings(&[(c"search_path", path.as_c_str())], f)
}

// ---------------------------------------------------------------------------
// add_check, drop_check, enable_check, disable_check

/// A piece of SQL given to add_check, checked: it parses, and is one
/// statement of the right kind.
fn validated(
    name: &str,
    what: &'static str,
    sql: &str,
    args: &[Oid],
    columns: Option<(&[Oid], &str)>,
) -> Shape {
    let hint = match what {
        "query" => "The query is a SELECT returning (subject text, details jsonb), one row per violation; $1 is the start of the last successful run.",
        "fix" => "The fix is one statement; $1 is the violation's subject (text), $2 its details (jsonb).",
        _ => "checked is a SELECT returning one bigint, the number of subjects looked at (e.g. SELECT count(*) FROM calls WHERE created_at >= $1).",
    };
    if sql.trim().is_empty() || sql.contains('\0') {
        raise(
            Kind::InvalidParameter,
            ADD_CHECK,
            format!("{what} of check {name:?} is empty"),
            hint,
        );
    }
    let shape = shape(sql, args).unwrap_or_else(|e| {
        crate::errors::raise_as(
            e.code,
            ADD_CHECK,
            format!("{what} of check {name:?} is not valid: {}", e.message),
            e.message.clone(),
            hint,
        )
    });
    if shape.statements != 1 {
        raise(
            Kind::SyntaxError,
            ADD_CHECK,
            format!(
                "{what} of check {name:?} must be one statement, got {}",
                shape.statements
            ),
            hint,
        );
    }
    if let Some((want, names)) = columns {
        if !shape.select {
            raise(
                Kind::SyntaxError,
                ADD_CHECK,
                format!("{what} of check {name:?} must be a SELECT"),
                hint,
            );
        }
        if shape.columns != want {
            let got: Vec<String> = shape
                .columns
                .iter()
                .map(|t| crate::names::type_name(*t))
                .collect();
            raise(
                Kind::DatatypeMismatch,
                ADD_CHECK,
                format!(
                    "{what} of check {name:?} must return ({names}), it returns ({})",
                    got.join(", ")
                ),
                hint,
            );
        }
    }
    shape
}

/// Whether `sql` needs `$1`: it does not parse without it.
fn uses_first_param(sql: &str) -> bool {
    matches!(shape(sql, &[]), Err(e) if e.code == PgSqlErrorCode::ERRCODE_UNDEFINED_PARAMETER)
}

static CHECK_EXISTS: Stmt = Stmt {
    sql: "SELECT builtin FROM integrity.checks WHERE name = $1 FOR UPDATE",
    args: &[pg_sys::TEXTOID],
    writes: true,
};

static SAVE_CHECK: Stmt = Stmt {
    sql: "INSERT INTO integrity.checks AS c
              (name, description, severity, query, fix, auto_fix, checked, throttle,
               incremental, search_path)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
          ON CONFLICT (name) DO UPDATE SET
              description = EXCLUDED.description, severity = EXCLUDED.severity,
              query = EXCLUDED.query, fix = EXCLUDED.fix, auto_fix = EXCLUDED.auto_fix,
              checked = EXCLUDED.checked, throttle = EXCLUDED.throttle,
              incremental = EXCLUDED.incremental, search_path = EXCLUDED.search_path,
              enabled = true, created_at = pg_catalog.now(),
              last_success_at = NULL, last_error = NULL, last_sqlstate = NULL",
    args: &[
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::BOOLOID,
        pg_sys::TEXTOID,
        pg_sys::INTERVALOID,
        pg_sys::BOOLOID,
        pg_sys::TEXTOID,
    ],
    writes: true,
};

/// Register a consistency check (or replace one, with `replace`).
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn add_check(
    name: Option<&str>,
    query: Option<&str>,
    severity: default!(Option<&str>, "'warning'"),
    fix: default!(Option<&str>, "NULL"),
    auto_fix: default!(Option<bool>, "false"),
    description: default!(Option<&str>, "NULL"),
    checked: default!(Option<&str>, "NULL"),
    throttle: default!(Option<Interval>, "'5 minutes'"),
    replace: default!(Option<bool>, "false"),
    search_path: default!(Option<&str>, "pg_catalog.current_setting('search_path')"),
) -> JsonB {
    let name = required(name, ADD_CHECK, "name");
    let query = required(query, ADD_CHECK, "query");
    // A NULL is refused, as for every argument with a default: the
    // default is what leaving the argument out gives.
    let severity = required(severity, ADD_CHECK, "severity");
    let auto_fix = auto_fix.unwrap_or(false);
    let replace = replace.unwrap_or(false);
    let search_path = required(search_path, ADD_CHECK, "search_path");
    if name.trim().is_empty() || name.len() > 200 {
        raise(
            Kind::InvalidParameter,
            ADD_CHECK,
            format!("name must be 1 to 200 bytes, got {}", name.len()),
            "Name the check, e.g. 'calls_booked_without_appointment'.",
        );
    }
    if !matches!(severity, "info" | "warning" | "critical") {
        raise(
            Kind::InvalidParameter,
            ADD_CHECK,
            format!("severity must be info, warning or critical, got {severity:?}"),
            "Pass severity => 'warning' (the default), 'info' or 'critical'.",
        );
    }
    if auto_fix && fix.is_none() {
        raise(
            Kind::InvalidParameter,
            ADD_CHECK,
            format!("check {name:?} has auto_fix on but no fix"),
            "Pass fix => 'UPDATE … WHERE id = $1::bigint' with auto_fix => true, or leave auto_fix off.",
        );
    }
    let throttle = throttle.unwrap_or_else(|| {
        Interval::new(0, 0, 5 * 60 * 1_000_000).unwrap_or_else(|_| crate::errors::bug("throttle"))
    });
    if crate::errors::span_us(ADD_CHECK, "throttle", throttle) < 0 {
        raise(
            Kind::InvalidParameter,
            ADD_CHECK,
            format!("throttle must not be negative, got {throttle}"),
            "Pass an interval such as '5 minutes', or '0' to alert on every run.",
        );
    }
    // Taken from now() at every run: a longer one failed each run with
    // "timestamp out of range".
    let throttle = crate::errors::not_too_long(ADD_CHECK, "throttle", throttle);
    let ts = [pg_sys::TIMESTAMPTZOID];
    let incremental = under_path(search_path, || {
        validated(
            name,
            "query",
            query,
            &ts,
            Some((
                &[pg_sys::TEXTOID, pg_sys::JSONBOID],
                "subject text, details jsonb",
            )),
        );
        if let Some(fix) = fix {
            validated(name, "fix", fix, &[pg_sys::TEXTOID, pg_sys::JSONBOID], None);
        }
        if let Some(checked) = checked {
            validated(
                name,
                "checked",
                checked,
                &ts,
                Some((&[pg_sys::INT8OID], "bigint")),
            );
        }
        uses_first_param(query)
    });
    Spi::connect_mut(|client| {
        let existing = run(client, &CHECK_EXISTS, None, &[name.into()]);
        let builtin = existing.first().get_one::<bool>().ok().flatten();
        match builtin {
            Some(true) => raise(
                Kind::InvalidParameter,
                ADD_CHECK,
                format!("check {name:?} is built in and cannot be replaced"),
                format!("Register yours under another name; disable this one with SELECT integrity.disable_check('{name}')."),
            ),
            Some(false) if !replace => raise(
                Kind::DuplicateObject,
                ADD_CHECK,
                format!("check {name:?} exists already"),
                "Pass replace => true to replace it, or choose another name.",
            ),
            _ => {}
        }
        run(
            client,
            &SAVE_CHECK,
            None,
            &[
                name.into(),
                description.into(),
                severity.into(),
                query.into(),
                fix.into(),
                auto_fix.into(),
                checked.into(),
                throttle.into(),
                incremental.into(),
                search_path.into(),
            ],
        );
        JsonB(serde_json::json!({
            "ok": true,
            "name": name,
            "incremental": incremental,
            "replaced": builtin.is_some(),
        }))
    })
}

static DROP_CHECK: Stmt = Stmt {
    sql: "DELETE FROM integrity.checks WHERE name = $1 AND NOT builtin",
    args: &[pg_sys::TEXTOID],
    writes: true,
};

static ENABLE_CHECK: Stmt = Stmt {
    sql: "UPDATE integrity.checks SET enabled = $2 WHERE name = $1",
    args: &[pg_sys::TEXTOID, pg_sys::BOOLOID],
    writes: true,
};

/// Drop a check; its alerts stay. `false` when there is no such check.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn drop_check(name: Option<&str>) -> bool {
    let name = required(name, "integrity.drop_check", "name");
    Spi::connect_mut(|client| {
        let builtin = run(client, &CHECK_EXISTS, None, &[name.into()])
            .first()
            .get_one::<bool>()
            .ok()
            .flatten();
        if builtin == Some(true) {
            raise(
                Kind::InvalidParameter,
                "integrity.drop_check",
                format!("check {name:?} is built in and cannot be dropped"),
                format!("Disable it instead: SELECT integrity.disable_check('{name}')."),
            );
        }
        run(client, &DROP_CHECK, None, &[name.into()]).len() == 1
    })
}

fn set_enabled(function: &'static str, name: Option<&str>, enabled: bool) -> bool {
    let name = required(name, function, "name");
    Spi::connect_mut(|client| {
        run(client, &ENABLE_CHECK, None, &[name.into(), enabled.into()]).len() == 1
    })
}

/// Run the check again in run_checks. `false` when there is no such check.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn enable_check(name: Option<&str>) -> bool {
    set_enabled("integrity.enable_check", name, true)
}

/// Skip the check in run_checks (unless named). `false` when there is no
/// such check.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn disable_check(name: Option<&str>) -> bool {
    set_enabled("integrity.disable_check", name, false)
}

// ---------------------------------------------------------------------------
// resolve_alert

static RESOLVE: Stmt = Stmt {
    sql: "WITH a AS (SELECT id, resolved_at FROM integrity.alerts WHERE id = $1 FOR UPDATE),
          r AS (UPDATE integrity.alerts t
                   SET resolved_at = pg_catalog.clock_timestamp(),
                       resolution = COALESCE($2, 'resolved')
                  FROM a WHERE t.id = a.id AND a.resolved_at IS NULL RETURNING t.id)
          SELECT (SELECT resolved_at IS NOT NULL FROM a), (SELECT count(*) FROM r)",
    args: &[pg_sys::INT8OID, pg_sys::TEXTOID],
    writes: true,
};

/// Resolve an open alert by hand, with a note.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn resolve_alert(id: Option<i64>, note: default!(Option<&str>, "NULL")) -> JsonB {
    let id = required(id, "integrity.resolve_alert", "id");
    Spi::connect_mut(|client| {
        let t = run(client, &RESOLVE, None, &[id.into(), note.into()]);
        let row = t.first();
        let was_resolved: Option<bool> = row.get(1).ok().flatten();
        let resolved: i64 = row.get(2).ok().flatten().unwrap_or(0);
        JsonB(match (was_resolved, resolved) {
            (None, _) => serde_json::json!({"ok": false, "reason": "not_found", "id": id}),
            (_, 1) => serde_json::json!({"ok": true, "id": id}),
            _ => serde_json::json!({"ok": false, "reason": "already_resolved", "id": id}),
        })
    })
}

// ---------------------------------------------------------------------------
// The per-check timeout: Postgres's statement timeout, armed around a check

// Postgres's own timeout functions (not in pgrx's bindings). They do not
// raise ERRORs (a failure to set the timer is FATAL, ending the backend).
unsafe extern "C-unwind" {
    fn enable_timeout_at(id: i32, fin_time: pg_sys::TimestampTz);
    fn disable_timeout(id: i32, keep_indicator: bool);
    fn get_timeout_active(id: i32) -> bool;
    fn get_timeout_finish_time(id: i32) -> pg_sys::TimestampTz;
}

/// `STATEMENT_TIMEOUT` in `TimeoutId` (utils/timeout.h).
const STATEMENT_TIMEOUT: i32 = 3;

/// A check's deadline; the caller's own statement timeout, when it has one
/// and it comes first, stays in charge (and its cancel is not the check's).
struct Deadline {
    armed: bool,
    /// Armed and not yet disarmed: `disarm` undoes `arm` once.
    live: std::cell::Cell<bool>,
    at: pg_sys::TimestampTz,
    outer: Option<pg_sys::TimestampTz>,
}

impl Deadline {
    fn arm(ms: i32) -> Deadline {
        // SAFETY: the backend's timeout machinery; the statement timeout is
        // re-armed for the caller in `disarm`.
        unsafe {
            let outer = get_timeout_active(STATEMENT_TIMEOUT)
                .then(|| get_timeout_finish_time(STATEMENT_TIMEOUT));
            let at = pg_sys::GetCurrentTimestamp() + ms as i64 * 1000;
            if ms <= 0 || outer.is_some_and(|o| o <= at) {
                return Deadline {
                    armed: false,
                    live: std::cell::Cell::new(false),
                    at,
                    outer,
                };
            }
            enable_timeout_at(STATEMENT_TIMEOUT, at);
            Deadline {
                armed: true,
                live: std::cell::Cell::new(true),
                at,
                outer,
            }
        }
    }

    fn disarm(&self) {
        if !self.live.replace(false) {
            return;
        }
        // SAFETY: as in `arm`.
        unsafe {
            match self.outer {
                Some(o) => enable_timeout_at(STATEMENT_TIMEOUT, o),
                None => disable_timeout(STATEMENT_TIMEOUT, false),
            }
        }
    }

    /// Whether `e` is this deadline passing (not the caller's timeout or
    /// cancel).
    fn passed(&self, e: &Caught) -> bool {
        // SAFETY: reads the clock.
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        e.code == PgSqlErrorCode::ERRCODE_QUERY_CANCELED && self.armed && now >= self.at - 1000
    }
}

// ---------------------------------------------------------------------------
// run_checks

/// A check as run_checks reads it.
struct Check {
    name: String,
    severity: String,
    query: String,
    fix: Option<String>,
    auto_fix: bool,
    checked: Option<String>,
    throttle: Interval,
    incremental: bool,
    search_path: String,
    since: pg_sys::TimestampTz,
}

/// What one check's run did.
#[derive(Default)]
struct Outcome {
    violations: i32,
    checked: Option<i64>,
    new_alerts: i32,
    fixed: i32,
    resolved: i32,
}

static CHECK_NAMES: Stmt = Stmt {
    sql: "SELECT pg_catalog.array_agg(name ORDER BY name) FILTER (WHERE $1 IS NOT NULL OR enabled),
                 (SELECT pg_catalog.array_agg(n) FROM pg_catalog.unnest($1) n
                   WHERE n IS NULL OR n NOT IN (SELECT name FROM integrity.checks))
            FROM integrity.checks WHERE $1 IS NULL OR name = ANY ($1)",
    args: &[pg_sys::TEXTARRAYOID],
    writes: false,
};

static READ_CHECK: Stmt = Stmt {
    sql: "SELECT severity::text, query, fix, auto_fix, checked, throttle, incremental, search_path,
                 COALESCE(last_success_at, '-infinity')
            FROM integrity.checks WHERE name = $1",
    args: &[pg_sys::TEXTOID],
    writes: false,
};

/// A violation found: (check, subject, details, severity, now).
const FOUND: &[Oid] = &[
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::JSONBOID,
    pg_sys::TEXTOID,
    pg_sys::TIMESTAMPTZOID,
];
/// `FOUND` and the check's throttle.
const FOUND_THROTTLED: &[Oid] = &[
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::JSONBOID,
    pg_sys::TEXTOID,
    pg_sys::TIMESTAMPTZOID,
    pg_sys::INTERVALOID,
];

static BUMP_OPEN: Stmt = Stmt {
    sql: "UPDATE integrity.alerts
             SET last_seen_at = $5, occurrences = occurrences + 1, details = $3, severity = $4,
                 alerted_at = CASE WHEN alerted_at <= $5 - $6 THEN $5 ELSE alerted_at END
           WHERE check_name = $1 AND subject = $2 AND resolved_at IS NULL
       RETURNING alerted_at = $5",
    args: FOUND_THROTTLED,
    writes: true,
};

/// A subject the check stopped finding and finds again within its
/// throttle: the same alert, reopened, not a new one.
static REOPEN: Stmt = Stmt {
    sql: "UPDATE integrity.alerts
             SET resolved_at = NULL, resolution = NULL, last_seen_at = $5,
                 occurrences = occurrences + 1, details = $3, severity = $4
           WHERE id = (SELECT id FROM integrity.alerts
                        WHERE check_name = $1 AND subject = $2 AND resolution = 'no longer found'
                          AND resolved_at > $5 - $6
                        ORDER BY resolved_at DESC LIMIT 1)
       RETURNING id",
    args: FOUND_THROTTLED,
    writes: true,
};

static RAISE_ALERT: Stmt = Stmt {
    sql: "INSERT INTO integrity.alerts
              (check_name, subject, details, severity, detected_at, last_seen_at, alerted_at, org_id)
          VALUES ($1, $2, $3, $4, $5, $5, $5,
                  CASE WHEN $3 ->> 'org_id' ~ '^[0-9a-fA-F-]{36}$' THEN ($3 ->> 'org_id')::uuid END)",
    args: FOUND,
    writes: true,
};

/// A violation the check's fix corrected: logged resolved, and an open
/// alert of the subject (from before auto_fix) resolved with it.
static FIXED: Stmt = Stmt {
    sql: "WITH closed AS (
              UPDATE integrity.alerts SET resolved_at = $5, resolution = 'auto-fixed'
               WHERE check_name = $1 AND subject = $2 AND resolved_at IS NULL)
          INSERT INTO integrity.alerts
              (check_name, subject, details, severity, detected_at, last_seen_at, alerted_at,
               auto_corrected, resolved_at, resolution, org_id)
          VALUES ($1, $2, $3, $4, $5, $5, $5, true, $5, 'auto-fixed',
                  CASE WHEN $3 ->> 'org_id' ~ '^[0-9a-fA-F-]{36}$' THEN ($3 ->> 'org_id')::uuid END)",
    args: FOUND,
    writes: true,
};

static NO_LONGER_FOUND: Stmt = Stmt {
    sql: "UPDATE integrity.alerts SET resolved_at = $3, resolution = 'no longer found'
           WHERE check_name = $1 AND resolved_at IS NULL AND NOT (subject = ANY ($2))",
    args: &[
        pg_sys::TEXTOID,
        pg_sys::TEXTARRAYOID,
        pg_sys::TIMESTAMPTZOID,
    ],
    writes: true,
};

static NOTIFY: Stmt = Stmt {
    sql: "SELECT pg_catalog.pg_notify('integrity_alerts', $1)",
    args: &[pg_sys::TEXTOID],
    writes: false,
};

static RECORD_RUN: Stmt = Stmt {
    sql: "WITH c AS (
              UPDATE integrity.checks
                 SET last_run_at = $2, last_duration_ms = $3, last_violations = $4,
                     last_error = $9, last_sqlstate = $10,
                     last_success_at = CASE WHEN $9 IS NULL THEN $2 ELSE last_success_at END
               WHERE name = $1)
          INSERT INTO integrity.check_runs
              (check_name, started_at, duration_ms, violations, checked, new_alerts, fixed,
               resolved, error, sqlstate)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    args: &[
        pg_sys::TEXTOID,
        pg_sys::TIMESTAMPTZOID,
        pg_sys::FLOAT8OID,
        pg_sys::INT4OID,
        pg_sys::INT8OID,
        pg_sys::INT4OID,
        pg_sys::INT4OID,
        pg_sys::INT4OID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
    ],
    writes: true,
};

fn timestamptz(ts: pg_sys::TimestampTz) -> DatumWithOid<'static> {
    // SAFETY: a timestamptz is passed by value as its i64.
    unsafe { DatumWithOid::new(pg_sys::Datum::from(ts), pg_sys::TIMESTAMPTZOID) }
}

fn read_check(client: &pgrx::spi::SpiClient<'_>, name: &str) -> Option<Check> {
    let t = crate::plans::read(client, &READ_CHECK, None, &[name.into()]);
    let row = t.first();
    let severity: String = row.get(1).ok().flatten()?;
    let since: pg_sys::TimestampTz = row
        .get_datum_by_ordinal(9)
        .ok()
        .flatten()
        .map(|d| d.value() as i64)
        .unwrap_or(i64::MIN);
    Some(Check {
        name: name.to_string(),
        severity,
        query: row.get(2).or_bug("check query").unwrap_or_default(),
        fix: row.get(3).or_bug("check fix"),
        auto_fix: row.get(4).or_bug("check auto_fix").unwrap_or(false),
        checked: row.get(5).or_bug("check checked"),
        throttle: row
            .get(6)
            .or_bug("check throttle")
            .unwrap_or_else(|| crate::errors::bug("throttle is NOT NULL")),
        incremental: row.get(7).or_bug("check incremental").unwrap_or(false),
        search_path: row.get(8).or_bug("check search_path").unwrap_or_default(),
        since,
    })
}

/// Run one check's query, fixes and alerts; called in its subtransaction.
fn check_once(
    client: &mut pgrx::spi::SpiClient<'_>,
    c: &Check,
    now: pg_sys::TimestampTz,
) -> Outcome {
    let mut out = Outcome::default();
    // The user's SQL runs under the check's search_path.
    let (rows, checked) = under_path(&c.search_path, || {
        let t = client
            .update(c.query.as_str(), None, &[timestamptz(c.since)])
            .unwrap_or_else(|e| crate::errors::bug(format!("check query: {e}")));
        let rows: Vec<(Option<String>, Option<JsonB>)> = t
            .map(|r| (r.get(1).ok().flatten(), r.get(2).ok().flatten()))
            .collect();
        let checked = c.checked.as_deref().map(|q| {
            let n = client
                .update(q, Some(1), &[timestamptz(c.since)])
                .unwrap_or_else(|e| crate::errors::bug(format!("check checked: {e}")))
                .first()
                .get_one::<i64>()
                .ok()
                .flatten();
            match n {
                Some(n) if n >= 0 => n,
                // A count of subjects: a NULL (no row, or count over
                // nothing written as sum()) or a negative one is the
                // query's mistake, stored nowhere.
                Some(n) => raise(
                    Kind::InvalidParameter,
                    RUN_CHECKS,
                    format!("check {:?}: its checked query returned {n}, not a count", c.name),
                    "Make checked return the number of subjects looked at, such as SELECT count(*) FROM calls WHERE created_at >= $1.",
                ),
                None => raise(
                    Kind::NullValue,
                    RUN_CHECKS,
                    format!("check {:?}: its checked query returned no count (NULL or no row)", c.name),
                    "Make checked return one row with the number of subjects looked at, such as SELECT count(*) FROM calls WHERE created_at >= $1.",
                ),
            }
        });
        (rows, checked)
    });
    out.violations = rows.len() as i32;
    out.checked = checked;
    let mut subjects: Vec<String> = Vec::with_capacity(rows.len());
    for (subject, details) in rows {
        let Some(subject) = subject else {
            raise(
                Kind::NullValue,
                RUN_CHECKS,
                format!("check {:?} returned a row with a NULL subject", c.name),
                "Make the check's query return a non-NULL subject text for every row.",
            );
        };
        let details = details.unwrap_or(JsonB(serde_json::json!({})));
        if c.auto_fix {
            if let Some(fix) = c.fix.as_deref() {
                under_path(&c.search_path, || {
                    client
                        .update(
                            fix,
                            None,
                            &[subject.as_str().into(), JsonB(details.0.clone()).into()],
                        )
                        .unwrap_or_else(|e| crate::errors::bug(format!("check fix: {e}")));
                });
                run(
                    client,
                    &FIXED,
                    None,
                    &[
                        c.name.as_str().into(),
                        subject.as_str().into(),
                        details.into(),
                        c.severity.as_str().into(),
                        timestamptz(now),
                    ],
                );
                out.fixed += 1;
                subjects.push(subject);
                continue;
            }
        }
        let args = [
            c.name.as_str().into(),
            subject.as_str().into(),
            details.into(),
            c.severity.as_str().into(),
            timestamptz(now),
            c.throttle.into(),
        ];
        let bumped = run(client, &BUMP_OPEN, None, &args);
        if let Some(raised) = bumped.first().get_one::<bool>().ok().flatten() {
            out.new_alerts += raised as i32;
        } else if run(client, &REOPEN, None, &args).is_empty() {
            run(client, &RAISE_ALERT, None, &args[..5]);
            out.new_alerts += 1;
        }
        subjects.push(subject);
    }
    if !c.incremental {
        out.resolved = run(
            client,
            &NO_LONGER_FOUND,
            None,
            &[c.name.as_str().into(), subjects.into(), timestamptz(now)],
        )
        .len() as i32;
    }
    if out.new_alerts > 0 {
        crate::plans::read(client, &NOTIFY, None, &[c.name.as_str().into()]);
    }
    out
}

/// Run consistency checks: `names`, or every enabled check. One row per
/// check, failed ones included.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn run_checks(
    names: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(check_name, String),
        name!(violations, Option<i32>),
        name!(new_alerts, i32),
        name!(fixed, i32),
        name!(resolved, i32),
        name!(duration_ms, f64),
        name!(error, Option<String>),
        name!(sqlstate, Option<String>),
    ),
> {
    let timeout = gucs::check_timeout_ms();
    let rows = Spi::connect_mut(|client| {
        let t = crate::plans::read(client, &CHECK_NAMES, None, &[names.clone().into()]);
        let row = t.first();
        let todo: Vec<String> = row.get(1).ok().flatten().unwrap_or_default();
        let unknown: Vec<Option<String>> = row.get(2).ok().flatten().unwrap_or_default();
        if let Some(u) = unknown.first() {
            match u {
                None => raise(
                    Kind::NullValue,
                    RUN_CHECKS,
                    "names must not contain NULL",
                    "Pass check names, or NULL for every enabled check.",
                ),
                Some(u) => raise(
                    Kind::UndefinedObject,
                    RUN_CHECKS,
                    format!("there is no check {u:?}"),
                    "See SELECT name FROM integrity.checks.",
                ),
            }
        }
        let mut rows = Vec::with_capacity(todo.len());
        for name in todo {
            // One run of a check at a time: a second run_checks waits here,
            // then sees the first one's alerts.
            crate::keys::advisory_lock(
                crate::keys::lock_key_of([&b"check"[..], name.as_bytes()]),
                false,
            );
            let Some(c) = read_check(client, &name) else {
                continue; // dropped meanwhile
            };
            // SAFETY: reads the clock.
            let started = unsafe { pg_sys::GetCurrentTimestamp() };
            let clock = std::time::Instant::now();
            let deadline = Deadline::arm(timeout);
            let result = in_subtransaction(|| {
                let out = check_once(client, &c, started);
                deadline.disarm();
                // A deadline that passed just now is this check's.
                pgrx::check_for_interrupts!();
                out
            });
            deadline.disarm();
            let ms = clock.elapsed().as_secs_f64() * 1000.0;
            let (out, error) = match result {
                Ok(out) => (Some(out), None),
                Err(e)
                    if e.code == PgSqlErrorCode::ERRCODE_QUERY_CANCELED && !deadline.passed(&e) =>
                {
                    // The caller's cancel or timeout: stop everything.
                    e.raise_again(RUN_CHECKS)
                }
                Err(e) => {
                    let message = if deadline.passed(&e) {
                        format!("{} (integrity.check_timeout = {timeout} ms)", e.message)
                    } else {
                        e.message.clone()
                    };
                    (None, Some((message, e.sqlstate())))
                }
            };
            let o = out.as_ref();
            run(
                client,
                &RECORD_RUN,
                None,
                &[
                    name.as_str().into(),
                    timestamptz(started),
                    ms.into(),
                    o.map(|o| o.violations).into(),
                    o.and_then(|o| o.checked).into(),
                    o.map_or(0, |o| o.new_alerts).into(),
                    o.map_or(0, |o| o.fixed).into(),
                    o.map_or(0, |o| o.resolved).into(),
                    error.as_ref().map(|e| e.0.as_str()).into(),
                    error.as_ref().map(|e| e.1.as_str()).into(),
                ],
            );
            rows.push((
                name,
                o.map(|o| o.violations),
                o.map_or(0, |o| o.new_alerts),
                o.map_or(0, |o| o.fixed),
                o.map_or(0, |o| o.resolved),
                ms,
                error.as_ref().map(|e| e.0.clone()),
                error.map(|e| e.1),
            ));
        }
        rows
    });
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testutil::{error_message, json, one, sqlstate, text};
    use pgrx::prelude::*;

    /// run_checks for `name`, as "violations/new/fixed/resolved/sqlstate".
    fn run(name: &str) -> String {
        text(&format!(
            "SELECT concat_ws('/', coalesce(violations::text, '-'), new_alerts, fixed, resolved,
                              coalesce(sqlstate, 'ok'))
               FROM integrity.run_checks(ARRAY['{name}'])"
        ))
    }

    #[pg_test]
    fn add_check_refuses_what_would_not_run() {
        Spi::run("CREATE TABLE chk_t (id int PRIMARY KEY, v int)").unwrap();
        let ok = "'SELECT id::text, jsonb_build_object(''v'', v) FROM chk_t WHERE v < 0'";
        for (sql, state) in [
            (format!("SELECT integrity.add_check(NULL, {ok})"), "22004"),
            ("SELECT integrity.add_check('a', NULL)".to_string(), "22004"),
            (format!("SELECT integrity.add_check('', {ok})"), "22023"),
            (format!("SELECT integrity.add_check('a', {ok}, severity => 'loud')"), "22023"),
            (format!("SELECT integrity.add_check('a', {ok}, severity => NULL)"), "22004"),
            (format!("SELECT integrity.add_check('a', {ok}, auto_fix => true)"), "22023"),
            (format!("SELECT integrity.add_check('a', {ok}, throttle => '-1 minute')"), "22023"),
            (format!("SELECT integrity.add_check('a', {ok}, throttle => '1000000 years')"), "22008"),
            ("SELECT integrity.add_check('a', '')".to_string(), "22023"),
            ("SELECT integrity.add_check('a', 'SELEC 1')".to_string(), "42601"),
            ("SELECT integrity.add_check('a', 'SELECT id::text, ''{}''::jsonb FROM no_such_table')".to_string(), "42P01"),
            ("SELECT integrity.add_check('a', 'SELECT id, ''{}''::jsonb FROM chk_t')".to_string(), "42804"),
            ("SELECT integrity.add_check('a', 'SELECT id::text FROM chk_t')".to_string(), "42804"),
            ("SELECT integrity.add_check('a', 'SELECT 1::text, ''{}''::jsonb; SELECT 2::text, ''{}''::jsonb')".to_string(), "42601"),
            ("SELECT integrity.add_check('a', 'DELETE FROM chk_t RETURNING id::text, ''{}''::jsonb')".to_string(), "42601"),
            (format!("SELECT integrity.add_check('a', {ok}, fix => 'UPDATE chk_t SET v = 0 WHERE id = $1::int AND')"), "42601"),
            (format!("SELECT integrity.add_check('a', {ok}, checked => 'SELECT count(*)::int FROM chk_t')"), "42804"),
            ("SELECT integrity.add_check('a', 'SELECT id::text, ''{}''::jsonb FROM chk_t WHERE v > $2')".to_string(), "42P02"),
            (format!("SELECT integrity.add_check('integrity.overlapping_bookings', {ok}, replace => true)"), "22023"),
            ("SELECT integrity.drop_check('integrity.overlapping_bookings')".to_string(), "22023"),
            ("SELECT integrity.drop_check(NULL)".to_string(), "22004"),
            ("SELECT integrity.enable_check(NULL)".to_string(), "22004"),
            ("SELECT integrity.disable_check(NULL)".to_string(), "22004"),
            (format!("SELECT integrity.add_check(repeat('n', 201), {ok})"), "22023"),
            (format!("SELECT integrity.add_check('a', {ok}, throttle => NULL, search_path => NULL)"), "22004"),
            ("SELECT integrity.run_checks(ARRAY['no such check'])".to_string(), "42704"),
            ("SELECT integrity.run_checks(ARRAY[NULL])".to_string(), "22004"),
            // The report's period: not from the future, not before 4713 BC.
            ("SELECT integrity.consistency_report('-1 day')".to_string(), "22023"),
            ("SELECT integrity.consistency_report('9000 years')".to_string(), "22008"),
            // Their shared check, called directly.
            ("SELECT integrity.report_period('f', 'p', '-1 second', '1 day')".to_string(), "22023"),
            ("SELECT integrity.report_period('f', 'p', '1001 years', '1 day')".to_string(), "22008"),
            ("SELECT integrity.report_period(NULL, NULL, '-1 day', NULL)".to_string(), "22023"),
            ("SELECT integrity.report_period('f', 'p', NULL, '1 day')".to_string(), "00000"),
        ] {
            assert_eq!(sqlstate(&sql), state, "{sql}");
        }
        // The parser's own words come through.
        let e = error_message("SELECT integrity.add_check('a', 'SELEC 1')");
        assert!(e.contains("syntax error at or near \"SELEC\""), "{e}");
        assert_eq!(
            sqlstate(&format!("SELECT integrity.add_check('a', {ok})")),
            "00000"
        );
        assert_eq!(
            sqlstate(&format!("SELECT integrity.add_check('a', {ok})")),
            "42710"
        );
        let replaced = json(&format!(
            "SELECT integrity.add_check('a', {ok}, severity => 'critical', replace => true)"
        ));
        assert_eq!(replaced["replaced"], true);
        assert_eq!(replaced["incremental"], false);
        assert_eq!(
            text("SELECT severity FROM integrity.checks WHERE name = 'a'"),
            "critical"
        );
        assert_eq!(
            one::<bool>("SELECT integrity.disable_check('a')"),
            Some(true)
        );
        assert_eq!(
            one::<bool>("SELECT integrity.enable_check('nope')"),
            Some(false)
        );
        assert_eq!(one::<bool>("SELECT integrity.drop_check('a')"), Some(true));
        assert_eq!(one::<bool>("SELECT integrity.drop_check('a')"), Some(false));
    }

    #[pg_test]
    fn checks_alert_throttle_resolve_and_reopen() {
        Spi::run(
            "CREATE SCHEMA chk_s;
             CREATE TABLE chk_s.acct (id int PRIMARY KEY, balance int);
             INSERT INTO chk_s.acct VALUES (1, 10), (2, -5), (3, -7);
             SET LOCAL search_path = chk_s, public;
             SELECT integrity.add_check('negative', 'SELECT id::text, jsonb_build_object(''balance'', balance) FROM acct WHERE balance < 0');
             SET LOCAL search_path = public;",
        )
        .unwrap();
        // Registered under chk_s, run from another search_path.
        assert_eq!(run("negative"), "2/2/0/0/ok");
        assert_eq!(
            text(
                "SELECT string_agg(subject || ':' || (details->>'balance'), ',' ORDER BY subject)
                    FROM integrity.alerts WHERE check_name = 'negative' AND resolved_at IS NULL"
            ),
            "2:-5,3:-7"
        );
        // Within the throttle: bumped, not alerted again.
        assert_eq!(run("negative"), "2/0/0/0/ok");
        assert_eq!(
            text("SELECT string_agg(occurrences::text, ',' ORDER BY subject) FROM integrity.alerts WHERE check_name = 'negative'"),
            "2,2"
        );
        // Fixed by hand: resolved as no longer found.
        Spi::run("UPDATE chk_s.acct SET balance = 0 WHERE id = 3").unwrap();
        assert_eq!(run("negative"), "1/0/0/1/ok");
        assert_eq!(
            text("SELECT resolution FROM integrity.alerts WHERE check_name = 'negative' AND subject = '3'"),
            "no longer found"
        );
        // Back within the throttle: the same alert reopened, not a new one.
        Spi::run("UPDATE chk_s.acct SET balance = -1 WHERE id = 3").unwrap();
        assert_eq!(run("negative"), "2/0/0/0/ok");
        assert_eq!(
            one::<i64>("SELECT count(*) FROM integrity.alerts WHERE check_name = 'negative'"),
            Some(2)
        );
        // With no throttle every run raises the open alerts again.
        Spi::run("UPDATE integrity.checks SET throttle = '0' WHERE name = 'negative'").unwrap();
        assert_eq!(run("negative"), "2/2/0/0/ok");
        // resolve_alert: ok, already resolved, not found, NULL.
        let id = one::<i64>(
            "SELECT id FROM integrity.alerts WHERE check_name = 'negative' AND subject = '2'",
        )
        .unwrap();
        assert_eq!(
            json(&format!("SELECT integrity.resolve_alert({id}, 'refunded')"))["ok"],
            true
        );
        assert_eq!(
            json(&format!("SELECT integrity.resolve_alert({id})"))["reason"],
            "already_resolved"
        );
        assert_eq!(
            json("SELECT integrity.resolve_alert(-1)")["reason"],
            "not_found"
        );
        assert_eq!(sqlstate("SELECT integrity.resolve_alert(NULL)"), "22004");
        assert_eq!(
            text(&format!(
                "SELECT resolution FROM integrity.alerts WHERE id = {id}"
            )),
            "refunded"
        );
        // A hand-resolved subject found again is a new alert (and, with no
        // throttle, the other open one is raised again).
        assert_eq!(run("negative"), "2/2/0/0/ok");
        // Views.
        assert_eq!(
            text("SELECT status || ' ' || open_alerts FROM integrity.check_status WHERE name = 'negative'"),
            "failing 2"
        );
        assert_eq!(
            text("SELECT open || '/' || total FROM integrity.alert_summary WHERE check_name = 'negative'"),
            "2/3"
        );
        // Disabled: skipped unless named.
        Spi::run("SELECT integrity.disable_check('negative')").unwrap();
        assert_eq!(
            one::<i64>("SELECT count(*) FROM integrity.run_checks() WHERE check_name = 'negative'"),
            Some(0)
        );
        assert_eq!(
            text("SELECT status FROM integrity.check_status WHERE name = 'negative'"),
            "disabled"
        );
    }

    #[pg_test]
    fn incremental_checks_see_new_rows_and_auto_fix_corrects() {
        Spi::run(
            "CREATE TABLE chk_calls (id int PRIMARY KEY, booked boolean, made boolean,
                                     created_at timestamptz NOT NULL DEFAULT clock_timestamp());
             CREATE INDEX ON chk_calls (created_at);
             INSERT INTO chk_calls (id, booked, made) VALUES (1, true, false), (2, false, false);
             SELECT integrity.add_check('booked_not_made',
               'SELECT id::text, jsonb_build_object(''id'', id) FROM chk_calls
                 WHERE created_at >= $1 AND booked AND NOT made',
               fix => 'UPDATE chk_calls SET made = true WHERE id = $1::int',
               checked => 'SELECT count(*) FROM chk_calls WHERE created_at >= $1');",
        )
        .unwrap();
        assert_eq!(
            one::<bool>("SELECT incremental FROM integrity.checks WHERE name = 'booked_not_made'"),
            Some(true)
        );
        // First run: $1 is -infinity, all rows.
        assert_eq!(run("booked_not_made"), "1/1/0/0/ok");
        assert_eq!(
            one::<i64>(
                "SELECT checked FROM integrity.check_runs WHERE check_name = 'booked_not_made'"
            ),
            Some(2)
        );
        // Later runs look only at rows since the last successful run; an
        // incremental check does not resolve what it no longer sees.
        Spi::run(
            "INSERT INTO chk_calls (id, booked, made) VALUES (3, true, false), (4, true, true)",
        )
        .unwrap();
        assert_eq!(run("booked_not_made"), "1/1/0/0/ok");
        assert_eq!(
            text("SELECT string_agg(checked::text, ',' ORDER BY id) FROM integrity.check_runs WHERE check_name = 'booked_not_made'"),
            "2,2"
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM integrity.alerts WHERE check_name = 'booked_not_made' AND resolved_at IS NULL"),
            Some(2)
        );
        // auto_fix: the fix corrects each violation, logged as auto-corrected;
        // the open alert of a subject it fixes is resolved with it.
        Spi::run(
            "UPDATE integrity.checks SET auto_fix = true, last_success_at = NULL WHERE name = 'booked_not_made'",
        )
        .unwrap();
        assert_eq!(run("booked_not_made"), "2/0/2/0/ok");
        assert_eq!(
            one::<i64>("SELECT count(*) FROM chk_calls WHERE booked AND NOT made"),
            Some(0)
        );
        assert_eq!(
            text("SELECT string_agg(subject || ' ' || auto_corrected || ' ' || resolution, ',' ORDER BY id)
                    FROM integrity.alerts WHERE check_name = 'booked_not_made'"),
            "1 false auto-fixed,3 false auto-fixed,1 true auto-fixed,3 true auto-fixed"
        );
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT integrity.report_period('f', 'p', NULL, '1 day')::text || ' ' || \
                        integrity.report_period('f', 'p', '1000 years', '1 day')::text"
            )
            .unwrap()
            .as_deref(),
            Some("1 day 1000 years")
        );
        // NULL is the default period, and 1,000 years the longest.
        assert_eq!(
            json("SELECT integrity.consistency_report(NULL)")["checks"],
            json("SELECT integrity.consistency_report()")["checks"]
        );
        assert!(
            json("SELECT integrity.consistency_report('1000 years')")["checks"]["booked_not_made"]
                ["runs"]
                .is_number()
        );
        let report = json("SELECT integrity.consistency_report()");
        let c = &report["checks"]["booked_not_made"];
        assert_eq!(c["runs"], 3);
        assert_eq!(c["violations"], 4);
        assert_eq!(c["fixed"], 2);
        assert_eq!(c["checked"], 8);
        assert_eq!(c["auto_corrected"], 2);
        assert!(report["open_alerts"]["warning"].is_number());
        assert!(report["consistency_rate"].is_number(), "{report}");
    }

    #[pg_test]
    fn a_failing_or_slow_check_is_reported_and_the_others_run() {
        Spi::run(
            "CREATE TABLE chk_n (id int);
             INSERT INTO chk_n VALUES (0);
             SELECT integrity.add_check('a_divides', 'SELECT (1 / id)::text, ''{}''::jsonb FROM chk_n');
             SELECT integrity.add_check('b_sleeps', 'SELECT pg_sleep(5)::text, ''{}''::jsonb');
             SELECT integrity.add_check('c_fine', 'SELECT id::text, ''{}''::jsonb FROM chk_n');
             SET LOCAL integrity.check_timeout = '200ms';",
        )
        .unwrap();
        let started = std::time::Instant::now();
        let out = text(
            "SELECT string_agg(check_name || ' ' || coalesce(sqlstate, 'ok') || ' ' || coalesce(violations::text, '-'), ', ' ORDER BY check_name)
               FROM integrity.run_checks(ARRAY['a_divides', 'b_sleeps', 'c_fine'])",
        );
        assert_eq!(out, "a_divides 22012 -, b_sleeps 57014 -, c_fine ok 1");
        assert!(
            started.elapsed().as_secs() < 4,
            "the slow check was not cut off"
        );
        assert!(
            text("SELECT last_error FROM integrity.checks WHERE name = 'b_sleeps'")
                .contains("check_timeout")
        );
        assert_eq!(
            text("SELECT status FROM integrity.check_status WHERE name = 'a_divides'"),
            "error"
        );
        // The failed checks left no alerts; the fine one did.
        assert_eq!(
            text("SELECT string_agg(check_name, ',') FROM integrity.alerts WHERE check_name IN ('a_divides', 'b_sleeps', 'c_fine')"),
            "c_fine"
        );
        // A NULL subject fails that check, with 22004.
        Spi::run("SELECT integrity.add_check('d_null', 'SELECT NULL::text, ''{}''::jsonb')")
            .unwrap();
        assert_eq!(run("d_null"), "-/0/0/0/22004");
        // So does a checked count that is negative (22023), NULL or no
        // row at all (22004); none is stored as a count.
        Spi::run(
            "SELECT integrity.add_check('e_neg', 'SELECT ''x'', ''{}''::jsonb WHERE false',
                                        checked => 'SELECT -3::bigint');
             SELECT integrity.add_check('f_nullcount', 'SELECT ''x'', ''{}''::jsonb WHERE false',
                                        checked => 'SELECT NULL::bigint');
             SELECT integrity.add_check('g_norow', 'SELECT ''x'', ''{}''::jsonb WHERE false',
                                        checked => 'SELECT 1::bigint WHERE false');
             SELECT integrity.add_check('h_zero', 'SELECT ''x'', ''{}''::jsonb WHERE false',
                                        checked => 'SELECT 0::bigint');",
        )
        .unwrap();
        assert_eq!(run("e_neg"), "-/0/0/0/22023");
        assert_eq!(run("f_nullcount"), "-/0/0/0/22004");
        assert_eq!(run("g_norow"), "-/0/0/0/22004");
        assert_eq!(run("h_zero"), "0/0/0/0/ok");
        assert_eq!(
            one::<i64>("SELECT count(*) FROM integrity.check_runs WHERE check_name IN ('e_neg', 'f_nullcount', 'g_norow') AND checked IS NOT NULL"),
            Some(0)
        );
        assert!(
            text("SELECT last_error FROM integrity.checks WHERE name = 'e_neg'")
                .contains("returned -3, not a count"),
        );
        // The built-in checks run clean on empty tables.
        assert_eq!(run("integrity.overlapping_bookings"), "0/0/0/0/ok");
        assert_eq!(run("integrity.stuck_idempotency_keys"), "0/0/0/0/ok");
    }
}

//! Circuit breakers shared by every client (resilience4j's model): closed →
//! open when the failure (or slow-call) rate of a count-based window of
//! recent calls reaches its threshold; open → half-open after `open_for`,
//! when exactly `half_open_calls` probes are admitted across all clients;
//! half-open → closed or open again by the probes' outcome.
//!
//! The hot path writes nothing: `breaker_allow` on a closed breaker (or an
//! unknown key) is one read of the row with no lock and no WAL, so any
//! number of callers proceed in parallel. Writes happen where the state
//! moves (admitting a probe, a breaker turning half-open) and in
//! `breaker_record`, which locks its breaker's row.

use crate::direct::{Rel, Spec, Ty};
use crate::errors::{raise, required, text_arg, Kind};
use crate::jsonb::{Builder, Jsonb};
use crate::plans::{read, run, Stmt};
use pgrx::datum::Interval;
use pgrx::pg_sys;
use pgrx::prelude::*;

pgrx::extension_sql_file!(
    "../sql/breaker.sql",
    name = "breaker_tables",
    requires = ["bootstrap"]
);
pgrx::extension_sql_file!(
    "../sql/breaker_api.sql",
    name = "breaker_api",
    requires = [
        "breaker_tables",
        breaker_allow,
        breaker_record,
        breaker_configure,
        breaker_stats
    ]
);

fn key_arg<'a>(function: &'static str, key: Option<&'a str>) -> &'a str {
    text_arg(function, "key", key, 255)
}

static STATE: Stmt = Stmt {
    sql: "SELECT state::text,
                 GREATEST(0, CEIL(EXTRACT(epoch FROM opened_at + open_for - pg_catalog.now()) * 1000))::bigint
            FROM integrity.circuit_breakers WHERE key = $1",
    args: &[pg_sys::TEXTOID],
    writes: false,
};

static TO_HALF_OPEN: Stmt = Stmt {
    sql: "UPDATE integrity.circuit_breakers
             SET state = 'half_open', half_open_at = pg_catalog.now(), probes_admitted = 1,
                 probe_outcomes = '', updated_at = pg_catalog.now()
           WHERE key = $1 AND state = 'open' AND opened_at + open_for <= pg_catalog.now()
       RETURNING key",
    args: &[pg_sys::TEXTOID],
    writes: true,
};

static ADMIT_PROBE: Stmt = Stmt {
    sql: "UPDATE integrity.circuit_breakers
             SET probes_admitted = probes_admitted + 1, updated_at = pg_catalog.now()
           WHERE key = $1 AND state = 'half_open' AND probes_admitted < half_open_calls
       RETURNING probes_admitted",
    args: &[pg_sys::TEXTOID],
    writes: true,
};

static EVENT: Stmt = Stmt {
    sql: "INSERT INTO integrity.breaker_events (key, from_state, to_state, details)
          VALUES ($1, $2::integrity.breaker_state, $3::integrity.breaker_state, $4)",
    args: &[
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::JSONBOID,
    ],
    writes: true,
};

thread_local! {
    static CLOSED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn answer(allowed: bool, state: &str, probe: bool, retry_after_ms: Option<i64>) -> Jsonb {
    let mut b = Builder::new();
    b.begin_object()
        .key("allowed")
        .bool(allowed)
        .key("state")
        .string(state);
    if probe {
        b.key("probe").bool(true);
    }
    if let Some(ms) = retry_after_ms {
        b.key("retry_after_ms").int(ms);
    }
    b.end().finish()
}

/// How long a caller refused by a half-open breaker (its probes all out)
/// should wait before asking again.
const PROBES_OUT_RETRY_MS: i64 = 1000;

/// `integrity.circuit_breakers` as integrity creates it, for the direct
/// read of `breaker_allow`.
static BREAKERS: Spec = Spec {
    slot: 2,
    table: c"circuit_breakers",
    columns: &[
        "key",
        "state",
        "window_size",
        "minimum_calls",
        "failure_rate",
        "slow_call_ms",
        "slow_call_rate",
        "open_for",
        "half_open_calls",
        "review_on_open",
        "outcomes",
        "probes_admitted",
        "probe_outcomes",
        "opened_at",
        "half_open_at",
        "closed_at",
        "last_failure_at",
        "updated_at",
    ],
    indexes: &[c"circuit_breakers_pkey"],
    types: &[
        Ty::Base(pg_sys::TEXTOID),            // key
        Ty::Ours(c"integrity.breaker_state"), // state
        Ty::Base(pg_sys::INT4OID),            // window_size
        Ty::Base(pg_sys::INT4OID),            // minimum_calls
        Ty::Base(pg_sys::FLOAT4OID),          // failure_rate
        Ty::Base(pg_sys::INT4OID),            // slow_call_ms
        Ty::Base(pg_sys::FLOAT4OID),          // slow_call_rate
        Ty::Base(pg_sys::INTERVALOID),        // open_for
        Ty::Base(pg_sys::INT4OID),            // half_open_calls
        Ty::Base(pg_sys::BOOLOID),            // review_on_open
        Ty::Base(pg_sys::TEXTOID),            // outcomes
        Ty::Base(pg_sys::INT4OID),            // probes_admitted
        Ty::Base(pg_sys::TEXTOID),            // probe_outcomes
        Ty::Base(pg_sys::TIMESTAMPTZOID),     // opened_at
        Ty::Base(pg_sys::TIMESTAMPTZOID),     // half_open_at
        Ty::Base(pg_sys::TIMESTAMPTZOID),     // closed_at
        Ty::Base(pg_sys::TIMESTAMPTZOID),     // last_failure_at
        Ty::Base(pg_sys::TIMESTAMPTZOID),     // updated_at
    ],
    keys: &[&["key"]],
    checks: &[],
    policy: "",
};
const STATE_COL: usize = 1;
const OPEN_FOR_COL: usize = 7;
const OPENED_AT_COL: usize = 13;

thread_local! {
    /// (state type, OID of its label 'closed', of 'open').
    static LABELS: std::cell::Cell<Option<(pg_sys::Oid, pg_sys::Oid, pg_sys::Oid)>> =
        const { std::cell::Cell::new(None) };
}

/// The OIDs of the labels 'closed' and 'open' of enum type `typ`.
fn labels(typ: pg_sys::Oid) -> (pg_sys::Oid, pg_sys::Oid) {
    if let Some((t, c, o)) = LABELS.with(|l| l.get()) {
        if t == typ {
            return (c, o);
        }
    }
    let label = |name: &std::ffi::CStr| -> pg_sys::Oid {
        // SAFETY: enum_in of a label of the enum type, returning its OID.
        unsafe {
            let d = pgrx::direct_function_call_as_datum(
                pg_sys::enum_in,
                &[Some(pg_sys::Datum::from(name.as_ptr())), typ.into_datum()],
            );
            pg_sys::Oid::from(d.map_or(0, |d| d.value() as u32))
        }
    };
    let (c, o) = (label(c"closed"), label(c"open"));
    LABELS.with(|l| l.set(Some((typ, c, o))));
    (c, o)
}

/// What the direct read of a breaker found.
enum Seen {
    /// No row, or closed: allowed.
    Closed,
    /// Open, this many ms still to wait (> 0).
    Open(i64),
    /// Anything else (half-open, open and due for probes): SQL decides.
    Other,
}

/// Read `key`'s breaker as a SELECT would, without SQL: the primary-key
/// probe of `crate::direct`. `None` when the table is not as integrity
/// created it or the role may not read it (SQL then does what it does).
fn seen(key: &str) -> Option<Seen> {
    let rel = Rel::open(&BREAKERS, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
    let nil = pgrx::datum::Uuid::from_bytes([0; 16]);
    if !rel.known() || !rel.allowed(pg_sys::ACL_SELECT as pg_sys::AclMode, nil) {
        rel.close();
        return None;
    }
    let k = key.into_datum()?;
    // SAFETY: the snapshot is registered around the probe; the row's values
    // are read while the slot holds it.
    let found = unsafe {
        // The calling statement's snapshot, as a STABLE function would
        // read (taking a new one costs more than the read under load).
        let snapshot = pg_sys::RegisterSnapshot(if pg_sys::ActiveSnapshotSet() {
            pg_sys::GetActiveSnapshot()
        } else {
            pg_sys::GetTransactionSnapshot()
        });
        let found = rel.fetch(0, &[k], snapshot, |slot| {
            pg_sys::slot_getallattrs(slot);
            let at = |i: usize| {
                let c = rel.col(i);
                (!*(*slot).tts_isnull.add(c)).then(|| *(*slot).tts_values.add(c))
            };
            let desc = (*slot).tts_tupleDescriptor;
            let typ = (*desc).attrs.as_slice((*desc).natts as usize)[rel.col(STATE_COL)].atttypid;
            let (closed, open) = labels(typ);
            let state = at(STATE_COL).map(|d| pg_sys::Oid::from(d.value() as u32));
            if state == Some(closed) {
                return Seen::Closed;
            }
            if state != Some(open) {
                return Seen::Other;
            }
            let (Some(opened), Some(open_for)) = (at(OPENED_AT_COL), at(OPEN_FOR_COL)) else {
                return Seen::Other;
            };
            let Some(open_for) = Interval::from_datum(open_for, false) else {
                return Seen::Other;
            };
            let until = crate::direct::plus(opened.value() as i64, open_for);
            let now = pg_sys::GetCurrentTransactionStartTimestamp();
            let wait_us = until.value() as i64 - now;
            if wait_us > 0 {
                Seen::Open((wait_us + 999) / 1000)
            } else {
                Seen::Other
            }
        });
        pg_sys::UnregisterSnapshot(snapshot);
        found
    };
    rel.close();
    Some(found.unwrap_or(Seen::Closed))
}

/// May a call to `key`'s service go ahead? `{"allowed":…,"state":…}`, with
/// `"probe":true` for an admitted half-open probe and `retry_after_ms` when
/// refused. Writes nothing while the breaker is closed.
///
/// Its `search_path` is pinned around the SQL of the slow path only, not in
/// its definition (as the trigger functions do): the hot path runs no SQL,
/// and a SET in the definition costs more than the direct read itself.
#[pg_extern(volatile, parallel_unsafe)]
fn breaker_allow(key: Option<&str>) -> Jsonb {
    const F: &str = "integrity.breaker_allow";
    let key = key_arg(F, key);
    // The hot path: a closed (or unknown) breaker, or one still open, is
    // answered from a direct read of its row.
    match seen(key) {
        Some(Seen::Closed) => {
            return Jsonb::cached(&CLOSED, || answer(true, "closed", false, None))
        }
        Some(Seen::Open(ms)) => return answer(false, "open", false, Some(ms)),
        _ => {}
    }
    crate::plans::pinned(allow_by_sql_of(key))
}

/// The slow path of `breaker_allow`, by SQL: a half-open breaker, one due
/// for probes, or a table not as integrity created it.
fn allow_by_sql_of(key: &str) -> impl FnOnce() -> Jsonb + '_ {
    move || {
        Spi::connect_mut(|client| {
            let (state, wait_ms) = {
                let t = read(client, &STATE, None, &[key.into()]);
                let row = t.first();
                (
                    row.get::<String>(1).ok().flatten(),
                    row.get::<i64>(2).ok().flatten().unwrap_or(0),
                )
            };
            match state.as_deref() {
                None | Some("closed") => {
                    Jsonb::cached(&CLOSED, || answer(true, "closed", false, None))
                }
                Some("open") if wait_ms > 0 => answer(false, "open", false, Some(wait_ms)),
                Some(state) => {
                    if state == "open"
                        && !run(client, &TO_HALF_OPEN, None, &[key.into()]).is_empty()
                    {
                        run(
                            client,
                            &EVENT,
                            None,
                            &[
                                key.into(),
                                "open".into(),
                                "half_open".into(),
                                Jsonb::from_text("{}").into(),
                            ],
                        );
                        return answer(true, "half_open", true, None);
                    }
                    if !run(client, &ADMIT_PROBE, None, &[key.into()]).is_empty() {
                        answer(true, "half_open", true, None)
                    } else {
                        answer(false, "half_open", false, Some(PROBES_OUT_RETRY_MS))
                    }
                }
            }
        })
    }
}

static ENSURE: Stmt = Stmt {
    sql: "INSERT INTO integrity.circuit_breakers (key) VALUES ($1) ON CONFLICT (key) DO NOTHING",
    args: &[pg_sys::TEXTOID],
    writes: true,
};

static LOCK: Stmt = Stmt {
    sql: "SELECT state::text, outcomes, window_size, minimum_calls, failure_rate::float8,
                 slow_call_ms, slow_call_rate::float8, half_open_calls, probe_outcomes, review_on_open
            FROM integrity.circuit_breakers WHERE key = $1 FOR UPDATE",
    args: &[pg_sys::TEXTOID],
    writes: true,
};

static SAVE: Stmt = Stmt {
    sql: "UPDATE integrity.circuit_breakers
             SET state = $2::integrity.breaker_state, outcomes = $3, probe_outcomes = $4,
                 opened_at = CASE WHEN $2 = 'open' AND state <> 'open' THEN pg_catalog.now() ELSE opened_at END,
                 closed_at = CASE WHEN $2 = 'closed' AND state <> 'closed' THEN pg_catalog.now() ELSE closed_at END,
                 last_failure_at = CASE WHEN $5 THEN pg_catalog.now() ELSE last_failure_at END,
                 probes_admitted = CASE WHEN $2 = 'half_open' THEN probes_admitted ELSE 0 END,
                 updated_at = pg_catalog.now()
           WHERE key = $1",
    args: &[
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::BOOLOID,
    ],
    writes: true,
};

/// Failure and slow rates of a run of outcome letters.
fn rates(outcomes: &str) -> (f64, f64) {
    let n = outcomes.len().max(1) as f64;
    let fails = outcomes
        .bytes()
        .filter(|b| matches!(b, b'f' | b'x'))
        .count() as f64;
    let slow = outcomes
        .bytes()
        .filter(|b| matches!(b, b'w' | b'x'))
        .count() as f64;
    (fails / n, slow / n)
}

/// Record a call's outcome; returns the breaker's state afterwards.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn breaker_record(
    key: Option<&str>,
    success: Option<bool>,
    duration_ms: default!(Option<i32>, "NULL"),
) -> String {
    const F: &str = "integrity.breaker_record";
    let key = key_arg(F, key);
    let success = required(success, F, "success");
    if duration_ms.is_some_and(|d| d < 0) {
        raise(
            Kind::InvalidParameter,
            F,
            "duration_ms must not be negative",
            "Pass the call's duration in milliseconds, or NULL.",
        );
    }
    Spi::connect_mut(|client| {
        run(client, &ENSURE, None, &[key.into()]);
        let t = run(client, &LOCK, None, &[key.into()]);
        let row = t.first();
        let state: String = row.get(1).ok().flatten().unwrap_or_else(|| "closed".into());
        let outcomes: String = row.get(2).ok().flatten().unwrap_or_default();
        let window = row.get::<i32>(3).ok().flatten().unwrap_or(20) as usize;
        let minimum = row.get::<i32>(4).ok().flatten().unwrap_or(10) as usize;
        let threshold: f64 = row.get(5).ok().flatten().unwrap_or(0.5);
        let slow_ms: Option<i32> = row.get(6).ok().flatten();
        let slow_threshold: f64 = row.get(7).ok().flatten().unwrap_or(1.0);
        let probes = row.get::<i32>(8).ok().flatten().unwrap_or(3) as usize;
        let probe_outcomes: String = row.get(9).ok().flatten().unwrap_or_default();
        let review: bool = row.get(10).ok().flatten().unwrap_or(false);
        let slow = slow_ms.is_some_and(|t| duration_ms.is_some_and(|d| d >= t));
        let letter = match (success, slow) {
            (true, false) => 's',
            (false, false) => 'f',
            (true, true) => 'w',
            (false, true) => 'x',
        };
        let trips = |o: &str| {
            let (f, s) = rates(o);
            f >= threshold || (slow_ms.is_some() && s >= slow_threshold)
        };
        let (next, outcomes, probe_outcomes) = match state.as_str() {
            "closed" => {
                let mut o = outcomes;
                o.push(letter);
                if o.len() > window {
                    o.drain(..o.len() - window);
                }
                if o.len() >= minimum && trips(&o) {
                    ("open", o, String::new())
                } else {
                    ("closed", o, String::new())
                }
            }
            "half_open" => {
                let mut p = probe_outcomes;
                p.push(letter);
                if p.len() < probes {
                    ("half_open", String::new(), p)
                } else if trips(&p) {
                    ("open", p, String::new())
                } else {
                    ("closed", String::new(), p)
                }
            }
            // A late result from before the breaker opened: nothing to do.
            _ => return state,
        };
        // The outcomes that decided: those that opened it (window or
        // probes, in `outcomes`), else the probes that closed it.
        let basis = if next != "open" && state == "half_open" {
            probe_outcomes.clone()
        } else {
            outcomes.clone()
        };
        run(
            client,
            &SAVE,
            None,
            &[
                key.into(),
                next.into(),
                (if next == "open" {
                    ""
                } else {
                    outcomes.as_str()
                })
                .into(),
                probe_outcomes.as_str().into(),
                (!success).into(),
            ],
        );
        if next != state {
            let (f, s) = rates(&basis);
            let details = Builder::new()
                .begin_object()
                .key("calls")
                .int(basis.len() as i64)
                .key("failure_rate_pct")
                .int((f * 100.0).round() as i64)
                .key("slow_rate_pct")
                .int((s * 100.0).round() as i64)
                .end()
                .finish();
            run(
                client,
                &EVENT,
                None,
                &[
                    key.into(),
                    state.as_str().into(),
                    next.into(),
                    details.into(),
                ],
            );
            if next == "open" && review {
                // A breaker is every tenant's, so the item it opens is no
                // tenant's (org_id all zeros), written whatever tenant the
                // session is scoped to: under integrity.org_id row security
                // refused it, and the breaker could not open.
                crate::plans::with_settings(&[(c"integrity.org_id", c"")], || {
                    crate::review::enqueue_item(
                        client,
                        pgrx::datum::Uuid::from_bytes([0; 16]),
                        "breaker",
                        key,
                        "opened",
                        details,
                        0,
                    )
                });
            }
        }
        next.to_string()
    })
}

static CONFIGURE: Stmt = Stmt {
    sql: "INSERT INTO integrity.circuit_breakers AS b
              (key, window_size, minimum_calls, failure_rate, slow_call_ms, slow_call_rate,
               open_for, half_open_calls, review_on_open)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
          ON CONFLICT (key) DO UPDATE SET
              window_size = EXCLUDED.window_size, minimum_calls = EXCLUDED.minimum_calls,
              failure_rate = EXCLUDED.failure_rate, slow_call_ms = EXCLUDED.slow_call_ms,
              slow_call_rate = EXCLUDED.slow_call_rate, open_for = EXCLUDED.open_for,
              half_open_calls = EXCLUDED.half_open_calls, review_on_open = EXCLUDED.review_on_open,
              outcomes = pg_catalog.right(b.outcomes, EXCLUDED.window_size),
              updated_at = pg_catalog.now()
          RETURNING pg_catalog.to_jsonb(b) - 'outcomes' - 'probe_outcomes'",
    args: &[
        pg_sys::TEXTOID,
        pg_sys::INT4OID,
        pg_sys::INT4OID,
        pg_sys::FLOAT4OID,
        pg_sys::INT4OID,
        pg_sys::FLOAT4OID,
        pg_sys::INTERVALOID,
        pg_sys::INT4OID,
        pg_sys::BOOLOID,
    ],
    writes: true,
};

fn bad(what: String) -> ! {
    raise(
        Kind::InvalidParameter,
        "integrity.breaker_configure",
        what,
        "Rates are in (0, 1], sizes at least 1, minimum_calls at most window_size, open_for above zero.",
    )
}

/// Configure `key`'s breaker (creating it closed); returns its configuration.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn breaker_configure(
    key: Option<&str>,
    window_size: default!(Option<i32>, "20"),
    minimum_calls: default!(Option<i32>, "10"),
    failure_rate: default!(Option<f32>, "0.5"),
    slow_call_ms: default!(Option<i32>, "NULL"),
    slow_call_rate: default!(Option<f32>, "1.0"),
    open_for: default!(Option<Interval>, "'30 seconds'"),
    half_open_calls: default!(Option<i32>, "3"),
    review_on_open: default!(Option<bool>, "false"),
) -> Jsonb {
    const F: &str = "integrity.breaker_configure";
    let key = key_arg(F, key);
    let window_size = required(window_size, F, "window_size");
    let minimum_calls = required(minimum_calls, F, "minimum_calls");
    let failure_rate = required(failure_rate, F, "failure_rate");
    let slow_call_rate = required(slow_call_rate, F, "slow_call_rate");
    let open_for = required(open_for, F, "open_for");
    let half_open_calls = required(half_open_calls, F, "half_open_calls");
    if window_size < 1 || window_size > 10_000 {
        bad(format!(
            "window_size must be between 1 and 10000, got {window_size}"
        ));
    }
    if minimum_calls < 1 || minimum_calls > window_size {
        bad(format!(
            "minimum_calls must be between 1 and window_size ({window_size}), got {minimum_calls}"
        ));
    }
    for (name, r) in [
        ("failure_rate", failure_rate),
        ("slow_call_rate", slow_call_rate),
    ] {
        if !(r > 0.0 && r <= 1.0) {
            bad(format!("{name} must be in (0, 1], got {r}"));
        }
    }
    if slow_call_ms.is_some_and(|s| s < 0) {
        bad("slow_call_ms must not be negative".into());
    }
    if crate::errors::span_us(F, "open_for", open_for) <= 0 {
        bad(format!("open_for must be above zero, got {open_for}"));
    }
    // Added to now() when the breaker opens, in breaker_record.
    let open_for = crate::errors::not_too_long(F, "open_for", open_for);
    if !(1..=10_000).contains(&half_open_calls) {
        bad(format!(
            "half_open_calls must be between 1 and 10000, got {half_open_calls}"
        ));
    }
    Spi::connect_mut(|client| {
        let t = run(
            client,
            &CONFIGURE,
            None,
            &[
                key.into(),
                window_size.into(),
                minimum_calls.into(),
                failure_rate.into(),
                slow_call_ms.into(),
                slow_call_rate.into(),
                open_for.into(),
                half_open_calls.into(),
                review_on_open.unwrap_or(false).into(),
            ],
        );
        let d = t
            .first()
            .get_datum_by_ordinal(1)
            .ok()
            .flatten()
            .unwrap_or_else(|| crate::errors::bug("breaker_configure returned nothing"));
        Jsonb::from_spi(d)
    })
}

static STATS: Stmt = Stmt {
    sql: "SELECT COALESCE(
              (SELECT pg_catalog.to_jsonb(b)
                      || pg_catalog.jsonb_build_object(
                             'configured', true,
                             'times_opened', (SELECT pg_catalog.count(*) FROM integrity.breaker_events e
                                               WHERE e.key = b.key AND e.to_state = 'open'),
                             'last_event', (SELECT pg_catalog.to_jsonb(e) - 'key' FROM integrity.breaker_events e
                                             WHERE e.key = b.key ORDER BY e.id DESC LIMIT 1))
                 FROM integrity.breakers b WHERE b.key = $1),
              pg_catalog.jsonb_build_object('key', $1, 'state', 'closed', 'configured', false))",
    args: &[pg_sys::TEXTOID],
    writes: false,
};

/// A breaker's state, window, configuration and history, as jsonb.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn breaker_stats(key: Option<&str>) -> Jsonb {
    let key = key_arg("integrity.breaker_stats", key);
    Spi::connect(|client| {
        let d = read(client, &STATS, None, &[key.into()])
            .first()
            .get_datum_by_ordinal(1)
            .ok()
            .flatten()
            .unwrap_or_else(|| crate::errors::bug("breaker_stats returned nothing"));
        Jsonb::from_spi(d)
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testutil::{json, one, sqlstate, text};
    use pgrx::prelude::*;

    fn allow(key: &str) -> String {
        let a = json(&format!("SELECT integrity.breaker_allow('{key}')"));
        format!(
            "{} {}{}",
            a["allowed"],
            a["state"].as_str().unwrap_or("?"),
            if a["probe"] == true { " probe" } else { "" }
        )
    }

    fn record(key: &str, ok: bool) -> String {
        text(&format!("SELECT integrity.breaker_record('{key}', {ok})"))
    }

    #[pg_test]
    fn a_breaker_opens_probes_and_closes() {
        // Unknown key: closed, and nothing written.
        assert_eq!(allow("svc"), "true closed");
        assert_eq!(
            one::<i64>("SELECT count(*) FROM integrity.circuit_breakers"),
            Some(0)
        );
        Spi::run(
            "SELECT integrity.breaker_configure('svc', window_size => 4, minimum_calls => 3,
                                                failure_rate => 0.5, half_open_calls => 2)",
        )
        .unwrap();
        assert_eq!(record("svc", false), "closed");
        assert_eq!(record("svc", true), "closed");
        // 2 failures of 3 calls: 67 % >= 50 %.
        assert_eq!(record("svc", false), "open");
        let a = json("SELECT integrity.breaker_allow('svc')");
        assert_eq!(
            (a["allowed"].clone(), a["state"].clone()),
            (false.into(), "open".into())
        );
        assert!(a["retry_after_ms"].as_i64().unwrap() > 29_000);
        // A late result changes nothing.
        assert_eq!(record("svc", true), "open");
        // open_for passes: exactly 2 probes, then refusals.
        Spi::run("UPDATE integrity.circuit_breakers SET opened_at = now() - interval '31 seconds'")
            .unwrap();
        assert_eq!(allow("svc"), "true half_open probe");
        assert_eq!(allow("svc"), "true half_open probe");
        assert_eq!(allow("svc"), "false half_open");
        // One probe fails of two: 50 % -> open again.
        assert_eq!(record("svc", true), "half_open");
        assert_eq!(record("svc", false), "open");
        Spi::run("UPDATE integrity.circuit_breakers SET opened_at = now() - interval '31 seconds'")
            .unwrap();
        assert_eq!(allow("svc"), "true half_open probe");
        assert_eq!(allow("svc"), "true half_open probe");
        assert_eq!(record("svc", true), "half_open");
        assert_eq!(record("svc", true), "closed");
        assert_eq!(allow("svc"), "true closed");
        assert_eq!(
            text("SELECT string_agg(from_state || '>' || to_state, ',' ORDER BY id) FROM integrity.breaker_events"),
            "closed>open,open>half_open,half_open>open,open>half_open,half_open>closed"
        );
        let s = json("SELECT integrity.breaker_stats('svc')");
        assert_eq!(
            (s["state"].clone(), s["times_opened"].clone()),
            ("closed".into(), 2.into())
        );
        assert_eq!(
            json("SELECT integrity.breaker_stats('never')")["configured"],
            false
        );
        assert_eq!(
            text("SELECT state::text FROM integrity.breakers WHERE key = 'svc'"),
            "closed"
        );
    }

    #[pg_test]
    fn a_breaker_opens_and_asks_for_review_whatever_tenant_the_session_is_scoped_to() {
        Spi::run("CREATE ROLE integrity_test_breaker_app").unwrap();
        Spi::run("SELECT integrity.grant_access('integrity_test_breaker_app')").unwrap();
        Spi::run(
            "SELECT integrity.breaker_configure('tenanted', window_size => 1, minimum_calls => 1,
                 failure_rate => 1.0, review_on_open => true)",
        )
        .unwrap();
        Spi::run("SET LOCAL ROLE integrity_test_breaker_app").unwrap();
        Spi::run("SET LOCAL integrity.org_id = '0000000a-0000-0000-0000-000000000000'").unwrap();
        // Row security let this tenant write no item of org 0, so the
        // failure that opens the breaker failed with 42501 and it stayed
        // closed.
        assert_eq!(
            text("SELECT integrity.breaker_record('tenanted', false)"),
            "open"
        );
        assert_eq!(allow("tenanted"), "false open");
        // The scope is the session's again: the item is no tenant's, so
        // this tenant does not see it.
        assert_eq!(
            text("SELECT current_setting('integrity.org_id')"),
            "0000000a-0000-0000-0000-000000000000"
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM integrity.review_queue"),
            Some(0)
        );
        Spi::run("RESET ROLE").unwrap();
        Spi::run("RESET integrity.org_id").unwrap();
        assert_eq!(
            text("SELECT org_id || ' ' || subject_type || ' ' || subject_id || ' ' || reason FROM integrity.review_queue"),
            "00000000-0000-0000-0000-000000000000 breaker tenanted opened"
        );
    }

    #[pg_test]
    fn slow_calls_open_and_opening_can_ask_for_review() {
        Spi::run(
            "SELECT integrity.breaker_configure('slow', window_size => 2, minimum_calls => 2,
                 slow_call_ms => 1000, slow_call_rate => 1.0, review_on_open => true)",
        )
        .unwrap();
        assert_eq!(
            text("SELECT integrity.breaker_record('slow', true, 1500)"),
            "closed"
        );
        assert_eq!(
            text("SELECT integrity.breaker_record('slow', true, 999)"),
            "closed"
        );
        assert_eq!(
            text("SELECT integrity.breaker_record('slow', true, 2000)"),
            "closed"
        );
        assert_eq!(
            text("SELECT integrity.breaker_record('slow', true, 2000)"),
            "open"
        );
        assert_eq!(
            text("SELECT subject_type || ' ' || subject_id || ' ' || reason FROM integrity.review_queue"),
            "breaker slow opened"
        );
        for (sql, state) in [
            ("SELECT integrity.breaker_allow(NULL)", "22004"),
            ("SELECT integrity.breaker_allow('')", "22023"),
            ("SELECT integrity.breaker_record('k', NULL)", "22004"),
            ("SELECT integrity.breaker_record('k', true, -1)", "22023"),
            ("SELECT integrity.breaker_stats(NULL)", "22004"),
            (
                "SELECT integrity.breaker_configure('k', window_size => 0)",
                "22023",
            ),
            (
                "SELECT integrity.breaker_configure('k', minimum_calls => 30)",
                "22023",
            ),
            (
                "SELECT integrity.breaker_configure('k', failure_rate => 0)",
                "22023",
            ),
            (
                "SELECT integrity.breaker_configure('k', failure_rate => 1.5)",
                "22023",
            ),
            (
                "SELECT integrity.breaker_configure('k', slow_call_rate => -1)",
                "22023",
            ),
            (
                "SELECT integrity.breaker_configure('k', open_for => '0')",
                "22023",
            ),
            // Added to now() when the breaker opens: bounded here.
            (
                "SELECT integrity.breaker_configure('k', open_for => '1000000 years')",
                "22008",
            ),
            (
                "SELECT integrity.breaker_configure('k', half_open_calls => 0)",
                "22023",
            ),
            (
                "SELECT integrity.breaker_configure('k', slow_call_ms => -5)",
                "22023",
            ),
            (
                "SELECT integrity.breaker_configure('k', window_size => NULL)",
                "22004",
            ),
        ] {
            assert_eq!(sqlstate(sql), state, "{sql}");
        }
    }
}

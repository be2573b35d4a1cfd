//! Idempotency keys: a request retried with the same key has its effect
//! once, and the stored response is replayed.
//!
//! `idem_begin` claims a key with `INSERT … ON CONFLICT DO NOTHING` on the
//! primary key. In single-transaction use (begin → business write →
//! complete → COMMIT) a concurrent duplicate's insert waits on the first
//! transaction's uncommitted row, as a unique index makes it: if the first
//! commits, the duplicate finds the completed key and replays it; if the
//! first rolls back, its row never existed and the duplicate starts. So
//! there is no `in_progress` window in that mode. In multi-transaction use
//! the key stays `processing` under a lease (`locked_until`); duplicates
//! get `in_progress` until the lease runs out, then `resumed` with the
//! holder's last `recovery_point`.

use crate::direct::xact_snapshot;
use crate::errors::{raise, required, Kind, OrBug};
use crate::jsonb::Builder;
use crate::jsonb::Jsonb;
use crate::keys::{advisory_lock, advisory_unlock, fingerprint_of_jsonb, lock_key_of, uuid_text};
use crate::plans::{pinned, run, Stmt};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// The hot paths without SQL.
mod direct;
/// Keys begun in this transaction, written when they settle or at commit.
mod pending;

pgrx::extension_sql_file!(
    "../sql/idempotency.sql",
    name = "idempotency_tables",
    requires = ["bootstrap"]
);
pgrx::extension_sql_file!(
    "../sql/idempotency_api.sql",
    name = "idempotency_api",
    requires = [
        "idempotency_tables",
        idem_begin,
        idem_checkpoint,
        idem_complete,
        idem_fail,
        purge_idempotency_keys
    ]
);

const UUID: Oid = pg_sys::UUIDOID;
const TEXT: Oid = pg_sys::TEXTOID;
const INTERVAL: Oid = pg_sys::INTERVALOID;
const JSONB: Oid = pg_sys::JSONBOID;
const INT4: Oid = pg_sys::INT4OID;
const BOOL: Oid = pg_sys::BOOLOID;

/// Longest key accepted, in bytes (Stripe's limit).
const MAX_KEY_BYTES: usize = 255;

/// The columns `KeyRow` reads, for `PEEK` and `EXISTING`.
macro_rules! key_row_select {
    () => {
        "SELECT k.fingerprint, k.status, k.retryable, k.recovery_point,
                k.expires_at <= pg_catalog.clock_timestamp() AS expired,
                pg_catalog.ceil(pg_catalog.date_part('epoch',
                    k.locked_until - pg_catalog.clock_timestamp()) * 1000)::int8 AS lease_left_ms,
                pg_catalog.jsonb_build_object('outcome', 'replay',
                    'response_code', k.response_code, 'response', k.response) AS replay
         FROM integrity.idempotency_keys k
         WHERE k.org_id = $1 AND k.scope = $2 AND k.key = $3"
    };
}

/// The key as it stands, without locking it: a completed key (or one that
/// failed for good) is final until it expires, so a replay needs no lock
/// and writes nothing.
static PEEK: Stmt = Stmt {
    sql: key_row_select!(),
    args: &[UUID, TEXT, TEXT],
    writes: false,
};

/// A key's row as processing, counted from when it was begun ($7: now, or
/// earlier in this transaction for a key written at commit or settled
/// later): one time for created_at, the lease and the expiry, so
/// expires_at - created_at is exactly the ttl, as the direct path writes it.
/// Its arguments: org_id, scope, key, fingerprint, lease, ttl, now.
static CLAIM: Stmt = Stmt {
    sql: "INSERT INTO integrity.idempotency_keys AS k
              (org_id, scope, key, fingerprint, lease, locked_until, expires_at, created_at)
          VALUES ($1, $2, $3, $4, $5, $7 + $5, $7 + $6, $7)
          ON CONFLICT (org_id, scope, key) DO NOTHING
          RETURNING k.attempts",
    args: CLAIM_ARGS,
    writes: true,
};

/// CLAIM's and RESTART's arguments.
const CLAIM_ARGS: &[pg_sys::Oid] = &[
    UUID,
    TEXT,
    TEXT,
    TEXT,
    INTERVAL,
    INTERVAL,
    pg_sys::TIMESTAMPTZOID,
];

/// The existing key, locked, for the outcomes that change it.
static EXISTING: Stmt = Stmt {
    sql: concat!(key_row_select!(), " FOR UPDATE"),
    args: &[UUID, TEXT, TEXT],
    writes: true,
};

/// An expired key is used afresh, as if it had never been.
static RESTART: Stmt = Stmt {
    // Counted from $7 (now), as CLAIM (it takes the same arguments).
    sql: "UPDATE integrity.idempotency_keys
          SET fingerprint = $4, status = 'processing', retryable = NULL,
              response_code = NULL, response = NULL, recovery_point = NULL,
              lease = $5, locked_until = $7 + $5, attempts = 1,
              created_at = $7, completed_at = NULL, expires_at = $7 + $6
          WHERE org_id = $1 AND scope = $2 AND key = $3",
    args: CLAIM_ARGS,
    writes: true,
};

/// A new attempt at a key: after a retryable failure ($5 = true clears the
/// recovery point) or when the holder's lease ran out (keeps it).
static RETAKE: Stmt = Stmt {
    sql: "UPDATE integrity.idempotency_keys
          SET status = 'processing', retryable = NULL, response_code = NULL, response = NULL,
              completed_at = NULL, lease = $4, locked_until = pg_catalog.clock_timestamp() + $4,
              attempts = attempts + 1,
              recovery_point = CASE WHEN $5 THEN NULL ELSE recovery_point END
          WHERE org_id = $1 AND scope = $2 AND key = $3
          RETURNING attempts",
    args: &[UUID, TEXT, TEXT, INTERVAL, BOOL],
    writes: true,
};

/// Where a key is, for the error a call on it gets.
static STATE: Stmt = Stmt {
    sql: "SELECT k.status, k.locked_until > pg_catalog.clock_timestamp()
          FROM integrity.idempotency_keys k
          WHERE k.org_id = $1 AND k.scope = $2 AND k.key = $3",
    args: &[UUID, TEXT, TEXT],
    writes: false,
};

static CHECKPOINT: Stmt = Stmt {
    sql: "UPDATE integrity.idempotency_keys k
          SET recovery_point = $4, locked_until = pg_catalog.clock_timestamp() + k.lease
          WHERE k.org_id = $1 AND k.scope = $2 AND k.key = $3
            AND k.status = 'processing' AND k.locked_until > pg_catalog.clock_timestamp()
          RETURNING pg_catalog.jsonb_build_object('ok', true, 'recovery_point', k.recovery_point,
                                                  'locked_until', k.locked_until)",
    args: &[UUID, TEXT, TEXT, TEXT],
    writes: true,
};

static COMPLETE: Stmt = Stmt {
    sql: "UPDATE integrity.idempotency_keys k
          SET status = 'completed', response_code = $4, response = $5,
              completed_at = pg_catalog.clock_timestamp(), locked_until = NULL
          WHERE k.org_id = $1 AND k.scope = $2 AND k.key = $3
            AND k.status = 'processing' AND k.locked_until > pg_catalog.clock_timestamp()
          RETURNING pg_catalog.jsonb_build_object('ok', true, 'status', k.status,
                                                  'attempts', k.attempts)",
    args: &[UUID, TEXT, TEXT, INT4, JSONB],
    writes: true,
};

static FAIL: Stmt = Stmt {
    sql:
        "UPDATE integrity.idempotency_keys k
          SET status = 'failed', retryable = $4, response = $5, response_code = $6,
              completed_at = pg_catalog.clock_timestamp(), locked_until = NULL
          WHERE k.org_id = $1 AND k.scope = $2 AND k.key = $3
            AND k.status = 'processing' AND k.locked_until > pg_catalog.clock_timestamp()
          RETURNING pg_catalog.jsonb_build_object('ok', true, 'status', k.status,
                                                  'retryable', k.retryable, 'attempts', k.attempts)",
    args: &[UUID, TEXT, TEXT, BOOL, JSONB, INT4],
    writes: true,
};

/// Deletes the expired keys, then forgets the BRIN summary of each block
/// range it deleted from (128 pages: the index's pages_per_range). A
/// vacuum frees those pages and summarizes the ranges again from what is
/// left; without this, new keys written into the freed pages would widen
/// the old summaries to span from the oldest key to the newest, and every
/// later purge would read those ranges again, until it read the whole
/// table. Only the index's owner may do that (the purge's documented
/// caller); for anyone else the summaries stay as they are.
static PURGE: Stmt = Stmt {
    sql: "WITH gone AS (
              DELETE FROM integrity.idempotency_keys
              WHERE expires_at < pg_catalog.clock_timestamp() - $1
              RETURNING ctid),
          ranges AS (
              SELECT DISTINCT ((g.ctid::text::point)[0]::int8 / 128) * 128 AS first_block
              FROM gone g),
          forgotten AS (
              SELECT pg_catalog.brin_desummarize_range(
                         'integrity.idempotency_keys_expires_idx'::regclass, r.first_block)
              FROM ranges r
              WHERE pg_catalog.pg_has_role(
                        (SELECT c.relowner FROM pg_catalog.pg_class c
                         WHERE c.oid = 'integrity.idempotency_keys_expires_idx'::regclass),
                        'USAGE'))
          SELECT (SELECT pg_catalog.count(*) FROM gone),
                 (SELECT pg_catalog.count(*) FROM forgotten)",
    args: &[INTERVAL],
    writes: true,
};

// ---------------------------------------------------------------------------
// Argument checks

struct Key<'a> {
    org_id: pgrx::datum::Uuid,
    scope: &'a str,
    key: &'a str,
}

impl Key<'_> {
    fn args(&self) -> [DatumWithOid<'static>; 3] {
        [
            self.org_id.into(),
            self.scope.to_string().into(),
            self.key.to_string().into(),
        ]
    }
}

fn key_args<'a>(
    f: &'static str,
    org_id: Option<pgrx::datum::Uuid>,
    scope: Option<&'a str>,
    key: Option<&'a str>,
) -> Key<'a> {
    let org_id = required(org_id, f, "org_id");
    // Both bounded: they go into the primary key's entries, whose limit
    // (2704 bytes) a long one would otherwise reach only when the key's
    // row is written, perhaps at COMMIT.
    let scope = key_part(
        f,
        "scope",
        scope,
        "Name what the key is for, such as 'POST /charges'.",
        "Name what the key is for, such as 'POST /charges'.",
    );
    let key = key_part(
        f,
        "key",
        key,
        "Pass the client's Idempotency-Key, 1 to 255 bytes.",
        "Use a UUID or another short unique string as the idempotency key.",
    );
    Key { org_id, scope, key }
}

/// A scope or key: given, not empty, at most `MAX_KEY_BYTES`; else
/// 22004 / 22023 with the hint for that case.
fn key_part<'a>(
    f: &'static str,
    arg: &'static str,
    v: Option<&'a str>,
    if_empty: &str,
    if_long: &str,
) -> &'a str {
    let v = required(v, f, arg);
    if v.is_empty() {
        raise(
            Kind::InvalidParameter,
            f,
            format!("{arg} must not be empty"),
            if_empty,
        );
    }
    if v.len() > MAX_KEY_BYTES {
        raise(
            Kind::InvalidParameter,
            f,
            format!(
                "{arg} must be at most {MAX_KEY_BYTES} bytes, got {}",
                v.len()
            ),
            if_long,
        );
    }
    v
}

/// The key's lock: the advisory lock
/// `pg_advisory_xact_lock(integrity.lock_key('idempotency', org_id::text, scope, key))`.
fn key_lock(k: &Key<'_>) -> i64 {
    let org = uuid_text(k.org_id.as_bytes());
    lock_key_of([
        &b"idempotency"[..],
        &org[..],
        k.scope.as_bytes(),
        k.key.as_bytes(),
    ])
}

thread_local! {
    static STARTED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    /// `{"ok": true, "status": "completed", "attempts": 1}`.
    static COMPLETED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `{"outcome": "started", "attempt": 1}`.
fn started() -> Jsonb {
    Jsonb::cached(&STARTED, || {
        Builder::new()
            .begin_object()
            .key("outcome")
            .string("started")
            .key("attempt")
            .int(1)
            .end()
            .finish()
    })
}

/// The clock, as clock_timestamp() reads it.
fn now() -> pg_sys::TimestampTz {
    // SAFETY: reads the system clock.
    unsafe { crate::direct::plain::GetCurrentTimestamp() }
}

/// `t` as a timestamptz argument.
fn timestamptz(t: pg_sys::TimestampTz) -> Option<pgrx::datum::TimestampWithTimeZone> {
    // SAFETY: a timestamptz datum is its microseconds.
    unsafe { pgrx::datum::TimestampWithTimeZone::from_datum(pg_sys::Datum::from(t), false) }
}

/// Write a pending key's row as processing under its lease.
fn write_pending(p: &pending::Pending) {
    let k = p.key();
    let row = direct::NewRow {
        fingerprint: &p.fingerprint,
        lease: p.lease,
        ttl: p.ttl,
        begun: p.begun,
        end: None,
    };
    let written = direct::insert(&k, &row).unwrap_or_else(|| {
        pinned(|| {
            Spi::connect_mut(|client| {
                let [o, s, kk] = k.args();
                let args = [
                    o,
                    s,
                    kk,
                    p.fingerprint.clone().into(),
                    p.lease.into(),
                    p.ttl.into(),
                    timestamptz(p.begun).into(),
                ];
                !run(client, &CLAIM, Some(1), &args).is_empty()
            })
        })
    });
    if !written {
        taken_by_another(&k);
    }
}

/// A key begun here was written meanwhile by someone not holding its lock.
fn taken_by_another(k: &Key<'_>) -> ! {
    raise(
        Kind::UniqueViolation,
        "integrity.idempotency_keys",
        format!(
            "idempotency key {:?} in scope {:?} was written by another transaction while this one held it",
            k.key, k.scope
        ),
        "Write integrity.idempotency_keys only through the idem_* functions.",
    )
}

/// Settle a key begun in this transaction and not written yet: its row is
/// written once, settled. `None` when it is not pending here (or its lease
/// ran out: then it is written as processing, and the statements answer).
fn settle_pending(k: &Key<'_>, how: &direct::Settle<'_>) -> Option<Jsonb> {
    let p = pending::take(k)?;
    let live = crate::direct::plus(p.begun, p.lease).value() as i64 > now();
    let row = direct::NewRow {
        fingerprint: &p.fingerprint,
        lease: p.lease,
        ttl: p.ttl,
        begun: p.begun,
        end: Some(how),
    };
    match live.then(|| direct::insert(k, &row)).flatten() {
        Some(true) => Some(match how {
            direct::Settle::Complete { .. } => Jsonb::cached(&COMPLETED, || how.answer(1)),
            direct::Settle::Fail { .. } => how.answer(1),
        }),
        Some(false) => taken_by_another(k),
        None => {
            write_pending(&p);
            None
        }
    }
}

/// The 55000 a call on a key that is not processing under a live lease gets.
fn not_processing(client: &SpiClient<'_>, f: &'static str, k: &Key<'_>) -> ! {
    let state = crate::plans::read(client, &STATE, Some(1), &k.args());
    let (what, hint) = if state.is_empty() {
        (
            "was never begun".to_string(),
            "Call integrity.idem_begin first and act only on outcome started or resumed.",
        )
    } else {
        let row = state.first();
        let status = row.get::<String>(1).or_bug(STATE.sql).unwrap_or_default();
        let live = row.get::<bool>(2).or_bug(STATE.sql).unwrap_or(false);
        if status == "processing" && !live {
            (
                "is processing under a lease that has run out".to_string(),
                "Another attempt may resume it. Keep the lease longer than the work, or call integrity.idem_checkpoint to extend it.",
            )
        } else {
            (
                format!("is {status}, not processing"),
                "A key is completed or failed once; a retry must call integrity.idem_begin, which replays or starts again.",
            )
        }
    };
    raise(
        Kind::NotInPrerequisiteState,
        f,
        format!("idempotency key {:?} in scope {:?} {what}", k.key, k.scope),
        hint,
    )
}

/// Apply one of the state changes a processing key allows (checkpoint,
/// complete, fail): `stmt` takes the key's three arguments, then `extra`,
/// and returns its answer; no row means the key is not processing under a
/// live lease, which raises the 55000 that says why.
fn transition(
    f: &'static str,
    k: &Key<'_>,
    stmt: &'static Stmt,
    extra: Vec<DatumWithOid<'_>>,
) -> Jsonb {
    pinned(|| {
        Spi::connect_mut(|client| {
            let mut args: Vec<DatumWithOid<'_>> = k.args().into();
            args.extend(extra);
            let r = run(client, stmt, Some(1), &args);
            if r.is_empty() {
                not_processing(client, f, k);
            }
            r.first()
                .get_datum_by_ordinal(1)
                .or_bug(stmt.sql)
                .map(Jsonb::from_spi)
                .unwrap_or_else(|| crate::errors::bug(stmt.sql))
        })
    })
}

/// A stored key, as `PEEK` or `EXISTING` read it.
struct KeyRow {
    fingerprint: String,
    status: String,
    recovery_point: Option<String>,
    expired: bool,
    lease_left_ms: Option<i64>,
    /// The replay answer, read only for a final key.
    replay: Option<Jsonb>,
}

impl KeyRow {
    fn read(row: &pgrx::spi::SpiTupleTable<'_>, sql: &str) -> KeyRow {
        let status = row.get::<String>(2).or_bug(sql).unwrap_or_default();
        let retryable = row.get::<bool>(3).or_bug(sql);
        let is_final = status == "completed" || (status == "failed" && retryable == Some(false));
        KeyRow {
            fingerprint: row.get::<String>(1).or_bug(sql).unwrap_or_default(),
            recovery_point: row.get::<String>(4).or_bug(sql),
            expired: row.get::<bool>(5).or_bug(sql).unwrap_or(true),
            lease_left_ms: row.get::<i64>(6).or_bug(sql),
            replay: if is_final {
                row.get_datum_by_ordinal(7).or_bug(sql).map(Jsonb::from_spi)
            } else {
                None
            },
            status,
        }
    }

    /// `replay` or `mismatch` for a final, unexpired key; `None` otherwise.
    fn final_answer(&self, fingerprint: &str) -> Option<Jsonb> {
        let replay = self.replay.filter(|_| !self.expired)?;
        Some(if self.fingerprint != fingerprint {
            outcome(r#"{"outcome": "mismatch"}"#.into())
        } else {
            replay
        })
    }
}

/// A response code as `idem_complete` and `idem_fail` store it: an HTTP
/// status, 100 to 599, replayed to every retry, so a slip such as `-1` or
/// `2010` is refused in the call rather than answered for 24 hours.
fn http_status(f: &'static str, code: i32) -> i32 {
    if !(100..=599).contains(&code) {
        raise(
            Kind::InvalidParameter,
            f,
            format!("response_code must be an HTTP status code from 100 to 599, got {code}"),
            "Pass the status the request answered, such as 201; a retry is replayed this code.",
        );
    }
    code
}

fn outcome(text: String) -> Jsonb {
    Jsonb::from_text(&text)
}

// ---------------------------------------------------------------------------
// SQL functions

/// Claim an idempotency key for a request, or say what to do instead.
#[pg_extern(volatile, parallel_unsafe)]
fn idem_begin(
    org_id: Option<pgrx::datum::Uuid>,
    scope: Option<&str>,
    key: Option<&str>,
    request: Option<Jsonb>,
    lease: default!(Option<Interval>, "'5 minutes'"),
    ttl: default!(Option<Interval>, "'24 hours'"),
) -> Jsonb {
    const F: &str = "integrity.idem_begin";
    let k = key_args(F, org_id, scope, key);
    let request = required(request, F, "request");
    let lease = crate::errors::positive_interval(F, "lease", lease);
    let ttl = crate::errors::positive_interval(F, "ttl", ttl);
    // A key that expired while its holder's lease ran would be begun
    // afresh by a retry (started, attempt 1): the work done twice.
    if ttl.as_micros() < lease.as_micros() {
        raise(
            Kind::InvalidParameter,
            F,
            format!("ttl ({ttl}) must not be shorter than lease ({lease})"),
            "Keep a key at least as long as its work may hold it: the default ttl is '24 hours', the default lease '5 minutes'.",
        );
    }
    let fingerprint = fingerprint_of_jsonb(&request);

    // The key's lock, to the end of the transaction: a duplicate waits
    // here while the key is being begun, worked on and settled.
    let table = direct::open_table();
    let lock = key_lock(&k);
    advisory_lock(lock, false);
    // Begun before in this transaction: written now, and answered below
    // from its row as any processing key is.
    if let Some(p) = pending::take(&k) {
        write_pending(&p);
    }
    let peek = direct::peek(&table, &k, &fingerprint);
    table.close();
    match peek {
        // A final key is answered without a write, and its lock let go.
        Some(direct::Peek::Final(answer)) => {
            advisory_unlock(lock);
            return answer;
        }
        // A new key is only remembered: its row is written once, when it
        // settles (or as processing at commit). See `pending`.
        Some(direct::Peek::Absent { insertable: true })
            if !xact_snapshot() && !crate::direct::read_only() =>
        {
            pending::add(&k, fingerprint, lease, ttl, now());
            return started();
        }
        _ => {}
    }
    // Everything below writes the key's row. Said here, before any SQL:
    // pgrx would assign a transaction id first, which a hot standby
    // refuses with an internal error instead of this one.
    if crate::direct::read_only() {
        advisory_unlock(lock);
        raise(
            Kind::ReadOnlyTransaction,
            F,
            format!(
                "idempotency key {:?} in scope {:?} is new or unfinished, and beginning it writes, which a read-only transaction cannot",
                k.key, k.scope
            ),
            "Call integrity.idem_begin in a read-write transaction on the primary; a read-only one (a hot standby) can only replay keys already completed.",
        );
    }
    pinned(|| {
        Spi::connect_mut(|client| {
            let [o, s, kk] = k.args();
            let claim_args = [
                o,
                s,
                kk,
                fingerprint.clone().into(),
                lease.into(),
                ttl.into(),
                timestamptz(now()).into(),
            ];
            // A key purged between our insert and our look is claimed again.
            for _ in 0..3 {
                let claimed = run(client, &CLAIM, Some(1), &claim_args);
                if !claimed.is_empty() {
                    return started();
                }
                // A final answer is replayed without a lock or a write.
                let peek = crate::plans::read(client, &PEEK, Some(1), &k.args());
                if !peek.is_empty() {
                    if let Some(answer) =
                        KeyRow::read(&peek.first(), PEEK.sql).final_answer(&fingerprint)
                    {
                        return answer;
                    }
                }
                let row = run(client, &EXISTING, Some(1), &k.args());
                if row.is_empty() {
                    continue;
                }
                let key_row = KeyRow::read(&row.first(), EXISTING.sql);
                if key_row.expired {
                    run(client, &RESTART, None, &claim_args);
                    return started();
                }
                if let Some(answer) = key_row.final_answer(&fingerprint) {
                    return answer;
                }
                if key_row.fingerprint != fingerprint {
                    return outcome(r#"{"outcome": "mismatch"}"#.into());
                }
                let retake = |client: &mut SpiClient<'_>, fresh: bool| -> i32 {
                    let [o, s, kk] = k.args();
                    run(
                        client,
                        &RETAKE,
                        Some(1),
                        &[o, s, kk, lease.into(), fresh.into()],
                    )
                    .first()
                    .get_one::<i32>()
                    .or_bug(RETAKE.sql)
                    .unwrap_or(0)
                };
                return if key_row.status == "failed" {
                    // Failed, retryable (a final failure was answered above).
                    let attempt = retake(client, true);
                    outcome(format!(r#"{{"outcome": "started", "attempt": {attempt}}}"#))
                } else {
                    match key_row.lease_left_ms {
                        Some(ms) if ms > 0 => outcome(format!(
                            r#"{{"outcome": "in_progress", "retry_after_ms": {ms}}}"#
                        )),
                        _ => {
                            let attempt = retake(client, false);
                            let rp = serde_json::Value::from(key_row.recovery_point);
                            outcome(format!(
                                r#"{{"outcome": "resumed", "recovery_point": {rp}, "attempt": {attempt}}}"#
                            ))
                        }
                    }
                };
            }
            crate::errors::bug("idempotency key vanished three times while being claimed")
        })
    })
}

/// Record how far the work got and extend the lease.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn idem_checkpoint(
    org_id: Option<pgrx::datum::Uuid>,
    scope: Option<&str>,
    key: Option<&str>,
    recovery_point: Option<&str>,
) -> Jsonb {
    const F: &str = "integrity.idem_checkpoint";
    let k = key_args(F, org_id, scope, key);
    let rp = required(recovery_point, F, "recovery_point");
    if let Some(p) = pending::take(&k) {
        write_pending(&p);
    }
    transition(F, &k, &CHECKPOINT, vec![rp.to_string().into()])
}

/// Store the response; retries with the same key replay it.
#[pg_extern(volatile, parallel_unsafe)]
fn idem_complete(
    org_id: Option<pgrx::datum::Uuid>,
    scope: Option<&str>,
    key: Option<&str>,
    response_code: Option<i32>,
    response: Option<Jsonb>,
) -> Jsonb {
    const F: &str = "integrity.idem_complete";
    let k = key_args(F, org_id, scope, key);
    let code = http_status(F, required(response_code, F, "response_code"));
    let how = direct::Settle::Complete {
        code: Some(code),
        response: response.as_ref(),
    };
    settle_pending(&k, &how)
        .or_else(|| direct::settle(&k, &how))
        .unwrap_or_else(|| transition(F, &k, &COMPLETE, vec![code.into(), response.into()]))
}

/// Record a failure: retryable lets the next begin start again; otherwise
/// the failure is the stored answer, replayed to retries.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn idem_fail(
    org_id: Option<pgrx::datum::Uuid>,
    scope: Option<&str>,
    key: Option<&str>,
    retryable: default!(Option<bool>, true),
    error: default!(Option<Jsonb>, "NULL"),
    response_code: default!(Option<i32>, "NULL"),
) -> Jsonb {
    const F: &str = "integrity.idem_fail";
    let k = key_args(F, org_id, scope, key);
    let retryable = required(retryable, F, "retryable");
    let response_code = response_code.map(|c| http_status(F, c));
    let how = direct::Settle::Fail {
        retryable,
        response: error.as_ref(),
        code: response_code,
    };
    settle_pending(&k, &how)
        .or_else(|| direct::settle(&k, &how))
        .unwrap_or_else(|| {
            transition(
                F,
                &k,
                &FAIL,
                vec![retryable.into(), error.into(), response_code.into()],
            )
        })
}

/// Remove keys whose `expires_at` is more than `older_than` in the past
/// (default: any past `expires_at`); how many were removed.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn purge_idempotency_keys(older_than: default!(Option<Interval>, "NULL")) -> i64 {
    const F: &str = "integrity.purge_idempotency_keys";
    let older_than = older_than.unwrap_or_else(|| {
        Interval::new(0, 0, 0).unwrap_or_else(|_| crate::errors::bug("zero interval"))
    });
    if crate::errors::span_us(F, "older_than", older_than) < 0 {
        raise(
            Kind::InvalidParameter,
            F,
            "older_than must not be negative",
            "Omit it to remove every expired key, or pass e.g. '7 days' to keep expired keys a week longer.",
        );
    }
    let older_than = crate::errors::not_too_long(F, "older_than", older_than);
    // Keys begun in this transaction are rows for the purge as well.
    pending::write_all();
    Spi::connect_mut(|client| {
        run(client, &PURGE, Some(1), &[older_than.into()])
            .first()
            .get_one::<i64>()
            .or_bug(PURGE.sql)
            .unwrap_or(0)
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testutil::{error_message, json, one, sqlstate};
    use pgrx::prelude::*;

    const ORG: &str = "00000000-0000-0000-0000-0000000000e1";
    const ORG2: &str = "00000000-0000-0000-0000-0000000000e2";

    fn begin(key: &str, request: &str, extra: &str) -> serde_json::Value {
        json(&format!(
            "SELECT integrity.idem_begin('{ORG}', 'POST /charges', '{key}', '{request}'{extra})"
        ))
    }

    #[pg_test]
    fn started_then_replayed_mismatch_and_tenants() {
        assert_eq!(begin("a", r#"{"amount": 100}"#, "")["outcome"], "started");
        // While processing (multi-transaction use), a duplicate is told to wait.
        let busy = begin("a", r#"{"amount":100}"#, "");
        assert_eq!(busy["outcome"], "in_progress", "{busy}");
        let ms = busy["retry_after_ms"].as_i64().unwrap();
        assert!(ms > 290_000 && ms <= 300_000, "{ms}");
        // Same key, another request: refused, and the stored one is kept.
        assert_eq!(begin("a", r#"{"amount": 200}"#, "")["outcome"], "mismatch");
        let done = json(&format!(
            "SELECT integrity.idem_complete('{ORG}', 'POST /charges', 'a', 201, '{{\"id\": \"ch_1\"}}')"
        ));
        assert_eq!(done["ok"], true);
        // Key order and whitespace do not change the request's fingerprint.
        let r = begin("a", r#"{ "amount" : 100 }"#, "");
        assert_eq!(r["outcome"], "replay");
        assert_eq!(r["response_code"], 201);
        assert_eq!(r["response"]["id"], "ch_1");
        assert_eq!(begin("a", r#"{"amount": 200}"#, "")["outcome"], "mismatch");
        // Another tenant, or another scope, is another key.
        let other = json(&format!(
            "SELECT integrity.idem_begin('{ORG2}', 'POST /charges', 'a', '{{\"amount\": 100}}')"
        ));
        assert_eq!(other["outcome"], "started");
        let scope = json(&format!(
            "SELECT integrity.idem_begin('{ORG}', 'POST /refunds', 'a', '{{\"amount\": 100}}')"
        ));
        assert_eq!(scope["outcome"], "started");
    }

    #[pg_test]
    fn lease_checkpoint_resume_and_failures() {
        assert_eq!(begin("b", "{}", ", lease => '1 ms'")["outcome"], "started");
        Spi::run("SELECT pg_sleep(0.005)").unwrap();
        // The lease ran out: the holder can no longer act ...
        assert_eq!(
            sqlstate(&format!(
                "SELECT integrity.idem_checkpoint('{ORG}', 'POST /charges', 'b', 'step 1')"
            )),
            "55000"
        );
        // ... and the next caller resumes (attempt 2).
        let r = begin("b", "{}", "");
        assert_eq!(r["outcome"], "resumed", "{r}");
        assert_eq!(r["attempt"], 2);
        let cp = json(&format!(
            "SELECT integrity.idem_checkpoint('{ORG}', 'POST /charges', 'b', 'charged')"
        ));
        assert_eq!(cp["recovery_point"], "charged");
        // A retryable failure: the next begin starts again.
        let f = json(&format!(
            "SELECT integrity.idem_fail('{ORG}', 'POST /charges', 'b', retryable => true)"
        ));
        assert_eq!(f["status"], "failed");
        let again = begin("b", "{}", "");
        assert_eq!(again["outcome"], "started");
        assert_eq!(again["attempt"], 3);
        // A final failure is the stored answer.
        json(&format!(
            "SELECT integrity.idem_fail('{ORG}', 'POST /charges', 'b', retryable => false,
                 error => '{{\"error\": \"card_declined\"}}', response_code => 402)"
        ));
        let replay = begin("b", "{}", "");
        assert_eq!(replay["outcome"], "replay");
        assert_eq!(replay["response_code"], 402);
        assert_eq!(replay["response"]["error"], "card_declined");
        // Completing or failing it again is a caller's mistake.
        for call in [
            "idem_complete('{ORG}', 'POST /charges', 'b', 200, NULL)",
            "idem_fail('{ORG}', 'POST /charges', 'b')",
            "idem_complete('{ORG}', 'POST /charges', 'never', 200, NULL)",
        ] {
            let sql = format!("SELECT integrity.{}", call.replace("{ORG}", ORG));
            assert_eq!(sqlstate(&sql), "55000", "{sql}");
        }
    }

    #[pg_test]
    fn expired_keys_start_afresh_and_are_purged() {
        assert_eq!(
            begin("c", "{}", ", lease => '1 ms', ttl => '1 ms'")["outcome"],
            "started"
        );
        assert_eq!(
            begin("d", "{}", ", lease => '1 ms', ttl => '1 ms'")["outcome"],
            "started"
        );
        Spi::run("SELECT pg_sleep(0.005)").unwrap();
        // Expired: the key is free again, even for another request.
        let r = begin("c", r#"{"other": true}"#, "");
        assert_eq!(r["outcome"], "started", "{r}");
        let purged = Spi::get_one::<i64>("SELECT integrity.purge_idempotency_keys()").unwrap();
        assert_eq!(purged, Some(1), "only d is expired now");
        let left = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM integrity.idempotency_keys WHERE org_id = '{ORG}' AND key IN ('c', 'd')"
        ))
        .unwrap();
        assert_eq!(left, Some(1));
        assert_eq!(
            Spi::get_one::<i64>("SELECT integrity.purge_idempotency_keys('1 day')").unwrap(),
            Some(0)
        );
    }

    #[pg_test]
    fn rolled_back_subtransactions_undo_begins_and_writes() {
        let stored = |key: &str| {
            Spi::get_one::<i64>(&format!(
                "SELECT count(*) FROM integrity.idempotency_keys WHERE org_id = '{ORG}' AND key = '{key}'"
            ))
            .unwrap()
        };
        // Begun in a subtransaction that fails: never begun.
        let failed =
            format!("SELECT integrity.idem_begin('{ORG}', 'POST /charges', 'sx', '{{}}'), 1 / 0");
        assert_eq!(sqlstate(&failed), "22012");
        assert_eq!(begin("sx", "{}", "")["outcome"], "started");
        // Not written while only begun (single-transaction use writes it
        // once, settled) ...
        assert_eq!(stored("sx"), Some(0));
        // ... and a completion rolled back with its subtransaction leaves
        // it begun, not completed.
        let undone = format!(
            "SELECT integrity.idem_complete('{ORG}', 'POST /charges', 'sx', 200, NULL), 1 / 0"
        );
        assert_eq!(sqlstate(&undone), "22012");
        assert_eq!(stored("sx"), Some(0));
        let done = json(&format!(
            "SELECT integrity.idem_complete('{ORG}', 'POST /charges', 'sx', 201, '{{}}')"
        ));
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(stored("sx"), Some(1));
        assert_eq!(begin("sx", "{}", "")["response_code"], 201);
        // A purge sees keys begun in its own transaction.
        assert_eq!(
            begin("sy", "{}", ", lease => '1 ms', ttl => '1 ms'")["outcome"],
            "started"
        );
        Spi::run("SELECT pg_sleep(0.005)").unwrap();
        assert_eq!(stored("sy"), Some(0));
        let purged = Spi::get_one::<i64>("SELECT integrity.purge_idempotency_keys()").unwrap();
        assert!(purged >= Some(1), "{purged:?}");
        assert_eq!(stored("sy"), Some(0));
    }

    /// One key's stored state and the answers it got, for comparing the
    /// direct path with the statements.
    fn lifecycle(key: &str, fail: bool) -> (Vec<serde_json::Value>, serde_json::Value) {
        let mut answers = vec![begin(key, r#"{"n": 1}"#, "")];
        answers.push(json(&if fail {
            format!(
                "SELECT integrity.idem_fail('{ORG}', 'POST /charges', '{key}', false, '{{\"e\": 1}}', 409)"
            )
        } else {
            format!(
                "SELECT integrity.idem_complete('{ORG}', 'POST /charges', '{key}', 201, '[1, \"x\", null]')"
            )
        }));
        answers.push(begin(key, r#"{"n": 1}"#, ""));
        answers.push(begin(key, r#"{"n": 2}"#, ""));
        let row = json(&format!(
            "SELECT pg_catalog.jsonb_build_object('status', status, 'retryable', retryable,
                 'code', response_code, 'response', response, 'rp', recovery_point,
                 'lease', lease, 'attempts', attempts, 'unlocked', locked_until IS NULL,
                 'done', completed_at >= created_at, 'ttl', expires_at - created_at,
                 'fp', fingerprint = integrity.fingerprint('{{\"n\": 1}}'))
             FROM integrity.idempotency_keys WHERE org_id = '{ORG}' AND key = '{key}'"
        ));
        (answers, row)
    }

    #[pg_test]
    fn direct_path_stores_and_answers_as_the_statements_do() {
        // Tests that change integrity.idempotency_keys run one at a time
        // (each holds the table, then asks for a stronger lock on it).
        crate::testutil::serialize_ddl();
        // Direct: the table as integrity creates it.
        let direct = [lifecycle("dx-ok", false), lifecycle("dx-fail", true)];
        // A trigger on the table sends claims and updates through SQL
        // (and the trigger must see them).
        Spi::run(
            "CREATE TEMP TABLE fired (n int);
             CREATE FUNCTION pg_temp.count_row() RETURNS trigger LANGUAGE plpgsql AS
               'BEGIN INSERT INTO fired VALUES (1); RETURN NEW; END';
             CREATE TRIGGER count_rows BEFORE INSERT OR UPDATE ON integrity.idempotency_keys
               FOR EACH ROW EXECUTE FUNCTION pg_temp.count_row()",
        )
        .unwrap();
        let sql = [lifecycle("sx-ok", false), lifecycle("sx-fail", true)];
        let fired = Spi::get_one::<i64>("SELECT count(*) FROM fired").unwrap();
        assert_eq!(
            fired,
            Some(4),
            "two claims and two updates went through SQL"
        );
        Spi::run("DROP TRIGGER count_rows ON integrity.idempotency_keys").unwrap();
        for (d, s) in direct.iter().zip(&sql) {
            assert_eq!(d, s);
        }
        assert_eq!(direct[0].0[2]["outcome"], "replay");
        assert_eq!(
            direct[0].0[2]["response"],
            serde_json::json!([1, "x", null])
        );
        assert_eq!(direct[1].0[2]["response_code"], 409);
        assert_eq!(direct[1].0[3]["outcome"], "mismatch");
        assert_eq!(direct[0].1["status"], "completed");
        assert_eq!(direct[1].1["retryable"], false);
    }

    #[pg_test]
    fn changes_users_make_to_the_keys_table_are_respected() {
        // Tests that change integrity.idempotency_keys run one at a time
        // (each holds the table, then asks for a stronger lock on it).
        crate::testutil::serialize_ddl();
        let reference = lifecycle("ch-ref", false);
        // An expression index: every key written is found through it (its
        // compiled expressions are not kept across writes).
        Spi::run("CREATE INDEX integrity_test_lower ON integrity.idempotency_keys (lower(key))")
            .unwrap();
        for i in 0..5 {
            let (answers, _) = lifecycle(&format!("ch-{i}"), false);
            assert_eq!(answers, reference.0);
        }
        Spi::run("SET LOCAL enable_seqscan = off").unwrap();
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM integrity.idempotency_keys
                  WHERE lower(key) IN ('ch-0', 'ch-1', 'ch-2', 'ch-3', 'ch-4')"
            ),
            Some(5)
        );
        Spi::run("RESET enable_seqscan").unwrap();
        // A column's type changed: the writes go through SQL, which
        // converts; the replay is the same.
        Spi::run(
            "ALTER TABLE integrity.idempotency_keys ALTER COLUMN response TYPE json USING response::json",
        )
        .unwrap();
        let (answers, _) = lifecycle("ch-json", false);
        assert_eq!(answers, reference.0);
        assert_eq!(
            one::<String>(
                "SELECT response::text FROM integrity.idempotency_keys WHERE key = 'ch-json'"
            ),
            Some(r#"[1, "x", null]"#.to_string())
        );
        Spi::run(
            "ALTER TABLE integrity.idempotency_keys ALTER COLUMN response TYPE jsonb USING response::jsonb",
        )
        .unwrap();
        // A column made NOT NULL: the direct path refuses a NULL there as a
        // statement would (23502).
        Spi::run(
            "UPDATE integrity.idempotency_keys SET retryable = false WHERE retryable IS NULL;
             ALTER TABLE integrity.idempotency_keys ALTER COLUMN retryable SET NOT NULL",
        )
        .unwrap();
        assert_eq!(begin("ch-nn", r#"{"n": 1}"#, "")["outcome"], "started");
        assert_eq!(
            sqlstate(&format!(
                "SELECT integrity.idem_complete('{ORG}', 'POST /charges', 'ch-nn', 201, '{{}}')"
            )),
            "23502"
        );
        Spi::run("ALTER TABLE integrity.idempotency_keys ALTER COLUMN retryable DROP NOT NULL")
            .unwrap();
        assert_eq!(
            json(&format!(
                "SELECT integrity.idem_complete('{ORG}', 'POST /charges', 'ch-nn', 201, '[1, \"x\", null]')"
            ))["ok"],
            true
        );
        // The primary key made again on the same columns in another order.
        Spi::run(
            "ALTER TABLE integrity.idempotency_keys DROP CONSTRAINT idempotency_keys_pkey,
               ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (scope, key, org_id)",
        )
        .unwrap();
        let (answers, _) = lifecycle("ch-pkey", false);
        assert_eq!(answers, reference.0);
        // A key written before is still found through the new index.
        assert_eq!(begin("ch-ref", r#"{"n": 1}"#, ""), reference.0[2]);
    }

    #[pg_test]
    fn a_hostile_search_path_changes_no_answer() {
        // Tests that change integrity.idempotency_keys run one at a time
        // (each holds the table, then asks for a stronger lock on it).
        crate::testutil::serialize_ddl();
        // idem_begin and idem_complete pin search_path around their SQL
        // only: a caller's path with an `=` that is never true must not
        // reach the statements (direct path first, then through SQL).
        Spi::run(
            "CREATE SCHEMA evil;
             CREATE FUNCTION evil.never(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT false';
             CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.never);
             CREATE FUNCTION pg_temp.pass() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'",
        )
        .unwrap();
        for through_sql in [false, true] {
            if through_sql {
                Spi::run(
                    "CREATE TRIGGER pass BEFORE INSERT OR UPDATE ON integrity.idempotency_keys
                       FOR EACH ROW EXECUTE FUNCTION pg_temp.pass()",
                )
                .unwrap();
            }
            let key = format!("hostile-{through_sql}");
            Spi::run("SET LOCAL search_path = evil, pg_catalog").unwrap();
            assert_eq!(begin(&key, "{}", "")["outcome"], "started");
            let done = json(&format!(
                "SELECT integrity.idem_complete('{ORG}', 'POST /charges', '{key}', 201, '{{\"id\": 1}}')"
            ));
            assert_eq!(done["ok"], true, "{done}");
            let again = begin(&key, "{}", "");
            assert_eq!(
                (again["outcome"].clone(), again["response_code"].clone()),
                ("replay".into(), 201.into()),
                "{again}"
            );
            // The multi-transaction path's statements too.
            let multi = format!("{key}-multi");
            assert_eq!(begin(&multi, "{}", "")["outcome"], "started");
            let cp = json(&format!(
                "SELECT integrity.idem_checkpoint('{ORG}', 'POST /charges', '{multi}', 'charged')"
            ));
            assert_eq!(cp["ok"], true, "{cp}");
            Spi::run("RESET search_path").unwrap();
        }
    }

    #[pg_test]
    fn a_read_only_transaction_writes_no_key() {
        // The helper first: it creates a function, which read-only refuses.
        crate::testutil::sqlstate("SELECT 1");
        Spi::run("SET LOCAL transaction_read_only = on").unwrap();
        let sql = format!("SELECT integrity.idem_begin('{ORG}', 'POST /charges', 'ro', '{{}}')");
        assert_eq!(sqlstate(&sql), "25006");
    }

    #[pg_test]
    fn a_response_code_outside_http_statuses_is_refused_and_the_key_stays_open() {
        let begin = |k: &str| {
            json(&format!(
                "SELECT integrity.idem_begin('{ORG}', 'POST /codes', '{k}', '{{}}')"
            ))
        };
        assert_eq!(begin("c1")["outcome"], "started");
        for bad in ["0", "99", "600", "-201", "2147483647"] {
            let sql = format!(
                "SELECT integrity.idem_complete('{ORG}', 'POST /codes', 'c1', {bad}, '{{}}')"
            );
            assert_eq!(sqlstate(&sql), "22023", "{sql}");
            assert!(
                error_message(&sql).contains(&format!("got {bad}")),
                "{}",
                error_message(&sql)
            );
        }
        // Refused before anything was stored: the key still completes, and
        // the bounds themselves are statuses. A NULL response (204) is
        // stored and replayed as JSON null.
        let done = json(&format!(
            "SELECT integrity.idem_complete('{ORG}', 'POST /codes', 'c1', 599, NULL)"
        ));
        assert_eq!(done["status"], "completed", "{done}");
        let replay = begin("c1");
        assert_eq!(replay["outcome"], "replay", "{replay}");
        assert_eq!(replay["response_code"], 599, "{replay}");
        assert!(replay["response"].is_null(), "{replay}");

        assert_eq!(begin("c2")["outcome"], "started");
        let sql =
            format!("SELECT integrity.idem_fail('{ORG}', 'POST /codes', 'c2', false, '{{}}', 600)");
        assert_eq!(sqlstate(&sql), "22023");
        let failed = json(&format!(
            "SELECT integrity.idem_fail('{ORG}', 'POST /codes', 'c2', false, '{{}}', 100)"
        ));
        assert_eq!(failed["status"], "failed", "{failed}");
        assert_eq!(begin("c2")["response_code"], 100);
    }

    #[pg_test]
    fn idem_bad_input_gets_a_clear_sqlstate() {
        let long = "k".repeat(256);
        let cases: Vec<(String, &str)> = vec![
            (
                "SELECT integrity.idem_begin(NULL, 's', 'k', '{}')".to_string(),
                "22004",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', NULL, 'k', '{{}}')"),
                "22004",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', 's', NULL, '{{}}')"),
                "22004",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', 's', 'k', NULL)"),
                "22004",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', '', 'k', '{{}}')"),
                "22023",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', 's', '', '{{}}')"),
                "22023",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', '{long}', 'k', '{{}}')"),
                "22023",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', 's', '{long}', '{{}}')"),
                "22023",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', 's', 'k', '{{}}', lease => '0 s')"),
                "22023",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', 's', 'k', '{{}}', lease => '-1 s')"),
                "22023",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', 's', 'k', '{{}}', ttl => '0 s')"),
                "22023",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', 's', 'k', '{{}}', lease => NULL)"),
                "22004",
            ),
            // A key kept for less time than its holder may work on it would
            // expire under a live lease and start afresh: done twice.
            (
                format!("SELECT integrity.idem_begin('{ORG}', 's', 'k', '{{}}', lease => '2 days', ttl => '1 hour')"),
                "22023",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', 's', 'k', '{{}}', ttl => '1 ms')"),
                "22023",
            ),
            // Huge: refused in the call, not when the key's row is written
            // (at COMMIT for a key left unsettled), where now() + ttl
            // would overflow.
            (
                format!("SELECT integrity.idem_begin('{ORG}', 's', 'k', '{{}}', ttl => '1000000 years')"),
                "22008",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', 's', 'k', '{{}}', lease => '178000000 years')"),
                "22008",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', 's', 'k', '{{}}', ttl => '1001 years')"),
                "22008",
            ),
            (
                format!("SELECT integrity.idem_begin('{ORG}', 's', 'k', '{{bad')"),
                "22P02",
            ),
            (
                format!("SELECT integrity.idem_checkpoint('{ORG}', 's', 'k', NULL)"),
                "22004",
            ),
            (
                format!("SELECT integrity.idem_complete('{ORG}', 's', 'k', NULL, '{{}}')"),
                "22004",
            ),
            (
                format!("SELECT integrity.idem_fail('{ORG}', 's', 'k', NULL)"),
                "22004",
            ),
            (
                format!("SELECT integrity.idem_complete('{ORG}', 's', 'k', -1, '{{}}')"),
                "22023",
            ),
            (
                format!("SELECT integrity.idem_complete('{ORG}', 's', 'k', 2010, '{{}}')"),
                "22023",
            ),
            (
                format!("SELECT integrity.idem_fail('{ORG}', 's', 'k', false, '{{}}', 99)"),
                "22023",
            ),
            (
                "SELECT integrity.purge_idempotency_keys('-1 day')".to_string(),
                "22023",
            ),
            (
                "SELECT integrity.purge_idempotency_keys('1000000 years')".to_string(),
                "22008",
            ),
            // Taken from now(), 9,000 years would reach before 4713 BC.
            (
                "SELECT integrity.purge_idempotency_keys('9000 years')".to_string(),
                "22008",
            ),
        ];
        for (sql, want) in cases {
            assert_eq!(sqlstate(&sql), want, "{sql}");
        }
        // 255 bytes is accepted (multi-byte characters count as bytes).
        let max = "é".repeat(127) + "k";
        assert_eq!(
            json(&format!(
                "SELECT integrity.idem_begin('{ORG}', 's', '{max}', '{{}}')"
            ))["outcome"],
            "started"
        );
        let over = "é".repeat(128);
        assert_eq!(
            sqlstate(&format!(
                "SELECT integrity.idem_begin('{ORG}', 's', '{over}', '{{}}')"
            )),
            "22023"
        );
    }
}

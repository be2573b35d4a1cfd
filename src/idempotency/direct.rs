//! The hot paths of idempotency keys without SQL, through `crate::direct`:
//! the look at a key (`peek`) as a primary-key probe, the write of a key's
//! row (`insert`, under the key's lock) as a heap insert, and the
//! completion or failure of a key whose processing row this transaction
//! wrote (`settle`) as an update of that row.
//!
//! Each answers `None` when its statement in `idempotency.rs` must run
//! instead: the table is not as integrity created it, the role or row
//! security would not let this run as it stands (SQL then raises what a
//! statement raises), or the case is one the statements handle (a write
//! under REPEATABLE READ or SERIALIZABLE, a key held by another
//! transaction, a key whose lease ran out).

use super::Key;
use crate::direct::{plus, xact_snapshot, Look, Rel, Spec, Ty, Writer};
use crate::jsonb::{Builder, Jsonb};
use pgrx::datum::Interval;
use pgrx::pg_sys;
use pgrx::prelude::*;
use smallvec::{smallvec, SmallVec};

/// `integrity.idempotency_keys` as integrity creates it.
static KEYS: Spec = Spec {
    slot: 1,
    table: c"idempotency_keys",
    columns: &[
        "org_id",
        "scope",
        "key",
        "fingerprint",
        "status",
        "retryable",
        "response_code",
        "response",
        "recovery_point",
        "lease",
        "locked_until",
        "attempts",
        "created_at",
        "completed_at",
        "expires_at",
    ],
    indexes: &[c"idempotency_keys_pkey"],
    types: &[
        Ty::Base(pg_sys::UUIDOID),        // org_id
        Ty::Base(pg_sys::TEXTOID),        // scope
        Ty::Base(pg_sys::TEXTOID),        // key
        Ty::Base(pg_sys::TEXTOID),        // fingerprint
        Ty::Base(pg_sys::TEXTOID),        // status
        Ty::Base(pg_sys::BOOLOID),        // retryable
        Ty::Base(pg_sys::INT4OID),        // response_code
        Ty::Base(pg_sys::JSONBOID),       // response
        Ty::Base(pg_sys::TEXTOID),        // recovery_point
        Ty::Base(pg_sys::INTERVALOID),    // lease
        Ty::Base(pg_sys::TIMESTAMPTZOID), // locked_until
        Ty::Base(pg_sys::INT4OID),        // attempts
        Ty::Base(pg_sys::TIMESTAMPTZOID), // created_at
        Ty::Base(pg_sys::TIMESTAMPTZOID), // completed_at
        Ty::Base(pg_sys::TIMESTAMPTZOID), // expires_at
    ],
    keys: &[&["key", "scope", "org_id"]],
    // The status domain's check holds for the statuses written here.
    checks: &[],
    policy: "idempotency_keys_org_scope",
};

// Positions in `KEYS.columns`.
const ORG_ID: usize = 0;
const SCOPE: usize = 1;
const KEY: usize = 2;
const FINGERPRINT: usize = 3;
const STATUS: usize = 4;
const RETRYABLE: usize = 5;
const RESPONSE_CODE: usize = 6;
const RESPONSE: usize = 7;
const LEASE: usize = 9;
const LOCKED_UNTIL: usize = 10;
const ATTEMPTS: usize = 11;
const CREATED_AT: usize = 12;
const COMPLETED_AT: usize = 13;
const EXPIRES_AT: usize = 14;
/// `KEYS.indexes`: the primary key, its columns in the order (key, scope,
/// org_id).
const PKEY: usize = 0;

/// What a look at a key found.
pub enum Peek {
    /// No row for the key; `insertable`: `insert` can write it (the table
    /// takes direct writes and the role may insert and update its rows).
    Absent { insertable: bool },
    /// A final, unexpired key: its answer (`replay`, or `mismatch` for a
    /// different request).
    Final(Jsonb),
    /// Anything else: the statements decide.
    Other,
}

fn datum(d: Option<pg_sys::Datum>) -> pg_sys::Datum {
    d.unwrap_or_else(|| crate::errors::bug("a NULL datum for a value"))
}

fn text(s: &str) -> pg_sys::Datum {
    datum(s.into_datum())
}

/// The primary key's values, as datums in its columns' order.
fn key_datums(k: &Key<'_>) -> [pg_sys::Datum; 3] {
    [text(k.key), text(k.scope), datum(k.org_id.into_datum())]
}

/// The value of a column of the row in `slot`, all of whose attributes
/// have been deformed.
///
/// # Safety
/// `slot` holds a row; `slot_getallattrs` was called on it.
unsafe fn value(slot: *mut pg_sys::TupleTableSlot, at: usize) -> Option<pg_sys::Datum> {
    (!*(*slot).tts_isnull.add(at)).then(|| *(*slot).tts_values.add(at))
}

/// The keys table, opened with the lock writing a key's row takes (ROW
/// EXCLUSIVE), now: `idem_begin` takes it before the key's lock and before it knows
/// whether it will write, so that no write later in the transaction waits
/// to upgrade a lock (behind DDL that in turn waits for us), and nobody
/// queues for the table while holding a key's lock.
pub fn open_table() -> Rel {
    Rel::open(&KEYS, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE)
}

/// Look at the key as a statement starting now would see it; answer it if
/// it is final and unexpired. Any isolation level: the probe takes the
/// snapshot, and under SERIALIZABLE the predicate locks, a SELECT would.
/// `rel` is the table as `open_table` opened it.
pub fn peek(rel: &Rel, k: &Key<'_>, fingerprint: &str) -> Option<Peek> {
    // One privilege and row-security check in the usual case (the role may
    // read and write); a second only for a role that may just read.
    let wanted = (pg_sys::ACL_SELECT | pg_sys::ACL_INSERT | pg_sys::ACL_UPDATE) as pg_sys::AclMode;
    let may_write = rel.known() && rel.allowed(wanted, k.org_id);
    if !rel.known() || (!may_write && !rel.allowed(pg_sys::ACL_SELECT as pg_sys::AclMode, k.org_id))
    {
        return None;
    }
    // SAFETY: the snapshot is registered for the probe; the row's values
    // are read while its slot holds it, and the answer is finished (copied
    // into a jsonb of its own) before the slot lets it go.
    let found = unsafe {
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot());
        let read = |slot: *mut pg_sys::TupleTableSlot| {
            pg_sys::slot_getallattrs(slot);
            let v = |i: usize| value(slot, rel.col(i));
            let status = v(STATUS).and_then(|d| String::from_datum(d, false));
            let retryable = v(RETRYABLE).and_then(|d| bool::from_datum(d, false));
            let is_final = match status.as_deref() {
                Some("completed") => true,
                Some("failed") => retryable == Some(false),
                _ => false,
            };
            let expired = v(EXPIRES_AT).is_none_or(|d| d.value() as i64 <= super::now());
            if !is_final || expired {
                return Peek::Other;
            }
            let same = v(FINGERPRINT)
                .and_then(|d| String::from_datum(d, false))
                .as_deref()
                == Some(fingerprint);
            let mut b = Builder::new();
            b.begin_object().key("outcome");
            if !same {
                b.string("mismatch");
            } else {
                b.string("replay").key("response_code");
                match v(RESPONSE_CODE) {
                    Some(d) => b.int(d.value() as i32 as i64),
                    None => b.null(),
                };
                b.key("response");
                match v(RESPONSE) {
                    Some(d) => b.jsonb(d),
                    None => b.null(),
                };
            }
            Peek::Final(b.end().finish())
        };
        // Under READ COMMITTED, one descent of the primary key tells a new
        // key (no entry at all), and finds a stored key's one entry, whose
        // row is then read directly; anything else, and the other
        // isolation levels (SERIALIZABLE needs the scan's predicate locks),
        // take the index scan. Either way under the snapshot taken above,
        // as a SELECT's scan would see the key.
        let keys = key_datums(k);
        let found = match (!xact_snapshot()).then(|| rel.look(PKEY, &keys)) {
            Some(Look::Absent) => None,
            Some(Look::One(entry)) => rel.fetch_tid(entry, snapshot, read),
            _ => rel.fetch(PKEY, &keys, snapshot, read),
        };
        pg_sys::UnregisterSnapshot(snapshot);
        found
    };
    let insertable = found.is_none() && rel.insertable() && may_write;
    Some(found.unwrap_or(Peek::Absent { insertable }))
}

/// A key's row as `insert` writes it.
pub struct NewRow<'a> {
    pub fingerprint: &'a str,
    pub lease: Interval,
    pub ttl: Interval,
    /// When the key was begun: its created_at, and where its lease and
    /// ttl count from.
    pub begun: pg_sys::TimestampTz,
    /// `None`: processing under the lease; else settled now, so.
    pub end: Option<&'a Settle<'a>>,
}

/// Write a key's row, holding the key's lock: `Some(true)` when it is in;
/// `Some(false)` when another row for the key is there or in flight (a
/// writer that bypassed the lock; ours is deleted again). `None` when the
/// statements must do it. READ COMMITTED only.
pub fn insert(k: &Key<'_>, row: &NewRow<'_>) -> Option<bool> {
    if xact_snapshot() {
        return None;
    }
    let wanted = (pg_sys::ACL_SELECT | pg_sys::ACL_INSERT) as pg_sys::AclMode;
    let rel = Rel::for_write(&KEYS, wanted, k.org_id)?;
    let mut values: SmallVec<[pg_sys::Datum; 24]> = smallvec![pg_sys::Datum::from(0); rel.natts()];
    let mut nulls: SmallVec<[bool; 24]> = smallvec![true; rel.natts()];
    let mut set = |i: usize, d: Option<pg_sys::Datum>| {
        if let Some(d) = d {
            values[rel.col(i)] = d;
            nulls[rel.col(i)] = false;
        }
    };
    let [kk, s, o] = key_datums(k);
    set(ORG_ID, Some(o));
    set(SCOPE, Some(s));
    set(KEY, Some(kk));
    set(FINGERPRINT, Some(text(row.fingerprint)));
    set(LEASE, row.lease.into_datum());
    set(ATTEMPTS, 1i32.into_datum());
    set(CREATED_AT, row.begun.into_datum());
    set(EXPIRES_AT, Some(plus(row.begun, row.ttl)));
    match row.end {
        None => {
            set(STATUS, Some(text("processing")));
            set(LOCKED_UNTIL, Some(plus(row.begun, row.lease)));
        }
        Some(end) => {
            let (status, retryable, code, response) = end.columns();
            set(STATUS, Some(text(status)));
            set(RETRYABLE, retryable.and_then(|r| r.into_datum()));
            set(RESPONSE_CODE, code.and_then(|c| c.into_datum()));
            set(RESPONSE, response.and_then(|r| r.into_datum()));
            set(COMPLETED_AT, super::now().into_datum());
        }
    }
    // Under the key's lock no other row for the key can appear (every
    // writer takes it), so a plain insert; should one appear all the same,
    // ours is deleted again and the caller raises. Without an executor
    // state when the table allows (its indexes are plain columns).
    let arbiter = rel.index(PKEY);
    let inserted = rel
        .insert_row(&mut values, &mut nulls, arbiter)
        .unwrap_or_else(|| {
            let mut w = Writer::new(&rel);
            let (v, n) = w.row();
            v.copy_from_slice(&values);
            n.copy_from_slice(&nulls);
            let inserted = w.insert(arbiter);
            w.finish();
            inserted
        });
    rel.close();
    Some(inserted)
}

/// How a key's work ends (`idem_complete` or `idem_fail`).
pub enum Settle<'a> {
    Complete {
        code: Option<i32>,
        response: Option<&'a Jsonb>,
    },
    Fail {
        retryable: bool,
        response: Option<&'a Jsonb>,
        code: Option<i32>,
    },
}

impl Settle<'_> {
    /// status, retryable, response_code and response as stored.
    fn columns(&self) -> (&'static str, Option<bool>, Option<i32>, Option<&Jsonb>) {
        match self {
            Settle::Complete { code, response } => ("completed", None, *code, *response),
            Settle::Fail {
                retryable,
                response,
                code,
            } => ("failed", Some(*retryable), *code, *response),
        }
    }

    /// The answer the COMPLETE or FAIL statement gives.
    pub fn answer(&self, attempts: i32) -> Jsonb {
        let mut b = Builder::new();
        b.begin_object().key("ok").bool(true).key("status");
        match self {
            Settle::Complete { .. } => b.string("completed"),
            Settle::Fail { retryable, .. } => b.string("failed").key("retryable").bool(*retryable),
        };
        b.key("attempts").int(attempts as i64);
        b.end().finish()
    }
}

/// Complete or fail a key this transaction holds, as the COMPLETE or FAIL
/// statement would, when its row is this transaction's own (begun in it,
/// the single-transaction use) and processing under a live lease; answers
/// as the statement does. READ COMMITTED only.
pub fn settle(k: &Key<'_>, how: &Settle<'_>) -> Option<Jsonb> {
    if xact_snapshot() {
        return None;
    }
    let wanted = (pg_sys::ACL_SELECT | pg_sys::ACL_UPDATE) as pg_sys::AclMode;
    let rel = Rel::for_write(&KEYS, wanted, k.org_id)?;
    let mut w = Writer::new(&rel);
    // SAFETY: SnapshotSelf sees this transaction's own changes, so the
    // probe finds the row's current version; only a version this
    // transaction made is changed, which no other transaction can lock or
    // change (they see it in flight and wait for us). The slot holds the
    // old row while the new one is built from it and written.
    let attempts = unsafe {
        let snapshot = &raw mut pg_sys::SnapshotSelfData;
        rel.fetch(PKEY, &key_datums(k), snapshot, |slot| {
            let tuple = pg_sys::ExecFetchSlotHeapTuple(slot, false, std::ptr::null_mut());
            let xmin = pg_sys::HeapTupleHeaderGetXmin((*tuple).t_data);
            if !pg_sys::TransactionIdIsCurrentTransactionId(xmin) {
                return None;
            }
            pg_sys::slot_getallattrs(slot);
            let v = |i: usize| value(slot, rel.col(i));
            let now = super::now();
            let processing = v(STATUS)
                .and_then(|d| String::from_datum(d, false))
                .as_deref()
                == Some("processing");
            let live = v(LOCKED_UNTIL).is_some_and(|d| d.value() as i64 > now);
            if !processing || !live {
                return None;
            }
            let attempts = v(ATTEMPTS).map_or(0, |d| d.value() as i32);
            let natts = (*(*rel.raw).rd_att).natts as usize;
            let (values, nulls) = w.row();
            for i in 0..natts {
                values[i] = *(*slot).tts_values.add(i);
                nulls[i] = *(*slot).tts_isnull.add(i);
            }
            let mut set = |i: usize, d: Option<pg_sys::Datum>| {
                values[rel.col(i)] = d.unwrap_or(pg_sys::Datum::from(0));
                nulls[rel.col(i)] = d.is_none();
            };
            let (status, retryable, code, response) = how.columns();
            set(STATUS, Some(text(status)));
            set(RETRYABLE, retryable.and_then(|r| r.into_datum()));
            set(RESPONSE_CODE, code.and_then(|c| c.into_datum()));
            set(RESPONSE, response.and_then(|r| r.into_datum()));
            set(COMPLETED_AT, now.into_datum());
            set(LOCKED_UNTIL, None);
            w.update((*slot).tts_tid);
            Some(attempts)
        })
        .flatten()
    };
    w.finish();
    rel.close();
    Some(how.answer(attempts?))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Whether the keys table, opened as the hot paths open it, is known,
    /// insertable and guarded by our policy alone.
    fn shape() -> (bool, bool, bool) {
        let rel = super::open_table();
        let seen = (rel.known(), rel.insertable(), rel.policy_is_ours());
        rel.close();
        seen
    }

    /// The table as integrity creates it takes the direct paths, and its
    /// policy is recognised from the relcache (a change to the policy
    /// sends the calls back to their statements, and back again).
    #[pg_test]
    fn the_keys_table_as_created_takes_the_direct_paths() {
        // Tests that change integrity.idempotency_keys run one at a time.
        crate::testutil::serialize_ddl();
        assert_eq!(shape(), (true, true, true));
        Spi::run(
            "ALTER POLICY idempotency_keys_org_scope ON integrity.idempotency_keys USING (true)",
        )
        .unwrap();
        assert_eq!(shape(), (true, true, false));
        // The same test with current_org() called on every row is another
        // expression: not taken for ours.
        Spi::run(
            "ALTER POLICY idempotency_keys_org_scope ON integrity.idempotency_keys
             USING (integrity.current_org() IS NULL OR org_id = integrity.current_org())",
        )
        .unwrap();
        assert_eq!(shape(), (true, true, false));
        Spi::run(
            "ALTER POLICY idempotency_keys_org_scope ON integrity.idempotency_keys
             USING ((SELECT integrity.current_org()) IS NULL OR org_id = (SELECT integrity.current_org()))",
        )
        .unwrap();
        assert_eq!(shape(), (true, true, true));
        Spi::run(
            "ALTER POLICY idempotency_keys_org_scope ON integrity.idempotency_keys TO CURRENT_USER",
        )
        .unwrap();
        assert_eq!(shape(), (true, true, false));
        Spi::run("ALTER POLICY idempotency_keys_org_scope ON integrity.idempotency_keys TO PUBLIC")
            .unwrap();
        assert_eq!(shape(), (true, true, true));
        Spi::run("CREATE POLICY second ON integrity.idempotency_keys AS RESTRICTIVE USING (true)")
            .unwrap();
        assert_eq!(shape(), (true, true, false));
    }

    /// `Rel::look` on the keys' primary key for `key` under org `…d2`: no
    /// entry (`None`), or the one entry's row, read directly, as a new
    /// snapshot sees it (`Some(None)`: invisible), by its `key` column.
    fn look(key: &str) -> Option<Option<String>> {
        let org =
            pgrx::datum::Uuid::from_bytes([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xd2]);
        let k = super::Key {
            org_id: org,
            scope: "POST /lacks",
            key,
        };
        let rel = super::open_table();
        // SAFETY: the key's datums in the primary key's order; the
        // snapshot is registered around the fetch, the key copied out of
        // the slot while it holds the row.
        let found = unsafe {
            match rel.look(super::PKEY, &super::key_datums(&k)) {
                super::Look::Absent => None,
                super::Look::Unsure => panic!("{key}: one plain entry, yet unsure"),
                super::Look::One(entry) => {
                    let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot());
                    let row = rel.fetch_tid(entry, snapshot, |slot| {
                        pg_sys::slot_getallattrs(slot);
                        super::value(slot, rel.col(super::KEY))
                            .and_then(|d| String::from_datum(d, false))
                    });
                    pg_sys::UnregisterSnapshot(snapshot);
                    Some(row.flatten())
                }
            }
        };
        rel.close();
        found
    }

    /// The one-descent look agrees with the table over many leaf pages: no
    /// entry for each absent key (between two present ones, before the
    /// first, after the last), the one entry of each present key, whose row
    /// it reads; a row deleted in this transaction keeps its entry and is
    /// not seen; an empty index has no entry for any key.
    #[pg_test]
    fn the_one_descent_look_finds_every_entry_and_only_those() {
        crate::testutil::serialize_ddl();
        Spi::run(
            "INSERT INTO integrity.idempotency_keys (org_id, scope, key, fingerprint, lease, expires_at)
             SELECT '00000000-0000-0000-0000-0000000000d2', 'POST /lacks', 'k' || lpad((2 * g)::text, 5, '0'),
                    'f', '1 minute', now() + '1 day'
             FROM generate_series(1, 3000) g",
        )
        .unwrap();
        let leaves: i64 = Spi::get_one(
            "SELECT (pg_relation_size('integrity.idempotency_keys_pkey') / 8192)::int8",
        )
        .unwrap()
        .unwrap();
        assert!(leaves > 10, "the keys span many leaf pages ({leaves})");
        for g in 0..=6001 {
            let key = format!("k{g:05}");
            let present = g % 2 == 0 && (2..=6000).contains(&g);
            let want = present.then(|| Some(key.clone()));
            assert_eq!(look(&key), want, "{key}");
        }
        Spi::run(
            "DELETE FROM integrity.idempotency_keys WHERE scope = 'POST /lacks' AND key = 'k00100'",
        )
        .unwrap();
        assert_eq!(
            look("k00100"),
            Some(None),
            "a deleted row's entry stays, its row unseen"
        );
        Spi::run("TRUNCATE integrity.idempotency_keys").unwrap();
        assert_eq!(look("k00102"), None, "an empty index has no entry");
    }

    /// The primary key's statistics of this transaction: idx_scan,
    /// idx_tup_read, idx_tup_fetch.
    fn pkey_counts() -> (i64, i64, i64) {
        Spi::get_three(
            "SELECT pg_stat_get_xact_numscans(i), pg_stat_get_xact_tuples_returned(i),
                    pg_stat_get_xact_tuples_fetched(i)
             FROM (SELECT 'integrity.idempotency_keys_pkey'::regclass AS i) s",
        )
        .map(|(a, b, c)| (a.unwrap(), b.unwrap(), c.unwrap()))
        .unwrap()
    }

    /// What `f` adds to the primary key's statistics.
    fn pkey_counted(f: impl FnOnce()) -> (i64, i64, i64) {
        let before = pkey_counts();
        f();
        let after = pkey_counts();
        (after.0 - before.0, after.1 - before.1, after.2 - before.2)
    }

    /// idem_begin's one-descent look counts in `pg_stat_user_indexes` what
    /// the index scan of a `SELECT` of the key counts: one scan, and for a
    /// stored key its entry read and its row fetched.
    #[pg_test]
    fn the_look_is_counted_as_the_index_scan_it_replaces() {
        Spi::run(&call("idem_begin", "counted", "'{}'")).unwrap();
        Spi::run(&call("idem_complete", "counted", "200, '{}'")).unwrap();
        Spi::run("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off").unwrap();
        let select = |key: &str| {
            format!(
                "SELECT fingerprint FROM integrity.idempotency_keys
                 WHERE org_id = '{ORG}' AND scope = 'POST /direct' AND key = '{key}'"
            )
        };
        for (key, read) in [("counted", 1), ("never-begun", 0)] {
            let by_scan = pkey_counted(|| Spi::run(&select(key)).unwrap());
            assert_eq!(by_scan, (1, read, read), "{key}: the SELECT's index scan");
            let by_look = pkey_counted(|| {
                Spi::run(&call("idem_begin", key, "'{}'")).unwrap();
            });
            assert_eq!(by_look, by_scan, "{key}: idem_begin counts as the scan");
        }
    }

    const ORG: &str = "00000000-0000-0000-0000-0000000000d1";

    fn call(f: &str, key: &str, rest: &str) -> String {
        format!("SELECT integrity.{f}('{ORG}', 'POST /direct', '{key}', {rest})")
    }

    /// The write without an executor state (`Rel::insert_row`) checks what
    /// the statement would: a row written under the key by someone who
    /// bypassed the functions is a conflict (23505, one row stays), and a
    /// NOT NULL a user added to a column we leave NULL is refused (23502).
    #[pg_test]
    fn a_plain_write_conflicts_and_refuses_nulls_as_a_statement_would() {
        crate::testutil::serialize_ddl();
        assert_eq!(
            crate::testutil::json(&call("idem_begin", "pw-1", "'{}'"))["outcome"],
            "started"
        );
        Spi::run(&format!(
            "INSERT INTO integrity.idempotency_keys (org_id, scope, key, fingerprint, lease, expires_at)
             VALUES ('{ORG}', 'POST /direct', 'pw-1', 'x', '1 minute', now() + '1 day')"
        ))
        .unwrap();
        assert_eq!(
            crate::testutil::sqlstate(&call("idem_complete", "pw-1", "201, '{}'")),
            "23505"
        );
        assert_eq!(
            crate::testutil::one::<i64>(
                "SELECT count(*) FROM integrity.idempotency_keys WHERE key = 'pw-1'"
            ),
            Some(1)
        );
        Spi::run(
            "UPDATE integrity.idempotency_keys SET recovery_point = '' WHERE recovery_point IS NULL;
             ALTER TABLE integrity.idempotency_keys ALTER COLUMN recovery_point SET NOT NULL",
        )
        .unwrap();
        assert_eq!(shape(), (true, true, true));
        assert_eq!(
            crate::testutil::json(&call("idem_begin", "pw-2", "'{}'"))["outcome"],
            "started"
        );
        assert_eq!(
            crate::testutil::sqlstate(&call("idem_complete", "pw-2", "201, '{}'")),
            "23502"
        );
        Spi::run(
            "ALTER TABLE integrity.idempotency_keys ALTER COLUMN recovery_point DROP NOT NULL",
        )
        .unwrap();
        assert_eq!(
            crate::testutil::json(&call("idem_complete", "pw-2", "201, '{}'"))["ok"],
            true
        );
    }
}

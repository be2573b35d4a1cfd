//! Prepared statements kept for the life of the backend.
//!
//! Hot functions (`book`, `cancel`, …) run the same few statements on every
//! call; parsing and planning them each time would cost more than running
//! them. Each statement is prepared once per backend with `SPI_keepplan` and
//! found again by its SQL text. Postgres's plan cache revalidates a kept plan
//! when the objects it uses change (or the extension is recreated).

use crate::errors::OrBug;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

/// A statement with the types of its `$n` parameters.
pub struct Stmt {
    pub sql: &'static str,
    pub args: &'static [pg_sys::Oid],
    /// Whether the statement writes (decides the SPI read-only flag).
    pub writes: bool,
}

thread_local! {
    // Postgres backends are single-threaded; the map is keyed by the
    // statement's address, stable for a `static Stmt`.
    static PLANS: RefCell<HashMap<usize, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// The kept plan for `stmt`, preparing it on first use in this backend.
///
/// Returns an `Rc` so no borrow of the cache is held while the statement runs
/// (it may call back into our functions, e.g. through a user trigger).
fn plan(client: &SpiClient<'_>, stmt: &'static Stmt) -> Rc<OwnedPreparedStatement> {
    let key = stmt as *const Stmt as usize;
    if let Some(p) = PLANS.with(|m| m.borrow().get(&key).cloned()) {
        return p;
    }
    let oids: Vec<PgOid> = stmt.args.iter().map(|o| PgOid::from(*o)).collect();
    let prepared = if stmt.writes {
        client.prepare_mut(stmt.sql, &oids)
    } else {
        client.prepare(stmt.sql, &oids)
    }
    .or_bug(stmt.sql)
    .keep();
    let p = Rc::new(prepared);
    PLANS.with(|m| m.borrow_mut().insert(key, p.clone()));
    p
}

/// Run a kept statement that only reads; up to `limit` rows (`None`: all).
pub fn read<'conn>(
    client: &SpiClient<'conn>,
    stmt: &'static Stmt,
    limit: Option<i64>,
    args: &[DatumWithOid<'_>],
) -> SpiTupleTable<'conn> {
    debug_assert!(!stmt.writes, "read() of a writing statement: {}", stmt.sql);
    let p = plan(client, stmt);
    client
        .select(&*p, limit.map(|l| l as _), args)
        .or_bug(stmt.sql)
}

/// Run a kept statement in a connection that may write.
pub fn run<'conn>(
    client: &mut SpiClient<'conn>,
    stmt: &'static Stmt,
    limit: Option<i64>,
    args: &[DatumWithOid<'_>],
) -> SpiTupleTable<'conn> {
    let p = plan(client, stmt);
    client
        .update(&*p, limit.map(|l| l as _), args)
        .or_bug(stmt.sql)
}

/// Run `f` with `enable_seqscan = off`, restored afterwards (as a function's
/// `SET enable_seqscan = off` would, but only around these statements).
///
/// A plan kept from a moment the table was empty or tiny (a fresh install, a
/// TRUNCATE + ANALYZE) would otherwise be a sequential scan for the life of
/// the connection, and the overlap checks would slow down as the table
/// grows. Index access is always right for them.
pub fn with_index_scans<R>(f: impl FnOnce() -> R) -> R {
    with_settings(&[(c"enable_seqscan", c"off")], f)
}

/// Run `f` with `search_path = pg_catalog, pg_temp`, restored afterwards:
/// the pin a function's `SET search_path` clause gives, only around the
/// SQL of a function whose hot path runs none (see README, Security).
pub fn pinned<R>(f: impl FnOnce() -> R) -> R {
    with_settings(&[(c"search_path", c"pg_catalog, pg_temp")], f)
}

/// `f()` as `user`, with the security context `security` makes of the
/// current one, restored after (an ERROR aborts the transaction, which
/// restores it itself): the switch a SECURITY DEFINER function or a
/// foreign-key check makes (fmgr_security_definer, ri_triggers.c).
pub fn as_user<R>(
    user: pg_sys::Oid,
    security: impl FnOnce(i32) -> i32,
    f: impl FnOnce() -> R,
) -> R {
    let (mut was, mut context) = (pg_sys::Oid::INVALID, 0);
    // SAFETY: reads and sets this backend's current user; restored below.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut was, &mut context);
        pg_sys::SetUserIdAndSecContext(user, security(context));
    }
    let r = f();
    // SAFETY: restores what was read above.
    unsafe { pg_sys::SetUserIdAndSecContext(was, context) };
    r
}

/// Run `f` with each (setting, value) in `settings`, restored afterwards,
/// as a function's SET clauses would be set, but only around `f`.
pub fn with_settings<R>(settings: &[(&CStr, &CStr)], f: impl FnOnce() -> R) -> R {
    // SAFETY: the GUC nest level is the mechanism fmgr uses for a
    // function's SET clauses; an ERROR inside `f` unwinds it at abort.
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        for (name, value) in settings {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        level
    };
    let r = f();
    // SAFETY: closes the nest level opened above, restoring the settings.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    r
}

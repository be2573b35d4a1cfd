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

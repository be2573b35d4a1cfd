//! Keys begun in this transaction whose row is not written yet.
//!
//! In single-transaction use a key's row is written once, by
//! `idem_complete` or `idem_fail`, already settled: no row is inserted as
//! processing only to be updated a moment later. What keeps a duplicate
//! out meanwhile is the key's lock, which `idem_begin` holds to the end of
//! the transaction. A key still pending when the transaction commits (or
//! prepares) is written then as processing under its lease, so the
//! multi-transaction use finds it exactly as if it had been written at
//! begin. A key begun in a subtransaction that rolls back is forgotten
//! with it (and its lock released with it); a row written in one that
//! rolls back leaves the key pending again.

use pgrx::datum::{Interval, Uuid};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};

use super::Key;
use crate::direct::plain;

/// A key begun in this transaction, not written yet.
#[derive(Clone)]
pub struct Pending {
    pub org_id: Uuid,
    pub scope: String,
    pub key: String,
    pub fingerprint: String,
    pub lease: Interval,
    pub ttl: Interval,
    /// When idem_begin ran (the row's created_at).
    pub begun: pg_sys::TimestampTz,
    /// The subtransaction that began it (moves to its parent when it
    /// commits).
    subxact: pg_sys::SubTransactionId,
    /// The transaction that began it.
    lxid: u32,
    /// The subtransaction that wrote its row, once written: if that one
    /// rolls back, the key is pending again.
    written_in: Option<pg_sys::SubTransactionId>,
    /// Who began it: the role and security context, and `integrity.org_id`
    /// (a row still pending at commit is written as them, not as whatever
    /// is in effect once a SECURITY DEFINER function or a function's SET
    /// has returned).
    user: pg_sys::Oid,
    security: i32,
    org: Option<std::ffi::CString>,
}

impl Pending {
    pub fn key(&self) -> Key<'_> {
        Key {
            org_id: self.org_id,
            scope: &self.scope,
            key: &self.key,
        }
    }

    fn is(&self, k: &Key<'_>) -> bool {
        self.org_id == k.org_id && self.scope == k.scope && self.key == k.key
    }
}

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    static HOOKED: Cell<bool> = const { Cell::new(false) };
}

fn lxid() -> u32 {
    // SAFETY: MyProc is this backend's PGPROC, set for the backend's life.
    unsafe { (*pg_sys::MyProc).lxid }
}

/// Remember `k` as begun in this transaction, to be written by `take`'s
/// caller or at commit by `write`.
pub fn add(
    k: &Key<'_>,
    fingerprint: String,
    lease: Interval,
    ttl: Interval,
    begun: pg_sys::TimestampTz,
) {
    if !HOOKED.with(|h| h.replace(true)) {
        // SAFETY: registered once per backend, for its life.
        unsafe {
            pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
        }
    }
    let (mut user, mut security) = (pg_sys::Oid::INVALID, 0);
    // SAFETY: reads the current user and security context.
    unsafe { plain::GetUserIdAndSecContext(&mut user, &mut security) };
    let p = Pending {
        org_id: k.org_id,
        scope: k.scope.to_string(),
        key: k.key.to_string(),
        fingerprint,
        lease,
        ttl,
        begun,
        // SAFETY: reads of this backend's transaction state.
        subxact: unsafe { plain::GetCurrentSubTransactionId() },
        lxid: lxid(),
        written_in: None,
        user,
        security,
        org: org_setting(),
    };
    PENDING.with(|v| v.borrow_mut().push(p));
}

/// The pending key `k` of this transaction, now marked written: the
/// caller writes its row (in the current subtransaction; should that roll
/// back, the key is pending again).
pub fn take(k: &Key<'_>) -> Option<Pending> {
    let now = lxid();
    // SAFETY: reads this backend's transaction state.
    let sub = unsafe { plain::GetCurrentSubTransactionId() };
    PENDING.with(|v| {
        let mut v = v.borrow_mut();
        let p = v
            .iter_mut()
            .find(|p| p.lxid == now && p.written_in.is_none() && p.is(k))?;
        p.written_in = Some(sub);
        Some(p.clone())
    })
}

/// Whether a key of this transaction is still to be written.
fn has_pending() -> bool {
    let now = lxid();
    PENDING.with(|v| {
        v.borrow()
            .iter()
            .any(|p| p.lxid == now && p.written_in.is_none())
    })
}

/// Write every key still pending, as processing (at commit or prepare,
/// and before a purge, which must see them).
pub fn write_all() {
    let now = lxid();
    // SAFETY: reads this backend's transaction state.
    let sub = unsafe { plain::GetCurrentSubTransactionId() };
    loop {
        // One at a time, with no borrow held while it is written.
        let next = PENDING.with(|v| {
            let mut v = v.borrow_mut();
            let p = v
                .iter_mut()
                .find(|p| p.lxid == now && p.written_in.is_none())?;
            p.written_in = Some(sub);
            Some(p.clone())
        });
        match next {
            Some(p) => as_begun(&p, || super::write_pending(&p)),
            None => break,
        }
    }
}

/// `integrity.org_id` as it is set now (None: not set).
fn org_setting() -> Option<std::ffi::CString> {
    // SAFETY: GetConfigOption returns the setting's string or NULL.
    unsafe {
        let p = plain::GetConfigOption(c"integrity.org_id".as_ptr(), true, false);
        (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_owned())
    }
}

/// `f()` as the role, security context and `integrity.org_id` `p` was
/// begun under; restored after (an ERROR aborts the transaction, which
/// restores both itself).
fn as_begun<R>(p: &Pending, f: impl FnOnce() -> R) -> R {
    let as_user = || crate::plans::as_user(p.user, |_| p.security, f);
    if org_setting() == p.org {
        return as_user();
    }
    let org = p.org.as_deref().unwrap_or(c"");
    crate::plans::with_settings(&[(c"integrity.org_id", org)], as_user)
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        // Still inside the transaction: an ERROR here aborts it.
        // A snapshot for what the write may run (index expressions and
        // predicates, the SQL path), as deferred triggers get one here.
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE if has_pending() => {
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            write_all();
            pg_sys::PopActiveSnapshot();
        }
        // Over (or handed to PREPARE): nothing is pending any more. Only
        // our own memory is touched here.
        XACT_EVENT_COMMIT
        | XACT_EVENT_ABORT
        | XACT_EVENT_PREPARE
        | XACT_EVENT_PARALLEL_ABORT
        | XACT_EVENT_PARALLEL_COMMIT => PENDING.with(|v| v.borrow_mut().clear()),
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    PENDING.with(|v| {
        let mut v = v.borrow_mut();
        match event {
            // Rolled back: a key begun in it was never begun (its lock
            // goes too); a row written in it was never written.
            SUBXACT_EVENT_ABORT_SUB => {
                v.retain(|p| p.subxact != sub);
                v.iter_mut()
                    .filter(|p| p.written_in == Some(sub))
                    .for_each(|p| p.written_in = None);
            }
            SUBXACT_EVENT_COMMIT_SUB => v.iter_mut().for_each(|p| {
                if p.subxact == sub {
                    p.subxact = parent;
                }
                if p.written_in == Some(sub) {
                    p.written_in = Some(parent);
                }
            }),
            _ => {}
        }
    })
}

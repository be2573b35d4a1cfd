//! `book`'s hot path without SQL: the overlap probe as a scan of the
//! exclusion constraint's own GiST index, and the claim as a heap insert
//! plus `ExecInsertIndexTuples`, the routine every INSERT uses.
//!
//! Both go through `crate::direct`, which says what they do as a statement
//! would and when they answer `None` so that `book` runs SQL instead. The
//! probe runs under the snapshot a statement would get
//! (`GetTransactionSnapshot`), so it sees what a SELECT at this point sees
//! and, under SERIALIZABLE, takes the same predicate locks; the insert
//! writes the same WAL, maintains every index on the table and makes the
//! exclusion check `bookings_no_overlap` exactly as an INSERT does.

use crate::direct::{Rel, Spec, Ty, Writer};
use crate::errors::bug;
use crate::jsonb::Jsonb;
use pgrx::datum::{Range, RangeBound, Uuid};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use std::ptr::null_mut;

/// An active booking that overlaps the probed span.
pub struct Conflict {
    pub id: Uuid,
    pub starts_at: TimestampWithTimeZone,
    pub ends_at: TimestampWithTimeZone,
}

/// What a direct claim did.
pub enum Claimed {
    /// The row is in, with this id.
    Booked(Uuid),
    /// The exclusion constraint found an overlapping booking; our row was
    /// deleted again and nothing of it is visible.
    Taken,
}

/// `integrity.bookings` as integrity creates it.
static BOOKINGS: Spec = Spec {
    slot: 0,
    table: c"bookings",
    columns: &[
        "id",
        "org_id",
        "resource_id",
        "contact_id",
        "during",
        "status",
        "metadata",
        "created_at",
        "updated_at",
        "cancelled_at",
        "cancel_reason",
        "rescheduled_from",
    ],
    indexes: &[c"bookings_no_overlap"],
    types: &[
        Ty::Base(pg_sys::UUIDOID),        // id
        Ty::Base(pg_sys::UUIDOID),        // org_id
        Ty::Base(pg_sys::UUIDOID),        // resource_id
        Ty::Base(pg_sys::UUIDOID),        // contact_id
        Ty::Base(pg_sys::TSTZRANGEOID),   // during
        Ty::Base(pg_sys::TEXTOID),        // status
        Ty::Base(pg_sys::JSONBOID),       // metadata
        Ty::Base(pg_sys::TIMESTAMPTZOID), // created_at
        Ty::Base(pg_sys::TIMESTAMPTZOID), // updated_at
        Ty::Base(pg_sys::TIMESTAMPTZOID), // cancelled_at
        Ty::Base(pg_sys::TEXTOID),        // cancel_reason
        Ty::Base(pg_sys::UUIDOID),        // rescheduled_from
    ],
    keys: &[&["org_id", "resource_id", "during"]],
    // A new active booking (status booked, cancelled_at NULL) satisfies it.
    checks: &["bookings_cancelled_check"],
    policy: "bookings_org_scope",
};

/// Positions in `BOOKINGS.columns` of the columns `book` reads or sets;
/// the others are NULL in a new booking.
const ID: usize = 0;
const ORG_ID: usize = 1;
const RESOURCE_ID: usize = 2;
const CONTACT_ID: usize = 3;
const DURING: usize = 4;
const STATUS: usize = 5;
const METADATA: usize = 6;
const CREATED_AT: usize = 7;
const UPDATED_AT: usize = 8;
/// `BOOKINGS.indexes`: the exclusion constraint's index.
const NO_OVERLAP: usize = 0;

/// Take the lock an INSERT into `integrity.bookings` takes (ROW EXCLUSIVE),
/// now. `book` takes it before its advisory locks, so a booker never holds
/// advisory locks while queueing for the table behind DDL (which in turn
/// waits for other bookers): table first, then advisory locks, as every
/// writer of the table orders them.
pub fn lock_for_insert() {
    Rel::open(&BOOKINGS, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE).close();
}

/// Active bookings of (`org_id`, `resource_id`) that overlap
/// `[starts_at, ends_at)` (`span` is that range as a datum), ordered by
/// start, as a statement starting now would see them; `None` when SQL must
/// answer instead (see the module comment).
pub fn overlapping(
    org_id: Uuid,
    resource_id: Uuid,
    span: pg_sys::Datum,
    starts_at: TimestampWithTimeZone,
    ends_at: TimestampWithTimeZone,
) -> Option<Vec<Conflict>> {
    let (lo, hi) = (i64::from(starts_at), i64::from(ends_at));
    let mut conflicts = Vec::new();
    // SAFETY: the relations are opened and closed here (their locks kept to
    // the end of the transaction, as a statement keeps them); the snapshot
    // is registered for the scan's life; the slot's values are read only
    // while the slot holds its tuple, and copied out before the next one.
    // An ERROR anywhere releases all of them through the resource owner.
    unsafe {
        let rel = Rel::open(&BOOKINGS, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let select = pg_sys::ACL_SELECT as pg_sys::AclMode;
        if !rel.known() || !rel.allowed(select, org_id) {
            rel.close();
            return None;
        }
        let heap = rel.raw;
        let col = |i: usize| rel.col(i);
        let index = pg_sys::index_open(
            rel.index(NO_OVERLAP),
            pg_sys::AccessShareLock as pg_sys::LOCKMODE,
        );
        if (*(*index).rd_index).indnkeyatts != 3 {
            bug("bookings_no_overlap is not the three-column index integrity created");
        }
        // The operators, strategies and collations the exclusion check uses.
        let (mut ops, mut procs, mut strats) = (null_mut(), null_mut(), null_mut());
        pg_sys::RelationGetExclusionInfo(index, &mut ops, &mut procs, &mut strats);
        let values = [
            org_id.into_datum().unwrap_or_else(|| bug("uuid datum")),
            resource_id
                .into_datum()
                .unwrap_or_else(|| bug("uuid datum")),
            span,
        ];
        let mut keys: [pg_sys::ScanKeyData; 3] = std::mem::zeroed();
        for (i, key) in keys.iter_mut().enumerate() {
            pg_sys::ScanKeyEntryInitialize(
                key,
                0,
                (i + 1) as pg_sys::AttrNumber,
                *strats.add(i),
                Oid::INVALID,
                *(*index).rd_indcollation.add(i),
                *procs.add(i),
                values[i],
            );
        }
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot());
        let slot = pg_sys::table_slot_create(heap, null_mut());
        let scan = pg_sys::index_beginscan(heap, index, snapshot, 3, 0);
        pg_sys::index_rescan(scan, keys.as_mut_ptr(), 3, null_mut(), 0);
        let last = [
            col(ID),
            col(ORG_ID),
            col(RESOURCE_ID),
            col(DURING),
            col(STATUS),
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + 1;
        while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
            pg_sys::slot_getsomeattrs(slot, last as i32);
            let value = |i: usize| -> Option<pg_sys::Datum> {
                (!*(*slot).tts_isnull.add(i)).then(|| *(*slot).tts_values.add(i))
            };
            let uuid = |i: usize| value(i).and_then(|d| Uuid::from_datum(d, false));
            // The index is exact for these operators, but check anyway: a
            // lossy match or a row that is not active must not be reported.
            let active = value(col(STATUS)).and_then(|d| String::from_datum(d, false))
                == Some("booked".into());
            if !active
                || uuid(col(ORG_ID)) != Some(org_id)
                || uuid(col(RESOURCE_ID)) != Some(resource_id)
            {
                continue;
            }
            let Some(id) = uuid(col(ID)) else { continue };
            let during = value(col(DURING))
                .and_then(|d| Range::<TimestampWithTimeZone>::from_datum(d, false));
            let bound =
                |b: Option<&RangeBound<TimestampWithTimeZone>>| b.and_then(|b| b.get().copied());
            let (Some(s), Some(e)) = (
                during.as_ref().and_then(|r| bound(r.lower())),
                during.as_ref().and_then(|r| bound(r.upper())),
            ) else {
                bug("a booking whose span is not a finite [start, end)");
            };
            // Both spans are [start, end).
            if i64::from(s) < hi && lo < i64::from(e) {
                conflicts.push(Conflict {
                    id,
                    starts_at: s,
                    ends_at: e,
                });
            }
        }
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::UnregisterSnapshot(snapshot);
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        rel.close();
    }
    conflicts.sort_by_key(|c| i64::from(c.starts_at));
    Some(conflicts)
}

/// Insert an active booking, letting the exclusion constraint decide: if
/// it finds an overlapping booking (committed, or in flight in a writer
/// that bypasses our locks) the row is deleted again and the answer is
/// `Taken`. `None` when SQL must do it instead (see the module comment).
///
/// Only for claims made under our locks at READ COMMITTED, where an
/// in-flight overlapping booking can only come from such a bypassing
/// writer; the constraint reports it without waiting for it.
pub fn insert(
    org_id: Uuid,
    resource_id: Uuid,
    contact_id: Option<Uuid>,
    span: pg_sys::Datum,
    metadata: Jsonb,
) -> Option<Claimed> {
    let wanted = (pg_sys::ACL_SELECT | pg_sys::ACL_INSERT) as pg_sys::AclMode;
    let rel = Rel::for_write(&BOOKINGS, wanted, org_id)?;
    let mut w = Writer::new(&rel);
    let (values, nulls) = w.row();
    let mut set = |i: usize, d: Option<pg_sys::Datum>| {
        if let Some(d) = d {
            values[rel.col(i)] = d;
            nulls[rel.col(i)] = false;
        }
    };
    // The column defaults, as integrity.bookings declares them (the id a
    // random version-4 UUID, as gen_random_uuid() makes).
    let id = crate::ids::random_uuid();
    // SAFETY: reads of the transaction's start time; a text datum made
    // from a C string.
    let (now, booked) = unsafe {
        (
            pg_sys::GetCurrentTransactionStartTimestamp(),
            pg_sys::Datum::from(pg_sys::cstring_to_text(c"booked".as_ptr())),
        )
    };
    set(ID, id.into_datum());
    set(ORG_ID, org_id.into_datum());
    set(RESOURCE_ID, resource_id.into_datum());
    set(CONTACT_ID, contact_id.into_datum());
    set(DURING, Some(span));
    set(STATUS, Some(booked));
    set(METADATA, metadata.into_datum());
    set(CREATED_AT, Some(pg_sys::Datum::from(now)));
    set(UPDATED_AT, Some(pg_sys::Datum::from(now)));
    // The exclusion constraint is the arbiter. The claim is made under our
    // locks, where a booking in flight can only come from a writer that
    // bypasses them; deleting our row again cannot form a wait cycle.
    let inserted = w.insert(rel.index(NO_OVERLAP));
    w.finish();
    rel.close();
    Some(if inserted {
        Claimed::Booked(id)
    } else {
        Claimed::Taken
    })
}

//! `book`'s hot path without SQL: the overlap probe as a scan of the
//! exclusion constraint's own GiST index, and the claim as a heap insert
//! plus `ExecInsertIndexTuples`, the routine every INSERT uses.
//!
//! Through SPI, each call paid a plan revalidation, an executor start and
//! end, projections and a re-planned CHECK constraint around work that is
//! one index scan or one row. Here only the work is left, done by the same
//! Postgres routines a statement would use: the probe runs under the
//! snapshot a statement would get (`GetTransactionSnapshot`), so it sees
//! what a SELECT at this point sees and, under SERIALIZABLE, takes the same
//! predicate locks; the insert writes the same WAL, maintains every index
//! on the table and makes the exclusion check `bookings_no_overlap`
//! exactly as an INSERT does.
//!
//! Row-level security is applied as the rewriter would apply it when the
//! table's only policy is `bookings_org_scope` as integrity created it: the
//! policy depends on `org_id` alone, every row `book` reads or writes has
//! the requested `org_id`, so one evaluation of it decides for all of them.
//!
//! Where a statement would do more than that, these functions answer `None`
//! and `book` runs SQL instead: when the role lacks table-level SELECT and
//! INSERT (column grants, or none: SQL reports it), when row-level security
//! applies with other policies or refuses the tenant (SQL raises 42501),
//! when the table has triggers, CHECK constraints other than ours, or
//! columns we do not know (someone changed it).

use crate::errors::bug;
use crate::jsonb::Jsonb;
use pgrx::datum::{Range, RangeBound, Uuid};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use std::ffi::CStr;
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

/// The columns of `integrity.bookings` that `book` reads or sets (0-based
/// positions in its tuple descriptor). The others (cancelled_at,
/// cancel_reason, rescheduled_from) are NULL in a new booking.
#[derive(Default, Clone, Copy)]
struct Columns {
    id: usize,
    org_id: usize,
    resource_id: usize,
    contact_id: usize,
    during: usize,
    status: usize,
    metadata: usize,
    created_at: usize,
    updated_at: usize,
}

/// Where `integrity.bookings` and its constraint index are.
fn relation_ids() -> (Oid, Oid) {
    // SAFETY: catalog lookups by name; each answers InvalidOid when the
    // relation does not exist (the schema lookup raises 3F000 itself).
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"integrity".as_ptr(), false);
        let table = pg_sys::get_relname_relid(c"bookings".as_ptr(), nsp);
        let index = pg_sys::get_relname_relid(c"bookings_no_overlap".as_ptr(), nsp);
        if table == Oid::INVALID || index == Oid::INVALID {
            bug("integrity.bookings or its index bookings_no_overlap is missing");
        }
        (table, index)
    }
}

/// The table's columns, if they are exactly the ones integrity created.
///
/// # Safety
/// `rel` is an open relation.
unsafe fn columns(rel: pg_sys::Relation) -> Option<Columns> {
    let desc = (*rel).rd_att;
    let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
    let mut c = Columns::default();
    let mut seen = 0;
    for (i, a) in attrs.iter().enumerate() {
        if a.attisdropped {
            continue;
        }
        let slot = match CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() {
            b"id" => &mut c.id,
            b"org_id" => &mut c.org_id,
            b"resource_id" => &mut c.resource_id,
            b"contact_id" => &mut c.contact_id,
            b"during" => &mut c.during,
            b"status" => &mut c.status,
            b"metadata" => &mut c.metadata,
            b"created_at" => &mut c.created_at,
            b"updated_at" => &mut c.updated_at,
            // Known, NULL in a new booking.
            b"cancelled_at" | b"cancel_reason" | b"rescheduled_from" => {
                seen += 1;
                continue;
            }
            _ => return None,
        };
        *slot = i;
        seen += 1;
    }
    (seen == 12).then_some(c)
}

/// What this backend knows about `integrity.bookings`, kept until Postgres
/// invalidates the table's relcache entry (ALTER TABLE, CREATE TRIGGER,
/// CREATE/ALTER/DROP POLICY, GRANT, DROP EXTENSION, …), so a call pays no
/// catalog lookups.
#[derive(Clone, Copy)]
struct Shape {
    table: Oid,
    index: Oid,
    /// `None` when the columns are not the ones integrity created.
    col: Option<Columns>,
    /// A direct insert does what an INSERT would: no triggers, no CHECK
    /// but ours, no generated columns.
    insertable: bool,
    /// Row security on the table is `bookings_org_scope` alone, as created.
    our_policy: bool,
}

thread_local! {
    static SHAPE: std::cell::Cell<Option<Shape>> = const { std::cell::Cell::new(None) };
    static WATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Relcache invalidation callback: forget the shape when the table or its
/// index changes (or everything is invalidated).
unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, relid: Oid) {
    // Only Cells here: this runs inside Postgres's invalidation processing,
    // possibly while our own code is between two steps.
    let ours = relid == Oid::INVALID
        || SHAPE.with(|c| {
            c.get()
                .is_some_and(|s| relid == s.table || relid == s.index)
        })
        || INDEX_OIDS.with(|c| c.get().contains(&relid));
    if ours {
        SHAPE.with(|c| c.set(None));
        INDEXES_STALE.with(|c| c.set(true));
    }
}

/// The table's indexes, opened and locked (ROW EXCLUSIVE, as
/// ExecOpenIndices does), with their kept IndexInfos; `None` where
/// ExecOpenIndices must do it (see `kept_indexes`).
///
/// The indexes are opened before the kept state is used: opening takes any
/// pending invalidations, and an invalidation of an index that was closed
/// frees its relcache entry, which GiST's kept state points into. If one
/// arrived, the state is rebuilt with the indexes open.
///
/// # Safety
/// `rel` is `integrity.bookings`, open and locked.
unsafe fn open_kept_indexes(
    rel: pg_sys::Relation,
) -> Option<(Vec<pg_sys::Relation>, Vec<*mut pg_sys::IndexInfo>)> {
    let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    for _ in 0..3 {
        let (oids, _) = kept_indexes(rel)?;
        let descs: Vec<pg_sys::Relation> = oids
            .iter()
            .map(|&oid| pg_sys::index_open(oid, lock))
            .collect();
        if !INDEXES_STALE.with(|c| c.get()) {
            if let Some((_, infos)) = kept_indexes(rel) {
                if !infos.is_empty() {
                    return Some((descs, infos));
                }
            }
        }
        for d in descs {
            pg_sys::index_close(d, lock);
        }
    }
    None
}

/// Most indexes on the table whose IndexInfo we keep.
const MAX_INDEXES: usize = 8;

thread_local! {
    /// IndexInfo of each index on the table, kept across calls.
    static INDEXES: std::cell::RefCell<Option<Indexes>> = const { std::cell::RefCell::new(None) };
    /// Set by `forget`; the kept IndexInfos are rebuilt before next use.
    static INDEXES_STALE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The OIDs in INDEXES, for `forget` (InvalidOid-padded).
    static INDEX_OIDS: std::cell::Cell<[Oid; MAX_INDEXES]> = const { std::cell::Cell::new([Oid::INVALID; MAX_INDEXES]) };
}

/// What an INSERT statement builds for every index of the table on every
/// execution (`ExecOpenIndices`: BuildIndexInfo, then the partial index's
/// predicate planned and compiled, then GiST's per-index state made on its
/// first insert), built once and kept in a memory context of its own until
/// an invalidation of the table or one of its indexes.
struct Indexes {
    cxt: pg_sys::MemoryContext,
    oids: Vec<Oid>,
    infos: Vec<*mut pg_sys::IndexInfo>,
}

/// The kept IndexInfos for `rel`, built if needed; `None` when the table
/// has an index we do not keep state for (not btree or GiST, or too many):
/// then the caller uses ExecOpenIndices as a statement would.
///
/// # Safety
/// `rel` is `integrity.bookings`, open and locked.
unsafe fn kept_indexes(rel: pg_sys::Relation) -> Option<(Vec<Oid>, Vec<*mut pg_sys::IndexInfo>)> {
    if INDEXES_STALE.with(|c| c.replace(false)) {
        if let Some(old) = INDEXES.with(|c| c.borrow_mut().take()) {
            pg_sys::MemoryContextDelete(old.cxt);
        }
        INDEX_OIDS.with(|c| c.set([Oid::INVALID; MAX_INDEXES]));
    }
    if let Some(kept) = INDEXES.with(|c| {
        c.borrow()
            .as_ref()
            .map(|i| (i.oids.clone(), i.infos.clone()))
    }) {
        // Empty infos: the table has an index we keep no state for.
        return (!kept.1.is_empty()).then_some(kept);
    }
    let list = pg_sys::RelationGetIndexList(rel);
    let oids: Vec<Oid> = if list.is_null() {
        Vec::new()
    } else {
        (0..(*list).length as usize)
            .map(|i| (*(*list).elements.add(i)).oid_value)
            .collect()
    };
    let remember_unsupported = || {
        INDEXES.with(|c| {
            *c.borrow_mut() = Some(Indexes {
                cxt: pg_sys::AllocSetContextCreateInternal(
                    pg_sys::TopMemoryContext,
                    c"integrity bookings indexes".as_ptr(),
                    0,
                    1024,
                    8 * 1024,
                ),
                oids: Vec::new(),
                infos: Vec::new(),
            })
        });
        None
    };
    if oids.is_empty() || oids.len() > MAX_INDEXES {
        return remember_unsupported();
    }
    let cxt = pg_sys::AllocSetContextCreateInternal(
        pg_sys::TopMemoryContext,
        c"integrity bookings indexes".as_ptr(),
        0,
        8 * 1024,
        8 * 1024 * 1024,
    );
    let old = pg_sys::MemoryContextSwitchTo(cxt);
    let mut infos = Vec::with_capacity(oids.len());
    let mut supported = true;
    for &oid in &oids {
        let index = pg_sys::index_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let am = (*(*index).rd_rel).relam;
        if am != pg_sys::BTREE_AM_OID && am != pg_sys::GIST_AM_OID {
            supported = false;
        } else {
            let info = pg_sys::BuildIndexInfo(index);
            if !(*info).ii_Predicate.is_null() {
                // What ExecPrepareQual does, into our context.
                let planned = pg_sys::expression_planner((*info).ii_Predicate.cast());
                (*info).ii_PredicateState = pg_sys::ExecInitQual(planned.cast(), null_mut());
            }
            infos.push(info);
        }
        pg_sys::index_close(index, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
    }
    pg_sys::MemoryContextSwitchTo(old);
    if !supported {
        pg_sys::MemoryContextDelete(cxt);
        return remember_unsupported();
    }
    let mut padded = [Oid::INVALID; MAX_INDEXES];
    padded[..oids.len()].copy_from_slice(&oids);
    INDEX_OIDS.with(|c| c.set(padded));
    INDEXES.with(|c| {
        *c.borrow_mut() = Some(Indexes {
            cxt,
            oids: oids.clone(),
            infos: infos.clone(),
        })
    });
    Some((oids, infos))
}

/// The policy as sql/booking.sql creates it, as `pg_get_expr` prints it.
const OUR_POLICY: &str =
    "((integrity.current_org() IS NULL) OR (org_id = integrity.current_org()))";

/// Work out the shape of the open relation `rel`.
///
/// # Safety
/// `rel` is `integrity.bookings`, open and locked.
unsafe fn shape_of(rel: pg_sys::Relation) -> Shape {
    let table = (*rel).rd_id;
    let (_, index) = relation_ids();
    let col = columns(rel);
    let insertable = col.is_some() && (*rel).trigdesc.is_null() && only_our_checks(rel);
    let our_policy = !(*(*rel).rd_rel).relrowsecurity
        || Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.count(*) = 1 AND pg_catalog.bool_and(
                 p.polname = 'bookings_org_scope' AND p.polcmd = '*' AND p.polpermissive
                 AND p.polroles = '{0}' AND p.polwithcheck IS NULL
                 AND pg_catalog.pg_get_expr(p.polqual, p.polrelid) = $2)
             FROM pg_catalog.pg_policy p WHERE p.polrelid = $1",
            &[table.into(), OUR_POLICY.into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
    if !WATCHING.with(|w| w.replace(true)) {
        pg_sys::CacheRegisterRelcacheCallback(Some(forget), pg_sys::Datum::from(0));
    }
    Shape {
        table,
        index,
        col,
        insertable,
        our_policy,
    }
}

/// Open `integrity.bookings` with `lockmode` and say what it is like.
fn open(lockmode: pg_sys::LOCKMODE) -> (pg_sys::Relation, Shape) {
    // SAFETY: a relation opened by OID, falling back to its name when the
    // remembered OID no longer opens; the shape is read with it open.
    unsafe {
        let mut rel = match SHAPE.with(|c| c.get()) {
            Some(s) => pg_sys::try_relation_open(s.table, lockmode),
            None => null_mut(),
        };
        // The remembered OID may have been dropped (or, in theory, reused).
        if !rel.is_null()
            && CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr()).to_bytes() != b"bookings"
        {
            pg_sys::relation_close(rel, lockmode);
            rel = null_mut();
        }
        if rel.is_null() {
            SHAPE.with(|c| c.set(None));
            rel = pg_sys::table_open(relation_ids().0, lockmode);
        }
        // Opening took the lock and with it any pending invalidations, so
        // a remembered shape still here is current.
        let shape = match SHAPE.with(|c| c.get()) {
            Some(s) if s.table == (*rel).rd_id => s,
            _ => {
                let s = shape_of(rel);
                SHAPE.with(|c| c.set(Some(s)));
                s
            }
        };
        (rel, shape)
    }
}

/// Take the lock an INSERT into `integrity.bookings` takes (ROW EXCLUSIVE),
/// now. `book` takes it before its advisory locks, so a booker never holds
/// advisory locks while queueing for the table behind DDL (which in turn
/// waits for other bookers): table first, then advisory locks, as every
/// writer of the table orders them.
pub fn lock_for_insert() {
    let (rel, _) = open(pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
    // SAFETY: closes the relation `open` returned; the lock stays to the
    // end of the transaction.
    unsafe { pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE) };
}

/// Whether the direct path may act for this role on `org_id`'s rows:
/// table-level SELECT and INSERT, and row security either not applying to
/// the role or being our policy with the tenant in scope.
fn allowed(shape: &Shape, org_id: Uuid) -> bool {
    let wanted = (pg_sys::ACL_SELECT | pg_sys::ACL_INSERT) as pg_sys::AclMode;
    // SAFETY: privilege and RLS checks by OID; check_enable_rls with
    // noError = false raises what a statement would (row_security = off).
    unsafe {
        let user = pg_sys::GetUserId();
        if pg_sys::pg_class_aclmask(shape.table, user, wanted, pg_sys::AclMaskHow::ACLMASK_ALL)
            != wanted
        {
            return false;
        }
        pg_sys::check_enable_rls(shape.table, Oid::INVALID, false)
            != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
            || (shape.our_policy && tenant_in_scope(org_id))
    }
}

/// `integrity.current_org() IS NULL OR org_id = integrity.current_org()`.
fn tenant_in_scope(org_id: Uuid) -> bool {
    // SAFETY: GetConfigOption returns the setting's current string or NULL;
    // uuid_in parses it, raising 22P02 as the policy's cast would.
    unsafe {
        let p = pg_sys::GetConfigOption(c"integrity.org_id".as_ptr(), true, false);
        if p.is_null() || *p == 0 {
            return true;
        }
        pgrx::direct_function_call::<Uuid>(pg_sys::uuid_in, &[Some(pg_sys::Datum::from(p))])
            == Some(org_id)
    }
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
        let (heap, shape) = open(pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let col = match shape.col {
            Some(col) if allowed(&shape, org_id) => col,
            _ => {
                pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
                return None;
            }
        };
        let index_id = shape.index;
        let index = pg_sys::index_open(index_id, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
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
        let last = [col.id, col.org_id, col.resource_id, col.during, col.status]
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
            let active = value(col.status).and_then(|d| String::from_datum(d, false))
                == Some("booked".into());
            if !active
                || uuid(col.org_id) != Some(org_id)
                || uuid(col.resource_id) != Some(resource_id)
            {
                continue;
            }
            let Some(id) = uuid(col.id) else { continue };
            let during = value(col.during)
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
        pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
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
    // SAFETY: the same sequence an INSERT's executor runs for one row
    // (ExecInitModifyTable, ExecInsert, ExecEndModifyTable), on a relation
    // opened here; every value stored is a datum of its column's type. An
    // ERROR anywhere releases the relation, indexes and executor state.
    unsafe {
        let (rel, shape) = open(pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let col = match shape.col {
            Some(col) if shape.insertable && allowed(&shape, org_id) => col,
            _ => {
                pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
                return None;
            }
        };
        let index_id = shape.index;
        let desc = (*rel).rd_att;
        let natts = (*desc).natts as usize;
        let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsVirtual);
        let values = std::slice::from_raw_parts_mut((*slot).tts_values, natts);
        let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, natts);
        nulls.fill(true);
        let mut set = |i: usize, d: Option<pg_sys::Datum>| {
            if let Some(d) = d {
                values[i] = d;
                nulls[i] = false;
            }
        };
        // The column defaults, as integrity.bookings declares them (the id
        // a random version-4 UUID, as gen_random_uuid() makes).
        let id = crate::ids::random_uuid();
        let now = pg_sys::GetCurrentTransactionStartTimestamp();
        set(col.id, id.into_datum());
        set(col.org_id, org_id.into_datum());
        set(col.resource_id, resource_id.into_datum());
        set(col.contact_id, contact_id.into_datum());
        set(col.during, Some(span));
        set(
            col.status,
            Some(pg_sys::Datum::from(pg_sys::cstring_to_text(
                c"booked".as_ptr(),
            ))),
        );
        set(col.metadata, metadata.into_datum());
        set(col.created_at, Some(pg_sys::Datum::from(now)));
        set(col.updated_at, Some(pg_sys::Datum::from(now)));
        pg_sys::ExecStoreVirtualTuple(slot);

        let estate = pg_sys::CreateExecutorState();
        let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
            .cast::<pg_sys::ResultRelInfo>();
        pg_sys::InitResultRelInfo(rri, rel, 1, null_mut(), 0);
        match open_kept_indexes(rel) {
            // ExecOpenIndices with the kept IndexInfos: the indexes are
            // opened and locked as it opens them, and closed again below
            // by ExecCloseIndices.
            Some((descs, infos)) => {
                let n = descs.len();
                let d = pg_sys::palloc(n * std::mem::size_of::<pg_sys::Relation>())
                    .cast::<pg_sys::Relation>();
                let k = pg_sys::palloc(n * std::mem::size_of::<*mut pg_sys::IndexInfo>())
                    .cast::<*mut pg_sys::IndexInfo>();
                for i in 0..n {
                    *d.add(i) = descs[i];
                    *k.add(i) = infos[i];
                }
                (*rri).ri_NumIndices = n as i32;
                (*rri).ri_IndexRelationDescs = d;
                (*rri).ri_IndexRelationInfo = k;
            }
            None => pg_sys::ExecOpenIndices(rri, false),
        }
        pg_sys::table_tuple_insert(rel, slot, pg_sys::GetCurrentCommandId(true), 0, null_mut());
        // noDupErr with the constraint's index as the only arbiter: an
        // overlap comes back as that index in the list instead of 23P01,
        // and an in-flight overlapping row is reported without a wait.
        let arbiters = pg_sys::lappend_oid(null_mut(), index_id);
        let mut speculative_conflict = false;
        let violated = pg_sys::ExecInsertIndexTuples(
            rri,
            slot,
            estate,
            false,
            true,
            &mut speculative_conflict,
            arbiters,
        );
        // Only our constraint's index in the list means an overlap (a
        // deferrable constraint would also be listed, for a later recheck,
        // but those come with triggers, which send book to SQL).
        let taken = pg_sys::list_member_oid(violated, index_id);
        // Later commands of this transaction see the row (or its deletion).
        pg_sys::CommandCounterIncrement();
        if taken {
            pg_sys::simple_heap_delete(rel, &mut (*slot).tts_tid);
            pg_sys::CommandCounterIncrement();
        }
        pg_sys::ExecCloseIndices(rri);
        pg_sys::FreeExecutorState(estate);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        Some(if taken {
            Claimed::Taken
        } else {
            Claimed::Booked(id)
        })
    }
}

/// Whether the table's only CHECK constraint is ours, which a new active
/// booking (status booked, cancelled_at NULL) satisfies by construction,
/// and it has no generated columns. Every other constraint is enforced by
/// the indexes (`ExecInsertIndexTuples`) or by the domains of the values,
/// which `book` has validated.
///
/// # Safety
/// `rel` is an open relation.
unsafe fn only_our_checks(rel: pg_sys::Relation) -> bool {
    let constr = (*(*rel).rd_att).constr;
    if constr.is_null() {
        return true;
    }
    if (*constr).has_generated_stored {
        return false;
    }
    match (*constr).num_check {
        0 => true,
        1 => CStr::from_ptr((*(*constr).check).ccname).to_bytes() == b"bookings_cancelled_check",
        _ => false,
    }
}

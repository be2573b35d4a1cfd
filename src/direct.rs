//! Direct row access to integrity's own tables, for the hot paths.
//!
//! Through SPI, each statement of a hot function paid a plan revalidation,
//! an executor start and end and projections around work that is one index
//! probe or one row. Here only the work is left, done by the routines a
//! statement uses: index scans under the snapshot a statement would get,
//! `table_tuple_insert` and `ExecInsertIndexTuples`, which maintains every
//! index and makes every unique and exclusion check as an INSERT does (or,
//! for a table whose indexes are plain columns, `heap_insert` and each
//! index's `index_insert` with the same checks, without an executor state:
//! `Rel::insert_row`).
//!
//! A direct write does only what a statement would do on the table as
//! integrity created it. `Rel` says when that is not the case, and the
//! caller then runs its SQL instead:
//! - the columns are not the ones integrity created (someone altered it);
//! - it has triggers, CHECK constraints other than those a direct write
//!   satisfies by construction, or generated columns (`insertable`);
//! - the role lacks the table-level privileges, or row security applies
//!   with any policy other than integrity's own as created (`allowed`).
//!
//! Integrity's policies depend on `org_id` alone, and every row a call
//! reads or writes has the requested `org_id`, so one evaluation of the
//! policy decides for all of them.
//!
//! What this backend learns about a table (OIDs, column positions, shape,
//! the IndexInfos an INSERT would rebuild for each index on every
//! execution) is kept until Postgres invalidates the table's or one of its
//! indexes' relcache entry (ALTER TABLE, CREATE TRIGGER, CREATE POLICY,
//! GRANT, DROP EXTENSION, …).

use crate::errors::bug;
use pgrx::datum::{Interval, Uuid};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::ptr::null_mut;

/// `now + interval`, as timestamptz + interval computes it.
pub fn plus(now: pg_sys::TimestampTz, interval: Interval) -> pg_sys::Datum {
    // SAFETY: timestamptz_pl_interval of two non-NULL values; it raises
    // 22008 when the result is out of range, as the statement would.
    unsafe {
        pgrx::direct_function_call_as_datum(
            pg_sys::timestamptz_pl_interval,
            &[now.into_datum(), interval.into_datum()],
        )
        .unwrap_or_else(|| bug("timestamptz + interval returned NULL"))
    }
}

/// Postgres functions that cannot raise an ERROR (they read backend state
/// and allocate nothing), called without the guard pgrx puts around each
/// call into Postgres (a `sigsetjmp` and its trampolines, about 90
/// instructions). The guard is there so that an ERROR's `longjmp` does not
/// skip Rust frames; these never make one. The hot paths call them a dozen
/// times a request.
pub mod plain {
    use pgrx::pg_sys;
    use std::ffi::{c_char, c_int};

    unsafe extern "C" {
        pub fn GetCurrentTimestamp() -> pg_sys::TimestampTz;
        pub fn GetCurrentSubTransactionId() -> pg_sys::SubTransactionId;
        pub fn GetUserId() -> pg_sys::Oid;
        pub fn GetUserIdAndSecContext(userid: *mut pg_sys::Oid, sec_context: *mut c_int);
        /// Only with `missing_ok` and not `restrict_privileged`: the two
        /// ways it can raise (a missing setting, a privileged one) are off.
        pub fn GetConfigOption(
            name: *const c_char,
            missing_ok: bool,
            restrict_privileged: bool,
        ) -> *const c_char;
    }
}

/// One of integrity's tables, as integrity creates it.
pub struct Spec {
    /// This table's slot in the backend's caches; unique per table.
    pub slot: usize,
    /// Its name in schema `integrity`.
    pub table: &'static CStr,
    /// Every column integrity creates it with. Callers address columns by
    /// their position in this list (`Rel::col`).
    pub columns: &'static [&'static str],
    /// Their types, in the same order: a column whose type was changed
    /// (ALTER COLUMN … TYPE) makes the table unknown to the direct paths.
    pub types: &'static [Ty],
    /// Indexes the caller addresses by position (`Rel::index`).
    pub indexes: &'static [&'static CStr],
    /// Their key columns, in order: an index by that name on other columns
    /// (or on expressions, or of another table) makes the table unknown.
    pub keys: &'static [&'static [&'static str]],
    /// CHECK constraints every row a direct write makes satisfies.
    pub checks: &'static [&'static str],
    /// Its row-security policy as created (the name; the USING expression
    /// is `OUR_POLICY`).
    pub policy: &'static str,
}

/// A column's type as integrity creates it.
#[derive(Clone, Copy)]
pub enum Ty {
    /// This type, or a domain over it.
    Base(Oid),
    /// A type of integrity's own (an enum), by its qualified name.
    Ours(&'static CStr),
}

impl Ty {
    /// Whether `typid` is this type.
    ///
    /// # Safety
    /// Catalog lookups; in a transaction.
    unsafe fn is(self, typid: Oid) -> bool {
        match self {
            Ty::Base(t) => pg_sys::getBaseType(typid) == t,
            Ty::Ours(name) => CStr::from_ptr(pg_sys::format_type_be_qualified(typid)) == name,
        }
    }
}

/// How many tables have a slot.
const TABLES: usize = 3;
/// Most columns a `Spec` may list.
const MAX_COLUMNS: usize = 24;
/// Most indexes on a table whose IndexInfo we keep.
const MAX_INDEXES: usize = 8;
/// Most indexes a `Spec` may name.
const MAX_NAMED: usize = 4;
/// Most key columns of a named index `fetch` scans.
const MAX_KEYS: usize = 4;

/// The policy as integrity creates it, as `deparse_expression` prints it
/// (`pg_get_expr` prints the same with a space after each subquery's
/// parenthesis). Each `current_org()` is a scalar subquery, so a statement
/// evaluates it once (an InitPlan), not once per row it checks.
const OUR_POLICY: &str = "(((SELECT integrity.current_org() AS current_org) IS NULL) OR (org_id = (SELECT integrity.current_org() AS current_org)))";

/// What this backend knows about a table.
#[derive(Clone, Copy)]
struct Shape {
    table: Oid,
    /// Schema integrity's OID when the shape was taken (the table must
    /// still be in it).
    namespace: Oid,
    indexes: [Oid; MAX_NAMED],
    /// For each named btree index, the equality functions of its key
    /// columns (what `fetch`'s scan keys need), looked up once.
    eq_procs: [[Oid; MAX_KEYS]; MAX_NAMED],
    /// Position in the tuple descriptor of each `Spec::columns` entry;
    /// `None` when the columns are not exactly the ones integrity created.
    col: Option<[u16; MAX_COLUMNS]>,
    /// A direct write does what a statement would: no triggers, no CHECK
    /// but those listed, no generated columns.
    insertable: bool,
    /// Row security on the table is integrity's policy alone, as created.
    our_policy: bool,
}

/// The IndexInfos of every index on a table, built once (what
/// `ExecOpenIndices` builds for every statement: BuildIndexInfo, the
/// partial-index predicate planned and compiled, GiST's per-index state
/// made on its first insert) and kept in a memory context of their own.
struct Indexes {
    cxt: pg_sys::MemoryContext,
    oids: Vec<Oid>,
    infos: Vec<*mut pg_sys::IndexInfo>,
}

/// A table's indexes (or what is kept for each), without a heap
/// allocation on the hot paths.
type Kept<T> = smallvec::SmallVec<[T; MAX_INDEXES]>;

thread_local! {
    static SHAPES: [Cell<Option<Shape>>; TABLES] = const { [const { Cell::new(None) }; TABLES] };
    static INDEXES: [RefCell<Option<Indexes>>; TABLES] = const { [const { RefCell::new(None) }; TABLES] };
    /// Set by `forget`; the kept IndexInfos are rebuilt before next use.
    static STALE: [Cell<bool>; TABLES] = const { [const { Cell::new(false) }; TABLES] };
    /// The OIDs in INDEXES, for `forget` (InvalidOid-padded).
    static INDEX_OIDS: [Cell<[Oid; MAX_INDEXES]>; TABLES] =
        const { [const { Cell::new([Oid::INVALID; MAX_INDEXES]) }; TABLES] };
    static WATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Relcache invalidation callback: forget what we know of a table when it
/// or one of its indexes changes (or everything is invalidated).
unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, relid: Oid) {
    // Only Cells here: this runs inside Postgres's invalidation processing,
    // possibly while our own code is between two steps.
    for slot in 0..TABLES {
        let ours = relid == Oid::INVALID
            || SHAPES.with(|s| {
                s[slot]
                    .get()
                    .is_some_and(|s| relid == s.table || s.indexes.contains(&relid))
            })
            || INDEX_OIDS.with(|c| c[slot].get().contains(&relid));
        if ours {
            SHAPES.with(|s| s[slot].set(None));
            STALE.with(|s| s[slot].set(true));
        }
    }
}

/// The OID of `integrity.<name>`, if it exists.
fn relid(name: &CStr) -> Oid {
    // SAFETY: catalog lookups by name; the schema lookup raises 3F000
    // itself; the relation lookup answers InvalidOid when it is missing.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"integrity".as_ptr(), false);
        pg_sys::get_relname_relid(name.as_ptr(), nsp)
    }
}

/// Whether this transaction is read-only (`SET TRANSACTION READ ONLY`, a
/// hot standby): a direct write would skip the check a statement makes.
pub fn read_only() -> bool {
    // SAFETY: a plain read of a backend-local global.
    unsafe { pg_sys::XactReadOnly }
}

/// Whether this transaction reads from one snapshot taken at its start
/// (REPEATABLE READ, SERIALIZABLE).
pub fn xact_snapshot() -> bool {
    // SAFETY: a plain read of a backend-local global.
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// The OIDs of the indexes of `rel`.
///
/// # Safety
/// `rel` is open.
pub unsafe fn index_oids(rel: pg_sys::Relation) -> Vec<Oid> {
    let list = pg_sys::RelationGetIndexList(rel);
    if list.is_null() {
        return Vec::new();
    }
    (0..(*list).length as usize)
        .map(|i| (*(*list).elements.add(i)).oid_value)
        .collect()
}

/// An open integrity table and what we know of it. Closed by `close` (the
/// lock stays to the end of the transaction, as a statement keeps it); an
/// ERROR before that releases it through the resource owner.
pub struct Rel {
    pub raw: pg_sys::Relation,
    shape: Shape,
    spec: &'static Spec,
    /// The lock it was opened with.
    lockmode: pg_sys::LOCKMODE,
}

impl Rel {
    /// Open `spec`'s table with `lockmode`.
    pub fn open(spec: &'static Spec, lockmode: pg_sys::LOCKMODE) -> Rel {
        debug_assert!(
            spec.slot < TABLES
                && spec.columns.len() <= MAX_COLUMNS
                && spec.types.len() == spec.columns.len()
                && spec.keys.len() == spec.indexes.len()
        );
        let remembered = SHAPES.with(|s| s[spec.slot].get());
        // SAFETY: a relation opened by OID, falling back to its name when
        // the remembered OID no longer opens; the shape is read with it open.
        unsafe {
            let mut rel = match remembered {
                Some(s) => pg_sys::try_relation_open(s.table, lockmode),
                None => null_mut(),
            };
            // The remembered OID may have been dropped (or, in theory,
            // reused), or the table moved out of schema integrity.
            if !rel.is_null()
                && (CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr()) != spec.table
                    || remembered.is_some_and(|s| (*(*rel).rd_rel).relnamespace != s.namespace))
            {
                pg_sys::relation_close(rel, lockmode);
                rel = null_mut();
            }
            if rel.is_null() {
                SHAPES.with(|s| s[spec.slot].set(None));
                let oid = relid(spec.table);
                if oid == Oid::INVALID {
                    bug(format!(
                        "integrity.{} is missing",
                        spec.table.to_string_lossy()
                    ));
                }
                rel = pg_sys::table_open(oid, lockmode);
            }
            // Opening took the lock and with it any pending invalidations,
            // so a remembered shape still here is current.
            let shape = match SHAPES.with(|s| s[spec.slot].get()) {
                Some(s) if s.table == (*rel).rd_id => s,
                _ => {
                    let s = shape_of(spec, rel);
                    SHAPES.with(|c| c[spec.slot].set(Some(s)));
                    s
                }
            };
            Rel {
                raw: rel,
                shape,
                spec,
                lockmode,
            }
        }
    }

    /// `spec`'s table opened ROW EXCLUSIVE for a direct write of
    /// `org_id`'s rows needing the privileges `wanted`; `None` (the table
    /// closed again) when it is not `insertable` or not `allowed`: then
    /// the caller's statement must do the write.
    pub fn for_write(spec: &'static Spec, wanted: pg_sys::AclMode, org_id: Uuid) -> Option<Rel> {
        // A read-only transaction: the statement raises 25006, as it must.
        if read_only() {
            return None;
        }
        let rel = Rel::open(spec, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        if rel.insertable() && rel.allowed(wanted, org_id) {
            Some(rel)
        } else {
            rel.close();
            None
        }
    }

    pub fn close(self) {
        // SAFETY: closes the relation `open` opened, keeping its lock.
        unsafe { pg_sys::table_close(self.raw, pg_sys::NoLock as pg_sys::LOCKMODE) };
    }

    /// The OID of the `i`th of `Spec::indexes`.
    pub fn index(&self, i: usize) -> Oid {
        self.shape.indexes[i]
    }

    /// How many attributes the table's rows have (dropped ones included):
    /// the length of a row's values for `insert_row`.
    pub fn natts(&self) -> usize {
        // SAFETY: the open relation's descriptor.
        unsafe { (*(*self.raw).rd_att).natts as usize }
    }

    /// Whether the columns are exactly the ones integrity created.
    pub fn known(&self) -> bool {
        self.shape.col.is_some()
    }

    /// Position in the tuple descriptor of the `i`th of `Spec::columns`.
    /// Only for a `known` table.
    pub fn col(&self, i: usize) -> usize {
        match self.shape.col {
            Some(c) => c[i] as usize,
            None => bug("direct access to a table whose columns changed"),
        }
    }

    /// Whether row security on the table is integrity's policy alone, as
    /// created (or row security is off).
    #[cfg(any(test, feature = "pg_test"))]
    pub fn policy_is_ours(&self) -> bool {
        self.shape.our_policy
    }

    /// Whether a direct write does all a statement would (see `Shape`).
    pub fn insertable(&self) -> bool {
        self.shape.insertable
    }

    /// Whether the direct path may act for this role on `org_id`'s rows:
    /// the table-level privileges in `wanted`, and row security either not
    /// applying to the role or being our policy with the tenant in scope.
    pub fn allowed(&self, wanted: pg_sys::AclMode, org_id: Uuid) -> bool {
        // SAFETY: privilege and RLS checks by OID; check_enable_rls with
        // noError = false raises what a statement would (row_security = off).
        unsafe {
            let user = plain::GetUserId();
            if pg_sys::pg_class_aclmask(
                self.shape.table,
                user,
                wanted,
                pg_sys::AclMaskHow::ACLMASK_ALL,
            ) != wanted
            {
                return false;
            }
            pg_sys::check_enable_rls(self.shape.table, Oid::INVALID, false)
                != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
                || (self.shape.our_policy && tenant_in_scope(org_id))
        }
    }

    /// Insert a row (`values` and `nulls` in tuple-descriptor order) as
    /// `Writer::insert` does, without an executor state: `heap_insert`,
    /// then each index's insert with the unique check
    /// `ExecInsertIndexTuples` makes, `arbiter`'s reporting a conflict as
    /// data. `Some(false)`: a conflicting row exists (or is in flight) and
    /// ours was deleted again. `None`, with nothing written, when the
    /// write needs an executor: an index with a predicate or an exclusion
    /// constraint, an index we keep no state for, or a table access
    /// method other than heap (`Writer` does it then). For an `insertable`
    /// table opened ROW EXCLUSIVE, under a lock of ours on the row's key
    /// (see `Writer::insert`).
    pub fn insert_row(
        &self,
        values: &mut [pg_sys::Datum],
        nulls: &mut [bool],
        arbiter: Oid,
    ) -> Option<bool> {
        // SAFETY: the sequence ExecInsert and ExecInsertIndexTuples run for
        // one row of a heap table whose indexes are plain columns; the
        // arrays have the descriptor's natts entries.
        unsafe {
            let raw = self.raw;
            if (*(*raw).rd_rel).relam != pg_sys::HEAP_TABLE_AM_OID
                || values.len() != self.natts()
                || nulls.len() != self.natts()
            {
                return None;
            }
            let (descs, infos) = open_kept_indexes(self.spec.slot, raw)?;
            let plain = descs.iter().zip(&infos).all(|(&d, &i)| {
                (*i).ii_Predicate.is_null()
                    && (*i).ii_ExclusionOps.is_null()
                    && (*i).ii_Expressions.is_null()
                    && (!(*(*d).rd_index).indisunique || (*(*d).rd_index).indimmediate)
            });
            if !plain {
                for d in descs {
                    pg_sys::index_close(d, pg_sys::NoLock as pg_sys::LOCKMODE);
                }
                return None;
            }
            refuse_null(raw, nulls);
            let tuple =
                pg_sys::heap_form_tuple((*raw).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::heap_insert(raw, tuple, pg_sys::GetCurrentCommandId(true), 0, null_mut());
            let mut conflict = false;
            let mut ivalues = [pg_sys::Datum::from(0); pg_sys::INDEX_MAX_KEYS as usize];
            let mut inulls = [true; pg_sys::INDEX_MAX_KEYS as usize];
            for (&index, &info) in descs.iter().zip(&infos) {
                if !(*info).ii_ReadyForInserts {
                    continue;
                }
                // FormIndexDatum for an index of plain columns.
                let n = (*info).ii_NumIndexAttrs as usize;
                for k in 0..n {
                    let at = (*info).ii_IndexAttrNumbers[k] as usize - 1;
                    ivalues[k] = values[at];
                    inulls[k] = nulls[at];
                }
                let form = (*index).rd_index;
                let check = if !(*form).indisunique {
                    pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
                } else if (*form).indexrelid == arbiter {
                    // The arbiter reports a conflict as data, without
                    // waiting for one in flight (noDupErr).
                    pg_sys::IndexUniqueCheck::UNIQUE_CHECK_PARTIAL
                } else {
                    pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES
                };
                let satisfied = pg_sys::index_insert(
                    index,
                    ivalues.as_mut_ptr(),
                    inulls.as_mut_ptr(),
                    &mut (*tuple).t_self,
                    raw,
                    check,
                    false,
                    info,
                );
                if !satisfied && (*form).indexrelid == arbiter {
                    conflict = true;
                }
            }
            end_insert(raw, &mut (*tuple).t_self, conflict);
            pg_sys::heap_freetuple(tuple);
            for d in descs {
                pg_sys::index_close(d, pg_sys::NoLock as pg_sys::LOCKMODE);
            }
            Some(!conflict)
        }
    }

    /// The row whose key columns in the unique btree index `index` (the
    /// position of one of `Spec::indexes`) equal `key`, as `snapshot` sees
    /// it, handed to `read` while its slot holds it; `None` when there is
    /// none.
    ///
    /// # Safety
    /// `snapshot` is registered (or static) for the call; `read` copies out
    /// what it keeps before returning.
    pub unsafe fn fetch<R>(
        &self,
        index: usize,
        key: &[pg_sys::Datum],
        snapshot: pg_sys::Snapshot,
        read: impl FnOnce(*mut pg_sys::TupleTableSlot) -> R,
    ) -> Option<R> {
        let irel = self.open_btree(index, key.len());
        let n = key.len();
        let procs = &self.shape.eq_procs[index];
        let mut keys = [std::mem::zeroed::<pg_sys::ScanKeyData>(); MAX_KEYS];
        for (i, k) in keys[..n].iter_mut().enumerate() {
            pg_sys::ScanKeyEntryInitialize(
                k,
                0,
                (i + 1) as pg_sys::AttrNumber,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                Oid::INVALID,
                *(*irel).rd_indcollation.add(i),
                procs[i],
                key[i],
            );
        }
        let (mut read, mut r) = (Some(read), None);
        index_scan(self.raw, irel, &mut keys[..n], snapshot, |slot| {
            r = read.take().map(|read| read(slot));
            false
        });
        pg_sys::index_close(irel, pg_sys::NoLock as pg_sys::LOCKMODE);
        r
    }

    /// The `index`th of `Spec::indexes` (closed by the caller, keeping the
    /// lock): a B-tree whose `n` key columns we know equality for, or a
    /// bug. Opened ACCESS SHARE, as a scan opens it; ROW EXCLUSIVE when
    /// the table is open for writing, as the executor opens a result
    /// relation's indexes, so that a look before a write and the write's
    /// insert into the index take one lock, not two.
    unsafe fn open_btree(&self, index: usize, n: usize) -> pg_sys::Relation {
        let lock = if self.lockmode >= pg_sys::RowExclusiveLock as pg_sys::LOCKMODE {
            pg_sys::RowExclusiveLock as pg_sys::LOCKMODE
        } else {
            pg_sys::AccessShareLock as pg_sys::LOCKMODE
        };
        let irel = pg_sys::index_open(self.shape.indexes[index], lock);
        let procs = &self.shape.eq_procs[index];
        if (*(*irel).rd_rel).relam != pg_sys::BTREE_AM_OID
            || (*(*irel).rd_index).indnkeyatts as usize != n
            || n > MAX_KEYS
            || procs[..n].contains(&Oid::INVALID)
        {
            bug("direct look through an index that is not integrity's btree");
        }
        irel
    }

    /// What the B-tree `index` (one of `Spec::indexes`; `key` gives all
    /// its key columns) holds for `key`, from the look a unique insert makes
    /// before it inserts (`_bt_check_unique`): one descent to the leaf page
    /// where the key would go, without an index scan or a heap fetch.
    /// `Look::Absent`: no entry, live or dead, so no row with the key in
    /// any state, as far as a scan through this index could tell. It takes
    /// no predicate lock: not for SERIALIZABLE.
    ///
    /// # Safety
    /// `key` are datums of the index's key column types, in its order.
    pub unsafe fn look(&self, index: usize, key: &[pg_sys::Datum]) -> Look {
        let n = key.len();
        let irel = self.open_btree(index, n);
        // An index entry is formed from `key` alone: an index with INCLUDE
        // columns (not integrity's own) gets the scan.
        if (*(*irel).rd_index).indnatts as usize != n {
            pg_sys::index_close(irel, pg_sys::NoLock as pg_sys::LOCKMODE);
            return Look::Unsure;
        }
        let mut values = [pg_sys::Datum::from(0); MAX_KEYS];
        let mut nulls = [false; MAX_KEYS];
        values[..n].copy_from_slice(key);
        // One guard around the whole look: nothing in it has a destructor,
        // so an ERROR's longjmp out of it skips nothing.
        let look = pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            let itup =
                pg_sys::index_form_tuple((*irel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
            let skey = nbtree::_bt_mkscankey(irel, itup);
            // As a unique check searches: for the first entry equal to the
            // key, whatever its heap TID.
            (*skey).scantid = null_mut();
            let mut buf: pg_sys::Buffer = pg_sys::InvalidBuffer as pg_sys::Buffer;
            let stack = nbtree::_bt_search(irel, skey, &mut buf, nbtree::BT_READ, null_mut());
            nbtree::_bt_freestack(stack);
            // An empty index has no root: nothing to find.
            let look = if buf == pg_sys::InvalidBuffer as pg_sys::Buffer {
                Look::Absent
            } else {
                let look = nbtree::leaf_look(irel, skey, pg_sys::BufferGetPage(buf));
                nbtree::_bt_relbuf(irel, buf);
                look
            };
            pg_sys::pfree(skey.cast());
            pg_sys::pfree(itup.cast());
            look
        });
        // Counted as the index scan it stands in for would count itself
        // (`pg_stat_user_indexes`: idx_scan, and idx_tup_read for the
        // entry it found); an unsure look's scan counts itself. The entry
        // keeps the counts for `fetch_tid`'s idx_tup_fetch.
        let mut look = look;
        if let (false, Some(counts)) = (matches!(look, Look::Unsure), index_counts(irel)) {
            counts.t_numscans += 1;
            if let Look::One(entry) = &mut look {
                counts.t_tuples_returned += 1;
                entry.counts = counts;
            }
        }
        pg_sys::index_close(irel, pg_sys::NoLock as pg_sys::LOCKMODE);
        look
    }

    /// The row the index entry points to (the visible member of its
    /// HOT chain), as `snapshot` sees it, handed to `read` while its slot
    /// holds it, as `fetch` hands a row it found; `None` when `snapshot`
    /// sees none.
    ///
    /// # Safety
    /// As `fetch`; `entry` is from `look` on one of this table's indexes,
    /// in this call.
    pub unsafe fn fetch_tid<R>(
        &self,
        entry: Entry,
        snapshot: pg_sys::Snapshot,
        read: impl FnOnce(*mut pg_sys::TupleTableSlot) -> R,
    ) -> Option<R> {
        let mut tid = entry.tid;
        let slot = pg_sys::table_slot_create(self.raw, null_mut());
        let am = (*self.raw).rd_tableam;
        let (Some(begin), Some(fetch), Some(end)) = (
            (*am).index_fetch_begin,
            (*am).index_fetch_tuple,
            (*am).index_fetch_end,
        ) else {
            bug("table access method without index fetches")
        };
        let found = pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            let scan = begin(self.raw);
            let (mut call_again, mut all_dead) = (false, false);
            let found = fetch(
                scan,
                &mut tid,
                snapshot,
                slot,
                &mut call_again,
                &mut all_dead,
            );
            end(scan);
            found
        });
        // The row fetched through the entry, as idx_tup_fetch counts an
        // index scan's.
        if let (true, Some(counts)) = (found, entry.counts.as_mut()) {
            counts.t_tuples_fetched += 1;
        }
        let r = found.then(|| read(slot));
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        r
    }
}

/// The statistics counts of an open index for this transaction, as
/// Postgres's `pgstat_count_index_scan` reaches them; `None` when its
/// statistics are not counted (`track_counts = off`).
///
/// # Safety
/// `irel` is open.
unsafe fn index_counts<'a>(irel: pg_sys::Relation) -> Option<&'a mut pg_sys::PgStat_TableCounts> {
    if (*irel).pgstat_info.is_null() && (*irel).pgstat_enabled {
        pg_sys::pgstat_assoc_relation(irel);
    }
    (*irel).pgstat_info.as_mut().map(|info| &mut info.t_counts)
}

/// The one entry `Rel::look` found: the heap TID it points to, and the
/// index's statistics counts for this transaction (null when not counted),
/// which live in the statistics' pending memory until the transaction's
/// counts are reported, after it ends.
pub struct Entry {
    pub tid: pg_sys::ItemPointerData,
    counts: *mut pg_sys::PgStat_TableCounts,
}

/// What `Rel::look` found for a key.
pub enum Look {
    /// No entry equals the key.
    Absent,
    /// Exactly one entry equals it, a plain one (not a posting list, not
    /// marked dead).
    One(Entry),
    /// Something else (several entries, one marked dead or in a posting
    /// list, the key's entries may go on to the next page, or the index
    /// has INCLUDE columns): scan.
    Unsure,
}

/// What `Rel::look` uses of Postgres 15's B-tree (access/nbtree.h), which
/// pgrx does not bind. Called only inside a guard.
mod nbtree {
    use pgrx::pg_sys;
    use std::ffi::{c_int, c_void};

    /// The head of `BTScanInsertData`; the scan keys follow it, and only
    /// Postgres reads them.
    #[repr(C)]
    pub struct BTScanInsertData {
        pub heapkeyspace: bool,
        pub allequalimage: bool,
        pub anynullkeys: bool,
        pub nextkey: bool,
        pub pivotsearch: bool,
        pub scantid: pg_sys::ItemPointer,
        pub keysz: c_int,
    }

    /// `BTPageOpaqueData`, a B-tree page's special space.
    #[repr(C)]
    struct BTPageOpaqueData {
        btpo_prev: pg_sys::BlockNumber,
        btpo_next: pg_sys::BlockNumber,
        btpo_level: u32,
        btpo_flags: u16,
        btpo_cycleid: u16,
    }

    /// `BT_READ`: `BUFFER_LOCK_SHARE`.
    pub const BT_READ: c_int = 1;
    const BTP_LEAF: u16 = 1 << 0;
    /// `P_NONE`: no right sibling.
    const P_NONE: pg_sys::BlockNumber = 0;
    const P_HIKEY: pg_sys::OffsetNumber = 1;
    /// `INDEX_ALT_TID_MASK`: on a leaf page, a posting list tuple.
    const INDEX_ALT_TID_MASK: u16 = 0x2000;

    unsafe extern "C-unwind" {
        pub fn _bt_mkscankey(
            rel: pg_sys::Relation,
            itup: pg_sys::IndexTuple,
        ) -> *mut BTScanInsertData;
        pub fn _bt_search(
            rel: pg_sys::Relation,
            key: *mut BTScanInsertData,
            buf: *mut pg_sys::Buffer,
            access: c_int,
            snapshot: pg_sys::Snapshot,
        ) -> *mut c_void;
        pub fn _bt_freestack(stack: *mut c_void);
        fn _bt_compare(
            rel: pg_sys::Relation,
            key: *mut BTScanInsertData,
            page: pg_sys::Page,
            offnum: pg_sys::OffsetNumber,
        ) -> i32;
        pub fn _bt_relbuf(rel: pg_sys::Relation, buf: pg_sys::Buffer);
    }

    /// On the leaf `page` that `_bt_search` found for `key` (locked), as
    /// `_bt_check_unique` walks it: the first item not below the key, and
    /// past it the next item or, at the end of the page, the high key (an
    /// upper bound of this page, and at most equal to the next page's
    /// lowest key).
    pub unsafe fn leaf_look(
        rel: pg_sys::Relation,
        key: *mut BTScanInsertData,
        page: pg_sys::Page,
    ) -> super::Look {
        use super::Look;
        let header = page as *const pg_sys::PageHeaderData;
        let opaque = page.add((*header).pd_special as usize) as *const BTPageOpaqueData;
        if (*opaque).btpo_flags & BTP_LEAF == 0 {
            return Look::Unsure;
        }
        let rightmost = (*opaque).btpo_next == P_NONE;
        let max = pg_sys::PageGetMaxOffsetNumber(page);
        // Whether the key's entries may go on past the page's last item.
        let beyond = || !rightmost && _bt_compare(rel, key, page, P_HIKEY) == 0;
        // The first item >= key, among the data items (after the high key
        // unless rightmost).
        let (mut low, mut high) = (if rightmost { P_HIKEY } else { P_HIKEY + 1 }, max + 1);
        while low < high {
            let mid = low + (high - low) / 2;
            if _bt_compare(rel, key, page, mid) > 0 {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        if low > max {
            return if beyond() { Look::Unsure } else { Look::Absent };
        }
        if _bt_compare(rel, key, page, low) != 0 {
            return Look::Absent;
        }
        let more = if low < max {
            _bt_compare(rel, key, page, low + 1) == 0
        } else {
            beyond()
        };
        let id = pg_sys::PageGetItemId(page, low);
        let item = pg_sys::PageGetItem(page, id) as *const pg_sys::IndexTupleData;
        if more || (*id).lp_flags() != pg_sys::LP_NORMAL || (*item).t_info & INDEX_ALT_TID_MASK != 0
        {
            return Look::Unsure;
        }
        Look::One(super::Entry {
            tid: (*item).t_tid,
            counts: std::ptr::null_mut(),
        })
    }
}

/// Scan `rel` through its open index `irel` for the rows matching `keys`,
/// visible to `snapshot`; `each` is given every one until it returns false.
///
/// # Safety
/// `rel` is open and locked, `irel` is one of its indexes, open; `keys`
/// are scan keys on `irel`'s columns.
pub unsafe fn index_scan(
    rel: pg_sys::Relation,
    irel: pg_sys::Relation,
    keys: &mut [pg_sys::ScanKeyData],
    snapshot: pg_sys::Snapshot,
    mut each: impl FnMut(*mut pg_sys::TupleTableSlot) -> bool,
) {
    let n = keys.len() as i32;
    let slot = pg_sys::table_slot_create(rel, null_mut());
    let scan = pg_sys::index_beginscan(rel, irel, snapshot, n, 0);
    pg_sys::index_rescan(scan, keys.as_mut_ptr(), n, null_mut(), 0);
    while pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
        if !each(slot) {
            break;
        }
    }
    pg_sys::index_endscan(scan);
    pg_sys::ExecDropSingleTupleTableSlot(slot);
}

/// `(SELECT integrity.current_org()) IS NULL OR org_id = (SELECT
/// integrity.current_org())`.
fn tenant_in_scope(org_id: Uuid) -> bool {
    crate::access::session_org().is_none_or(|org| org == org_id)
}

/// Work out the shape of the open relation `rel`.
///
/// # Safety
/// `rel` is `spec`'s table, open and locked.
unsafe fn shape_of(spec: &Spec, rel: pg_sys::Relation) -> Shape {
    let table = (*rel).rd_id;
    let mut indexes = [Oid::INVALID; MAX_NAMED];
    for (i, name) in spec.indexes.iter().enumerate() {
        indexes[i] = relid(name);
        if indexes[i] == Oid::INVALID {
            bug(format!(
                "index integrity.{} is missing",
                name.to_string_lossy()
            ));
        }
    }
    let mut eq_procs = [[Oid::INVALID; MAX_KEYS]; MAX_NAMED];
    let namespace = pg_sys::get_namespace_oid(c"integrity".as_ptr(), false);
    // A table moved out of schema integrity is not the one integrity made.
    let mut col = columns(spec, rel).filter(|_| (*(*rel).rd_rel).relnamespace == namespace);
    for (i, &oid) in indexes[..spec.indexes.len()].iter().enumerate() {
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let irel = pg_sys::index_open(oid, lock);
        let n = (*(*irel).rd_index).indnkeyatts as usize;
        // The index by that name must be this table's, on exactly the key
        // columns integrity made it with, in order (an expression has
        // attnum 0, so none is one): the direct paths pass it datums in
        // that order.
        let keys = spec.keys[i];
        let as_made = (*(*irel).rd_index).indrelid == table
            && n == keys.len()
            && col.is_some_and(|cols| {
                keys.iter().enumerate().all(|(k, name)| {
                    let attnum = (*(*irel).rd_index).indkey.values.as_slice(n)[k];
                    spec.columns
                        .iter()
                        .position(|c| c == name)
                        .is_some_and(|j| attnum as usize == cols[j] as usize + 1)
                })
            });
        if !as_made {
            col = None;
        }
        if (*(*irel).rd_rel).relam == pg_sys::BTREE_AM_OID && n <= MAX_KEYS {
            for (k, proc_) in eq_procs[i][..n].iter_mut().enumerate() {
                let family = *(*irel).rd_opfamily.add(k);
                let ty = *(*irel).rd_opcintype.add(k);
                let op = pg_sys::get_opfamily_member(
                    family,
                    ty,
                    ty,
                    pg_sys::BTEqualStrategyNumber as i16,
                );
                *proc_ = pg_sys::get_opcode(op);
            }
        }
        pg_sys::index_close(irel, lock);
    }
    // No rules either: a direct write would not run them.
    let insertable = col.is_some()
        && (*rel).trigdesc.is_null()
        && !(*(*rel).rd_rel).relhasrules
        && only_listed_checks(spec, rel);
    let our_policy = !(*(*rel).rd_rel).relrowsecurity || only_our_policy(spec, rel);
    if !WATCHING.with(|w| w.replace(true)) {
        pg_sys::CacheRegisterRelcacheCallback(Some(forget), pg_sys::Datum::from(0));
    }
    Shape {
        table,
        namespace,
        indexes,
        eq_procs,
        col,
        insertable,
        our_policy,
    }
}

/// Whether row security on `rel` is `spec`'s policy alone, as integrity
/// creates it: one permissive policy of that name, for every command and
/// every role (PUBLIC), with no WITH CHECK, whose USING expression prints
/// as `OUR_POLICY`. Read from the policies the relcache entry holds (what
/// the planner applies), deparsed as `pg_get_expr` deparses them: no query
/// of `pg_policy`, which cost a new connection's first call about three
/// million instructions of parsing and planning.
///
/// # Safety
/// `rel` is open and has row security enabled.
unsafe fn only_our_policy(spec: &Spec, rel: pg_sys::Relation) -> bool {
    let desc = (*rel).rd_rsdesc;
    if desc.is_null() || (*desc).policies.is_null() || (*(*desc).policies).length != 1 {
        return false;
    }
    let p = (*(*(*desc).policies).elements)
        .ptr_value
        .cast::<pg_sys::RowSecurityPolicy>();
    let roles = (*p).roles;
    let as_created = CStr::from_ptr((*p).policy_name).to_bytes() == spec.policy.as_bytes()
        && (*p).polcmd as u8 == b'*'
        && (*p).permissive
        && (*p).with_check_qual.is_null()
        && !(*p).qual.is_null()
        && !roles.is_null()
        && (*roles).ndim == 1
        && (*roles).dataoffset == 0
        && (*roles).elemtype == pg_sys::OIDOID
        && {
            // One element, PUBLIC (InvalidOid): the dimensions follow the
            // header, the data the dimensions and lower bounds, aligned.
            let dims = roles
                .cast::<u8>()
                .add(std::mem::size_of::<pg_sys::ArrayType>());
            let data = roles.cast::<u8>().add(
                (std::mem::size_of::<pg_sys::ArrayType>() + 2 * std::mem::size_of::<i32>())
                    .next_multiple_of(pg_sys::MAXIMUM_ALIGNOF as usize),
            );
            *dims.cast::<i32>() == 1 && *data.cast::<Oid>() == Oid::INVALID
        };
    // Deparsed with search_path pinned, as the statement it replaces was:
    // functions outside pg_catalog print schema-qualified.
    as_created
        && crate::plans::pinned(|| {
            let context =
                pg_sys::deparse_context_for((*(*rel).rd_rel).relname.data.as_ptr(), (*rel).rd_id);
            let text = pg_sys::deparse_expression((*p).qual.cast(), context, false, false);
            CStr::from_ptr(text).to_bytes() == OUR_POLICY.as_bytes()
        })
}

/// Each of `spec.columns`' position in `rel`, if its columns are exactly
/// those.
///
/// # Safety
/// `rel` is an open relation.
unsafe fn columns(spec: &Spec, rel: pg_sys::Relation) -> Option<[u16; MAX_COLUMNS]> {
    let desc = (*rel).rd_att;
    let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
    let mut pos = [u16::MAX; MAX_COLUMNS];
    for (i, a) in attrs.iter().enumerate() {
        if a.attisdropped {
            continue;
        }
        let name = CStr::from_ptr(a.attname.data.as_ptr()).to_bytes();
        let j = spec.columns.iter().position(|c| c.as_bytes() == name)?;
        if !spec.types[j].is(a.atttypid) {
            return None;
        }
        pos[j] = i as u16;
    }
    pos[..spec.columns.len()]
        .iter()
        .all(|&p| p != u16::MAX)
        .then_some(pos)
}

/// Whether the table's CHECK constraints are all listed in `spec.checks`
/// and it has no generated columns. Every other constraint is enforced by
/// the indexes (`ExecInsertIndexTuples`) or by the types of the values.
///
/// # Safety
/// `rel` is an open relation.
unsafe fn only_listed_checks(spec: &Spec, rel: pg_sys::Relation) -> bool {
    let constr = (*(*rel).rd_att).constr;
    if constr.is_null() {
        return true;
    }
    if (*constr).has_generated_stored {
        return false;
    }
    (0..(*constr).num_check as usize).all(|i| {
        let name = CStr::from_ptr((*(*constr).check.add(i)).ccname).to_bytes();
        spec.checks.iter().any(|c| c.as_bytes() == name)
    })
}

/// The kept IndexInfos for `rel`, built if needed; `None` when the table
/// has an index we do not keep state for (not btree, GiST or BRIN, or too
/// many):
/// then the caller uses ExecOpenIndices as a statement would.
///
/// # Safety
/// `rel` is `slot`'s table, open and locked.
unsafe fn kept_indexes(
    slot: usize,
    rel: pg_sys::Relation,
) -> Option<(Kept<Oid>, Kept<*mut pg_sys::IndexInfo>)> {
    if STALE.with(|c| c[slot].replace(false)) {
        if let Some(old) = INDEXES.with(|c| c[slot].borrow_mut().take()) {
            pg_sys::MemoryContextDelete(old.cxt);
        }
        INDEX_OIDS.with(|c| c[slot].set([Oid::INVALID; MAX_INDEXES]));
    }
    if let Some(kept) = INDEXES.with(|c| {
        c[slot]
            .borrow()
            .as_ref()
            .map(|i| (Kept::from_slice(&i.oids), Kept::from_slice(&i.infos)))
    }) {
        // Empty infos: the table has an index we keep no state for.
        return (!kept.1.is_empty()).then_some(kept);
    }
    let oids = index_oids(rel);
    let new_context = |max: usize| {
        pg_sys::AllocSetContextCreateInternal(
            pg_sys::TopMemoryContext,
            c"integrity kept indexes".as_ptr(),
            0,
            1024,
            max,
        )
    };
    let remember = |cxt, oids: Vec<Oid>, infos: Vec<*mut pg_sys::IndexInfo>| {
        INDEXES.with(|c| *c[slot].borrow_mut() = Some(Indexes { cxt, oids, infos }));
    };
    if oids.is_empty() || oids.len() > MAX_INDEXES {
        remember(new_context(8 * 1024), Vec::new(), Vec::new());
        return None;
    }
    let cxt = new_context(8 * 1024 * 1024);
    let old = pg_sys::MemoryContextSwitchTo(cxt);
    let mut infos = Vec::with_capacity(oids.len());
    let mut supported = true;
    for &oid in &oids {
        let index = pg_sys::index_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let am = (*(*index).rd_rel).relam;
        // Index AMs whose per-index insert state (GiST's, BRIN's) lives
        // in the IndexInfo's context, which is ours: kept with it.
        if ![
            pg_sys::BTREE_AM_OID,
            pg_sys::GIST_AM_OID,
            pg_sys::BRIN_AM_OID,
        ]
        .contains(&am)
        {
            supported = false;
        } else {
            let info = pg_sys::BuildIndexInfo(index);
            // An expression index's compiled expressions are made on first
            // use in the EState of that write, which is freed after it:
            // such a table is left to ExecOpenIndices.
            if !(*info).ii_Expressions.is_null() {
                supported = false;
            }
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
        remember(new_context(8 * 1024), Vec::new(), Vec::new());
        return None;
    }
    let mut padded = [Oid::INVALID; MAX_INDEXES];
    padded[..oids.len()].copy_from_slice(&oids);
    INDEX_OIDS.with(|c| c[slot].set(padded));
    let kept = (Kept::from_slice(&oids), Kept::from_slice(&infos));
    remember(cxt, oids, infos);
    Some(kept)
}

/// The table's indexes, opened and locked (ROW EXCLUSIVE, as
/// ExecOpenIndices does), with their kept IndexInfos; `None` where
/// ExecOpenIndices must do it.
///
/// The indexes are opened before the kept state is used: opening takes any
/// pending invalidations, and an invalidation of an index that was closed
/// frees its relcache entry, which GiST's kept state points into. If one
/// arrived, the state is rebuilt with the indexes open.
///
/// # Safety
/// `rel` is `slot`'s table, open and locked.
unsafe fn open_kept_indexes(
    slot: usize,
    rel: pg_sys::Relation,
) -> Option<(Kept<pg_sys::Relation>, Kept<*mut pg_sys::IndexInfo>)> {
    let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    for _ in 0..3 {
        let (oids, _) = kept_indexes(slot, rel)?;
        let descs: Kept<pg_sys::Relation> = oids
            .iter()
            .map(|&oid| pg_sys::index_open(oid, lock))
            .collect();
        if !STALE.with(|c| c[slot].get()) {
            if let Some((_, infos)) = kept_indexes(slot, rel) {
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

/// The executor state one direct write of a row needs, and the row: the
/// same sequence an INSERT's or UPDATE's executor runs for one row
/// (ExecInitModifyTable, ExecInsert/ExecUpdate, ExecEndModifyTable).
pub struct Writer<'r> {
    rel: &'r Rel,
    estate: *mut pg_sys::EState,
    rri: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
}

impl<'r> Writer<'r> {
    /// For an `insertable` table opened ROW EXCLUSIVE.
    pub fn new(rel: &'r Rel) -> Writer<'r> {
        // SAFETY: executor state for the open relation, freed by `finish`
        // (or by the transaction's abort on an ERROR).
        unsafe {
            let raw = rel.raw;
            let desc = (*raw).rd_att;
            let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsVirtual);
            let estate = pg_sys::CreateExecutorState();
            let rri = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>())
                .cast::<pg_sys::ResultRelInfo>();
            pg_sys::InitResultRelInfo(rri, raw, 1, null_mut(), 0);
            match open_kept_indexes(rel.spec.slot, raw) {
                // ExecOpenIndices with the kept IndexInfos: the indexes are
                // opened and locked as it opens them, and closed again by
                // ExecCloseIndices in `finish`.
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
            Writer {
                rel,
                estate,
                rri,
                slot,
            }
        }
    }

    /// The new row's values and null flags, in tuple-descriptor order, all
    /// NULL to begin with (set them, then `insert` or `update`).
    pub fn row(&mut self) -> (&mut [pg_sys::Datum], &mut [bool]) {
        // SAFETY: the virtual slot's arrays have natts entries.
        unsafe {
            pg_sys::ExecClearTuple(self.slot);
            let n = self.rel.natts();
            let values = std::slice::from_raw_parts_mut((*self.slot).tts_values, n);
            let nulls = std::slice::from_raw_parts_mut((*self.slot).tts_isnull, n);
            nulls.fill(true);
            (values, nulls)
        }
    }

    /// Insert the row, with `arbiter`'s unique or exclusion check reporting
    /// a conflict as data: `false` means a conflicting row exists (or is in
    /// flight) and ours was deleted again. Writers that meet our row before
    /// that deletion commits wait for our transaction, so this is for rows
    /// claimed under a lock of ours, where that wait cannot form a cycle.
    pub fn insert(&mut self, arbiter: Oid) -> bool {
        // SAFETY: the sequence ExecInsert runs for one row (and a delete of
        // our own row on a conflict); the slot holds a row of the table's
        // type.
        unsafe {
            pg_sys::ExecStoreVirtualTuple(self.slot);
            self.not_null();
            let raw = self.rel.raw;
            pg_sys::table_tuple_insert(
                raw,
                self.slot,
                pg_sys::GetCurrentCommandId(true),
                0,
                null_mut(),
            );
            // noDupErr with `arbiter` as the only arbiter: a conflict comes
            // back as a flag (unique) or that index in the list (exclusion)
            // instead of an error, and an in-flight one without a wait.
            let arbiters = pg_sys::lappend_oid(null_mut(), arbiter);
            let mut flagged = false;
            let violated = pg_sys::ExecInsertIndexTuples(
                self.rri,
                self.slot,
                self.estate,
                false,
                true,
                &mut flagged,
                arbiters,
            );
            // Only the arbiter in the list means a conflict (a deferrable
            // constraint would also be listed, for a later recheck, but
            // those come with triggers, which make a table not insertable).
            let conflict = flagged || pg_sys::list_member_oid(violated, arbiter);
            end_insert(raw, &mut (*self.slot).tts_tid, conflict);
            !conflict
        }
    }

    /// Replace the row at `tid` with the row set through `row`. Only for a
    /// row version this transaction made and nobody else can lock or
    /// change (any other would make `simple_table_tuple_update` raise).
    ///
    /// # Safety
    /// `tid` is the current version of a row of this table made by this
    /// transaction.
    pub unsafe fn update(&mut self, tid: pg_sys::ItemPointerData) {
        pg_sys::ExecStoreVirtualTuple(self.slot);
        self.not_null();
        // The new row may point into the old one's buffer; copy it first.
        pg_sys::ExecMaterializeSlot(self.slot);
        let mut tid = tid;
        let mut update_indexes = false;
        // The heap takes no snapshot for an update (only a crosscheck one,
        // which simple_table_tuple_update does not pass).
        pg_sys::simple_table_tuple_update(
            self.rel.raw,
            &mut tid,
            self.slot,
            pg_sys::GetActiveSnapshot(),
            &mut update_indexes,
        );
        if update_indexes {
            // update = false: `true` only adds a hint for btree's bottom-up
            // deletion, read from the range table we do not build.
            pg_sys::ExecInsertIndexTuples(
                self.rri,
                self.slot,
                self.estate,
                false,
                false,
                null_mut(),
                null_mut(),
            );
        }
        pg_sys::CommandCounterIncrement();
    }

    /// See `refuse_null`.
    ///
    /// # Safety
    /// The slot holds the row about to be written.
    unsafe fn not_null(&mut self) {
        let n = self.rel.natts();
        refuse_null(
            self.rel.raw,
            std::slice::from_raw_parts((*self.slot).tts_isnull, n),
        );
    }

    pub fn finish(self) {
        // SAFETY: frees what `new` made.
        unsafe {
            pg_sys::ExecCloseIndices(self.rri);
            pg_sys::FreeExecutorState(self.estate);
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
        }
    }
}

/// After a direct insert of the row at `tid`: later commands of this
/// transaction see it, and on a `conflict` its end (ours is deleted again).
///
/// # Safety
/// `tid` is the row `rel` (open ROW EXCLUSIVE) was just given by this
/// transaction.
unsafe fn end_insert(rel: pg_sys::Relation, tid: &mut pg_sys::ItemPointerData, conflict: bool) {
    pg_sys::CommandCounterIncrement();
    if conflict {
        pg_sys::simple_heap_delete(rel, tid);
        pg_sys::CommandCounterIncrement();
    }
}

/// A NULL in a column a user made NOT NULL is refused as a statement
/// refuses it (`23502`, with Postgres's message); the columns integrity
/// made NOT NULL are always set by the direct paths. (ExecConstraints
/// itself needs a range table, which we do not build.)
///
/// # Safety
/// `rel` is open; `nulls` are the null flags of a row of it, in
/// tuple-descriptor order.
unsafe fn refuse_null(rel: pg_sys::Relation, nulls: &[bool]) {
    let desc = (*rel).rd_att;
    let attrs = (*desc).attrs.as_slice((*desc).natts as usize);
    if let Some(a) = attrs
        .iter()
        .zip(nulls)
        .find(|(a, &null)| a.attnotnull && !a.attisdropped && null)
        .map(|(a, _)| a)
    {
        let column = CStr::from_ptr(a.attname.data.as_ptr()).to_string_lossy();
        let table = CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr()).to_string_lossy();
        crate::errors::raise(
            crate::errors::Kind::NotNullViolation,
            "integrity",
            format!(
                "null value in column \"{column}\" of relation \"{table}\" violates not-null constraint"
            ),
            "A NOT NULL added to a column integrity leaves NULL: drop it (ALTER TABLE … ALTER COLUMN … DROP NOT NULL).",
        );
    }
}

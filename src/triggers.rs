//! Trigger functions that keep the user's own tables consistent.
//!
//! Attached with an ordinary `CREATE TRIGGER … EXECUTE FUNCTION
//! integrity.tg_…('arg', …)` to any table. The BEFORE ROW functions change
//! `NEW` in place (`heap_modify_tuple_by_cols`) with no SQL on their path;
//! `tg_child_flag` (AFTER ROW, on the child table) locks the parent, counts
//! its children and updates it: the lock and the count through indexes
//! where the tables have fitting ones, in SQL otherwise, and the update
//! with a statement prepared once per trigger.
//!
//! A trigger's arguments are validated the first time it fires in a
//! session (columns looked up, values converted with the column type's own
//! input function, the parent table resolved) and kept until the table's
//! relcache entry is invalidated (ALTER TABLE, CREATE/DROP TRIGGER, …).
//! Every mistake names the trigger, the table and the argument, with a
//! HINT showing a correct `CREATE TRIGGER`.
//!
//! A *correction* is a non-NULL value a trigger overwrote because it broke
//! the trigger's rule; each is logged to `integrity.alerts` unless
//! `integrity.log_corrections` is off. Filling a NULL and keeping a parent's
//! flag in step with its children are the rule at work, not corrections.

use crate::errors::{raise, raise_as, Kind};
use crate::gucs;
use crate::jsonb::Jsonb;
use crate::names::{literal, qualified, quote};
use crate::plans::{run, Stmt};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString};
use std::rc::Rc;

pgrx::extension_sql_file!(
    "../sql/alerts.sql",
    name = "alerts",
    requires = ["bootstrap"]
);
pgrx::extension_sql_file!(
    "../sql/triggers_api.sql",
    name = "triggers_api",
    requires = [
        "alerts",
        tg_default,
        tg_link_status,
        tg_implies,
        tg_child_flag
    ]
);

// ---------------------------------------------------------------------------
// Called as a trigger, or refused

/// Each trigger function's entry point, `<name>_checked`, which its
/// `CREATE FUNCTION` names: a direct call (`SELECT integrity.tg_default()`)
/// is refused with 39P01 as Postgres's own trigger functions refuse it,
/// before pgrx's `<name>_wrapper`, which would fail on it with an internal
/// error, runs.
macro_rules! called_as_trigger_only {
    ($($checked:ident, $finfo:ident, $wrapper:ident, $name:expr;)*) => {$(
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $finfo() -> &'static pg_sys::Pg_finfo_record {
            const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }

        #[unsafe(no_mangle)]
        #[doc(hidden)]
        #[pg_guard]
        pub unsafe extern "C-unwind" fn $checked(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
            // SAFETY: fcinfo is the call's, from the function manager; this
            // reads only its context node's tag.
            if !unsafe { pgrx::trigger_support::called_as_trigger(fcinfo) } {
                not_fired_by_a_trigger($name);
            }
            // SAFETY: a trigger call's fcinfo, as the wrapper needs.
            unsafe { $wrapper(fcinfo) }
        }
    )*};
}

called_as_trigger_only! {
    tg_default_checked, pg_finfo_tg_default_checked, tg_default_wrapper, TG_DEFAULT;
    tg_link_status_checked, pg_finfo_tg_link_status_checked, tg_link_status_wrapper, TG_LINK_STATUS;
    tg_implies_checked, pg_finfo_tg_implies_checked, tg_implies_wrapper, TG_IMPLIES;
    tg_child_flag_checked, pg_finfo_tg_child_flag_checked, tg_child_flag_wrapper, TG_CHILD_FLAG;
}

fn not_fired_by_a_trigger(name: &'static str) -> ! {
    raise(
        Kind::TriggerProtocol,
        name,
        "was called directly, not fired by a trigger",
        format!(
            "Attach it to a table with CREATE TRIGGER … EXECUTE FUNCTION {name}(…); its arguments are in README."
        ),
    )
}

// ---------------------------------------------------------------------------
// The firing trigger

const TG_DEFAULT: &str = "integrity.tg_default";
const TG_LINK_STATUS: &str = "integrity.tg_link_status";
const TG_IMPLIES: &str = "integrity.tg_implies";
const TG_CHILD_FLAG: &str = "integrity.tg_child_flag";

/// The trigger firing now, and which of our functions it calls.
struct Fired<'a> {
    td: &'a pg_sys::TriggerData,
    func: &'static str,
}

impl<'a> Fired<'a> {
    fn new(trigger: &'a pgrx::PgTrigger<'a>, func: &'static str) -> Fired<'a> {
        Fired {
            td: trigger.trigger_data(),
            func,
        }
    }

    /// A correct `CREATE TRIGGER` for this trigger: `timing` (e.g. `BEFORE
    /// INSERT`), FOR EACH ROW, calling our function with `args`.
    fn example(&self, timing: &str, args: &str) -> String {
        format!(
            "CREATE TRIGGER {} {timing} ON {} FOR EACH ROW EXECUTE FUNCTION {}({args})",
            quote(&self.name()),
            self.table(),
            self.func
        )
    }

    fn trigger(&self) -> &pg_sys::Trigger {
        // SAFETY: tg_trigger is set for every trigger call.
        unsafe { &*self.td.tg_trigger }
    }

    fn rel(&self) -> pg_sys::Relation {
        self.td.tg_relation
    }

    fn relid(&self) -> Oid {
        // SAFETY: tg_relation is the open relation the trigger fired on.
        unsafe { (*self.rel()).rd_id }
    }

    fn name(&self) -> String {
        // SAFETY: tgname is a NUL-terminated string.
        unsafe { CStr::from_ptr(self.trigger().tgname) }
            .to_string_lossy()
            .into_owned()
    }

    /// The table, schema-qualified and quoted as SQL needs it.
    fn table(&self) -> String {
        qualified(self.relid())
    }

    fn args(&self) -> Vec<String> {
        let t = self.trigger();
        (0..t.tgnargs as usize)
            .map(|i| {
                // SAFETY: tgargs has tgnargs NUL-terminated strings.
                unsafe { CStr::from_ptr(*t.tgargs.add(i)) }
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    fn event(&self) -> u32 {
        self.td.tg_event
    }

    fn is_row(&self) -> bool {
        self.event() & pg_sys::TRIGGER_EVENT_ROW != 0
    }

    fn is_before(&self) -> bool {
        self.event() & pg_sys::TRIGGER_EVENT_TIMINGMASK == pg_sys::TRIGGER_EVENT_BEFORE
    }

    fn is_after(&self) -> bool {
        self.event() & pg_sys::TRIGGER_EVENT_TIMINGMASK == pg_sys::TRIGGER_EVENT_AFTER
    }

    fn op(&self) -> u32 {
        self.event() & pg_sys::TRIGGER_EVENT_OPMASK
    }

    /// A mistake in how the trigger is made, named and with a correct
    /// `CREATE TRIGGER` (`example`) as the hint.
    fn mistake(&self, kind: Kind, what: String, example: &str) -> ! {
        raise(
            kind,
            self.func,
            format!(
                "trigger {:?} on table {}: {what}",
                self.name(),
                self.table()
            ),
            format!("For example: {example}"),
        )
    }
}

/// Where trigger arguments are checked: a firing trigger, or
/// `attach_child_flag` before it makes its triggers.
trait Site {
    fn relid(&self) -> Oid;
    fn table(&self) -> String;
    /// The table whose rows tg_child_flag counts: the one the trigger was
    /// created on. For a partitioned table that is the partitioned table,
    /// not the partition whose clone of the trigger fired (one parent's
    /// children may be spread over partitions).
    fn counted(&self) -> Oid {
        self.relid()
    }
    fn args(&self) -> Vec<String>;
    fn mistake(&self, kind: Kind, what: String, example: &str) -> !;
}

impl Site for Fired<'_> {
    fn relid(&self) -> Oid {
        Fired::relid(self)
    }
    fn counted(&self) -> Oid {
        let t = self.trigger();
        if !t.tgisclone {
            return self.relid();
        }
        // Up the clones' parents to the trigger created by CREATE TRIGGER.
        crate::plans::pinned(|| {
            Spi::get_one_with_args::<Oid>(
                "WITH RECURSIVE up AS (
                     SELECT t.oid, t.tgparentid, t.tgrelid FROM pg_catalog.pg_trigger t WHERE t.oid = $1
                     UNION ALL
                     SELECT t.oid, t.tgparentid, t.tgrelid
                       FROM pg_catalog.pg_trigger t JOIN up ON t.oid = up.tgparentid)
                 SELECT tgrelid FROM up WHERE tgparentid = 0",
                &[t.tgoid.into()],
            )
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| self.relid())
    }
    fn table(&self) -> String {
        Fired::table(self)
    }
    fn args(&self) -> Vec<String> {
        Fired::args(self)
    }
    fn mistake(&self, kind: Kind, what: String, example: &str) -> ! {
        Fired::mistake(self, kind, what, example)
    }
}

/// `attach_child_flag` checking the arguments it is about to attach.
struct Attaching {
    child: Oid,
    args: Vec<String>,
}

impl Site for Attaching {
    fn relid(&self) -> Oid {
        self.child
    }
    fn table(&self) -> String {
        qualified(self.child)
    }
    fn args(&self) -> Vec<String> {
        self.args.clone()
    }
    fn mistake(&self, kind: Kind, what: String, example: &str) -> ! {
        raise(
            kind,
            "integrity.attach_child_flag",
            format!("table {}: {what}", self.table()),
            format!("For example: {example}"),
        )
    }
}

// ---------------------------------------------------------------------------
// Validated arguments, kept per trigger

/// A column of the trigger's table (or of a parent table).
#[derive(Clone)]
struct Col {
    name: String,
    /// 1-based.
    attnum: i16,
    typid: Oid,
    typmod: i32,
    collation: Oid,
}

/// A value converted to a column's type, kept in the trigger's memory.
struct Value {
    datum: pg_sys::Datum,
    text: String,
}

/// Memory for a trigger's kept values, freed with it.
struct Memory(pg_sys::MemoryContext);

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: the context was made for this trigger and is used by
        // nothing else once the trigger's entry is gone.
        unsafe { pg_sys::MemoryContextDelete(self.0) }
    }
}

struct Entry {
    relid: Oid,
    config: Rc<dyn Any>,
}

thread_local! {
    // Looked up on every row: FxHash, not SipHash, for a u32 key.
    static CONFIGS: RefCell<rustc_hash::FxHashMap<Oid, Entry>> = RefCell::new(rustc_hash::FxHashMap::default());
    static WATCHING: Cell<bool> = const { Cell::new(false) };
    /// (other table, trigger): a trigger's config also names this table
    /// (tg_child_flag's parent, a partitioned table it counts over), so a
    /// change to it forgets the config too.
    static ALSO: RefCell<Vec<(Oid, Oid)>> = const { RefCell::new(Vec::new()) };
}

/// The firing trigger's config depends on table `rel` as well as on its own.
fn depends_on(f: &Fired<'_>, rel: Oid) {
    let tgoid = f.trigger().tgoid;
    if rel != f.relid() {
        ALSO.with(|a| {
            let mut a = a.borrow_mut();
            if !a.contains(&(rel, tgoid)) {
                a.push((rel, tgoid));
            }
        });
    }
}

/// Relcache invalidation callback: forget the triggers of a table that
/// changed (or of every table).
unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, relid: Oid) {
    // Values are only dropped after the borrow ends (their Drop may free
    // memory contexts).
    let also: Vec<Oid> = ALSO.with(|a| {
        let mut a = a.borrow_mut();
        let hit = a
            .iter()
            .filter(|(r, _)| relid == Oid::INVALID || *r == relid)
            .map(|(_, t)| *t)
            .collect();
        a.retain(|(r, _)| relid != Oid::INVALID && *r != relid);
        hit
    });
    let gone: Vec<Entry> = CONFIGS.with(|c| {
        let mut c = c.borrow_mut();
        let keys: Vec<Oid> = c
            .iter()
            .filter(|(k, e)| relid == Oid::INVALID || e.relid == relid || also.contains(k))
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter().filter_map(|k| c.remove(&k)).collect()
    });
    let groups: Vec<Rc<Group>> = GROUPS.with(|g| {
        let mut g = g.borrow_mut();
        let keys: Vec<GroupKey> = g
            .iter()
            .filter(|(_, (r, _))| relid == Oid::INVALID || *r == relid)
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| g.remove(&k))
            .map(|(_, g)| g)
            .collect()
    });
    drop(groups);
    drop(gone);
}

/// Register `forget`, once per backend.
fn watch() {
    if !WATCHING.with(|w| w.replace(true)) {
        // SAFETY: registered once per backend, for its life.
        unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(forget), pg_sys::Datum::from(0)) };
    }
}

/// The validated arguments of the firing trigger, built by `build` on its
/// first use in this session.
fn config<T: 'static>(f: &Fired<'_>, build: impl FnOnce(&Fired<'_>) -> T) -> Rc<T> {
    let tgoid = f.trigger().tgoid;
    let kept = CONFIGS.with(|c| c.borrow().get(&tgoid).map(|e| e.config.clone()));
    if let Some(kept) = kept.and_then(|k| k.downcast::<T>().ok()) {
        return kept;
    }
    watch();
    let built = Rc::new(build(f));
    CONFIGS.with(|c| {
        c.borrow_mut().insert(
            tgoid,
            Entry {
                relid: f.relid(),
                config: built.clone(),
            },
        )
    });
    built
}

/// A memory context for a trigger's kept values: made under the current
/// transaction, so a failed validation frees it; `keep` moves it under
/// TopMemoryContext once the trigger is valid.
fn memory() -> Memory {
    // SAFETY: a new context under the transaction's.
    Memory(unsafe {
        pg_sys::AllocSetContextCreateInternal(
            pg_sys::CurTransactionContext,
            c"integrity trigger".as_ptr(),
            0,
            1024,
            8 * 1024 * 1024,
        )
    })
}

impl Memory {
    fn keep(self) -> Memory {
        // SAFETY: reparenting our own context.
        unsafe { pg_sys::MemoryContextSetParent(self.0, pg_sys::TopMemoryContext) };
        self
    }
}

/// Each column in one role only: `cols` are the columns with their
/// argument positions; two naming the same column is 22023 (a rule whose
/// status column is its fk, say, would overwrite the fk it reads).
fn one_role_each(f: &impl Site, cols: &[(&Col, usize)], example: &str) {
    for (i, (a, pa)) in cols.iter().enumerate() {
        if let Some((_, pb)) = cols[i + 1..].iter().find(|(b, _)| b.attnum == a.attnum) {
            f.mistake(
                Kind::InvalidParameter,
                format!(
                    "arguments {pa} and {pb} name the same column {}; each column can play one part",
                    literal(&a.name)
                ),
                example,
            );
        }
    }
}

/// The column `name` of `relid` (the trigger's table when `relid` is
/// its own), or the mistake.
/// Column `name` of `relid`, one our rules read before the row is stored
/// or write: not a generated column (in a BEFORE trigger it holds no
/// value yet, and whatever is set there is computed over).
fn column(f: &impl Site, relid: Oid, name: &str, arg: usize, example: &str) -> Col {
    let col = column_any(f, relid, name, arg, example);
    // SAFETY: a catalog lookup of an existing column.
    if unsafe { pg_sys::get_attgenerated(relid, col.attnum) } != 0 {
        f.mistake(
            Kind::InvalidParameter,
            format!(
                "argument {arg} names column {name:?} of {}, which is generated: a trigger can neither read it before the row is stored nor set it",
                qualified(relid)
            ),
            example,
        );
    }
    col
}

/// Column `name` of `relid`, any kind (one read after the row is stored).
fn column_any(f: &impl Site, relid: Oid, name: &str, arg: usize, example: &str) -> Col {
    let c = CString::new(name).unwrap_or_default();
    // SAFETY: catalog lookups by OID and name.
    unsafe {
        let attnum = pg_sys::get_attnum(relid, c.as_ptr());
        if attnum <= 0 {
            f.mistake(
                Kind::UndefinedColumn,
                format!(
                    "argument {arg} names column {name:?}, which table {} does not have",
                    qualified(relid)
                ),
                example,
            );
        }
        let (mut typid, mut typmod, mut collation) = (Oid::INVALID, 0, Oid::INVALID);
        pg_sys::get_atttypetypmodcoll(relid, attnum, &mut typid, &mut typmod, &mut collation);
        Col {
            name: name.to_string(),
            attnum,
            typid,
            typmod,
            collation,
        }
    }
}

/// `text` converted with `col`'s type input function, into `mem`; or the
/// mistake, with the input function's own SQLSTATE and message.
fn value(f: &Fired<'_>, col: &Col, text: &str, arg: usize, mem: &Memory, example: &str) -> Value {
    let c = CString::new(text).unwrap_or_default();
    let (typid, typmod) = (col.typid, col.typmod);
    // A value is converted once per session and kept: 'now' would be the
    // moment the session first fired the trigger, the same for every row
    // after it (as a column DEFAULT 'now' is the moment of CREATE TABLE).
    let relative = ["now", "today", "tomorrow", "yesterday"];
    if relative.contains(&text.trim().to_ascii_lowercase().as_str())
        && crate::names::type_category(typid) == pg_sys::TYPCATEGORY_DATETIME
    {
        f.mistake(
            Kind::InvalidParameter,
            format!(
                "argument {arg} ({}) is a moment relative to when it is read, and trigger arguments are read once per session; column {:?} would get that one moment in every row",
                literal(text),
                col.name
            ),
            &format!(
                "{example}; for the time of each row, give the column a DEFAULT: ALTER TABLE {} ALTER COLUMN {} SET DEFAULT now()",
                f.table(),
                crate::names::quote(&col.name)
            ),
        );
    }
    // SAFETY: the input function of the column's type, converting into the
    // trigger's own memory; an error is caught by the subtransaction.
    let result = crate::errors::in_subtransaction(|| unsafe {
        let old = pg_sys::MemoryContextSwitchTo(mem.0);
        let (mut input, mut ioparam) = (Oid::INVALID, Oid::INVALID);
        pg_sys::getTypeInputInfo(typid, &mut input, &mut ioparam);
        let d = pg_sys::OidInputFunctionCall(input, c.as_ptr().cast_mut(), ioparam, typmod);
        pg_sys::MemoryContextSwitchTo(old);
        d
    });
    match result {
        Ok(datum) => Value {
            datum,
            text: text.to_string(),
        },
        Err(e) => raise_as(
            e.code,
            f.func,
            format!(
                "trigger {:?} on table {}: argument {arg} ({}) is not a value of column {:?}",
                f.name(),
                f.table(),
                literal(text),
                col.name
            ),
            e.message,
            format!("For example: {example}"),
        ),
    }
}

/// The equality function of `col`'s type, if it has one.
fn eq_of(col: &Col) -> Option<*mut pg_sys::FmgrInfo> {
    // SAFETY: the type cache entry lives for the backend; its eq_opr_finfo
    // is filled in by the lookup when the type has an equality operator.
    unsafe {
        let t = pg_sys::lookup_type_cache(col.typid, pg_sys::TYPECACHE_EQ_OPR_FINFO as i32);
        ((*t).eq_opr != Oid::INVALID).then(|| &mut (*t).eq_opr_finfo as *mut pg_sys::FmgrInfo)
    }
}

/// The equality function of `col`'s type, or the mistake.
fn equality(f: &Fired<'_>, col: &Col, example: &str) -> *mut pg_sys::FmgrInfo {
    eq_of(col).unwrap_or_else(|| {
        f.mistake(
            Kind::InvalidParameter,
            format!(
                "column {:?} has a type without an equality operator",
                col.name
            ),
            example,
        )
    })
}

/// Whether two values of `col` (NULL as `None`) are the same: by the
/// type's `=` (`eq`), or by their text for a type without one.
fn same(
    col: &Col,
    eq: Option<*mut pg_sys::FmgrInfo>,
    a: Option<pg_sys::Datum>,
    b: Option<pg_sys::Datum>,
) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => match eq {
            Some(eq) => equal(eq, col.collation, a, b),
            None => output(col.typid, a) == output(col.typid, b),
        },
        _ => false,
    }
}

fn equal(eq: *mut pg_sys::FmgrInfo, collation: Oid, a: pg_sys::Datum, b: pg_sys::Datum) -> bool {
    // SAFETY: eq is the type's equality function, a and b values of it.
    unsafe { pg_sys::FunctionCall2Coll(eq, collation, a, b).value() != 0 }
}

/// Text of a value of `typid`, for the alert log.
fn output(typid: Oid, datum: pg_sys::Datum) -> String {
    // SAFETY: the type's output function on a value of the type.
    unsafe {
        let (mut out, mut varlena) = (Oid::INVALID, false);
        pg_sys::getTypeOutputInfo(typid, &mut out, &mut varlena);
        CStr::from_ptr(pg_sys::OidOutputFunctionCall(out, datum))
            .to_string_lossy()
            .into_owned()
    }
}

/// The primary key columns of the trigger's table (empty without one).
fn primary_key(f: &Fired<'_>) -> Vec<Col> {
    // SAFETY: the open relation's primary key index, opened to read its
    // key columns.
    unsafe {
        let pk = pg_sys::RelationGetPrimaryKeyIndex(f.rel());
        if pk == Oid::INVALID {
            return Vec::new();
        }
        let index = pg_sys::index_open(pk, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let n = (*(*index).rd_index).indnkeyatts as usize;
        let keys = (*(*index).rd_index).indkey.values.as_slice(n).to_vec();
        pg_sys::index_close(index, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let desc = (*f.rel()).rd_att;
        keys.into_iter()
            .map(|attnum| {
                let a = (*desc).attrs.as_slice((*desc).natts as usize)[(attnum - 1) as usize];
                Col {
                    name: CStr::from_ptr(a.attname.data.as_ptr())
                        .to_string_lossy()
                        .into_owned(),
                    attnum,
                    typid: a.atttypid,
                    typmod: a.atttypmod,
                    collation: a.attcollation,
                }
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Reading and changing NEW

/// The value of column `attnum` in `tuple`.
fn get(f: &Fired<'_>, tuple: pg_sys::HeapTuple, attnum: i16) -> Option<pg_sys::Datum> {
    let mut null = false;
    // SAFETY: a tuple of the trigger's table and one of its columns.
    let d = unsafe { pg_sys::heap_getattr(tuple, attnum as i32, (*f.rel()).rd_att, &mut null) };
    (!null).then_some(d)
}

/// NEW taken apart once for all the rules of a group: its values by
/// column, changed in place; formed again only when a rule changed one.
struct Row {
    values: smallvec::SmallVec<[pg_sys::Datum; 16]>,
    nulls: smallvec::SmallVec<[bool; 16]>,
    changed: bool,
}

impl Row {
    fn of(f: &Fired<'_>, tuple: pg_sys::HeapTuple) -> Row {
        // SAFETY: the trigger's table's descriptor and a tuple of it; the
        // arrays have one entry per column. By-reference values point into
        // `tuple`, which outlives the row.
        unsafe {
            let desc = (*f.rel()).rd_att;
            let n = (*desc).natts as usize;
            let mut row = Row {
                values: smallvec::smallvec![pg_sys::Datum::from(0); n],
                nulls: smallvec::smallvec![true; n],
                changed: false,
            };
            pg_sys::heap_deform_tuple(tuple, desc, row.values.as_mut_ptr(), row.nulls.as_mut_ptr());
            row
        }
    }

    fn get(&self, attnum: i16) -> Option<pg_sys::Datum> {
        let i = attnum as usize - 1;
        (!self.nulls[i]).then(|| self.values[i])
    }

    fn set(&mut self, attnum: i16, value: Option<pg_sys::Datum>) {
        let i = attnum as usize - 1;
        self.values[i] = value.unwrap_or(pg_sys::Datum::from(0));
        self.nulls[i] = value.is_none();
        self.changed = true;
    }

    /// Set `col` to `after`, logging it as a correction (rule of trigger
    /// `f`) when it overwrites a value.
    fn correct(&mut self, f: &Fired<'_>, col: &Col, after: pg_sys::Datum) {
        let before = self.get(col.attnum);
        if before.is_some() && gucs::log_corrections() {
            log_correction(f, self, col, before, Some(after));
        }
        self.set(col.attnum, Some(after));
    }

    /// The tuple to store: `tuple` itself when no rule changed it.
    fn form(mut self, f: &Fired<'_>, tuple: pg_sys::HeapTuple) -> pg_sys::HeapTuple {
        if !self.changed {
            return tuple;
        }
        // SAFETY: a new tuple of the table from one value per column, with
        // the old tuple's identity (as heap_modify_tuple copies it); the
        // executor takes it as the row to store.
        unsafe {
            let t = pg_sys::heap_form_tuple(
                (*f.rel()).rd_att,
                self.values.as_mut_ptr(),
                self.nulls.as_mut_ptr(),
            );
            (*(*t).t_data).t_ctid = (*(*tuple).t_data).t_ctid;
            (*t).t_self = (*tuple).t_self;
            (*t).t_tableOid = (*tuple).t_tableOid;
            t
        }
    }
}

static LOG: Stmt = Stmt {
    // org_id: the session's tenant, so a tenant-scoped session sees the
    // corrections of the rows it wrote.
    sql: "INSERT INTO integrity.alerts
              (org_id, check_name, severity, subject, details, auto_corrected, resolved_at, resolution)
          VALUES (integrity.current_org(), $1, 'info', $2, $3, true, pg_catalog.clock_timestamp(),
                  'auto-corrected')",
    args: &[pg_sys::TEXTOID, pg_sys::TEXTOID, pg_sys::JSONBOID],
    writes: true,
};

fn log_correction(
    f: &Fired<'_>,
    row: &Row,
    col: &Col,
    before: Option<pg_sys::Datum>,
    after: Option<pg_sys::Datum>,
) {
    let pk = primary_key(f);
    // In key order (the map below sorts its keys by name).
    let values: Vec<Option<String>> = pk
        .iter()
        .map(|c| row.get(c.attnum).map(|d| output(c.typid, d)))
        .collect();
    let key: serde_json::Map<String, serde_json::Value> = pk
        .iter()
        .zip(&values)
        .map(|(c, v)| (c.name.clone(), serde_json::Value::from(v.clone())))
        .collect();
    let subject = if pk.is_empty() {
        f.table()
    } else {
        format!(
            "{}({})=({})",
            f.table(),
            pk.iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            values
                .iter()
                .map(|v| v.as_deref().unwrap_or("NULL"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let details = serde_json::json!({
        "table": f.table(),
        "trigger": f.name(),
        "key": key,
        "column": col.name,
        "before": before.map(|d| output(col.typid, d)),
        "after": after.map(|d| output(col.typid, d)),
    });
    let check = f.func.trim_start_matches("integrity.");
    with_pinned_settings(|| {
        Spi::connect_mut(|client| {
            run(
                client,
                &LOG,
                None,
                &[
                    check.into(),
                    subject.into(),
                    Jsonb::from_text(&details.to_string()).into(),
                ],
            );
        })
    });
}

/// `f()` as the owner of the table the trigger fired on, with its row
/// security not applied to it, as Postgres runs its foreign-key checks:
/// tg_child_flag counts every child and updates the parent whatever the
/// writing role may see or update (it needs no rights on the parent).
fn as_owner<R>(f: &Fired<'_>, body: impl FnOnce() -> R) -> R {
    // SAFETY: rd_rel of the open relation the trigger fired on.
    let owner = unsafe { (*(*f.rel()).rd_rel).relowner };
    crate::plans::as_user(
        owner,
        |security| {
            security
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_NOFORCE_RLS as i32
        },
        body,
    )
}

/// Run `f` with `search_path = pg_catalog, pg_temp` and
/// `enable_seqscan = off`, restored afterwards. The SQL a trigger function
/// runs resolves names there, as a function declared with that SET would,
/// but rows that need no SQL do not pay for setting it. Its plans are kept
/// for the session, and one made while a table was empty (just created or
/// truncated) must not stay a sequential scan as the table grows.
fn with_pinned_settings<R>(f: impl FnOnce() -> R) -> R {
    crate::plans::with_settings(&PINNED, f)
}

const PINNED: [(&CStr, &CStr); 2] = [
    (c"search_path", c"pg_catalog, pg_temp"),
    (c"enable_seqscan", c"off"),
];

/// [`with_pinned_settings`] with `jit = off` too, for the statements that
/// touch every row a statement changed (tg_child_flag per statement and on
/// TRUNCATE). Their estimates grow with the rows, so Postgres would
/// JIT-compile them, which took longer than it saved: in a COPY of 100,000
/// children, the recount took 1.48 s with JIT and 1.16 s without.
fn with_bulk_settings<R>(f: impl FnOnce() -> R) -> R {
    crate::plans::with_settings(&[PINNED[0], PINNED[1], (c"jit", c"off")], f)
}

impl Fired<'_> {
    /// This trigger as it should have been made: `timing` (e.g. `BEFORE
    /// INSERT OR UPDATE`), FOR EACH ROW, with its own arguments.
    fn remade(&self, timing: &str) -> String {
        let args: Vec<String> = self.args().iter().map(|a| literal(a)).collect();
        self.example(timing, &args.join(", "))
    }
}

/// Check a BEFORE ROW INSERT/UPDATE trigger's attachment.
fn before_row(f: &Fired<'_>) {
    if !f.is_before() || !f.is_row() || f.op() == pg_sys::TRIGGER_EVENT_DELETE {
        f.mistake(
            Kind::TriggerProtocol,
            "must be attached BEFORE INSERT or UPDATE, FOR EACH ROW".into(),
            &f.remade("BEFORE INSERT OR UPDATE"),
        );
    }
}

/// NEW of a BEFORE ROW INSERT/UPDATE trigger, and the slot holding it.
fn new_row(f: &Fired<'_>) -> (pg_sys::HeapTuple, *mut pg_sys::TupleTableSlot) {
    if f.op() == pg_sys::TRIGGER_EVENT_UPDATE {
        (f.td.tg_newtuple, f.td.tg_newslot)
    } else {
        (f.td.tg_trigtuple, f.td.tg_trigslot)
    }
}

/// Return `tuple` as the trigger's result.
fn result<'a>(
    f: &Fired<'a>,
    tuple: pg_sys::HeapTuple,
) -> Option<PgHeapTuple<'a, AllocatedByPostgres>> {
    // SAFETY: a tuple of the trigger's table, described by its descriptor.
    Some(unsafe {
        PgHeapTuple::from_heap_tuple(
            pgrx::PgTupleDesc::from_pg_unchecked((*f.rel()).rd_att),
            tuple,
        )
    })
}

// ---------------------------------------------------------------------------
// The BEFORE ROW rules, enforced a group at a time
//
// Each of tg_default, tg_link_status and tg_implies enforces one rule on
// NEW. Changing NEW means forming a new tuple, which the executor then
// copies into its slot; three triggers that each change a column form and
// copy the row three times. So the first of our BEFORE ROW triggers to fire
// for a row enforces, in firing order, its own rule and those of the
// triggers of ours that fire right after it, on the row taken apart once,
// and forms it once. Those triggers then find their rule done and return
// NEW as it is. The result is the one the triggers give one by one: the
// rules run in the same order on the same values, and a group never spans
// a trigger that is not ours, nor one whose firing depends on the row (a
// WHEN condition, UPDATE OF columns).

/// A validated BEFORE ROW rule: what one of our BEFORE triggers enforces.
enum Rule {
    Default(Rc<DefaultConfig>),
    Link(Rc<LinkConfig>),
    Implies(Rc<ImpliesConfig>),
}

impl Rule {
    /// The rule of trigger `f` (validating its arguments on first use).
    fn of(f: &Fired<'_>) -> Rule {
        match f.func {
            TG_DEFAULT => Rule::Default(config(f, default_config)),
            TG_LINK_STATUS => Rule::Link(config(f, link_config)),
            _ => Rule::Implies(config(f, implies_config)),
        }
    }

    /// The trigger function whose rule it is.
    fn func(&self) -> &'static str {
        match self {
            Rule::Default(_) => TG_DEFAULT,
            Rule::Link(_) => TG_LINK_STATUS,
            Rule::Implies(_) => TG_IMPLIES,
        }
    }

    /// Enforce the rule (of trigger `f`) on `row`.
    fn enforce(&self, f: &Fired<'_>, row: &mut Row) {
        match self {
            Rule::Default(cfg) => {
                for (col, v) in &cfg.pairs {
                    if row.get(col.attnum).is_none() {
                        row.set(col.attnum, Some(v.datum));
                    }
                }
            }
            Rule::Link(cfg) => {
                let want = if row.get(cfg.fk.attnum).is_some() {
                    &cfg.linked
                } else {
                    &cfg.unlinked
                };
                match row.get(cfg.status.attnum) {
                    Some(d) if equal(cfg.eq, cfg.status.collation, d, want.datum) => {}
                    Some(_) => row.correct(f, &cfg.status, want.datum),
                    None => row.set(cfg.status.attnum, Some(want.datum)),
                }
            }
            Rule::Implies(cfg) => {
                let applies = row
                    .get(cfg.if_col.attnum)
                    .is_some_and(|d| equal(cfg.if_eq, cfg.if_col.collation, d, cfg.if_value.datum));
                let have = row.get(cfg.then_col.attnum);
                let holds = have.is_some_and(|d| {
                    equal(cfg.then_eq, cfg.then_col.collation, d, cfg.then_value.datum)
                });
                if !applies || holds {
                    return;
                }
                if cfg.reject {
                    implies_rejects(f, cfg, have);
                }
                match have {
                    Some(_) => row.correct(f, &cfg.then_col, cfg.then_value.datum),
                    None => row.set(cfg.then_col.attnum, Some(cfg.then_value.datum)),
                }
            }
        }
    }
}

/// The BEFORE ROW triggers of ours that fire together for one event: the
/// firing trigger and those right after it in firing order, by their
/// position in the table's trigger descriptor.
struct Group {
    members: Vec<(usize, Oid, Rule)>,
}

/// A group, kept for (its first trigger, event, replica role).
type GroupKey = (Oid, u32, bool);

thread_local! {
    static GROUPS: RefCell<rustc_hash::FxHashMap<GroupKey, (Oid, Rc<Group>)>> =
        RefCell::new(rustc_hash::FxHashMap::default());
    /// The group enforced last: the slot of its row, the event, and the
    /// triggers of it still to fire for that row (next first).
    static ENFORCED: RefCell<(usize, u32, smallvec::SmallVec<[Oid; 8]>)> =
        RefCell::new((0, 0, smallvec::SmallVec::new()));
    /// Whether `forget_enforced` is registered for aborts.
    static ABORT_HOOKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// An error between a group's first trigger and the next (a cancel, a
/// partition check) leaves ENFORCED set; a later row that landed in the
/// same slot must not be taken for the same row, so an abort of the
/// transaction or of a subtransaction (a savepoint, an EXCEPTION block)
/// forgets it.
#[pg_guard]
unsafe extern "C-unwind" fn forget_enforced_xact(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::XactEvent::XACT_EVENT_ABORT
        || event == pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
    {
        ENFORCED.with(|e| e.borrow_mut().2.clear());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_enforced_subxact(
    event: pg_sys::SubXactEvent::Type,
    _sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        ENFORCED.with(|e| e.borrow_mut().2.clear());
    }
}

fn replica() -> bool {
    // SAFETY: reading a GUC variable of this backend.
    unsafe { pg_sys::SessionReplicationRole == pg_sys::SESSION_REPLICATION_ROLE_REPLICA as i32 }
}

/// Whether trigger `t` fires for a row of event `op`, as far as its
/// definition says (type and enabled state; not its WHEN condition).
fn fires(t: &pg_sys::Trigger, op: u32) -> bool {
    let tgtype = t.tgtype as u32;
    let event = match op {
        pg_sys::TRIGGER_EVENT_UPDATE => pg_sys::TRIGGER_TYPE_UPDATE,
        _ => pg_sys::TRIGGER_TYPE_INSERT,
    };
    let enabled = match t.tgenabled as u8 {
        pg_sys::TRIGGER_DISABLED => false,
        pg_sys::TRIGGER_FIRES_ON_ORIGIN => !replica(),
        pg_sys::TRIGGER_FIRES_ON_REPLICA => replica(),
        _ => true,
    };
    enabled
        && tgtype & pg_sys::TRIGGER_TYPE_LEVEL_MASK == pg_sys::TRIGGER_TYPE_ROW
        && tgtype & pg_sys::TRIGGER_TYPE_TIMING_MASK == pg_sys::TRIGGER_TYPE_BEFORE
        && tgtype & event != 0
}

/// Which of our BEFORE ROW functions `funcid` is, if it is one (a function
/// of that name in our schema, `ns`).
fn rule_function(funcid: Oid, ns: Oid) -> Option<&'static str> {
    // SAFETY: catalog lookups by OID; the name is copied.
    unsafe {
        if pg_sys::get_func_namespace(funcid) != ns {
            return None;
        }
        let name = pg_sys::get_func_name(funcid);
        if name.is_null() {
            return None;
        }
        match CStr::from_ptr(name).to_bytes() {
            b"tg_default" => Some(TG_DEFAULT),
            b"tg_link_status" => Some(TG_LINK_STATUS),
            b"tg_implies" => Some(TG_IMPLIES),
            _ => None,
        }
    }
}

/// The table's triggers, in firing order.
fn triggers<'r>(f: &Fired<'r>) -> &'r [pg_sys::Trigger] {
    // SAFETY: the open relation's trigger descriptor (it has one: a
    // trigger of it is firing), with numtriggers entries.
    unsafe {
        let d = (*f.rel()).trigdesc;
        if d.is_null() {
            return &[];
        }
        std::slice::from_raw_parts((*d).triggers, (*d).numtriggers as usize)
    }
}

/// Trigger `t` of the firing trigger's table, as if it were firing now.
fn member(f: &Fired<'_>, t: &pg_sys::Trigger) -> pg_sys::TriggerData {
    pg_sys::TriggerData {
        tg_trigger: t as *const pg_sys::Trigger as *mut pg_sys::Trigger,
        ..*f.td
    }
}

/// The group that starts with the firing trigger, built (and each
/// member's arguments validated) on first use.
fn group(f: &Fired<'_>) -> Rc<Group> {
    let key = (f.trigger().tgoid, f.op(), replica());
    if let Some(g) = GROUPS.with(|g| g.borrow().get(&key).map(|(_, g)| g.clone())) {
        return g;
    }
    watch();
    let all = triggers(f);
    let me = all
        .iter()
        .position(|t| t.tgoid == key.0)
        .unwrap_or(usize::MAX);
    let mut members = vec![(me, key.0, Rule::of(f))];
    // SAFETY: a catalog lookup by OID.
    let ns = unsafe { pg_sys::get_func_namespace(f.trigger().tgfoid) };
    for (k, t) in all.iter().enumerate().skip(me.saturating_add(1)) {
        if !fires(t, f.op()) {
            continue;
        }
        // A member cloned from a partitioned table's trigger where the
        // first is not (or the reverse) ends the group too: Postgres checks
        // that a clone did not move the row to another partition, after
        // each clone, and that check must see the clone's own change.
        let conditional = !t.tgqual.is_null()
            || (f.op() == pg_sys::TRIGGER_EVENT_UPDATE && t.tgnattr > 0)
            || t.tgisclone != f.trigger().tgisclone;
        match rule_function(t.tgfoid, ns) {
            Some(func) if !conditional => {
                let td = member(f, t);
                let m = Fired { td: &td, func };
                members.push((k, t.tgoid, Rule::of(&m)));
            }
            _ => break,
        }
    }
    let g = Rc::new(Group { members });
    GROUPS.with(|gs| gs.borrow_mut().insert(key, (f.relid(), g.clone())));
    g
}

/// Whether the firing trigger's rule was already enforced on this row by
/// the group before it.
fn enforced(f: &Fired<'_>, slot: *mut pg_sys::TupleTableSlot) -> bool {
    ENFORCED.with(|e| {
        let mut e = e.borrow_mut();
        let (s, op, next) = &mut *e;
        if *s == slot as usize && *op == f.op() && next.first() == Some(&f.trigger().tgoid) {
            next.remove(0);
            true
        } else {
            next.clear();
            false
        }
    })
}

/// A BEFORE ROW trigger of ours fires: enforce its group's rules on NEW,
/// unless its rule was enforced by the group before it.
fn before_rules<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
    func: &'static str,
) -> Option<PgHeapTuple<'a, AllocatedByPostgres>> {
    let f = Fired::new(trigger, func);
    before_row(&f);
    let (new, slot) = new_row(&f);
    if enforced(&f, slot) {
        return result(&f, new);
    }
    let mut g = group(&f);
    let all = triggers(&f);
    if g.members[1..]
        .iter()
        .any(|(k, tgoid, _)| all.get(*k).map(|t| t.tgoid) != Some(*tgoid))
    {
        // The descriptor changed under a kept group: build it again.
        GROUPS.with(|gs| gs.borrow_mut().clear());
        g = group(&f);
    }
    let mut row = Row::of(&f, new);
    for (i, (k, _, rule)) in g.members.iter().enumerate() {
        if i == 0 {
            rule.enforce(&f, &mut row);
        } else {
            let td = member(&f, &all[*k]);
            rule.enforce(
                &Fired {
                    td: &td,
                    func: rule.func(),
                },
                &mut row,
            );
        }
    }
    if g.members.len() > 1 && !slot.is_null() {
        if !ABORT_HOOKED.with(|h| h.replace(true)) {
            // SAFETY: registered once per backend, for its life.
            unsafe {
                pg_sys::RegisterXactCallback(Some(forget_enforced_xact), std::ptr::null_mut());
                pg_sys::RegisterSubXactCallback(
                    Some(forget_enforced_subxact),
                    std::ptr::null_mut(),
                );
            }
        }
        ENFORCED.with(|e| {
            *e.borrow_mut() = (
                slot as usize,
                f.op(),
                g.members[1..].iter().map(|(_, tgoid, _)| *tgoid).collect(),
            )
        });
    }
    result(&f, row.form(&f, new))
}

// ---------------------------------------------------------------------------
// tg_default

struct DefaultConfig {
    pairs: Vec<(Col, Value)>,
    _memory: Memory,
}

fn default_config(f: &Fired<'_>) -> DefaultConfig {
    let example = || f.example("BEFORE INSERT", "'direction', 'inbound'");
    let args = f.args();
    if args.is_empty() || args.len() % 2 != 0 {
        f.mistake(
            Kind::InvalidParameter,
            format!(
                "takes pairs of column and value, got {} arguments",
                args.len()
            ),
            &example(),
        );
    }
    let mem = memory();
    let pairs = args
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| {
            let col = column(f, f.relid(), &pair[0], 2 * i + 1, &example());
            let v = value(f, &col, &pair[1], 2 * i + 2, &mem, &example());
            (col, v)
        })
        .collect::<Vec<_>>();
    let cols: Vec<(&Col, usize)> = pairs
        .iter()
        .enumerate()
        .map(|(i, (c, _))| (c, 2 * i + 1))
        .collect();
    one_role_each(f, &cols, &example());
    DefaultConfig {
        pairs,
        _memory: mem.keep(),
    }
}

/// BEFORE INSERT (or UPDATE) FOR EACH ROW: a NULL in each named column
/// becomes its value.
#[pg_trigger(
    sql = "CREATE FUNCTION tg_default() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'tg_default_checked';"
)]
fn tg_default<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
    Ok(before_rules(trigger, TG_DEFAULT))
}

// ---------------------------------------------------------------------------
// tg_link_status

struct LinkConfig {
    fk: Col,
    status: Col,
    linked: Value,
    unlinked: Value,
    eq: *mut pg_sys::FmgrInfo,
    _memory: Memory,
}

fn link_config(f: &Fired<'_>) -> LinkConfig {
    let example = || {
        f.example(
            "BEFORE INSERT OR UPDATE",
            "'customer_id', 'customer_link_status', 'linked', 'unlinked'",
        )
    };
    let args = f.args();
    if args.len() != 4 {
        f.mistake(
            Kind::InvalidParameter,
            format!(
                "takes 4 arguments (fk_col, status_col, linked_value, unlinked_value), got {}",
                args.len()
            ),
            &example(),
        );
    }
    let mem = memory();
    let fk = column(f, f.relid(), &args[0], 1, &example());
    let status = column(f, f.relid(), &args[1], 2, &example());
    one_role_each(f, &[(&fk, 1), (&status, 2)], &example());
    let linked = value(f, &status, &args[2], 3, &mem, &example());
    let unlinked = value(f, &status, &args[3], 4, &mem, &example());
    let eq = equality(f, &status, &example());
    LinkConfig {
        fk,
        status,
        linked,
        unlinked,
        eq,
        _memory: mem.keep(),
    }
}

/// BEFORE INSERT OR UPDATE FOR EACH ROW: `status_col` is `linked_value`
/// when `fk_col` is set, `unlinked_value` when it is NULL.
#[pg_trigger(
    sql = "CREATE FUNCTION tg_link_status() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'tg_link_status_checked';"
)]
fn tg_link_status<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
    Ok(before_rules(trigger, TG_LINK_STATUS))
}

// ---------------------------------------------------------------------------
// tg_implies

struct ImpliesConfig {
    if_col: Col,
    if_value: Value,
    if_eq: *mut pg_sys::FmgrInfo,
    then_col: Col,
    then_value: Value,
    then_eq: *mut pg_sys::FmgrInfo,
    reject: bool,
    _memory: Memory,
}

fn implies_config(f: &Fired<'_>) -> ImpliesConfig {
    let example = || {
        f.example(
            "BEFORE INSERT OR UPDATE",
            "'session_outcome', 'appointment_booked', 'appointment_made', 'true', 'correct'",
        )
    };
    let args = f.args();
    if args.len() != 4 && args.len() != 5 {
        f.mistake(
            Kind::InvalidParameter,
            format!(
                "takes 4 or 5 arguments (if_col, if_value, then_col, then_value [, 'correct' | 'reject']), got {}",
                args.len()
            ),
            &example(),
        );
    }
    let reject = match args.get(4).map(String::as_str) {
        None | Some("correct") => false,
        Some("reject") => true,
        Some(other) => f.mistake(
            Kind::InvalidParameter,
            format!(
                "argument 5 must be 'correct' or 'reject', got {}",
                literal(other)
            ),
            &example(),
        ),
    };
    let mem = memory();
    let if_col = column(f, f.relid(), &args[0], 1, &example());
    let if_value = value(f, &if_col, &args[1], 2, &mem, &example());
    let then_col = column(f, f.relid(), &args[2], 3, &example());
    one_role_each(f, &[(&if_col, 1), (&then_col, 3)], &example());
    let then_value = value(f, &then_col, &args[3], 4, &mem, &example());
    let if_eq = equality(f, &if_col, &example());
    let then_eq = equality(f, &then_col, &example());
    ImpliesConfig {
        if_col,
        if_value,
        if_eq,
        then_col,
        then_value,
        then_eq,
        reject,
        _memory: mem.keep(),
    }
}

/// The row breaks trigger `f`'s rule and the rule says 'reject': 23514.
fn implies_rejects(f: &Fired<'_>, cfg: &ImpliesConfig, have: Option<pg_sys::Datum>) -> ! {
    raise(
        Kind::CheckViolation,
        TG_IMPLIES,
        format!(
            "row of table {} has {} = {} but {} = {}, not {} (trigger {:?})",
            f.table(),
            cfg.if_col.name,
            literal(&cfg.if_value.text),
            cfg.then_col.name,
            have.map_or("NULL".to_string(), |d| literal(&output(
                cfg.then_col.typid,
                d
            ))),
            literal(&cfg.then_value.text),
            f.name()
        ),
        format!(
            "Set {} to {} when {} is {}.",
            cfg.then_col.name,
            literal(&cfg.then_value.text),
            cfg.if_col.name,
            literal(&cfg.if_value.text)
        ),
    )
}

/// BEFORE INSERT OR UPDATE FOR EACH ROW: when `if_col = if_value`,
/// `then_col` must be `then_value`: corrected (default) or the row refused
/// with 23514 (`'reject'`).
#[pg_trigger(
    sql = "CREATE FUNCTION tg_implies() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'tg_implies_checked';"
)]
fn tg_implies<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
    Ok(before_rules(trigger, TG_IMPLIES))
}

// ---------------------------------------------------------------------------
// tg_child_flag

struct ChildConfig {
    fk: Col,
    deleted: Option<Col>,
    /// `=` of the fk's and the deleted column's types, looked up once.
    fk_eq: Option<*mut pg_sys::FmgrInfo>,
    deleted_eq: Option<*mut pg_sys::FmgrInfo>,
    /// Whether the parent keeps a count (or only the flag).
    counts: bool,
    lock: Lock,
    recount: Recount,
}

/// How the parent is locked before its children are counted.
enum Lock {
    /// `SELECT 1 FROM parent WHERE key = $1 FOR NO KEY UPDATE`.
    Sql(OwnedPreparedStatement),
    /// The same done here through an index on the parent key, as
    /// Postgres's LockRows does it, without setting up a plan for every
    /// row: for a plain parent table with no row security, that the
    /// child table's owner may read and update.
    Index { parent: Oid, index: ByIndex },
}

/// How a locked parent is recounted: two statements, the second writing
/// the parent even when nothing changes. That one is used under
/// REPEATABLE READ, where a lock alone does not make a concurrent toucher
/// of the parent fail (two deletes of a parent's last two children would
/// each see the other's child and leave the flag set); a write does
/// (40001, and the client retries).
struct Recount {
    /// With an index on the fk column, the children are counted here
    /// through it and the statements are UPDATEs given the count as $2: a
    /// plain plan, where the SQL count made Postgres set up a join and an
    /// aggregate for every row. Without (or for a partitioned child
    /// table), the statements count the children themselves.
    index: Option<ByIndex>,
    changed: OwnedPreparedStatement,
    always: OwnedPreparedStatement,
}

/// A btree index whose first key is a column compared with a value (the
/// parent's key with the fk value, the child's fk column with it), with
/// the column type's default operator class and the column's collation,
/// so it finds exactly the rows `col = $1` finds, and no predicate.
struct ByIndex {
    oid: Oid,
    /// `=` of the column's type and the value's, and the value's type
    /// when it is not the column's (a cross-type scan key).
    eq_proc: pg_sys::RegProcedure,
    subtype: Oid,
    collation: Oid,
}

/// AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW on the child table: the
/// parent's `flag_col` (and `count_col`) follow whether (how many) child
/// rows point at it; with `deleted_col`, only children whose `deleted_col`
/// is NULL (or, for a boolean, not true) count.
#[pg_trigger(
    sql = "CREATE FUNCTION tg_child_flag() RETURNS trigger LANGUAGE c AS 'MODULE_PATHNAME', 'tg_child_flag_checked';"
)]
fn tg_child_flag<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
    let f = Fired::new(trigger, TG_CHILD_FLAG);
    let example = || {
        f.example(
            "AFTER INSERT OR UPDATE OR DELETE",
            "'calls', 'id', 'call_id', 'appointment_made', 'appointment_count'",
        )
    };
    if f.is_after() && !f.is_row() && f.op() != pg_sys::TRIGGER_EVENT_TRUNCATE {
        return Ok(set_based(&f));
    }
    if f.is_after() && !f.is_row() && f.op() == pg_sys::TRIGGER_EVENT_TRUNCATE {
        truncated(&f);
        return Ok(None);
    }
    if !f.is_after() || !f.is_row() || f.op() == pg_sys::TRIGGER_EVENT_TRUNCATE {
        f.mistake(
            Kind::TriggerProtocol,
            "must be attached AFTER INSERT OR UPDATE OR DELETE, FOR EACH ROW (or per statement with transition tables: integrity.attach_child_flag; or AFTER TRUNCATE FOR EACH STATEMENT)".into(),
            &f.remade("AFTER INSERT OR UPDATE OR DELETE"),
        );
    }
    let cfg = config(&f, |f| child_config(f, &example()));
    // The parents the change touches: the old row's and the new row's.
    let old = match f.op() {
        pg_sys::TRIGGER_EVENT_INSERT => None,
        _ => Some(f.td.tg_trigtuple),
    };
    let new = match f.op() {
        pg_sys::TRIGGER_EVENT_DELETE => None,
        pg_sys::TRIGGER_EVENT_UPDATE => Some(f.td.tg_newtuple),
        _ => Some(f.td.tg_trigtuple),
    };
    let parent_of = |t: Option<pg_sys::HeapTuple>| t.and_then(|t| get(&f, t, cfg.fk.attnum));
    let (old_parent, new_parent) = (parent_of(old), parent_of(new));
    let mut parents = Vec::with_capacity(2);
    match (old, new) {
        (Some(o), Some(n)) => {
            // An update: only a move or a soft delete changes anything.
            let same_parent = same(&cfg.fk, cfg.fk_eq, old_parent, new_parent);
            let same_deleted = cfg.deleted.as_ref().is_none_or(|d| {
                same(
                    d,
                    cfg.deleted_eq,
                    get(&f, o, d.attnum),
                    get(&f, n, d.attnum),
                )
            });
            if same_parent && same_deleted {
                return Ok(None);
            }
            parents.extend(old_parent);
            if !same_parent {
                parents.extend(new_parent);
            }
        }
        _ => parents.extend(old_parent.or(new_parent)),
    }
    as_owner(&f, || {
        with_pinned_settings(|| {
            Spi::connect_mut(|client| {
                for p in parents {
                    // SAFETY: p is a value of the child's fk column type.
                    let arg = unsafe { DatumWithOid::new(p, cfg.fk.typid) };
                    // Lock the parent first, then count with a snapshot taken
                    // after the lock: a concurrent change to the same parent's
                    // children has committed by then and is counted.
                    match &cfg.lock {
                        Lock::Sql(lock) => {
                            client
                                .update(lock, None, std::slice::from_ref(&arg))
                                .unwrap_or_else(|e| {
                                    crate::errors::bug(format!("tg_child_flag lock: {e}"))
                                });
                        }
                        Lock::Index { parent, index } => lock_parent(*parent, index, p),
                    }
                    let r = &cfg.recount;
                    let update = if crate::direct::xact_snapshot() {
                        &r.always
                    } else {
                        &r.changed
                    };
                    let done = match &r.index {
                        None => client.update(update, None, std::slice::from_ref(&arg)),
                        Some(index) => {
                            let n = count_children(&f, &cfg, index, p);
                            let n = if cfg.counts {
                                DatumWithOid::from(n)
                            } else {
                                DatumWithOid::from(n > 0)
                            };
                            client.update(update, None, &[arg, n])
                        }
                    };
                    done.unwrap_or_else(|e| {
                        crate::errors::bug(format!("tg_child_flag update: {e}"))
                    });
                }
            })
        })
    });
    Ok(None)
}

/// AFTER TRUNCATE FOR EACH STATEMENT on the child table: no trigger sees
/// the rows a TRUNCATE removes, so every parent still flagged (or
/// counted) is recounted. TRUNCATE holds the child table exclusively to
/// the end of its transaction, so no child changes meanwhile.
fn truncated(f: &Fired<'_>) {
    let sql = config(f, |f| {
        let example = f.example(
            "AFTER TRUNCATE",
            "'calls', 'id', 'call_id', 'appointment_made', 'appointment_count'",
        );
        let example = example.replace("FOR EACH ROW", "FOR EACH STATEMENT");
        let a = child_args(f, &example);
        depends_on(f, a.parent);
        depends_on(f, f.counted());
        let (q_key, q_fk, q_flag) = (quote(&a.key.name), quote(&a.fk.name), quote(&a.flag.name));
        let (parent_sql, child_sql) = (qualified(a.parent), qualified(f.counted()));
        let eq = "OPERATOR(pg_catalog.=)";
        let children = |what: &str| {
            format!(
                "(SELECT {what} FROM {child_sql} c WHERE c.{q_fk} {eq} p.{q_key}{})",
                a.live
            )
        };
        match &a.count {
            Some(c) => {
                let q_count = quote(&c.name);
                format!(
                    "UPDATE {parent_sql} p SET {q_flag} = EXISTS {}, {q_count} = {}
                     WHERE p.{q_flag} IS NOT FALSE OR p.{q_count} IS DISTINCT FROM 0",
                    children("1"),
                    children("pg_catalog.count(*)")
                )
            }
            None => format!(
                "UPDATE {parent_sql} p SET {q_flag} = EXISTS {} WHERE p.{q_flag} IS NOT FALSE",
                children("1")
            ),
        }
    });
    as_owner(f, || {
        with_bulk_settings(|| {
            Spi::connect_mut(|client| {
                client
                    .update(sql.as_str(), None, &[])
                    .unwrap_or_else(|e| crate::errors::bug(format!("tg_child_flag truncate: {e}")));
            })
        })
    });
}

/// The recount's condition that the parent's flag or count changes, given
/// the new count (or, with no count column, whether there is any child)
/// as `value`, or nothing when the parent is to be written anyway
/// (`Recount`'s second statement).
fn only_changed(changed_only: bool, q_flag: &str, q_count: Option<&str>, value: &str) -> String {
    match (changed_only, q_count) {
        (false, _) => String::new(),
        (true, Some(q_count)) => format!(
            " AND (p.{q_flag} IS DISTINCT FROM ({value} OPERATOR(pg_catalog.>) 0)
                   OR p.{q_count} IS DISTINCT FROM {value})"
        ),
        (true, None) => format!(" AND p.{q_flag} IS DISTINCT FROM {value}"),
    }
}

/// The set-based path: tg_child_flag attached FOR EACH STATEMENT with
/// transition tables (one trigger per event; `attach_child_flag` makes
/// them). The parents of all rows the statement changed are locked in key
/// order, then recounted by one UPDATE with a snapshot taken after the
/// locks: a COPY of many children costs two statements, not two per row.
fn set_based<'a>(f: &Fired<'a>) -> Option<PgHeapTuple<'a, AllocatedByPostgres>> {
    let t = f.trigger();
    let name = |p: *mut std::ffi::c_char| {
        // SAFETY: a transition table's name, NUL-terminated, or NULL.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    };
    let (old, new) = (name(t.tgoldtable), name(t.tgnewtable));
    let complete = match f.op() {
        pg_sys::TRIGGER_EVENT_INSERT => new.is_some(),
        pg_sys::TRIGGER_EVENT_DELETE => old.is_some(),
        _ => old.is_some() && new.is_some(),
    };
    if !complete {
        f.mistake(
            Kind::TriggerProtocol,
            "attached FOR EACH STATEMENT, it needs the event's transition tables (REFERENCING OLD TABLE / NEW TABLE)".into(),
            "SELECT integrity.attach_child_flag('appointments', 'calls', 'id', 'call_id', 'appointment_made', 'appointment_count')",
        );
    }
    let sql = config(f, |f| {
        let example = "SELECT integrity.attach_child_flag('appointments', 'calls', 'id', 'call_id', 'appointment_made', 'appointment_count')";
        let a = child_args(f, example);
        depends_on(f, a.parent);
        depends_on(f, f.counted());
        let (q_key, q_fk, q_flag) = (quote(&a.key.name), quote(&a.fk.name), quote(&a.flag.name));
        let (parent_sql, child_sql, live) =
            (qualified(a.parent), qualified(f.counted()), a.live.clone());
        let keys = [old.as_deref(), new.as_deref()]
            .into_iter()
            .flatten()
            .map(|tt| format!("SELECT r.{q_fk} FROM {} r", quote(tt)))
            .collect::<Vec<_>>()
            .join(" UNION ");
        let eq = "OPERATOR(pg_catalog.=)";
        // The keys sorted, each parent locked in a nested loop over them:
        // locks in key order, as concurrent statements take them, without
        // sorting the parents' rows (which spilled to disk for a COPY of
        // 100,000 children and took 4 times as long).
        let lock = format!(
            "SELECT 1 FROM (SELECT DISTINCT k FROM ({keys}) k(k) WHERE k IS NOT NULL ORDER BY k) k,
                 LATERAL (SELECT 1 FROM {parent_sql} p WHERE p.{q_key} {eq} k.k FOR NO KEY UPDATE OF p) l"
        );
        // Under REPEATABLE READ the parents are written even when nothing
        // changes (see Recount). `OFFSET 0` keeps the planner from pulling
        // subquery t up into the UPDATE, which copied the count into each
        // place t.n appears: three counts per parent.
        let recount = |changed_only: bool| match &a.count {
            Some(c) => {
                let q_count = quote(&c.name);
                let changed = only_changed(changed_only, &q_flag, Some(&q_count), "t.n");
                format!(
                    "UPDATE {parent_sql} p SET {q_flag} = t.n OPERATOR(pg_catalog.>) 0, {q_count} = t.n
                     FROM (SELECT k.k, (SELECT pg_catalog.count(*) FROM {child_sql} c
                                        WHERE c.{q_fk} {eq} k.k{live}) AS n
                           FROM (SELECT DISTINCT k FROM ({keys}) k(k) WHERE k IS NOT NULL) k
                           OFFSET 0) t
                     WHERE p.{q_key} {eq} t.k{changed}"
                )
            }
            None => {
                let changed = only_changed(changed_only, &q_flag, None, "t.e");
                format!(
                    "UPDATE {parent_sql} p SET {q_flag} = t.e
                     FROM (SELECT k.k, EXISTS (SELECT 1 FROM {child_sql} c
                                               WHERE c.{q_fk} {eq} k.k{live}) AS e
                           FROM (SELECT DISTINCT k FROM ({keys}) k(k) WHERE k IS NOT NULL) k
                           OFFSET 0) t
                     WHERE p.{q_key} {eq} t.k{changed}"
                )
            }
        };
        (lock, recount(true), recount(false))
    });
    as_owner(f, || {
        with_bulk_settings(|| {
            Spi::connect_mut(|client| {
                // SAFETY: registers this trigger's transition tables with the
                // SPI connection just opened, under their REFERENCING names.
                unsafe { pg_sys::SPI_register_trigger_data(f.td as *const _ as *mut _) };
                client
                    .update(sql.0.as_str(), None, &[])
                    .unwrap_or_else(|e| crate::errors::bug(format!("tg_child_flag lock: {e}")));
                let recount = if crate::direct::xact_snapshot() {
                    &sql.2
                } else {
                    &sql.1
                };
                client
                    .update(recount.as_str(), None, &[])
                    .unwrap_or_else(|e| crate::errors::bug(format!("tg_child_flag update: {e}")));
            })
        })
    });
    None
}

/// Attach tg_child_flag's set-based form to `child`: three AFTER ...
/// FOR EACH STATEMENT triggers (INSERT, UPDATE, DELETE) with transition
/// tables, as Postgres allows transition tables only on single-event
/// triggers. Returns the triggers' names.
#[pg_extern(volatile, parallel_unsafe, name = "attach_child_flag_by_oid")]
#[search_path(pg_catalog, pg_temp)]
fn attach_child_flag(
    child: Option<pg_sys::Oid>,
    parent_table: Option<&str>,
    parent_key: Option<&str>,
    child_fk: Option<&str>,
    flag_col: Option<&str>,
    count_col: default!(Option<&str>, "''"),
    deleted_col: default!(Option<&str>, "''"),
) -> Vec<String> {
    const F: &str = "integrity.attach_child_flag";
    let child = crate::errors::required(child, F, "child");
    // SAFETY: a catalog lookup by OID; NULL when there is no such relation.
    if unsafe { pg_sys::get_rel_name(child) }.is_null() {
        raise(
            Kind::UndefinedTable,
            F,
            format!("no table has OID {}", child.to_u32()),
            "Pass the child table by name: integrity.attach_child_flag('appointments', …).",
        );
    }
    crate::names::check_kind(
        F,
        "child",
        child,
        crate::names::Needs::Table,
        "Pass the child table whose rows point at the parent; its triggers go on the table itself (not on a view over it, an index or a sequence).",
    );
    let args = [
        crate::errors::required(parent_table, F, "parent_table"),
        crate::errors::required(parent_key, F, "parent_key"),
        crate::errors::required(child_fk, F, "child_fk"),
        crate::errors::required(flag_col, F, "flag_col"),
        crate::errors::required(count_col, F, "count_col"),
        crate::errors::required(deleted_col, F, "deleted_col"),
    ];
    if args[..4].iter().any(|a| a.is_empty()) {
        raise(
            Kind::InvalidParameter,
            F,
            "parent_table, parent_key, child_fk and flag_col must not be empty",
            "Name the parent table, its key, the child's column pointing at it and the parent's boolean flag.",
        );
    }
    // Check the arguments now, as the triggers would on their first
    // firing, so a mistake fails here and nothing is attached.
    let site = Attaching {
        child,
        args: args.iter().map(|a| a.to_string()).collect(),
    };
    child_args(
        &site,
        "SELECT integrity.attach_child_flag('appointments', 'calls', 'id', 'call_id', 'appointment_made', 'appointment_count')",
    );
    let table = qualified(child);
    let list = args
        .iter()
        .map(|a| literal(a))
        .collect::<Vec<_>>()
        .join(", ");
    let base = format!("integrity_{}", args[3]);
    let events = [
        ("insert", "INSERT", "REFERENCING NEW TABLE AS integrity_new"),
        (
            "update",
            "UPDATE",
            "REFERENCING OLD TABLE AS integrity_old NEW TABLE AS integrity_new",
        ),
        ("delete", "DELETE", "REFERENCING OLD TABLE AS integrity_old"),
        // No trigger sees the rows a TRUNCATE removes: recount after it.
        ("truncate", "TRUNCATE", ""),
    ];
    let mut names = Vec::new();
    for (suffix, event, referencing) in events {
        let mut name = format!("{base}_on_{suffix}");
        let max = pg_sys::NAMEDATALEN as usize - 1;
        if name.len() > max {
            // Cut, and told apart by a hash of the whole name.
            let tail = format!(
                "_{:08x}_on_{suffix}",
                crate::keys::lock_key_of([name.as_bytes()]) as u64 as u32
            );
            let mut stem = base.clone();
            while stem.len() > max - tail.len() {
                stem.pop();
            }
            name = format!("{stem}{tail}");
        }
        let taken = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2)",
            &[child.into(), name.as_str().into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        if taken {
            raise(
                Kind::DuplicateObject,
                F,
                format!("table {table} already has a trigger named {}", quote(&name)),
                "attach_child_flag names its triggers integrity_{flag_col}_on_{event}: drop the old ones (or rename them) first, e.g. when the same flag column name serves another parent.",
            );
        }
        Spi::run(&format!(
            "CREATE TRIGGER {} AFTER {event} ON {table} {referencing}
             FOR EACH STATEMENT EXECUTE FUNCTION integrity.tg_child_flag({list})",
            quote(&name)
        ))
        .unwrap_or_else(|e| crate::errors::bug(format!("{F}: {e}")));
        names.push(name);
    }
    names
}

/// tg_child_flag's arguments, resolved and checked.
struct ChildArgs {
    parent: Oid,
    key: Col,
    fk: Col,
    flag: Col,
    count: Option<Col>,
    deleted: Option<Col>,
    /// `AND c.<deleted_col> IS NULL` (or `IS NOT TRUE`), or empty.
    live: String,
}

fn child_args(f: &impl Site, example: &str) -> ChildArgs {
    let args = f.args();
    if !(4..=6).contains(&args.len()) {
        f.mistake(
            Kind::InvalidParameter,
            format!(
                "takes 4 to 6 arguments (parent_table, parent_key, child_fk, flag_col [, count_col [, deleted_col]]), got {}",
                args.len()
            ),
            example,
        );
    }
    let parent = parent_table(f, &args[0], example);
    let key = column_any(f, parent, &args[1], 2, example);
    let fk = column_any(f, f.relid(), &args[2], 3, example);
    let flag = column(f, parent, &args[3], 4, example);
    if flag.typid != pg_sys::BOOLOID {
        f.mistake(
            Kind::InvalidParameter,
            format!(
                "argument 4: column {:?} of {} must be boolean",
                flag.name,
                qualified(parent)
            ),
            example,
        );
    }
    let count = args
        .get(4)
        .filter(|c| !c.is_empty())
        .map(|c| column(f, parent, c, 5, example));
    let deleted = args
        .get(5)
        .filter(|c| !c.is_empty())
        .map(|c| column_any(f, f.relid(), c, 6, example));
    // Each role its own column, among the parent's columns and among the
    // child's: a count kept in the parent key rewrote the parent's key
    // with its number of children, and a soft-delete column that is the
    // child's key to its parent counted no child.
    let mut parent_cols = vec![(&key, 2), (&flag, 4)];
    parent_cols.extend(count.as_ref().map(|c| (c, 5)));
    one_role_each(f, &parent_cols, example);
    let mut child_cols = vec![(&fk, 3)];
    child_cols.extend(deleted.as_ref().map(|d| (d, 6)));
    one_role_each(f, &child_cols, example);
    if let Some(c) = &count {
        if c.typid != pg_sys::INT4OID && c.typid != pg_sys::INT8OID {
            f.mistake(
                Kind::InvalidParameter,
                format!("argument 5: the count column {:?} of {} must be integer or bigint (a smallint overflows at 32,768 children)", c.name, qualified(parent)),
                example,
            );
        }
    }
    let live = match &deleted {
        None => String::new(),
        Some(d) if d.typid == pg_sys::BOOLOID => format!(" AND c.{} IS NOT TRUE", quote(&d.name)),
        Some(d) => format!(" AND c.{} IS NULL", quote(&d.name)),
    };
    ChildArgs {
        parent,
        key,
        fk,
        flag,
        count,
        deleted,
        live,
    }
}

/// Resolve and check tg_child_flag's arguments and prepare its statements.
fn child_config(f: &Fired<'_>, example: &str) -> ChildConfig {
    let ChildArgs {
        parent,
        key,
        fk,
        flag,
        count,
        deleted,
        live,
    } = child_args(f, example);
    depends_on(f, parent);
    depends_on(f, f.counted());
    let eq = "OPERATOR(pg_catalog.=)";
    let (parent_sql, child_sql) = (qualified(parent), qualified(f.counted()));
    let lock = format!(
        "SELECT 1 FROM {parent_sql} p WHERE p.{} {eq} $1 FOR NO KEY UPDATE",
        quote(&key.name)
    );
    let (q_flag, q_key, q_fk) = (quote(&flag.name), quote(&key.name), quote(&fk.name));
    let q_count = count.as_ref().map(|c| quote(&c.name));
    let recompute = |changed_only: bool| match &q_count {
        Some(q_count) => {
            let changed = only_changed(changed_only, &q_flag, Some(q_count), "t.n");
            format!(
                "UPDATE {parent_sql} p SET {q_flag} = t.n OPERATOR(pg_catalog.>) 0, {q_count} = t.n
                 FROM (SELECT pg_catalog.count(*) AS n FROM {child_sql} c WHERE c.{q_fk} {eq} $1{live}) t
                 WHERE p.{q_key} {eq} $1{changed}"
            )
        }
        None => {
            let changed = only_changed(changed_only, &q_flag, None, "t.e");
            format!(
                "UPDATE {parent_sql} p SET {q_flag} = t.e
                 FROM (SELECT EXISTS (SELECT 1 FROM {child_sql} c WHERE c.{q_fk} {eq} $1{live}) AS e) t
                 WHERE p.{q_key} {eq} $1{changed}"
            )
        }
    };
    // The same, given the count (or whether there is any child) as $2.
    let set = |changed_only: bool| match &q_count {
        Some(q_count) => format!(
            "UPDATE {parent_sql} p SET {q_flag} = $2 OPERATOR(pg_catalog.>) 0, {q_count} = $2
             WHERE p.{q_key} {eq} $1{}",
            only_changed(changed_only, &q_flag, Some(q_count), "$2")
        ),
        None => format!(
            "UPDATE {parent_sql} p SET {q_flag} = $2 WHERE p.{q_key} {eq} $1{}",
            only_changed(changed_only, &q_flag, None, "$2")
        ),
    };
    let prepare = |sql: &str, types: &[pgrx::PgOid]| -> OwnedPreparedStatement {
        with_pinned_settings(|| {
            Spi::connect_mut(|client| {
                let prepared = crate::errors::in_subtransaction(|| client.prepare_mut(sql, types));
                match prepared {
                    Ok(Ok(p)) => p.keep(),
                    Ok(Err(e)) => crate::errors::bug(format!("tg_child_flag prepare: {e}")),
                    Err(crate::errors::Caught { message, .. }) => f.mistake(
                        Kind::InvalidParameter,
                        format!(
                            "parent key {:?} of {} and child column {:?} cannot be compared: {message}",
                            key.name,
                            qualified(parent),
                            fk.name
                        ),
                        example,
                    ),
                }
            })
        })
    };
    let by_key = [pgrx::PgOid::from(fk.typid)];
    let lock = match key_index(f, parent, &key, &fk) {
        Some(index) => Lock::Index { parent, index },
        None => Lock::Sql(prepare(&lock, &by_key)),
    };
    let index = fk_index(f, &fk);
    let (changed, always) = match &index {
        Some(_) => {
            let n = if count.is_some() {
                pg_sys::INT8OID
            } else {
                pg_sys::BOOLOID
            };
            let types = [pgrx::PgOid::from(fk.typid), pgrx::PgOid::from(n)];
            (prepare(&set(true), &types), prepare(&set(false), &types))
        }
        None => (
            prepare(&recompute(true), &by_key),
            prepare(&recompute(false), &by_key),
        ),
    };
    let recount = Recount {
        index,
        changed,
        always,
    };
    ChildConfig {
        lock,
        recount,
        counts: count.is_some(),
        fk_eq: eq_of(&fk),
        deleted_eq: deleted.as_ref().and_then(eq_of),
        fk,
        deleted,
    }
}

/// The index tg_child_flag `f` counts children by, if the child table has
/// one (see [`ByIndex`]). None for a partition: its trigger counts over
/// the partitioned table.
fn fk_index(f: &Fired<'_>, fk: &Col) -> Option<ByIndex> {
    if f.counted() != f.relid() {
        return None;
    }
    // SAFETY: the trigger's table is open.
    unsafe { index_on(f.rel(), fk, fk.typid) }
}

/// The index tg_child_flag `f` locks a parent through, if the parent table
/// is plain, without row security, readable and updatable by the child
/// table's owner (as whom the lock is taken), and has one (see
/// [`ByIndex`]). Otherwise the lock is taken in SQL, which applies the
/// policies and raises the missing right.
fn key_index(f: &Fired<'_>, parent: Oid, key: &Col, fk: &Col) -> Option<ByIndex> {
    // SAFETY: the parent is opened and closed here (its lock kept to the
    // end of the transaction); rd_rel of open relations.
    unsafe {
        let owner = (*(*f.rel()).rd_rel).relowner;
        let may = |mode: u32| {
            pg_sys::pg_class_aclcheck(parent, owner, mode as pg_sys::AclMode)
                == pg_sys::AclResult::ACLCHECK_OK
        };
        if !may(pg_sys::ACL_SELECT) || !may(pg_sys::ACL_UPDATE) {
            return None;
        }
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let rel = pg_sys::table_open(parent, lock);
        let found = if (*(*rel).rd_rel).relrowsecurity {
            None
        } else {
            index_on(rel, key, fk.typid)
        };
        pg_sys::table_close(rel, lock);
        found
    }
}

/// A btree index of the plain heap table `rel` that finds exactly the
/// rows `col = $1` finds for a `$1` of type `value_type` (see [`ByIndex`]).
///
/// # Safety
/// `rel` is open.
unsafe fn index_on(rel: pg_sys::Relation, col: &Col, value_type: Oid) -> Option<ByIndex> {
    let kind = (*(*rel).rd_rel).relkind as u8;
    if kind != pg_sys::RELKIND_RELATION || (*(*rel).rd_rel).relam != pg_sys::HEAP_TABLE_AM_OID {
        return None;
    }
    let default = pg_sys::GetDefaultOpClass(col.typid, pg_sys::BTREE_AM_OID);
    if default == Oid::INVALID {
        return None;
    }
    let value_type = pg_sys::getBaseType(value_type);
    let oids = crate::direct::index_oids(rel);
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    oids.into_iter().find_map(|oid| {
        let irel = pg_sys::index_open(oid, lock);
        let ix = &*(*irel).rd_index;
        let family = *(*irel).rd_opfamily;
        let ty = *(*irel).rd_opcintype;
        let fits = (*(*irel).rd_rel).relam == pg_sys::BTREE_AM_OID
            && ix.indisvalid
            && ix.indisready
            && ix.indislive
            && ix.indkey.values.as_slice(1)[0] == col.attnum
            && family == pg_sys::get_opclass_family(default)
            && ty == pg_sys::get_opclass_input_type(default)
            && *(*irel).rd_indcollation == col.collation
            && pg_sys::RelationGetIndexPredicate(irel).is_null();
        let found = fits.then(|| {
            let op = pg_sys::get_opfamily_member(
                family,
                ty,
                value_type,
                pg_sys::BTEqualStrategyNumber as i16,
            );
            ByIndex {
                oid,
                eq_proc: if op == Oid::INVALID {
                    Oid::INVALID
                } else {
                    pg_sys::get_opcode(op)
                },
                subtype: if value_type == ty {
                    Oid::INVALID
                } else {
                    value_type
                },
                collation: col.collation,
            }
        });
        pg_sys::index_close(irel, lock);
        found.filter(|i| i.eq_proc != Oid::INVALID)
    })
}

/// Scan `rel` through `ix` for the rows whose first index key equals
/// `value`, visible to the active snapshot; `each` is given every one.
///
/// # Safety
/// `rel` is open and locked, `ix` is one of its indexes, an active
/// snapshot is set.
unsafe fn scan_equal(
    rel: pg_sys::Relation,
    ix: &ByIndex,
    value: pg_sys::Datum,
    each: impl FnMut(*mut pg_sys::TupleTableSlot) -> bool,
) {
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    let irel = pg_sys::index_open(ix.oid, lock);
    let mut key = std::mem::zeroed::<pg_sys::ScanKeyData>();
    pg_sys::ScanKeyEntryInitialize(
        &mut key,
        0,
        1,
        pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
        ix.subtype,
        ix.collation,
        ix.eq_proc,
        value,
    );
    crate::direct::index_scan(
        rel,
        irel,
        std::slice::from_mut(&mut key),
        pg_sys::GetActiveSnapshot(),
        each,
    );
    pg_sys::index_close(irel, pg_sys::NoLock as pg_sys::LOCKMODE);
}

/// Run `f` with a snapshot taken now pushed, as SPI runs a statement: after
/// a command counter increment, so it sees this transaction's rows so far
/// (the statement whose rows fired the trigger, the recounts before).
fn with_new_snapshot<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: pushed and popped around `f`; an ERROR in `f` unwinds the
    // active snapshot stack at abort.
    unsafe {
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::CommandCounterIncrement();
        pg_sys::UpdateActiveSnapshotCommandId();
    }
    let r = f();
    // SAFETY: the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    r
}

/// Lock the parent rows whose key equals `value` (the child's fk value)
/// FOR NO KEY UPDATE, as `SELECT … FOR NO KEY UPDATE` would: waiting for a
/// transaction that holds one; under READ COMMITTED locking the newest
/// version of a row updated meanwhile (a row deleted meanwhile is gone,
/// nothing to lock); under REPEATABLE READ failing with 40001 there.
fn lock_parent(parent: Oid, ix: &ByIndex, value: pg_sys::Datum) {
    with_new_snapshot(|| {
        // SAFETY: the parent is opened with the lock FOR UPDATE takes and
        // closed keeping it; the tuple lock goes through the table AM under
        // pgrx's guard, so an ERROR while waiting (deadlock, lock_timeout,
        // cancel) unwinds as any other.
        unsafe {
            let rel = pg_sys::table_open(parent, pg_sys::RowShareLock as pg_sys::LOCKMODE);
            let mut tids = smallvec::SmallVec::<[pg_sys::ItemPointerData; 2]>::new();
            scan_equal(rel, ix, value, |slot| {
                tids.push((*slot).tts_tid);
                true
            });
            let repeatable = crate::direct::xact_snapshot();
            let mut flags = pg_sys::TUPLE_LOCK_FLAG_LOCK_UPDATE_IN_PROGRESS;
            if !repeatable {
                flags |= pg_sys::TUPLE_LOCK_FLAG_FIND_LAST_VERSION;
            }
            let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
            let cid = pg_sys::GetCurrentCommandId(true);
            let Some(tuple_lock) = (*(*rel).rd_tableam).tuple_lock else {
                crate::errors::bug("table access method without tuple_lock")
            };
            for mut tid in tids {
                let mut tmfd = std::mem::zeroed::<pg_sys::TM_FailureData>();
                let result = pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
                    tuple_lock(
                        rel,
                        &mut tid,
                        pg_sys::GetActiveSnapshot(),
                        slot,
                        cid,
                        pg_sys::LockTupleMode::LockTupleNoKeyExclusive,
                        pg_sys::LockWaitPolicy::LockWaitBlock,
                        flags as u8,
                        &mut tmfd,
                    )
                });
                match result {
                    // Changed by this very command: skipped, as LockRows does.
                    pg_sys::TM_Result::TM_Ok | pg_sys::TM_Result::TM_SelfModified => {}
                    pg_sys::TM_Result::TM_Deleted if !repeatable => {}
                    pg_sys::TM_Result::TM_Updated | pg_sys::TM_Result::TM_Deleted if repeatable => {
                        raise(
                            Kind::SerializationFailure,
                            TG_CHILD_FLAG,
                            format!(
                                "could not serialize access due to concurrent {}",
                                if result == pg_sys::TM_Result::TM_Updated {
                                    "update"
                                } else {
                                    "delete"
                                }
                            ),
                            "Retry the transaction.",
                        )
                    }
                    other => crate::errors::bug(format!(
                        "tg_child_flag: unexpected tuple lock result {other}"
                    )),
                }
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    })
}

/// How many of the child table's rows with fk = `parent` are live (with
/// no count column, 1 if any is), read through `ix` as the SQL recount
/// would read them: with a snapshot taken after the parent's lock.
fn count_children(f: &Fired<'_>, cfg: &ChildConfig, ix: &ByIndex, parent: pg_sys::Datum) -> i64 {
    let mut n = 0i64;
    with_new_snapshot(|| {
        // SAFETY: the trigger's table is open and locked; ix is its index.
        unsafe {
            scan_equal(f.rel(), ix, parent, |slot| {
                let live = cfg.deleted.as_ref().is_none_or(|d| {
                    let mut null = false;
                    let v = pg_sys::slot_getattr(slot, d.attnum as i32, &mut null);
                    // `IS NULL`, or `IS NOT TRUE` for a boolean.
                    null || (d.typid == pg_sys::BOOLOID
                        && !bool::from_datum(v, false).unwrap_or(false))
                });
                if live {
                    n += 1;
                }
                // With no count, the first live child answers.
                !(live && !cfg.counts)
            })
        }
    });
    n
}

/// The parent table named by argument 1; unqualified, it is in the child
/// table's schema.
fn parent_table(f: &impl Site, name: &str, example: &str) -> Oid {
    let c = CString::new(name).unwrap_or_default();
    // A malformed name ('a..b', 'x.y.z.w', '"open') is this argument's
    // mistake, said with its SQLSTATE (42602 / 42601) and our example,
    // not Postgres's bare parse error. The parse allocates in the
    // caller's memory context, so the RangeVar outlives the
    // subtransaction.
    let parsed = crate::errors::in_subtransaction(|| {
        // SAFETY: parses the name; errors are caught around it.
        unsafe {
            let names = pg_sys::stringToQualifiedNameList(c.as_ptr());
            pg_sys::makeRangeVarFromNameList(names)
        }
    });
    let rv = match parsed {
        Ok(rv) => rv,
        Err(e) => f.mistake(
            if e.code == PgSqlErrorCode::ERRCODE_SYNTAX_ERROR {
                Kind::SyntaxError
            } else {
                Kind::InvalidName
            },
            format!("argument 1 is not a table name: {name:?} ({})", e.message),
            example,
        ),
    };
    // SAFETY: looks the parsed name up without locking (the statements
    // lock it when they run).
    let oid = unsafe {
        if (*rv).schemaname.is_null() {
            (*rv).schemaname = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(f.counted()));
        }
        pg_sys::RangeVarGetRelidExtended(
            rv,
            pg_sys::NoLock as pg_sys::LOCKMODE,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        )
    };
    if oid == Oid::INVALID {
        f.mistake(
            Kind::UndefinedTable,
            format!(
                "argument 1 names table {name:?}, which does not exist (an unqualified name is looked up in the schema of {})",
                qualified(f.counted())
            ),
            example,
        );
    }
    oid
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testutil::{error_message, one, sqlstate, text};
    use pgrx::prelude::*;

    /// A trigger function called as a plain function is a caller's
    /// mistake (39P01, as contrib's trigger functions say), not an
    /// internal error; and still works as the trigger it is.
    #[pg_test]
    fn a_trigger_function_called_directly_is_refused_by_name() {
        for f in [
            "tg_default",
            "tg_link_status",
            "tg_implies",
            "tg_child_flag",
        ] {
            let sql = format!("SELECT integrity.{f}()");
            assert_eq!(sqlstate(&sql), "39P01", "{sql}");
            let msg = error_message(&sql);
            assert!(
                msg.contains(&format!("integrity.{f}")) && msg.contains("called directly"),
                "{msg}"
            );
        }
        Spi::run(
            "CREATE TABLE tgd (id int, x text);
             CREATE TRIGGER d BEFORE INSERT ON tgd FOR EACH ROW
               EXECUTE FUNCTION integrity.tg_default('x', 'set');
             INSERT INTO tgd (id) VALUES (1);",
        )
        .unwrap();
        assert_eq!(text("SELECT x FROM tgd WHERE id = 1"), "set");
    }

    /// Our BEFORE ROW triggers that fire one after another are enforced
    /// as a group (NEW formed once); the result must be what the triggers
    /// give one by one, whatever fires between them.
    #[pg_test]
    fn a_group_of_rules_acts_as_its_triggers_one_by_one() {
        Spi::run(
            "CREATE TABLE tgg (id int PRIMARY KEY, x text, y text, z text, w text, seen text);
             -- Fired in name order: a, b (not ours), c, d (WHEN), e.
             CREATE TRIGGER a BEFORE INSERT OR UPDATE ON tgg FOR EACH ROW
               EXECUTE FUNCTION integrity.tg_default('x', '1');
             CREATE FUNCTION tgg_seen() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN NEW.seen := concat_ws('/', NEW.x, NEW.y, NEW.z, NEW.w); RETURN NEW; END $$;
             CREATE TRIGGER b BEFORE INSERT ON tgg FOR EACH ROW EXECUTE FUNCTION tgg_seen();
             CREATE TRIGGER c BEFORE INSERT OR UPDATE ON tgg FOR EACH ROW
               EXECUTE FUNCTION integrity.tg_link_status('x', 'y', 'linked', 'unlinked');
             CREATE TRIGGER d BEFORE INSERT OR UPDATE ON tgg FOR EACH ROW WHEN (NEW.z IS NOT NULL)
               EXECUTE FUNCTION integrity.tg_default('w', 'from d');
             CREATE TRIGGER e BEFORE INSERT OR UPDATE ON tgg FOR EACH ROW
               EXECUTE FUNCTION integrity.tg_implies('y', 'linked', 'z', 'from e');
             INSERT INTO tgg (id) VALUES (1);",
        )
        .unwrap();
        // b saw only a's work; d's condition was false when d fired (e set
        // z after it).
        assert_eq!(
            text("SELECT concat_ws(',', x, y, z, coalesce(w, '-'), seen) FROM tgg"),
            "1,linked,from e,-,1"
        );
        // UPDATE: b does not fire, so c, d and e are consecutive; d's WHEN
        // still keeps it out of any group (z is set now: d fires).
        Spi::run("UPDATE tgg SET x = NULL, y = 'linked', z = NULL, w = NULL").unwrap();
        assert_eq!(
            text("SELECT concat_ws(',', x, y, coalesce(z, '-'), coalesce(w, '-')) FROM tgg"),
            "1,linked,from e,-"
        );
        // d fires on the given z, which e then corrects.
        Spi::run("UPDATE tgg SET z = 'given', w = NULL").unwrap();
        assert_eq!(
            text("SELECT concat_ws(',', x, y, z, w) FROM tgg"),
            "1,linked,from e,from d"
        );
        // A disabled trigger is not enforced by the group around it; one
        // enabled again is.
        Spi::run(
            "ALTER TABLE tgg DISABLE TRIGGER c;
             UPDATE tgg SET x = NULL, y = 'hand', z = NULL",
        )
        .unwrap();
        assert_eq!(
            text("SELECT concat_ws(',', x, y, coalesce(z, '-')) FROM tgg"),
            "1,hand,-"
        );
        Spi::run(
            "ALTER TABLE tgg ENABLE TRIGGER c;
             UPDATE tgg SET y = 'hand', z = NULL",
        )
        .unwrap();
        assert_eq!(
            text("SELECT concat_ws(',', x, y, z) FROM tgg"),
            "1,linked,from e"
        );
        // As a replica, only triggers enabled ALWAYS or REPLICA fire.
        Spi::run(
            "ALTER TABLE tgg ENABLE ALWAYS TRIGGER e;
             SET LOCAL session_replication_role = replica;
             INSERT INTO tgg (id, y) VALUES (2, 'linked');
             SET LOCAL session_replication_role = origin;",
        )
        .unwrap();
        assert_eq!(
            text("SELECT concat_ws(',', coalesce(x, '-'), y, z, coalesce(seen, '-')) FROM tgg WHERE id = 2"),
            "-,linked,from e,-"
        );
        // Each correction is logged under its own trigger.
        Spi::run("UPDATE tgg SET y = 'wrong', z = 'wrong' WHERE id = 1").unwrap();
        assert_eq!(
            text(
                "SELECT string_agg(format('%s %s %s>%s', details->>'trigger', details->>'column',
                                          details->>'before', details->>'after'), '; ' ORDER BY id)
                 FROM integrity.alerts WHERE details->>'table' = 'public.tgg'"
            ),
            "e z given>from e; c y hand>linked; c y wrong>linked; e z wrong>from e"
        );
    }

    #[pg_test]
    fn tg_default_fills_nulls_of_any_type_and_name() {
        Spi::run(
            r#"CREATE TYPE tgd_mood AS ENUM ('calm', 'busy');
               CREATE TABLE tgd ("Row Id" int PRIMARY KEY, label text, mood tgd_mood, ok boolean,
                                 n numeric(6,2), at timestamptz, day date, untouched text);
               CREATE TRIGGER tgd_defaults BEFORE INSERT OR UPDATE ON tgd FOR EACH ROW
                 EXECUTE FUNCTION integrity.tg_default('label', 'none', 'mood', 'calm', 'ok', 'yes',
                   'n', '12.5', 'at', '2026-01-02 03:04:05+00', 'day', '2026-02-03');
               INSERT INTO tgd ("Row Id", untouched) VALUES (1, 'x');
               INSERT INTO tgd VALUES (2, 'mine', 'busy', false, 1, '2020-01-01', '2020-01-01', NULL);"#,
        )
        .unwrap();
        assert_eq!(
            text(
                r#"SELECT format('%s|%s|%s|%s|%s|%s|%s', label, mood, ok, n, at AT TIME ZONE 'UTC', day, untouched) FROM tgd WHERE "Row Id" = 1"#
            ),
            "none|calm|t|12.50|2026-01-02 03:04:05|2026-02-03|x"
        );
        assert_eq!(
            text(
                r#"SELECT format('%s|%s|%s|%s|%s', label, mood, ok, n, untouched) FROM tgd WHERE "Row Id" = 2"#
            ),
            "mine|busy|f|1.00|NULL".replace("NULL", "")
        );
        // Attached for UPDATE too: a NULL written later is filled again.
        Spi::run(r#"UPDATE tgd SET label = NULL, untouched = 'y' WHERE "Row Id" = 2"#).unwrap();
        assert_eq!(
            text(r#"SELECT label || untouched FROM tgd WHERE "Row Id" = 2"#),
            "noney"
        );
        // Filling a NULL is not a correction: nothing logged.
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM integrity.alerts WHERE details->>'table' = 'public.tgd'"
            ),
            Some(0)
        );
    }

    #[pg_test]
    fn tg_link_status_follows_the_fk_and_logs_corrections() {
        Spi::run(
            "CREATE TABLE tgl (id bigint PRIMARY KEY, cust int, link text);
             CREATE TRIGGER tgl_link BEFORE INSERT OR UPDATE ON tgl FOR EACH ROW
               EXECUTE FUNCTION integrity.tg_link_status('cust', 'link', 'linked', 'unlinked');
             INSERT INTO tgl VALUES (1, 7, NULL), (2, NULL, NULL), (3, 7, 'unlinked');",
        )
        .unwrap();
        assert_eq!(
            text("SELECT string_agg(link, ',' ORDER BY id) FROM tgl"),
            "linked,unlinked,linked"
        );
        Spi::run("UPDATE tgl SET cust = NULL WHERE id = 1").unwrap();
        assert_eq!(text("SELECT link FROM tgl WHERE id = 1"), "unlinked");
        // Row 3 ('unlinked' with a customer) and row 1 (still 'linked' without
        // one) were corrections; row 2's NULL was only filled.
        assert_eq!(
            text(
                "SELECT string_agg(format('%s %s %s>%s', subject, details->>'column', details->>'before', details->>'after'), '; ' ORDER BY id)
                 FROM integrity.alerts WHERE details->>'table' = 'public.tgl' AND auto_corrected AND check_name = 'tg_link_status'"
            ),
            "public.tgl(id)=(3) link unlinked>linked; public.tgl(id)=(1) link linked>unlinked"
        );
        Spi::run(
            "SET LOCAL integrity.log_corrections = off; UPDATE tgl SET link = 'x' WHERE id = 2",
        )
        .unwrap();
        assert_eq!(text("SELECT link FROM tgl WHERE id = 2"), "unlinked");
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM integrity.alerts WHERE details->>'table' = 'public.tgl'"
            ),
            Some(2)
        );
    }

    #[pg_test]
    fn tg_implies_corrects_or_rejects() {
        Spi::run(
            "CREATE TABLE tgi (id int PRIMARY KEY, outcome text, made boolean, other int);
             CREATE TRIGGER tgi_made BEFORE INSERT OR UPDATE ON tgi FOR EACH ROW
               EXECUTE FUNCTION integrity.tg_implies('outcome', 'appointment_booked', 'made', 'true');
             INSERT INTO tgi VALUES (1, 'appointment_booked', false, 5), (2, 'no_answer', false, 6),
                                    (3, NULL, NULL, 7), (4, 'appointment_booked', NULL, 8);",
        )
        .unwrap();
        assert_eq!(
            text(
                "SELECT string_agg(format('%s:%s:%s', id, made, other), ',' ORDER BY id) FROM tgi"
            ),
            "1:t:5,2:f:6,3:NULL:7,4:t:8".replace("NULL", "")
        );
        assert_eq!(
            one::<i64>(
                "SELECT count(*) FROM integrity.alerts WHERE details->>'table' = 'public.tgi'"
            ),
            Some(1),
            "only row 1's false was overwritten"
        );
        Spi::run(
            "CREATE TABLE tgr (id int PRIMARY KEY, outcome text, made boolean);
             CREATE TRIGGER tgr_made BEFORE INSERT OR UPDATE ON tgr FOR EACH ROW
               EXECUTE FUNCTION integrity.tg_implies('outcome', 'appointment_booked', 'made', 'true', 'reject');
             INSERT INTO tgr VALUES (1, 'appointment_booked', true), (2, 'other', false);",
        )
        .unwrap();
        assert_eq!(
            sqlstate("INSERT INTO tgr VALUES (3, 'appointment_booked', false)"),
            "23514"
        );
        assert_eq!(
            sqlstate("UPDATE tgr SET outcome = 'appointment_booked' WHERE id = 2"),
            "23514"
        );
        assert_eq!(one::<i64>("SELECT count(*) FROM tgr"), Some(2));
    }

    /// A parent's flag and count through inserts, a move, soft deletes
    /// (timestamp and boolean), a delete and unrelated updates, in schema
    /// `sch`, after `indexes` (SQL run once the child tables exist).
    fn child_flag_follows_children(sch: &str, indexes: &str) {
        Spi::run(&format!(
            "CREATE SCHEMA {sch};
             CREATE TABLE {sch}.parents (id bigint PRIMARY KEY, has boolean NOT NULL DEFAULT false, n int NOT NULL DEFAULT 0, other text);
             CREATE TABLE {sch}.kids (id serial PRIMARY KEY, parent_id int, gone_at timestamptz);
             CREATE TABLE {sch}.pets (id serial PRIMARY KEY, owner int, archived boolean NOT NULL DEFAULT false);
             {indexes}
             CREATE TRIGGER kids_flag AFTER INSERT OR UPDATE OR DELETE ON {sch}.kids FOR EACH ROW
               EXECUTE FUNCTION integrity.tg_child_flag('parents', 'id', 'parent_id', 'has', 'n', 'gone_at');
             INSERT INTO {sch}.parents (id, other) VALUES (1, 'a'), (2, 'b'), (3, 'c');
             INSERT INTO {sch}.kids (parent_id) VALUES (1), (1), (2), (NULL);"
        ))
        .unwrap();
        let state = || {
            text(&format!(
                "SELECT string_agg(format('%s:%s:%s', id, has, n), ',' ORDER BY id) FROM {sch}.parents"
            ))
        };
        assert_eq!(state(), "1:t:2,2:t:1,3:f:0");
        // A move, a soft delete, a delete, an unrelated update.
        Spi::run(&format!(
            "UPDATE {sch}.kids SET parent_id = 3 WHERE parent_id = 2"
        ))
        .unwrap();
        assert_eq!(state(), "1:t:2,2:f:0,3:t:1");
        Spi::run(&format!(
            "UPDATE {sch}.kids SET gone_at = now() WHERE id = 1"
        ))
        .unwrap();
        assert_eq!(state(), "1:t:1,2:f:0,3:t:1");
        Spi::run(&format!("DELETE FROM {sch}.kids WHERE id = 2")).unwrap();
        assert_eq!(state(), "1:f:0,2:f:0,3:t:1");
        Spi::run(&format!(
            "UPDATE {sch}.kids SET gone_at = NULL WHERE id = 1"
        ))
        .unwrap();
        assert_eq!(state(), "1:t:1,2:f:0,3:t:1");
        // Many children of one parent in one statement, some soft-deleted.
        Spi::run(&format!(
            "INSERT INTO {sch}.kids (parent_id, gone_at)
             SELECT 3, CASE WHEN g % 3 = 0 THEN now() END FROM generate_series(1, 30) g"
        ))
        .unwrap();
        assert_eq!(state(), "1:t:1,2:f:0,3:t:21");
        Spi::run(&format!("DELETE FROM {sch}.kids WHERE parent_id = 3")).unwrap();
        assert_eq!(state(), "1:t:1,2:f:0,3:f:0");
        // The same-named table in public was never touched, nor other columns.
        assert_eq!(
            text("SELECT coalesce(has::text, 'NULL') FROM public.parents"),
            "NULL"
        );
        assert_eq!(
            text(&format!(
                "SELECT string_agg(other, '' ORDER BY id) FROM {sch}.parents"
            )),
            "abc"
        );
        // Flag only, boolean soft delete, qualified parent.
        Spi::run(&format!(
            "CREATE TRIGGER pets_flag AFTER INSERT OR UPDATE OR DELETE ON {sch}.pets FOR EACH ROW
               EXECUTE FUNCTION integrity.tg_child_flag('{sch}.parents', 'id', 'owner', 'has', '', 'archived');
             UPDATE {sch}.parents SET has = false, n = 0;
             INSERT INTO {sch}.pets (owner) VALUES (2);"
        ))
        .unwrap();
        assert_eq!(state(), "1:f:0,2:t:0,3:f:0");
        Spi::run(&format!(
            "INSERT INTO {sch}.pets (owner, archived) VALUES (2, true), (2, false)"
        ))
        .unwrap();
        Spi::run(&format!(
            "UPDATE {sch}.pets SET archived = true WHERE id = 1"
        ))
        .unwrap();
        assert_eq!(state(), "1:f:0,2:t:0,3:f:0", "one live pet is left");
        Spi::run(&format!("UPDATE {sch}.pets SET archived = true")).unwrap();
        assert_eq!(state(), "1:f:0,2:f:0,3:f:0");
    }

    #[pg_test]
    fn tg_child_flag_follows_children_moves_and_soft_deletes() {
        Spi::run("CREATE TABLE public.parents (id int PRIMARY KEY, has boolean); INSERT INTO public.parents VALUES (1, NULL)")
            .unwrap();
        // No index on the fk columns: the recount counts in SQL.
        child_flag_follows_children("tgc", "");
        // Indexes that count: through them.
        child_flag_follows_children(
            "tgc_i",
            "CREATE INDEX ON tgc_i.kids (parent_id, gone_at); CREATE INDEX ON tgc_i.pets (owner);",
        );
        // Indexes that must not count (partial, a key in another order, an
        // expression), and a parent with row security on (bypassed by the
        // superuser here) locked in SQL: the same results.
        child_flag_follows_children(
            "tgc_p",
            "ALTER TABLE tgc_p.parents ENABLE ROW LEVEL SECURITY;
             CREATE INDEX ON tgc_p.kids (parent_id) WHERE gone_at IS NULL;
             CREATE INDEX ON tgc_p.kids (gone_at, parent_id);
             CREATE INDEX ON tgc_p.pets ((owner + 0));",
        );
    }

    #[pg_test]
    fn tg_child_flag_counts_through_an_index_only_when_it_finds_what_sql_finds() {
        // A text fk under a case-insensitive collation: an index with the
        // column's collation counts both spellings, as `=` does; one in
        // another collation must not be used. In "C" order 'B' sorts
        // between 'A' and 'a', so a scan of it for 'a' stops at 'B'.
        Spi::run(
            "CREATE COLLATION tgx_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
             CREATE SCHEMA tgx;
             CREATE TABLE tgx.parents (code text COLLATE tgx_ci PRIMARY KEY, n int NOT NULL DEFAULT 0, has boolean);
             CREATE TABLE tgx.kids (id serial PRIMARY KEY, code text COLLATE tgx_ci);
             CREATE TABLE tgx.kids_c (id serial PRIMARY KEY, code text COLLATE tgx_ci);
             CREATE INDEX ON tgx.kids (code);
             CREATE INDEX ON tgx.kids_c (code COLLATE \"C\");
             CREATE TRIGGER f AFTER INSERT OR UPDATE OR DELETE ON tgx.kids FOR EACH ROW
               EXECUTE FUNCTION integrity.tg_child_flag('parents', 'code', 'code', 'has', 'n');
             INSERT INTO tgx.parents (code) VALUES ('a'), ('b');
             INSERT INTO tgx.kids (code) VALUES ('A'), ('B'), ('a');",
        )
        .unwrap();
        let state = || {
            text("SELECT string_agg(format('%s:%s:%s', code, has, n), ',' ORDER BY code) FROM tgx.parents")
        };
        assert_eq!(state(), "a:t:2,b:t:1");
        Spi::run(
            "CREATE TRIGGER f AFTER INSERT OR UPDATE OR DELETE ON tgx.kids_c FOR EACH ROW
               EXECUTE FUNCTION integrity.tg_child_flag('parents', 'code', 'code', 'has', 'n');
             UPDATE tgx.parents SET has = NULL, n = 0;
             INSERT INTO tgx.kids_c (code) VALUES ('A'), ('B'), ('a');",
        )
        .unwrap();
        assert_eq!(state(), "a:t:2,b:t:1");
        Spi::run("DELETE FROM tgx.kids_c WHERE code = 'A' COLLATE \"C\"").unwrap();
        assert_eq!(state(), "a:t:1,b:t:1");
    }

    #[pg_test]
    fn attach_child_flag_recounts_each_parent_once_per_statement() {
        Spi::run(
            "CREATE TABLE tgs_p (id bigint PRIMARY KEY, has boolean, n int);
             CREATE TABLE tgs_k (id serial PRIMARY KEY, p_id bigint, gone boolean NOT NULL DEFAULT false);
             CREATE INDEX ON tgs_k (p_id);
             INSERT INTO tgs_p SELECT g, false, 0 FROM generate_series(1, 50) g;",
        )
        .unwrap();
        assert_eq!(
            text("SELECT array_to_string(integrity.attach_child_flag('tgs_k', 'tgs_p', 'id', 'p_id', 'has', 'n', 'gone'), ',')"),
            "integrity_has_on_insert,integrity_has_on_update,integrity_has_on_delete,integrity_has_on_truncate"
        );
        // A child that is not a table is named for what it is (42809),
        // not left to CREATE TRIGGER ("Triggers on views cannot have
        // transition tables").
        Spi::run("CREATE VIEW tgs_kv AS SELECT * FROM tgs_k").unwrap();
        for (child, what) in [("tgs_kv", "a view"), ("tgs_k_pkey", "an index")] {
            let call = format!(
                "SELECT integrity.attach_child_flag('{child}', 'tgs_p', 'id', 'p_id', 'has')"
            );
            assert_eq!(sqlstate(&call), "42809", "{child}");
            let m = crate::testutil::error_message(&call);
            assert!(
                m.contains(&format!("child: public.{child} is {what}, not a table")),
                "{m}"
            );
        }
        // Attached again (say for another parent whose flag is also "has"):
        // a clear 42710, not an internal error.
        assert_eq!(
            sqlstate("SELECT integrity.attach_child_flag('tgs_k', 'tgs_p', 'id', 'p_id', 'has')"),
            "42710"
        );
        let wrong = || {
            one::<i64>(
                "SELECT count(*) FROM tgs_p p
                 WHERE p.n IS DISTINCT FROM (SELECT count(*) FROM tgs_k k WHERE k.p_id = p.id AND NOT k.gone)
                    OR p.has IS DISTINCT FROM (p.n > 0)",
            )
        };
        Spi::run("INSERT INTO tgs_k (p_id) SELECT 1 + g % 40 FROM generate_series(1, 4000) g")
            .unwrap();
        assert_eq!(wrong(), Some(0));
        assert_eq!(one::<i64>("SELECT count(*) FROM tgs_p WHERE has"), Some(40));
        Spi::run(
            "UPDATE tgs_k SET p_id = 45 WHERE p_id = 1;
             UPDATE tgs_k SET gone = true WHERE p_id = 2;
             DELETE FROM tgs_k WHERE p_id = 3;
             UPDATE tgs_k SET p_id = NULL WHERE p_id = 4;",
        )
        .unwrap();
        assert_eq!(wrong(), Some(0));
        assert_eq!(text("SELECT string_agg(format('%s:%s:%s', id, has, n), ',' ORDER BY id) FROM tgs_p WHERE id IN (1, 2, 3, 4, 45)"),
                   "1:f:0,2:f:0,3:f:0,4:f:0,45:t:100");
        // TRUNCATE: every parent recounted (attach_child_flag attached it).
        Spi::run("TRUNCATE tgs_k").unwrap();
        assert_eq!(
            one::<i64>("SELECT count(*) FROM tgs_p WHERE has OR n <> 0"),
            Some(0)
        );
        Spi::run("INSERT INTO tgs_k (p_id) SELECT 1 + g % 40 FROM generate_series(1, 400) g")
            .unwrap();
        assert_eq!(wrong(), Some(0));
        // Statement-level without transition tables, or with NULL arguments.
        Spi::run(
            "CREATE TRIGGER tgs_bad AFTER INSERT ON tgs_k FOR EACH STATEMENT
               EXECUTE FUNCTION integrity.tg_child_flag('tgs_p', 'id', 'p_id', 'has')",
        )
        .unwrap();
        assert_eq!(sqlstate("INSERT INTO tgs_k (p_id) VALUES (5)"), "39P01");
        assert_eq!(
            sqlstate("SELECT integrity.attach_child_flag('tgs_k', NULL, 'id', 'p_id', 'has')"),
            "22004"
        );
        assert_eq!(
            sqlstate("SELECT integrity.attach_child_flag('tgs_k', '', 'id', 'p_id', 'has')"),
            "22023"
        );
        assert_eq!(
            sqlstate(
                "SELECT integrity.attach_child_flag('no_such_table', 'tgs_p', 'id', 'p_id', 'has')"
            ),
            "42P01"
        );
        assert_eq!(
            sqlstate("SELECT integrity.attach_child_flag_by_oid(NULL, 'tgs_p', 'id', 'p_id', 'has', '', '')"),
            "22004"
        );
        assert_eq!(
            sqlstate("SELECT integrity.attach_child_flag_by_oid(4294967290, 'tgs_p', 'id', 'p_id', 'has', '', '')"),
            "42P01"
        );
        // Arguments are checked when attaching: nothing is attached.
        for (call, want) in [
            ("'tgs_k', 'tgs_p', 'id', 'nope', 'has'", "42703"),
            ("'tgs_k', 'tgs_p', 'id', 'p_id', 'n'", "22023"),
            ("'tgs_k', 'tgs_nope', 'id', 'p_id', 'has'", "42P01"),
        ] {
            assert_eq!(
                sqlstate(&format!("SELECT integrity.attach_child_flag({call})")),
                want,
                "{call}"
            );
        }
        assert_eq!(
            one::<i64>("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'tgs_k'::regclass AND NOT tgisinternal"),
            Some(5),
            "the four from the first attach and tgs_bad"
        );
    }

    #[pg_test]
    fn trigger_mistakes_name_the_trigger_and_get_a_clear_sqlstate() {
        Spi::run(
            "CREATE TABLE tgm (id int PRIMARY KEY, n int, b boolean, t text, s smallint, ts timestamptz, d date);
             CREATE TABLE tgm_kids (id int, m_id text);",
        )
        .unwrap();
        let cases = [
            (
                "AFTER INSERT ON tgm FOR EACH ROW",
                "tg_default('n', '1')",
                "39P01",
            ),
            (
                "BEFORE INSERT ON tgm FOR EACH STATEMENT",
                "tg_default('n', '1')",
                "39P01",
            ),
            (
                "BEFORE DELETE ON tgm FOR EACH ROW",
                "tg_link_status('n', 't', 'a', 'b')",
                "39P01",
            ),
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_child_flag('tgm', 'id', 'n', 'b')",
                "39P01",
            ),
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_default('nope', '1')",
                "42703",
            ),
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_default('n', 'abc')",
                "22P02",
            ),
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_default('n', '99999999999')",
                "22003",
            ),
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_default('n')",
                "22023",
            ),
            ("BEFORE INSERT ON tgm FOR EACH ROW", "tg_default()", "22023"),
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_link_status('n', 't', 'a')",
                "22023",
            ),
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_link_status('n', 'b', 'maybe', 'no')",
                "22P02",
            ),
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_implies('n', '1', 'b', 'true', 'sometimes')",
                "22023",
            ),
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_implies('n', '1', 'zz', 'true')",
                "42703",
            ),
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_implies('n', 'one', 'b', 'true')",
                "22P02",
            ),
            (
                "AFTER INSERT ON tgm_kids FOR EACH ROW",
                "tg_child_flag('nosuch', 'id', 'm_id', 'b')",
                "42P01",
            ),
            // Names that do not parse, said as this argument's mistake.
            (
                "AFTER INSERT ON tgm_kids FOR EACH ROW",
                "tg_child_flag('a..b', 'id', 'm_id', 'b')",
                "42602",
            ),
            (
                "AFTER INSERT ON tgm_kids FOR EACH ROW",
                "tg_child_flag('\"open', 'id', 'm_id', 'b')",
                "42602",
            ),
            (
                "AFTER INSERT ON tgm_kids FOR EACH ROW",
                "tg_child_flag('w.x.y.z', 'id', 'm_id', 'b')",
                "42601",
            ),
            (
                "AFTER INSERT ON tgm_kids FOR EACH ROW",
                "tg_child_flag('tgm', 'id', 'm_id', 't')",
                "22023",
            ),
            (
                "AFTER INSERT ON tgm_kids FOR EACH ROW",
                "tg_child_flag('tgm', 'id', 'm_id', 'b')",
                "22023",
            ),
            (
                "AFTER INSERT ON tgm_kids FOR EACH ROW",
                "tg_child_flag('tgm', 'nope', 'id', 'b')",
                "42703",
            ),
            (
                "AFTER INSERT ON tgm_kids FOR EACH ROW",
                "tg_child_flag('tgm', 'id', 'id')",
                "22023",
            ),
            // Each role its own column: the count in the parent key rewrote
            // the key with the number of children.
            (
                "AFTER INSERT ON tgm_kids FOR EACH ROW",
                "tg_child_flag('tgm', 'id', 'id', 'b', 'id')",
                "22023",
            ),
            // One column in two parts of a rule: the status overwrote
            // the fk it is derived from; the implied value the condition.
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_link_status('t', 't', 'a', 'b')",
                "22023",
            ),
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_implies('t', 'a', 't', 'b')",
                "22023",
            ),
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_default('t', 'a', 'n', '1', 't', 'b')",
                "22023",
            ),
            // 'now' read once per session would stamp every row alike.
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_default('ts', 'now')",
                "22023",
            ),
            (
                "BEFORE INSERT ON tgm FOR EACH ROW",
                "tg_default('d', ' Today ')",
                "22023",
            ),
            // A smallint count overflows at 32,768 children.
            (
                "AFTER INSERT ON tgm_kids FOR EACH ROW",
                "tg_child_flag('tgm', 'id', 'id', 'b', 's')",
                "22023",
            ),
            // The child's key to its parent as its soft-delete column: no
            // child would ever count.
            (
                "AFTER INSERT ON tgm_kids FOR EACH ROW",
                "tg_child_flag('tgm', 'id', 'id', 'b', '', 'id')",
                "22023",
            ),
        ];
        for (i, (when, call, want)) in cases.iter().enumerate() {
            let table = if when.contains("tgm_kids") {
                "tgm_kids"
            } else {
                "tgm"
            };
            Spi::run(&format!(
                "CREATE TRIGGER m{i} {when} EXECUTE FUNCTION integrity.{call}"
            ))
            .unwrap();
            let dml = if table == "tgm" {
                if when.contains("DELETE") {
                    "INSERT INTO tgm VALUES (1000, 1, true, 'x'); DELETE FROM tgm WHERE id = 1000"
                        .to_string()
                } else {
                    format!("INSERT INTO tgm VALUES ({i}, 1, NULL, NULL)")
                }
            } else {
                format!("INSERT INTO tgm_kids VALUES ({i}, '1')")
            };
            assert_eq!(sqlstate(&dml), *want, "{when} {call}");
            Spi::run(&format!("DROP TRIGGER m{i} ON {table}")).unwrap();
        }
        // A NULL argument is the string 'null' (CREATE TRIGGER's rule).
        Spi::run(
            "CREATE TRIGGER n1 BEFORE INSERT ON tgm FOR EACH ROW EXECUTE FUNCTION integrity.tg_default('t', NULL)",
        )
        .unwrap();
        Spi::run("INSERT INTO tgm (id) VALUES (500)").unwrap();
        assert_eq!(text("SELECT t FROM tgm WHERE id = 500"), "null");
    }

    #[pg_test]
    fn a_changed_table_is_validated_again() {
        Spi::run(
            "CREATE TABLE tgv (id int PRIMARY KEY, n int, s text);
             CREATE TRIGGER tgv_d BEFORE INSERT ON tgv FOR EACH ROW EXECUTE FUNCTION integrity.tg_default('s', 'first');
             INSERT INTO tgv (id) VALUES (1);
             ALTER TABLE tgv DROP COLUMN s;
             ALTER TABLE tgv ADD COLUMN x int, ADD COLUMN s text;
             INSERT INTO tgv (id) VALUES (2);",
        )
        .unwrap();
        assert_eq!(
            text("SELECT format('%s %s', s, x) FROM tgv WHERE id = 2"),
            "first "
        );
        Spi::run("ALTER TABLE tgv ALTER COLUMN s TYPE int USING NULL").unwrap();
        assert_eq!(sqlstate("INSERT INTO tgv (id) VALUES (3)"), "22P02");
    }

    #[pg_test]
    fn tg_child_flag_on_a_partitioned_child_counts_every_partition() {
        // Partitions in a schema of their own: the parent is still looked
        // up beside the partitioned table the trigger was created on.
        Spi::run(
            "CREATE SCHEMA tcp_parts;
             CREATE TABLE tcp_calls (id bigint PRIMARY KEY, made boolean NOT NULL DEFAULT false,
                                     n int NOT NULL DEFAULT 0);
             CREATE TABLE tcp_appts (id int, call_id bigint, day date) PARTITION BY RANGE (day);
             CREATE TABLE tcp_parts.tcp_appts_2025 PARTITION OF tcp_appts
                 FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
             CREATE TABLE tcp_parts.tcp_appts_2026 PARTITION OF tcp_appts
                 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
             CREATE TRIGGER f AFTER INSERT OR UPDATE OR DELETE ON tcp_appts FOR EACH ROW
                 EXECUTE FUNCTION integrity.tg_child_flag('tcp_calls', 'id', 'call_id', 'made', 'n');
             INSERT INTO tcp_calls VALUES (1);
             INSERT INTO tcp_appts VALUES (1, 1, '2025-06-01'), (2, 1, '2026-06-01');",
        )
        .unwrap();
        let state = || one::<String>("SELECT made || ',' || n FROM tcp_calls WHERE id = 1");
        assert_eq!(state().as_deref(), Some("true,2"));
        Spi::run("DELETE FROM tcp_appts WHERE id = 2").unwrap();
        assert_eq!(state().as_deref(), Some("true,1"), "the 2025 child remains");
        // Moved to the other partition: still one child.
        Spi::run("UPDATE tcp_appts SET day = '2026-02-01' WHERE id = 1").unwrap();
        assert_eq!(state().as_deref(), Some("true,1"));
        Spi::run("DELETE FROM tcp_appts WHERE id = 1").unwrap();
        assert_eq!(state().as_deref(), Some("false,0"));
    }

    #[pg_test]
    fn a_generated_column_is_refused_as_an_argument() {
        Spi::run(
            "CREATE TABLE tgg (id int PRIMARY KEY, a int, g int GENERATED ALWAYS AS (a * 2) STORED);
             CREATE TRIGGER d BEFORE INSERT ON tgg FOR EACH ROW
                 EXECUTE FUNCTION integrity.tg_default('g', '1')",
        )
        .unwrap();
        let insert = "INSERT INTO tgg (id, a) VALUES (1, 1)";
        assert_eq!(sqlstate(insert), "22023");
        assert!(
            crate::testutil::error_message(insert).contains("generated"),
            "{}",
            crate::testutil::error_message(insert)
        );
    }

    #[pg_test]
    fn a_correction_of_a_row_with_a_composite_key_names_it_in_key_order() {
        Spi::run(
            "CREATE TABLE tgk (org_id text, id int, cust int, status text, PRIMARY KEY (org_id, id));
             CREATE TRIGGER l BEFORE INSERT ON tgk FOR EACH ROW
                 EXECUTE FUNCTION integrity.tg_link_status('cust', 'status', 'linked', 'unlinked');
             INSERT INTO tgk VALUES ('acme', 42, 7, 'unlinked');",
        )
        .unwrap();
        assert_eq!(
            text("SELECT subject FROM integrity.alerts WHERE check_name = 'tg_link_status' AND subject LIKE '%tgk%'"),
            "public.tgk(org_id, id)=(acme, 42)"
        );
        // Logged under the session's tenant (whose row security then shows
        // it to that tenant's sessions); none set: no tenant.
        Spi::run("SET LOCAL integrity.org_id = '0000000a-0000-0000-0000-000000000000'").unwrap();
        Spi::run("INSERT INTO tgk VALUES ('acme', 43, NULL, 'linked')").unwrap();
        assert_eq!(
            text("SELECT string_agg(subject || ':' || coalesce(org_id::text, '-'), ',' ORDER BY id)
                    FROM integrity.alerts WHERE subject LIKE '%tgk%'"),
            "public.tgk(org_id, id)=(acme, 42):-,public.tgk(org_id, id)=(acme, 43):0000000a-0000-0000-0000-000000000000"
        );
    }

    #[pg_test]
    fn tg_child_flag_counts_every_child_whatever_the_writer_may_see() {
        // Row security shows each agent only their own appointments, and
        // agents may not update calls: the recount runs as the table's
        // owner, as Postgres runs its foreign-key checks.
        Spi::run(
            "CREATE TABLE tgo_calls (id bigint PRIMARY KEY, made boolean NOT NULL DEFAULT false,
                                     n int NOT NULL DEFAULT 0);
             CREATE TABLE tgo_appts (id serial PRIMARY KEY, call_id bigint,
                                     agent text NOT NULL DEFAULT current_user);
             ALTER TABLE tgo_appts ENABLE ROW LEVEL SECURITY;
             CREATE POLICY mine ON tgo_appts USING (agent = current_user);
             CREATE TRIGGER f AFTER INSERT OR UPDATE OR DELETE ON tgo_appts FOR EACH ROW
                 EXECUTE FUNCTION integrity.tg_child_flag('tgo_calls', 'id', 'call_id', 'made', 'n');
             CREATE ROLE tgo_alice; CREATE ROLE tgo_bob;
             GRANT SELECT, INSERT, DELETE ON tgo_appts TO tgo_alice, tgo_bob;
             GRANT USAGE ON SEQUENCE tgo_appts_id_seq TO tgo_alice, tgo_bob;
             INSERT INTO tgo_calls VALUES (1);",
        )
        .unwrap();
        let state = || one::<String>("SELECT made || ',' || n FROM tgo_calls WHERE id = 1");
        Spi::run(
            "SET LOCAL ROLE tgo_bob; INSERT INTO tgo_appts (call_id) VALUES (1), (1); RESET ROLE",
        )
        .unwrap();
        assert_eq!(state().as_deref(), Some("true,2"));
        Spi::run(
            "SET LOCAL ROLE tgo_alice; INSERT INTO tgo_appts (call_id) VALUES (1); RESET ROLE",
        )
        .unwrap();
        assert_eq!(state().as_deref(), Some("true,3"), "alice sees only hers");
        Spi::run("SET LOCAL ROLE tgo_alice; DELETE FROM tgo_appts; RESET ROLE").unwrap();
        assert_eq!(state().as_deref(), Some("true,2"), "bob's remain");
    }

    #[pg_test]
    fn tg_child_flag_after_truncate_clears_every_parent() {
        Spi::run(
            "CREATE TABLE tgt_calls (id bigint PRIMARY KEY, made boolean, n int);
             CREATE TABLE tgt_appts (id serial PRIMARY KEY, call_id bigint);
             CREATE TRIGGER f AFTER INSERT OR UPDATE OR DELETE ON tgt_appts FOR EACH ROW
                 EXECUTE FUNCTION integrity.tg_child_flag('tgt_calls', 'id', 'call_id', 'made', 'n');
             CREATE TRIGGER t AFTER TRUNCATE ON tgt_appts FOR EACH STATEMENT
                 EXECUTE FUNCTION integrity.tg_child_flag('tgt_calls', 'id', 'call_id', 'made', 'n');
             INSERT INTO tgt_calls SELECT g, NULL, NULL FROM generate_series(1, 3) g;
             INSERT INTO tgt_appts (call_id) VALUES (1), (1), (2);",
        )
        .unwrap();
        let state = || {
            text("SELECT string_agg(format('%s:%s:%s', id, made, n), ',' ORDER BY id) FROM tgt_calls")
        };
        assert_eq!(state(), "1:t:2,2:t:1,3::");
        Spi::run("TRUNCATE tgt_appts").unwrap();
        // Every parent not already known false/0 is recounted (3 had NULLs).
        assert_eq!(state(), "1:f:0,2:f:0,3:f:0");
        // BEFORE TRUNCATE is the wrong timing.
        Spi::run(
            "CREATE TRIGGER b BEFORE TRUNCATE ON tgt_appts FOR EACH STATEMENT
                 EXECUTE FUNCTION integrity.tg_child_flag('tgt_calls', 'id', 'call_id', 'made', 'n')",
        )
        .unwrap();
        assert_eq!(sqlstate("TRUNCATE tgt_appts"), "39P01");
    }

    #[pg_test]
    fn a_change_to_the_parent_table_is_validated_again() {
        Spi::run(
            "CREATE TABLE tgr_calls (id bigint PRIMARY KEY, made boolean);
             CREATE TABLE tgr_appts (id serial PRIMARY KEY, call_id bigint);
             CREATE TRIGGER f AFTER INSERT OR UPDATE OR DELETE ON tgr_appts FOR EACH ROW
                 EXECUTE FUNCTION integrity.tg_child_flag('tgr_calls', 'id', 'call_id', 'made');
             INSERT INTO tgr_calls VALUES (1);
             INSERT INTO tgr_appts (call_id) VALUES (1);
             ALTER TABLE tgr_calls RENAME COLUMN made TO has;",
        )
        .unwrap();
        // The trigger's kept statements named the old column: it is
        // checked again, and the mistake named as any other.
        let insert = "INSERT INTO tgr_appts (call_id) VALUES (1)";
        assert_eq!(sqlstate(insert), "42703");
        let message = crate::testutil::error_message(insert);
        assert!(message.contains("argument 4"), "{message}");
    }
}

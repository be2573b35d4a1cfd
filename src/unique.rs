//! Soft-delete-aware uniqueness: `unique_active(tbl, col, deleted_col)`
//! keeps a column unique among the rows not soft-deleted, case-insensitively
//! for text, with a partial unique index on `lower(col)`.
//!
//! Duplicates already among the live rows are reported, and nothing is
//! built while they exist. Otherwise the index is built `CONCURRENTLY`, so
//! writers are not blocked for the length of the build. Postgres refuses
//! `CREATE INDEX CONCURRENTLY` inside a function (it must be a top-level
//! statement of its own transaction), so `unique_active` records the build
//! and starts a background worker that runs the statement at top level once
//! the calling transaction has committed; a build that fails (a duplicate
//! arrived during it) has its invalid index dropped and the error recorded in
//! `integrity.index_builds`. Where `CONCURRENTLY` is not possible
//! (temporary and partitioned tables) or not wanted (`concurrently =>
//! false`), the index is built in the calling transaction, under a SHARE
//! lock taken before the duplicates are looked for.

use crate::errors::{caught, raise, required, text_arg, Caught, Kind};
use crate::jsonb::{Builder, Jsonb};
use crate::names::{column, qualified, quote, relation};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder};
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

pgrx::extension_sql_file!(
    "../sql/unique.sql",
    name = "unique_tables",
    requires = ["bootstrap"]
);
pgrx::extension_sql_file!(
    "../sql/unique_api.sql",
    name = "unique_api",
    requires = ["unique_tables", unique_active]
);

const F: &str = "integrity.unique_active";

/// Most duplicated values listed in the report (all are counted).
const LISTED: i64 = 100;

/// The index unique_active wants, worked out from the catalogs.
struct Wanted {
    relid: Oid,
    table: String,
    namespace: Oid,
    index: String,
    /// `CREATE UNIQUE INDEX [CONCURRENTLY] name ON table (key) WHERE live`,
    /// without the CONCURRENTLY.
    key: String,
    live: String,
    col: String,
    /// The column's number, and the soft-delete column's (0: none): what
    /// the worker is told to build, by number, not read from a table.
    col_attnum: i16,
    deleted_attnum: i16,
    /// The key as `pg_get_indexdef` prints it (the forms an index
    /// unique_active built can have), and the predicate as `pg_get_expr`
    /// prints it ("" for none).
    key_printed: Vec<String>,
    live_printed: String,
    relkind: u8,
    temporary: bool,
}

impl Wanted {
    /// `schema.index`, quoted.
    fn qualified_index(&self) -> String {
        // SAFETY: the namespace of an existing relation.
        let schema = unsafe { pg_sys::get_namespace_name(self.namespace) };
        if schema.is_null() {
            crate::errors::bug("unique_active: the table's schema is gone");
        }
        // SAFETY: get_namespace_name returned a palloc'd C string.
        let schema = unsafe { CStr::from_ptr(schema) }.to_string_lossy();
        format!("{}.{}", quote(&schema), quote(&self.index))
    }

    fn create(&self, concurrently: bool) -> String {
        format!(
            "CREATE UNIQUE INDEX {}{} ON {} ({}){}",
            if concurrently { "CONCURRENTLY " } else { "" },
            quote(&self.index),
            self.table,
            self.key,
            if self.live.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", self.live)
            }
        )
    }
}

/// `{table}_{col}_active_key`. Longer than Postgres's 63-byte names, it is
/// cut and told apart by a hash of the table's and the column's names, so
/// two long columns of one table do not get the same name:
/// `{table}_{col}` cut, `_`, 8 hex digits, `_active_key`.
fn index_name(table: &str, col: &str) -> String {
    const SUFFIX: &str = "_active_key";
    let max = pg_sys::NAMEDATALEN as usize - 1;
    let name = format!("{table}_{col}{SUFFIX}");
    if name.len() <= max {
        return name;
    }
    let hash = crate::keys::lock_key_of([table.as_bytes(), col.as_bytes()]) as u64 as u32;
    let mut stem = format!("{table}_{col}");
    while stem.len() > max - SUFFIX.len() - 9 {
        stem.pop();
    }
    format!("{stem}_{hash:08x}{SUFFIX}")
}

fn wanted(relid: Oid, col: &str, deleted_col: Option<&str>) -> Wanted {
    relation(F, "tbl", relid);
    // SAFETY: catalog lookups of an existing relation and its type.
    let (relkind, temporary, namespace, relname) = unsafe {
        (
            pg_sys::get_rel_relkind(relid) as u8,
            pg_sys::get_rel_persistence(relid) as u8 == pg_sys::RELPERSISTENCE_TEMP,
            pg_sys::get_rel_namespace(relid),
            CStr::from_ptr(pg_sys::get_rel_name(relid))
                .to_string_lossy()
                .into_owned(),
        )
    };
    let table = qualified(relid);
    crate::names::check_kind(
        F,
        "tbl",
        relid,
        crate::names::Needs::Table,
        if relkind == pg_sys::RELKIND_VIEW || relkind == pg_sys::RELKIND_MATVIEW {
            "Pass the table the view or materialized view reads from."
        } else {
            "Pass the table whose rows must be unique (not an index, sequence or type)."
        },
    );
    // SAFETY: an ownership check by OIDs.
    if !unsafe { pg_sys::pg_class_ownercheck(relid, pg_sys::GetUserId()) } {
        raise(
            Kind::InsufficientPrivilege,
            F,
            format!("must be owner of table {table} to index it"),
            "Call integrity.unique_active as the table's owner (or a member of its owning role).",
        );
    }
    let c = column(F, "col", relid, col);
    let is_string = crate::names::type_category(c.typid) == pg_sys::TYPCATEGORY_STRING;
    // SAFETY: a catalog lookup by OIDs. The index is a B-tree on the
    // column (lower() of it, text, for a string): a type without a B-tree
    // operator class cannot be in it, which the build would only say later
    // (in index_builds, for a queued one) in Postgres's own words.
    if !is_string
        && unsafe { pg_sys::GetDefaultOpClass(c.typid, pg_sys::BTREE_AM_OID) }
            == pg_sys::Oid::INVALID
    {
        let ty = crate::names::type_name(c.typid);
        raise(
            Kind::DatatypeMismatch,
            F,
            format!("column {} of {table} is of type {ty}, which a B-tree index cannot hold, so its values cannot be kept unique", c.name),
            "Pass a column whose type can be sorted (text, numbers, uuid, dates, …), or keep such values unique with a column derived from them.",
        );
    }
    let q = quote(&c.name);
    let (key, key_printed) = if is_string {
        (
            format!("pg_catalog.lower({q})"),
            vec![format!("lower({q})"), format!("lower(({q})::text)")],
        )
    } else {
        (q.clone(), vec![q])
    };
    let (live, deleted_attnum) = match deleted_col {
        None => (String::new(), 0),
        Some(d) => {
            let d = column(F, "deleted_col", relid, d);
            let test = if d.typid == pg_sys::BOOLOID {
                "IS NOT TRUE"
            } else {
                "IS NULL"
            };
            (format!("{} {test}", quote(&d.name)), d.attnum)
        }
    };
    let live_printed = if live.is_empty() {
        String::new()
    } else {
        format!("({live})")
    };
    Wanted {
        relid,
        table,
        namespace,
        index: index_name(&relname, col),
        key,
        live,
        col: col.to_string(),
        col_attnum: c.attnum,
        deleted_attnum,
        key_printed,
        live_printed,
        relkind,
        temporary,
    }
}

/// A relation already named as ours.
struct Existing {
    /// A unique index of our table that keeps the column unique among the
    /// live rows as unique_active would: one key, the same key expression
    /// and the same predicate (not just the same name).
    ours: bool,
    /// A unique index of our table by that name, whatever it indexes.
    unique_index: bool,
    valid: bool,
    definition: String,
}

fn existing(client: &pgrx::spi::SpiClient<'_>, w: &Wanted) -> Option<Existing> {
    let t = client
        .select(
            "SELECT c.oid, COALESCE(i.indrelid = $1 AND i.indisunique, false),
                    COALESCE(i.indisvalid, false), pg_catalog.pg_get_indexdef(c.oid),
                    i.indnkeyatts, i.indkey[0], pg_catalog.pg_get_indexdef(c.oid, 1, false),
                    COALESCE(pg_catalog.pg_get_expr(i.indpred, i.indrelid), '')
               FROM pg_catalog.pg_class c
               LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
              WHERE c.relname = $2 AND c.relnamespace = $3",
            None,
            &[w.relid.into(), w.index.as_str().into(), w.namespace.into()],
        )
        .unwrap_or_else(|e| crate::errors::bug(format!("unique_active index lookup: {e}")));
    let r = t.first();
    r.get::<Oid>(1).ok().flatten()?;
    let unique_index = r.get::<bool>(2).ok().flatten().unwrap_or(false);
    let keys = r.get::<i16>(5).ok().flatten();
    let first = r.get::<i16>(6).ok().flatten();
    let key = r.get::<String>(7).ok().flatten().unwrap_or_default();
    let pred = r.get::<String>(8).ok().flatten().unwrap_or_default();
    // A plain column is key column attnum; lower(col) an expression (0).
    let key_attnum = if w.key.starts_with("pg_catalog.lower(") {
        0
    } else {
        w.col_attnum
    };
    Some(Existing {
        ours: unique_index
            && keys == Some(1)
            && first == Some(key_attnum)
            && w.key_printed.contains(&key)
            && pred == w.live_printed,
        unique_index,
        valid: r.get::<bool>(3).ok().flatten().unwrap_or(false),
        definition: r.get::<String>(4).ok().flatten().unwrap_or_default(),
    })
}

/// A build of `index` on `relid` still queued or running: its id and
/// status. A build is alive while its lock (`build_lock`) is held or
/// awaited: by the asking transaction, and by its worker from before
/// `unique_active` returns to the end of the build. One whose lock nobody
/// holds or awaits (its worker is gone: a crash, a restart, a termination)
/// is marked failed first. Liveness is read from the lock table, which
/// every role may read, not from the row, which the table's owners may
/// write.
fn pending_build(
    client: &mut pgrx::spi::SpiClient<'_>,
    relid: Oid,
    index: &str,
) -> Option<(i64, String)> {
    client
        .update(
            "UPDATE integrity.index_builds b
                SET status = 'failed', error = 'the worker ended without finishing the build',
                    finished_at = pg_catalog.now()
              WHERE table_oid = $1 AND index_name = $2 AND status IN ('queued', 'building')
                AND NOT EXISTS (
                    SELECT 1 FROM pg_catalog.pg_locks l,
                           LATERAL (SELECT integrity.lock_key('unique_active', b.id::text) AS k) k
                     WHERE l.locktype = 'advisory' AND l.objsubid = 1
                       AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                          WHERE d.datname = pg_catalog.current_database())
                       AND l.classid = ((k.k >> 32) & 4294967295)::pg_catalog.oid
                       AND l.objid = (k.k & 4294967295)::pg_catalog.oid)",
            None,
            &[relid.into(), index.into()],
        )
        .unwrap_or_else(|e| crate::errors::bug(format!("unique_active stale builds: {e}")));
    client
        .select(
            "SELECT id, status FROM integrity.index_builds
              WHERE table_oid = $1 AND index_name = $2 AND status IN ('queued', 'building')
              ORDER BY id DESC LIMIT 1",
            None,
            &[relid.into(), index.into()],
        )
        .ok()
        .and_then(|t| {
            let r = t.first();
            r.get::<i64>(1)
                .ok()
                .flatten()
                .zip(r.get::<String>(2).ok().flatten())
        })
}

/// The report of the live values held by more than one row, or None:
/// `{"ok":false,"reason":"duplicates","groups":n,"duplicates":[{"value","rows"}]}`
/// listing the most repeated (all are counted).
fn duplicates(client: &pgrx::spi::SpiClient<'_>, w: &Wanted) -> Option<Jsonb> {
    let live = if w.live.is_empty() {
        String::new()
    } else {
        format!(" AND {}", w.live)
    };
    let sql = format!(
        "WITH d AS (SELECT {key} AS k, pg_catalog.count(*) AS n FROM {table}
                     WHERE {key} IS NOT NULL{live} GROUP BY 1 HAVING pg_catalog.count(*) > 1)
         SELECT pg_catalog.jsonb_build_object(
                    'ok', false, 'reason', 'duplicates', 'index', $1::text,
                    'groups', (SELECT pg_catalog.count(*) FROM d),
                    'duplicates', pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('value', x.k::pg_catalog.text, 'rows', x.n)
                                                      ORDER BY x.n DESC, x.k::pg_catalog.text))
           FROM (SELECT k, n FROM d ORDER BY n DESC, k::pg_catalog.text LIMIT {LISTED}) x
         HAVING pg_catalog.count(*) > 0",
        key = w.key,
        table = w.table,
    );
    client
        .select(&sql, None, &[w.index.as_str().into()])
        .unwrap_or_else(|e| crate::errors::bug(format!("unique_active duplicates: {e}")))
        .first()
        .get::<Jsonb>(1)
        .ok()
        .flatten()
        .map(Jsonb::kept)
}

fn answer(status: &str, w: &Wanted, concurrently: bool, build_id: Option<i64>) -> Jsonb {
    let mut b = Builder::new();
    b.begin_object()
        .key("ok")
        .bool(true)
        .key("status")
        .string(status)
        .key("index")
        .string(&w.index)
        .key("concurrently")
        .bool(concurrently);
    if let Some(id) = build_id {
        b.key("build_id").int(id);
    }
    b.end().finish()
}

/// The lock a build's worker waits on until the asking transaction ends.
fn build_lock(id: i64) -> i64 {
    crate::keys::lock_key_of([&b"unique_active"[..], id.to_string().as_bytes()])
}

/// Keep `col` unique among the live rows of `tbl` (see the module's doc).
/// `tbl` is taken by OID: the SQL `unique_active` takes a regclass.
#[pg_extern(volatile, parallel_unsafe, name = "unique_active_by_oid")]
#[search_path(pg_catalog, pg_temp)]
fn unique_active(
    tbl: Option<pg_sys::Oid>,
    col: Option<&str>,
    deleted_col: default!(Option<&str>, "'deleted_at'"),
    concurrently: default!(Option<bool>, "true"),
) -> Jsonb {
    let relid = required(tbl, F, "tbl");
    let col = text_arg(F, "col", col, 63);
    let w = wanted(relid, col, deleted_col);
    // CONCURRENTLY is not possible for temporary or partitioned tables.
    let concurrently = required(concurrently, F, "concurrently")
        && !w.temporary
        && w.relkind != pg_sys::RELKIND_PARTITIONED_TABLE;
    // Callers for one index are decided one after the other: the second
    // sees the first's build (or index) instead of starting another.
    crate::keys::advisory_lock(
        crate::keys::lock_key_of([
            &b"unique_active"[..],
            &w.relid.to_u32().to_le_bytes()[..],
            w.index.as_bytes(),
        ]),
        false,
    );
    Spi::connect_mut(|client| {
        if !concurrently {
            // Writers wait from here, so the rows checked are the rows indexed.
            client
                .update(&format!("LOCK TABLE {} IN SHARE MODE", w.table), None, &[])
                .unwrap_or_else(|e| crate::errors::bug(format!("unique_active lock: {e}")));
        }
        if let Some((id, status)) = pending_build(client, w.relid, &w.index) {
            return answer(&status, &w, true, Some(id));
        }
        match existing(client, &w) {
            Some(e) if e.ours && e.valid => {
                let mut b = Builder::new();
                return b
                    .begin_object()
                    .key("ok")
                    .bool(true)
                    .key("status")
                    .string("exists")
                    .key("index")
                    .string(&w.index)
                    .key("definition")
                    .string(&e.definition)
                    .end()
                    .finish();
            }
            Some(e) if e.ours => {
                // The invalid leftover of a build that did not finish.
                // Dropped here when building in this transaction (writers
                // wait for it anyway); else by the worker, CONCURRENTLY,
                // before it builds: a plain DROP INDEX here would lock out
                // readers and writers until this transaction ends.
                if !concurrently {
                    client
                        .update(&format!("DROP INDEX {}", w.qualified_index()), None, &[])
                        .unwrap_or_else(|e| {
                            crate::errors::bug(format!("unique_active drop: {e}"))
                        });
                }
            }
            Some(e) if e.unique_index => raise(
                Kind::DuplicateTable,
                F,
                format!(
                    "index {} of {} already exists and is not the one unique_active builds: {}",
                    quote(&w.index),
                    w.table,
                    e.definition
                ),
                "Drop or rename it; unique_active's index has one key, the column (lower() of it for text) and the soft-delete predicate.",
            ),
            Some(_) => raise(
                Kind::DuplicateTable,
                F,
                format!(
                    "relation {} already exists and is not a unique index of {}",
                    quote(&w.index),
                    w.table
                ),
                "Rename or drop it; unique_active names its index {table}_{col}_active_key.",
            ),
            None => {}
        }
        if let Some(report) = duplicates(client, &w) {
            return report;
        }
        if !concurrently {
            client
                .update(&w.create(false), None, &[])
                .unwrap_or_else(|e| crate::errors::bug(format!("unique_active create: {e}")));
            return answer("created", &w, false, None);
        }
        let id = client
            .update(
                "INSERT INTO integrity.index_builds
                     (table_oid, table_name, column_name, deleted_column, index_name, statement,
                      requested_by)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                None,
                &[
                    w.relid.into(),
                    w.table.as_str().into(),
                    w.col.as_str().into(),
                    deleted_col.into(),
                    w.index.as_str().into(),
                    w.create(true).as_str().into(),
                    // SAFETY: reads the session's current user.
                    unsafe { pg_sys::GetUserId() }.into(),
                ],
            )
            .ok()
            .and_then(|t| t.first().get::<i64>(1).ok().flatten())
            .unwrap_or_else(|| crate::errors::bug("unique_active build id"));
        // Held to the end of this transaction: the worker starts building
        // only once it is over (and builds nothing if it rolled back).
        crate::keys::advisory_lock(build_lock(id), false);
        let pid = start_worker(client, id, &w);
        client
            .update(
                "UPDATE integrity.index_builds SET pid = $2 WHERE id = $1",
                None,
                &[id.into(), pid.into()],
            )
            .unwrap_or_else(|e| crate::errors::bug(format!("unique_active worker pid: {e}")));
        answer("queued", &w, true, Some(id))
    })
}

/// The worker for build `id`, told what to build (by numbers: the table,
/// its columns) and for whom in its `bgw_extra`, not through the build's
/// row. Returns its process id once it waits for this transaction to end
/// (from then on, its waiting for or holding the build's lock is what
/// tells other callers the build is alive).
fn start_worker(client: &pgrx::spi::SpiClient<'_>, id: i64, w: &Wanted) -> i32 {
    // SAFETY: reads of the session's database and user.
    let (db, role) = unsafe { (pg_sys::MyDatabaseId, pg_sys::GetUserId()) };
    let started = BackgroundWorkerBuilder::new("integrity unique_active")
        .set_type("integrity unique_active")
        .set_library("integrity")
        .set_function("integrity_unique_worker")
        .set_argument(Some(pg_sys::Datum::from(id)))
        .set_extra(&format!(
            "{} {} {} {} {}",
            db.to_u32(),
            role.to_u32(),
            w.relid.to_u32(),
            w.col_attnum,
            w.deleted_attnum
        ))
        .enable_spi_access()
        .set_restart_time(None)
        // SAFETY: this backend's pid, for the postmaster to tell us of the start.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic();
    let handle = match started {
        Ok(h) => h,
        Err(_) => raise(
            Kind::ConfigurationLimitExceeded,
            F,
            "no background worker slot is free to build the index concurrently",
            "Raise max_worker_processes, try again later, or pass concurrently => false to build it in this transaction (writers wait meanwhile).",
        ),
    };
    let not_started = |status: String| -> ! {
        raise(
            Kind::ConfigurationLimitExceeded,
            F,
            format!("the background worker to build the index stopped before it began ({status})"),
            "See the server log; try again, or pass concurrently => false to build it in this transaction (writers wait meanwhile).",
        )
    };
    let pid = handle
        .wait_for_startup()
        .unwrap_or_else(|s| not_started(format!("{s:?}")));
    let key = build_lock(id) as u64;
    let (hi, lo) = (Oid::from((key >> 32) as u32), Oid::from(key as u32));
    // Until it waits on the build's lock (a few milliseconds: it connects
    // to the database first), nothing would tell another caller that this
    // build is alive.
    loop {
        let waiting = client
            .select(
                "SELECT 1 FROM pg_catalog.pg_locks
                  WHERE pid = $1 AND locktype = 'advisory' AND classid = $2 AND objid = $3
                    AND objsubid = 1 AND NOT granted",
                Some(1),
                &[pid.into(), hi.into(), lo.into()],
            )
            .map(|t| !t.is_empty())
            .unwrap_or(false);
        if waiting {
            return pid;
        }
        if let Err(s) = handle.pid() {
            not_started(format!("{s:?}"));
        }
        // SAFETY: a short sleep between looks; interrupts are honoured.
        unsafe { pg_sys::pg_usleep(1000) };
        pgrx::check_for_interrupts!();
    }
}

// ---------------------------------------------------------------------------
// The worker

/// Run one utility statement as the top-level statement of its own
/// transaction, as a client's simple query would (what `CREATE INDEX
/// CONCURRENTLY` requires: it commits and starts transactions of its own).
///
/// The parse tree lives in `cxt`, which must outlive the transactions the
/// statement commits (as a client's query lives in MessageContext).
///
/// # Safety
/// Only in a background worker connected to a database, outside any
/// transaction.
unsafe fn top_level(sql: &str, cxt: pg_sys::MemoryContext) {
    let c = CString::new(sql).unwrap_or_default();
    pg_sys::SetCurrentStatementStartTimestamp();
    pg_sys::StartTransactionCommand();
    pg_sys::MemoryContextSwitchTo(cxt);
    pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, c.as_ptr());
    pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    let list = pg_sys::pg_parse_query(c.as_ptr());
    if list.is_null() || (*list).length != 1 {
        crate::errors::bug("unique_active worker: not one statement");
    }
    let raw = (*(*list).elements).ptr_value as *mut pg_sys::RawStmt;
    let stmt =
        pg_sys::palloc0(std::mem::size_of::<pg_sys::PlannedStmt>()) as *mut pg_sys::PlannedStmt;
    (*stmt).type_ = pg_sys::NodeTag::T_PlannedStmt;
    (*stmt).commandType = pg_sys::CmdType::CMD_UTILITY;
    (*stmt).canSetTag = true;
    (*stmt).utilityStmt = (*raw).stmt;
    (*stmt).stmt_location = (*raw).stmt_location;
    (*stmt).stmt_len = (*raw).stmt_len;
    pg_sys::ProcessUtility(
        stmt,
        c.as_ptr(),
        false,
        pg_sys::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        pg_sys::None_Receiver,
        std::ptr::null_mut(),
    );
    // CREATE INDEX CONCURRENTLY pops the snapshot itself; others leave it.
    if pg_sys::ActiveSnapshotSet() {
        pg_sys::PopActiveSnapshot();
    }
    pg_sys::CommitTransactionCommand();
    pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
}

/// `top_level(sql)` as `role`; an error is caught, its transaction aborted
/// (as the main loop of a backend does after an error), and returned.
fn guarded(sql: &str, role: Oid) -> Result<(), Caught> {
    as_role(role, || {
        // SAFETY: top_level runs outside any transaction, in a context of
        // its own that outlives the statement's transactions; an error
        // leaves its transaction aborted, which is cleaned up here.
        unsafe {
            let cxt = pg_sys::AllocSetContextCreateInternal(
                pg_sys::TopMemoryContext,
                c"integrity top-level statement".as_ptr(),
                0,
                8 * 1024,
                8 * 1024 * 1024,
            );
            let r = pgrx::PgTryBuilder::new(|| {
                top_level(sql, cxt);
                Ok(())
            })
            .catch_others(|e| Err(caught(e)))
            .execute();
            if r.is_err() {
                pg_sys::AbortCurrentTransaction();
                pg_sys::InterruptHoldoffCount = 0;
                pg_sys::QueryCancelHoldoffCount = 0;
                pg_sys::CritSectionCount = 0;
            }
            pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
            pg_sys::MemoryContextDelete(cxt);
            r
        }
    })
}

/// `f()` with `role` as the current user (restored after, also on error).
fn as_role<R>(role: Oid, f: impl FnOnce() -> R) -> R {
    crate::plans::as_user(role, |_| pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32, f)
}

/// Whether `relid` has an invalid index named `name`.
fn invalid_index(relid: Oid, name: &str) -> bool {
    BackgroundWorker::transaction(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i
                              JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
                             WHERE i.indrelid = $1 AND c.relname = $2 AND NOT i.indisvalid)",
            &[relid.into(), name.into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false)
    })
}

extern "C-unwind" {
    /// Postgres's SIGTERM handler for backends (`die` in postgres.c), by
    /// its own symbol: pg_sys's `die` is a Rust wrapper, not a handler.
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
}

/// The lock that serialises the builds of one table's indexes: two CREATE
/// INDEX CONCURRENTLY on one table at once deadlock (each, in its last
/// phase, waits for the other's snapshot while the other waits for its
/// table lock), so a worker waits for the table's other build first.
fn table_lock(relid: Oid) -> i64 {
    crate::keys::lock_key_of([
        &b"unique_active table"[..],
        &relid.to_u32().to_le_bytes()[..],
    ])
}

/// The name of column `attnum` of `relid`, or 42703 when it was dropped
/// since the build was asked for.
fn attname(relid: Oid, attnum: i16) -> String {
    // SAFETY: a catalog lookup; NULL (missing_ok) for a dropped column.
    let name = unsafe { pg_sys::get_attname(relid, attnum, true) };
    if name.is_null() {
        raise(
            Kind::UndefinedColumn,
            F,
            format!(
                "column {attnum} of {} was dropped before the build began",
                qualified(relid)
            ),
            "Call integrity.unique_active again with the column as it is now.",
        );
    }
    // SAFETY: get_attname returned a palloc'd C string.
    unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

/// The background worker `unique_active` starts for one build (its id is
/// the argument; the database, the asking role, the table and the column
/// numbers are in `bgw_extra`).
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn integrity_unique_worker(arg: pg_sys::Datum) {
    // SIGTERM (a fast shutdown, pg_terminate_backend) ends the build at its
    // next interrupt check, as it ends a backend's; SIGINT
    // (pg_cancel_backend) cancels it, recorded as failed. The waits of
    // CREATE INDEX CONCURRENTLY check for both.
    // SAFETY: Postgres's own handler, installed before signals are unblocked.
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    let id = arg.value() as i64;
    let extra: Vec<i64> = BackgroundWorker::get_extra()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let [db, role, relid, col_attnum, deleted_attnum] = extra[..] else {
        pgrx::warning!("integrity unique_active worker: malformed bgw_extra");
        return;
    };
    let (role, relid) = (Oid::from(role as u32), Oid::from(relid as u32));
    let (col_attnum, deleted_attnum) = (col_attnum as i16, deleted_attnum as i16);
    // Connected as the bootstrap superuser, to keep the build's record;
    // the statements themselves run as the asking role.
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(Oid::from(db as u32)), None);
    // This worker's own settings, over any the database or role sets: its
    // statements see what committed while it waited (READ COMMITTED), and
    // its waits are not cut short.
    // SAFETY: session settings, outside any transaction.
    unsafe {
        for (name, value) in [
            (c"default_transaction_isolation", c"read committed"),
            (c"lock_timeout", c"0"),
            (c"statement_timeout", c"0"),
        ] {
            pg_sys::SetConfigOption(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_OVERRIDE,
            );
        }
    }
    let (key, table_key) = (build_lock(id), table_lock(relid));
    // Wait, holding no snapshot (a build in its last phase waits for every
    // transaction that holds one): for the asking transaction to end, then
    // for any other build of the table. Both locks are kept to the end.
    // SAFETY: session-level advisory locks (pg_advisory_lock's), taken in
    // a transaction that takes no snapshot.
    unsafe {
        pg_sys::StartTransactionCommand();
        for k in [key, table_key] {
            pg_sys::LockAcquire(
                &crate::keys::advisory_tag(k),
                pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
                true,
                false,
            );
        }
        pg_sys::CommitTransactionCommand();
    }
    // The build is ours now, unless the asking transaction rolled back.
    // What to build is worked out again here, as the asking role, from the
    // table and column numbers it was given: never read from the build's
    // row, which the table's owners can write.
    let plan = BackgroundWorker::transaction(|| {
        Spi::run("SET search_path = pg_catalog, pg_temp").ok();
        Spi::get_one_with_args::<i64>(
            "UPDATE integrity.index_builds
                SET status = 'building', started_at = pg_catalog.now(), pid = pg_catalog.pg_backend_pid()
              WHERE id = $1 AND status = 'queued'
             RETURNING id",
            &[id.into()],
        )
        .ok()
        .flatten()?;
        Some(as_role(role, || {
            crate::errors::in_subtransaction(|| {
                let col = attname(relid, col_attnum);
                let deleted = (deleted_attnum != 0).then(|| attname(relid, deleted_attnum));
                let w = wanted(relid, &col, deleted.as_deref());
                (w.create(true), w.qualified_index(), relid, w.index)
            })
        }))
    });
    let Some(plan) = plan else {
        // The asking transaction rolled back (or another worker took it).
        return;
    };
    let outcome = plan.and_then(|(create, index, relid, name)| {
        // The invalid leftover of an earlier build that did not finish
        // (unique_active leaves it to us, so as not to lock the table).
        if invalid_index(relid, &name) {
            guarded(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"), role)?;
        }
        guarded(&create, role).inspect_err(|e| {
            // A failed CREATE INDEX CONCURRENTLY leaves its index behind,
            // invalid; unless the name was taken (then nothing was made).
            if e.sqlstate() != "42P07" && invalid_index(relid, &name) {
                if let Err(d) = guarded(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"), role)
                {
                    pgrx::warning!(
                        "integrity unique_active: could not drop the invalid index {index}: {}",
                        d.message
                    );
                }
            }
        })
    });
    if let Err(e) = &outcome {
        pgrx::log!(
            "integrity unique_active: build {id} failed: {}{}",
            e.message,
            e.detail
                .as_deref()
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
    }
    BackgroundWorker::transaction(|| {
        let (error, sqlstate) = match &outcome {
            Ok(()) => (None, None),
            Err(e) => (
                Some(match &e.detail {
                    Some(d) => format!("{}: {d}", e.message),
                    None => e.message.clone(),
                }),
                Some(e.sqlstate()),
            ),
        };
        Spi::run_with_args(
            "UPDATE integrity.index_builds
                SET status = CASE WHEN $2::text IS NULL THEN 'done' ELSE 'failed' END,
                    error = $2, sqlstate = $3, finished_at = pg_catalog.now()
              WHERE id = $1",
            &[id.into(), error.into(), sqlstate.into()],
        )
        .ok();
        Spi::run(&format!(
            "SELECT pg_catalog.pg_advisory_unlock({key}), pg_catalog.pg_advisory_unlock({table_key})"
        ))
        .ok();
    });
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testutil::{json, one, sqlstate};
    use pgrx::prelude::*;

    #[pg_test]
    fn duplicates_among_live_rows_are_reported_and_block_the_index() {
        Spi::run(
            "CREATE TABLE ua_people (id serial PRIMARY KEY, email text, deleted_at timestamptz);
             INSERT INTO ua_people (email, deleted_at) VALUES
                 ('ann@x.io', NULL), ('ANN@x.io', NULL), ('Ann@X.io', NULL),
                 ('bo@x.io', NULL), ('bo@x.io', now()),
                 ('cy@x.io', NULL), ('Cy@x.io', NULL),
                 (NULL, NULL), (NULL, NULL);",
        )
        .unwrap();
        let r = json("SELECT integrity.unique_active('ua_people', 'email', concurrently => false)");
        assert_eq!(
            (r["ok"].clone(), r["reason"].clone()),
            (false.into(), "duplicates".into()),
            "{r}"
        );
        assert_eq!(r["groups"], 2);
        assert_eq!(r["duplicates"][0]["value"], "ann@x.io");
        assert_eq!(r["duplicates"][0]["rows"], 3);
        assert_eq!(r["duplicates"][1]["value"], "cy@x.io");
        assert_eq!(
            one::<i64>("SELECT count(*) FROM pg_indexes WHERE tablename = 'ua_people' AND indexname <> 'ua_people_pkey'"),
            Some(0),
            "nothing built while duplicates stand"
        );
        // Soft-delete the extra rows: the soft-deleted twin of bo@ never mattered.
        Spi::run("UPDATE ua_people SET deleted_at = now() WHERE id IN (2, 3, 7)").unwrap();
        let r = json("SELECT integrity.unique_active('ua_people', 'email', concurrently => false)");
        assert_eq!(
            (
                r["ok"].clone(),
                r["status"].clone(),
                r["index"].clone(),
                r["concurrently"].clone()
            ),
            (
                true.into(),
                "created".into(),
                "ua_people_email_active_key".into(),
                false.into()
            ),
            "{r}"
        );
        let again =
            json("SELECT integrity.unique_active('ua_people', 'email', concurrently => false)");
        assert_eq!(again["status"], "exists");
        assert!(
            again["definition"]
                .as_str()
                .unwrap_or("")
                .contains("lower(email)"),
            "{again}"
        );
        assert_eq!(
            sqlstate("INSERT INTO ua_people (email) VALUES ('BO@x.io')"),
            "23505"
        );
        assert_eq!(
            sqlstate("INSERT INTO ua_people (email, deleted_at) VALUES ('BO@x.io', now())"),
            "00000"
        );
        assert_eq!(
            sqlstate("INSERT INTO ua_people (email) VALUES (NULL)"),
            "00000"
        );
    }

    #[pg_test]
    fn a_column_no_btree_can_hold_is_refused_before_anything_is_queued() {
        Spi::run(
            "CREATE TABLE ua_odd (x xid, j json, p point, deleted_at timestamptz);
             INSERT INTO ua_odd VALUES ('5', '{}', '(1,1)', NULL);
             CREATE SEQUENCE ua_seq;",
        )
        .unwrap();
        for col in ["x", "j", "p"] {
            for conc in ["true", "false"] {
                let sql = format!(
                    "SELECT integrity.unique_active('ua_odd', '{col}', concurrently => {conc})"
                );
                assert_eq!(sqlstate(&sql), "42804", "{sql}");
                let m = crate::testutil::error_message(&sql);
                assert!(
                    m.starts_with("integrity.unique_active")
                        && m.contains(&format!("column {col} of")),
                    "{m}"
                );
            }
        }
        // Refused in the call: nothing was queued to fail later.
        assert_eq!(
            crate::testutil::one::<i64>("SELECT count(*) FROM integrity.index_builds"),
            Some(0)
        );
        // A sequence is not told to pass the table a view reads from.
        let m = crate::testutil::error_message(
            "SELECT integrity.unique_active('ua_seq', 'last_value')",
        );
        assert!(m.contains("ua_seq is a sequence, not a table"), "{m}");
        assert_eq!(
            sqlstate("SELECT integrity.unique_active('ua_seq', 'last_value')"),
            "42809"
        );
    }

    #[pg_test]
    fn flags_other_types_and_tables_where_concurrently_is_impossible() {
        Spi::run(
            "CREATE TABLE \"UA Codes\" (\"Code\" integer, \"Gone\" boolean);
             INSERT INTO \"UA Codes\" VALUES (1, false), (1, true), (2, NULL), (3, false);
             CREATE TEMP TABLE ua_tmp (name varchar(20));
             INSERT INTO ua_tmp VALUES ('a'), ('b');
             CREATE TABLE ua_parted (name text, deleted_at timestamptz) PARTITION BY HASH (name);
             CREATE TABLE ua_parted_0 PARTITION OF ua_parted FOR VALUES WITH (MODULUS 1, REMAINDER 0);",
        )
        .unwrap();
        let r = json(
            "SELECT integrity.unique_active('\"UA Codes\"', 'Code', 'Gone', concurrently => false)",
        );
        assert_eq!(r["status"], "created", "{r}");
        assert_eq!(
            sqlstate("INSERT INTO \"UA Codes\" VALUES (2, false)"),
            "23505"
        );
        assert_eq!(
            sqlstate("INSERT INTO \"UA Codes\" VALUES (2, true)"),
            "00000"
        );
        // A temporary table cannot be built CONCURRENTLY: built in place.
        let t = json("SELECT integrity.unique_active('ua_tmp', 'name', NULL)");
        assert_eq!(
            (t["status"].clone(), t["concurrently"].clone()),
            ("created".into(), false.into()),
            "{t}"
        );
        assert_eq!(sqlstate("INSERT INTO ua_tmp VALUES ('A')"), "23505");
        // Nor a partitioned one (Postgres 15); its unique index must
        // include the partition key, which this one does not.
        assert_eq!(
            sqlstate("SELECT integrity.unique_active('ua_parted', 'name')"),
            "0A000"
        );
        Spi::run("CREATE VIEW ua_view AS SELECT 1 AS x").unwrap();
        Spi::run("CREATE TABLE ua_other (email text, deleted_at timestamptz)").unwrap();
        Spi::run("CREATE TABLE ua_other_email_active_key (x int)").unwrap();
        Spi::run("CREATE ROLE integrity_test_stranger").unwrap();
        Spi::run("GRANT USAGE ON SCHEMA integrity TO integrity_test_stranger").unwrap();
        for (sql, state) in [
            ("SELECT integrity.unique_active(NULL, 'email')", "22004"),
            ("SELECT integrity.unique_active('ua_other', NULL)", "22004"),
            ("SELECT integrity.unique_active('ua_other', '')", "22023"),
            (
                "SELECT integrity.unique_active('ua_other', 'nope')",
                "42703",
            ),
            (
                "SELECT integrity.unique_active('ua_other', 'email', 'nope')",
                "42703",
            ),
            (
                "SELECT integrity.unique_active('ua_nope', 'email')",
                "42P01",
            ),
            ("SELECT integrity.unique_active_by_oid(0, 'email')", "42P01"),
            (
                "SELECT integrity.unique_active('ua_view', 'x', NULL)",
                "42809",
            ),
            (
                "SELECT integrity.unique_active('ua_other', 'email')",
                "42P07",
            ),
        ] {
            assert_eq!(sqlstate(sql), state, "{sql}");
        }
        assert_eq!(
            sqlstate("SELECT integrity.unique_active('ua_other', 'email', concurrently => NULL)"),
            "22004"
        );
        // A build's row is seen and changed only by the table's owners.
        Spi::run("SELECT integrity.grant_access('integrity_test_stranger')").unwrap();
        Spi::run(
            "CREATE TABLE ua_theirs (email text);
             ALTER TABLE ua_theirs OWNER TO integrity_test_stranger;
             INSERT INTO integrity.index_builds
                    (table_oid, table_name, column_name, index_name, statement, requested_by, status)
             VALUES ('ua_other'::regclass, 'ua_other', 'email', 'ua_x', '', 10, 'done'),
                    ('ua_theirs'::regclass, 'ua_theirs', 'email', 'ua_y', '', 10, 'done')",
        )
        .unwrap();
        Spi::run("SET LOCAL ROLE integrity_test_stranger").unwrap();
        assert_eq!(
            one::<String>("SELECT string_agg(index_name, ',') FROM integrity.index_builds"),
            Some("ua_y".to_string())
        );
        assert_eq!(
            one::<i64>(
                "WITH u AS (UPDATE integrity.index_builds SET status = 'failed' RETURNING 1)
                 SELECT count(*) FROM u"
            ),
            Some(1)
        );
        assert_eq!(
            sqlstate("SELECT integrity.unique_active('ua_people_none', 'email')"),
            "42P01"
        );
        assert_eq!(
            sqlstate("SELECT integrity.unique_active_by_oid('\"UA Codes\"'::regclass::oid, 'Code', 'Gone', false)"),
            "42501"
        );
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test]
    fn an_index_by_our_name_that_is_not_ours_is_refused_and_long_names_differ() {
        Spi::run(
            "CREATE TABLE ua_hand (email text, deleted_at timestamptz);
             CREATE UNIQUE INDEX ua_hand_email_active_key ON ua_hand (email);",
        )
        .unwrap();
        // Case-sensitive and over every row: not the index asked for.
        assert_eq!(
            sqlstate("SELECT integrity.unique_active('ua_hand', 'email', concurrently => false)"),
            "42P07"
        );
        Spi::run("DROP INDEX ua_hand_email_active_key").unwrap();
        let r = json("SELECT integrity.unique_active('ua_hand', 'email', NULL, false)");
        assert_eq!(r["status"], "created", "{r}");
        assert_eq!(
            json("SELECT integrity.unique_active('ua_hand', 'email', NULL, false)")["status"],
            "exists"
        );
        // Asked with a soft-delete column, the index over every row is
        // not the one that would be built.
        assert_eq!(
            sqlstate("SELECT integrity.unique_active('ua_hand', 'email', 'deleted_at', false)"),
            "42P07"
        );
        // Two long column names of one long-named table: two indexes.
        Spi::run(
            "CREATE TABLE customer_notification_preferences_archive (
                 billing_contact_email_primary text, billing_contact_email_secondary text,
                 deleted_at timestamptz)",
        )
        .unwrap();
        let ask = |col: &str| {
            json(&format!(
                "SELECT integrity.unique_active('customer_notification_preferences_archive', '{col}', concurrently => false)"
            ))
        };
        let (a, b) = (
            ask("billing_contact_email_primary"),
            ask("billing_contact_email_secondary"),
        );
        assert_eq!(
            (a["status"].clone(), b["status"].clone()),
            ("created".into(), "created".into()),
            "{a} {b}"
        );
        let (a, b) = (a["index"].as_str().unwrap(), b["index"].as_str().unwrap());
        assert_ne!(a, b);
        for name in [a, b] {
            assert!(name.len() <= 63 && name.ends_with("_active_key"), "{name}");
        }
        assert_eq!(ask("billing_contact_email_secondary")["status"], "exists");
        assert_eq!(
            one::<i64>("SELECT count(*) FROM pg_indexes WHERE tablename = 'customer_notification_preferences_archive'"),
            Some(2)
        );
    }
}

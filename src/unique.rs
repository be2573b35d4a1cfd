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

/// `{table}_{col}_active_key`, cut to Postgres's 63-byte names.
fn index_name(table: &str, col: &str) -> String {
    let mut name = format!("{table}_{col}_active_key");
    let max = pg_sys::NAMEDATALEN as usize - 1;
    while name.len() > max {
        name.pop();
    }
    name
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
    if relkind != pg_sys::RELKIND_RELATION && relkind != pg_sys::RELKIND_PARTITIONED_TABLE {
        raise(
            Kind::WrongObjectType,
            F,
            format!("{table} is not a table"),
            "Pass the table the view or materialized view reads from.",
        );
    }
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
    let (mut category, mut preferred) = (0 as std::ffi::c_char, false);
    // SAFETY: a catalog lookup of the column's type.
    unsafe { pg_sys::get_type_category_preferred(c.typid, &mut category, &mut preferred) };
    let key = if category as u8 == pg_sys::TYPCATEGORY_STRING {
        format!("pg_catalog.lower({})", quote(&c.name))
    } else {
        quote(&c.name)
    };
    let live = match deleted_col {
        None => String::new(),
        Some(d) => {
            let d = column(F, "deleted_col", relid, d);
            if d.typid == pg_sys::BOOLOID {
                format!("{} IS NOT TRUE", quote(&d.name))
            } else {
                format!("{} IS NULL", quote(&d.name))
            }
        }
    };
    Wanted {
        relid,
        table,
        namespace,
        index: index_name(&relname, col),
        key,
        live,
        col: col.to_string(),
        relkind,
        temporary,
    }
}

/// An index or other relation already named as ours: (its OID, whether it
/// is a unique index of our table, whether it is valid, its definition).
fn existing(client: &pgrx::spi::SpiClient<'_>, w: &Wanted) -> Option<(Oid, bool, bool, String)> {
    let t = client
        .select(
            "SELECT c.oid, COALESCE(i.indrelid = $1 AND i.indisunique, false),
                    COALESCE(i.indisvalid, false), pg_catalog.pg_get_indexdef(c.oid)
               FROM pg_catalog.pg_class c
               LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
              WHERE c.relname = $2 AND c.relnamespace = $3",
            None,
            &[w.relid.into(), w.index.as_str().into(), w.namespace.into()],
        )
        .unwrap_or_else(|e| crate::errors::bug(format!("unique_active index lookup: {e}")));
    let r = t.first();
    Some((
        r.get::<Oid>(1).ok().flatten()?,
        r.get::<bool>(2).ok().flatten().unwrap_or(false),
        r.get::<bool>(3).ok().flatten().unwrap_or(false),
        r.get::<String>(4).ok().flatten().unwrap_or_default(),
    ))
}

/// A build of `index` on `relid` still queued or running: its id and
/// status. Builds
/// whose worker is gone (a crash, a restart) are marked failed first.
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
              WHERE table_oid = $1 AND index_name = $2
                AND ((status = 'building' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                                                           WHERE a.pid = b.pid))
                  OR (status = 'queued' AND requested_at < pg_catalog.now() - interval '1 minute'))",
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
    let concurrently = concurrently.unwrap_or(true)
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
            Some((_, true, true, definition)) => {
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
                    .string(&definition)
                    .end()
                    .finish();
            }
            Some((_, true, false, _)) => {
                // The invalid leftover of a build that did not finish.
                client
                    .update(&format!("DROP INDEX {}", w.qualified_index()), None, &[])
                    .unwrap_or_else(|e| crate::errors::bug(format!("unique_active drop: {e}")));
            }
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
        start_worker(id);
        answer("queued", &w, true, Some(id))
    })
}

fn start_worker(id: i64) {
    // SAFETY: reads of the session's database and user.
    let (db, role) = unsafe { (pg_sys::MyDatabaseId, pg_sys::GetUserId()) };
    let started = BackgroundWorkerBuilder::new("integrity unique_active")
        .set_type("integrity unique_active")
        .set_library("integrity")
        .set_function("integrity_unique_worker")
        .set_argument(Some(pg_sys::Datum::from(id)))
        .set_extra(&format!("{} {}", db.to_u32(), role.to_u32()))
        .enable_spi_access()
        .set_restart_time(None)
        .load_dynamic();
    if started.is_err() {
        raise(
            Kind::ConfigurationLimitExceeded,
            F,
            "no background worker slot is free to build the index concurrently",
            "Raise max_worker_processes, try again later, or pass concurrently => false to build it in this transaction (writers wait meanwhile).",
        );
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
    // SAFETY: the worker's own user switch, undone below.
    let (mut user, mut context) = (Oid::INVALID, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(role, pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let r = f();
    // SAFETY: restores what was read above.
    unsafe { pg_sys::SetUserIdAndSecContext(user, context) };
    r
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

/// The background worker `unique_active` starts for one build (its id is
/// the argument; the database and the asking role are in `bgw_extra`).
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
    let mut extra = BackgroundWorker::get_extra()
        .split_whitespace()
        .map(|s| s.parse::<u32>().ok());
    let (Some(Some(db)), Some(Some(role))) = (extra.next(), extra.next()) else {
        pgrx::warning!("integrity unique_active worker: malformed bgw_extra");
        return;
    };
    let role = Oid::from(role);
    // Connected as the bootstrap superuser, to keep the build's record;
    // the statements themselves run as the asking role.
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(Oid::from(db)), None);
    let key = build_lock(id);
    // Wait for the asking transaction to end; then the build is ours. What
    // to build is worked out again here, as the asking role, from the
    // table and columns asked for: never taken as SQL text from the
    // table, which callers can write.
    let plan = BackgroundWorker::transaction(|| {
        Spi::run("SET search_path = pg_catalog, pg_temp").ok();
        Spi::run(&format!("SELECT pg_catalog.pg_advisory_lock({key})")).ok();
        let (relid, col, deleted) = Spi::get_three_with_args::<Oid, String, String>(
            "UPDATE integrity.index_builds
                SET status = 'building', started_at = pg_catalog.now(), pid = pg_catalog.pg_backend_pid()
              WHERE id = $1 AND status = 'queued'
             RETURNING table_oid, column_name, deleted_column",
            &[id.into()],
        )
        .ok()?;
        let (relid, col) = (relid?, col?);
        Some(as_role(role, || {
            crate::errors::in_subtransaction(|| {
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
        Spi::run(&format!("SELECT pg_catalog.pg_advisory_unlock({key})")).ok();
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
        Spi::run("SET LOCAL ROLE integrity_test_stranger").unwrap();
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
}

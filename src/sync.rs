//! Integration sync state: which external record each entity is linked to,
//! whether its last synced payload is current, and who is syncing it now.
//!
//! `sync_start` takes the entity's lock (an advisory lock, to the end of the
//! transaction) and decides `create` | `update` | `skip` | `in_progress`;
//! `sync_succeeded` takes the external id's lock before it links, so two
//! entities racing for one external id are decided one after the other: the
//! second gets `external_id_conflict` as data, never a raw 23505. Rows are
//! locked, then updated (no `ON CONFLICT` across the table's two unique
//! keys).

use crate::errors::{raise, required, text_arg, Kind};
use crate::jsonb::{Builder, Jsonb};
use crate::keys::{fingerprint_of_jsonb, lock_key_of, uuid_text};
use crate::plans::{read, run, Stmt};
use pgrx::datum::{Interval, Uuid};
use pgrx::pg_sys;
use pgrx::prelude::*;

pgrx::extension_sql_file!(
    "../sql/sync.sql",
    name = "sync_tables",
    requires = ["bootstrap"]
);
pgrx::extension_sql_file!(
    "../sql/sync_api.sql",
    name = "sync_api",
    requires = [
        "sync_tables",
        sync_start,
        sync_succeeded,
        sync_failed,
        sync_lookup,
        sync_health,
        find_orphans
    ]
);

/// The link's key, validated.
struct Link<'a> {
    org_id: Uuid,
    entity_type: &'a str,
    entity_id: &'a str,
    integration: &'a str,
}

impl Link<'_> {
    fn args(&self) -> [pgrx::datum::DatumWithOid<'_>; 4] {
        [
            self.org_id.into(),
            self.entity_type.into(),
            self.entity_id.into(),
            self.integration.into(),
        ]
    }
}

fn link<'a>(
    f: &'static str,
    org_id: Option<Uuid>,
    entity_type: Option<&'a str>,
    entity_id: Option<&'a str>,
    integration: Option<&'a str>,
) -> Link<'a> {
    Link {
        org_id: required(org_id, f, "org_id"),
        entity_type: text_arg(f, "entity_type", entity_type, 255),
        entity_id: text_arg(f, "entity_id", entity_id, 255),
        integration: text_arg(f, "integration", integration, 255),
    }
}

static READ: Stmt = Stmt {
    sql: "SELECT status, external_id, fingerprint, pending_fingerprint, retryable, last_error,
                 locked_until > pg_catalog.now(),
                 GREATEST(0, CEIL(EXTRACT(epoch FROM locked_until - pg_catalog.now()) * 1000))::bigint,
                 attempts
            FROM integrity.sync_links
           WHERE org_id = $1 AND entity_type = $2 AND entity_id = $3 AND integration = $4
             FOR UPDATE",
    args: &[
        pg_sys::UUIDOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
    ],
    writes: true,
};

/// The link's key, the payload's fingerprint, the lease.
const STARTING: &[pg_sys::Oid] = &[
    pg_sys::UUIDOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::TEXTOID,
    pg_sys::INTERVALOID,
];

static START_NEW: Stmt = Stmt {
    sql: "INSERT INTO integrity.sync_links
              (org_id, entity_type, entity_id, integration, status, pending_fingerprint,
               locked_until, attempts)
          VALUES ($1, $2, $3, $4, 'syncing', $5, pg_catalog.now() + $6, 1)
          RETURNING attempts",
    args: STARTING,
    writes: true,
};

static START_AGAIN: Stmt = Stmt {
    sql: "UPDATE integrity.sync_links
             SET status = 'syncing', pending_fingerprint = $5, locked_until = pg_catalog.now() + $6,
                 attempts = attempts + 1, updated_at = pg_catalog.now()
           WHERE org_id = $1 AND entity_type = $2 AND entity_id = $3 AND integration = $4
          RETURNING attempts",
    args: STARTING,
    writes: true,
};

/// The row `READ` found: (status, external_id, fingerprint,
/// pending_fingerprint, retryable, last_error, held, wait_ms, attempts).
type Seen = (
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<bool>,
    Option<String>,
    bool,
    i64,
    i32,
);

fn seen(client: &mut pgrx::spi::SpiClient<'_>, l: &Link<'_>) -> Option<Seen> {
    let t = run(client, &READ, None, &l.args());
    let r = t.first();
    Some((
        r.get::<String>(1).ok().flatten()?,
        r.get(2).ok().flatten(),
        r.get(3).ok().flatten(),
        r.get(4).ok().flatten(),
        r.get(5).ok().flatten(),
        r.get(6).ok().flatten(),
        r.get(7).ok().flatten().unwrap_or(false),
        r.get(8).ok().flatten().unwrap_or(0),
        r.get(9).ok().flatten().unwrap_or(0),
    ))
}

/// `{"action": a}`, with `external_id` when known and `attempt` (the
/// lease's number, for `sync_succeeded` / `sync_failed`) when started.
fn action(a: &str, external_id: Option<&str>, attempt: Option<i32>) -> Jsonb {
    let mut b = Builder::new();
    b.begin_object().key("action").string(a);
    if let Some(e) = external_id {
        b.key("external_id").string(e);
    }
    if let Some(n) = attempt {
        b.key("attempt").int(n as i64);
    }
    b.end().finish()
}

/// Run `stmt`, which writes the link; a unique violation with a row this
/// transaction's snapshot cannot see (REPEATABLE READ or SERIALIZABLE: a
/// concurrent transaction committed it after the snapshot was taken, and
/// the lock we waited for does not refresh the snapshot) is a
/// serialization failure, `40001`, as Postgres reports one for
/// SERIALIZABLE. Under READ COMMITTED our locks and a fresh snapshot per
/// statement leave none, but for a writer that bypasses them: its `23505`
/// stands.
fn write_link<'conn>(
    f: &'static str,
    client: &mut pgrx::spi::SpiClient<'conn>,
    stmt: &'static Stmt,
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> pgrx::spi::SpiTupleTable<'conn> {
    pgrx::PgTryBuilder::new(std::panic::AssertUnwindSafe(|| run(client, stmt, None, args)))
        .catch_when(pgrx::PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, |e| {
            // SAFETY: reads this backend's isolation level.
            if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
                raise(
                    Kind::SerializationFailure,
                    f,
                    "a concurrent transaction linked this entity or external id after this transaction's snapshot was taken".to_string(),
                    "Retry the transaction.",
                )
            }
            e.rethrow()
        })
        .execute()
}

/// Lock the link for settling by a caller that names `attempt` (from
/// `sync_start`'s answer; `55000` if the link was never started): the
/// `lease_lost` refusal to answer it, when a later `sync_start` took the
/// link over, or `None` to go on.
fn lost_lease(
    f: &'static str,
    client: &mut pgrx::spi::SpiClient<'_>,
    l: &Link<'_>,
    attempt: Option<i32>,
) -> Option<Jsonb> {
    let Some((_, external_id, .., current)) = seen(client, l) else {
        not_started(f, l)
    };
    attempt.filter(|&a| a != current)?;
    let mut b = Builder::new();
    b.begin_object()
        .key("ok")
        .bool(false)
        .key("reason")
        .string("lease_lost")
        .key("attempt")
        .int(current as i64);
    if let Some(e) = external_id.as_deref() {
        b.key("external_id").string(e);
    }
    Some(b.end().finish())
}

/// Before syncing an entity to an integration: `{"action": "create" |
/// "update" | "skip" | "in_progress"}` (`in_progress` with
/// `retry_after_ms` while another caller holds the lease).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn sync_start(
    org_id: Option<Uuid>,
    entity_type: Option<&str>,
    entity_id: Option<&str>,
    integration: Option<&str>,
    payload: Option<Jsonb>,
    lease: default!(Option<Interval>, "'5 minutes'"),
) -> Jsonb {
    const F: &str = "integrity.sync_start";
    let l = link(F, org_id, entity_type, entity_id, integration);
    let payload = required(payload, F, "payload");
    let lease = required(lease, F, "lease");
    let us = crate::errors::span_us(F, "lease", lease);
    if us <= 0 || us > 24 * 3600 * 1_000_000 {
        raise(
            Kind::InvalidParameter,
            F,
            format!("lease must be above zero and at most 24 hours, got {lease}"),
            "Pass the time one sync may take, e.g. lease => '5 minutes'.",
        );
    }
    let fp = fingerprint_of_jsonb(&payload);
    let org = uuid_text(l.org_id.as_bytes());
    crate::keys::advisory_lock(
        lock_key_of([
            &b"sync"[..],
            &org[..],
            l.entity_type.as_bytes(),
            l.entity_id.as_bytes(),
            l.integration.as_bytes(),
        ]),
        false,
    );
    Spi::connect_mut(|client| {
        let mut args: Vec<_> = l.args().into_iter().collect();
        args.push(fp.as_str().into());
        args.push(lease.into());
        let Some((status, external_id, fingerprint, pending, retryable, last_error, held, wait, _)) =
            seen(client, &l)
        else {
            let t = write_link(F, client, &START_NEW, &args);
            return action("create", None, t.first().get::<i32>(1).ok().flatten());
        };
        if status == "syncing" && held {
            return Builder::new()
                .begin_object()
                .key("action")
                .string("in_progress")
                .key("retry_after_ms")
                .int(wait)
                .end()
                .finish();
        }
        if status == "synced" && fingerprint.as_deref() == Some(fp.as_str()) {
            return action("skip", external_id.as_deref(), None);
        }
        if status == "failed" && retryable == Some(false) && pending.as_deref() == Some(fp.as_str())
        {
            let mut b = Builder::new();
            b.begin_object()
                .key("action")
                .string("skip")
                .key("reason")
                .string("failed_permanently");
            if let Some(e) = last_error.as_deref() {
                b.key("last_error").string(e);
            }
            return b.end().finish();
        }
        let attempt = run(client, &START_AGAIN, None, &args)
            .first()
            .get::<i32>(1)
            .ok()
            .flatten();
        match external_id {
            None => action("create", None, attempt),
            Some(e) => action("update", Some(&e), attempt),
        }
    })
}

static HOLDER: Stmt = Stmt {
    sql: "SELECT entity_type, entity_id FROM integrity.sync_links
           WHERE org_id = $1 AND integration = $2 AND external_id = $3
             AND NOT (entity_type = $4 AND entity_id = $5)",
    args: &[
        pg_sys::UUIDOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
    ],
    writes: false,
};

static SUCCEEDED: Stmt = Stmt {
    sql: "UPDATE integrity.sync_links
             SET external_id = $5, status = 'synced',
                 fingerprint = COALESCE(pending_fingerprint, fingerprint), pending_fingerprint = NULL,
                 locked_until = NULL, retryable = NULL, last_error = NULL,
                 synced_at = pg_catalog.now(), updated_at = pg_catalog.now()
           WHERE org_id = $1 AND entity_type = $2 AND entity_id = $3 AND integration = $4",
    args: &[
        pg_sys::UUIDOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
    ],
    writes: true,
};

static FAILED: Stmt = Stmt {
    sql: "UPDATE integrity.sync_links
             SET status = 'failed', retryable = $5, last_error = $6, locked_until = NULL,
                 updated_at = pg_catalog.now()
           WHERE org_id = $1 AND entity_type = $2 AND entity_id = $3 AND integration = $4",
    args: &[
        pg_sys::UUIDOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::BOOLOID,
        pg_sys::TEXTOID,
    ],
    writes: true,
};

fn not_started(f: &'static str, l: &Link<'_>) -> ! {
    raise(
        Kind::NotInPrerequisiteState,
        f,
        format!(
            "{} {:?} was never started with {}",
            l.entity_type, l.entity_id, l.integration
        ),
        "Call integrity.sync_start first; its answer says whether to create, update or skip.",
    )
}

/// `attempt`, when given, is `sync_start`'s: at least 1.
fn attempt_arg(f: &'static str, attempt: Option<i32>) -> Option<i32> {
    attempt.map(|a| {
        crate::errors::count_arg(
            f,
            "attempt",
            Some(a),
            1..=i32::MAX,
            "Pass the attempt of sync_start's answer, or leave it out.",
        )
    })
}

/// The sync went through: link the entity to `external_id`. `{"ok":true}`;
/// `{"ok":false,"reason":"external_id_conflict","linked_to":{…}}` when
/// another entity of the org holds that external id;
/// `{"ok":false,"reason":"lease_lost"}`, with nothing written, when
/// `attempt` is given and a later `sync_start` took the link over.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn sync_succeeded(
    org_id: Option<Uuid>,
    entity_type: Option<&str>,
    entity_id: Option<&str>,
    integration: Option<&str>,
    external_id: Option<&str>,
    attempt: default!(Option<i32>, "NULL"),
) -> Jsonb {
    const F: &str = "integrity.sync_succeeded";
    let l = link(F, org_id, entity_type, entity_id, integration);
    let external_id = text_arg(F, "external_id", external_id, 255);
    let attempt = attempt_arg(F, attempt);
    let org = uuid_text(l.org_id.as_bytes());
    // Links of one external id are decided one at a time.
    crate::keys::advisory_lock(
        lock_key_of([
            &b"sync-external"[..],
            &org[..],
            l.integration.as_bytes(),
            external_id.as_bytes(),
        ]),
        false,
    );
    Spi::connect_mut(|client| {
        if let Some(refusal) = lost_lease(F, client, &l, attempt) {
            return refusal;
        }
        let holder = {
            let t = read(
                client,
                &HOLDER,
                None,
                &[
                    l.org_id.into(),
                    l.integration.into(),
                    external_id.into(),
                    l.entity_type.into(),
                    l.entity_id.into(),
                ],
            );
            let r = t.first();
            r.get::<String>(1)
                .ok()
                .flatten()
                .zip(r.get::<String>(2).ok().flatten())
        };
        if let Some((t, id)) = holder {
            let mut args: Vec<_> = l.args().into_iter().collect();
            args.push(false.into());
            args.push(format!("external_id_conflict: {external_id} is linked to {t} {id}").into());
            run(client, &FAILED, None, &args);
            return Builder::new()
                .begin_object()
                .key("ok")
                .bool(false)
                .key("reason")
                .string("external_id_conflict")
                .key("linked_to")
                .begin_object()
                .key("entity_type")
                .string(&t)
                .key("entity_id")
                .string(&id)
                .end()
                .end()
                .finish();
        }
        let mut args: Vec<_> = l.args().into_iter().collect();
        args.push(external_id.into());
        write_link(F, client, &SUCCEEDED, &args);
        Builder::new()
            .begin_object()
            .key("ok")
            .bool(true)
            .key("external_id")
            .string(external_id)
            .end()
            .finish()
    })
}

/// The sync failed: the lease is let go; `retryable => false` makes the
/// next `sync_start` of the same payload `skip`. With `attempt`, a caller
/// whose lease a later `sync_start` took over is told `lease_lost` and
/// writes nothing.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn sync_failed(
    org_id: Option<Uuid>,
    entity_type: Option<&str>,
    entity_id: Option<&str>,
    integration: Option<&str>,
    error: Option<&str>,
    retryable: default!(Option<bool>, "true"),
    attempt: default!(Option<i32>, "NULL"),
) -> Jsonb {
    const F: &str = "integrity.sync_failed";
    let l = link(F, org_id, entity_type, entity_id, integration);
    let retryable = retryable.unwrap_or(true);
    let attempt = attempt_arg(F, attempt);
    Spi::connect_mut(|client| {
        if let Some(refusal) = lost_lease(F, client, &l, attempt) {
            return refusal;
        }
        let mut args: Vec<_> = l.args().into_iter().collect();
        args.push(retryable.into());
        args.push(error.into());
        run(client, &FAILED, None, &args);
        Builder::new()
            .begin_object()
            .key("ok")
            .bool(true)
            .key("retryable")
            .bool(retryable)
            .end()
            .finish()
    })
}

static LOOKUP: Stmt = Stmt {
    sql: "SELECT pg_catalog.jsonb_build_object('entity_type', entity_type, 'entity_id', entity_id,
                                                'status', status, 'synced_at', synced_at)
            FROM integrity.sync_links WHERE org_id = $1 AND integration = $2 AND external_id = $3",
    args: &[pg_sys::UUIDOID, pg_sys::TEXTOID, pg_sys::TEXTOID],
    writes: false,
};

/// Which entity an external id is linked to, or NULL.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn sync_lookup(
    org_id: Option<Uuid>,
    integration: Option<&str>,
    external_id: Option<&str>,
) -> Option<Jsonb> {
    const F: &str = "integrity.sync_lookup";
    let org_id = required(org_id, F, "org_id");
    let integration = text_arg(F, "integration", integration, 255);
    let external_id = text_arg(F, "external_id", external_id, 255);
    Spi::connect(|client| {
        read(
            client,
            &LOOKUP,
            None,
            &[org_id.into(), integration.into(), external_id.into()],
        )
        .first()
        .get_datum_by_ordinal(1)
        .ok()
        .flatten()
        .map(Jsonb::from_spi)
    })
}

static HEALTH: Stmt = Stmt {
    sql: "SELECT pg_catalog.jsonb_build_object(
                 'integration', $1::text,
                 'links', pg_catalog.count(*),
                 'synced', pg_catalog.count(*) FILTER (WHERE status = 'synced'),
                 'syncing', pg_catalog.count(*) FILTER (WHERE status = 'syncing'),
                 'failed', pg_catalog.count(*) FILTER (WHERE status = 'failed'),
                 'failed_permanently', pg_catalog.count(*) FILTER (WHERE status = 'failed' AND retryable = false),
                 'orphaned', pg_catalog.count(*) FILTER (WHERE status = 'orphaned'),
                 'expired_leases', pg_catalog.count(*) FILTER (WHERE status = 'syncing'
                                                             AND locked_until < pg_catalog.now()),
                 'never_synced', pg_catalog.count(*) FILTER (WHERE external_id IS NULL),
                 'oldest_failure_at', pg_catalog.min(updated_at) FILTER (WHERE status = 'failed'),
                 'last_synced_at', pg_catalog.max(synced_at))
            FROM integrity.sync_links WHERE integration = $1",
    args: &[pg_sys::TEXTOID],
    writes: false,
};

/// An integration's links at a glance: counts per status, expired leases,
/// links never synced, the oldest failure and the last sync.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn sync_health(integration: Option<&str>) -> Jsonb {
    let integration = text_arg("integrity.sync_health", "integration", integration, 255);
    Spi::connect(|client| {
        let d = read(client, &HEALTH, None, &[integration.into()])
            .first()
            .get_datum_by_ordinal(1)
            .ok()
            .flatten()
            .unwrap_or_else(|| crate::errors::bug("sync_health returned nothing"));
        Jsonb::from_spi(d)
    })
}

static ENTITY_TYPES: Stmt = Stmt {
    sql: "SELECT DISTINCT entity_type FROM integrity.sync_links WHERE integration = $1 ORDER BY 1 LIMIT 11",
    args: &[pg_sys::TEXTOID],
    writes: false,
};

/// The entity type whose links `find_orphans` checks: the one given, or
/// the integration's only one.
fn entity_type_of(
    client: &pgrx::spi::SpiClient<'_>,
    integration: &str,
    given: Option<&str>,
    table: &str,
) -> Option<String> {
    const F: &str = "integrity.find_orphans";
    if given.is_some() {
        return Some(text_arg(F, "of_type", given, 255).to_string());
    }
    let types: Vec<String> = read(client, &ENTITY_TYPES, None, &[integration.into()])
        .filter_map(|r| r.get::<String>(1).ok().flatten())
        .collect();
    match types.len() {
        0 | 1 => types.into_iter().next(),
        _ => raise(
            Kind::InvalidParameter,
            F,
            format!(
                "integration {integration:?} links entities of several types ({}), so which of them are rows of {table} is ambiguous",
                types.join(", ")
            ),
            format!(
                "Name the type: integrity.find_orphans({}, '{table}', of_type => '{}').",
                crate::names::literal(integration),
                types[0]
            ),
        ),
    }
}

/// Links of `integration` whose entity is gone from `entity_table` (`missing`)
/// or soft-deleted there (`deleted`); `mark => true` sets them `orphaned`.
/// `entity_table` is taken by OID: the SQL `find_orphans` takes a regclass.
#[pg_extern(volatile, parallel_unsafe, name = "find_orphans_by_oid")]
#[search_path(pg_catalog, pg_temp)]
fn find_orphans(
    integration: Option<&str>,
    entity_table: Option<pg_sys::Oid>,
    id_col: default!(Option<&str>, "'id'"),
    deleted_col: default!(Option<&str>, "NULL"),
    of_type: default!(Option<&str>, "NULL"),
    mark: default!(Option<bool>, "false"),
) -> TableIterator<
    'static,
    (
        name!(org_id, Uuid),
        name!(entity_type, String),
        name!(entity_id, String),
        name!(external_id, Option<String>),
        name!(status, String),
        name!(reason, String),
    ),
> {
    const F: &str = "integrity.find_orphans";
    let integration = text_arg(F, "integration", integration, 255);
    let relid = required(entity_table, F, "entity_table");
    crate::names::relation(F, "entity_table", relid);
    crate::names::check_kind(
        F,
        "entity_table",
        relid,
        crate::names::Needs::Rows,
        "Pass the table (or a view) holding the entities the links point at, e.g. entity_table => 'customers'.",
    );
    let table = crate::names::qualified(relid);
    let id = crate::names::column(F, "id_col", relid, required(id_col, F, "id_col"));
    let live = match deleted_col {
        None => String::new(),
        Some(d) => {
            let d = crate::names::column(F, "deleted_col", relid, d);
            if d.typid == pg_sys::BOOLOID {
                format!(" AND e.{} IS NOT TRUE", crate::names::quote(&d.name))
            } else {
                format!(" AND e.{} IS NULL", crate::names::quote(&d.name))
            }
        }
    };
    let mark = required(mark, F, "mark");
    // A row the caller's row security hides would look missing, and its
    // link would be marked orphaned: marking needs every row in view.
    // SAFETY: a row-security check by OID (noError: no raise here).
    if mark
        && unsafe { pg_sys::check_enable_rls(relid, pg_sys::Oid::INVALID, true) }
            == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32
    {
        raise(
            Kind::InsufficientPrivilege,
            F,
            format!("row-level security on {table} hides rows from this role, so links to them would be marked orphaned"),
            "Call it with mark => true as a role that bypasses row security on the table (its owner, or a BYPASSRLS role), or with mark => false to look only.",
        );
    }
    let id = crate::names::quote(&id.name);
    // Ids are compared in text, the form sync_start was given them in; the
    // entity table is read once (a hashed anti-join), whatever its size.
    let orphans = format!(
        "orphans AS (
             SELECT l.org_id, l.entity_type, l.entity_id, l.external_id, l.status,
                    CASE WHEN EXISTS (SELECT 1 FROM {table} e
                                       WHERE e.{id}::pg_catalog.text OPERATOR(pg_catalog.=) l.entity_id)
                         THEN 'deleted' ELSE 'missing' END AS reason
               FROM integrity.sync_links l
              WHERE l.integration = $1 AND l.entity_type = $2
                AND NOT EXISTS (SELECT 1 FROM {table} e
                                 WHERE e.{id}::pg_catalog.text OPERATOR(pg_catalog.=) l.entity_id{live})
         )"
    );
    // Looking only is a read: it runs in a read-only transaction and on a
    // hot standby, where the marking statement (even marking nothing)
    // could not.
    let sql = if mark {
        format!(
            "WITH {orphans}, marked AS (
                 UPDATE integrity.sync_links s
                    SET status = 'orphaned', locked_until = NULL, updated_at = pg_catalog.now()
                   FROM orphans o
                  WHERE s.org_id = o.org_id AND s.entity_type = o.entity_type
                    AND s.entity_id = o.entity_id AND s.integration = $1 AND s.status <> 'orphaned'
                    -- Someone is syncing it now (it may have just come back):
                    -- reported, not marked.
                    AND NOT (s.status = 'syncing' AND s.locked_until > pg_catalog.now())
                 RETURNING s.org_id, s.entity_id
             )
             SELECT o.org_id, o.entity_type, o.entity_id, o.external_id,
                    CASE WHEN m.entity_id IS NULL THEN o.status ELSE 'orphaned' END, o.reason
               FROM orphans o LEFT JOIN marked m ON m.org_id = o.org_id AND m.entity_id = o.entity_id
              ORDER BY o.org_id, o.entity_id"
        )
    } else {
        format!(
            "WITH {orphans}
             SELECT o.org_id, o.entity_type, o.entity_id, o.external_id, o.status, o.reason
               FROM orphans o
              ORDER BY o.org_id, o.entity_id"
        )
    };
    let rows = Spi::connect_mut(|client| {
        let Some(entity_type) = entity_type_of(client, integration, of_type, &table) else {
            return Vec::new();
        };
        let args = [integration.into(), entity_type.as_str().into()];
        let t = if mark {
            client.update(&sql, None, &args)
        } else {
            client.select(&sql, None, &args)
        }
        .unwrap_or_else(|e| crate::errors::bug(format!("find_orphans: {e}")));
        t.map(|r| {
            (
                r.get::<Uuid>(1)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| crate::errors::bug("find_orphans org_id")),
                r.get::<String>(2).ok().flatten().unwrap_or_default(),
                r.get::<String>(3).ok().flatten().unwrap_or_default(),
                r.get::<String>(4).ok().flatten(),
                r.get::<String>(5).ok().flatten().unwrap_or_default(),
                r.get::<String>(6).ok().flatten().unwrap_or_default(),
            )
        })
        .collect::<Vec<_>>()
    });
    TableIterator::new(rows)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testutil::{json, one, sqlstate, text};
    use pgrx::prelude::*;

    const ORG: &str = "'0000000a-0000-0000-0000-000000000000'";

    fn start(id: &str, payload: &str) -> serde_json::Value {
        json(&format!(
            "SELECT integrity.sync_start({ORG}, 'customer', '{id}', 'crm', '{payload}')"
        ))
    }

    #[pg_test]
    fn sync_decides_create_update_skip_and_refuses_a_taken_external_id() {
        let c = start("1", r#"{"n": "Ann"}"#);
        assert_eq!(
            (c["action"].as_str(), c["attempt"].as_i64()),
            (Some("create"), Some(1))
        );
        // The lease is held (same transaction: it is this caller's, still running).
        assert_eq!(start("1", r#"{"n": "Ann"}"#)["action"], "in_progress");
        let ok = json(&format!(
            "SELECT integrity.sync_succeeded({ORG}, 'customer', '1', 'crm', 'ext-1')"
        ));
        assert_eq!(ok["ok"], true);
        // Twice: still ok, no conflict with itself.
        assert_eq!(
            json(&format!(
                "SELECT integrity.sync_succeeded({ORG}, 'customer', '1', 'crm', 'ext-1')"
            ))["ok"],
            true
        );
        assert_eq!(start("1", r#"{"n": "Ann"}"#)["action"], "skip");
        let u = start("1", r#"{"n": "Ann B."}"#);
        assert_eq!(
            (u["action"].clone(), u["external_id"].clone()),
            ("update".into(), "ext-1".into())
        );
        Spi::run(&format!(
            "SELECT integrity.sync_succeeded({ORG}, 'customer', '1', 'crm', 'ext-1')"
        ))
        .unwrap();
        // Another customer claims ext-1: data, not 23505.
        assert_eq!(start("2", r#"{"n": "Ann"}"#)["action"], "create");
        let c = json(&format!(
            "SELECT integrity.sync_succeeded({ORG}, 'customer', '2', 'crm', 'ext-1')"
        ));
        assert_eq!(c["reason"], "external_id_conflict");
        assert_eq!(c["linked_to"]["entity_id"], "1");
        assert_eq!(
            json(&format!(
                "SELECT integrity.sync_lookup({ORG}, 'crm', 'ext-1')"
            ))["entity_id"],
            "1"
        );
        assert!(Spi::get_one::<pgrx::JsonB>(&format!(
            "SELECT integrity.sync_lookup({ORG}, 'crm', 'nope')"
        ))
        .unwrap()
        .is_none());
        // A permanent failure of a payload: skipped until the payload changes.
        assert_eq!(start("3", r#"{"n": "Bo"}"#)["action"], "create");
        Spi::run(&format!(
            "SELECT integrity.sync_failed({ORG}, 'customer', '3', 'crm', 'HTTP 422', false)"
        ))
        .unwrap();
        assert_eq!(start("3", r#"{"n": "Bo"}"#)["reason"], "failed_permanently");
        assert_eq!(start("3", r#"{"n": "Bob"}"#)["action"], "create");
        let h = json("SELECT integrity.sync_health('crm')");
        assert_eq!(
            (
                h["links"].clone(),
                h["synced"].clone(),
                h["failed"].clone(),
                h["syncing"].clone()
            ),
            (3.into(), 1.into(), 1.into(), 1.into()),
            "{h}"
        );
        assert_eq!(json("SELECT integrity.sync_health('nothing')")["links"], 0);
        assert_eq!(sqlstate("SELECT integrity.sync_health(NULL)"), "22004");
        for (sql, state) in [
            (
                format!("SELECT integrity.sync_start(NULL, 'c', '1', 'crm', '{{}}')"),
                "22004",
            ),
            (
                format!("SELECT integrity.sync_start({ORG}, '', '1', 'crm', '{{}}')"),
                "22023",
            ),
            (
                format!("SELECT integrity.sync_start({ORG}, 'c', '1', 'crm', NULL)"),
                "22004",
            ),
            (
                format!("SELECT integrity.sync_start({ORG}, 'c', '1', 'crm', '{{}}', '0')"),
                "22023",
            ),
            (
                format!("SELECT integrity.sync_succeeded({ORG}, 'c', 'none', 'crm', 'x')"),
                "55000",
            ),
            (
                format!("SELECT integrity.sync_succeeded({ORG}, 'customer', '1', 'crm', '')"),
                "22023",
            ),
            (
                format!("SELECT integrity.sync_failed({ORG}, 'c', 'none', 'crm', 'x')"),
                "55000",
            ),
            (
                format!("SELECT integrity.sync_lookup({ORG}, 'crm', NULL)"),
                "22004",
            ),
            (
                format!("SELECT integrity.sync_succeeded({ORG}, 'customer', '1', 'crm', 'ext-1', attempt => 0)"),
                "22023",
            ),
            (
                format!("SELECT integrity.sync_failed({ORG}, 'customer', '1', 'crm', 'x', attempt => -1)"),
                "22023",
            ),
        ] {
            assert_eq!(sqlstate(&sql), state, "{sql}");
        }
    }

    /// A caller naming an attempt a later `sync_start` took over is told
    /// `lease_lost` and writes nothing; the current attempt settles.
    #[pg_test]
    fn a_late_caller_naming_its_attempt_changes_nothing() {
        assert_eq!(start("9", r#"{"v": "A"}"#)["attempt"], 1);
        Spi::run("UPDATE integrity.sync_links SET locked_until = now() - interval '1 second'")
            .unwrap();
        let b = start("9", r#"{"v": "B"}"#);
        assert_eq!(
            (b["action"].as_str(), b["attempt"].as_i64()),
            (Some("create"), Some(2))
        );
        let row = || {
            text("SELECT concat_ws(',', status, external_id, pending_fingerprint IS NOT NULL, locked_until IS NOT NULL, attempts) FROM integrity.sync_links")
        };
        let before = row();
        let late = json(&format!(
            "SELECT integrity.sync_succeeded({ORG}, 'customer', '9', 'crm', 'ext-9', attempt => 1)"
        ));
        assert_eq!(
            (
                late["ok"].as_bool(),
                late["reason"].as_str(),
                late["attempt"].as_i64()
            ),
            (Some(false), Some("lease_lost"), Some(2))
        );
        let late = json(&format!(
            "SELECT integrity.sync_failed({ORG}, 'customer', '9', 'crm', 'x', attempt => 1)"
        ));
        assert_eq!(late["reason"], "lease_lost");
        assert_eq!(row(), before);
        assert_eq!(before, "syncing,t,t,2");
        let ok = json(&format!(
            "SELECT integrity.sync_succeeded({ORG}, 'customer', '9', 'crm', 'ext-9', attempt => 2)"
        ));
        assert_eq!(ok["ok"], true);
        assert_eq!(start("9", r#"{"v": "B"}"#)["action"], "skip");
        // A late caller after the link was synced is told which external id
        // it holds.
        let late = json(&format!(
            "SELECT integrity.sync_succeeded({ORG}, 'customer', '9', 'crm', 'ext-other', attempt => 1)"
        ));
        assert_eq!(
            (late["reason"].as_str(), late["external_id"].as_str()),
            (Some("lease_lost"), Some("ext-9"))
        );
        assert_eq!(start("9", r#"{"v": "B"}"#)["action"], "skip");
    }

    fn linked(integration: &str, entity_type: &str, id: &str) {
        Spi::run(&format!(
            "SELECT integrity.sync_start({ORG}, '{entity_type}', '{id}', '{integration}', '{{}}');
             SELECT integrity.sync_succeeded({ORG}, '{entity_type}', '{id}', '{integration}', 'x-{id}')"
        ))
        .unwrap();
    }

    #[pg_test]
    fn find_orphans_looks_in_a_read_only_transaction_and_marks_only_in_a_writable_one() {
        Spi::run(
            "CREATE TABLE fr_customers (id bigint PRIMARY KEY);
             INSERT INTO fr_customers VALUES (1);",
        )
        .unwrap();
        for id in ["1", "2"] {
            linked("fr", "customer", id);
        }
        // The SQLSTATE helper is created while the transaction may write.
        assert_eq!(sqlstate("SELECT 1"), "00000");
        // The entities may be read through a view; an index or a sequence
        // is refused by name (42809), not read as if it held no entity.
        Spi::run(
            "CREATE VIEW fr_customers_v AS SELECT * FROM fr_customers;
             CREATE SEQUENCE fr_seq;",
        )
        .unwrap();
        assert_eq!(
            text(
                "SELECT string_agg(entity_id || ':' || reason, ',')
                    FROM integrity.find_orphans('fr', 'fr_customers_v')"
            ),
            "2:missing"
        );
        for (rel, what) in [("fr_customers_pkey", "an index"), ("fr_seq", "a sequence")] {
            let call = format!("SELECT * FROM integrity.find_orphans('fr', '{rel}')");
            assert_eq!(sqlstate(&call), "42809", "{rel}");
            let m = crate::testutil::error_message(&call);
            assert!(
                m.contains(&format!(
                    "entity_table: public.{rel} is {what}, not a table or view"
                )),
                "{m}"
            );
        }
        // As on a hot standby: looking only is a read, and works there.
        Spi::run("SET LOCAL transaction_read_only = on").unwrap();
        assert_eq!(
            text(
                "SELECT string_agg(entity_id || ':' || reason || ':' || status, ',')
                    FROM integrity.find_orphans('fr', 'fr_customers')"
            ),
            "2:missing:synced"
        );
        assert_eq!(
            sqlstate("SELECT * FROM integrity.find_orphans('fr', 'fr_customers', mark => true)"),
            "25006"
        );
    }

    #[pg_test]
    fn find_orphans_reports_missing_and_soft_deleted_entities_and_marks_them() {
        Spi::run(
            "CREATE TABLE fo_customers (id bigint PRIMARY KEY, gone_at timestamptz);
             INSERT INTO fo_customers VALUES (1, NULL), (2, now()), (3, NULL);
             CREATE TABLE \"Fo Odd\" (\"Key\" text PRIMARY KEY, \"Off\" boolean);
             INSERT INTO \"Fo Odd\" VALUES ('a', false), ('b', true), ('c', NULL);",
        )
        .unwrap();
        for id in ["1", "2", "3", "4"] {
            linked("fo", "customer", id);
        }
        let found = |args: &str| {
            text(&format!(
                "SELECT coalesce(string_agg(entity_id || ':' || reason || ':' || status, ',' ORDER BY entity_id), '')
                   FROM integrity.find_orphans({args})"
            ))
        };
        assert_eq!(
            found("'fo', 'fo_customers', 'id', 'gone_at'"),
            "2:deleted:synced,4:missing:synced"
        );
        // Without a soft-delete column only the missing one is an orphan.
        assert_eq!(found("'fo', 'fo_customers'"), "4:missing:synced");
        assert_eq!(
            found("'fo', 'fo_customers', 'id', 'gone_at', mark => true"),
            "2:deleted:orphaned,4:missing:orphaned"
        );
        assert_eq!(json("SELECT integrity.sync_health('fo')")["orphaned"], 2);
        // Marked once: reported again as it stands, not marked twice.
        assert_eq!(
            one::<i64>("SELECT count(*) FROM integrity.find_orphans('fo', 'fo_customers', 'id', 'gone_at', mark => true) WHERE status = 'orphaned'"),
            Some(2)
        );
        // A quoted table with a boolean soft-delete flag; NULL counts as live.
        for id in ["a", "b", "c", "d"] {
            linked("fo-odd", "thing", id);
        }
        assert_eq!(
            found("'fo-odd', '\"Fo Odd\"', 'Key', 'Off'"),
            "b:deleted:synced,d:missing:synced"
        );
        // Two entity types in one integration: which is meant must be said.
        linked("fo", "invoice", "1");
        assert_eq!(
            sqlstate("SELECT * FROM integrity.find_orphans('fo', 'fo_customers')"),
            "22023"
        );
        assert!(crate::testutil::error_message(
            "SELECT * FROM integrity.find_orphans('fo', 'fo_customers')"
        )
        .contains("customer, invoice"));
        assert_eq!(found("'fo', 'fo_customers', of_type => 'invoice'"), "");
        // No links at all: nothing.
        assert_eq!(found("'none', 'fo_customers'"), "");
        // Rows of other integrations are untouched.
        assert_eq!(
            one::<i64>("SELECT count(*) FROM integrity.sync_links WHERE integration <> 'fo' AND status = 'orphaned'"),
            Some(0)
        );
        for (sql, state) in [
            (
                "SELECT * FROM integrity.find_orphans(NULL, 'fo_customers')",
                "22004",
            ),
            (
                "SELECT * FROM integrity.find_orphans('', 'fo_customers')",
                "22023",
            ),
            ("SELECT * FROM integrity.find_orphans('fo', NULL)", "22004"),
            (
                "SELECT * FROM integrity.find_orphans('fo', 'fo_nope')",
                "42P01",
            ),
            (
                "SELECT * FROM integrity.find_orphans_by_oid('fo', 0)",
                "42P01",
            ),
            (
                "SELECT * FROM integrity.find_orphans('fo', 'fo_customers', 'nope')",
                "42703",
            ),
            (
                "SELECT * FROM integrity.find_orphans('fo', 'fo_customers', NULL)",
                "22004",
            ),
            (
                "SELECT * FROM integrity.find_orphans('fo', 'fo_customers', 'id', 'nope')",
                "42703",
            ),
            (
                "SELECT * FROM integrity.find_orphans('fo', 'fo_customers', 'id', of_type => '')",
                "22023",
            ),
            (
                "SELECT * FROM integrity.find_orphans('fo', 'fo_customers', of_type => 'customer', mark => NULL)",
                "22004",
            ),
        ] {
            assert_eq!(sqlstate(sql), state, "{sql}");
        }
    }

    #[pg_test]
    fn find_orphans_marks_no_link_being_synced_nor_rows_row_security_hides() {
        Spi::run(
            "CREATE TABLE fo_people (id bigint PRIMARY KEY, tenant text);
             INSERT INTO fo_people VALUES (1, 'a'), (2, 'b');",
        )
        .unwrap();
        for id in ["1", "2"] {
            linked("fp", "person", id);
        }
        // 3 is being synced now (say, it was just restored and re-pushed):
        // reported, not marked; 4 is settled and gone: marked.
        Spi::run(&format!(
            "SELECT integrity.sync_start({ORG}, 'person', '3', 'fp', '{{}}')"
        ))
        .unwrap();
        linked("fp", "person", "4");
        assert_eq!(
            text(
                "SELECT string_agg(entity_id || ':' || status, ',' ORDER BY entity_id)
                    FROM integrity.find_orphans('fp', 'fo_people', mark => true)"
            ),
            "3:syncing,4:orphaned"
        );
        // Row security hiding tenant b's row from a role: marking refused.
        Spi::run(
            "ALTER TABLE fo_people ENABLE ROW LEVEL SECURITY;
             CREATE POLICY fo_tenant ON fo_people USING (tenant = 'a');
             CREATE ROLE integrity_test_fo;
             GRANT SELECT ON fo_people TO integrity_test_fo;",
        )
        .unwrap();
        Spi::run("SELECT integrity.grant_access('integrity_test_fo')").unwrap();
        Spi::run("SET LOCAL ROLE integrity_test_fo").unwrap();
        assert_eq!(
            sqlstate("SELECT * FROM integrity.find_orphans('fp', 'fo_people', mark => true)"),
            "42501"
        );
        // Looking only is allowed (the hidden row looks missing).
        assert_eq!(
            text(
                "SELECT string_agg(entity_id, ',' ORDER BY entity_id)
                    FROM integrity.find_orphans('fp', 'fo_people')"
            ),
            "2,3,4"
        );
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(
            one::<i64>("SELECT count(*) FROM integrity.sync_links WHERE integration = 'fp' AND status = 'orphaned'"),
            Some(1)
        );
    }
}

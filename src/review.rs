//! The manual review queue: what needs a person, taken by one reviewer at a
//! time (`FOR UPDATE SKIP LOCKED`, by priority then age), with one open
//! item per subject and reason: enqueueing it again folds into the open one.

use crate::errors::{count_arg, required, text_arg};
use crate::jsonb::{Builder, Jsonb};
use crate::plans::{run, Stmt};
use pgrx::datum::{TimestampWithTimeZone, Uuid};
use pgrx::pg_sys;
use pgrx::prelude::*;

pgrx::extension_sql_file!(
    "../sql/review.sql",
    name = "review_tables",
    requires = ["bootstrap"]
);
pgrx::extension_sql_file!(
    "../sql/review_api.sql",
    name = "review_api",
    requires = ["review_tables", review_enqueue, review_take, review_resolve]
);

static ENQUEUE: Stmt = Stmt {
    sql: "INSERT INTO integrity.review_queue AS r
              (org_id, subject_type, subject_id, reason, payload, priority)
          VALUES ($1, $2, $3, $4, $5, $6)
          ON CONFLICT (org_id, subject_type, subject_id, reason) WHERE status IN ('pending', 'in_review')
          DO UPDATE SET occurrences = r.occurrences + 1, payload = EXCLUDED.payload,
                        priority = GREATEST(r.priority, EXCLUDED.priority)
          RETURNING id, xmax <> 0",
    args: &[
        pg_sys::UUIDOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::JSONBOID,
        pg_sys::INT4OID,
    ],
    writes: true,
};

/// Add an item (or fold it into the open one of its subject and reason);
/// `(id, duplicate)`. Used by `review_enqueue` and by the delivery log.
pub fn enqueue_item(
    client: &mut pgrx::spi::SpiClient<'_>,
    org_id: Uuid,
    subject_type: &str,
    subject_id: &str,
    reason: &str,
    payload: Jsonb,
    priority: i32,
) -> (i64, bool) {
    let t = run(
        client,
        &ENQUEUE,
        None,
        &[
            org_id.into(),
            subject_type.into(),
            subject_id.into(),
            reason.into(),
            payload.into(),
            priority.into(),
        ],
    );
    let row = t.first();
    (
        row.get::<i64>(1).ok().flatten().unwrap_or_default(),
        row.get::<bool>(2).ok().flatten().unwrap_or(false),
    )
}

/// Put something in front of a person. `{"id":…,"duplicate":bool}`: an open
/// item of the same subject and reason is counted again, not duplicated.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn review_enqueue(
    org_id: Option<Uuid>,
    subject_type: Option<&str>,
    subject_id: Option<&str>,
    reason: Option<&str>,
    payload: default!(Option<Jsonb>, "'{}'"),
    priority: default!(Option<i32>, "0"),
) -> Jsonb {
    const F: &str = "integrity.review_enqueue";
    let org_id = required(org_id, F, "org_id");
    let subject_type = text_arg(F, "subject_type", subject_type, 255);
    let subject_id = text_arg(F, "subject_id", subject_id, 255);
    let reason = text_arg(F, "reason", reason, 255);
    let payload = payload.unwrap_or_else(|| Jsonb::from_text("{}"));
    let (id, duplicate) = Spi::connect_mut(|client| {
        enqueue_item(
            client,
            org_id,
            subject_type,
            subject_id,
            reason,
            payload,
            priority.unwrap_or(0),
        )
    });
    Builder::new()
        .begin_object()
        .key("id")
        .int(id)
        .key("duplicate")
        .bool(duplicate)
        .end()
        .finish()
}

static TAKE: Stmt = Stmt {
    sql: "UPDATE integrity.review_queue r
             SET status = 'in_review', assigned_to = $1, taken_at = pg_catalog.now()
           WHERE r.id = ANY (ARRAY(
              SELECT id FROM integrity.review_queue WHERE status = 'pending'
               ORDER BY priority DESC, id LIMIT $2 FOR UPDATE SKIP LOCKED))
          RETURNING r.id, r.org_id, r.subject_type, r.subject_id, r.reason, r.payload, r.priority,
                    r.occurrences, r.created_at",
    args: &[pg_sys::TEXTOID, pg_sys::INT4OID],
    writes: true,
};

/// Take up to `n` pending items for `reviewer`: highest priority, then
/// oldest; items another reviewer is taking at the same moment are skipped.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn review_take(
    reviewer: Option<&str>,
    n: default!(Option<i32>, "1"),
) -> TableIterator<
    'static,
    (
        name!(id, i64),
        name!(org_id, Uuid),
        name!(subject_type, String),
        name!(subject_id, String),
        name!(reason, String),
        name!(payload, Option<Jsonb>),
        name!(priority, i32),
        name!(occurrences, i32),
        name!(created_at, TimestampWithTimeZone),
    ),
> {
    const F: &str = "integrity.review_take";
    let reviewer = text_arg(F, "reviewer", reviewer, 255);
    let n = count_arg(
        F,
        "n",
        n,
        1..=1000,
        "Take a few items at a time, e.g. n => 10.",
    );
    let rows = Spi::connect_mut(|client| {
        let t = run(client, &TAKE, None, &[reviewer.into(), n.into()]);
        t.map(|r| {
            let payload = r.get::<Jsonb>(6).ok().flatten().map(Jsonb::kept);
            (
                r.get::<i64>(1).ok().flatten().unwrap_or_default(),
                r.get::<Uuid>(2)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| crate::errors::bug("review org_id")),
                r.get::<String>(3).ok().flatten().unwrap_or_default(),
                r.get::<String>(4).ok().flatten().unwrap_or_default(),
                r.get::<String>(5).ok().flatten().unwrap_or_default(),
                payload,
                r.get::<i32>(7).ok().flatten().unwrap_or_default(),
                r.get::<i32>(8).ok().flatten().unwrap_or(1),
                r.get::<TimestampWithTimeZone>(9)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| crate::errors::bug("review created_at")),
            )
        })
        .collect::<Vec<_>>()
    });
    TableIterator::new(rows)
}

static RESOLVE: Stmt = Stmt {
    sql: "WITH r AS (
              UPDATE integrity.review_queue
                 SET status = CASE WHEN $3 THEN 'dismissed' ELSE 'resolved' END::integrity.review_status,
                     resolved_at = pg_catalog.now(), resolution = $2
               WHERE id = $1 AND status IN ('pending', 'in_review')
           RETURNING status::text)
          SELECT (SELECT status FROM r),
                 (SELECT status::text FROM integrity.review_queue WHERE id = $1)",
    args: &[pg_sys::INT8OID, pg_sys::TEXTOID, pg_sys::BOOLOID],
    writes: true,
};

/// Close an item: resolved, or dismissed. `{"ok":false,"reason":
/// "not_found"|"already_resolved"}` as data.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn review_resolve(
    id: Option<i64>,
    resolution: Option<&str>,
    dismissed: default!(Option<bool>, "false"),
) -> Jsonb {
    const F: &str = "integrity.review_resolve";
    let id = required(id, F, "id");
    let resolution = text_arg(F, "resolution", resolution, 255);
    let dismissed = dismissed.unwrap_or(false);
    let (done, before) = Spi::connect_mut(|client| {
        let t = run(
            client,
            &RESOLVE,
            None,
            &[id.into(), resolution.into(), dismissed.into()],
        );
        let row = t.first();
        (
            row.get::<String>(1).ok().flatten(),
            row.get::<String>(2).ok().flatten(),
        )
    });
    let mut b = Builder::new();
    b.begin_object();
    match (done, before) {
        (Some(status), _) => b.key("ok").bool(true).key("status").string(&status),
        (None, None) => b.key("ok").bool(false).key("reason").string("not_found"),
        (None, Some(_)) => b
            .key("ok")
            .bool(false)
            .key("reason")
            .string("already_resolved"),
    };
    b.key("id").int(id).end().finish()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testutil::{json, one, sqlstate, text};
    use pgrx::prelude::*;

    const ORG: &str = "'0000000a-0000-0000-0000-000000000000'";

    #[pg_test]
    fn review_items_dedupe_and_are_taken_once_in_priority_order() {
        let a = json(&format!(
            "SELECT integrity.review_enqueue({ORG}, 'call', '1', 'no appointment', '{{\"n\": 1}}')"
        ));
        assert_eq!(a["duplicate"], false);
        let again = json(&format!(
            "SELECT integrity.review_enqueue({ORG}, 'call', '1', 'no appointment', '{{\"n\": 2}}', 5)"
        ));
        assert_eq!(again["duplicate"], true);
        assert_eq!(again["id"], a["id"]);
        Spi::run(&format!(
            "SELECT integrity.review_enqueue({ORG}, 'call', '2', 'no appointment');
             SELECT integrity.review_enqueue({ORG}, 'call', '3', 'no appointment', priority => 1);"
        ))
        .unwrap();
        // Priority 5 (the folded item), then 1, then the oldest of the rest.
        assert_eq!(
            text("SELECT string_agg(subject_id || ':' || occurrences, ',' ORDER BY priority DESC, id)
                    FROM integrity.review_take('ann', 2)"),
            "1:2,3:1"
        );
        assert_eq!(
            text("SELECT string_agg(subject_id, ',') FROM integrity.review_take('bob', 10)"),
            "2"
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM integrity.review_take('bob')"),
            Some(0)
        );
        let id = a["id"].as_i64().unwrap();
        let r = json(&format!(
            "SELECT integrity.review_resolve({id}, 'booked by phone')"
        ));
        assert_eq!(
            (r["ok"].clone(), r["status"].clone()),
            (true.into(), "resolved".into())
        );
        let r = json(&format!(
            "SELECT integrity.review_resolve({id}, 'again', true)"
        ));
        assert_eq!(r["reason"], "already_resolved");
        assert_eq!(
            json("SELECT integrity.review_resolve(-1, 'x')")["reason"],
            "not_found"
        );
        // Resolved: the same subject and reason is a new item.
        assert_eq!(
            json(&format!(
                "SELECT integrity.review_enqueue({ORG}, 'call', '1', 'no appointment')"
            ))["duplicate"],
            false
        );
        for (sql, state) in [
            (
                format!("SELECT integrity.review_enqueue(NULL, 'call', '1', 'r')"),
                "22004",
            ),
            (
                format!("SELECT integrity.review_enqueue({ORG}, '', '1', 'r')"),
                "22023",
            ),
            (
                format!("SELECT integrity.review_enqueue({ORG}, 'call', NULL, 'r')"),
                "22004",
            ),
            (
                format!("SELECT integrity.review_enqueue({ORG}, 'call', '1', '')"),
                "22023",
            ),
            ("SELECT integrity.review_take(NULL)".to_string(), "22004"),
            (
                "SELECT integrity.review_take('ann', 0)".to_string(),
                "22023",
            ),
            (
                "SELECT integrity.review_take('ann', 1000000)".to_string(),
                "22023",
            ),
            (
                "SELECT integrity.review_resolve(NULL, 'x')".to_string(),
                "22004",
            ),
            (
                "SELECT integrity.review_resolve(1, NULL)".to_string(),
                "22004",
            ),
        ] {
            assert_eq!(sqlstate(&sql), state, "{sql}");
        }
    }
}

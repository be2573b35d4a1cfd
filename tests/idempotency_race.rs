//! Idempotency keys from real clients: 32 connections send the same key at
//! the same moment, each in one transaction with its business insert;
//! exactly one insert survives and every other client replays its answer.
//! Again with the first holder rolling back. And a multi-transaction holder
//! whose backend dies mid-work is resumed from its recovery point once its
//! lease runs out.

mod common;

use common::Cluster;
use serde_json::Value;
use std::sync::{Arc, Barrier};
use std::time::Duration;

const ORG: &str = "0000000a-0000-0000-0000-000000000000";
const CLIENTS: usize = 32;

fn setup(cluster: &Cluster) {
    cluster
        .connect()
        .batch_execute(
            "CREATE TABLE charges (id serial PRIMARY KEY, key text NOT NULL, amount int NOT NULL)",
        )
        .unwrap();
}

fn begin(c: &mut postgres::Client, key: &str) -> Value {
    let s: String = c
        .query_one(
            &format!(
                "SELECT integrity.idem_begin('{ORG}', 'POST /charges', '{key}', '{{\"amount\": 100}}')::text"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    serde_json::from_str(&s).unwrap()
}

/// One request in single-transaction mode: begin, and if started, insert
/// the charge and complete with its id. Returns (outcome, response).
fn request(
    c: &mut postgres::Client,
    key: &str,
    rollback_after: Option<Duration>,
) -> (String, Value) {
    c.batch_execute("BEGIN").unwrap();
    let r = begin(c, key);
    let outcome = r["outcome"].as_str().unwrap_or_default().to_string();
    if outcome != "started" {
        c.batch_execute("COMMIT").unwrap();
        return (outcome, r["response"].clone());
    }
    let id: i32 = c
        .query_one(
            "INSERT INTO charges (key, amount) VALUES ($1, 100) RETURNING id",
            &[&key],
        )
        .unwrap()
        .get(0);
    if let Some(wait) = rollback_after {
        std::thread::sleep(wait);
        c.batch_execute("ROLLBACK").unwrap();
        return ("rolled_back".into(), Value::Null);
    }
    let s: String = c
        .query_one(
            &format!(
                "SELECT integrity.idem_complete('{ORG}', 'POST /charges', '{key}', 201, jsonb_build_object('charge_id', {id}))::text"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    let done: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(done["ok"], true, "{done}");
    c.batch_execute("COMMIT").unwrap();
    (outcome, serde_json::json!({ "charge_id": id }))
}

fn charges(cluster: &Cluster, key: &str) -> i64 {
    cluster
        .connect()
        .query_one("SELECT count(*) FROM charges WHERE key = $1", &[&key])
        .unwrap()
        .get(0)
}

#[test]
fn simultaneous_duplicates_take_effect_once_and_replay() {
    simultaneous_duplicates(&Cluster::start());
}

/// The same race on a server that loads the library at start
/// (`shared_preload_libraries`, as README recommends for servers that open
/// many short connections): its settings exist before any call, and the
/// guarantee is the same.
#[test]
fn preloaded_the_library_keeps_the_guarantee() {
    let cluster = Cluster::start_with(&["shared_preload_libraries=integrity"]);
    // A fresh connection that has called nothing of ours: only a preloaded
    // library has defined the setting (else SHOW raises 42704).
    let cap: String = cluster
        .connect()
        .query_one("SHOW integrity.retry_cap", &[])
        .unwrap()
        .get(0);
    assert_eq!(cap, "1h");
    simultaneous_duplicates(&cluster);
}

/// 32 clients send one key at the same moment, each in one transaction
/// with its business insert: one starts, the others replay its answer, one
/// charge is stored.
fn simultaneous_duplicates(cluster: &Cluster) {
    setup(cluster);
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let results: Vec<(String, Value)> = (0..CLIENTS)
        .map(|_| {
            let ci = cluster.conninfo();
            let b = barrier.clone();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&ci, postgres::NoTls).unwrap();
                b.wait();
                request(&mut c, "same-moment", None)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    let started: Vec<&(String, Value)> = results.iter().filter(|r| r.0 == "started").collect();
    assert_eq!(started.len(), 1, "{results:?}");
    let answer = &started[0].1;
    for (outcome, response) in &results {
        assert!(outcome == "started" || outcome == "replay", "{outcome}");
        assert_eq!(response, answer, "every client sees the one answer");
    }
    assert_eq!(charges(cluster, "same-moment"), 1);
}

#[test]
fn duplicates_of_a_rolled_back_request_start_once() {
    let cluster = Cluster::start();
    setup(&cluster);
    // The first holder begins and inserts, keeps its transaction open while
    // the others arrive (they wait on its row), then rolls back.
    let first = {
        let ci = cluster.conninfo();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&ci, postgres::NoTls).unwrap();
            request(&mut c, "rolled-back", Some(Duration::from_millis(700)))
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let results: Vec<(String, Value)> = (0..CLIENTS - 1)
        .map(|_| {
            let ci = cluster.conninfo();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&ci, postgres::NoTls).unwrap();
                request(&mut c, "rolled-back", None)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(first.join().unwrap().0, "rolled_back");
    let started: Vec<&(String, Value)> = results.iter().filter(|r| r.0 == "started").collect();
    assert_eq!(
        started.len(),
        1,
        "exactly one duplicate starts after the rollback: {results:?}"
    );
    for (outcome, response) in &results {
        assert!(outcome == "started" || outcome == "replay", "{outcome}");
        assert_eq!(response, &started[0].1);
    }
    assert_eq!(
        charges(&cluster, "rolled-back"),
        1,
        "no trace of the rolled-back charge"
    );
}

#[test]
fn a_dead_holder_is_resumed_from_its_recovery_point() {
    let cluster = Cluster::start();
    let mut a = cluster.connect();
    let key = "multi-step";
    let r: String = a
        .query_one(
            &format!("SELECT integrity.idem_begin('{ORG}', 'POST /charges', '{key}', '{{}}', lease => '1 second')::text"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(r.contains(r#""started""#), "{r}");
    a.batch_execute(&format!(
        "SELECT integrity.idem_checkpoint('{ORG}', 'POST /charges', '{key}', 'payment_captured')"
    ))
    .unwrap();
    // A dies in the middle of its next step.
    let pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let mut b = cluster.connect();
    let killed: bool = b
        .query_one("SELECT pg_terminate_backend($1, 5000)", &[&pid])
        .unwrap()
        .get(0);
    assert!(killed);
    let begin_b = |b: &mut postgres::Client| -> Value {
        let s: String = b
            .query_one(
                &format!(
                    "SELECT integrity.idem_begin('{ORG}', 'POST /charges', '{key}', '{{}}')::text"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        serde_json::from_str(&s).unwrap()
    };
    // Until A's lease runs out, B is told to come back later ...
    let wait = begin_b(&mut b);
    assert_eq!(wait["outcome"], "in_progress", "{wait}");
    let ms = wait["retry_after_ms"].as_u64().unwrap();
    assert!(ms <= 1000, "{ms}");
    std::thread::sleep(Duration::from_millis(ms + 50));
    // ... then resumes where A got to.
    let resumed = begin_b(&mut b);
    assert_eq!(resumed["outcome"], "resumed", "{resumed}");
    assert_eq!(resumed["recovery_point"], "payment_captured");
    assert_eq!(resumed["attempt"], 2);
    b.batch_execute(&format!(
        "SELECT integrity.idem_complete('{ORG}', 'POST /charges', '{key}', 200, '{{\"receipt\": \"r_1\"}}')"
    ))
    .unwrap();
    let replay = begin_b(&mut b);
    assert_eq!(replay["outcome"], "replay");
    assert_eq!(replay["response"]["receipt"], "r_1");
}

#[test]
fn a_key_left_processing_is_written_at_commit_as_whoever_began_it() {
    // Multi-transaction use: the key's row is written at COMMIT. It is
    // written as the role, and under the integrity.org_id, idem_begin ran
    // with, even when a SECURITY DEFINER function or a function's SET
    // clause gave it those and has returned by then.
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE ROLE api_owner;
         SELECT integrity.grant_access('api_owner');
         CREATE ROLE app;
         SELECT integrity.grant_access('app');
         REVOKE INSERT, UPDATE ON integrity.idempotency_keys FROM app;
         CREATE SCHEMA api;
         GRANT USAGE ON SCHEMA api TO app;
         CREATE FUNCTION api.begin_charge(k text) RETURNS jsonb LANGUAGE sql SECURITY DEFINER
           SET search_path = pg_catalog
           AS $$ SELECT integrity.idem_begin('0000000a-0000-0000-0000-000000000000', 'POST /charges', k, '{}') $$;
         ALTER FUNCTION api.begin_charge(text) OWNER TO api_owner;
         CREATE ROLE tenant_app;
         SELECT integrity.grant_access('tenant_app');
         GRANT USAGE ON SCHEMA api TO tenant_app;
         CREATE FUNCTION api.begin_for_b(k text) RETURNS jsonb LANGUAGE sql
           SET integrity.org_id = '0000000b-0000-0000-0000-000000000000'
           AS $$ SELECT integrity.idem_begin('0000000b-0000-0000-0000-000000000000', 'POST /charges', k, '{}') $$;",
    )
    .unwrap();
    // The app may not write the keys table itself; its definer may.
    let mut app = cluster.connect();
    app.batch_execute("SET ROLE app").unwrap();
    // `sql` begins a new key in a transaction that then commits.
    let started = |c: &mut postgres::Client, sql: &str| {
        let mut tx = c.transaction().unwrap();
        let r: Value = tx.query_one(sql, &[]).unwrap().get(0);
        assert_eq!(r["outcome"], "started", "{r}");
        tx.commit().unwrap();
    };
    started(&mut app, "SELECT api.begin_charge('definer')");
    // A session scoped to tenant a begins a key of tenant b through a
    // function that sets the scope for its call.
    let mut t = cluster.connect();
    t.batch_execute(
        "SET ROLE tenant_app; SET integrity.org_id = '0000000a-0000-0000-0000-000000000000'",
    )
    .unwrap();
    started(&mut t, "SELECT api.begin_for_b('tenant')");
    let rows: Vec<(String, String, i64)> = c
        .query(
            "SELECT key, status, (EXTRACT(epoch FROM expires_at - created_at))::int8
               FROM integrity.idempotency_keys WHERE key IN ('definer', 'tenant') ORDER BY key",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("definer".to_string(), "processing".to_string(), 86400),
            ("tenant".to_string(), "processing".to_string(), 86400)
        ]
    );
}

#[test]
fn a_hot_standby_replays_a_completed_key_and_refuses_a_new_one() {
    // Read replicas serve retries of completed requests: a replay writes
    // nothing. A new key needs a write, refused as any write is there.
    let primary = Cluster::start();
    let mut p = primary.connect();
    p.batch_execute(&format!(
        "SELECT integrity.idem_begin('{ORG}', 'POST /charges', 'done-1', '{{\"amount\": 5}}');
         SELECT integrity.idem_complete('{ORG}', 'POST /charges', 'done-1', 201, '{{\"charge\": \"ch_1\"}}');"
    ))
    .unwrap();
    let standby = primary.standby();
    let mut s = standby.connect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while s
        .query_one(
            "SELECT count(*) FROM integrity.idempotency_keys WHERE key = 'done-1'",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the standby did not catch up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let in_recovery: bool = s
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery);
    let replay: Value = s
        .query_one(
            &format!(
                "SELECT integrity.idem_begin('{ORG}', 'POST /charges', 'done-1', '{{\"amount\": 5}}')"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        (
            replay["outcome"].clone(),
            replay["response_code"].clone(),
            replay["response"]["charge"].clone()
        ),
        ("replay".into(), 201.into(), "ch_1".into()),
        "{replay}"
    );
    let new = s.query_one(
        &format!("SELECT integrity.idem_begin('{ORG}', 'POST /charges', 'new-1', '{{}}')"),
        &[],
    );
    assert_eq!(common::sqlstate(&new), "25006");
}

#[test]
fn purged_space_reused_by_new_keys_does_not_widen_what_purge_reads() {
    // Purge deletes old keys; a vacuum frees their pages and new keys are
    // written there. The BRIN summaries of those pages' ranges must then
    // describe the new keys only: were the old summaries kept and widened,
    // every later purge would read those ranges though nothing there has
    // expired.
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let fill = |c: &mut postgres::Client, prefix: &str, n: i32, from: &str| {
        c.execute(
            &format!(
                "INSERT INTO integrity.idempotency_keys
                   (org_id, scope, key, fingerprint, status, lease, created_at, expires_at)
                 SELECT '{ORG}', 'POST /x', '{prefix}-' || g, 'f', 'completed', '5 min',
                        now(), {from} + g * interval '1 ms'
                 FROM generate_series(1, {n}) g"
            ),
            &[],
        )
        .unwrap();
    };
    fill(&mut c, "old", 40_000, "now() - interval '2 days'");
    fill(&mut c, "live", 40_000, "now() + interval '1 day'");
    c.execute(
        "SELECT brin_summarize_new_values('integrity.idempotency_keys_expires_idx')",
        &[],
    )
    .unwrap();
    let purged: i64 = c
        .query_one("SELECT integrity.purge_idempotency_keys()", &[])
        .unwrap()
        .get(0);
    assert_eq!(purged, 40_000);
    c.batch_execute("VACUUM integrity.idempotency_keys")
        .unwrap();
    fill(&mut c, "new", 20_000, "now() + interval '2 days'");
    let reused: i64 = c
        .query_one(
            "SELECT count(DISTINCT (ctid::text::point)[0]) FROM integrity.idempotency_keys
             WHERE key LIKE 'new-%'
               AND (ctid::text::point)[0] < (SELECT min((ctid::text::point)[0]) FROM integrity.idempotency_keys WHERE key LIKE 'live-%')",
            &[],
        )
        .unwrap()
        .get(0);
    // The test means something only if new keys filled freed ranges
    // beyond the one range a BRIN scan always reads.
    assert!(reused > 256, "new keys reused {reused} freed pages");
    c.batch_execute("SET enable_seqscan = off").unwrap();
    let plan: serde_json::Value = c
        .query_one(
            "EXPLAIN (ANALYZE, FORMAT JSON)
             SELECT count(*) FROM integrity.idempotency_keys WHERE expires_at < now()",
            &[],
        )
        .unwrap()
        .get(0);
    let scan = &plan[0]["Plan"]["Plans"][0];
    assert_eq!(scan["Node Type"], "Bitmap Heap Scan", "{plan}");
    assert_eq!(scan["Actual Rows"], 0, "{plan}");
    let read = scan["Lossy Heap Blocks"].as_i64().unwrap_or(0)
        + scan["Exact Heap Blocks"].as_i64().unwrap_or(0);
    assert!(
        read < reused,
        "a scan for expired keys read {read} pages, where {reused} pages of new keys should have been skipped: {plan}"
    );
    // A role granted DELETE but not owning the table purges all the same;
    // only the summaries are left as they are.
    c.batch_execute(
        "RESET enable_seqscan;
         CREATE ROLE purger;
         SELECT integrity.grant_access('purger');
         GRANT DELETE ON integrity.idempotency_keys TO purger;
         UPDATE integrity.idempotency_keys SET expires_at = now() - interval '1 hour' WHERE key LIKE 'new-%';
         SET ROLE purger;",
    )
    .unwrap();
    let purged: i64 = c
        .query_one("SELECT integrity.purge_idempotency_keys()", &[])
        .unwrap()
        .get(0);
    assert_eq!(purged, 20_000);
}

//! unique_active's concurrent build from real clients: writers keep
//! inserting while the background worker builds the index; a duplicate that
//! arrives during the build fails it cleanly (no invalid index left, the
//! error on record); a request rolled back builds nothing; callers asking at
//! the same moment are all told of one build.

mod common;

use common::{sqlstate, Cluster};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The build's status once it is done or failed (or after 60 s).
fn settled(c: &mut postgres::Client, id: i64) -> (String, Option<String>, Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c
            .query_one(
                "SELECT status, error, sqlstate FROM integrity.index_builds WHERE id = $1",
                &[&id],
            )
            .unwrap();
        let status: String = r.get(0);
        if status == "done" || status == "failed" || Instant::now() > deadline {
            return (status, r.get(1), r.get(2));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ask(c: &mut postgres::Client, sql: &str) -> serde_json::Value {
    c.query_one(sql, &[]).unwrap().get(0)
}

fn indexes(c: &mut postgres::Client, table: &str) -> Vec<(String, bool)> {
    c.query(
        "SELECT c.relname::text, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          WHERE i.indrelid = $1::text::regclass AND NOT i.indisprimary ORDER BY 1",
        &[&table],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// A cluster with table `people` of `rows` distinct emails (and `extra`
/// SQL after it), and a connection to it.
fn people(rows: i64, extra: &str) -> (Cluster, postgres::Client) {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    c.batch_execute(&format!(
        "CREATE TABLE people (id bigserial PRIMARY KEY, email text, deleted_at timestamptz);
         INSERT INTO people (email) SELECT 'u' || g || '@x.io' FROM generate_series(1, {rows}) g;
         {extra}"
    ))
    .unwrap();
    (cluster, c)
}

#[test]
fn writers_keep_writing_while_the_worker_builds_the_index() {
    let (cluster, mut c) = people(
        300000,
        "INSERT INTO people (email, deleted_at) VALUES ('U1@x.io', now());",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (ci, stop, written) = (cluster.conninfo(), stop.clone(), written.clone());
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&ci, postgres::NoTls).unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    c.execute(
                        "INSERT INTO people (email) VALUES ($1)",
                        &[&format!("w{w}-{n}@x.io")],
                    )
                    .unwrap();
                    n += 1;
                    written.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let r = ask(&mut c, "SELECT integrity.unique_active('people', 'email')");
    assert_eq!(
        (r["status"].clone(), r["concurrently"].clone()),
        ("queued".into(), true.into()),
        "{r}"
    );
    let before = written.load(Ordering::Relaxed);
    let (status, error, _) = settled(&mut c, r["build_id"].as_i64().unwrap());
    let during = written.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(status, "done", "{error:?}");
    assert!(during > 0, "writers were blocked for the whole build");
    assert_eq!(
        indexes(&mut c, "people"),
        vec![("people_email_active_key".to_string(), true)]
    );
    // Every live email is unique, case-insensitively; new duplicates are refused.
    let dup: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT lower(email) FROM people WHERE deleted_at IS NULL
                                    GROUP BY 1 HAVING count(*) > 1) d",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(dup, 0);
    assert_eq!(
        sqlstate(&c.execute("INSERT INTO people (email) VALUES ('U2@X.IO')", &[])),
        "23505"
    );
    assert_eq!(
        ask(&mut c, "SELECT integrity.unique_active('people', 'email')")["status"],
        "exists"
    );
    println!("unique_active: built concurrently while 4 writers inserted {during} rows");
}

#[test]
fn a_duplicate_arriving_during_the_build_fails_it_cleanly() {
    let (cluster, mut c) = people(1000, "");
    // A writer's duplicate, not yet committed when the duplicates are looked for.
    let mut writer = cluster.connect();
    let mut tx = writer.transaction().unwrap();
    tx.execute("INSERT INTO people (email) VALUES ('U7@x.io')", &[])
        .unwrap();
    let r = ask(&mut c, "SELECT integrity.unique_active('people', 'email')");
    assert_eq!(r["status"], "queued", "{r}");
    std::thread::sleep(Duration::from_millis(300));
    tx.commit().unwrap();
    let (status, error, state) = settled(&mut c, r["build_id"].as_i64().unwrap());
    assert_eq!(
        (status.as_str(), state.as_deref()),
        ("failed", Some("23505"))
    );
    assert!(
        error.as_deref().unwrap_or("").contains("u7@x.io"),
        "the error names the value: {error:?}"
    );
    assert_eq!(indexes(&mut c, "people"), vec![], "no invalid index left");
    let again = ask(&mut c, "SELECT integrity.unique_active('people', 'email')");
    assert_eq!(again["reason"], "duplicates");
    assert_eq!(again["duplicates"][0]["value"], "u7@x.io");
}

#[test]
fn a_request_rolled_back_builds_nothing_and_callers_at_once_get_one_build() {
    let (cluster, mut c) = people(50000, "");
    let mut tx = c.transaction().unwrap();
    let r: serde_json::Value = tx
        .query_one("SELECT integrity.unique_active('people', 'email')", &[])
        .unwrap()
        .get(0);
    assert_eq!(r["status"], "queued");
    tx.rollback().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let workers: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'integrity unique_active'",
                &[],
            )
            .unwrap()
            .get(0);
        if workers == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the worker did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(indexes(&mut c, "people"), vec![]);
    let builds: i64 = c
        .query_one("SELECT count(*) FROM integrity.index_builds", &[])
        .unwrap()
        .get(0);
    assert_eq!(builds, 0);
    // Eight callers at the same moment: one build, the others are told of it.
    let answers = cluster.at_once(8, |_, c| {
        c.query_one("SELECT integrity.unique_active('people', 'email')", &[])
            .unwrap()
            .get::<_, serde_json::Value>(0)
    });
    let ids: std::collections::BTreeSet<i64> = answers
        .iter()
        .map(|a| a["build_id"].as_i64().unwrap_or(-1))
        .collect();
    let rows: Vec<String> = c
        .query("SELECT id::text || ' ' || status || ' ' || coalesce(error, '') || ' pid ' || coalesce(pid, 0) FROM integrity.index_builds ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), 1, "one build for all: {answers:?} {rows:?}");
    for a in &answers {
        assert!(
            ["queued", "building"].contains(&a["status"].as_str().unwrap_or("")),
            "{a}"
        );
    }
    let id = *ids.iter().next().unwrap();
    assert_eq!(settled(&mut c, id).0, "done");
    let builds: i64 = c
        .query_one("SELECT count(*) FROM integrity.index_builds", &[])
        .unwrap()
        .get(0);
    assert_eq!(builds, 1);
    assert_eq!(
        indexes(&mut c, "people"),
        vec![("people_email_active_key".to_string(), true)]
    );
}

/// Asks for people.email's index and, before committing, changes the
/// queued build's row with `tamper` ($1: the build's id); the worker still
/// builds exactly what was asked for.
fn tampered_build_builds_what_was_asked(c: &mut postgres::Client, tamper: &str) {
    let mut tx = c.transaction().unwrap();
    let r: serde_json::Value = tx
        .query_one("SELECT integrity.unique_active('people', 'email')", &[])
        .unwrap()
        .get(0);
    assert_eq!(r["status"], "queued", "{r}");
    let id = r["build_id"].as_i64().unwrap();
    tx.execute(tamper, &[&id]).unwrap();
    tx.commit().unwrap();
    assert_eq!(settled(c, id).0, "done");
    assert_eq!(
        indexes(c, "people"),
        vec![("people_email_active_key".to_string(), true)]
    );
}

#[test]
fn the_worker_does_not_run_sql_text_from_its_table() {
    let (_cluster, mut c) = people(1000, "");
    // Callers can write integrity.index_builds; what the worker runs is
    // worked out again from the table and column, never read as SQL.
    tampered_build_builds_what_was_asked(
        &mut c,
        "UPDATE integrity.index_builds SET statement = 'DROP TABLE people' WHERE id = $1",
    );
}

/// The id and pid of the build once its worker is building.
fn building(c: &mut postgres::Client) -> (i64, i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .query_opt(
                "SELECT id, pid FROM integrity.index_builds WHERE status = 'building' AND pid IS NOT NULL",
                &[],
            )
            .unwrap();
        if let Some(r) = r {
            return (r.get(0), r.get(1));
        }
        assert!(Instant::now() < deadline, "no build started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_cancelled_or_terminated_build_is_recorded_and_cleaned_up() {
    let (cluster, mut c) = people(1000, "");
    // A writer's open transaction makes the build wait in its first phase.
    let mut writer = cluster.connect();
    writer
        .batch_execute("BEGIN; INSERT INTO people (email) VALUES ('w1@x.io')")
        .unwrap();
    ask(&mut c, "SELECT integrity.unique_active('people', 'email')");
    let (id, pid) = building(&mut c);
    c.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
    writer.batch_execute("COMMIT").unwrap();
    let (status, _, state) = settled(&mut c, id);
    assert_eq!(
        (status.as_str(), state.as_deref()),
        ("failed", Some("57014"))
    );
    assert_eq!(
        indexes(&mut c, "people"),
        vec![],
        "the cancelled build's index is dropped"
    );
    // Terminated (a fast shutdown does the same): the worker ends at once.
    writer
        .batch_execute("BEGIN; INSERT INTO people (email) VALUES ('w2@x.io')")
        .unwrap();
    ask(&mut c, "SELECT integrity.unique_active('people', 'email')");
    let (id, pid) = building(&mut c);
    c.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        assert!(
            Instant::now() < deadline,
            "the terminated worker kept running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.batch_execute("COMMIT").unwrap();
    // The next call finds the dead build, marks it failed, drops its
    // invalid index and builds again.
    let again = ask(&mut c, "SELECT integrity.unique_active('people', 'email')");
    assert_eq!(again["status"], "queued", "{again}");
    let dead: String = c
        .query_one(
            "SELECT status || ': ' || error FROM integrity.index_builds WHERE id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(dead, "failed: the worker ended without finishing the build");
    assert_eq!(
        settled(&mut c, again["build_id"].as_i64().unwrap()).0,
        "done"
    );
    assert_eq!(
        indexes(&mut c, "people"),
        vec![("people_email_active_key".to_string(), true)]
    );
}

#[test]
fn a_build_asked_for_in_a_serializable_transaction_is_built() {
    // Migration tools wrap each migration in a transaction, and databases
    // may default to SERIALIZABLE: the worker must still see the request
    // once the asking transaction has committed.
    let (cluster, mut c) = people(20000, "");
    c.batch_execute(
        "ALTER DATABASE postgres SET default_transaction_isolation = 'serializable';
         ALTER DATABASE postgres SET lock_timeout = '100ms'",
    )
    .unwrap();
    let mut c = cluster.connect();
    let mut tx = c.transaction().unwrap();
    let r: serde_json::Value = tx
        .query_one("SELECT integrity.unique_active('people', 'email')", &[])
        .unwrap()
        .get(0);
    assert_eq!(r["status"], "queued", "{r}");
    let id = r["build_id"].as_i64().unwrap();
    // Long enough for the worker to start and wait (past lock_timeout).
    std::thread::sleep(Duration::from_millis(800));
    tx.commit().unwrap();
    assert_eq!(settled(&mut c, id), ("done".to_string(), None, None));
    assert_eq!(
        indexes(&mut c, "people"),
        vec![("people_email_active_key".to_string(), true)]
    );
}

#[test]
fn two_columns_of_one_table_asked_for_together_are_both_built() {
    let (_cluster, mut c) = people(
        200000,
        "ALTER TABLE people ADD COLUMN handle text; UPDATE people SET handle = 'h' || id;",
    );
    let mut tx = c.transaction().unwrap();
    let mut ids = Vec::new();
    for col in ["email", "handle"] {
        let r: serde_json::Value = tx
            .query_one("SELECT integrity.unique_active('people', $1)", &[&col])
            .unwrap()
            .get(0);
        assert_eq!(r["status"], "queued", "{r}");
        ids.push(r["build_id"].as_i64().unwrap());
    }
    tx.commit().unwrap();
    for id in ids {
        assert_eq!(
            settled(&mut c, id),
            ("done".to_string(), None, None),
            "build {id}"
        );
    }
    assert_eq!(
        indexes(&mut c, "people"),
        vec![
            ("people_email_active_key".to_string(), true),
            ("people_handle_active_key".to_string(), true)
        ]
    );
}

#[test]
fn rows_of_index_builds_written_by_callers_neither_redirect_nor_block_a_build() {
    let (_cluster, mut c) = people(
        1000,
        "CREATE TABLE other (secret text, deleted_at timestamptz);",
    );
    // A forged "building" row naming a long-lived process that is no
    // build's worker does not make callers believe a build is under way.
    c.execute(
        "INSERT INTO integrity.index_builds (table_oid, table_name, column_name, index_name,
                statement, requested_by, status, pid)
         SELECT 'people'::regclass, 'people', 'email', 'people_email_active_key', '', 10,
                'building', pid
           FROM pg_stat_activity WHERE backend_type = 'checkpointer'",
        &[],
    )
    .unwrap();
    // A queued build whose row is pointed at another table and column
    // before the worker reads it still builds what was asked for.
    tampered_build_builds_what_was_asked(
        &mut c,
        "UPDATE integrity.index_builds
            SET table_oid = 'other'::regclass, column_name = 'secret', deleted_column = NULL
          WHERE id = $1",
    );
    assert_eq!(indexes(&mut c, "other"), vec![]);
}

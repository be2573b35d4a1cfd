//! Sync state from real clients: 16 connections start syncing the same
//! entity at the same moment (exactly one gets `create`, the rest
//! `in_progress`), and two entities race to link the same external id (one
//! wins, the other gets `external_id_conflict`, never a raw 23505); under
//! REPEATABLE READ, 40001 instead of 23505; a worker reporting after its
//! lease was taken over changes nothing.

mod common;

use common::Cluster;

const ORG: &str = "0000000a-0000-0000-0000-000000000000";

#[test]
fn one_of_sixteen_creates_the_customer() {
    let cluster = Cluster::start();
    for round in 0..10 {
        let actions = cluster.at_once(16, move |_, c| {
            let a: serde_json::Value = c
                .query_one(
                    &format!(
                        "SELECT integrity.sync_start('{ORG}', 'customer', 'c{round}', 'crm', '{{\"name\": \"Ann\"}}')"
                    ),
                    &[],
                )
                .unwrap()
                .get(0);
            a["action"].as_str().unwrap().to_string()
        });
        let creates = actions.iter().filter(|a| *a == "create").count();
        let waits = actions.iter().filter(|a| *a == "in_progress").count();
        assert_eq!((creates, waits), (1, 15), "round {round}: {actions:?}");
    }
    println!("sync race: 10 rounds of 16 clients, exactly one create each");
}

#[test]
fn two_customers_racing_for_one_external_id() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    for round in 0..20 {
        c.batch_execute(&format!(
            "SELECT integrity.sync_start('{ORG}', 'customer', 'a{round}', 'crm', '{{}}');
             SELECT integrity.sync_start('{ORG}', 'customer', 'b{round}', 'crm', '{{}}');"
        ))
        .unwrap();
        let answers = cluster.at_once(2, move |i, c| {
            let who = if i == 0 { "a" } else { "b" };
            c.query_one(
                &format!(
                    "SELECT integrity.sync_succeeded('{ORG}', 'customer', '{who}{round}', 'crm', 'ext-{round}')"
                ),
                &[],
            )
            .map(|r| r.get::<_, serde_json::Value>(0))
            .map_err(|e| e.to_string())
        });
        let answers: Vec<serde_json::Value> = answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|e| panic!("round {round}: an error, not data: {e}")))
            .collect();
        let ok = answers.iter().filter(|a| a["ok"] == true).count();
        let conflicts = answers
            .iter()
            .filter(|a| a["reason"] == "external_id_conflict")
            .count();
        assert_eq!((ok, conflicts), (1, 1), "round {round}: {answers:?}");
        let holders: i64 = c
            .query_one(
                "SELECT count(*) FROM integrity.sync_links WHERE external_id = $1",
                &[&format!("ext-{round}")],
            )
            .unwrap()
            .get(0);
        assert_eq!(holders, 1);
    }
    println!("sync race: 20 external ids raced for by two customers, one link each");
}

/// Under REPEATABLE READ a transaction's snapshot is older than the lock
/// it waits for: a link another transaction committed after the snapshot
/// is invisible to it. Writing over it is a serialization failure
/// (`40001`, retry), never a raw `23505`: both for a new entity's first
/// `sync_start` and for an external id another entity linked.
#[test]
fn repeatable_read_gets_a_serialization_failure_not_a_unique_violation() {
    let cluster = Cluster::start();
    let (mut late, mut first) = (cluster.connect(), cluster.connect());
    // The same entity started first by another transaction.
    late.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
    first
        .batch_execute(&format!(
            "SELECT integrity.sync_start('{ORG}', 'customer', 'rr1', 'crm', '{{}}')"
        ))
        .unwrap();
    let r = late.query_one(
        &format!("SELECT integrity.sync_start('{ORG}', 'customer', 'rr1', 'crm', '{{}}')"),
        &[],
    );
    assert_eq!(common::sqlstate(&r), "40001", "{r:?}");
    late.batch_execute("ROLLBACK").unwrap();
    // The same external id linked first by another entity.
    first
        .batch_execute(&format!(
            "SELECT integrity.sync_start('{ORG}', 'customer', 'rr2', 'crm', '{{}}')"
        ))
        .unwrap();
    late.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
    first
        .batch_execute(&format!(
            "SELECT integrity.sync_succeeded('{ORG}', 'customer', 'rr1', 'crm', 'ext-rr')"
        ))
        .unwrap();
    let r = late.query_one(
        &format!("SELECT integrity.sync_succeeded('{ORG}', 'customer', 'rr2', 'crm', 'ext-rr')"),
        &[],
    );
    assert_eq!(common::sqlstate(&r), "40001", "{r:?}");
    late.batch_execute("ROLLBACK").unwrap();
    // Retried, it is data.
    let a: serde_json::Value = late
        .query_one(
            &format!(
                "SELECT integrity.sync_succeeded('{ORG}', 'customer', 'rr2', 'crm', 'ext-rr')"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(a["reason"], "external_id_conflict", "{a}");
    println!("sync under REPEATABLE READ: 40001 for an invisible link, then data on retry");
}

/// A worker that outlives its lease and reports late, naming its attempt,
/// is told `lease_lost` and changes nothing: the worker that took the link
/// over keeps its lease (a third caller still waits), and the payload
/// recorded as synced is the one whose worker reported it.
#[test]
fn a_worker_reporting_after_its_lease_was_taken_over_changes_nothing() {
    let cluster = Cluster::start();
    let (mut w1, mut w2, mut w3) = (cluster.connect(), cluster.connect(), cluster.connect());
    let start = |c: &mut postgres::Client, payload: &str| -> serde_json::Value {
        c.query_one(
            &format!(
                "SELECT integrity.sync_start('{ORG}', 'customer', 's1', 'crm', '{payload}', lease => '300 ms')"
            ),
            &[],
        )
        .unwrap()
        .get(0)
    };
    let a = start(&mut w1, r#"{"v": "A"}"#);
    assert_eq!(
        (a["action"].as_str(), a["attempt"].as_i64()),
        (Some("create"), Some(1))
    );
    std::thread::sleep(std::time::Duration::from_millis(400));
    let b = start(&mut w2, r#"{"v": "B"}"#);
    assert_eq!(
        (b["action"].as_str(), b["attempt"].as_i64()),
        (Some("create"), Some(2))
    );
    let late: serde_json::Value = w1
        .query_one(
            &format!("SELECT integrity.sync_succeeded('{ORG}', 'customer', 's1', 'crm', 'ext-a', attempt => 1)"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        (late["ok"].as_bool(), late["reason"].as_str()),
        (Some(false), Some("lease_lost")),
        "{late}"
    );
    let failed_late: serde_json::Value = w1
        .query_one(
            &format!("SELECT integrity.sync_failed('{ORG}', 'customer', 's1', 'crm', 'timeout', attempt => 1)"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(failed_late["reason"], "lease_lost", "{failed_late}");
    // w2 still holds the link.
    assert_eq!(start(&mut w3, r#"{"v": "B"}"#)["action"], "in_progress");
    let row = w3
        .query_one(
            "SELECT status::text, external_id FROM integrity.sync_links WHERE entity_id = 's1'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, Option<String>>(1)),
        ("syncing".to_string(), None)
    );
    let done: serde_json::Value = w2
        .query_one(
            &format!("SELECT integrity.sync_succeeded('{ORG}', 'customer', 's1', 'crm', 'ext-b', attempt => 2)"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(done["ok"], true, "{done}");
    // B is what was synced: B skips, A (never recorded) updates.
    assert_eq!(start(&mut w3, r#"{"v": "B"}"#)["action"], "skip");
    println!("sync: a late worker with its attempt is told lease_lost and changes nothing");
}

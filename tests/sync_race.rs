//! Sync state from real clients: 16 connections start syncing the same
//! entity at the same moment (exactly one gets `create`, the rest
//! `in_progress`), and two entities race to link the same external id (one
//! wins, the other gets `external_id_conflict`, never a raw 23505).

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

//! What a new connection's first call to integrity costs, with the library
//! loaded on demand (the default) and preloaded at server start
//! (`shared_preload_libraries = 'integrity'`), on two throwaway clusters
//! running side by side. One pgbench client opens a new connection for
//! each call (`pgbench -C`) and makes one of:
//!
//! * `SELECT 1`: the baseline, a connection that never touches integrity;
//! * `integrity.lock_key('a')`: the library's load and `_PG_init` (its
//!   settings), a pure function reading no table;
//! * `integrity.idem_begin(…)` replaying a completed key: the load, the
//!   keys table's first opening in the backend and the call itself;
//! * a plain `SELECT` of that key's row: what any lookup of a key in the
//!   keys table costs a new connection (the table's catalog entries, a
//!   plan), without integrity's library.
//!
//! Each cell is the median of BENCH_ROUNDS (5) rounds of BENCH_CONNECTIONS
//! (200) connections, the clusters and calls in an order rotated per round.
//! Printed: milliseconds per connection, what the call adds to `SELECT 1`,
//! and preloaded over on-demand of that addition.
//!
//! env: BENCH_ROUNDS, BENCH_CONNECTIONS, BENCH_SETTINGS.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
mod shared;

use common::Cluster;

const ORG: &str = "0000000a-0000-0000-0000-000000000000";

fn main() {
    let rounds: usize = shared::var("BENCH_ROUNDS", 5);
    let connections: usize = shared::var("BENCH_CONNECTIONS", 200);
    let settings = shared::settings();
    let mut preload = settings.clone();
    preload.push("shared_preload_libraries=integrity".into());
    // On demand, then preloaded.
    let clusters: Vec<Cluster> = [&settings, &preload]
        .into_iter()
        .map(|s| Cluster::start_with(&s.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    let calls = [
        ("SELECT 1", "SELECT 1;\n".to_string()),
        ("lock_key", "SELECT integrity.lock_key('a');\n".to_string()),
        (
            "idem_begin (replay)",
            format!("SELECT integrity.idem_begin('{ORG}', 'POST /orders', 'r', '{{\"amount\": 100}}');\n"),
        ),
        (
            "SELECT of the key row",
            format!("SELECT response_code, response FROM integrity.idempotency_keys WHERE org_id = '{ORG}' AND scope = 'POST /orders' AND key = 'r';\n"),
        ),
    ];
    let mut scripts = Vec::new();
    for c in &clusters {
        c.connect()
            .batch_execute(&format!(
                "SELECT integrity.idem_begin('{ORG}', 'POST /orders', 'r', '{{\"amount\": 100}}');
                 SELECT integrity.idem_complete('{ORG}', 'POST /orders', 'r', 201, '{{\"order\": 1}}');"
            ))
            .unwrap();
        scripts.push(
            calls
                .iter()
                .enumerate()
                .map(|(i, (_, sql))| {
                    let p = c.dir.join(format!("first_call_{i}.pgbench"));
                    std::fs::write(&p, sql).unwrap();
                    p
                })
                .collect::<Vec<_>>(),
        );
    }
    let pg: String = clusters[0]
        .connect()
        .query_one("SHOW server_version", &[])
        .unwrap()
        .get(0);
    println!(
        "first call on a new connection (pgbench -C, 1 client): PostgreSQL {pg}, {rounds} rounds of {connections} connections, median ms per connection"
    );
    // ms[cluster][call]: one figure per round.
    let mut ms = vec![vec![Vec::new(); calls.len()]; clusters.len()];
    for round in 0..rounds {
        for j in 0..clusters.len() * calls.len() {
            let k = (j + round) % (clusters.len() * calls.len());
            let (c, i) = (k / calls.len(), k % calls.len());
            ms[c][i].push(shared::pgbench_connecting_ms(
                &clusters[c],
                &scripts[c][i],
                connections,
            ));
        }
    }
    let med: Vec<Vec<f64>> = ms
        .into_iter()
        .map(|per| per.into_iter().map(shared::median).collect())
        .collect();
    println!(
        "{:<20} {:>12} {:>12} {:>22} {:>22}",
        "call", "on demand", "preloaded", "on demand - SELECT 1", "preloaded - SELECT 1"
    );
    for (i, (name, _)) in calls.iter().enumerate() {
        println!(
            "{:<20} {:>12.2} {:>12.2} {:>22.2} {:>22.2}",
            name,
            med[0][i],
            med[1][i],
            med[0][i] - med[0][0],
            med[1][i] - med[1][0]
        );
    }
    let extra = |c: usize| med[c][2] - med[c][0];
    println!(
        "summary: a new connection's first idem_begin adds {:.2} ms on demand, {:.2} ms preloaded (preloaded/on demand = {:.2}); a plain SELECT of the key row adds {:.2} ms",
        extra(0),
        extra(1),
        extra(1) / extra(0),
        med[1][3] - med[1][0]
    );
}

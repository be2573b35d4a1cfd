//! Breaker benchmark: `breaker_allow` on a closed breaker, at 1 and 32
//! clients, against `SELECT 1` (the floor: a round trip that does nothing)
//! and against a naive shared breaker that reads its row `FOR UPDATE`
//! (bench/breaker_baseline.sql). pgbench is the client, prepared
//! statements, each call its own transaction; BENCH_ROUNDS (3) interleaved
//! rounds of BENCH_SECONDS (4) per cell, medians.
//!
//! env: BENCH_SECONDS, BENCH_ROUNDS, BENCH_CLIENTS ("1,32"), BENCH_SETTINGS.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
mod shared;

use common::Cluster;

const APPROACHES: [(&str, &str); 3] = [
    ("allow", "SELECT integrity.breaker_allow('payments');\n"),
    ("select1", "SELECT 1;\n"),
    ("naive", "SELECT naive_allow('payments');\n"),
];

fn main() {
    let secs: f64 = shared::var("BENCH_SECONDS", 4.0);
    let rounds: usize = shared::var("BENCH_ROUNDS", 3);
    let clients = shared::clients("1,32");
    let settings_owned = shared::settings();
    let settings: Vec<&str> = settings_owned.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(&settings);
    let mut admin = cluster.connect();
    admin
        .batch_execute(include_str!("breaker_baseline.sql"))
        .unwrap();
    admin
        .batch_execute("SELECT integrity.breaker_configure('payments')")
        .unwrap();
    let scripts: Vec<std::path::PathBuf> = APPROACHES
        .iter()
        .map(|(name, sql)| {
            let p = cluster.dir.join(format!("{name}.pgbench"));
            std::fs::write(&p, sql).unwrap();
            p
        })
        .collect();
    let pg: String = admin.query_one("SHOW server_version", &[]).unwrap().get(0);
    println!("breaker benchmark (pgbench client): PostgreSQL {pg}, {rounds} interleaved rounds of {secs} s, calls/s");
    println!(
        "{:>7}  {:>12} {:>12} {:>12}  {:>13} {:>11}",
        "clients", "allow", "SELECT 1", "naive", "allow/SELECT1", "allow/naive"
    );
    let (mut worst_floor, mut worst_naive) = (f64::INFINITY, f64::INFINITY);
    for &n in &clients {
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); APPROACHES.len()];
        for round in 0..rounds {
            for j in 0..APPROACHES.len() {
                let i = (j + round) % APPROACHES.len();
                runs[i].push(shared::pgbench_run(&cluster, &scripts[i], n, secs, false).tps);
            }
        }
        let m: Vec<f64> = runs.into_iter().map(shared::median).collect();
        let (f, v) = (m[0] / m[1], m[0] / m[2]);
        if n >= 32 {
            worst_floor = worst_floor.min(f);
            worst_naive = worst_naive.min(v);
        }
        println!(
            "{n:>7}  {:>12.0} {:>12.0} {:>12.0}  {:>13.2} {:>11.2}",
            m[0], m[1], m[2], f, v
        );
    }
    // The closed breaker's hot path wrote nothing.
    let writes: i64 = admin
        .query_one("SELECT count(*) FROM integrity.breaker_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(writes, 0);
    println!(
        "summary: at 32 clients allow/SELECT 1 = {worst_floor:.2} (target >= 0.5), allow/naive = {worst_naive:.2} (target >= 5)"
    );
}

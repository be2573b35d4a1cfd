//! Idempotency-key benchmark: what wrapping a business insert in
//! idem_begin / idem_complete costs, and what a replay costs, measured in
//! one run on one throwaway cluster against the bare insert.
//!
//!   (1) bare insert:    INSERT INTO bench_orders …                (autocommit)
//!   (2) wrapped insert: BEGIN; idem_begin(new key); INSERT …;
//!                       idem_complete(…); COMMIT                   (one round trip)
//!   (3) replay:         idem_begin(a completed key)               (autocommit)
//!
//! Every request is one simple-protocol round trip, so the three differ only
//! in the work the database does. env: BENCH_SECONDS (default 4),
//! BENCH_ROUNDS (3), BENCH_CLIENTS ("1,16"), BENCH_SETTINGS (postgresql.conf).

#[path = "../tests/common/mod.rs"]
mod common;
mod shared;

use common::Cluster;
use std::time::{Duration, Instant};

const ORG: &str = "0000000a-0000-0000-0000-000000000000";
const REPLAY_KEYS: usize = 1000;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Bare,
    Wrapped,
    Replay,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Bare => "(1) bare insert",
            Kind::Wrapped => "(2) insert + idem keys",
            Kind::Replay => "(3) replay",
        }
    }
    fn sql(self, client: usize, n: u64) -> String {
        match self {
            Kind::Bare => format!("INSERT INTO bench_orders (key, amount) VALUES ('b-{client}-{n}', 100)"),
            Kind::Wrapped => format!(
                "BEGIN;
                 SELECT integrity.idem_begin('{ORG}', 'POST /orders', 'w-{client}-{n}', '{{\"amount\": 100}}');
                 INSERT INTO bench_orders (key, amount) VALUES ('w-{client}-{n}', 100);
                 SELECT integrity.idem_complete('{ORG}', 'POST /orders', 'w-{client}-{n}', 201, '{{\"order\": \"created\"}}');
                 COMMIT"
            ),
            Kind::Replay => format!(
                "SELECT integrity.idem_begin('{ORG}', 'POST /orders', 'r-{}', '{{\"amount\": 100}}')",
                (client * 7919 + n as usize) % REPLAY_KEYS
            ),
        }
    }
}

fn measure(cluster: &Cluster, kind: Kind, clients: usize, secs: f64, round: usize) -> f64 {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let ci = cluster.conninfo();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&ci, postgres::NoTls).expect("connect");
                let mut n = 0u64;
                let id = (clients * 100 + round) * 1000 + i;
                while Instant::now() < until {
                    c.batch_execute(&kind.sql(id, n)).expect(kind.label());
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().expect("client")).sum();
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let secs: f64 = shared::var("BENCH_SECONDS", 4.0);
    let rounds: usize = shared::var("BENCH_ROUNDS", 3);
    let clients = shared::clients("1,16");
    let settings_owned = shared::settings();
    let settings: Vec<&str> = settings_owned.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(&settings);
    let mut admin = cluster.connect();
    admin
        .batch_execute("CREATE TABLE bench_orders (id bigserial PRIMARY KEY, key text NOT NULL, amount int NOT NULL)")
        .unwrap();
    // Completed keys for (3) to replay.
    admin
        .batch_execute(&format!(
            "SELECT integrity.idem_begin('{ORG}', 'POST /orders', 'r-' || g, '{{\"amount\": 100}}'),
                    integrity.idem_complete('{ORG}', 'POST /orders', 'r-' || g, 201, '{{\"order\": \"created\"}}')
             FROM generate_series(0, {}) g",
            REPLAY_KEYS - 1
        ))
        .unwrap();
    admin
        .batch_execute("VACUUM ANALYZE integrity.idempotency_keys")
        .unwrap();
    admin.batch_execute("VACUUM ANALYZE bench_orders").unwrap();
    let pg: String = admin.query_one("SHOW server_version", &[]).unwrap().get(0);
    let sync: String = admin
        .query_one("SHOW synchronous_commit", &[])
        .unwrap()
        .get(0);
    println!(
        "idempotency benchmark: PostgreSQL {pg}, synchronous_commit={sync}, {rounds} interleaved rounds of {secs} s per approach"
    );
    println!("{:>3}  {:<24} {:>9}", "cl", "approach", "req/s");
    let kinds = [Kind::Bare, Kind::Wrapped, Kind::Replay];
    let mut worst_wrapped = f64::INFINITY;
    let mut worst_replay = f64::INFINITY;
    for &n in &clients {
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); 3];
        for round in 0..rounds {
            for k in 0..3 {
                let i = (k + round) % 3;
                runs[i].push(measure(&cluster, kinds[i], n, secs, round));
            }
        }
        let m: Vec<f64> = runs.into_iter().map(shared::median).collect();
        for (kind, v) in kinds.iter().zip(&m) {
            println!("{:>3}  {:<24} {:>9.0}", n, kind.label(), v);
        }
        let (w, r) = (m[1] / m[0], m[2] / m[0]);
        worst_wrapped = worst_wrapped.min(w);
        worst_replay = worst_replay.min(r);
        println!("{n:>3}  wrapped/bare = {w:.2}   replay/bare = {r:.2}");
    }
    println!("summary: worst wrapped/bare = {worst_wrapped:.2} (target >= 0.70), worst replay/bare = {worst_replay:.2} (target >= 1.00)");
}

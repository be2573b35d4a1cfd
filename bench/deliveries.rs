//! Delivery-log benchmark: enqueue + claim + complete, at 1, 8 and 32
//! workers, in one run on one throwaway cluster:
//!
//!   ours:  integrity.enqueue / integrity.claim / integrity.complete
//!   plain: a hand-written queue (bench/deliveries_baseline.sql): a table,
//!          FOR UPDATE SKIP LOCKED in PL/pgSQL
//!   pgmq:  pgmq.send / pgmq.read (visibility timeout) / pgmq.delete, when
//!          the pgmq extension is installed (scripts/bench.sh installs the
//!          vendored bench/vendor/pgmq)
//!
//! Each worker is a connection with prepared statements, looping: enqueue a
//! new job, claim one (timed: claim latency), complete it. Each cell starts
//! from an empty queue with a backlog of 1,000 jobs, so a claim always finds
//! work. BENCH_ROUNDS (3) interleaved rounds of BENCH_SECONDS (4) per cell;
//! throughput is the median round, claim latency percentiles are over every
//! claim of the cell.
//!
//! env: BENCH_SECONDS, BENCH_ROUNDS, BENCH_CLIENTS ("1,8,32"), BENCH_SETTINGS.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
mod shared;

use common::Cluster;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const ORG: &str = "0000000a-0000-0000-0000-000000000000";
const BACKLOG: i64 = 1000;

#[derive(Clone, Copy, PartialEq)]
enum Queue {
    Ours,
    Plain,
    Pgmq,
}

impl Queue {
    fn name(self) -> &'static str {
        match self {
            Queue::Ours => "ours",
            Queue::Plain => "plain",
            Queue::Pgmq => "pgmq",
        }
    }

    /// Empty the queue, then a backlog of BACKLOG jobs.
    fn reset(self, c: &mut postgres::Client) {
        let sql = match self {
            Queue::Ours => format!(
                "TRUNCATE integrity.deliveries;
                 SELECT integrity.enqueue('{ORG}', 'backlog-' || g, 'bench.event', '{{\"n\": 1}}')
                   FROM generate_series(1, {BACKLOG}) g;
                 VACUUM ANALYZE integrity.deliveries;"
            ),
            Queue::Plain => format!(
                "TRUNCATE plain_jobs;
                 SELECT plain_enqueue('{ORG}', 'backlog-' || g, 'bench.event', '{{\"n\": 1}}')
                   FROM generate_series(1, {BACKLOG}) g;
                 VACUUM ANALYZE plain_jobs;"
            ),
            Queue::Pgmq => format!(
                "SELECT pgmq.purge_queue('bench');
                 SELECT pgmq.send('bench', '{{\"n\": 1}}') FROM generate_series(1, {BACKLOG}) g;
                 VACUUM ANALYZE pgmq.q_bench;"
            ),
        };
        for stmt in sql.split(";\n") {
            if !stmt.trim().is_empty() {
                c.batch_execute(stmt).unwrap();
            }
        }
    }
}

/// One worker for `secs`: (jobs done, claim latencies in µs).
fn work(ci: &str, q: Queue, tag: &str, secs: f64, barrier: &Barrier) -> (u64, Vec<u32>) {
    let mut c = postgres::Client::connect(ci, postgres::NoTls).unwrap();
    let org: uuid::Uuid = ORG.parse().unwrap();
    let payload = serde_json::json!({"event": "invoice.paid", "amount": 100});
    let (enq, claim, done) = match q {
        Queue::Ours => (
            c.prepare("SELECT integrity.enqueue($1, $2, 'bench.event', $3)")
                .unwrap(),
            c.prepare("SELECT id, payload FROM integrity.claim($1, 1, '30 seconds')")
                .unwrap(),
            c.prepare("SELECT integrity.complete($1)").unwrap(),
        ),
        Queue::Plain => (
            c.prepare("SELECT plain_enqueue($1, $2, 'bench.event', $3)")
                .unwrap(),
            c.prepare("SELECT id, payload FROM plain_claim($1, 1, '30 seconds')")
                .unwrap(),
            c.prepare("SELECT plain_complete($1)").unwrap(),
        ),
        Queue::Pgmq => (
            // pgmq has no job id to dedupe by: $1 and $2 are unused.
            c.prepare(
                "SELECT pgmq.send('bench', $3) WHERE $1::uuid IS NOT NULL AND $2::text IS NOT NULL",
            )
            .unwrap(),
            c.prepare(
                "SELECT msg_id, message FROM pgmq.read('bench', 30, 1) WHERE $1::text IS NOT NULL",
            )
            .unwrap(),
            c.prepare("SELECT pgmq.delete('bench', $1::bigint)")
                .unwrap(),
        ),
    };
    barrier.wait();
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(secs);
    let (mut n, mut lat) = (0u64, Vec::with_capacity(100_000));
    while Instant::now() < until {
        let job = format!("{tag}-{n}");
        c.query(&enq, &[&org, &job, &payload]).unwrap();
        let t = Instant::now();
        let rows = c.query(&claim, &[&tag]).unwrap();
        lat.push(t.elapsed().as_micros() as u32);
        let Some(row) = rows.first() else {
            panic!("{}: claim found no work", q.name());
        };
        let id: i64 = row.get(0);
        let ok: bool = c.query_one(&done, &[&id]).unwrap().get(0);
        assert!(ok, "{}: complete({id}) refused", q.name());
        n += 1;
    }
    (n, lat)
}

/// Jobs/s of `q` at `workers`, and its claim latencies.
fn cell(cluster: &Cluster, q: Queue, workers: usize, secs: f64, round: usize) -> (f64, Vec<u32>) {
    q.reset(&mut cluster.connect());
    let barrier = Arc::new(Barrier::new(workers + 1));
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (ci, barrier) = (cluster.conninfo(), barrier.clone());
            let tag = format!("r{round}-n{workers}-w{w}");
            std::thread::spawn(move || work(&ci, q, &tag, secs, &barrier))
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let (mut jobs, mut lat) = (0u64, Vec::new());
    for h in handles {
        let (n, l) = h.join().unwrap();
        jobs += n;
        lat.extend(l);
    }
    (jobs as f64 / started.elapsed().as_secs_f64(), lat)
}

fn pct(v: &mut [u32], p: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

fn main() {
    let secs: f64 = shared::var("BENCH_SECONDS", 4.0);
    let rounds: usize = shared::var("BENCH_ROUNDS", 3);
    let clients = shared::clients("1,8,32");
    let settings_owned = shared::settings();
    let settings: Vec<&str> = settings_owned.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(&settings);
    let mut admin = cluster.connect();
    admin
        .batch_execute(include_str!("deliveries_baseline.sql"))
        .unwrap();
    let pgmq = admin
        .batch_execute("CREATE EXTENSION pgmq; SELECT pgmq.create('bench');")
        .is_ok();
    let mut queues = vec![Queue::Ours, Queue::Plain];
    if pgmq {
        queues.push(Queue::Pgmq);
    }
    let pg: String = admin.query_one("SHOW server_version", &[]).unwrap().get(0);
    println!(
        "delivery benchmark: PostgreSQL {pg}, enqueue + claim + complete per job, {rounds} interleaved rounds of {secs} s per cell{}",
        if pgmq { "" } else { "; pgmq is not installed (scripts/bench.sh installs bench/vendor/pgmq)" }
    );
    println!(
        "{:>7}  {:>10} {:>10} {:>10}  {:>10} {:>10}  {:>21} {:>21} {:>21}",
        "workers",
        "ours/s",
        "plain/s",
        "pgmq/s",
        "ours/plain",
        "ours/pgmq",
        "claim p50/p99 ours",
        "plain",
        "pgmq"
    );
    let mut worst = f64::INFINITY;
    let mut p99_at_8 = None;
    for &n in &clients {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); queues.len()];
        let mut lats: Vec<Vec<u32>> = vec![Vec::new(); queues.len()];
        for round in 0..rounds {
            for j in 0..queues.len() {
                let i = (j + round) % queues.len();
                let (r, l) = cell(&cluster, queues[i], n, secs, round);
                rates[i].push(r);
                lats[i].extend(l);
            }
        }
        let m: Vec<f64> = rates.into_iter().map(shared::median).collect();
        let lat: Vec<String> = lats
            .iter_mut()
            .map(|l| format!("{:.2} / {:.2} ms", pct(l, 0.5), pct(l, 0.99)))
            .collect();
        let get = |i: usize| m.get(i).copied().unwrap_or(f64::NAN);
        let ratio = get(0) / get(1);
        worst = worst.min(ratio);
        if n == 8 {
            p99_at_8 = Some(pct(&mut lats[0], 0.99));
        }
        println!(
            "{:>7}  {:>10.0} {:>10.0} {:>10.0}  {:>10.2} {:>10.2}  {:>21} {:>21} {:>21}",
            n,
            get(0),
            get(1),
            get(2),
            ratio,
            get(0) / get(2),
            lat[0],
            lat[1],
            lat.get(2).cloned().unwrap_or_else(|| "-".into())
        );
    }
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM integrity.deliveries WHERE status = 'processing'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "every claimed delivery was completed");
    println!(
        "summary: worst ours/plain = {worst:.2} (target >= 1.0), claim p99 at 8 workers = {} (target < 5 ms)",
        p99_at_8.map_or("-".to_string(), |p| format!("{p:.2} ms"))
    );
}

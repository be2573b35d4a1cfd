//! Booking benchmark: `integrity.book` against two baselines, measured in
//! the same run on the same throwaway cluster, printed as ratios.
//!
//!   (a) integrity.book
//!   (b) plain INSERT into a table guarded only by the same exclusion
//!       constraint; the client treats 23P01 as "taken"
//!   (c) PL/pgSQL doing the typical application-level fix: try-advisory-lock
//!       keyed on the slot start + overlap SELECT + INSERT
//!
//! Every client sends the same kind of request: book resource r at a random
//! start on a 30-minute grid for 45 minutes, so neighbouring requests with
//! different start times overlap. Each request is one autocommit statement,
//! prepared once per connection.
//!
//!   cargo run --release --features client --example bench [-- SECONDS]
//!   env: BENCH_SECONDS per run (default 4), BENCH_ROUNDS (default 3),
//!        BENCH_CLIENTS (default "1,8,32"), BENCH_RESOURCES (default "1,100"),
//!        BENCH_SETTINGS (extra postgresql.conf, e.g. "fsync=off")
//!
//! Each cell runs (a), (b), (c) BENCH_ROUNDS times, interleaved in rotating
//! order so drift in the machine hits all three alike; a cell reports the
//! median throughput and the latency percentiles of all its requests.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
mod shared;

use common::Cluster;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

const ORG: &str = "0000000a-0000-0000-0000-000000000000";
/// Start times on a 30-minute grid: 20,000 slots (about 14 months) per resource.
const SLOTS: i32 = 20_000;

#[derive(Clone, Copy, PartialEq)]
enum Approach {
    Integrity,
    PlainInsert,
    AppLevel,
}

impl Approach {
    fn label(self) -> &'static str {
        match self {
            Approach::Integrity => "(a) integrity.book",
            Approach::PlainInsert => "(b) INSERT + EXCLUDE",
            Approach::AppLevel => "(c) app-level lock",
        }
    }
    fn sql(self) -> &'static str {
        match self {
            Approach::Integrity => {
                "SELECT integrity.book($1, $2, '2026-01-01 00:00+00'::timestamptz + $3::int4 * interval '30 minutes', '45 minutes')::text"
            }
            Approach::PlainInsert => {
                "INSERT INTO bench.plain_bookings (org_id, resource_id, during)
                 VALUES ($1, $2, tstzrange('2026-01-01 00:00+00'::timestamptz + $3::int4 * interval '30 minutes',
                                           '2026-01-01 00:00+00'::timestamptz + $3::int4 * interval '30 minutes' + interval '45 minutes'))
                 RETURNING id::text"
            }
            Approach::AppLevel => {
                "SELECT bench.app_book($1, $2, '2026-01-01 00:00+00'::timestamptz + $3::int4 * interval '30 minutes', '45 minutes')"
            }
        }
    }
    fn table(self) -> &'static str {
        match self {
            Approach::Integrity => "integrity.bookings",
            Approach::PlainInsert => "bench.plain_bookings",
            Approach::AppLevel => "bench.app_bookings",
        }
    }
}

#[derive(Default)]
struct Outcome {
    booked: u64,
    taken: u64,
    busy: u64,
    deadlocks: u64,
    latencies_us: Vec<u32>,
}

fn resource(n: u32) -> uuid::Uuid {
    uuid::Uuid::parse_str(&format!("00000000-0000-0000-0000-{n:012}")).unwrap()
}

fn client(
    conninfo: String,
    approach: Approach,
    resources: u32,
    seed: u64,
    until: Instant,
) -> Outcome {
    let mut c = postgres::Client::connect(&conninfo, postgres::NoTls).expect("connect");
    let stmt = c.prepare(approach.sql()).expect("prepare");
    let org = uuid::Uuid::parse_str(ORG).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Outcome::default();
    while Instant::now() < until {
        let res = resource(rng.gen_range(0..resources));
        let slot: i32 = rng.gen_range(0..SLOTS);
        let t = Instant::now();
        let r = c.query_one(&stmt, &[&org, &res, &slot]);
        let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
        out.latencies_us.push(us);
        match (approach, r) {
            (Approach::PlainInsert, Ok(_)) => out.booked += 1,
            (Approach::PlainInsert, Err(e)) if e.code().map(|c| c.code()) == Some("23P01") => {
                out.taken += 1
            }
            // Two plain INSERTs of overlapping ranges can deadlock on each
            // other's exclusion check; the victim's slot is taken by the other.
            (Approach::PlainInsert, Err(e)) if e.code().map(|c| c.code()) == Some("40P01") => {
                out.taken += 1;
                out.deadlocks += 1
            }
            (Approach::Integrity, Ok(row)) => {
                let v: String = row.get(0);
                if v.contains(r#""ok": true"#) {
                    out.booked += 1
                } else if v.contains("busy") {
                    out.busy += 1
                } else {
                    out.taken += 1
                }
            }
            (Approach::AppLevel, Ok(row)) => match row.get::<_, String>(0).as_str() {
                "booked" => out.booked += 1,
                "busy" => out.busy += 1,
                _ => out.taken += 1,
            },
            (_, Err(e)) => panic!(
                "{}: unexpected error: {e} {:?}",
                approach.label(),
                e.as_db_error()
            ),
        }
    }
    out
}

struct Row {
    deadlocks: u64,
    req_per_s: f64,
    booked_per_s: f64,
    latencies_us: Vec<u32>,
    overlaps: i64,
}

fn overlaps(c: &mut postgres::Client, table: &str) -> i64 {
    // Bookings that overlap any earlier-starting active booking of their resource.
    c.query_one(
        &format!(
            "SELECT count(*) FROM (
               SELECT lower(during) AS s,
                      max(upper(during)) OVER (PARTITION BY org_id, resource_id ORDER BY lower(during), id
                                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
               FROM {table} WHERE status = 'booked') x
             WHERE prev_end > s"
        ),
        &[],
    )
    .unwrap()
    .get(0)
}

fn measure(
    cluster: &Cluster,
    approach: Approach,
    clients: usize,
    resources: u32,
    secs: f64,
) -> Row {
    let mut admin = cluster.connect();
    admin
        .batch_execute("TRUNCATE integrity.bookings, integrity.booking_events, bench.plain_bookings, bench.app_bookings")
        .unwrap();
    admin
        .batch_execute(&format!("VACUUM ANALYZE {}", approach.table()))
        .unwrap();
    admin.batch_execute("CHECKPOINT").unwrap();
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let ci = cluster.conninfo();
            std::thread::spawn(move || client(ci, approach, resources, 1000 + i as u64, until))
        })
        .collect();
    let outs: Vec<Outcome> = handles
        .into_iter()
        .map(|h| h.join().expect("bench client"))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    let lat: Vec<u32> = outs
        .iter()
        .flat_map(|o| o.latencies_us.iter().copied())
        .collect();
    let booked: u64 = outs.iter().map(|o| o.booked).sum();
    Row {
        deadlocks: outs.iter().map(|o| o.deadlocks).sum(),
        req_per_s: lat.len() as f64 / elapsed,
        booked_per_s: booked as f64 / elapsed,
        latencies_us: lat,
        overlaps: overlaps(&mut admin, approach.table()),
    }
}

struct Cell {
    deadlocks: u64,
    req_per_s: f64,
    booked_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    overlaps: i64,
}

/// Run every approach `rounds` times, interleaved, and summarise each.
fn cell(cluster: &Cluster, clients: usize, resources: u32, secs: f64, rounds: usize) -> Vec<Cell> {
    let approaches = [
        Approach::Integrity,
        Approach::PlainInsert,
        Approach::AppLevel,
    ];
    let mut runs: Vec<Vec<Row>> = (0..approaches.len()).map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for k in 0..approaches.len() {
            let i = (k + round) % approaches.len();
            runs[i].push(measure(cluster, approaches[i], clients, resources, secs));
        }
    }
    runs.into_iter()
        .map(|rows| {
            let mut lat: Vec<u32> = rows
                .iter()
                .flat_map(|r| r.latencies_us.iter().copied())
                .collect();
            lat.sort_unstable();
            let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
            Cell {
                deadlocks: rows.iter().map(|r| r.deadlocks).sum(),
                req_per_s: shared::median(rows.iter().map(|r| r.req_per_s).collect()),
                booked_per_s: shared::median(rows.iter().map(|r| r.booked_per_s).collect()),
                p50_ms: pct(0.50),
                p99_ms: pct(0.99),
                overlaps: rows.iter().map(|r| r.overlaps).max().unwrap_or(0),
            }
        })
        .collect()
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| shared::var("BENCH_SECONDS", 4.0));
    let rounds: usize = shared::var("BENCH_ROUNDS", 3);
    let clients = shared::clients("1,8,32");
    let settings_owned = shared::settings();
    let settings: Vec<&str> = settings_owned.iter().map(String::as_str).collect();

    let cluster = Cluster::start_with(&settings);
    let mut admin = cluster.connect();
    admin
        .batch_execute(include_str!("baselines.sql"))
        .expect("load bench/baselines.sql");
    let pg: String = admin.query_one("SHOW server_version", &[]).unwrap().get(0);
    let fsync: String = admin.query_one("SHOW fsync", &[]).unwrap().get(0);
    let sync_commit: String = admin
        .query_one("SHOW synchronous_commit", &[])
        .unwrap()
        .get(0);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "booking benchmark: PostgreSQL {pg}, {cpus} CPUs, fsync={fsync}, synchronous_commit={sync_commit}, \
         {rounds} interleaved rounds of {secs} s per approach and cell, requests of 45 min on a 30-min grid of {SLOTS} slots per resource"
    );
    println!(
        "{:<10} {:>3}  {:<22} {:>9} {:>9} {:>8} {:>8} {:>8}",
        "resources", "cl", "approach", "req/s", "booked/s", "p50 ms", "p99 ms", "overlaps"
    );
    let mut worst_ab = f64::INFINITY;
    let mut worst_ac = f64::INFINITY;
    let mut any_overlap_ab = 0;
    let mut deadlocks = [0u64; 3];
    let scenarios: Vec<(&str, u32)> = [("1 (hot)", 1u32), ("100", 100u32)]
        .into_iter()
        .filter(|(_, r)| {
            std::env::var("BENCH_RESOURCES")
                .map(|v| v.split(',').any(|x| x.trim() == r.to_string()))
                .unwrap_or(true)
        })
        .collect();
    for (label, resources) in scenarios {
        for &n in &clients {
            let rows = cell(&cluster, n, resources, secs, rounds);
            for (approach, r) in [
                Approach::Integrity,
                Approach::PlainInsert,
                Approach::AppLevel,
            ]
            .iter()
            .zip(&rows)
            {
                println!(
                    "{:<10} {:>3}  {:<22} {:>9.0} {:>9.0} {:>8.3} {:>8.3} {:>8}",
                    label,
                    n,
                    approach.label(),
                    r.req_per_s,
                    r.booked_per_s,
                    r.p50_ms,
                    r.p99_ms,
                    r.overlaps
                );
            }
            let ab = rows[0].req_per_s / rows[1].req_per_s;
            let ac = rows[0].req_per_s / rows[2].req_per_s;
            worst_ab = worst_ab.min(ab);
            worst_ac = worst_ac.min(ac);
            any_overlap_ab += rows[0].overlaps + rows[1].overlaps;
            for (d, r) in deadlocks.iter_mut().zip(&rows) {
                *d += r.deadlocks;
            }
            println!(
                "{:<10} {:>3}  ratio a/b = {ab:.2}   ratio a/c = {ac:.2}",
                label, n
            );
        }
    }
    println!(
        "summary: worst a/b = {worst_ab:.2}, worst a/c = {worst_ac:.2}, overlaps in (a)+(b) = {any_overlap_ab}, \
         deadlocks (40P01) a/b/c = {}/{}/{}",
        deadlocks[0], deadlocks[1], deadlocks[2]
    );
}

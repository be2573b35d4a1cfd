//! Consistency-check benchmark: `run_checks()` over a `calls` table of 1
//! and 10 million rows, a full check against the same check written
//! incrementally (`created_at >= $1`, index-backed), run after 1,000 new
//! rows. Both find the same violations among the new rows; the full one
//! reads every row, the incremental one only those since its last run.
//!
//! Per size: the table is grown to the size (one violation per 100,000
//! rows), analyzed, and both checks run once to settle (the incremental
//! one's first run reads everything: `$1` is -infinity). Then, BENCH_ROUNDS
//! times (default 3): 1,000 calls are inserted (one of them a violation),
//! and each check is run by `SELECT … FROM integrity.run_checks(ARRAY[…])`,
//! timed at the client. The medians and their ratio are printed.
//!
//! env: BENCH_SIZES ("1000000,10000000"), BENCH_ROUNDS (3), BENCH_SETTINGS.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
mod shared;

use common::Cluster;
use std::time::Instant;

const NEW_ROWS: i64 = 1000;

/// Time of one run of check `name`, in ms, and the violations it found.
fn run(c: &mut postgres::Client, name: &str) -> (f64, i32) {
    let started = Instant::now();
    let row = c
        .query_one(
            "SELECT violations, error FROM integrity.run_checks(ARRAY[$1])",
            &[&name],
        )
        .unwrap();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let error: Option<String> = row.get(1);
    assert!(error.is_none(), "{name} failed: {error:?}");
    (ms, row.get::<_, Option<i32>>(0).unwrap_or(0))
}

/// Grow `calls` to `size` rows: every 100,000th is booked without an
/// appointment (a violation), a third are booked with one.
fn grow(c: &mut postgres::Client, from: i64, size: i64) {
    let started = Instant::now();
    c.batch_execute(&format!(
        "INSERT INTO calls (session_outcome, appointment_made, created_at)
         SELECT CASE WHEN g % 3 = 0 OR g % 100000 = 0 THEN 'appointment_booked' END,
                g % 3 = 0 AND g % 100000 <> 0,
                now() - interval '30 days' + g * interval '100 microseconds'
           FROM generate_series({}, {size}) g",
        from + 1
    ))
    .unwrap();
    c.batch_execute("VACUUM ANALYZE calls").unwrap();
    println!(
        "  grew calls to {size} rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let sizes: Vec<i64> = std::env::var("BENCH_SIZES")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let rounds: usize = shared::var("BENCH_ROUNDS", 3);
    let settings_owned = shared::settings();
    let settings: Vec<&str> = settings_owned.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(&settings);
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE TABLE calls (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             session_outcome text, appointment_made boolean NOT NULL DEFAULT false,
             created_at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE INDEX calls_created_at ON calls (created_at);
         SELECT integrity.add_check('booked_full',
           $$SELECT id::text, jsonb_build_object('id', id) FROM calls
              WHERE session_outcome = 'appointment_booked' AND NOT appointment_made$$);
         SELECT integrity.add_check('booked_incremental',
           $$SELECT id::text, jsonb_build_object('id', id) FROM calls
              WHERE created_at >= $1 AND session_outcome = 'appointment_booked' AND NOT appointment_made$$);",
    )
    .unwrap();
    let pg: String = c.query_one("SHOW server_version", &[]).unwrap().get(0);
    println!(
        "check benchmark: PostgreSQL {pg}, {rounds} rounds of {NEW_ROWS} new rows per size, times at the client"
    );
    let mut rows = 0i64;
    let mut results = Vec::new();
    for &size in &sizes {
        grow(&mut c, rows, size);
        rows = size;
        // Settle: both checks have run once, so the incremental one's $1
        // is the start of that run.
        run(&mut c, "booked_full");
        run(&mut c, "booked_incremental");
        let (mut full, mut incr) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            c.batch_execute(&format!(
                "INSERT INTO calls (session_outcome, appointment_made)
                 SELECT CASE WHEN g % 3 = 0 OR g = 1 THEN 'appointment_booked' END, g % 3 = 0
                   FROM generate_series(1, {NEW_ROWS}) g"
            ))
            .unwrap();
            rows += NEW_ROWS;
            // The incremental check first: the full one then cannot have
            // warmed the pages the incremental one reads.
            let (ms_i, v_i) = run(&mut c, "booked_incremental");
            let (ms_f, v_f) = run(&mut c, "booked_full");
            assert_eq!(v_i, 1, "the incremental check finds the one new violation");
            assert!(v_f > v_i, "the full check finds every violation");
            incr.push(ms_i);
            full.push(ms_f);
        }
        let (f, i) = (shared::median(full), shared::median(incr));
        println!(
            "{:>10} rows: full {:>9.1} ms   incremental {:>7.2} ms   full/incremental {:>7.0}x",
            size,
            f,
            i,
            f / i
        );
        results.push((size, f, i));
    }
    let (size, f, i) = results.last().copied().unwrap_or((0, 0.0, 1.0));
    println!(
        "summary: at {size} rows the incremental check after {NEW_ROWS} new rows is {:.0}x faster than the full check (target >= 100x)",
        f / i
    );
}

//! `run_checks` from real clients: several connections run every check at
//! the same moment, over and over, while the data they check does not
//! change. Afterwards each violating subject has exactly one alert, every
//! run bumped it exactly once (the runs of one check took turns), and no
//! run failed. Also: run_checks scheduled by pg_cron, when pg_cron is
//! installed.

mod common;

use common::Cluster;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const CLIENTS: usize = 4;
const RUNS: usize = 10;
const SUBJECTS: i64 = 50;

#[test]
fn concurrent_run_checks_raise_each_alert_once() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    c.batch_execute(&format!(
        "CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL);
         INSERT INTO acct SELECT g, CASE WHEN g <= {SUBJECTS} THEN -g ELSE g END
           FROM generate_series(1, 500) g;
         SELECT integrity.add_check('negative_balance',
           'SELECT id::text, jsonb_build_object(''balance'', balance) FROM acct WHERE balance < 0');
         SELECT integrity.add_check('balance_too_big',
           'SELECT id::text, ''{{}}''::jsonb FROM acct WHERE balance > 450', throttle => '0');"
    ))
    .unwrap();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (ci, barrier) = (cluster.conninfo(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&ci, postgres::NoTls).unwrap();
                let mut new_alerts = 0i64;
                barrier.wait();
                for _ in 0..RUNS {
                    for row in c
                        .query(
                            "SELECT check_name, new_alerts, error FROM integrity.run_checks()",
                            &[],
                        )
                        .unwrap()
                    {
                        let (name, error): (String, Option<String>) = (row.get(0), row.get(2));
                        assert!(error.is_none(), "{name} failed: {error:?}");
                        if name == "negative_balance" {
                            new_alerts += row.get::<_, i32>(1) as i64;
                        }
                    }
                }
                new_alerts
            })
        })
        .collect();
    let raised: i64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let runs = (CLIENTS * RUNS) as i64;
    // Within the throttle: each subject alerted once in all, every run
    // bumped it once.
    assert_eq!(raised, SUBJECTS, "alerts raised by all runs");
    let row = c
        .query_one(
            "SELECT count(*), count(DISTINCT subject), min(occurrences), max(occurrences),
                    count(*) FILTER (WHERE resolved_at IS NULL)
               FROM integrity.alerts WHERE check_name = 'negative_balance'",
            &[],
        )
        .unwrap();
    let (rows, subjects, lo, hi, open): (i64, i64, i32, i32, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    assert_eq!((rows, subjects, open), (SUBJECTS, SUBJECTS, SUBJECTS));
    assert_eq!(
        (lo as i64, hi as i64),
        (runs, runs),
        "occurrences per alert"
    );
    // Throttle 0: still one alert row per subject, raised again by every run.
    let row = c
        .query_one(
            "SELECT count(*), min(occurrences) FROM integrity.alerts WHERE check_name = 'balance_too_big'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i32>(1) as i64),
        (50, runs)
    );
    let row = c
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE error IS NULL) FROM integrity.check_runs
              WHERE check_name = 'negative_balance'",
            &[],
        )
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (runs, runs));
    println!(
        "checks race: {CLIENTS} clients x {RUNS} runs: {SUBJECTS} alerts, each seen {runs} times"
    );
}

fn pg_cron_installed() -> bool {
    common::pg_config("--pkglibdir").join("pg_cron.so").exists()
}

/// The extension does not need pg_cron; with it, `run_checks()` runs on
/// a schedule. pg_cron 1.4 schedules by the minute, so this waits for the
/// next minute to start.
#[test]
fn run_checks_on_a_pg_cron_schedule() {
    if !pg_cron_installed() {
        println!("pg_cron is not installed (Debian: postgresql-15-cron): schedule test skipped");
        return;
    }
    let cluster = Cluster::start_with(&[
        "shared_preload_libraries=pg_cron",
        "cron.database_name=postgres",
        "cron.use_background_workers=on",
    ]);
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE EXTENSION pg_cron;
         CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL);
         INSERT INTO acct VALUES (1, -1), (2, 5);
         SELECT integrity.add_check('negative_balance',
           'SELECT id::text, jsonb_build_object(''balance'', balance) FROM acct WHERE balance < 0');
         SELECT cron.schedule('integrity-checks', '* * * * *', 'SELECT integrity.run_checks()');",
    )
    .unwrap();
    let started = Instant::now();
    loop {
        let done: i64 = c
            .query_one(
                "SELECT count(*) FROM integrity.check_runs WHERE check_name = 'negative_balance' AND error IS NULL",
                &[],
            )
            .unwrap()
            .get(0);
        if done > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "pg_cron did not run run_checks() within 150 s: {:?}",
            c.query(
                "SELECT status, return_message FROM cron.job_run_details",
                &[]
            )
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, Option<String>>(0), r.get::<_, Option<String>>(1)))
            .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let subject: String = c
        .query_one(
            "SELECT subject FROM integrity.alerts WHERE check_name = 'negative_balance' AND resolved_at IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(subject, "1");
    println!(
        "pg_cron ran integrity.run_checks() after {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// A check's own timeout is reported in its row; the caller's
/// `statement_timeout` still ends the whole call, also after checks that
/// armed their own deadline (it is restored after each).
#[test]
fn timeouts_of_checks_and_of_the_caller() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    let mut add = String::new();
    for i in 0..12 {
        add += &format!(
            "SELECT integrity.add_check('nap_{i:02}', 'SELECT s::text, ''{{}}''::jsonb FROM pg_sleep(0.15) s WHERE s::text = ''never''');"
        );
    }
    c.batch_execute(&format!(
        "{add} SELECT integrity.add_check('long', 'SELECT pg_sleep(3)::text, ''{{}}''::jsonb');"
    ))
    .unwrap();
    // The check's deadline (200 ms) comes first: reported, the call goes on.
    c.batch_execute("SET statement_timeout = '10s'; SET integrity.check_timeout = '200ms'")
        .unwrap();
    let row = c
        .query_one(
            "SELECT sqlstate, error FROM integrity.run_checks(ARRAY['long'])",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("57014"));
    // Twelve checks of 150 ms each finish within their own 200 ms, but
    // not within the caller's 1.5 s: the call is cancelled.
    c.batch_execute("SET statement_timeout = '1500ms'").unwrap();
    let started = Instant::now();
    let e = c
        .query("SELECT * FROM integrity.run_checks(ARRAY(SELECT name FROM integrity.checks WHERE name LIKE 'nap_%'))", &[])
        .unwrap_err();
    assert_eq!(common::sqlstate::<()>(&Err(e)), "57014");
    let took = started.elapsed().as_secs_f64();
    assert!((1.4..1.8).contains(&took), "cancelled after {took:.2} s");
    // The caller's deadline first: the whole call stops, not just the check.
    c.batch_execute("SET statement_timeout = '300ms'; SET integrity.check_timeout = '10s'")
        .unwrap();
    let e = c
        .query("SELECT * FROM integrity.run_checks(ARRAY['long'])", &[])
        .unwrap_err();
    assert_eq!(common::sqlstate::<()>(&Err(e)), "57014");
    c.batch_execute("RESET statement_timeout").unwrap();
    let runs: i64 = c
        .query_one("SELECT count(*) FROM integrity.check_runs", &[])
        .unwrap()
        .get(0);
    assert_eq!(runs, 1, "only the first call's run was kept");
}

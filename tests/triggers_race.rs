//! `tg_child_flag` from real clients: 16 connections insert, delete, move
//! and soft-delete appointments of the same few calls at once, under READ
//! COMMITTED and REPEATABLE READ (retrying 40001 and 40P01 as an
//! application would). Afterwards every call's `appointment_made` and
//! `appointment_count` equal the truth computed by SQL.

mod common;

use common::Cluster;
use rand::Rng;
use std::sync::{Arc, Barrier};

const CLIENTS: usize = 16;
const OPS: usize = 150;
const CALLS: i64 = 6;

fn setup(cluster: &Cluster) {
    cluster
        .connect()
        .batch_execute(&format!(
            "CREATE TABLE calls (id bigint PRIMARY KEY, direction text, customer_id int,
                 customer_link_status text, session_outcome text,
                 appointment_made boolean NOT NULL DEFAULT false,
                 appointment_count int NOT NULL DEFAULT 0);
             CREATE TABLE appointments (id serial PRIMARY KEY, call_id bigint REFERENCES calls,
                 cancelled_at timestamptz);
             CREATE INDEX ON appointments (call_id);
             CREATE TRIGGER appointments_flag AFTER INSERT OR UPDATE OR DELETE ON appointments
               FOR EACH ROW EXECUTE FUNCTION integrity.tg_child_flag(
                 'calls', 'id', 'call_id', 'appointment_made', 'appointment_count', 'cancelled_at');
             INSERT INTO calls (id) SELECT g FROM generate_series(1, {CALLS}) g;"
        ))
        .unwrap();
}

/// One random change (or two, in one transaction), retried on a
/// serialization failure or deadlock.
fn change(c: &mut postgres::Client, isolation: &str, rng: &mut impl Rng) -> usize {
    let ops: Vec<String> = (0..rng.gen_range(1..=2))
        .map(|_| {
            let call = rng.gen_range(1..=CALLS);
            let other = rng.gen_range(1..=CALLS);
            match rng.gen_range(0..6) {
                0 | 1 => format!("INSERT INTO appointments (call_id) VALUES ({call})"),
                2 => format!(
                    "DELETE FROM appointments WHERE id = (SELECT min(id) FROM appointments WHERE call_id = {call})"
                ),
                3 => format!(
                    "UPDATE appointments SET call_id = {other} WHERE id = (SELECT max(id) FROM appointments WHERE call_id = {call})"
                ),
                4 => format!(
                    "UPDATE appointments SET cancelled_at = now() WHERE id = (SELECT min(id) FROM appointments WHERE call_id = {call} AND cancelled_at IS NULL)"
                ),
                _ => format!(
                    "UPDATE appointments SET cancelled_at = NULL WHERE id = (SELECT max(id) FROM appointments WHERE call_id = {call} AND cancelled_at IS NOT NULL)"
                ),
            }
        })
        .collect();
    let mut retries = 0;
    loop {
        let sql = format!(
            "BEGIN ISOLATION LEVEL {isolation}; {}; COMMIT",
            ops.join("; ")
        );
        match c.batch_execute(&sql) {
            Ok(()) => return retries,
            Err(e) => {
                let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                c.batch_execute("ROLLBACK").unwrap();
                assert!(
                    code == "40001" || code == "40P01",
                    "unexpected error {code}: {e}"
                );
                retries += 1;
            }
        }
    }
}

#[test]
fn concurrent_child_changes_leave_every_flag_and_count_true() {
    // Moves lock two parents, so transactions deadlock now and then; find
    // those in 20 ms rather than the default second.
    let cluster = Cluster::start_with(&["deadlock_timeout=20ms"]);
    setup(&cluster);
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let ci = cluster.conninfo();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&ci, postgres::NoTls).unwrap();
                let mut rng = rand::thread_rng();
                let isolation = if i % 4 == 0 {
                    "REPEATABLE READ"
                } else {
                    "READ COMMITTED"
                };
                barrier.wait();
                (0..OPS)
                    .map(|_| change(&mut c, isolation, &mut rng))
                    .sum::<usize>()
            })
        })
        .collect();
    let retries: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let mut c = cluster.connect();
    let wrong: i64 = c
        .query_one(
            "SELECT count(*) FROM calls p
             LEFT JOIN LATERAL (SELECT count(*) AS n FROM appointments a
                                WHERE a.call_id = p.id AND a.cancelled_at IS NULL) t ON true
             WHERE p.appointment_made IS DISTINCT FROM (t.n > 0)
                OR p.appointment_count IS DISTINCT FROM t.n",
            &[],
        )
        .unwrap()
        .get(0);
    let (live, total): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT count(*) FILTER (WHERE cancelled_at IS NULL), count(*) FROM appointments",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let counted: i64 = c
        .query_one("SELECT sum(appointment_count)::int8 FROM calls", &[])
        .unwrap()
        .get(0);
    println!(
        "{total} appointments ({live} live) after {} changes, {retries} retried",
        CLIENTS * OPS
    );
    assert!(
        total > 0 && live > 0,
        "the workload left appointments behind"
    );
    assert_eq!(wrong, 0, "calls whose flag or count is not the truth");
    assert_eq!(counted, live);
}

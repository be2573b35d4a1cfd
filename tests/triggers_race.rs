//! `tg_child_flag` from real clients: 16 connections insert, delete, move
//! and soft-delete appointments of the same few calls at once, under READ
//! COMMITTED and REPEATABLE READ (retrying 40001 and 40P01 as an
//! application would), on two pairs of tables: one with the row-level
//! trigger, one with the set-based form (`attach_child_flag`). Afterwards
//! every call's `appointment_made` and `appointment_count` equal the truth
//! computed by SQL.

mod common;

use common::Cluster;
use rand::Rng;
use std::sync::{Arc, Barrier};

const CLIENTS: usize = 16;
const OPS: usize = 150;
const CALLS: i64 = 6;
/// (calls, appointments): row-level trigger locking and counting through
/// indexes; row-level locking and counting in SQL (calls_n has row
/// security on, which the superuser here bypasses, and appointments_n no
/// index on call_id); set-based.
const PAIRS: [(&str, &str); 3] = [
    ("calls", "appointments"),
    ("calls_n", "appointments_n"),
    ("calls_s", "appointments_s"),
];

fn setup(cluster: &Cluster) {
    let mut c = cluster.connect();
    for (calls, appts) in PAIRS {
        c.batch_execute(&format!(
            "CREATE TABLE {calls} (id bigint PRIMARY KEY, direction text, customer_id int,
                 customer_link_status text, session_outcome text,
                 appointment_made boolean NOT NULL DEFAULT false,
                 appointment_count int NOT NULL DEFAULT 0);
             CREATE TABLE {appts} (id serial PRIMARY KEY, call_id bigint REFERENCES {calls},
                 cancelled_at timestamptz);
             INSERT INTO {calls} (id) SELECT g FROM generate_series(1, {CALLS}) g;"
        ))
        .unwrap();
    }
    c.batch_execute(
        "CREATE INDEX ON appointments (call_id);
         CREATE INDEX ON appointments_s (call_id);
         ALTER TABLE calls_n ENABLE ROW LEVEL SECURITY;
         CREATE TRIGGER appointments_flag AFTER INSERT OR UPDATE OR DELETE ON appointments
           FOR EACH ROW EXECUTE FUNCTION integrity.tg_child_flag(
             'calls', 'id', 'call_id', 'appointment_made', 'appointment_count', 'cancelled_at');
         CREATE TRIGGER appointments_flag AFTER INSERT OR UPDATE OR DELETE ON appointments_n
           FOR EACH ROW EXECUTE FUNCTION integrity.tg_child_flag(
             'calls_n', 'id', 'call_id', 'appointment_made', 'appointment_count', 'cancelled_at');
         SELECT integrity.attach_child_flag('appointments_s', 'calls_s', 'id', 'call_id',
             'appointment_made', 'appointment_count', 'cancelled_at');",
    )
    .unwrap();
}

/// One random change (or two, in one transaction) to one pair's
/// appointments, retried on a serialization failure or deadlock.
fn change(c: &mut postgres::Client, isolation: &str, rng: &mut impl Rng) -> usize {
    let a = PAIRS[rng.gen_range(0..PAIRS.len())].1;
    let ops: Vec<String> = (0..rng.gen_range(1..=2))
        .map(|_| {
            let call = rng.gen_range(1..=CALLS);
            let other = rng.gen_range(1..=CALLS);
            match rng.gen_range(0..6) {
                0 | 1 => format!("INSERT INTO {a} (call_id) VALUES ({call}), ({other})"),
                2 => format!(
                    "DELETE FROM {a} WHERE id = (SELECT min(id) FROM {a} WHERE call_id = {call})"
                ),
                3 => format!(
                    "UPDATE {a} SET call_id = {other} WHERE id = (SELECT max(id) FROM {a} WHERE call_id = {call})"
                ),
                4 => format!(
                    "UPDATE {a} SET cancelled_at = now() WHERE id = (SELECT min(id) FROM {a} WHERE call_id = {call} AND cancelled_at IS NULL)"
                ),
                _ => format!(
                    "UPDATE {a} SET cancelled_at = NULL WHERE id = (SELECT max(id) FROM {a} WHERE call_id = {call} AND cancelled_at IS NOT NULL)"
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
    println!("{} changes, {retries} retried", CLIENTS * OPS);
    let mut c = cluster.connect();
    for (calls, appts) in PAIRS {
        let wrong: i64 = c
            .query_one(
                &format!(
                    "SELECT count(*) FROM {calls} p
                     LEFT JOIN LATERAL (SELECT count(*) AS n FROM {appts} a
                                        WHERE a.call_id = p.id AND a.cancelled_at IS NULL) t ON true
                     WHERE p.appointment_made IS DISTINCT FROM (t.n > 0)
                        OR p.appointment_count IS DISTINCT FROM t.n"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        let r = c
            .query_one(
                &format!(
                    "SELECT count(*) FILTER (WHERE cancelled_at IS NULL), count(*),
                            (SELECT sum(appointment_count)::int8 FROM {calls})
                     FROM {appts}"
                ),
                &[],
            )
            .unwrap();
        let (live, total, counted): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
        println!("{appts}: {total} rows, {live} live, counted by the calls {counted}, wrong calls {wrong}");
        assert!(total > 0 && live > 0, "the workload left {appts} behind");
        assert_eq!(wrong, 0, "{calls} whose flag or count is not the truth");
        assert_eq!(counted, live);
    }
}

#[test]
fn without_a_count_two_deletes_of_the_last_two_children_clear_the_flag_under_repeatable_read() {
    // Flag only: two REPEATABLE READ transactions each delete one of a
    // call's last two appointments. Each one's snapshot still shows the
    // other's appointment; the parent row must be written by the first so
    // that the second fails with 40001 (and its retry sees the truth),
    // instead of both leaving the flag set with no appointment left.
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE TABLE calls (id bigint PRIMARY KEY, appointment_made boolean NOT NULL DEFAULT false);
         CREATE TABLE appointments (id int PRIMARY KEY, call_id bigint);
         CREATE TABLE calls_s (id bigint PRIMARY KEY, appointment_made boolean NOT NULL DEFAULT false);
         CREATE TABLE appointments_s (id int PRIMARY KEY, call_id bigint);
         CREATE TABLE calls_i (id bigint PRIMARY KEY, appointment_made boolean NOT NULL DEFAULT false);
         CREATE TABLE appointments_i (id int PRIMARY KEY, call_id bigint);
         CREATE INDEX ON appointments_i (call_id);
         CREATE TRIGGER flag AFTER INSERT OR UPDATE OR DELETE ON appointments FOR EACH ROW
           EXECUTE FUNCTION integrity.tg_child_flag('calls', 'id', 'call_id', 'appointment_made');
         CREATE TRIGGER flag AFTER INSERT OR UPDATE OR DELETE ON appointments_i FOR EACH ROW
           EXECUTE FUNCTION integrity.tg_child_flag('calls_i', 'id', 'call_id', 'appointment_made');
         SELECT integrity.attach_child_flag('appointments_s', 'calls_s', 'id', 'call_id', 'appointment_made');
         INSERT INTO calls VALUES (1); INSERT INTO appointments VALUES (1, 1), (2, 1);
         INSERT INTO calls_s VALUES (1); INSERT INTO appointments_s VALUES (1, 1), (2, 1);
         INSERT INTO calls_i VALUES (1); INSERT INTO appointments_i VALUES (1, 1), (2, 1);",
    )
    .unwrap();
    // Row-level counting in SQL, set-based, row-level counting through the
    // index on call_id.
    for (calls, appts) in [
        ("calls", "appointments"),
        ("calls_s", "appointments_s"),
        ("calls_i", "appointments_i"),
    ] {
        let made = |c: &mut postgres::Client| -> bool {
            c.query_one(
                &format!("SELECT appointment_made FROM {calls} WHERE id = 1"),
                &[],
            )
            .unwrap()
            .get(0)
        };
        assert!(made(&mut c), "{calls}: set by the inserts");
        let (mut a, mut b) = (cluster.connect(), cluster.connect());
        for t in [&mut a, &mut b] {
            t.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
                .unwrap();
        }
        a.batch_execute(&format!("DELETE FROM {appts} WHERE id = 1; COMMIT"))
            .unwrap();
        match b.batch_execute(&format!("DELETE FROM {appts} WHERE id = 2")) {
            Ok(()) => b.batch_execute("COMMIT").unwrap(),
            Err(e) => {
                assert_eq!(common::sqlstate::<()>(&Err(e)), "40001", "{calls}");
                b.batch_execute("ROLLBACK").unwrap();
                // The application's retry.
                b.batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ; DELETE FROM {appts} WHERE id = 2; COMMIT"
                ))
                .unwrap();
            }
        }
        let left: i64 = c
            .query_one(
                &format!("SELECT count(*) FROM {appts} WHERE call_id = 1"),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(left, 0);
        assert!(
            !made(&mut c),
            "{calls}: no appointment left, so the flag is clear"
        );
    }
}

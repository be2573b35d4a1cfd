//! The resource lock behind `integrity.book`, seen from real clients:
//! it serialises, it is released when a transaction aborts or its backend
//! dies, `wait => false` answers `busy`, applications can take the same lock
//! by its documented key (and a taken slot is still answered while they
//! hold it), stale snapshots raise 40001, and a reschedule that
//! loses to a writer bypassing the lock leaves the old booking untouched.

mod common;

use common::{sqlstate, Client, Cluster};
use serde_json::Value;
use std::time::{Duration, Instant};

const ORG: &str = "0000000a-0000-0000-0000-000000000000";
const RES: &str = "00000000-0000-0000-0000-000000000001";

fn book(c: &mut Client, at: &str, wait: bool) -> Value {
    let s: String = c
        .query_one(
            &format!(
                "SELECT integrity.book('{ORG}', '{RES}', '{at}', '30 min', wait => {wait})::text"
            ),
            &[],
        )
        .unwrap()
        .get(0);
    serde_json::from_str(&s).unwrap()
}

fn active(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM integrity.bookings WHERE status = 'booked'",
        &[],
    )
    .unwrap()
    .get(0)
}

#[test]
fn lock_is_released_on_abort_and_on_backend_death() {
    let cluster = Cluster::start();
    let mut a = cluster.connect();
    let mut b = cluster.connect();

    // A holds the resource inside an open transaction.
    a.batch_execute("BEGIN").unwrap();
    assert_eq!(book(&mut a, "2026-12-01 10:00+00", true)["ok"], true);
    // B, not willing to wait, is told the resource is busy (whatever the time).
    assert_eq!(book(&mut b, "2026-12-01 15:00+00", false)["reason"], "busy");
    // Abort: the lock and the booking are gone.
    a.batch_execute("ROLLBACK").unwrap();
    assert_eq!(active(&mut b), 0);
    assert_eq!(book(&mut b, "2026-12-01 10:00+00", false)["ok"], true);

    // Backend death: A holds the lock again, then its backend is terminated.
    a.batch_execute("BEGIN").unwrap();
    assert_eq!(book(&mut a, "2026-12-01 11:00+00", true)["ok"], true);
    assert_eq!(book(&mut b, "2026-12-01 15:00+00", false)["reason"], "busy");
    let pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let mut killer = cluster.connect();
    let killed: bool = killer
        .query_one("SELECT pg_terminate_backend($1, 5000)", &[&pid])
        .unwrap()
        .get(0);
    assert!(killed);
    assert!(
        a.batch_execute("SELECT 1").is_err(),
        "terminated connection is dead"
    );
    let v = book(&mut b, "2026-12-01 11:00+00", false);
    assert_eq!(
        v["ok"], true,
        "lock released and A's booking rolled back: {v}"
    );
    assert_eq!(active(&mut b), 2);
}

#[test]
fn waiting_callers_queue_and_then_see_the_winner() {
    let cluster = Cluster::start();
    let mut a = cluster.connect();
    a.batch_execute("BEGIN").unwrap();
    assert_eq!(book(&mut a, "2026-12-01 10:00+00", true)["ok"], true);
    // B asks for an overlapping slot with another start time and waits.
    let ci = cluster.conninfo();
    let waiter = std::thread::spawn(move || {
        let mut b = postgres::Client::connect(&ci, postgres::NoTls).unwrap();
        let t = Instant::now();
        let v = book(&mut b, "2026-12-01 10:15+00", true);
        (v, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    a.batch_execute("COMMIT").unwrap();
    let (v, waited) = waiter.join().unwrap();
    assert!(
        waited >= Duration::from_millis(400),
        "B must have waited for A, waited {waited:?}"
    );
    assert_eq!(v["reason"], "slot_taken", "{v}");
    assert_eq!(v["conflicts"].as_array().unwrap().len(), 1);
}

#[test]
fn applications_can_take_the_same_lock_by_its_documented_key() {
    let cluster = Cluster::start();
    let mut app = cluster.connect();
    let mut b = cluster.connect();
    app.batch_execute(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock(integrity.lock_key('booking', '{ORG}'::uuid::text, '{RES}'::uuid::text))"
    ))
    .unwrap();
    assert_eq!(book(&mut b, "2026-12-01 10:00+00", false)["reason"], "busy");
    app.batch_execute("COMMIT").unwrap();
    assert_eq!(book(&mut b, "2026-12-01 10:00+00", false)["ok"], true);
}

#[test]
fn a_frozen_resource_takes_no_bookings_but_still_answers_taken() {
    let cluster = Cluster::start();
    let mut b = cluster.connect();
    assert_eq!(book(&mut b, "2026-12-01 10:00+00", true)["ok"], true);
    // A run of taken answers: B now probes before it locks.
    for _ in 0..10 {
        assert_eq!(
            book(&mut b, "2026-12-01 10:15+00", true)["reason"],
            "slot_taken"
        );
    }
    let mut app = cluster.connect();
    app.batch_execute(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock(integrity.lock_key('booking', '{ORG}'::uuid::text, '{RES}'::uuid::text))"
    ))
    .unwrap();
    // While the application holds the resource, a taken slot is answered
    // at once (nothing would be written) ...
    let t = Instant::now();
    let v = book(&mut b, "2026-12-01 10:15+00", true);
    assert_eq!(v["reason"], "slot_taken", "{v}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // ... and a free one waits for the application.
    b.batch_execute("SET statement_timeout = '300ms'").unwrap();
    let r = b.query_one(
        &format!("SELECT integrity.book('{ORG}', '{RES}', '2026-12-01 12:00+00', '30 min')::text"),
        &[],
    );
    assert_eq!(
        sqlstate(&r),
        "57014",
        "a free slot waits for the frozen resource"
    );
    app.batch_execute("COMMIT").unwrap();
    b.batch_execute("RESET statement_timeout").unwrap();
    assert_eq!(book(&mut b, "2026-12-01 12:00+00", true)["ok"], true);
    assert_eq!(active(&mut b), 2);
}

#[test]
fn stale_snapshot_under_repeatable_read_raises_40001_never_overlaps() {
    let cluster = Cluster::start();
    for level in ["REPEATABLE READ", "SERIALIZABLE"] {
        let mut a = cluster.connect();
        let mut b = cluster.connect();
        a.batch_execute("TRUNCATE integrity.bookings CASCADE")
            .unwrap();
        a.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL {level}; SELECT count(*) FROM integrity.bookings"
        ))
        .unwrap();
        // B books and commits after A's snapshot was taken.
        assert_eq!(book(&mut b, "2026-12-01 10:00+00", true)["ok"], true);
        // A cannot see B's booking; booking over it must fail with 40001.
        let r = a.query_one(
            &format!(
                "SELECT integrity.book('{ORG}', '{RES}', '2026-12-01 10:15+00', '30 min')::text"
            ),
            &[],
        );
        assert_eq!(sqlstate(&r), "40001", "{level}");
        a.batch_execute("ROLLBACK").unwrap();
        // Retried in a fresh transaction, the conflict comes back as data.
        a.batch_execute(&format!("BEGIN ISOLATION LEVEL {level}"))
            .unwrap();
        assert_eq!(
            book(&mut a, "2026-12-01 10:15+00", true)["reason"],
            "slot_taken"
        );
        a.batch_execute("COMMIT").unwrap();
        assert_eq!(active(&mut a), 1);
    }
}

#[test]
fn reschedule_losing_to_a_lock_bypassing_writer_leaves_old_booking_untouched() {
    let cluster = Cluster::start();
    let mut a = cluster.connect();
    let old = book(&mut a, "2026-12-01 10:00+00", true);
    let old_id = old["booking_id"].as_str().unwrap().to_string();
    let before: String = a
        .query_one(
            &format!("SELECT to_jsonb(b)::text FROM integrity.bookings b WHERE id = '{old_id}'"),
            &[],
        )
        .unwrap()
        .get(0);

    // A writer that ignores our lock inserts 14:00 directly and keeps its
    // transaction open, so our pre-check cannot see it yet.
    let mut raw = cluster.connect();
    raw.batch_execute(&format!(
        "BEGIN; INSERT INTO integrity.bookings (org_id, resource_id, during)
         VALUES ('{ORG}', '{RES}', tstzrange('2026-12-01 14:00+00', '2026-12-01 15:00+00'))"
    ))
    .unwrap();
    let ci = cluster.conninfo();
    let oid = old_id.clone();
    let mover = std::thread::spawn(move || {
        let mut b = postgres::Client::connect(&ci, postgres::NoTls).unwrap();
        let s: String = b
            .query_one(
                &format!("SELECT integrity.reschedule('{oid}', '2026-12-01 14:15+00')::text"),
                &[],
            )
            .unwrap()
            .get(0);
        serde_json::from_str::<Value>(&s).unwrap()
    });
    std::thread::sleep(Duration::from_millis(500));
    raw.batch_execute("COMMIT").unwrap();
    let v = mover.join().unwrap();
    assert_eq!(v["reason"], "slot_taken", "{v}");
    let after: String = a
        .query_one(
            &format!("SELECT to_jsonb(b)::text FROM integrity.bookings b WHERE id = '{old_id}'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(before, after, "old booking must be exactly as it was");
    assert_eq!(active(&mut a), 2);
    let events: i64 = a
        .query_one("SELECT count(*) FROM integrity.booking_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(events, 0);
}

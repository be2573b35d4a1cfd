//! The demo: a throwaway cluster, `CREATE EXTENSION integrity`, booking end
//! to end, then trigger functions keeping a call centre's own tables
//! consistent, printed for a person to read.
//!
//!     cargo run --release --features client --example demo

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Client, Cluster};
use serde_json::Value;
use std::sync::{Arc, Barrier};

const ORG: &str = "0000000a-0000-0000-0000-000000000000";
const DR_SMITH: &str = "00000000-0000-0000-0000-00000000005a";
const DR_JONES: &str = "00000000-0000-0000-0000-00000000003b";

/// `n` connections run `sql` (returning one jsonb) at the same moment;
/// their answers.
fn at_once(cluster: &Cluster, n: usize, sql: &'static str) -> Vec<Value> {
    cluster.at_once(n, move |_, c| {
        c.query_one(sql, &[]).unwrap().get::<_, Value>(0)
    })
}

/// `n` connections call `breaker_allow('payments.stripe')` at the same
/// moment; how many answers have `field` true.
fn ask_at_once(cluster: &Cluster, n: usize, field: &'static str) -> usize {
    at_once(
        cluster,
        n,
        "SELECT integrity.breaker_allow('payments.stripe')",
    )
    .iter()
    .filter(|a| a[field] == true)
    .count()
}

fn q(c: &mut Client, sql: &str) -> Value {
    let s: String = c
        .query_one(&format!("SELECT ({sql})::text"), &[])
        .unwrap()
        .get(0);
    serde_json::from_str(&s).unwrap()
}

fn hhmm(v: &Value) -> String {
    // "2026-12-01T10:00:00+00:00" -> "10:00"
    v.as_str()
        .map(|s| s[11..16].to_string())
        .unwrap_or_default()
}

fn short(id: &Value) -> String {
    id.as_str().map(|s| s[..8].to_string()).unwrap_or_default()
}

fn section(title: &str) {
    println!("\n== {title}");
}

fn main() {
    println!("integrity demo: race-free booking inside PostgreSQL");
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    c.batch_execute("SET TimeZone = 'UTC'").unwrap();
    let version: String = c
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'integrity'",
            &[],
        )
        .unwrap()
        .get(0);
    println!(
        "cluster on 127.0.0.1:{} — CREATE EXTENSION integrity CASCADE (version {version})",
        cluster.port
    );

    section("1. Twelve clients race for Dr Smith at 10:00");
    let n = 12;
    let mut results = cluster.at_once(n, |i, c| {
        c.batch_execute("SET TimeZone = 'UTC'").unwrap();
        // Different start times that all overlap 10:00-10:30.
        let at = format!("2026-12-01 09:{:02}+00", 45 + (i % 3) * 5);
        let v = q(
            c,
            &format!("integrity.book('{ORG}', '{DR_SMITH}', '{at}', '30 min')"),
        );
        (i, at, v)
    });
    results.sort_by_key(|r| r.0);
    let mut winners = 0;
    for (i, at, v) in &results {
        if v["ok"] == true {
            winners += 1;
            println!(
                "  client {i:>2} asked {} -> BOOKED {}–{} (booking {})",
                &at[11..16],
                hhmm(&v["starts_at"]),
                hhmm(&v["ends_at"]),
                short(&v["booking_id"])
            );
        } else {
            let c0 = &v["conflicts"][0];
            println!(
                "  client {i:>2} asked {} -> {} (held by {} {}–{})",
                &at[11..16],
                v["reason"].as_str().unwrap_or("?"),
                short(&c0["booking_id"]),
                hhmm(&c0["starts_at"]),
                hhmm(&c0["ends_at"])
            );
        }
    }
    println!(
        "  => {winners} booked, {} told slot_taken as data (no exception to catch)",
        n - winners
    );

    section("2. A busy morning: 8 clients book random slots for two doctors at once");
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let ci = cluster.conninfo();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&ci, postgres::NoTls).unwrap();
                let mut ok = 0;
                let mut taken = 0;
                for k in 0..10 {
                    let res = if (i + k) % 2 == 0 { DR_SMITH } else { DR_JONES };
                    let minute = ((i * 7 + k * 11) % 12) * 15;
                    let v = q(
                        &mut c,
                        &format!(
                            "integrity.book('{ORG}', '{res}', '2026-12-01 09:00+00'::timestamptz + '{minute} min', '30 min')"
                        ),
                    );
                    if v["ok"] == true {
                        ok += 1
                    } else {
                        taken += 1
                    }
                }
                (ok, taken)
            })
        })
        .collect();
    let (ok, taken) = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    println!("  80 attempts: {ok} booked, {taken} slot_taken");
    for (name, res) in [("Dr Smith", DR_SMITH), ("Dr Jones", DR_JONES)] {
        let rows = c
            .query(
                "SELECT to_char(lower(during), 'HH24:MI') || '–' || to_char(upper(during), 'HH24:MI')
                 FROM integrity.bookings WHERE resource_id = $1::text::uuid AND status = 'booked' ORDER BY during",
                &[&res],
            )
            .unwrap();
        let spans: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        println!("  {name:<9} {}", spans.join("  "));
    }

    section("3. Cancel, then cancel again");
    let first: String = c
        .query_one(
            "SELECT id::text FROM integrity.bookings WHERE resource_id = $1::text::uuid AND status = 'booked' ORDER BY during LIMIT 1",
            &[&DR_SMITH],
        )
        .unwrap()
        .get(0);
    let v = q(
        &mut c,
        &format!("integrity.cancel('{first}', 'patient called in sick')"),
    );
    println!(
        "  cancel {} -> ok={} status={}",
        &first[..8],
        v["ok"],
        v["status"]
    );
    let v = q(&mut c, &format!("integrity.cancel('{first}')"));
    println!(
        "  cancel {} again -> ok={} reason={}",
        &first[..8],
        v["ok"],
        v["reason"]
    );

    section("4. Reschedule: into a taken slot (refused, nothing changes), then into a free one");
    let booked: Vec<(String, String)> = c
        .query(
            "SELECT id::text, to_char(lower(during), 'HH24:MI') FROM integrity.bookings
             WHERE resource_id = $1::text::uuid AND status = 'booked' ORDER BY during",
            &[&DR_SMITH],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let (mover, mover_at) = booked[0].clone();
    let (_, taken_at) = booked[booked.len() - 1].clone();
    let v = q(
        &mut c,
        &format!("integrity.reschedule('{mover}', '2026-12-01 {taken_at}+00')"),
    );
    println!(
        "  move {} ({mover_at}) to {taken_at} -> ok={} reason={} (old booking still: {})",
        &mover[..8],
        v["ok"],
        v["reason"],
        c.query_one(
            "SELECT status FROM integrity.bookings WHERE id = $1::text::uuid",
            &[&mover]
        )
        .unwrap()
        .get::<_, String>(0)
    );
    let v = q(
        &mut c,
        &format!("integrity.reschedule('{mover}', '2026-12-01 15:00+00')"),
    );
    println!(
        "  move {} ({mover_at}) to 15:00 -> ok={} new booking {} {}–{}, old one cancelled as 'rescheduled'",
        &mover[..8],
        v["ok"],
        short(&v["booking_id"]),
        hhmm(&v["starts_at"]),
        hhmm(&v["ends_at"])
    );

    section("5. Free 30-minute slots for Dr Smith, 09:00–12:00");
    let slots: Vec<String> = c
        .query(
            "SELECT to_char(lower(s), 'HH24:MI') FROM integrity.free_slots($1::text::uuid, $2::text::uuid,
               tstzrange('2026-12-01 09:00+00', '2026-12-01 12:00+00'), '30 minutes') s",
            &[&ORG, &DR_SMITH],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    println!(
        "  {}",
        if slots.is_empty() {
            "(none)".to_string()
        } else {
            slots.join(" ")
        }
    );

    section("6. Someone holds Dr Jones; a caller that won't wait is told 'busy'");
    let mut holder = cluster.connect();
    holder.batch_execute("BEGIN").unwrap();
    q(
        &mut holder,
        &format!("integrity.book('{ORG}', '{DR_JONES}', '2026-12-01 16:00+00', '30 min')"),
    );
    let v = q(
        &mut c,
        &format!(
            "integrity.book('{ORG}', '{DR_JONES}', '2026-12-01 17:00+00', '30 min', wait => false)"
        ),
    );
    println!("  book(wait => false) while another transaction holds the resource -> {v}");
    holder.batch_execute("ROLLBACK").unwrap();

    section("7. A caller's mistake is an SQL error with SQLSTATE, message and hint");
    let e = c
        .query_one(
            &format!("SELECT integrity.book('{ORG}', '{DR_SMITH}', now(), '-30 min')"),
            &[],
        )
        .unwrap_err();
    if let Some(db) = e.as_db_error() {
        println!("  ERROR {}: {}", db.code().code(), db.message());
        println!("  HINT: {}", db.hint().unwrap_or(""));
    }

    section("8. The invariant, checked by SQL");
    let overlaps: i64 = c
        .query_one(
            "SELECT count(*) FROM integrity.bookings a JOIN integrity.bookings b
               ON a.org_id = b.org_id AND a.resource_id = b.resource_id AND a.id < b.id AND a.during && b.during
             WHERE a.status = 'booked' AND b.status = 'booked'",
            &[],
        )
        .unwrap()
        .get(0);
    let (total, active, events): (i64, i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM integrity.bookings),
                        (SELECT count(*) FROM integrity.bookings WHERE status = 'booked'),
                        (SELECT count(*) FROM integrity.booking_events)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    println!("  bookings: {total} rows, {active} active, {events} audit events; overlapping active pairs: {overlaps}");
    assert_eq!(overlaps, 0);

    section("9. Trigger functions on the call centre's own tables");
    c.batch_execute(
        "CREATE TABLE calls (id bigserial PRIMARY KEY, direction text, customer_id int,
             customer_link_status text, session_outcome text,
             appointment_made boolean NOT NULL DEFAULT false, appointment_count int NOT NULL DEFAULT 0);
         CREATE TABLE appointments (id bigserial PRIMARY KEY, call_id bigint REFERENCES calls,
             cancelled_at timestamptz);
         CREATE INDEX ON appointments (call_id);
         CREATE TRIGGER calls_direction BEFORE INSERT ON calls FOR EACH ROW
             EXECUTE FUNCTION integrity.tg_default('direction', 'inbound');
         CREATE TRIGGER calls_link BEFORE INSERT OR UPDATE ON calls FOR EACH ROW
             EXECUTE FUNCTION integrity.tg_link_status('customer_id', 'customer_link_status', 'linked', 'unlinked');
         CREATE TRIGGER calls_booked BEFORE INSERT OR UPDATE ON calls FOR EACH ROW
             EXECUTE FUNCTION integrity.tg_implies('session_outcome', 'appointment_booked', 'appointment_made', 'true');
         CREATE TRIGGER appointments_flag AFTER INSERT OR UPDATE OR DELETE ON appointments FOR EACH ROW
             EXECUTE FUNCTION integrity.tg_child_flag('calls', 'id', 'call_id', 'appointment_made',
                                                      'appointment_count', 'cancelled_at');",
    )
    .unwrap();
    println!("  calls(direction, customer_link_status, appointment_made, appointment_count) kept by 4 triggers");
    // What application code got wrong, as it comes in: no direction, a
    // status contradicting the customer, a booked outcome with made = false.
    c.batch_execute(
        "INSERT INTO calls (direction, customer_id, customer_link_status, session_outcome, appointment_made) VALUES
           (NULL, 101, 'unlinked', NULL, false),
           ('outbound', NULL, 'linked', NULL, false),
           (NULL, 102, NULL, 'appointment_booked', false),
           (NULL, NULL, NULL, 'no_answer', false)",
    )
    .unwrap();
    // Eight agents book appointments for the same calls at once.
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let ci = cluster.conninfo();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&ci, common::NoTls).unwrap();
                barrier.wait();
                for j in 0..25 {
                    let call = 1 + (i + j) % 3;
                    c.batch_execute(&format!(
                        "INSERT INTO appointments (call_id) VALUES ({call})"
                    ))
                    .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    println!("  8 agents inserted 200 appointments for calls 1–3 at once");
    c.batch_execute(
        "UPDATE appointments SET cancelled_at = now() WHERE call_id = 2;
         UPDATE appointments SET call_id = 4 WHERE id = (SELECT min(id) FROM appointments WHERE call_id = 1);",
    )
    .unwrap();
    println!("  cancelled every appointment of call 2; moved one of call 1 to call 4");
    let rows = c
        .query(
            "SELECT id, direction, coalesce(customer_id::text, '-'), customer_link_status,
                    coalesce(session_outcome, '-'), appointment_made, appointment_count
             FROM calls ORDER BY id",
            &[],
        )
        .unwrap();
    println!("  id | direction | customer | link status | outcome            | made  | count");
    for r in &rows {
        let (id, dir, cust, link, outcome, made, n): (
            i64,
            String,
            String,
            String,
            String,
            bool,
            i32,
        ) = (
            r.get(0),
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
        );
        println!("  {id:>2} | {dir:<9} | {cust:<8} | {link:<11} | {outcome:<18} | {made:<5} | {n}");
    }
    let alerts = c
        .query(
            "SELECT check_name, subject, details->>'column', details->>'before', details->>'after'
             FROM integrity.alerts WHERE auto_corrected ORDER BY id",
            &[],
        )
        .unwrap();
    println!("  corrections logged to integrity.alerts:");
    for r in &alerts {
        let (f, subject, col, before, after): (String, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        println!("    {f:<15} {subject:<22} {col}: {before} -> {after}");
    }
    let wrong: i64 = c
        .query_one(
            "SELECT count(*) FROM calls p
             LEFT JOIN LATERAL (SELECT count(*) AS n FROM appointments a
                                WHERE a.call_id = p.id AND a.cancelled_at IS NULL) t ON true
             WHERE p.appointment_count <> t.n
                OR p.appointment_made <> (t.n > 0 OR coalesce(p.session_outcome = 'appointment_booked', false))
                OR p.customer_link_status <> CASE WHEN p.customer_id IS NULL THEN 'unlinked' ELSE 'linked' END
                OR p.direction IS NULL",
            &[],
        )
        .unwrap()
        .get(0);
    println!("  calls breaking a rule, checked by SQL against the appointments: {wrong}");
    let e = c
        .batch_execute(
            "CREATE TRIGGER oops AFTER INSERT ON calls FOR EACH ROW
                 EXECUTE FUNCTION integrity.tg_default('direction', 'inbound');
             INSERT INTO calls (customer_id) VALUES (1)",
        )
        .unwrap_err();
    if let Some(db) = e.as_db_error() {
        println!(
            "  a trigger attached wrongly: ERROR {}: {}",
            db.code().code(),
            db.message()
        );
        println!("  HINT: {}", db.hint().unwrap_or(""));
    }
    assert_eq!(wrong, 0);

    section("10. Consistency checks find what got past the triggers");
    c.batch_execute(
        "SELECT integrity.add_check('calls_booked_without_appointment',
           $$SELECT 'call ' || c.id, jsonb_build_object('call_id', c.id, 'outcome', c.session_outcome)
               FROM calls c
              WHERE c.session_outcome = 'appointment_booked'
                AND NOT EXISTS (SELECT 1 FROM appointments a
                                 WHERE a.call_id = c.id AND a.cancelled_at IS NULL)$$,
           severity => 'critical',
           description => 'The session outcome says booked, but no appointment was made.',
           checked => $$SELECT count(*) FROM calls WHERE session_outcome = 'appointment_booked'$$);
         SELECT integrity.add_check('calls_made_without_appointment',
           $$SELECT c.id::text, jsonb_build_object('call_id', c.id, 'count', c.appointment_count)
               FROM calls c
              WHERE c.appointment_made
                AND c.session_outcome IS DISTINCT FROM 'appointment_booked'
                AND NOT EXISTS (SELECT 1 FROM appointments a
                                 WHERE a.call_id = c.id AND a.cancelled_at IS NULL)$$,
           fix => $$UPDATE calls SET appointment_made = false, appointment_count = 0
                     WHERE id = $1::bigint$$,
           auto_fix => true,
           description => 'appointment_made is true but no appointment row exists.',
           checked => $$SELECT count(*) FROM calls WHERE appointment_made$$);",
    )
    .unwrap();
    println!("  registered 2 checks on calls/appointments (the second with an automatic fix)");
    // What gets past triggers: a legacy import with triggers off (as a
    // replica applies rows), and bookings nobody followed up.
    c.batch_execute(
        "INSERT INTO calls (customer_id, session_outcome) VALUES (103, 'appointment_booked'), (104, 'appointment_booked');
         BEGIN;
         SET LOCAL session_replication_role = replica;
         UPDATE calls SET appointment_made = true, appointment_count = 3 WHERE id = 2;
         INSERT INTO calls (direction, customer_id, customer_link_status, appointment_made, appointment_count)
             VALUES ('inbound', 105, 'linked', true, 1);
         COMMIT;",
    )
    .unwrap();
    println!("  seeded: calls 5 and 6 booked with no appointment; calls 2 and 7 flagged made by an import with triggers off");
    let print_run = |c: &mut Client| {
        let rows = c
            .query(
                "SELECT check_name, coalesce(violations::text, '-'), new_alerts, fixed, resolved, coalesce(error, '')
                   FROM integrity.run_checks()",
                &[],
            )
            .unwrap();
        println!(
            "  check                              | violations | new alerts | fixed | resolved"
        );
        for r in &rows {
            let (name, v, n, f, res, e): (String, String, i32, i32, i32, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
            println!("  {name:<34} | {v:>10} | {n:>10} | {f:>5} | {res:>8} {e}");
        }
    };
    println!("  SELECT * FROM integrity.run_checks():");
    print_run(&mut c);
    println!(
        "  ... and again (the fixed calls are gone; open alerts are bumped, not raised again):"
    );
    print_run(&mut c);
    let open = c
        .query(
            "SELECT check_name, severity::text, open, auto_corrected, total FROM integrity.alert_summary
              WHERE check_name LIKE 'calls_%' ORDER BY check_name",
            &[],
        )
        .unwrap();
    println!("  integrity.alert_summary:");
    for r in &open {
        let (name, sev, open, auto, total): (String, String, i64, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        println!("    {name:<34} {sev:<8} open {open}, auto-corrected {auto}, total {total}");
    }
    let report: String = c
        .query_one(
            "SELECT jsonb_pretty((r - 'checks') || jsonb_build_object('checks',
                        (SELECT jsonb_object_agg(k, v) FROM jsonb_each(r -> 'checks') e(k, v)
                          WHERE k LIKE 'calls_%')))
               FROM integrity.consistency_report() r",
            &[],
        )
        .unwrap()
        .get(0);
    println!("  integrity.consistency_report() (the calls checks; the report has every check):");
    for line in report.lines() {
        println!("    {line}");
    }
    let (open_booked, still_made): (i64, i64) = {
        let r = c
            .query_one(
                "SELECT (SELECT count(*) FROM integrity.alerts
                          WHERE check_name = 'calls_booked_without_appointment' AND resolved_at IS NULL),
                        (SELECT count(*) FROM calls c WHERE c.appointment_made
                            AND c.session_outcome IS DISTINCT FROM 'appointment_booked'
                            AND NOT EXISTS (SELECT 1 FROM appointments a
                                             WHERE a.call_id = c.id AND a.cancelled_at IS NULL))",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    println!("  open alerts for booked calls without an appointment: {open_booked}; calls still flagged made without one: {still_made}");
    assert_eq!((open_booked, still_made), (2, 0));

    section(
        "11. A webhook to the CRM fails three times, backs off, is dead-lettered, then redriven",
    );
    c.batch_execute(
        "SELECT integrity.set_retry_schedule('crm.contact_updated',
             ARRAY['200 milliseconds', '400 milliseconds']::interval[]);
         BEGIN;
         UPDATE calls SET customer_id = 106 WHERE id = 4;
         SELECT integrity.enqueue('0000000a-0000-0000-0000-000000000000', 'call-4-crm-1',
             'crm.contact_updated', '{\"call_id\": 4, \"customer_id\": 106}',
             max_attempts => 3, review_on_dead_letter => true);
         COMMIT;",
    )
    .unwrap();
    println!("  the call's update and its outgoing webhook committed together (the transactional outbox)");
    let dup = q(
        &mut c,
        "SELECT integrity.enqueue('0000000a-0000-0000-0000-000000000000', 'call-4-crm-1',
             'crm.contact_updated', '{}')",
    );
    println!("  the same job enqueued again: {dup}");
    let mut dead_id = 0i64;
    for attempt in 1..=3 {
        let row = loop {
            let rows = c
                .query(
                    "SELECT id, attempts, lease_token FROM integrity.claim('crm-worker', 1, '30 seconds')",
                    &[],
                )
                .unwrap();
            if let Some(r) = rows.into_iter().next() {
                break r;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let (id, attempts, token): (i64, i32, uuid::Uuid) = (row.get(0), row.get(1), row.get(2));
        let out: Value = c
            .query_one(
                "SELECT integrity.fail($1, 'HTTP 503 from crm.example.com', lease_token => $2)",
                &[&id, &token],
            )
            .unwrap()
            .get(0);
        println!("  attempt {attempt} (attempts = {attempts}): the CRM answers 503 -> {out}");
        dead_id = id;
    }
    let dead = c
        .query_one(
            "SELECT job_id, attempts, last_error FROM integrity.dead_letters WHERE id = $1",
            &[&dead_id],
        )
        .unwrap();
    let (job, attempts, err): (String, i32, String) = (dead.get(0), dead.get(1), dead.get(2));
    println!("  integrity.dead_letters: {job}, {attempts} attempts, last error {err:?}");
    let review: String = c
        .query_one(
            "SELECT subject_type || ' ' || subject_id || ': ' || reason FROM integrity.review_queue ORDER BY id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    println!("  put up for review: {review}");
    let n: i64 = c
        .query_one("SELECT integrity.redrive('crm.contact_updated')", &[])
        .unwrap()
        .get(0);
    println!("  the CRM is back: integrity.redrive('crm.contact_updated') brought back {n}");
    let row = c
        .query_one(
            "SELECT id, attempts, lease_token FROM integrity.claim('crm-worker', 1, '30 seconds')",
            &[],
        )
        .unwrap();
    let (id, token): (i64, uuid::Uuid) = (row.get(0), row.get(2));
    let done: bool = c
        .query_one("SELECT integrity.complete($1, $2)", &[&id, &token])
        .unwrap()
        .get(0);
    println!(
        "  claimed again (attempts reset to {}) and completed: {done}",
        row.get::<_, i32>(1)
    );
    let h = c
        .query_one(
            "SELECT pending, processing, failed, dead_letter, completed FROM integrity.queue_health",
            &[],
        )
        .unwrap();
    println!(
        "  integrity.queue_health: pending {}, processing {}, failed {}, dead_letter {}, completed {}",
        h.get::<_, i64>(0),
        h.get::<_, i64>(1),
        h.get::<_, i64>(2),
        h.get::<_, i64>(3),
        h.get::<_, i64>(4)
    );
    assert!(done);

    section(
        "12. The payment provider fails: one shared breaker opens for every client, probes, closes",
    );
    c.batch_execute(
        "SELECT integrity.breaker_configure('payments.stripe', window_size => 10, minimum_calls => 5,
             failure_rate => 0.5, open_for => '2 seconds', half_open_calls => 2)",
    )
    .unwrap();
    let allow = |c: &mut Client| -> Value {
        c.query_one("SELECT integrity.breaker_allow('payments.stripe')", &[])
            .unwrap()
            .get(0)
    };
    let record = |c: &mut Client, ok: bool| -> String {
        c.query_one(
            "SELECT integrity.breaker_record('payments.stripe', $1)",
            &[&ok],
        )
        .unwrap()
        .get(0)
    };
    for ok in [true, true, false, false, false] {
        let a = allow(&mut c);
        let state = record(&mut c, ok);
        println!(
            "  allow -> {a}; the charge {} -> breaker {state}",
            if ok { "succeeds" } else { "times out" }
        );
    }
    // Eight app instances ask at once while it is open: all refused.
    let let_through = ask_at_once(&cluster, 8, "allowed");
    println!("  8 app instances ask at once while it is open: {let_through} let through");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let probes = ask_at_once(&cluster, 8, "probe");
    println!("  after open_for, 8 instances ask at once: {probes} admitted as probes (half_open_calls = 2)");
    let s1 = record(&mut c, true);
    let s2 = record(&mut c, true);
    println!("  both probes succeed: breaker {s1}, then {s2}");
    let events: String = c
        .query_one(
            "SELECT string_agg(from_state || ' -> ' || to_state, ', ' ORDER BY id) FROM integrity.breaker_events",
            &[],
        )
        .unwrap()
        .get(0);
    println!("  integrity.breaker_events: {events}");
    assert_eq!((let_through, probes, s2.as_str()), (0, 2, "closed"));

    section("13. A customer synced to the CRM twice at once, without a duplicate");
    let starts: Vec<String> = at_once(
        &cluster,
        4,
        "SELECT integrity.sync_start('0000000a-0000-0000-0000-000000000000', 'customer', '106',
                                     'crm', '{\"name\": \"Ann\"}')",
    )
    .iter()
    .map(|a| a["action"].as_str().unwrap_or("?").to_string())
    .collect();
    println!("  4 workers start syncing customer 106 at once: {starts:?}");
    let ok = q(
        &mut c,
        "SELECT integrity.sync_succeeded('0000000a-0000-0000-0000-000000000000', 'customer', '106', 'crm', 'crm-77')",
    );
    println!("  the one that created it reports crm-77: {ok}");
    let again = q(
        &mut c,
        "SELECT integrity.sync_start('0000000a-0000-0000-0000-000000000000', 'customer', '106', 'crm', '{\"name\": \"Ann\"}')",
    );
    println!("  the same payload again: {again}");
    c.batch_execute(
        "SELECT integrity.sync_start('0000000a-0000-0000-0000-000000000000', 'customer', '107', 'crm', '{\"name\": \"Ann\"}')",
    )
    .unwrap();
    let dup = q(
        &mut c,
        "SELECT integrity.sync_succeeded('0000000a-0000-0000-0000-000000000000', 'customer', '107', 'crm', 'crm-77')",
    );
    println!("  a second customer record claims crm-77: {dup}");
    assert_eq!(starts.iter().filter(|a| *a == "create").count(), 1);
    assert_eq!(dup["reason"], "external_id_conflict");

    section(
        "14. The duplicate customer record: merged, its CRM link orphaned, kept from coming back",
    );
    c.batch_execute(
        "CREATE TABLE customers (id bigint PRIMARY KEY, email text, deleted_at timestamptz);
         INSERT INTO customers VALUES (106, 'ann@example.com', NULL), (107, 'Ann@Example.com', NULL),
                                      (108, 'bo@example.com', NULL);",
    )
    .unwrap();
    let refused = q(
        &mut c,
        "SELECT integrity.unique_active('customers', 'email')",
    );
    println!("  a unique index on live emails, asked for while 106 and 107 share one: {refused}");
    c.batch_execute("UPDATE customers SET deleted_at = now() WHERE id = 107")
        .unwrap();
    println!("  107 is merged into 106 (soft-deleted)");
    let orphans: Vec<String> = c
        .query(
            "SELECT entity_id || ' (' || reason || ', now ' || status || ')'
               FROM integrity.find_orphans('crm', 'customers', 'id', 'deleted_at', mark => true)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    println!("  CRM links whose customer is gone or deleted: {orphans:?}");
    let queued = q(
        &mut c,
        "SELECT integrity.unique_active('customers', 'email')",
    );
    println!("  asked again: {queued}");
    let build = queued["build_id"].as_i64().unwrap_or(0);
    let status = loop {
        let s: String = c
            .query_one(
                "SELECT status FROM integrity.index_builds WHERE id = $1",
                &[&build],
            )
            .unwrap()
            .get(0);
        if s != "queued" && s != "building" {
            break s;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    println!("  the background worker built it CONCURRENTLY: {status}");
    let again = c
        .execute(
            "INSERT INTO customers VALUES (109, 'ANN@example.com', NULL)",
            &[],
        )
        .map_err(|e| e.code().map(|c| c.code().to_string()).unwrap_or_default());
    println!("  a new 'ANN@example.com' is refused: {again:?}");
    assert_eq!(refused["reason"], "duplicates");
    assert_eq!(orphans.len(), 1);
    assert_eq!(status, "done");
    assert_eq!(again, Err("23505".to_string()));

    section(
        "15. A checkout saga fails at its last step; its two earlier steps are undone, last first",
    );
    let saga: String = c
        .query_one(
            &format!("SELECT integrity.saga_begin('{ORG}', 'checkout', '{{\"order\": 7}}')::text"),
            &[],
        )
        .unwrap()
        .get(0);
    for (step, undo) in [
        ("charge", r#"{"refund": "ch_1"}"#),
        ("reserve", r#"{"release": "slot 10:00"}"#),
    ] {
        let r = q(
            &mut c,
            &format!("SELECT integrity.saga_step('{saga}', '{step}', '{undo}')"),
        );
        println!("  step {step} done, recorded with its compensation {undo}: {r}");
    }
    println!("  the confirmation e-mail fails for good: abort");
    let undo: Vec<(String, String)> = c
        .query(
            &format!("SELECT step, compensation::text FROM integrity.saga_abort('{saga}', 'mail bounced')"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    println!("  compensations handed out: {undo:?}");
    let stuck: i64 = c
        .query_one("SELECT count(*) FROM integrity.stuck_sagas", &[])
        .unwrap()
        .get(0);
    println!("  integrity.stuck_sagas lists it until they are done: {stuck}");
    let mut last = Value::Null;
    for (step, _) in &undo {
        last = q(
            &mut c,
            &format!("SELECT integrity.saga_compensated('{saga}', '{step}')"),
        );
        println!("  {step} undone: {last}");
    }
    assert_eq!(
        undo.iter().map(|u| u.0.as_str()).collect::<Vec<_>>(),
        ["reserve", "charge"]
    );
    assert_eq!(last["status"], "compensated");

    println!("\ndemo finished: 0 overlapping bookings, 0 inconsistent calls, 2 open alerts for people to follow up, the webhook delivered after its redrive, the breaker closed again, one CRM record per customer and one live customer per email, the failed checkout undone. The throwaway cluster is stopped and removed.");
}

//! The booking demo: a throwaway cluster, `CREATE EXTENSION integrity`, and
//! booking end to end, printed for a person to read.
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
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let ci = cluster.conninfo();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&ci, postgres::NoTls).unwrap();
                c.batch_execute("SET TimeZone = 'UTC'").unwrap();
                // Different start times that all overlap 10:00-10:30.
                let at = format!("2026-12-01 09:{:02}+00", 45 + (i % 3) * 5);
                barrier.wait();
                let v = q(
                    &mut c,
                    &format!("integrity.book('{ORG}', '{DR_SMITH}', '{at}', '30 min')"),
                );
                (i, at, v)
            })
        })
        .collect();
    let mut results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
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
    println!("\ndemo finished: 0 overlaps. The throwaway cluster is stopped and removed.");
}

//! Trigger-function benchmark: inserting into a call centre's `calls` and
//! `appointments` with no triggers, with integrity's trigger functions, and
//! with PL/pgSQL triggers doing the same work (`bench/triggers_baseline.sql`),
//! in one run on one throwaway cluster.
//!
//! Each variant has its own schema with the same tables: `none`; `ours`
//! (integrity's triggers, `tg_child_flag` per row); `ours_set` (the same,
//! with `tg_child_flag` per statement through `attach_child_flag`);
//! `plpgsql`; `floor`, whose `calls` has three no-op BEFORE ROW triggers
//! written in C (contrib `lo`'s `lo_manage`, which does nothing on
//! INSERT): the least any three BEFORE ROW triggers cost, since with one
//! COPY stores rows one at a time instead of in batches; and `floor1`, the
//! same with one no-op trigger, which shows how much of that floor is the
//! switch to one row at a time and how much the calls. Loads, each timed
//! per variant:
//!   * COPY of BENCH_ROWS calls (default 200,000), then of BENCH_ROWS
//!     appointments for random calls;
//!   * single-row INSERTs of BENCH_ROWS calls, then appointments, from
//!     BENCH_CLIENTS (default 8) clients, each statement its own transaction.
//!
//! The rows need no correction (statuses and `appointment_made` NULL,
//! filled by the triggers), so no alert is logged: this measures the rules,
//! not the log. (With `appointment_made DEFAULT false`, every booked call
//! would be a logged correction, as the default breaks the rule.)
//!
//! Every load is timed BENCH_ROUNDS times per variant (fresh tables each
//! round, variants in a rotated order, a CHECKPOINT before each); the
//! medians are printed.
//!
//! env: BENCH_ROWS (200000), BENCH_CLIENTS (8), BENCH_ROUNDS (3),
//! BENCH_SETTINGS (postgresql.conf).

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
mod shared;

use common::Cluster;
use std::io::Write;
use std::time::Instant;

const VARIANTS: [&str; 6] = ["none", "ours", "ours_set", "plpgsql", "floor", "floor1"];
/// The variants with triggers on `calls` only.
const FLOORS: [&str; 2] = ["floor", "floor1"];

fn schema(c: &mut postgres::Client, s: &str) {
    c.batch_execute(&format!(
        "CREATE SCHEMA {s};
         CREATE TABLE {s}.calls (id bigserial PRIMARY KEY, direction text, customer_id int,
             customer_link_status text, session_outcome text,
             appointment_made boolean, appointment_count int NOT NULL DEFAULT 0);
         CREATE TABLE {s}.appointments (id bigserial PRIMARY KEY, call_id bigint,
             cancelled_at timestamptz);
         CREATE INDEX ON {s}.appointments (call_id);"
    ))
    .unwrap();
}

fn ours(c: &mut postgres::Client) {
    for s in ["ours", "ours_set"] {
        c.batch_execute(&format!(
            "CREATE TRIGGER calls_direction BEFORE INSERT ON {s}.calls FOR EACH ROW
                 EXECUTE FUNCTION integrity.tg_default('direction', 'inbound');
             CREATE TRIGGER calls_link BEFORE INSERT OR UPDATE ON {s}.calls FOR EACH ROW
                 EXECUTE FUNCTION integrity.tg_link_status('customer_id', 'customer_link_status', 'linked', 'unlinked');
             CREATE TRIGGER calls_booked BEFORE INSERT OR UPDATE ON {s}.calls FOR EACH ROW
                 EXECUTE FUNCTION integrity.tg_implies('session_outcome', 'appointment_booked', 'appointment_made', 'true');"
        ))
        .unwrap();
    }
    c.batch_execute(
        "CREATE TRIGGER appointments_flag AFTER INSERT OR UPDATE OR DELETE ON ours.appointments FOR EACH ROW
             EXECUTE FUNCTION integrity.tg_child_flag('calls', 'id', 'call_id', 'appointment_made',
                                                      'appointment_count', 'cancelled_at');
         SELECT integrity.attach_child_flag('ours_set.appointments', 'calls', 'id', 'call_id',
                                            'appointment_made', 'appointment_count', 'cancelled_at');",
    )
    .unwrap();
}

/// Every variant's schema, fresh, with its triggers (dropping them first
/// when `again`).
fn schemas(c: &mut postgres::Client, again: bool) {
    if again {
        c.batch_execute(&format!("DROP SCHEMA {} CASCADE", VARIANTS.join(", ")))
            .unwrap();
    }
    for s in VARIANTS {
        schema(c, s);
    }
    ours(c);
    c.batch_execute(include_str!("triggers_baseline.sql"))
        .unwrap();
    c.batch_execute(
        "CREATE EXTENSION IF NOT EXISTS lo;
         CREATE TRIGGER calls_a BEFORE INSERT ON floor.calls FOR EACH ROW EXECUTE FUNCTION lo_manage('id');
         CREATE TRIGGER calls_b BEFORE INSERT ON floor.calls FOR EACH ROW EXECUTE FUNCTION lo_manage('id');
         CREATE TRIGGER calls_c BEFORE INSERT ON floor.calls FOR EACH ROW EXECUTE FUNCTION lo_manage('id');
         CREATE TRIGGER calls_a BEFORE INSERT ON floor1.calls FOR EACH ROW EXECUTE FUNCTION lo_manage('id');",
    )
    .unwrap();
}

/// The i-th call's values: every other call has a customer, every third
/// was booked.
fn call_row(i: u64) -> (Option<i32>, Option<&'static str>) {
    (
        i.is_multiple_of(2).then_some(i as i32),
        i.is_multiple_of(3).then_some("appointment_booked"),
    )
}

/// The i-th appointment's call (1..=calls), spread pseudo-randomly.
fn appointment_call(i: u64, calls: u64) -> i64 {
    (i.wrapping_mul(2_654_435_761) % calls + 1) as i64
}

fn copy(c: &mut postgres::Client, s: &str, rows: u64, calls: u64, table: &str) -> f64 {
    let started = Instant::now();
    let sql = if table == "calls" {
        format!("COPY {s}.calls (customer_id, session_outcome) FROM STDIN")
    } else {
        format!("COPY {s}.appointments (call_id) FROM STDIN")
    };
    let mut w = c.copy_in(sql.as_str()).unwrap();
    let mut buf = Vec::with_capacity(1 << 20);
    for i in 1..=rows {
        if table == "calls" {
            let (cust, outcome) = call_row(i);
            writeln!(
                buf,
                "{}\t{}",
                cust.map_or("\\N".to_string(), |v| v.to_string()),
                outcome.unwrap_or("\\N")
            )
            .unwrap();
        } else {
            writeln!(buf, "{}", appointment_call(i, calls)).unwrap();
        }
        if buf.len() > (1 << 20) - 64 {
            w.write_all(&buf).unwrap();
            buf.clear();
        }
    }
    w.write_all(&buf).unwrap();
    w.finish().unwrap();
    rows as f64 / started.elapsed().as_secs_f64()
}

fn inserts(cluster: &Cluster, s: &str, rows: u64, calls: u64, table: &str, clients: u64) -> f64 {
    let started = Instant::now();
    let per = rows / clients;
    let handles: Vec<_> = (0..clients)
        .map(|k| {
            let ci = cluster.conninfo();
            let (s, table) = (s.to_string(), table.to_string());
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&ci, postgres::NoTls).unwrap();
                let st = if table == "calls" {
                    c.prepare(&format!(
                        "INSERT INTO {s}.calls (customer_id, session_outcome) VALUES ($1, $2)"
                    ))
                } else {
                    c.prepare(&format!(
                        "INSERT INTO {s}.appointments (call_id) VALUES ($1)"
                    ))
                }
                .unwrap();
                for j in 0..per {
                    let i = k * per + j + 1;
                    if table == "calls" {
                        let (cust, outcome) = call_row(i);
                        c.execute(&st, &[&cust, &outcome]).unwrap();
                    } else {
                        c.execute(&st, &[&appointment_call(i, calls)]).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    (per * clients) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let rows: u64 = shared::var("BENCH_ROWS", 200_000);
    let clients = shared::var("BENCH_CLIENTS", 8u64);
    let rounds: usize = shared::var("BENCH_ROUNDS", 3);
    let settings_owned = shared::settings();
    let settings: Vec<&str> = settings_owned.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(&settings);
    let mut c = cluster.connect();
    schemas(&mut c, false);
    let pg: String = c.query_one("SHOW server_version", &[]).unwrap().get(0);
    println!("trigger benchmark: PostgreSQL {pg}, {rows} rows per load, single-row INSERTs from {clients} clients, medians of {rounds} rounds");
    println!(
        "{:<26} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  {:>7} {:>7} {:>7} {:>8}  {:>12} {:>11} {:>10}",
        "load (rows/s)",
        "none",
        "ours",
        "ours_set",
        "plpgsql",
        "floor",
        "floor1",
        "ours ×",
        "set ×",
        "floor ×",
        "floor1 ×",
        "plpgsql/ours",
        "plpgsql/set",
        "ours/floor"
    );
    let report = |load: &str, r: [f64; 6]| {
        let floor = |v: f64, digits: usize| {
            if v.is_nan() {
                "-".to_string()
            } else {
                format!("{v:.digits$}")
            }
        };
        println!(
            "{load:<26} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>8} {:>8}  {:>7.2} {:>7.2} {:>7} {:>8}  {:>12.2} {:>11.2} {:>10}",
            r[0],
            r[1],
            r[2],
            r[3],
            floor(r[4], 0),
            floor(r[5], 0),
            r[0] / r[1],
            r[0] / r[2],
            floor(r[0] / r[4], 2),
            floor(r[0] / r[5], 2),
            r[1] / r[3],
            r[2] / r[3],
            floor(r[4] / r[1], 2),
        );
    };
    // The floors only have triggers on calls: their appointments loads would
    // repeat `none`. Each round times every variant, in an order rotated
    // from round to round, so a machine that slows down midway does not
    // favour one; each cell is the median of its rounds.
    const LOADS: [&str; 4] = [
        "COPY calls",
        "COPY appointments",
        "INSERT calls (1 row each)",
        "INSERT appointments",
    ];
    let mut runs = vec![vec![Vec::new(); VARIANTS.len()]; LOADS.len()];
    for round in 0..rounds {
        if round > 0 {
            schemas(&mut c, true);
        }
        for (l, load) in LOADS.iter().enumerate() {
            if l == 2 {
                // Fresh tables for the INSERT loads (as for the COPY loads):
                // after a TRUNCATE, PL/pgSQL's cached plans would scan the
                // grown table.
                schemas(&mut c, true);
            }
            for j in 0..VARIANTS.len() {
                let v = (j + round) % VARIANTS.len();
                let s = VARIANTS[v];
                let r = if FLOORS.contains(&s) && load.contains("appointments") {
                    f64::NAN
                } else {
                    // Every load starts from clean shared buffers and a
                    // fresh checkpoint: without this, the dirty pages of
                    // the loads before it (and a checkpoint they set off
                    // in the middle of it) fall on whichever variant comes
                    // next.
                    c.batch_execute("CHECKPOINT").unwrap();
                    match l {
                        0 => copy(&mut c, s, rows, rows, "calls"),
                        1 => copy(&mut c, s, rows, rows, "appointments"),
                        2 => inserts(&cluster, s, rows, rows, "calls", clients),
                        _ => inserts(&cluster, s, rows, rows, "appointments", clients),
                    }
                };
                eprintln!("round {}: {load}, {s}: {r:.0} rows/s", round + 1);
                runs[l][v].push(r);
            }
        }
    }
    let medians: Vec<[f64; 6]> = runs
        .into_iter()
        .map(|cells| {
            let mut r = [f64::NAN; 6];
            for (v, cell) in cells.into_iter().enumerate() {
                if cell.iter().all(|x| !x.is_nan()) {
                    r[v] = shared::median(cell);
                }
            }
            r
        })
        .collect();
    for (load, r) in LOADS.iter().zip(&medians) {
        report(load, *r);
    }
    let (copy_calls, copy_appts) = (medians[0], medians[1]);
    // Every variant with triggers ends with the same, true, calls.
    for s in ["ours", "ours_set", "plpgsql"] {
        let wrong: i64 = c
            .query_one(
                &format!(
                    "SELECT count(*) FROM {s}.calls p
                     LEFT JOIN LATERAL (SELECT count(*) AS n FROM {s}.appointments a
                                        WHERE a.call_id = p.id AND a.cancelled_at IS NULL) t ON true
                     WHERE p.appointment_count <> t.n OR p.direction IS NULL
                        OR p.customer_link_status IS NULL"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(wrong, 0, "{s}: calls not kept consistent");
    }
    println!("check: in ours, ours_set and plpgsql every call's direction, link status and appointment count are right");
    println!(
        "summary: BEFORE triggers on COPY calls cost {:.2}x the no-trigger time (target <= 1.25; three no-op C triggers cost {:.2}x, one {:.2}x), plpgsql/ours {:.2} (target > 1); tg_child_flag on COPY: plpgsql/ours {:.2} per row, {:.2} per statement (target > 1)",
        copy_calls[0] / copy_calls[1],
        copy_calls[0] / copy_calls[4],
        copy_calls[0] / copy_calls[5],
        copy_calls[1] / copy_calls[3],
        copy_appts[1] / copy_appts[3],
        copy_appts[2] / copy_appts[3]
    );
}

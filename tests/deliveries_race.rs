//! The delivery log from real clients.
//!
//! * 16 workers claim and complete or fail 20,000 deliveries while a killer
//!   terminates workers mid-lease (`pg_terminate_backend`); killed workers
//!   reconnect as new workers. Every worker logs each claim and how it
//!   settled it. Afterwards: every delivery is completed or dead-lettered;
//!   its `attempts` equal the claims logged for it; a completed one was
//!   completed exactly once, by its last claim; a dead letter used exactly
//!   `max_attempts` claims; no two claims of one delivery were ever held at
//!   once; nothing is lost.
//! * With ordering keys: no two deliveries of one key were ever in flight
//!   together, and each key's completions are in enqueue order.
//! * Dead letters requeued while later deliveries of their keys are in
//!   flight: still never two deliveries of a key out at once.

mod common;

use common::Cluster;
use postgres::fallible_iterator::FallibleIterator;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WORKERS: usize = 16;
const DELIVERIES: i64 = 20_000;

/// One claim as a worker saw it: the delivery, its key, when the claim
/// returned and when its settling statement was sent (None: the worker was
/// killed first), and whether `complete` said true.
#[derive(Clone, Debug)]
struct Claim {
    worker: String,
    id: i64,
    key: Option<String>,
    claimed: Instant,
    settled: Option<Instant>,
    completed: Option<bool>,
}

struct Shared {
    log: Mutex<Vec<Claim>>,
    pids: Mutex<HashMap<usize, (i32, String)>>,
    killed: Mutex<Vec<String>>,
    stop: AtomicBool,
    next_worker: AtomicUsize,
    started: Instant,
}

/// Whether `e` is this connection being terminated.
fn killed(e: &postgres::Error) -> bool {
    e.is_closed()
        || e.code() == Some(&postgres::error::SqlState::ADMIN_SHUTDOWN)
        || e.as_db_error().is_none()
}

/// A worker: claims a batch, "processes" each delivery, completes it or
/// fails it as its payload says, until the queue is drained.
fn worker(cluster_info: String, shared: Arc<Shared>, slot: usize) {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let n = shared.next_worker.fetch_add(1, Ordering::SeqCst);
        let name = format!("w{n}");
        let Ok(mut c) = postgres::Client::connect(&cluster_info, postgres::NoTls) else {
            continue;
        };
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        shared
            .pids
            .lock()
            .unwrap()
            .insert(slot, (pid, name.clone()));
        let claim = c
            .prepare("SELECT id, ordering_key, attempts, (payload->>'fail_times')::int, lease_token, COALESCE((payload->>'work_ms')::int, 0) FROM integrity.claim($1, 4, '2 seconds')")
            .unwrap();
        let complete = c.prepare("SELECT integrity.complete($1, $2)").unwrap();
        let fail = c
            .prepare("SELECT integrity.fail($1, 'planned failure', '0', $2)")
            .unwrap();
        let mut idle = 0;
        'session: loop {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let rows = match c.query(&claim, &[&name]) {
                Ok(r) => r,
                // Killed: a new worker takes the slot. Any other error is a bug.
                Err(e) if killed(&e) => break 'session,
                Err(e) => panic!("claim failed: {e}"),
            };
            if rows.is_empty() {
                idle += 1;
                std::thread::sleep(Duration::from_millis(20));
                if idle > 200 {
                    return;
                }
                continue;
            }
            idle = 0;
            let claimed = Instant::now();
            let mut mine: Vec<usize> = Vec::new();
            {
                let mut log = shared.log.lock().unwrap();
                for r in &rows {
                    mine.push(log.len());
                    log.push(Claim {
                        worker: name.clone(),
                        id: r.get(0),
                        key: r.get(1),
                        claimed,
                        settled: None,
                        completed: None,
                    });
                }
            }
            for (r, at) in rows.iter().zip(mine) {
                let (id, attempts, fail_times, token, work_ms): (i64, i32, i32, uuid::Uuid, i32) =
                    (r.get(0), r.get(2), r.get(3), r.get(4), r.get(5));
                // The work: a little time (the payload's work_ms, if any),
                // during which the killer may strike.
                std::thread::sleep(Duration::from_micros(200 + 1000 * work_ms as u64));
                // The hold ends when the settling statement is sent: a claim
                // of the same delivery (or key) returning before this moment
                // would have overlapped it.
                let settling = Instant::now();
                let result = if attempts <= fail_times {
                    c.query_one(&fail, &[&id, &token]).map(|_| false)
                } else {
                    c.query_one(&complete, &[&id, &token])
                        .map(|row| row.get::<_, bool>(0))
                };
                match result {
                    Ok(done) => {
                        let mut log = shared.log.lock().unwrap();
                        log[at].settled = Some(settling);
                        log[at].completed = Some(done);
                    }
                    // Killed while settling: the outcome is unknown.
                    Err(e) if killed(&e) => break 'session,
                    Err(e) => panic!("settling failed: {e}"),
                }
            }
        }
    }
}

/// Run the workers over what `enqueue` enqueued, killing some if `kill`,
/// and, if `requeue`, bringing every dead letter back (payload set to
/// succeed) while they work; the claims they logged, the workers killed,
/// and an admin connection.
/// The server's own record of every claim (a hand-out adds one attempt)
/// goes to `claims_audit`, kept by a trigger.
fn run(
    cluster: &Cluster,
    enqueue: &str,
    kill: bool,
    requeue: bool,
) -> (Vec<Claim>, Vec<String>, postgres::Client) {
    let mut admin = cluster.connect();
    admin
        .batch_execute(
            "CREATE TABLE claims_audit (id bigint, worker text, attempts int);
             CREATE FUNCTION audit_claim() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.attempts > OLD.attempts THEN
                 INSERT INTO public.claims_audit VALUES (NEW.id, NEW.worker, NEW.attempts);
               END IF;
               RETURN NULL;
             END $$;
             CREATE TRIGGER audit_claim AFTER UPDATE ON integrity.deliveries
               FOR EACH ROW EXECUTE FUNCTION audit_claim();",
        )
        .unwrap();
    admin.batch_execute(enqueue).unwrap();
    let shared = Arc::new(Shared {
        log: Mutex::new(Vec::new()),
        pids: Mutex::new(HashMap::new()),
        killed: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        next_worker: AtomicUsize::new(0),
        started: Instant::now(),
    });
    let handles: Vec<_> = (0..WORKERS)
        .map(|slot| {
            let (ci, shared) = (cluster.conninfo(), shared.clone());
            std::thread::spawn(move || worker(ci, shared, slot))
        })
        .collect();
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        std::thread::sleep(Duration::from_millis(if requeue { 20 } else { 150 }));
        if requeue {
            admin
                .batch_execute(
                    "UPDATE integrity.deliveries SET payload = '{\"fail_times\": 0}' WHERE status = 'dead_letter';
                     SELECT integrity.requeue(id) FROM integrity.deliveries
                      WHERE status = 'dead_letter' AND payload->>'fail_times' = '0';",
                )
                .unwrap();
        }
        let left: i64 = admin
            .query_one(
                if requeue {
                    "SELECT count(*) FROM integrity.deliveries WHERE status <> 'completed'"
                } else {
                    "SELECT count(*) FROM integrity.deliveries WHERE status NOT IN ('completed', 'dead_letter')"
                },
                &[],
            )
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} deliveries never finished"
        );
        if kill && kills < 12 && shared.started.elapsed() > Duration::from_millis(300) {
            let victim = shared.pids.lock().unwrap().get(&(kills % WORKERS)).cloned();
            if let Some((pid, name)) = victim {
                shared.killed.lock().unwrap().push(name);
                admin
                    .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                    .unwrap();
                kills += 1;
            }
        }
    }
    shared.stop.store(true, Ordering::SeqCst);
    for h in handles {
        h.join().unwrap();
    }
    if kill {
        assert!(kills >= 6, "only {kills} workers were killed");
        println!("deliveries race: {kills} workers killed mid-run");
    }
    let log = shared.log.lock().unwrap().clone();
    let killed = shared.killed.lock().unwrap().clone();
    (log, killed, admin)
}

#[test]
fn workers_killed_mid_lease_lose_nothing_and_never_share_a_delivery() {
    let cluster = Cluster::start();
    // Every 10th delivery fails once; every 50th fails 3 times, its last
    // allowed attempt (max_attempts 3): dead letter.
    let (log, killed, mut admin) = run(
        &cluster,
        &format!(
            "SELECT integrity.enqueue('0000000a-0000-0000-0000-000000000000', 'job-' || g, 'e',
                 jsonb_build_object('fail_times', CASE WHEN g % 50 = 0 THEN 3 WHEN g % 10 = 0 THEN 1 ELSE 0 END),
                 max_attempts => 3)
               FROM generate_series(1, {DELIVERIES}) g"
        ),
        true,
        false,
    );
    let rows = admin
        .query(
            "SELECT id, status::text, attempts, max_attempts, (payload->>'fail_times')::int FROM integrity.deliveries",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len() as i64, DELIVERIES, "nothing lost, nothing added");
    let mut audits: HashMap<i64, Vec<(String, i32)>> = HashMap::new();
    for r in admin
        .query(
            "SELECT id, worker, attempts FROM claims_audit ORDER BY id, attempts",
            &[],
        )
        .unwrap()
    {
        audits
            .entry(r.get(0))
            .or_default()
            .push((r.get(1), r.get(2)));
    }
    let mut claims: HashMap<i64, Vec<&Claim>> = HashMap::new();
    for c in &log {
        claims.entry(c.id).or_default().push(c);
    }
    let (mut completed, mut dead, mut expired) = (0, 0, 0);
    for r in &rows {
        let (id, status, attempts, max, fail_times): (i64, String, i32, i32, i32) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let mut mine = claims.remove(&id).unwrap_or_default();
        mine.sort_by_key(|c| c.claimed);
        // The server's record: one claim per attempt, numbered 1..attempts;
        // the workers' logs hold all of them but those whose answer was
        // lost with a killed worker.
        let audit = audits.remove(&id).unwrap_or_default();
        let numbers: Vec<i32> = audit.iter().map(|(_, n)| *n).collect();
        assert_eq!(
            numbers,
            (1..=attempts).collect::<Vec<_>>(),
            "delivery {id}: attempts vs claims"
        );
        for c in &mine {
            assert!(
                audit.iter().any(|(w, _)| *w == c.worker),
                "delivery {id}: claim by {} not on record",
                c.worker
            );
        }
        for (w, _) in &audit {
            assert!(
                mine.iter().any(|c| c.worker == *w) || killed.contains(w),
                "delivery {id}: a claim by {w} no worker saw"
            );
        }
        // No two claims held at once.
        for w in mine.windows(2) {
            let end = w[0].settled.unwrap_or(w[0].claimed);
            assert!(
                end <= w[1].claimed,
                "delivery {id} was held by two workers at once"
            );
        }
        let completes = mine.iter().filter(|c| c.completed == Some(true)).count();
        expired += mine.iter().filter(|c| c.settled.is_none()).count();
        match status.as_str() {
            "completed" => {
                completed += 1;
                // Completed once, by its last claim (or by a claim whose
                // answer was lost with its killed worker).
                let last = mine.last().unwrap();
                assert!(
                    completes == 1 && last.completed == Some(true)
                        || completes == 0 && last.settled.is_none(),
                    "delivery {id}: completed {completes} times"
                );
                assert!(attempts <= max);
            }
            "dead_letter" => {
                dead += 1;
                assert_eq!(completes, 0, "delivery {id}: dead but completed");
                assert_eq!(
                    attempts, max,
                    "delivery {id}: dead after {attempts} of {max}"
                );
                // Only planned failures and killed workers spend attempts.
                let killed = mine.iter().filter(|c| c.settled.is_none()).count() as i32;
                assert!(
                    fail_times >= max || killed > 0,
                    "delivery {id} died unplanned"
                );
            }
            other => panic!("delivery {id} ended {other}"),
        }
    }
    assert!(claims.is_empty(), "claims of deliveries that do not exist");
    assert!(
        dead >= (DELIVERIES / 50) as usize,
        "planned dead letters: {dead}"
    );
    println!("deliveries race: {completed} completed, {dead} dead letters, {expired} claims lost with killed workers, {} claims in all", log.len());
}

/// The claims of each ordering key in the order they were made, after
/// asserting that none was made before the one ahead of it was settled:
/// no two deliveries of a key were ever in flight together.
fn claims_by_key_never_overlapping(log: &[Claim]) -> HashMap<String, Vec<&Claim>> {
    let mut by_key: HashMap<String, Vec<&Claim>> = HashMap::new();
    for c in log {
        if let Some(k) = &c.key {
            by_key.entry(k.clone()).or_default().push(c);
        }
    }
    for (key, claims) in by_key.iter_mut() {
        claims.sort_by_key(|c| c.claimed);
        for w in claims.windows(2) {
            let end = w[0].settled.expect("no worker was killed");
            assert!(
                end <= w[1].claimed,
                "{key}: deliveries {} and {} in flight together",
                w[0].id,
                w[1].id
            );
        }
    }
    by_key
}

#[test]
fn ordering_keys_never_overlap_and_complete_in_enqueue_order() {
    let cluster = Cluster::start();
    // 40 keys x 50 deliveries, interleaved, plus unordered ones; some fail
    // once (a failed delivery holds its key until its retry completes).
    let (log, _, mut admin) = run(
        &cluster,
        "SELECT integrity.enqueue('0000000a-0000-0000-0000-000000000000', 'job-' || g, 'e',
             jsonb_build_object('fail_times', CASE WHEN g % 7 = 0 THEN 1 ELSE 0 END),
             ordering_key => CASE WHEN g % 5 = 0 THEN NULL ELSE 'key-' || (g % 40) END)
           FROM generate_series(1, 2500) g",
        false,
        false,
    );
    let by_key = claims_by_key_never_overlapping(&log);
    assert!(by_key.len() >= 30);
    for (key, claims) in by_key {
        let done: Vec<i64> = claims
            .iter()
            .filter(|c| c.completed == Some(true))
            .map(|c| c.id)
            .collect();
        assert!(
            done.windows(2).all(|w| w[0] < w[1]),
            "{key}: completed out of enqueue order"
        );
    }
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM integrity.deliveries WHERE status <> 'completed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    println!(
        "ordering keys: {} claims, no key in flight twice, completions in enqueue order",
        log.len()
    );
}

/// A dead letter brought back by `requeue` while a later delivery of its
/// key is in flight waits for it: the key still has one delivery out at a
/// time. 40 keys x 25 deliveries; the first three of each key fail their
/// only attempt and are requeued (to succeed) while the workers go on.
#[test]
fn requeued_dead_letters_wait_for_their_keys_delivery_in_flight() {
    let cluster = Cluster::start();
    let (log, _, mut admin) = run(
        &cluster,
        "SELECT integrity.enqueue('0000000a-0000-0000-0000-000000000000', 'job-' || g, 'e',
             jsonb_build_object('fail_times', CASE WHEN g <= 120 THEN 1 ELSE 0 END, 'work_ms', 3),
             ordering_key => 'key-' || (g % 40), max_attempts => 1)
           FROM generate_series(1, 1000) g",
        false,
        true,
    );
    assert!(
        log.iter().all(|c| c.key.is_some()),
        "every delivery has a key"
    );
    assert_eq!(claims_by_key_never_overlapping(&log).len(), 40);
    let (completed, twice): (i64, i64) = {
        let r = admin
            .query_one(
                "SELECT (SELECT count(*) FROM integrity.deliveries WHERE status = 'completed'),
                        (SELECT count(*) FROM (SELECT id FROM claims_audit GROUP BY id HAVING count(*) = 2) t)",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(completed, 1000, "every delivery completed in the end");
    assert_eq!(
        twice, 120,
        "each of the 120 dead letters was claimed again once after its requeue"
    );
    println!(
        "requeue: {} claims, 120 dead letters requeued and completed, no key in flight twice",
        log.len()
    );
}

/// `enqueue` wakes a worker that LISTENs on integrity_deliveries (payload:
/// the event type); a duplicate does not.
#[test]
fn enqueue_notifies_listening_workers() {
    let cluster = Cluster::start();
    let mut listener = cluster.connect();
    listener
        .batch_execute("LISTEN integrity_deliveries")
        .unwrap();
    let mut c = cluster.connect();
    let enqueue = "SELECT integrity.enqueue('0000000a-0000-0000-0000-000000000000', 'n-1', 'invoice.paid', '{}')";
    c.batch_execute(enqueue).unwrap();
    let got = {
        let mut n = listener.notifications();
        let mut it = n.timeout_iter(Duration::from_secs(5));
        it.next().unwrap().map(|n| n.payload().to_string())
    };
    assert_eq!(got.as_deref(), Some("invoice.paid"));
    c.batch_execute(enqueue).unwrap();
    let again = {
        let mut n = listener.notifications();
        let mut it = n.timeout_iter(Duration::from_millis(500));
        it.next().unwrap().map(|n| n.payload().to_string())
    };
    assert!(again.is_none(), "a duplicate enqueue notified");
}

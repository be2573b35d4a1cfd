//! Circuit breakers from real clients: 32 connections ask a half-open
//! breaker at the same moment, round after round; each round exactly the
//! permitted number of probes is admitted, across all of them. And the hot
//! path writes nothing: `breaker_allow` on a closed breaker assigns no
//! transaction id.

mod common;

use common::Cluster;
use std::sync::{Arc, Barrier};

const CLIENTS: usize = 32;
const ROUNDS: usize = 10;
const PROBES: i32 = 3;

#[test]
fn a_half_open_breaker_admits_exactly_its_probes() {
    let cluster = Cluster::start();
    let mut admin = cluster.connect();
    admin
        .batch_execute(&format!(
            "SELECT integrity.breaker_configure('pay', window_size => 5, minimum_calls => 5,
                                                half_open_calls => {PROBES}, open_for => '1 hour');
             SELECT integrity.breaker_record('pay', false) FROM generate_series(1, 5);"
        ))
        .unwrap();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let reopen = Arc::new(Barrier::new(CLIENTS));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (ci, barrier, reopen) = (cluster.conninfo(), barrier.clone(), reopen.clone());
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&ci, postgres::NoTls).unwrap();
                let allow = c
                    .prepare("SELECT (a->>'allowed')::boolean, a->>'state', (a->>'probe')::boolean FROM integrity.breaker_allow('pay') a")
                    .unwrap();
                let mut admitted = Vec::new();
                for _ in 0..ROUNDS {
                    // Client 0 makes the open breaker due for probes.
                    if i == 0 {
                        c.batch_execute(
                            "UPDATE integrity.circuit_breakers
                                SET state = 'open', opened_at = now() - interval '2 hours',
                                    probes_admitted = 0 WHERE key = 'pay'",
                        )
                        .unwrap();
                    }
                    barrier.wait();
                    let r = c.query_one(&allow, &[]).unwrap();
                    let (ok, state, probe): (bool, String, Option<bool>) = (r.get(0), r.get(1), r.get(2));
                    assert_eq!(state, "half_open");
                    assert_eq!(ok, probe == Some(true), "allowed iff a probe");
                    admitted.push(ok as i32);
                    reopen.wait();
                }
                admitted
            })
        })
        .collect();
    let per_client: Vec<Vec<i32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for round in 0..ROUNDS {
        let n: i32 = per_client.iter().map(|v| v[round]).sum();
        assert_eq!(
            n, PROBES,
            "round {round}: {n} probes admitted of {PROBES} permitted"
        );
    }
    let row = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE to_state = 'half_open') FROM integrity.breaker_events WHERE key = 'pay'",
            &[],
        )
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        ROUNDS as i64,
        "one transition to half-open per round"
    );
    println!("breaker race: {CLIENTS} clients x {ROUNDS} rounds, exactly {PROBES} probes admitted each round");
}

#[test]
fn allow_on_a_closed_breaker_writes_nothing() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    c.batch_execute("SELECT integrity.breaker_configure('fast')")
        .unwrap();
    for key in ["fast", "never-configured"] {
        let row = c
            .query_one(
                "SELECT integrity.breaker_allow($1)->>'state', pg_current_xact_id_if_assigned() IS NULL",
                &[&key],
            )
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "closed");
        assert!(
            row.get::<_, bool>(1),
            "{key}: breaker_allow assigned a transaction id"
        );
    }
    // An open breaker's refusal writes nothing either.
    c.batch_execute(
        "SELECT integrity.breaker_configure('down', window_size => 1, minimum_calls => 1);
         SELECT integrity.breaker_record('down', false);",
    )
    .unwrap();
    let row = c
        .query_one(
            "SELECT integrity.breaker_allow('down')->>'state', pg_current_xact_id_if_assigned() IS NULL",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "open");
    assert!(row.get::<_, bool>(1));
}

//! Sagas from real clients: 15 workers record steps of one saga, each step
//! in the same transaction as its own business write, while a 16th aborts
//! the saga mid-way. Afterwards every step that took effect is exactly one
//! compensation the abort handed out (or one still pending), no refused step
//! left a trace, and the steps are numbered without gaps.

mod common;

use common::Cluster;
use std::collections::BTreeSet;

const ORG: &str = "0000000b-0000-0000-0000-000000000000";
const WORKERS: usize = 15;
const STEPS: usize = 20;

#[test]
fn a_step_is_either_compensated_or_refused_never_lost() {
    let cluster = Cluster::start();
    let mut c = cluster.connect();
    c.batch_execute("CREATE TABLE effects (saga uuid, step text, PRIMARY KEY (saga, step))")
        .unwrap();
    for round in 0..10 {
        let saga: String = c
            .query_one(
                &format!("SELECT integrity.saga_begin('{ORG}', 'race', '{{}}')::text"),
                &[],
            )
            .unwrap()
            .get(0);
        let s = saga.clone();
        // Workers answer the steps that took effect; the aborter answers the
        // compensations it was handed.
        let answers = cluster.at_once(WORKERS + 1, move |i, c| {
            if i == WORKERS {
                std::thread::sleep(std::time::Duration::from_millis(3 + round as u64));
                return c
                    .query(
                        &format!("SELECT step FROM integrity.saga_abort('{s}', 'race')"),
                        &[],
                    )
                    .unwrap()
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>();
            }
            let mut done = Vec::new();
            for k in 0..STEPS {
                let step = format!("w{i}-{k}");
                let mut tx = c.transaction().unwrap();
                tx.execute(
                    &format!("INSERT INTO effects VALUES ('{s}', '{step}')"),
                    &[],
                )
                .unwrap();
                let a: serde_json::Value = tx
                    .query_one(
                        &format!(
                            "SELECT integrity.saga_step('{s}', '{step}', '{{\"undo\": \"{step}\"}}')"
                        ),
                        &[],
                    )
                    .unwrap()
                    .get(0);
                if a["ok"] == true {
                    tx.commit().unwrap();
                    done.push(step);
                } else {
                    assert_eq!((&a["reason"], &a["recorded"]), (&"aborted".into(), &false.into()), "{a}");
                    tx.rollback().unwrap();
                    break;
                }
            }
            done
        });
        let handed: BTreeSet<String> = answers[WORKERS].iter().cloned().collect();
        assert_eq!(
            handed.len(),
            answers[WORKERS].len(),
            "a compensation handed out twice"
        );
        let took_effect: BTreeSet<String> = answers[..WORKERS].iter().flatten().cloned().collect();
        assert_eq!(
            took_effect, handed,
            "round {round}: steps done vs compensations handed out"
        );
        // On the server: the business rows, the recorded steps and the
        // compensations still pending are the same set.
        let set = |c: &mut postgres::Client, sql: &str| -> BTreeSet<String> {
            c.query(sql, &[])
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect()
        };
        let effects = set(
            &mut c,
            &format!("SELECT step FROM effects WHERE saga = '{saga}'"),
        );
        let steps = set(
            &mut c,
            &format!("SELECT step FROM integrity.saga_steps WHERE saga_id = '{saga}'"),
        );
        let pending = set(
            &mut c,
            &format!("SELECT step FROM integrity.saga_abort('{saga}')"),
        );
        assert_eq!(effects, took_effect);
        assert_eq!(steps, took_effect);
        assert_eq!(pending, took_effect);
        let row = c
            .query_one(
                &format!(
                    "SELECT s.steps, s.status,
                            (SELECT count(*) FROM integrity.saga_steps t WHERE t.saga_id = s.id),
                            (SELECT coalesce(max(seq), 0) FROM integrity.saga_steps t WHERE t.saga_id = s.id)
                       FROM integrity.sagas s WHERE s.id = '{saga}'"
                ),
                &[],
            )
            .unwrap();
        let (n, status, count, max): (i32, String, i64, i32) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!((n as i64, max as i64), (count, count), "seq without gaps");
        let expected = if count > 0 {
            "compensating"
        } else {
            "compensated"
        };
        assert_eq!(status, expected);
        let refused = answers[..WORKERS]
            .iter()
            .filter(|d| d.len() < STEPS)
            .count();
        assert!(
            refused > 0 || count as usize == WORKERS * STEPS,
            "a worker stopped short without a refusal"
        );
        println!(
            "round {round}: {count} steps took effect before the abort, {refused} workers refused after it"
        );
    }
}

//! Sagas: work that spans several systems (charge the card, reserve the
//! slot, send the e-mail) with no transaction around all of it. Each step
//! that took effect is recorded with what undoes it, in the same
//! transaction as the step's own write; an abort hands the compensations out
//! in reverse order, and each is confirmed once done.
//!
//! Every call locks the saga's row first, so a step recorded at the moment
//! of an abort is either before it (and in the compensations it hands out)
//! or after it (and refused as data: `{"ok":false,"reason":"aborted"}`, so
//! the caller undoes its own step). Nothing is lost between the two.

use crate::errors::{raise, required, text_arg, Kind};
use crate::jsonb::{Builder, Jsonb};
use crate::plans::{run, Stmt};
use pgrx::datum::{Interval, Uuid};
use pgrx::pg_sys;
use pgrx::prelude::*;

pgrx::extension_sql_file!(
    "../sql/sagas.sql",
    name = "sagas_tables",
    requires = ["bootstrap"]
);
pgrx::extension_sql_file!(
    "../sql/sagas_api.sql",
    name = "sagas_api",
    requires = [
        "sagas_tables",
        saga_begin,
        saga_step,
        saga_complete,
        saga_abort,
        saga_compensated
    ]
);

static BEGIN: Stmt = Stmt {
    sql: "INSERT INTO integrity.sagas (id, org_id, kind, payload, stuck_after)
          VALUES ($1, $2, $3, $4, pg_catalog.now() + $5)",
    args: &[
        pg_sys::UUIDOID,
        pg_sys::UUIDOID,
        pg_sys::TEXTOID,
        pg_sys::JSONBOID,
        pg_sys::INTERVALOID,
    ],
    writes: true,
};

static LOCK: Stmt = Stmt {
    sql: "SELECT status, steps FROM integrity.sagas WHERE id = $1 FOR UPDATE",
    args: &[pg_sys::UUIDOID],
    writes: true,
};

/// A saga's status and step count, its row locked to the end of the
/// transaction; `55000` when there is no such saga.
fn locked(client: &mut pgrx::spi::SpiClient<'_>, f: &'static str, id: Uuid) -> (String, i32) {
    let t = run(client, &LOCK, None, &[id.into()]);
    let r = t.first();
    match (
        r.get::<String>(1).ok().flatten(),
        r.get::<i32>(2).ok().flatten(),
    ) {
        (Some(status), Some(steps)) => (status, steps),
        _ => raise(
            Kind::NotInPrerequisiteState,
            f,
            format!("saga {id} does not exist"),
            "Begin it with integrity.saga_begin(org_id, kind, payload), which returns its id.",
        ),
    }
}

/// `{"ok":false,"reason":"aborted","status":…}`: the saga was aborted first.
fn aborted(status: &str) -> Jsonb {
    Builder::new()
        .begin_object()
        .key("ok")
        .bool(false)
        .key("reason")
        .string("aborted")
        .key("status")
        .string(status)
        .end()
        .finish()
}

/// Begin a saga; returns its id.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn saga_begin(
    org_id: Option<Uuid>,
    kind: Option<&str>,
    payload: default!(Option<Jsonb>, "'{}'"),
    stuck_after: default!(Option<Interval>, "'1 hour'"),
) -> Uuid {
    const F: &str = "integrity.saga_begin";
    let org_id = required(org_id, F, "org_id");
    let kind = text_arg(F, "kind", kind, 255);
    let payload = required(payload, F, "payload");
    let stuck_after = crate::errors::positive_interval(F, "stuck_after", stuck_after);
    let id = crate::ids::random_uuid();
    Spi::connect_mut(|client| {
        run(
            client,
            &BEGIN,
            None,
            &[
                id.into(),
                org_id.into(),
                kind.into(),
                payload.into(),
                stuck_after.into(),
            ],
        );
    });
    id
}

static FIND_STEP: Stmt = Stmt {
    sql: "SELECT seq, compensation IS NOT DISTINCT FROM $3
            FROM integrity.saga_steps WHERE saga_id = $1 AND step = $2",
    args: &[pg_sys::UUIDOID, pg_sys::TEXTOID, pg_sys::JSONBOID],
    writes: true,
};

static ADD_STEP: Stmt = Stmt {
    sql: "WITH s AS (
              UPDATE integrity.sagas SET steps = steps + 1, updated_at = pg_catalog.now()
               WHERE id = $1 RETURNING steps, org_id)
          INSERT INTO integrity.saga_steps (saga_id, seq, org_id, step, compensation)
          SELECT $1, s.steps, s.org_id, $2, $3 FROM s
          RETURNING seq",
    args: &[pg_sys::UUIDOID, pg_sys::TEXTOID, pg_sys::JSONBOID],
    writes: true,
};

/// Record a step that took effect, with the compensation that undoes it
/// (NULL: nothing to undo). `{"ok":true,"seq":n}`; the same step again is
/// `ok` with `"duplicate":true` (also once the saga completed);
/// `{"ok":false,"reason":"aborted","recorded":…}` when the saga was aborted
/// first (`recorded`: the step is among the compensations the abort hands
/// out; otherwise undoing it is the caller's).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn saga_step(
    saga_id: Option<Uuid>,
    step: Option<&str>,
    compensation: default!(Option<Jsonb>, "NULL"),
) -> Jsonb {
    const F: &str = "integrity.saga_step";
    let id = required(saga_id, F, "saga_id");
    let step = text_arg(F, "step", step, 255);
    // JSON null would be handed out by an abort as a compensation to carry
    // out; "nothing to undo" is SQL NULL, which hands out nothing.
    if compensation
        .as_ref()
        .is_some_and(|c| c.type_name() == "null")
    {
        raise(
            Kind::InvalidParameter,
            F,
            format!("compensation of step {step:?} is JSON null"),
            "Pass SQL NULL (or leave compensation out) for a step with nothing to undo; otherwise say what undoes it, e.g. '{\"refund\": \"ch_1\"}'.",
        );
    }
    Spi::connect_mut(|client| {
        let (status, _) = locked(client, F, id);
        let args = [id.into(), step.into(), compensation.into()];
        let found = {
            let t = run(client, &FIND_STEP, None, &args);
            let r = t.first();
            r.get::<i32>(1)
                .ok()
                .flatten()
                .map(|seq| (seq, r.get::<bool>(2).ok().flatten().unwrap_or(false)))
        };
        let (seq, duplicate) = match (found, status.as_str()) {
            (Some((_, false)), _) => raise(
                Kind::InvalidParameter,
                F,
                format!("step {step:?} of saga {id} was recorded with another compensation"),
                "A step is recorded once; give a different step its own name (e.g. charge-2).",
            ),
            // Aborted first. A step recorded before the abort is among the
            // compensations it hands out (a retry must not undo it again);
            // one that is not is the caller's to undo.
            (found, "compensating" | "compensated") => {
                let mut b = Builder::new();
                b.begin_object()
                    .key("ok")
                    .bool(false)
                    .key("reason")
                    .string("aborted")
                    .key("status")
                    .string(&status)
                    .key("recorded")
                    .bool(found.is_some());
                if let Some((seq, _)) = found {
                    b.key("seq").int(seq as i64);
                }
                return b.end().finish();
            }
            // A retry of a step already recorded is answered as before.
            (Some((seq, true)), _) => (seq, true),
            (None, "completed") => raise(
                Kind::NotInPrerequisiteState,
                F,
                format!("saga {id} is completed; it takes no more steps"),
                "Record every step before integrity.saga_complete, or begin a new saga.",
            ),
            (None, _) => {
                let t = run(client, &ADD_STEP, None, &args);
                let seq = t
                    .first()
                    .get::<i32>(1)
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| crate::errors::bug("saga_step seq"));
                (seq, false)
            }
        };
        let mut b = Builder::new();
        b.begin_object()
            .key("ok")
            .bool(true)
            .key("seq")
            .int(seq as i64);
        if duplicate {
            b.key("duplicate").bool(true);
        }
        b.end().finish()
    })
}

static COMPLETE: Stmt = Stmt {
    sql: "UPDATE integrity.sagas
             SET status = 'completed', finished_at = pg_catalog.now(), updated_at = pg_catalog.now()
           WHERE id = $1",
    args: &[pg_sys::UUIDOID],
    writes: true,
};

/// The saga's work is done: `{"ok":true,"status":"completed","steps":n}`
/// (again when it already was); `{"ok":false,"reason":"aborted"}` when it
/// was aborted first.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn saga_complete(saga_id: Option<Uuid>) -> Jsonb {
    const F: &str = "integrity.saga_complete";
    let id = required(saga_id, F, "saga_id");
    Spi::connect_mut(|client| {
        let (status, steps) = locked(client, F, id);
        match status.as_str() {
            "running" => {
                run(client, &COMPLETE, None, &[id.into()]);
            }
            "completed" => {}
            _ => return aborted(&status),
        }
        Builder::new()
            .begin_object()
            .key("ok")
            .bool(true)
            .key("status")
            .string("completed")
            .key("steps")
            .int(steps as i64)
            .end()
            .finish()
    })
}

static ABORT: Stmt = Stmt {
    sql: "UPDATE integrity.sagas s
             SET status = CASE WHEN EXISTS (SELECT 1 FROM integrity.saga_steps t
                                             WHERE t.saga_id = s.id AND t.compensation IS NOT NULL
                                               AND t.compensated_at IS NULL)
                               THEN 'compensating' ELSE 'compensated' END,
                 abort_reason = $2, updated_at = pg_catalog.now()
           WHERE id = $1",
    args: &[pg_sys::UUIDOID, pg_sys::TEXTOID],
    writes: true,
};

static FINISHED: Stmt = Stmt {
    sql: "UPDATE integrity.sagas SET finished_at = pg_catalog.now()
           WHERE id = $1 AND status = 'compensated' AND finished_at IS NULL",
    args: &[pg_sys::UUIDOID],
    writes: true,
};

static PENDING: Stmt = Stmt {
    sql: "SELECT seq, step, compensation FROM integrity.saga_steps
           WHERE saga_id = $1 AND compensation IS NOT NULL AND compensated_at IS NULL
           ORDER BY seq DESC",
    args: &[pg_sys::UUIDOID],
    writes: true,
};

/// Abort a saga: the compensations of its steps not yet confirmed, last
/// step first. Calling it again hands out the ones still pending.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn saga_abort(
    saga_id: Option<Uuid>,
    reason: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(seq, i32),
        name!(step, String),
        name!(compensation, Jsonb),
    ),
> {
    const F: &str = "integrity.saga_abort";
    let id = required(saga_id, F, "saga_id");
    let rows = Spi::connect_mut(|client| {
        let (status, _) = locked(client, F, id);
        match status.as_str() {
            "running" => {
                run(client, &ABORT, None, &[id.into(), reason.into()]);
                run(client, &FINISHED, None, &[id.into()]);
            }
            "completed" => raise(
                Kind::NotInPrerequisiteState,
                F,
                format!("saga {id} is completed; a completed saga is not aborted"),
                "Undo its effects with a new saga (integrity.saga_begin) whose steps reverse them.",
            ),
            _ => {}
        }
        let t = run(client, &PENDING, None, &[id.into()]);
        t.map(|r| {
            (
                r.get::<i32>(1).ok().flatten().unwrap_or_default(),
                r.get::<String>(2).ok().flatten().unwrap_or_default(),
                r.get::<Jsonb>(3)
                    .ok()
                    .flatten()
                    .map(Jsonb::kept)
                    .unwrap_or_else(|| crate::errors::bug("saga compensation")),
            )
        })
        .collect::<Vec<_>>()
    });
    TableIterator::new(rows)
}

static CONFIRM: Stmt = Stmt {
    sql:
        "UPDATE integrity.saga_steps SET compensated_at = COALESCE(compensated_at, pg_catalog.now())
           WHERE saga_id = $1 AND step = $2
          RETURNING seq",
    args: &[pg_sys::UUIDOID, pg_sys::TEXTOID],
    writes: true,
};

static SETTLE: Stmt = Stmt {
    sql: "WITH p AS (SELECT pg_catalog.count(*) AS n FROM integrity.saga_steps
                      WHERE saga_id = $1 AND compensation IS NOT NULL AND compensated_at IS NULL),
          u AS (UPDATE integrity.sagas
                   SET status = 'compensated', finished_at = pg_catalog.now(), updated_at = pg_catalog.now()
                  WHERE id = $1 AND status = 'compensating' AND (SELECT n FROM p) = 0)
          SELECT n FROM p",
    args: &[pg_sys::UUIDOID],
    writes: true,
};

/// A compensation handed out by `saga_abort` was carried out:
/// `{"ok":true,"pending":n,"status":…}`; the saga is `compensated` once
/// none is pending. Confirming twice is `ok`.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn saga_compensated(saga_id: Option<Uuid>, step: Option<&str>) -> Jsonb {
    const F: &str = "integrity.saga_compensated";
    let id = required(saga_id, F, "saga_id");
    let step = text_arg(F, "step", step, 255);
    Spi::connect_mut(|client| {
        let (status, _) = locked(client, F, id);
        if status == "running" || status == "completed" {
            raise(
                Kind::NotInPrerequisiteState,
                F,
                format!("saga {id} is {status}, not aborted; there is nothing to compensate"),
                "Call integrity.saga_abort(saga_id) first; it hands out the compensations.",
            );
        }
        let confirmed = !run(client, &CONFIRM, None, &[id.into(), step.into()]).is_empty();
        if !confirmed {
            raise(
                Kind::NotInPrerequisiteState,
                F,
                format!("saga {id} has no step {step:?}"),
                "Confirm the steps saga_abort handed out, by their step names.",
            );
        }
        let pending = run(client, &SETTLE, None, &[id.into()])
            .first()
            .get::<i64>(1)
            .ok()
            .flatten()
            .unwrap_or_default();
        Builder::new()
            .begin_object()
            .key("ok")
            .bool(true)
            .key("pending")
            .int(pending)
            .key("status")
            .string(if pending == 0 {
                "compensated"
            } else {
                "compensating"
            })
            .end()
            .finish()
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testutil::{json, one, sqlstate, text};
    use pgrx::prelude::*;

    const ORG: &str = "'0000000b-0000-0000-0000-000000000000'";

    fn begin(stuck_after: &str) -> String {
        text(&format!(
            "SELECT integrity.saga_begin({ORG}, 'checkout', '{{\"order\": 7}}', '{stuck_after}')::text"
        ))
    }

    #[pg_test]
    fn an_aborted_saga_hands_out_its_compensations_last_first_until_each_is_confirmed() {
        let id = begin("1 hour");
        let step = |name: &str, comp: &str| {
            json(&format!(
                "SELECT integrity.saga_step('{id}', '{name}', {comp})"
            ))
        };
        assert_eq!(step("charge", r#"'{"refund": "ch_1"}'"#)["seq"], 1);
        assert_eq!(step("notify", "NULL")["seq"], 2);
        assert_eq!(step("reserve", r#"'{"release": "slot_9"}'"#)["seq"], 3);
        // A retried step is recorded once.
        let again = step("charge", r#"'{"refund": "ch_1"}'"#);
        assert_eq!(
            (again["seq"].clone(), again["duplicate"].clone()),
            (1.into(), true.into())
        );
        assert_eq!(
            sqlstate(&format!(
                "SELECT integrity.saga_step('{id}', 'charge', '{{\"refund\": \"other\"}}')"
            )),
            "22023"
        );
        // JSON null is not "nothing to undo": refused, and nothing recorded.
        assert_eq!(
            sqlstate(&format!(
                "SELECT integrity.saga_step('{id}', 'log', 'null')"
            )),
            "22023"
        );
        assert_eq!(step("log", "NULL")["seq"], 4);
        let abort = || {
            text(&format!(
                "SELECT coalesce(string_agg(seq || ':' || step || ':' || compensation::text, ',' ORDER BY ord), '')
                   FROM integrity.saga_abort('{id}', 'card declined later') WITH ORDINALITY AS a(seq, step, compensation, ord)"
            ))
        };
        assert_eq!(
            abort(),
            r#"3:reserve:{"release": "slot_9"},1:charge:{"refund": "ch_1"}"#
        );
        let stuck = json(&format!(
            "SELECT to_jsonb(s) FROM integrity.stuck_sagas s WHERE id = '{id}'"
        ));
        assert_eq!(
            (
                stuck["status"].clone(),
                stuck["pending_compensations"].clone(),
                stuck["reason"].clone(),
                stuck["abort_reason"].clone()
            ),
            (
                "compensating".into(),
                2.into(),
                "compensations_pending".into(),
                "card declined later".into()
            )
        );
        // Too late: the abort came first; the caller undoes its own step.
        let late = step("email", r#"'{"unsend": 1}'"#);
        assert_eq!(
            (late["ok"].clone(), late["reason"].clone()),
            (false.into(), "aborted".into())
        );
        assert_eq!(
            json(&format!("SELECT integrity.saga_complete('{id}')"))["reason"],
            "aborted"
        );
        // Asking again hands out what is still pending.
        assert_eq!(abort().split(',').count(), 2);
        let confirm = |name: &str| {
            json(&format!(
                "SELECT integrity.saga_compensated('{id}', '{name}')"
            ))
        };
        assert_eq!(confirm("reserve")["pending"], 1);
        assert_eq!(confirm("reserve")["pending"], 1, "confirming twice is ok");
        assert_eq!(abort(), r#"1:charge:{"refund": "ch_1"}"#);
        let done = confirm("charge");
        assert_eq!(
            (done["pending"].clone(), done["status"].clone()),
            (0.into(), "compensated".into())
        );
        assert_eq!(abort(), "");
        assert_eq!(
            one::<i64>(&format!(
                "SELECT count(*) FROM integrity.sagas WHERE id = '{id}' AND status = 'compensated'
                    AND finished_at IS NOT NULL AND steps = 4"
            )),
            Some(1)
        );
        assert_eq!(
            one::<i64>(&format!(
                "SELECT count(*) FROM integrity.stuck_sagas WHERE id = '{id}'"
            )),
            Some(0)
        );
        assert_eq!(
            sqlstate(&format!(
                "SELECT integrity.saga_compensated('{id}', 'nope')"
            )),
            "55000"
        );
    }

    #[pg_test]
    fn a_completed_saga_takes_no_steps_and_a_slow_one_is_listed_as_stuck() {
        let id = begin("1 hour");
        Spi::run(&format!(
            "SELECT integrity.saga_step('{id}', 'charge', '{{}}')"
        ))
        .unwrap();
        // Aborting a saga with nothing to undo finishes it at once.
        let quick = begin("1 hour");
        Spi::run(&format!(
            "SELECT integrity.saga_step('{quick}', 'log', NULL)"
        ))
        .unwrap();
        assert_eq!(
            one::<i64>(&format!(
                "SELECT count(*) FROM integrity.saga_abort('{quick}')"
            )),
            Some(0)
        );
        assert_eq!(
            text(&format!(
                "SELECT status FROM integrity.sagas WHERE id = '{quick}'"
            )),
            "compensated"
        );
        // Running too long.
        Spi::run(&format!(
            "UPDATE integrity.sagas SET stuck_after = now() - interval '1 second' WHERE id = '{id}'"
        ))
        .unwrap();
        assert_eq!(
            text(&format!(
                "SELECT reason FROM integrity.stuck_sagas WHERE id = '{id}'"
            )),
            "running_too_long"
        );
        let c = json(&format!("SELECT integrity.saga_complete('{id}')"));
        assert_eq!(
            (c["ok"].clone(), c["steps"].clone()),
            (true.into(), 1.into())
        );
        assert_eq!(
            json(&format!("SELECT integrity.saga_complete('{id}')"))["ok"],
            true,
            "completing twice is ok"
        );
        assert_eq!(
            one::<i64>(&format!(
                "SELECT count(*) FROM integrity.stuck_sagas WHERE id = '{id}'"
            )),
            Some(0)
        );
        // A retried step of a completed saga is answered as before.
        let retry = json(&format!(
            "SELECT integrity.saga_step('{id}', 'charge', '{{}}')"
        ));
        assert_eq!(
            (retry["ok"].clone(), retry["duplicate"].clone()),
            (true.into(), true.into())
        );
        let long = "x".repeat(300);
        for (sql, state) in [
            (
                format!("SELECT integrity.saga_step('{id}', 'more')"),
                "55000",
            ),
            (
                format!("SELECT * FROM integrity.saga_abort('{id}')"),
                "55000",
            ),
            (
                format!("SELECT integrity.saga_compensated('{id}', 'charge')"),
                "55000",
            ),
            (format!("SELECT integrity.saga_begin(NULL, 'k')"), "22004"),
            (format!("SELECT integrity.saga_begin({ORG}, '')"), "22023"),
            (
                format!("SELECT integrity.saga_begin({ORG}, '{long}')"),
                "22023",
            ),
            (
                format!("SELECT integrity.saga_begin({ORG}, 'k', NULL)"),
                "22004",
            ),
            (
                format!("SELECT integrity.saga_begin({ORG}, 'k', '{{}}', '0')"),
                "22023",
            ),
            (
                format!("SELECT integrity.saga_begin({ORG}, 'k', '{{}}', '-1 hour')"),
                "22023",
            ),
            (
                format!("SELECT integrity.saga_begin({ORG}, 'k', '{{}}', '1000000 years')"),
                "22008",
            ),
            (
                format!("SELECT integrity.saga_begin({ORG}, 'k', '{{}}', NULL)"),
                "22004",
            ),
            ("SELECT integrity.saga_step(NULL, 'a')".to_string(), "22004"),
            (format!("SELECT integrity.saga_step('{id}', '')"), "22023"),
            (format!("SELECT integrity.saga_step('{id}', NULL)"), "22004"),
            (
                format!("SELECT integrity.saga_step(gen_random_uuid(), 'a')"),
                "55000",
            ),
            ("SELECT integrity.saga_complete(NULL)".to_string(), "22004"),
            (
                "SELECT integrity.saga_complete(gen_random_uuid())".to_string(),
                "55000",
            ),
            (
                "SELECT * FROM integrity.saga_abort(NULL)".to_string(),
                "22004",
            ),
            (
                "SELECT * FROM integrity.saga_abort(gen_random_uuid())".to_string(),
                "55000",
            ),
            (
                format!("SELECT integrity.saga_compensated('{id}', NULL)"),
                "22004",
            ),
            (
                "SELECT integrity.saga_compensated(gen_random_uuid(), 'a')".to_string(),
                "55000",
            ),
        ] {
            assert_eq!(sqlstate(&sql), state, "{sql}");
        }
    }
}

//! The delivery log: webhooks in and out, and jobs, in the caller's
//! transaction (the transactional outbox), handed to workers under leases,
//! retried with backoff, dead-lettered after their last attempt.
//!
//! * `enqueue` dedupes by `(org_id, job_id)` and notifies
//!   `integrity_deliveries`.
//! * `claim` first rescues expired leases (the attempt is spent; the last
//!   one dead-letters), then hands out due deliveries with `FOR UPDATE SKIP
//!   LOCKED`, each with a fresh lease token. A delivery with an ordering key
//!   is claimable only while it is the first unfinished one of its key, so a
//!   key's deliveries go one at a time, in enqueue order; enqueues of one key
//!   take the key's lock, so enqueue order is commit order.
//! * `complete` and `fail` settle an attempt; with the lease token they
//!   refuse (as data) an attempt whose lease was lost to another worker.

use crate::errors::{count_arg, raise, required, text_arg, Kind};
use crate::gucs;
use crate::jsonb::{Builder, Jsonb};
use crate::keys::{advisory_lock, lock_key_of, uuid_text};
use crate::plans::{read, run, Stmt};
use pgrx::datum::{Interval, TimestampWithTimeZone, Uuid};
use pgrx::pg_sys;
use pgrx::prelude::*;

pgrx::extension_sql_file!(
    "../sql/deliveries.sql",
    name = "deliveries_tables",
    requires = ["bootstrap"]
);
pgrx::extension_sql_file!(
    "../sql/deliveries_api.sql",
    name = "deliveries_api",
    requires = [
        "deliveries_tables",
        enqueue,
        claim,
        complete,
        fail,
        requeue,
        redrive,
        purge_deliveries,
        set_retry_schedule
    ]
);

const MAX_LEASE_US: i64 = 24 * 3600 * 1_000_000;

// ---------------------------------------------------------------------------
// enqueue

static ENQUEUE: Stmt = Stmt {
    sql: "INSERT INTO integrity.deliveries
              (org_id, job_id, event_type, payload, max_attempts, next_attempt_at, priority,
               ordering_key, review_on_dead_letter)
          VALUES ($1, $2, $3, $4, $5, COALESCE($6, pg_catalog.now()), $7, $8, $9)
          ON CONFLICT (org_id, job_id) DO NOTHING
          RETURNING id",
    args: &[
        pg_sys::UUIDOID,
        pg_sys::TEXTOID,
        pg_sys::TEXTOID,
        pg_sys::JSONBOID,
        pg_sys::INT4OID,
        pg_sys::TIMESTAMPTZOID,
        pg_sys::INT4OID,
        pg_sys::TEXTOID,
        pg_sys::BOOLOID,
    ],
    writes: true,
};

static EXISTING: Stmt = Stmt {
    sql: "SELECT id FROM integrity.deliveries WHERE org_id = $1 AND job_id = $2",
    args: &[pg_sys::UUIDOID, pg_sys::TEXTOID],
    writes: false,
};

static NOTIFY: Stmt = Stmt {
    sql: "SELECT pg_catalog.pg_notify('integrity_deliveries', $1)",
    args: &[pg_sys::TEXTOID],
    writes: false,
};

/// `NOTIFY integrity_deliveries, event_type`, unless turned off, and
/// unless another transaction that will notify is in flight.
///
/// Postgres serializes the commits of notifying transactions (a global
/// lock taken before commit and held until it is done), so a NOTIFY per
/// enqueue makes concurrent enqueues commit one at a time. A transaction
/// that notifies holds an advisory lock until it ends; one that finds it
/// held leaves the wake-up to that one, which commits (and wakes the
/// listeners) around the same time. Workers drain the queue after a
/// wake-up and poll as a fallback, as with any NOTIFY-based queue.
fn notify(client: &pgrx::spi::SpiClient<'_>, event_type: &str) {
    if gucs::notify_deliveries()
        && crate::keys::advisory_try_lock(lock_key_of([&b"delivery-notify"[..]]))
    {
        read(client, &NOTIFY, None, &[event_type.into()]);
    }
}

/// Record a delivery in the caller's transaction: `{"id":…,"duplicate":
/// bool}`; the same `(org_id, job_id)` again is the first one's id.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn enqueue(
    org_id: Option<Uuid>,
    job_id: Option<&str>,
    event_type: Option<&str>,
    payload: Option<Jsonb>,
    max_attempts: default!(Option<i32>, "5"),
    run_at: default!(Option<TimestampWithTimeZone>, "now()"),
    ordering_key: default!(Option<&str>, "NULL"),
    priority: default!(Option<i32>, "0"),
    review_on_dead_letter: default!(Option<bool>, "false"),
) -> Jsonb {
    const F: &str = "integrity.enqueue";
    let org_id = required(org_id, F, "org_id");
    let job_id = text_arg(F, "job_id", job_id, 255);
    let event_type = text_arg(F, "event_type", event_type, 255);
    let payload = required(payload, F, "payload");
    let max_attempts = count_arg(
        F,
        "max_attempts",
        max_attempts,
        1..=1000,
        "Pass max_attempts => 5 (the default) or another count of tries.",
    );
    if let Some(k) = ordering_key {
        text_arg(F, "ordering_key", Some(k), 255);
    }
    // NULL: now. Infinity would never run, and -infinity would sort first
    // forever: neither is a time to run at.
    let run_at = run_at.map(|t| crate::errors::check_finite(F, "run_at", t));
    let (id, duplicate) = Spi::connect_mut(|client| {
        if let Some(k) = ordering_key {
            // Enqueues of one key take turns, so places follow commit order.
            lock_ordering_key(org_id, k);
        }
        let t = run(
            client,
            &ENQUEUE,
            None,
            &[
                org_id.into(),
                job_id.into(),
                event_type.into(),
                payload.into(),
                max_attempts.into(),
                run_at.into(),
                priority.unwrap_or(0).into(),
                ordering_key.into(),
                review_on_dead_letter.unwrap_or(false).into(),
            ],
        );
        match t.first().get::<i64>(1).ok().flatten() {
            Some(id) => {
                notify(client, event_type);
                (id, false)
            }
            None => {
                let t = read(client, &EXISTING, None, &[org_id.into(), job_id.into()]);
                let id = t.first().get::<i64>(1).ok().flatten().unwrap_or_else(|| {
                    raise(
                        Kind::SerializationFailure,
                        F,
                        format!("delivery {job_id:?} exists but is not visible to this transaction's snapshot"),
                        "Retry the transaction.",
                    )
                });
                (id, true)
            }
        }
    });
    Builder::new()
        .begin_object()
        .key("id")
        .int(id)
        .key("duplicate")
        .bool(duplicate)
        .end()
        .finish()
}

// ---------------------------------------------------------------------------
// claim

/// Leases that ran out: the attempt is spent; a delivery out of attempts is
/// dead-lettered, the others are due again at once.
static RESCUE: Stmt = Stmt {
    sql: "WITH expired AS (
              SELECT id FROM integrity.deliveries
               WHERE status = 'processing' AND locked_until <= pg_catalog.now()
               ORDER BY locked_until LIMIT 100
               FOR UPDATE SKIP LOCKED)
          UPDATE integrity.deliveries d
             SET status = CASE WHEN d.attempts >= d.max_attempts THEN 'dead_letter'
                               ELSE 'failed' END::integrity.delivery_status,
                 dead_at = CASE WHEN d.attempts >= d.max_attempts THEN pg_catalog.now() END,
                 next_attempt_at = pg_catalog.now(),
                 last_error = 'lease expired (worker ' || COALESCE(d.worker, '?') || ')',
                 locked_until = NULL, lease_token = NULL
           WHERE d.id = ANY (ARRAY(SELECT id FROM expired))
          RETURNING d.id, d.status = 'dead_letter' AND d.review_on_dead_letter",
    args: &[],
    writes: true,
};

static CLAIM: Stmt = Stmt {
    // `id = ANY (ARRAY(…))`: the rows picked are then updated through the
    // primary key whatever the planner guesses of LIMIT $4 (a join with
    // the picked rows can become a hash join over the whole table).
    sql: "UPDATE integrity.deliveries d
             SET status = 'processing', attempts = d.attempts + 1,
                 locked_until = pg_catalog.now() + $2, worker = $1,
                 lease_token = pg_catalog.gen_random_uuid(), last_attempt_at = pg_catalog.now()
           WHERE d.id = ANY (ARRAY(
              SELECT c.id FROM integrity.deliveries c
               WHERE c.status IN ('pending', 'failed') AND c.next_attempt_at <= pg_catalog.now()
                 AND ($3::text[] IS NULL OR c.event_type = ANY ($3))
                 AND (c.ordering_key IS NULL OR c.id = (
                      SELECT k.id FROM integrity.deliveries k
                       WHERE k.org_id = c.org_id AND k.ordering_key = c.ordering_key
                         AND k.status NOT IN ('completed', 'dead_letter')
                       ORDER BY k.queue_position LIMIT 1))
               ORDER BY c.priority DESC, c.id
               LIMIT $4
               FOR UPDATE SKIP LOCKED))
          RETURNING d.id, d.org_id, d.job_id, d.event_type, d.payload, d.status::text, d.attempts,
                    d.max_attempts, d.priority, d.ordering_key, d.next_attempt_at, d.locked_until,
                    d.worker, d.lease_token, d.created_at, d.last_attempt_at",
    args: &[
        pg_sys::TEXTOID,
        pg_sys::INTERVALOID,
        pg_sys::TEXTARRAYOID,
        pg_sys::INT4OID,
    ],
    writes: true,
};

/// Hand up to `batch` due deliveries to `worker` under a lease: each to
/// exactly one worker, highest priority then oldest; an ordering key's
/// deliveries one at a time in enqueue order.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn claim(
    worker: Option<&str>,
    batch: default!(Option<i32>, "1"),
    lease: default!(Option<Interval>, "'30 seconds'"),
    event_types: default!(Option<Vec<Option<String>>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(id, i64),
        name!(org_id, Uuid),
        name!(job_id, String),
        name!(event_type, String),
        name!(payload, Option<Jsonb>),
        name!(status, String),
        name!(attempts, i32),
        name!(max_attempts, i32),
        name!(priority, i32),
        name!(ordering_key, Option<String>),
        name!(next_attempt_at, Option<TimestampWithTimeZone>),
        name!(locked_until, Option<TimestampWithTimeZone>),
        name!(worker, Option<String>),
        name!(lease_token, Option<Uuid>),
        name!(created_at, Option<TimestampWithTimeZone>),
        name!(last_attempt_at, Option<TimestampWithTimeZone>),
    ),
> {
    const F: &str = "integrity.claim";
    let worker = text_arg(F, "worker", worker, 255);
    let batch = count_arg(
        F,
        "batch",
        batch,
        1..=1000,
        "Claim a few deliveries at a time, e.g. batch => 10.",
    );
    let lease = required(lease, F, "lease");
    let us = crate::errors::span_us(F, "lease", lease);
    if us <= 0 || us > MAX_LEASE_US as i128 {
        raise(
            Kind::InvalidParameter,
            F,
            format!("lease must be above zero and at most 24 hours, got {lease}"),
            "Pass the time a worker needs for one delivery, e.g. lease => '30 seconds'.",
        );
    }
    // A NULL type matches no delivery: a worker passing one would claim
    // nothing, silently. (An empty array claims nothing, as asked.)
    if event_types
        .as_ref()
        .is_some_and(|t| t.iter().any(Option::is_none))
    {
        raise(
            Kind::NullValue,
            F,
            "event_types must not contain NULL",
            "List the event types to claim, or pass event_types => NULL (the default) for all.",
        );
    }
    let rows = Spi::connect_mut(|client| {
        // Rescuing expired leases is a slow path: looked for at most every
        // RESCUE_EVERY per backend while work flows, and whenever a claim
        // comes back short.
        let due = LAST_RESCUE.with(|l| l.get().is_none_or(|t| t.elapsed() >= RESCUE_EVERY));
        if due {
            rescue(client);
        }
        let args = [
            worker.into(),
            lease.into(),
            event_types.clone().into(),
            batch.into(),
        ];
        let mut rows = claim_rows(client, &args);
        if rows.len() < batch as usize && !due {
            rescue(client);
            let more = (batch as usize - rows.len()) as i32;
            let args = [
                worker.into(),
                lease.into(),
                event_types.clone().into(),
                more.into(),
            ];
            rows.extend(claim_rows(client, &args));
        }
        rows
    });
    TableIterator::new(rows)
}

/// How often, at most, a backend looks for expired leases while claims
/// find work.
const RESCUE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

thread_local! {
    static LAST_RESCUE: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// A claimed delivery, as `claim` returns it.
type Claimed = (
    i64,
    Uuid,
    String,
    String,
    Option<Jsonb>,
    String,
    i32,
    i32,
    i32,
    Option<String>,
    Option<TimestampWithTimeZone>,
    Option<TimestampWithTimeZone>,
    Option<String>,
    Option<Uuid>,
    Option<TimestampWithTimeZone>,
    Option<TimestampWithTimeZone>,
);

/// Run CLAIM with its plan kept generic. Its cost estimate with the
/// parameters unknown is above that of a plan for the values at hand, so
/// the plan cache would otherwise plan it again on every call (13 % of a
/// claim's time in a profile); the generic plan is the same plan.
fn claim_rows(
    client: &mut pgrx::spi::SpiClient<'_>,
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> Vec<Claimed> {
    crate::plans::with_settings(&[(c"plan_cache_mode", c"force_generic_plan")], || {
        claimed(run(client, &CLAIM, None, args))
    })
}

/// The rows of a CLAIM, copied out of SPI.
fn claimed(t: pgrx::spi::SpiTupleTable<'_>) -> Vec<Claimed> {
    t.map(|r| {
        let text = |i: usize| r.get::<String>(i).ok().flatten();
        let int = |i: usize| r.get::<i32>(i).ok().flatten().unwrap_or_default();
        let ts = |i: usize| r.get::<TimestampWithTimeZone>(i).ok().flatten();
        (
            r.get::<i64>(1).ok().flatten().unwrap_or_default(),
            r.get::<Uuid>(2)
                .ok()
                .flatten()
                .unwrap_or_else(|| crate::errors::bug("delivery org_id")),
            text(3).unwrap_or_default(),
            text(4).unwrap_or_default(),
            r.get::<Jsonb>(5).ok().flatten().map(Jsonb::kept),
            text(6).unwrap_or_default(),
            int(7),
            int(8),
            int(9),
            text(10),
            ts(11),
            ts(12),
            text(13),
            r.get::<Uuid>(14).ok().flatten(),
            ts(15),
            ts(16),
        )
    })
    .collect::<Vec<_>>()
}

/// Rescue expired leases; dead letters that asked for review get an item.
fn rescue(client: &mut pgrx::spi::SpiClient<'_>) {
    LAST_RESCUE.with(|l| l.set(Some(std::time::Instant::now())));
    let t = run(client, &RESCUE, None, &[]);
    let review: Vec<i64> = t
        .filter(|r| r.get::<bool>(2).ok().flatten().unwrap_or(false))
        .filter_map(|r| r.get::<i64>(1).ok().flatten())
        .collect();
    for id in review {
        review_dead_letter(client, id);
    }
}

static DEAD_LETTER_ITEM: Stmt = Stmt {
    sql: "SELECT org_id, pg_catalog.jsonb_build_object('job_id', job_id, 'event_type', event_type,
                 'attempts', attempts, 'last_error', last_error, 'payload', payload)
            FROM integrity.deliveries WHERE id = $1",
    args: &[pg_sys::INT8OID],
    writes: false,
};

/// A review item for dead-lettered delivery `id`.
fn review_dead_letter(client: &mut pgrx::spi::SpiClient<'_>, id: i64) -> Option<i64> {
    let (org, details) = {
        let t = read(client, &DEAD_LETTER_ITEM, None, &[id.into()]);
        let row = t.first();
        (
            row.get::<Uuid>(1).ok().flatten()?,
            row.get_datum_by_ordinal(2)
                .ok()
                .flatten()
                .map(Jsonb::from_spi)?,
        )
    };
    let (item, _) = crate::review::enqueue_item(
        client,
        org,
        "delivery",
        &id.to_string(),
        "dead_letter",
        details,
        0,
    );
    Some(item)
}

// ---------------------------------------------------------------------------
// complete, fail

static COMPLETE: Stmt = Stmt {
    sql: "UPDATE integrity.deliveries
             SET status = 'completed', completed_at = pg_catalog.clock_timestamp(),
                 processing_ms = EXTRACT(epoch FROM pg_catalog.clock_timestamp() - last_attempt_at) * 1000,
                 locked_until = NULL, lease_token = NULL
           WHERE id = $1 AND status = 'processing' AND ($2::uuid IS NULL OR lease_token = $2)
       RETURNING id",
    args: &[pg_sys::INT8OID, pg_sys::UUIDOID],
    writes: true,
};

/// Complete a delivery being processed: `true`; `false` when it is not
/// processing (or, with `lease_token`, its lease went to another worker).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn complete(id: Option<i64>, lease_token: default!(Option<Uuid>, "NULL")) -> bool {
    let id = required(id, "integrity.complete", "id");
    Spi::connect_mut(|client| {
        !run(client, &COMPLETE, None, &[id.into(), lease_token.into()]).is_empty()
    })
}

static FAILING: Stmt = Stmt {
    sql: "SELECT d.status::text, d.attempts, d.max_attempts, d.lease_token, d.review_on_dead_letter,
                 (SELECT s.schedule FROM integrity.retry_schedules s WHERE s.event_type = d.event_type)
            FROM integrity.deliveries d WHERE d.id = $1 FOR UPDATE",
    args: &[pg_sys::INT8OID],
    writes: true,
};

static FAILED: Stmt = Stmt {
    sql: "UPDATE integrity.deliveries
             SET status = $2::integrity.delivery_status,
                 next_attempt_at = pg_catalog.now() + $3,
                 dead_at = CASE WHEN $2 = 'dead_letter' THEN pg_catalog.now() END,
                 last_error = $4, locked_until = NULL, lease_token = NULL
           WHERE id = $1",
    args: &[
        pg_sys::INT8OID,
        pg_sys::TEXTOID,
        pg_sys::INTERVALOID,
        pg_sys::TEXTOID,
    ],
    writes: true,
};

/// An answer `{"ok":false,"reason":…,"id":…}`.
fn refused(reason: &str, id: i64) -> Jsonb {
    Builder::new()
        .begin_object()
        .key("ok")
        .bool(false)
        .key("reason")
        .string(reason)
        .key("id")
        .int(id)
        .end()
        .finish()
}

/// The wait before retry `n` (1-based): the schedule's, or a full-jitter
/// exponential backoff, in microseconds.
fn backoff_us(n: i32, schedule: Option<&[Option<Interval>]>) -> i64 {
    if let Some(s) = schedule.filter(|s| !s.is_empty()) {
        let i = (n.max(1) as usize - 1).min(s.len() - 1);
        return s[i].map_or(0, |iv| iv.as_micros().max(0) as i64);
    }
    let (base, cap) = gucs::retry_backoff_ms();
    let exp = (n.max(1) - 1).min(40) as u32;
    let ceiling = base.saturating_mul(1i64 << exp.min(40)).min(cap) * 1000;
    // SAFETY: Postgres's own per-backend PRNG.
    let r = unsafe { pg_sys::pg_prng_double(std::ptr::addr_of_mut!(pg_sys::pg_global_prng_state)) };
    (r * ceiling as f64) as i64
}

/// The current attempt failed: retried after `retry_in`, the event type's
/// schedule or the backoff; dead-lettered when it was the last attempt.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn fail(
    id: Option<i64>,
    error: Option<&str>,
    retry_in: default!(Option<Interval>, "NULL"),
    lease_token: default!(Option<Uuid>, "NULL"),
) -> Jsonb {
    const F: &str = "integrity.fail";
    let id = required(id, F, "id");
    let error = required(error, F, "error");
    if let Some(r) = retry_in {
        if crate::errors::span_us(F, "retry_in", r) < 0 {
            raise(
                Kind::InvalidParameter,
                F,
                format!("retry_in must not be negative, got {r}"),
                "Pass retry_in => '1 minute', or NULL for the backoff.",
            );
        }
        crate::errors::not_too_long(F, "retry_in", r);
    }
    Spi::connect_mut(|client| {
        let (status, attempts, max_attempts, token, review, schedule) = {
            let t = run(client, &FAILING, None, &[id.into()]);
            let row = t.first();
            let Some(status) = row.get::<String>(1).ok().flatten() else {
                return refused("not_found", id);
            };
            (
                status,
                row.get::<i32>(2).ok().flatten().unwrap_or_default(),
                row.get::<i32>(3).ok().flatten().unwrap_or(1),
                row.get::<Uuid>(4).ok().flatten(),
                row.get::<bool>(5).ok().flatten().unwrap_or(false),
                row.get::<Vec<Option<Interval>>>(6).ok().flatten(),
            )
        };
        if status != "processing" {
            return refused("not_processing", id);
        }
        if lease_token.is_some() && token != lease_token {
            return refused("lease_lost", id);
        }
        let dead = attempts >= max_attempts;
        let wait_us = if dead {
            0
        } else {
            retry_in.map_or_else(
                || backoff_us(attempts, schedule.as_deref()),
                |r| r.as_micros() as i64,
            )
        };
        let wait =
            Interval::new(0, 0, wait_us).unwrap_or_else(|_| crate::errors::bug("retry interval"));
        run(
            client,
            &FAILED,
            None,
            &[
                id.into(),
                if dead { "dead_letter" } else { "failed" }.into(),
                wait.into(),
                error.into(),
            ],
        );
        let mut b = Builder::new();
        b.begin_object()
            .key("ok")
            .bool(true)
            .key("id")
            .int(id)
            .key("attempts")
            .int(attempts as i64)
            .key("status")
            .string(if dead { "dead_letter" } else { "failed" });
        if dead {
            if review {
                if let Some(item) = review_dead_letter(client, id) {
                    b.key("review_id").int(item);
                }
            }
        } else {
            b.key("retry_in_ms").int(wait_us / 1000);
        }
        b.end().finish()
    })
}

// ---------------------------------------------------------------------------
// requeue, redrive, purge, retry schedules

// A dead letter joins the end of its key's line (a new place); a failed
// delivery keeps its place, where it already holds its key.
static REQUEUE: Stmt = Stmt {
    sql: "WITH r AS (
              UPDATE integrity.deliveries
                 SET status = 'pending', attempts = 0, next_attempt_at = pg_catalog.now(),
                     dead_at = NULL, locked_until = NULL, lease_token = NULL,
                     queue_position = CASE WHEN status = 'dead_letter'
                         THEN pg_catalog.nextval('integrity.deliveries_queue_position_seq')
                         ELSE queue_position END
               WHERE id = $1 AND status IN ('failed', 'dead_letter')
           RETURNING event_type)
          SELECT (SELECT event_type FROM r),
                 (SELECT status::text FROM integrity.deliveries WHERE id = $1)",
    args: &[pg_sys::INT8OID],
    writes: true,
};

/// Take the lock of ordering key `key` of `org_id` to the end of the
/// transaction: whoever takes a place in a key's line (`enqueue`, a
/// requeued dead letter) holds it until commit, so places follow commit
/// order.
fn lock_ordering_key(org_id: Uuid, key: &str) {
    let org = uuid_text(org_id.as_bytes());
    advisory_lock(
        lock_key_of([&b"delivery-order"[..], &org[..], key.as_bytes()]),
        false,
    );
}

static KEY_OF: Stmt = Stmt {
    sql: "SELECT org_id, ordering_key FROM integrity.deliveries WHERE id = $1",
    args: &[pg_sys::INT8OID],
    writes: false,
};

/// Bring back delivery `id` if failed or dead-lettered: (its event type
/// if it was brought back, its status). A keyed one takes its key's lock
/// first, as `enqueue` does: a key's places are taken in commit order, so
/// the first of its line, the one claimable, changes only when it
/// finishes, and every claim agrees on it whatever its snapshot.
fn requeue_one(client: &mut pgrx::spi::SpiClient<'_>, id: i64) -> (Option<String>, Option<String>) {
    let key = {
        let t = read(client, &KEY_OF, None, &[id.into()]);
        let row = t.first();
        row.get::<Uuid>(1)
            .ok()
            .flatten()
            .zip(row.get::<String>(2).ok().flatten())
    };
    if let Some((org_id, k)) = key {
        lock_ordering_key(org_id, &k);
    }
    let t = run(client, &REQUEUE, None, &[id.into()]);
    let row = t.first();
    (
        row.get::<String>(1).ok().flatten(),
        row.get::<String>(2).ok().flatten(),
    )
}

/// Bring back one failed or dead-lettered delivery: attempts reset, due
/// now. A dead letter with an ordering key goes to the end of its key's
/// line.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn requeue(id: Option<i64>) -> Jsonb {
    let id = required(id, "integrity.requeue", "id");
    Spi::connect_mut(|client| {
        let (event_type, status) = requeue_one(client, id);
        match (event_type, status) {
            (Some(event_type), _) => {
                notify(client, &event_type);
                Builder::new()
                    .begin_object()
                    .key("ok")
                    .bool(true)
                    .key("id")
                    .int(id)
                    .end()
                    .finish()
            }
            (None, None) => refused("not_found", id),
            (None, Some(_)) => refused("not_failed", id),
        }
    })
}

static REDRIVE: Stmt = Stmt {
    sql: "SELECT id FROM integrity.deliveries
           WHERE status = 'dead_letter'
             AND ($1::text IS NULL OR event_type = $1)
             AND ($2::timestamptz IS NULL OR dead_at >= $2)
           ORDER BY id",
    args: &[pg_sys::TEXTOID, pg_sys::TIMESTAMPTZOID],
    writes: false,
};

/// Bring back every dead letter (of `event_type`, dead-lettered since
/// `since`): attempts reset, due now. Returns how many.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn redrive(
    event_type: default!(Option<&str>, "NULL"),
    since: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> i64 {
    Spi::connect_mut(|client| {
        let ids: Vec<i64> = read(client, &REDRIVE, None, &[event_type.into(), since.into()])
            .filter_map(|r| r.get::<i64>(1).ok().flatten())
            .collect();
        // One at a time, in id order: each keyed one under its key's lock,
        // joining the end of its line (see requeue_one); one requeued by
        // someone else meanwhile is left as it is.
        let (mut n, mut any) = (0, None);
        for id in ids {
            if let (Some(e), _) = requeue_one(client, id) {
                n += 1;
                any.get_or_insert(e);
            }
        }
        if let Some(e) = any {
            notify(client, &e);
        }
        n
    })
}

static PURGE: Stmt = Stmt {
    sql: "DELETE FROM integrity.deliveries WHERE id IN (
              SELECT id FROM integrity.deliveries
               WHERE status IN ('completed', 'dead_letter')
                 AND created_at < pg_catalog.now() - $1
                 AND COALESCE(completed_at, dead_at, created_at) < pg_catalog.now() - $1
               LIMIT $2 FOR UPDATE SKIP LOCKED)",
    args: &[pg_sys::INTERVALOID, pg_sys::INT4OID],
    writes: true,
};

/// Remove completed and dead-lettered deliveries finished more than
/// `older_than` ago, `batch_size` rows per statement, at most `max_rows`
/// in all (NULL: all). Returns how many.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn purge_deliveries(
    older_than: default!(Option<Interval>, "'30 days'"),
    batch_size: default!(Option<i32>, "10000"),
    max_rows: default!(Option<i64>, "NULL"),
) -> i64 {
    const F: &str = "integrity.purge_deliveries";
    let older_than = required(older_than, F, "older_than");
    if crate::errors::span_us(F, "older_than", older_than) < 0 {
        raise(
            Kind::InvalidParameter,
            F,
            format!("older_than must not be negative, got {older_than}"),
            "Pass the retention, e.g. '30 days'.",
        );
    }
    let older_than = crate::errors::not_too_long(F, "older_than", older_than);
    let batch = required(batch_size, F, "batch_size");
    if !(1..=100_000).contains(&batch) {
        raise(
            Kind::InvalidParameter,
            F,
            format!("batch_size must be between 1 and 100000, got {batch}"),
            "Pass batch_size => 10000 (the default).",
        );
    }
    if max_rows.is_some_and(|m| m < 0) {
        raise(
            Kind::InvalidParameter,
            F,
            "max_rows must not be negative",
            "Pass NULL for no limit.",
        );
    }
    let mut total = 0i64;
    Spi::connect_mut(|client| loop {
        let left = max_rows.map_or(batch as i64, |m| (m - total).min(batch as i64));
        if left <= 0 {
            break;
        }
        let n = run(
            client,
            &PURGE,
            None,
            &[older_than.into(), (left as i32).into()],
        )
        .len() as i64;
        total += n;
        if n < left {
            break;
        }
    });
    total
}

static SET_SCHEDULE: Stmt = Stmt {
    sql: "INSERT INTO integrity.retry_schedules (event_type, schedule) VALUES ($1, $2)
          ON CONFLICT (event_type) DO UPDATE SET schedule = EXCLUDED.schedule, updated_at = pg_catalog.now()",
    args: &[pg_sys::TEXTOID, pg_sys::INTERVALARRAYOID],
    writes: true,
};

static DROP_SCHEDULE: Stmt = Stmt {
    sql: "DELETE FROM integrity.retry_schedules WHERE event_type = $1",
    args: &[pg_sys::TEXTOID],
    writes: true,
};

/// Set the waits before each retry of an event type (e.g. `'{5 seconds, 5
/// minutes, 30 minutes, 2 hours, 5 hours, 10 hours}'`); NULL or empty
/// removes it (back to the backoff).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn set_retry_schedule(event_type: Option<&str>, schedule: Option<Vec<Option<Interval>>>) -> Jsonb {
    const F: &str = "integrity.set_retry_schedule";
    let event_type = text_arg(F, "event_type", event_type, 255);
    let schedule = schedule.unwrap_or_default();
    for (i, s) in schedule.iter().enumerate() {
        match s {
            // Each step is added to now() when a delivery fails.
            Some(s) if crate::errors::span_us(F, "each schedule step", *s) >= 0 => {
                crate::errors::not_too_long(F, "each schedule step", *s);
            }
            _ => raise(
                Kind::InvalidParameter,
                F,
                format!("schedule[{}] must be a non-negative interval", i + 1),
                "Pass e.g. ARRAY['5 seconds', '5 minutes', '30 minutes']::interval[].",
            ),
        }
    }
    let n = schedule.len();
    Spi::connect_mut(|client| {
        if n == 0 {
            run(client, &DROP_SCHEDULE, None, &[event_type.into()]);
        } else {
            run(
                client,
                &SET_SCHEDULE,
                None,
                &[event_type.into(), schedule.into()],
            );
        }
    });
    Builder::new()
        .begin_object()
        .key("ok")
        .bool(true)
        .key("event_type")
        .string(event_type)
        .key("retries")
        .int(n as i64)
        .end()
        .finish()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testutil::{json, one, sqlstate, text};
    use pgrx::prelude::*;

    const ORG: &str = "'0000000a-0000-0000-0000-000000000000'";

    fn enqueue(job: &str, extra: &str) -> serde_json::Value {
        json(&format!(
            "SELECT integrity.enqueue({ORG}, '{job}', 'invoice.paid', '{{\"job\": \"{job}\"}}'{extra})"
        ))
    }

    /// Claim for `worker`: "job:attempts" of what it got, by id.
    fn claim(worker: &str, batch: i32) -> String {
        text(&format!(
            "SELECT coalesce(string_agg(job_id || ':' || attempts, ',' ORDER BY id), '')
               FROM integrity.claim('{worker}', {batch})"
        ))
    }

    fn id_of(job: &str) -> i64 {
        one::<i64>(&format!(
            "SELECT id FROM integrity.deliveries WHERE job_id = '{job}'"
        ))
        .unwrap()
    }

    fn status(job: &str) -> String {
        text(&format!(
            "SELECT status::text FROM integrity.deliveries WHERE job_id = '{job}'"
        ))
    }

    #[pg_test]
    fn deliveries_dedupe_claim_complete_and_fail_to_dead_letter() {
        let a = enqueue("a", ", max_attempts => 2, review_on_dead_letter => true");
        assert_eq!(a["duplicate"], false);
        let again = enqueue("a", "");
        assert_eq!(
            (again["duplicate"].clone(), again["id"].clone()),
            (true.into(), a["id"].clone())
        );
        enqueue("b", ", priority => 5");
        // Priority first, then age; each handed out once.
        assert_eq!(claim("w1", 1), "b:1");
        assert_eq!(claim("w2", 10), "a:1");
        assert_eq!(claim("w3", 10), "");
        // complete: true once, with the right token only.
        let b = id_of("b");
        assert_eq!(
            one::<bool>(&format!(
                "SELECT integrity.complete({b}, gen_random_uuid())"
            )),
            Some(false)
        );
        assert_eq!(
            one::<bool>(&format!(
                "SELECT integrity.complete({b}, (SELECT lease_token FROM integrity.deliveries WHERE id = {b}))"
            )),
            Some(true)
        );
        assert_eq!(
            one::<bool>(&format!("SELECT integrity.complete({b})")),
            Some(false)
        );
        assert!(
            one::<f64>(&format!(
                "SELECT processing_ms FROM integrity.deliveries WHERE id = {b}"
            ))
            .unwrap()
                >= 0.0
        );
        // fail: retried after retry_in, then dead-lettered on its last attempt.
        let a = id_of("a");
        let f = json(&format!(
            "SELECT integrity.fail({a}, 'HTTP 500', retry_in => '0')"
        ));
        assert_eq!(
            (f["status"].clone(), f["retry_in_ms"].clone()),
            ("failed".into(), 0.into())
        );
        assert_eq!(
            json(&format!("SELECT integrity.fail({a}, 'again')"))["reason"],
            "not_processing"
        );
        assert_eq!(claim("w1", 1), "a:2");
        assert_eq!(
            json(&format!(
                "SELECT integrity.fail({a}, 'x', lease_token => gen_random_uuid())"
            ))["reason"],
            "lease_lost"
        );
        let f = json(&format!("SELECT integrity.fail({a}, 'HTTP 503')"));
        assert_eq!(f["status"], "dead_letter");
        assert!(f["review_id"].is_number(), "{f}");
        assert_eq!(
            text("SELECT subject_type || ' ' || reason || ' ' || (payload->>'last_error') FROM integrity.review_queue"),
            "delivery dead_letter HTTP 503"
        );
        assert_eq!(
            text("SELECT job_id || ' ' || last_error FROM integrity.dead_letters"),
            "a HTTP 503"
        );
        assert_eq!(
            json("SELECT integrity.fail(-1, 'x')")["reason"],
            "not_found"
        );
        // requeue: back with attempts reset; redrive many.
        assert_eq!(json(&format!("SELECT integrity.requeue({a})"))["ok"], true);
        assert_eq!(
            json(&format!("SELECT integrity.requeue({a})"))["reason"],
            "not_failed"
        );
        assert_eq!(json("SELECT integrity.requeue(-1)")["reason"], "not_found");
        assert_eq!(claim("w1", 1), "a:1");
        Spi::run(&format!("SELECT integrity.fail({a}, 'x', '0'); SELECT integrity.claim('w1'); SELECT integrity.fail({a}, 'y')")).unwrap();
        assert_eq!(status("a"), "dead_letter");
        assert_eq!(
            one::<i64>("SELECT integrity.redrive('other.type')"),
            Some(0)
        );
        assert_eq!(
            one::<i64>("SELECT integrity.redrive('invoice.paid', now() - interval '1 hour')"),
            Some(1)
        );
        assert_eq!(status("a"), "pending");
        // Health and stats.
        assert_eq!(
            text(
                "SELECT pending || '/' || completed || '/' || due_now FROM integrity.queue_health"
            ),
            "1/1/1"
        );
        assert_eq!(
            text("SELECT total || '/' || completed || '/' || success_rate FROM integrity.delivery_stats()"),
            "2/1/1.0000"
        );
        assert_eq!(
            text("SELECT string_agg(job_id, ',') FROM integrity.recent_failures()"),
            "a"
        );
        assert_eq!(
            text("SELECT string_agg(job_id, ',') FROM integrity.recent_failures(NULL)"),
            "a"
        );
        assert_eq!(
            one::<i64>("SELECT count(*) FROM integrity.recent_failures(0)"),
            Some(0)
        );
        assert_eq!(
            sqlstate("SELECT * FROM integrity.recent_failures(-1)"),
            "22023"
        );
    }

    #[pg_test]
    fn expired_leases_are_rescued_and_the_last_attempt_dead_letters() {
        enqueue("x", ", max_attempts => 2");
        assert_eq!(claim("w1", 1), "x:1");
        // The worker died: its lease runs out.
        Spi::run("UPDATE integrity.deliveries SET locked_until = now() - interval '1 second'")
            .unwrap();
        assert_eq!(claim("w2", 1), "x:2");
        assert!(text("SELECT last_error FROM integrity.deliveries")
            .contains("lease expired (worker w1)"));
        Spi::run("UPDATE integrity.deliveries SET locked_until = now() - interval '1 second'")
            .unwrap();
        // Its last attempt's lease ran out: dead, not handed out again.
        assert_eq!(claim("w3", 1), "");
        assert_eq!(status("x"), "dead_letter");
        // w2 comes back late: its lease is gone.
        let x = id_of("x");
        assert_eq!(
            one::<bool>(&format!("SELECT integrity.complete({x})")),
            Some(false)
        );
    }

    #[pg_test]
    fn ordering_keys_go_one_at_a_time_in_enqueue_order() {
        enqueue("k1", ", ordering_key => 'cust-1'");
        enqueue("k2", ", ordering_key => 'cust-1', priority => 9");
        enqueue("k3", ", ordering_key => 'cust-1'");
        enqueue("free", "");
        enqueue("other", ", ordering_key => 'cust-2'");
        // Only the first of each key, whatever the priority.
        assert_eq!(claim("w1", 10), "k1:1,free:1,other:1");
        assert_eq!(claim("w2", 10), "");
        // A failed delivery waiting for its retry still blocks its key.
        let k1 = id_of("k1");
        Spi::run(&format!("SELECT integrity.fail({k1}, 'timeout', '1 hour')")).unwrap();
        assert_eq!(claim("w2", 10), "");
        // Dead-lettered, it stops blocking.
        Spi::run(&format!(
            "UPDATE integrity.deliveries SET next_attempt_at = now(), max_attempts = 2 WHERE id = {k1};
             SELECT integrity.claim('w1');
             SELECT integrity.fail({k1}, 'gone')"
        ))
        .unwrap();
        assert_eq!(status("k1"), "dead_letter");
        assert_eq!(claim("w2", 10), "k2:1");
        // Brought back while k2 is in flight, k1 joins the end of its
        // key's line: the key still has one delivery out at a time.
        Spi::run(&format!("SELECT integrity.requeue({k1})")).unwrap();
        assert_eq!(claim("w3", 10), "");
        let k2 = id_of("k2");
        Spi::run(&format!("SELECT integrity.complete({k2})")).unwrap();
        assert_eq!(claim("w2", 10), "k3:1");
        Spi::run(&format!("SELECT integrity.complete({})", id_of("k3"))).unwrap();
        assert_eq!(claim("w2", 10), "k1:1");
        // Per tenant: the same key of another org is another key.
        Spi::run(
            "SELECT integrity.enqueue('0000000b-0000-0000-0000-000000000000', 'b1', 'e', '{}', ordering_key => 'cust-1')",
        )
        .unwrap();
        assert_eq!(claim("w3", 10), "b1:1");
    }

    #[pg_test]
    fn retry_schedules_purge_and_bad_input() {
        Spi::run(
            "SELECT integrity.set_retry_schedule('invoice.paid', ARRAY['5 seconds', '5 minutes']::interval[])",
        )
        .unwrap();
        enqueue("s", ", max_attempts => 5");
        let s = id_of("s");
        let waits: Vec<i64> = (0..3)
            .map(|_| {
                Spi::run("UPDATE integrity.deliveries SET next_attempt_at = now()").unwrap();
                claim("w", 1);
                json(&format!("SELECT integrity.fail({s}, 'x')"))["retry_in_ms"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(waits, vec![5_000, 300_000, 300_000]);
        // Without a schedule: full jitter below base * 2^(n-1), capped.
        Spi::run(
            "SELECT integrity.set_retry_schedule('invoice.paid', NULL);
             SET LOCAL integrity.retry_base = '1s'; SET LOCAL integrity.retry_cap = '3s';
             UPDATE integrity.deliveries SET next_attempt_at = now();",
        )
        .unwrap();
        claim("w", 1);
        let w = json(&format!("SELECT integrity.fail({s}, 'x')"))["retry_in_ms"]
            .as_i64()
            .unwrap();
        assert!((0..=3000).contains(&w), "{w}");
        // purge: finished rows older than the retention, in batches.
        Spi::run(
            "INSERT INTO integrity.deliveries (org_id, job_id, event_type, payload, status, created_at, completed_at)
             SELECT '0000000a-0000-0000-0000-000000000000', 'old-' || g, 'e', '{}', 'completed',
                    now() - interval '40 days', now() - interval '40 days'
               FROM generate_series(1, 25) g",
        )
        .unwrap();
        assert_eq!(
            one::<i64>("SELECT integrity.purge_deliveries('30 days', 10, 15)"),
            Some(15)
        );
        assert_eq!(
            one::<i64>("SELECT integrity.purge_deliveries('30 days', 10)"),
            Some(10)
        );
        assert_eq!(one::<i64>("SELECT integrity.purge_deliveries()"), Some(0));
        assert_eq!(status("s"), "failed");
        for (sql, state) in [
            (
                format!("SELECT integrity.enqueue(NULL, 'j', 'e', '{{}}')"),
                "22004",
            ),
            (
                format!("SELECT integrity.enqueue({ORG}, NULL, 'e', '{{}}')"),
                "22004",
            ),
            (
                format!("SELECT integrity.enqueue({ORG}, '', 'e', '{{}}')"),
                "22023",
            ),
            (
                format!("SELECT integrity.enqueue({ORG}, repeat('j', 256), 'e', '{{}}')"),
                "22023",
            ),
            (
                format!("SELECT integrity.enqueue({ORG}, 'j', '', '{{}}')"),
                "22023",
            ),
            (
                format!("SELECT integrity.enqueue({ORG}, 'j', 'e', NULL)"),
                "22004",
            ),
            (
                format!("SELECT integrity.enqueue({ORG}, 'j', 'e', 'not json')"),
                "22P02",
            ),
            (
                format!("SELECT integrity.enqueue({ORG}, 'j', 'e', '{{}}', max_attempts => 0)"),
                "22023",
            ),
            (
                format!("SELECT integrity.enqueue({ORG}, 'j', 'e', '{{}}', max_attempts => -3)"),
                "22023",
            ),
            (
                format!("SELECT integrity.enqueue({ORG}, 'j', 'e', '{{}}', ordering_key => '')"),
                "22023",
            ),
            (
                format!("SELECT integrity.enqueue({ORG}, 'j', 'e', '{{}}', run_at => 'infinity')"),
                "22008",
            ),
            (
                format!("SELECT integrity.enqueue({ORG}, 'j', 'e', '{{}}', run_at => '-infinity')"),
                "22008",
            ),
            ("SELECT integrity.claim(NULL)".to_string(), "22004"),
            ("SELECT integrity.claim('')".to_string(), "22023"),
            ("SELECT integrity.claim('w', 0)".to_string(), "22023"),
            ("SELECT integrity.claim('w', 1001)".to_string(), "22023"),
            ("SELECT integrity.claim('w', 1, '0')".to_string(), "22023"),
            (
                "SELECT integrity.claim('w', 1, '-1 minute')".to_string(),
                "22023",
            ),
            (
                "SELECT integrity.claim('w', 1, '25 hours')".to_string(),
                "22023",
            ),
            ("SELECT integrity.claim('w', 1, NULL)".to_string(), "22004"),
            ("SELECT integrity.complete(NULL)".to_string(), "22004"),
            ("SELECT integrity.fail(NULL, 'x')".to_string(), "22004"),
            ("SELECT integrity.fail(1, NULL)".to_string(), "22004"),
            (
                "SELECT integrity.fail(1, 'x', '-1 second')".to_string(),
                "22023",
            ),
            // Intervals added to now() later (at this failure, at the next
            // one for a schedule) are bounded in the call.
            (
                "SELECT integrity.fail(1, 'x', '1000000 years')".to_string(),
                "22008",
            ),
            (
                "SELECT integrity.set_retry_schedule('e', ARRAY['1 minute', '1000000 years']::interval[])"
                    .to_string(),
                "22008",
            ),
            (
                "SELECT integrity.purge_deliveries('1000000 years')".to_string(),
                "22008",
            ),
            // Taken from now(), 9,000 years would reach before 4713 BC.
            (
                "SELECT integrity.purge_deliveries('9000 years')".to_string(),
                "22008",
            ),
            // The statistics' period: not from the future, not before 4713 BC.
            (
                "SELECT * FROM integrity.delivery_stats('-1 day')".to_string(),
                "22023",
            ),
            (
                "SELECT * FROM integrity.delivery_stats('9000 years')".to_string(),
                "22008",
            ),
            (
                "SELECT * FROM integrity.delivery_stats(NULL)".to_string(),
                "00000",
            ),
            ("SELECT integrity.requeue(NULL)".to_string(), "22004"),
            (
                "SELECT integrity.purge_deliveries('-1 day')".to_string(),
                "22023",
            ),
            (
                "SELECT integrity.purge_deliveries('1 day', 0)".to_string(),
                "22023",
            ),
            (
                "SELECT integrity.purge_deliveries('1 day', 10, -1)".to_string(),
                "22023",
            ),
            (
                "SELECT integrity.set_retry_schedule(NULL, NULL)".to_string(),
                "22004",
            ),
            (
                "SELECT integrity.set_retry_schedule('e', ARRAY['-1 second']::interval[])"
                    .to_string(),
                "22023",
            ),
            (
                "SELECT * FROM integrity.claim('w', event_types => ARRAY['a', NULL])".to_string(),
                "22004",
            ),
            (
                "SELECT integrity.set_retry_schedule('e', ARRAY[NULL]::interval[])".to_string(),
                "22023",
            ),
        ] {
            assert_eq!(sqlstate(&sql), state, "{sql}");
        }
    }
}

//! Booking: no two active bookings of one resource ever overlap, at any
//! isolation level and under any concurrency; conflicts come back as data.
//!
//! How the guarantee is made:
//! 0. A slot that is already taken needs no lock: when a connection's
//!    recent requests often find their slot taken, `book` probes first and
//!    answers `slot_taken` without locking or writing.
//! 1. Writers lock before they write. `book` takes the table's ROW EXCLUSIVE
//!    lock, then the resource's advisory lock
//!    `integrity.lock_key('booking', org_id::text, resource_id::text)` in
//!    SHARE mode and, under READ COMMITTED, an EXCLUSIVE lock on each hour
//!    of the resource its booking touches (ascending, so bookers never
//!    deadlock). Overlapping requests share an hour and queue, whatever their
//!    start times; requests for other hours run in parallel. `wait => false`,
//!    `reschedule` and application code take the resource lock EXCLUSIVE
//!    instead (`wait => false` answers `busy` rather than waiting).
//! 2. Holding those locks under READ COMMITTED, no overlapping booking made
//!    through integrity.* is in flight, so the claim is exact: the row is
//!    inserted and the exclusion constraint's own check, which sees every
//!    committed row, decides; an overlap it finds comes back as data and the
//!    row is deleted again (`direct::insert`, no subtransaction).
//! 3. Where that does not hold (REPEATABLE READ / SERIALIZABLE, whose
//!    snapshot predates the locks; bookings longer than a day; a transaction
//!    past its budget of hour locks) the claim is `INSERT … ON CONFLICT DO
//!    NOTHING` against the exclusion constraint: an in-flight overlapping
//!    booking makes it wait and then see the conflict, and a conflict the
//!    snapshot cannot see raises 40001 for the client to retry.
//! 4. The exclusion constraint `bookings_no_overlap` is the last line of
//!    defence for whatever writes the table without our locks.
//!
//! The probe and the exact claim run without SQL (`direct`) wherever a
//! statement would do the same thing; otherwise SQL does them.
//!
//! A claim that finds the slot taken answers
//! `{"ok":false,"reason":"slot_taken","conflicts":[…]}`, never 23P01.

mod direct;

use crate::errors::{raise, required, Kind, OrBug};
use crate::gucs;
use crate::jsonb::{Builder, Jsonb};
use crate::keys::{advisory_lock, advisory_try_lock, lock_key_of, uuid_text};
use crate::plans::{read, run, with_index_scans, Stmt};
use pgrx::datum::{DatumWithOid, Range, RangeBound, Uuid};
use pgrx::direct_function_call;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::ffi::CStr;

pgrx::extension_sql_file!(
    "../sql/booking.sql",
    name = "booking_tables",
    requires = ["bootstrap"]
);
pgrx::extension_sql_file!(
    "../sql/booking_api.sql",
    name = "booking_api",
    requires = [
        "booking_tables",
        book,
        cancel,
        reschedule,
        slot_available,
        free_slots
    ]
);

const UUID: Oid = pg_sys::UUIDOID;
const TSTZ: Oid = pg_sys::TIMESTAMPTZOID;
const INTERVAL: Oid = pg_sys::INTERVALOID;
const JSONB: Oid = pg_sys::JSONBOID;
const TEXT: Oid = pg_sys::TEXTOID;
const TSTZRANGE: Oid = pg_sys::TSTZRANGEOID;

/// Claims the slot, or returns no row when an active booking overlaps it.
/// Used where our locks do not make check-then-insert exact (see
/// `claim_locks`): the exclusion constraint arbitrates, waiting for an
/// in-flight overlapping booking, and raises 40001 for a conflict an old
/// snapshot cannot see, instead of letting 23P01 escape.
static INSERT_BOOKING: Stmt = Stmt {
    sql: "INSERT INTO integrity.bookings AS b (org_id, resource_id, contact_id, during, metadata)
          VALUES ($1, $2, $3, $4, $5)
          ON CONFLICT DO NOTHING
          RETURNING b.id",
    args: &[UUID, UUID, UUID, TSTZRANGE, JSONB],
    writes: true,
};

/// The `slot_taken` answer: active bookings overlapping the range, except
/// `$5`; no row when nothing overlaps.
static CONFLICTS: Stmt = Stmt {
    sql: "SELECT pg_catalog.jsonb_build_object(
              'ok', false, 'reason', 'slot_taken',
              'conflicts', COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                  'booking_id', b.id,
                  'starts_at', pg_catalog.lower(b.during),
                  'ends_at', pg_catalog.upper(b.during)) ORDER BY pg_catalog.lower(b.during)), '[]'))
          FROM integrity.bookings b
          WHERE b.org_id = $1 AND b.resource_id = $2 AND b.status = 'booked'
            AND b.during OPERATOR(pg_catalog.&&) pg_catalog.tstzrange($3, $3 + $4, '[)')
            AND b.id IS DISTINCT FROM $5
          HAVING pg_catalog.count(*) > 0",
    args: &[UUID, UUID, TSTZ, INTERVAL, UUID],
    writes: false,
};

static SLOT_FREE: Stmt = Stmt {
    sql: "SELECT NOT EXISTS (
              SELECT 1 FROM integrity.bookings b
              WHERE b.org_id = $1 AND b.resource_id = $2 AND b.status = 'booked'
                AND b.during OPERATOR(pg_catalog.&&) pg_catalog.tstzrange($3, $3 + $4, '[)'))",
    args: &[UUID, UUID, TSTZ, INTERVAL],
    writes: false,
};

/// Locks the booking row; its status and what a reschedule needs.
static LOCK_BOOKING: Stmt = Stmt {
    sql: "SELECT b.status, b.org_id, b.resource_id,
                 pg_catalog.upper(b.during) - pg_catalog.lower(b.during) AS duration,
                 b.updated_at
          FROM integrity.bookings b WHERE b.id = $1 FOR UPDATE",
    args: &[UUID],
    writes: true,
};

/// Where a booking is, without locking it (to take the resource lock first).
static FIND_BOOKING: Stmt = Stmt {
    sql: "SELECT b.org_id, b.resource_id FROM integrity.bookings b WHERE b.id = $1",
    args: &[UUID],
    writes: false,
};

static CANCEL_BOOKING: Stmt = Stmt {
    sql: "WITH c AS (
              UPDATE integrity.bookings b
              SET status = 'cancelled', cancelled_at = pg_catalog.now(),
                  cancel_reason = $2, updated_at = pg_catalog.now()
              WHERE b.id = $1 AND b.status = 'booked'
              RETURNING b.*),
          e AS (
              INSERT INTO integrity.booking_events (booking_id, org_id, event, during, details)
              SELECT c.id, c.org_id, 'cancelled', c.during, pg_catalog.jsonb_build_object('reason', $2)
              FROM c)
          SELECT pg_catalog.jsonb_build_object(
              'ok', true, 'booking_id', c.id, 'status', c.status,
              'starts_at', pg_catalog.lower(c.during), 'ends_at', pg_catalog.upper(c.during),
              'cancelled_at', c.cancelled_at)
          FROM c",
    args: &[UUID, TEXT],
    writes: true,
};

/// Step 1 of a reschedule: the old booking stops holding its slot.
static RELEASE_FOR_RESCHEDULE: Stmt = Stmt {
    sql: "UPDATE integrity.bookings
          SET status = 'cancelled', cancelled_at = pg_catalog.now(),
              cancel_reason = 'rescheduled', updated_at = pg_catalog.now()
          WHERE id = $1",
    args: &[UUID],
    writes: true,
};

/// Step 2: the new booking, copying who and what from the old one, and the
/// audit event on the old booking, in one statement.
static INSERT_RESCHEDULED: Stmt = Stmt {
    sql: "WITH n AS (
              INSERT INTO integrity.bookings AS b
                  (org_id, resource_id, contact_id, during, metadata, rescheduled_from)
              SELECT o.org_id, o.resource_id, o.contact_id,
                     pg_catalog.tstzrange($2, $2 + $3, '[)'), o.metadata, o.id
              FROM integrity.bookings o WHERE o.id = $1
              ON CONFLICT DO NOTHING
              RETURNING b.*),
          e AS (
              INSERT INTO integrity.booking_events (booking_id, org_id, event, during, details)
              SELECT o.id, o.org_id, 'rescheduled', o.during,
                     pg_catalog.jsonb_build_object('new_booking_id', n.id,
                         'starts_at', pg_catalog.lower(n.during), 'ends_at', pg_catalog.upper(n.during))
              FROM n JOIN integrity.bookings o ON o.id = n.rescheduled_from)
          SELECT pg_catalog.jsonb_build_object(
              'ok', true, 'booking_id', n.id, 'previous_booking_id', n.rescheduled_from,
              'starts_at', pg_catalog.lower(n.during), 'ends_at', pg_catalog.upper(n.during))
          FROM n",
    args: &[UUID, TSTZ, INTERVAL],
    writes: true,
};

/// Undo of step 1 when step 2 finds the slot taken by a writer that did not
/// take our lock: the old booking is put back exactly as it was.
static RESTORE_BOOKING: Stmt = Stmt {
    sql: "UPDATE integrity.bookings
          SET status = 'booked', cancelled_at = NULL, cancel_reason = NULL, updated_at = $2
          WHERE id = $1",
    args: &[UUID, TSTZ],
    writes: true,
};

static FREE_SLOTS: Stmt = Stmt {
    sql: "SELECT pg_catalog.tstzrange(s, s + $4, '[)')
          FROM pg_catalog.generate_series($3, $5, $4) AS s
          WHERE s + $4 <= $5
            AND NOT EXISTS (
              SELECT 1 FROM integrity.bookings b
              WHERE b.org_id = $1 AND b.resource_id = $2 AND b.status = 'booked'
                AND b.during OPERATOR(pg_catalog.&&) pg_catalog.tstzrange(s, s + $4, '[)'))
          ORDER BY s",
    args: &[UUID, UUID, TSTZ, INTERVAL, TSTZ],
    writes: false,
};

// ---------------------------------------------------------------------------
// Argument checks

fn interval_text(i: Interval) -> String {
    // SAFETY: interval_out takes an interval datum and returns a palloc'd C string.
    unsafe { direct_function_call::<&CStr>(pg_sys::interval_out, &[i.into_datum()]) }
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A positive duration no longer than `integrity.max_booking_duration`.
fn check_duration(f: &'static str, arg: &'static str, d: Interval) -> Interval {
    let us = crate::errors::span_us(f, arg, d);
    if us <= 0 {
        raise(
            Kind::InvalidParameter,
            f,
            format!("{arg} must be positive, got {}", interval_text(d)),
            format!("Pass a positive interval such as '30 minutes' for {arg}."),
        );
    }
    if us > gucs::max_booking_duration_us() {
        raise(
            Kind::InvalidParameter,
            f,
            format!(
                "{arg} must be at most integrity.max_booking_duration ({} s), got {}",
                gucs::max_booking_duration_us() / 1_000_000,
                interval_text(d)
            ),
            "Book a shorter span, or raise integrity.max_booking_duration (SET integrity.max_booking_duration = '48h').",
        );
    }
    d
}

fn check_metadata(f: &'static str, m: Option<Jsonb>) -> Jsonb {
    let m = match m {
        Some(m) => m,
        None => raise(
            Kind::NullValue,
            f,
            "metadata must not be NULL",
            "Omit metadata or pass '{}' for none.",
        ),
    };
    if !m.is_object() {
        let kind = m.type_name();
        raise(
            Kind::InvalidParameter,
            f,
            format!(
                "metadata must be a JSON object, got {kind} {}",
                truncate(&m.text(), 60)
            ),
            "Pass an object such as '{\"source\": \"web\"}'.",
        );
    }
    m
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

// ---------------------------------------------------------------------------
// Locking

/// The advisory-lock key every writer of one resource's bookings takes.
pub fn resource_lock_key(org_id: Uuid, resource_id: Uuid) -> i64 {
    resource_key(
        &uuid_text(org_id.as_bytes()),
        &uuid_text(resource_id.as_bytes()),
    )
}

/// `resource_lock_key` from the ids' text forms.
fn resource_key(org: &[u8], res: &[u8]) -> i64 {
    lock_key_of([&b"booking"[..], org, res])
}

/// Width of the slot locks, in microseconds: one hour.
const SLOT_LOCK_US: i128 = 3_600_000_000;
/// Most slot locks one booking takes; a longer booking claims without them.
const MAX_SLOT_LOCKS: i128 = 26;
/// Most slot locks one transaction takes. Each is held to the end of the
/// transaction, so a bulk load of thousands of bookings in one transaction
/// would fill the shared lock table; past this it claims without them.
const MAX_SLOT_LOCKS_PER_XACT: u32 = 64;

thread_local! {
    /// (local transaction id, slot locks it holds) for this backend.
    static SLOT_LOCKS_HELD: std::cell::Cell<(u32, u32)> = const { std::cell::Cell::new((0, 0)) };
}

/// The advisory-lock key of one hour-wide slot of a resource.
fn slot_lock_key(org: &[u8], res: &[u8], hour: i128) -> i64 {
    let hour = hour.to_string();
    lock_key_of([&b"booking-slot"[..], org, res, hour.as_bytes()])
}

/// Reserve `n` slot locks in this transaction's budget.
fn slot_lock_budget(n: u32) -> bool {
    // SAFETY: MyProc is this backend's PGPROC, set for the backend's life.
    let lxid = unsafe { (*pg_sys::MyProc).lxid };
    SLOT_LOCKS_HELD.with(|held| {
        let (x, count) = held.get();
        let count = if x == lxid { count } else { 0 };
        let ok = count + n <= MAX_SLOT_LOCKS_PER_XACT;
        held.set((lxid, if ok { count + n } else { count }));
        ok
    })
}

/// How `book` may claim, given the locks it took.
enum Claim {
    /// No other booking through integrity.* can overlap while we hold our
    /// locks, and our next snapshot sees every committed one:
    /// a probe with a snapshot taken after them, then a plain INSERT, is exact.
    Exact,
    /// Overlapping bookings may be in flight, or our snapshot is older than
    /// our locks: the exclusion constraint decides (`INSERT_BOOKING`).
    Arbitrated,
}

/// Take the locks for a booking and say how it may claim; `None` means
/// `busy`: another transaction holds the resource and the caller won't wait.
///
/// * `wait => false`: the resource lock EXCLUSIVE, tried once. Holding it,
///   no other booking of the resource is in flight.
/// * otherwise the resource lock in SHARE mode (so whoever holds it
///   EXCLUSIVE, `reschedule` or an application, keeps bookings out) and,
///   under READ COMMITTED, EXCLUSIVE locks on every hour of the resource the
///   booking touches, in ascending order (bookers never deadlock). Two
///   overlapping bookings share at least one hour, so they queue; bookings of
///   different hours do not. A booking longer than `MAX_SLOT_LOCKS` hours, or
///   one past the transaction's slot-lock budget, skips the hour locks and is
///   arbitrated by the exclusion constraint instead.
fn claim_locks(
    org_id: Uuid,
    resource_id: Uuid,
    starts_at: TimestampWithTimeZone,
    duration: Interval,
    wait: bool,
) -> Option<Claim> {
    let (org, res) = (
        uuid_text(org_id.as_bytes()),
        uuid_text(resource_id.as_bytes()),
    );
    let resource_key = resource_key(&org, &res);
    // REPEATABLE READ / SERIALIZABLE: a check made after our locks can
    // still miss a booking committed before them.
    let exact = !crate::direct::xact_snapshot();
    if !wait {
        return match (advisory_try_lock(resource_key), exact) {
            (false, _) => None,
            (true, true) => Some(Claim::Exact),
            (true, false) => Some(Claim::Arbitrated),
        };
    }
    advisory_lock(resource_key, true);
    if !exact {
        return Some(Claim::Arbitrated);
    }
    // The end Postgres computes (`starts_at + duration`, calendar-aware) is
    // at most this far: a month is at most 31 days, a day at most 25 hours.
    const HOUR: i128 = 3_600_000_000;
    let start = i64::from(starts_at) as i128;
    let span = duration.months() as i128 * 31 * 24 * HOUR
        + duration.days() as i128 * 25 * HOUR
        + duration.micros() as i128;
    let first = start.div_euclid(SLOT_LOCK_US);
    let last = (start + span - 1).div_euclid(SLOT_LOCK_US);
    let n = last - first + 1;
    if n > MAX_SLOT_LOCKS || !slot_lock_budget(n as u32) {
        return Some(Claim::Arbitrated);
    }
    for hour in first..=last {
        advisory_lock(slot_lock_key(&org, &res, hour), false);
    }
    Some(Claim::Exact)
}

thread_local! {
    /// This backend's recent share of claims that found the slot taken (an
    /// exponential moving average).
    static TAKEN_RATE: std::cell::Cell<f32> = const { std::cell::Cell::new(0.0) };
}

/// Whether to probe before taking the locks. A slot already taken needs no
/// lock to say so, and where that is common (a popular resource filling up)
/// the lock-free probe keeps `slot_taken` answers from queueing behind
/// bookers. Where slots are mostly free it would be a second probe for
/// nothing whenever other transactions commit meanwhile.
fn probe_first() -> bool {
    TAKEN_RATE.with(|r| r.get() >= 0.25)
}

fn note_claim_outcome(taken: bool) {
    TAKEN_RATE.with(|r| r.set(r.get() * 0.9 + if taken { 0.1 } else { 0.0 }));
}

/// `starts_at + duration` as Postgres computes it (calendar-aware, in the
/// session's time zone); 22008 naming `what` past timestamptz's range;
/// 22023 unless it is after `starts_at`.
fn end_of(
    f: &'static str,
    what: &str,
    starts_at: TimestampWithTimeZone,
    duration: Interval,
) -> TimestampWithTimeZone {
    let end = crate::errors::timestamp_plus(f, what, starts_at, duration);
    if i64::from(end) <= i64::from(starts_at) {
        raise(
            Kind::InvalidParameter,
            f,
            format!(
                "duration must be positive, got {} (which ends before it starts from this starts_at)",
                interval_text(duration)
            ),
            "Pass a positive interval such as '30 minutes'; mixed signs like '1 month -30 days' can be negative for some months.",
        );
    }
    end
}

/// A timestamptz as jsonb writes it (`2026-12-01T10:00:00+00:00`).
fn json_time(t: TimestampWithTimeZone) -> String {
    // SAFETY: JsonEncodeDateTime with a NULL buffer returns a palloc'd C
    // string for a timestamptz datum.
    unsafe {
        let p = pg_sys::JsonEncodeDateTime(
            std::ptr::null_mut(),
            pg_sys::Datum::from(i64::from(t)),
            pg_sys::TIMESTAMPTZOID,
            std::ptr::null(),
        );
        let s = CStr::from_ptr(p).to_string_lossy().into_owned();
        pg_sys::pfree(p.cast());
        s
    }
}

fn uuid_str(text: &[u8; 36]) -> &str {
    std::str::from_utf8(text).unwrap_or_default()
}

/// `{"ok": true, "booking_id", "starts_at", "ends_at"}`.
fn booked_answer(
    id: Uuid,
    starts_at: TimestampWithTimeZone,
    ends_at: TimestampWithTimeZone,
) -> Jsonb {
    Builder::new()
        .begin_object()
        .key("ok")
        .bool(true)
        .key("booking_id")
        .string(uuid_str(&uuid_text(id.as_bytes())))
        .key("starts_at")
        .string(&json_time(starts_at))
        .key("ends_at")
        .string(&json_time(ends_at))
        .end()
        .finish()
}

/// `{"ok": false, "reason": "slot_taken", "conflicts": [...]}`.
fn taken_answer(conflicts: &[direct::Conflict]) -> Jsonb {
    let mut b = Builder::new();
    b.begin_object()
        .key("ok")
        .bool(false)
        .key("reason")
        .string("slot_taken")
        .key("conflicts")
        .begin_array();
    for c in conflicts {
        b.begin_object()
            .key("booking_id")
            .string(uuid_str(&uuid_text(c.id.as_bytes())))
            .key("starts_at")
            .string(&json_time(c.starts_at))
            .key("ends_at")
            .string(&json_time(c.ends_at))
            .end();
    }
    b.end().end().finish()
}

fn busy() -> Jsonb {
    outcome("busy")
}

fn outcome(r: &str) -> Jsonb {
    Jsonb::from_text(&format!(r#"{{"ok": false, "reason": "{r}"}}"#))
}

/// Run a kept statement and return the jsonb in the first column of its first row.
fn one_json(
    client: &mut SpiClient<'_>,
    stmt: &'static Stmt,
    args: &[DatumWithOid<'_>],
) -> Option<Jsonb> {
    let table = run(client, stmt, Some(1), args);
    if table.is_empty() {
        return None;
    }
    table
        .first()
        .get_datum_by_ordinal(1)
        .or_bug(stmt.sql)
        .map(Jsonb::from_spi)
}

fn conflicts(
    client: &mut SpiClient<'_>,
    org_id: Uuid,
    resource_id: Uuid,
    starts_at: TimestampWithTimeZone,
    duration: Interval,
    except: Option<Uuid>,
) -> Option<Jsonb> {
    one_json(
        client,
        &CONFLICTS,
        &[
            org_id.into(),
            resource_id.into(),
            starts_at.into(),
            duration.into(),
            except.into(),
        ],
    )
}

/// `slot_taken` when the exclusion constraint kept refusing the row but no
/// conflicting booking is visible to us: an in-flight row of a writer that
/// bypasses our locks.
fn taken_without_details() -> Jsonb {
    Jsonb::from_text(r#"{"ok": false, "reason": "slot_taken", "conflicts": []}"#)
}

// ---------------------------------------------------------------------------
// SQL functions

/// Book `resource_id` from `starts_at` for `duration`, or say why not.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn book(
    org_id: Option<Uuid>,
    resource_id: Option<Uuid>,
    starts_at: Option<TimestampWithTimeZone>,
    duration: Option<Interval>,
    contact_id: default!(Option<Uuid>, "NULL"),
    metadata: default!(Option<Jsonb>, "'{}'"),
    wait: default!(Option<bool>, true),
) -> Jsonb {
    const F: &str = "integrity.book";
    let org_id = required(org_id, F, "org_id");
    let resource_id = required(resource_id, F, "resource_id");
    let starts_at =
        crate::errors::check_finite(F, "starts_at", required(starts_at, F, "starts_at"));
    let duration = check_duration(F, "duration", required(duration, F, "duration"));
    let metadata = check_metadata(F, metadata);
    let wait = required(wait, F, "wait");

    let ends_at = end_of(F, "starts_at + duration", starts_at, duration);
    let span = Range::new(
        RangeBound::Inclusive(starts_at),
        RangeBound::Exclusive(ends_at),
    )
    .into_datum()
    .unwrap_or_else(|| crate::errors::bug("tstzrange datum"));
    // The slot_taken answer for what overlaps the span now, if anything does.
    let taken = || match direct::overlapping(org_id, resource_id, span, starts_at, ends_at) {
        Some(found) => (!found.is_empty()).then(|| taken_answer(&found)),
        None => with_index_scans(|| {
            Spi::connect_mut(|client| {
                conflicts(client, org_id, resource_id, starts_at, duration, None)
            })
        }),
    };

    // A slot that is already taken needs no lock to say so.
    if wait && probe_first() {
        if let Some(answer) = taken() {
            note_claim_outcome(true);
            return answer;
        }
    }
    direct::lock_for_insert();
    let Some(claim) = claim_locks(org_id, resource_id, starts_at, duration, wait) else {
        return busy();
    };
    let sql_claim = || {
        claim_slot(
            &INSERT_BOOKING,
            org_id,
            resource_id,
            contact_id,
            span,
            metadata,
        )
    };
    let claim_once = || match claim {
        // Under the locks no booking made through integrity.* overlaps in
        // flight, so the exclusion check of a plain insert sees every
        // overlapping booking there is.
        Claim::Exact => match direct::insert(org_id, resource_id, contact_id, span, metadata) {
            Some(direct::Claimed::Booked(id)) => Some(id),
            Some(direct::Claimed::Taken) => None,
            None => sql_claim(),
        },
        Claim::Arbitrated => sql_claim(),
    };
    // A refused claim is answered with the bookings in the way. If none is
    // left by the time we look (cancelled meanwhile: cancel takes no slot
    // lock), the slot may be free now: claim again, a few times at most
    // (a writer bypassing our locks can keep refusing us).
    for _ in 0..CLAIM_ATTEMPTS {
        if let Some(id) = claim_once() {
            note_claim_outcome(false);
            return booked_answer(id, starts_at, ends_at);
        }
        if let Some(answer) = taken() {
            note_claim_outcome(true);
            return answer;
        }
    }
    note_claim_outcome(true);
    taken_without_details()
}

/// How often `book` claims a slot whose conflicting booking was gone by
/// the time it looked (see `book`).
const CLAIM_ATTEMPTS: usize = 3;

/// Insert the booking with `stmt`; its id, or `None` when the statement
/// inserted nothing (`ON CONFLICT DO NOTHING`).
fn claim_slot(
    stmt: &'static Stmt,
    org_id: Uuid,
    resource_id: Uuid,
    contact_id: Option<Uuid>,
    span: pg_sys::Datum,
    metadata: Jsonb,
) -> Option<Uuid> {
    Spi::connect_mut(|client| {
        // SAFETY: span is a tstzrange datum made for this call.
        let span = unsafe { DatumWithOid::new(span, TSTZRANGE) };
        let args = [
            org_id.into(),
            resource_id.into(),
            contact_id.into(),
            span,
            metadata.into(),
        ];
        let table = run(client, stmt, Some(1), &args);
        if table.is_empty() {
            return None;
        }
        table.first().get_one::<Uuid>().or_bug(stmt.sql)
    })
}

/// Cancel a booking (soft delete): it stops holding its slot.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn cancel(booking_id: Option<Uuid>, reason: default!(Option<&str>, "NULL")) -> Jsonb {
    const F: &str = "integrity.cancel";
    let booking_id = required(booking_id, F, "booking_id");
    Spi::connect_mut(|client| {
        let row = run(client, &LOCK_BOOKING, Some(1), &[booking_id.into()]);
        if row.is_empty() {
            return outcome("not_found");
        }
        let status = row.first().get_one::<String>().or_bug(LOCK_BOOKING.sql);
        if status.as_deref() != Some("booked") {
            return outcome("already_cancelled");
        }
        one_json(client, &CANCEL_BOOKING, &[booking_id.into(), reason.into()])
            .unwrap_or_else(|| outcome("already_cancelled"))
    })
}

/// Move a booking to a new time in one atomic step: a new booking is made and
/// the old one cancelled; on conflict the old booking stays as it was.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn reschedule(
    booking_id: Option<Uuid>,
    new_starts_at: Option<TimestampWithTimeZone>,
    new_duration: default!(Option<Interval>, "NULL"),
    wait: default!(Option<bool>, true),
) -> Jsonb {
    const F: &str = "integrity.reschedule";
    let booking_id = required(booking_id, F, "booking_id");
    let new_starts_at = crate::errors::check_finite(
        F,
        "new_starts_at",
        required(new_starts_at, F, "new_starts_at"),
    );
    let new_duration = new_duration.map(|d| check_duration(F, "new_duration", d));
    let wait = required(wait, F, "wait");

    Spi::connect_mut(|client| {
        // Resource lock before row lock, the same order `book` + `cancel` in
        // one transaction take them. Exclusive: no booking of this resource is
        // in flight while the old one gives way and the new one is claimed.
        let found = read(client, &FIND_BOOKING, Some(1), &[booking_id.into()]);
        if found.is_empty() {
            return outcome("not_found");
        }
        let (org, res) = found
            .first()
            .get_two::<Uuid, Uuid>()
            .or_bug(FIND_BOOKING.sql);
        let (Some(org_id), Some(resource_id)) = (org, res) else {
            return outcome("not_found");
        };
        let key = resource_lock_key(org_id, resource_id);
        if wait {
            advisory_lock(key, false);
        } else if !advisory_try_lock(key) {
            return busy();
        }

        let row = run(client, &LOCK_BOOKING, Some(1), &[booking_id.into()]);
        if row.is_empty() {
            return outcome("not_found");
        }
        let row = row.first();
        let status = row.get::<String>(1).or_bug(LOCK_BOOKING.sql);
        if status.as_deref() != Some("booked") {
            return outcome("already_cancelled");
        }
        let old_duration = row.get::<Interval>(4).or_bug(LOCK_BOOKING.sql);
        let old_updated_at = row.get::<TimestampWithTimeZone>(5).or_bug(LOCK_BOOKING.sql);
        let Some(duration) = new_duration.or(old_duration) else {
            return outcome("not_found");
        };
        end_of(F, "new_starts_at + duration", new_starts_at, duration);

        // Under the exclusive lock this sees every booking made through
        // integrity.* (READ COMMITTED); the ON CONFLICT below covers writers
        // that bypass the lock and stale snapshots (40001).
        if let Some(taken) = conflicts(
            client,
            org_id,
            resource_id,
            new_starts_at,
            duration,
            Some(booking_id),
        ) {
            return taken;
        }

        run(client, &RELEASE_FOR_RESCHEDULE, None, &[booking_id.into()]);
        let inserted = one_json(
            client,
            &INSERT_RESCHEDULED,
            &[booking_id.into(), new_starts_at.into(), duration.into()],
        );
        match inserted {
            Some(ok) => ok,
            None => {
                run(
                    client,
                    &RESTORE_BOOKING,
                    None,
                    &[booking_id.into(), old_updated_at.into()],
                );
                conflicts(
                    client,
                    org_id,
                    resource_id,
                    new_starts_at,
                    duration,
                    Some(booking_id),
                )
                .unwrap_or_else(taken_without_details)
            }
        }
    })
}

/// Is the span free of active bookings? (A hint for UIs: only `book` claims.)
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn slot_available(
    org_id: Option<Uuid>,
    resource_id: Option<Uuid>,
    starts_at: Option<TimestampWithTimeZone>,
    duration: Option<Interval>,
) -> bool {
    const F: &str = "integrity.slot_available";
    let org_id = required(org_id, F, "org_id");
    let resource_id = required(resource_id, F, "resource_id");
    let starts_at =
        crate::errors::check_finite(F, "starts_at", required(starts_at, F, "starts_at"));
    let duration = check_duration(F, "duration", required(duration, F, "duration"));
    end_of(F, "starts_at + duration", starts_at, duration);
    Spi::connect(|client| {
        let args = [
            org_id.into(),
            resource_id.into(),
            starts_at.into(),
            duration.into(),
        ];
        read(client, &SLOT_FREE, Some(1), &args)
            .first()
            .get_one::<bool>()
            .or_bug(SLOT_FREE.sql)
            .unwrap_or(false)
    })
}

/// Slot-sized ranges, aligned to the window's start, that overlap no active booking.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn free_slots(
    org_id: Option<Uuid>,
    resource_id: Option<Uuid>,
    window: Option<Range<TimestampWithTimeZone>>,
    slot: Option<Interval>,
) -> SetOfIterator<'static, Range<TimestampWithTimeZone>> {
    const F: &str = "integrity.free_slots";
    let org_id = required(org_id, F, "org_id");
    let resource_id = required(resource_id, F, "resource_id");
    let window = required(window, F, "window");
    let slot = required(slot, F, "slot");
    let (lower, upper) = window_bounds(F, &window);
    let slot_us = crate::errors::span_us(F, "slot", slot);
    if slot_us <= 0 {
        raise(
            Kind::InvalidParameter,
            F,
            format!("slot must be positive, got {}", interval_text(slot)),
            "Pass a positive interval such as '30 minutes' for slot.",
        );
    }
    crate::errors::not_too_long(F, "slot", slot);
    // The candidates run up to the window's end and one slot past it.
    crate::errors::timestamp_plus(F, "the window's end + slot", upper, slot);
    let span_us = i64::from(upper) as i128 - i64::from(lower) as i128;
    let candidates = span_us / slot_us;
    if candidates > gucs::max_slots() as i128 {
        raise(
            Kind::InvalidParameter,
            F,
            format!(
                "window and slot give {candidates} candidate slots, more than integrity.max_slots ({})",
                gucs::max_slots()
            ),
            "Ask for a shorter window or a longer slot, or raise integrity.max_slots.",
        );
    }
    let slots = Spi::connect(|client| {
        let args = [
            org_id.into(),
            resource_id.into(),
            lower.into(),
            slot.into(),
            upper.into(),
        ];
        let table = read(client, &FREE_SLOTS, None, &args);
        let mut out = Vec::with_capacity(table.len());
        for row in table {
            if let Some(r) = row
                .get::<Range<TimestampWithTimeZone>>(1)
                .or_bug(FREE_SLOTS.sql)
            {
                out.push(r);
            }
        }
        out
    });
    SetOfIterator::new(slots)
}

/// The finite, non-empty `[lower, upper)` of a window, or a 22023 naming it.
fn window_bounds(
    f: &'static str,
    w: &Range<TimestampWithTimeZone>,
) -> (TimestampWithTimeZone, TimestampWithTimeZone) {
    let finite = |b: Option<&RangeBound<TimestampWithTimeZone>>| -> Option<TimestampWithTimeZone> {
        let t = *b?.get()?;
        (!t.is_infinity() && !t.is_neg_infinity()).then_some(t)
    };
    if w.is_empty() {
        raise(
            Kind::InvalidParameter,
            f,
            "window must not be empty",
            "Pass a window such as tstzrange('2026-12-01 09:00+00', '2026-12-01 17:00+00').",
        );
    }
    match (finite(w.lower()), finite(w.upper())) {
        (Some(l), Some(u)) => (l, u),
        _ => raise(
            Kind::InvalidParameter,
            f,
            "window must have finite lower and upper bounds",
            "Pass a bounded window such as tstzrange('2026-12-01 09:00+00', '2026-12-01 17:00+00').",
        ),
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testutil::{json, sqlstate};
    use pgrx::prelude::*;

    const ORG: &str = "00000000-0000-0000-0000-00000000000a";
    const ORG2: &str = "00000000-0000-0000-0000-00000000000b";
    const RES: &str = "00000000-0000-0000-0000-000000000001";
    const RES2: &str = "00000000-0000-0000-0000-000000000002";
    // Tests that change the table (DDL) book for tenants of their own, so no
    // concurrently running test waits on their advisory locks while they
    // wait for a table lock (which would be a deadlock).
    const ORG_DDL1: &str = "00000000-0000-0000-0000-0000000000d1";
    const ORG_DDL2: &str = "00000000-0000-0000-0000-0000000000d2";
    const ORG_DDL3: &str = "00000000-0000-0000-0000-0000000000d3";

    fn book(org: &str, res: &str, at: &str, dur: &str) -> serde_json::Value {
        json(&format!(
            "SELECT integrity.book('{org}', '{res}', '{at}', '{dur}')"
        ))
    }

    fn id(v: &serde_json::Value) -> String {
        v["booking_id"].as_str().expect("booking_id").to_string()
    }

    #[pg_test]
    fn a_read_only_transaction_books_nothing() {
        // The helper first: it creates a function, which read-only refuses.
        crate::testutil::sqlstate("SELECT 1");
        Spi::run("SET LOCAL transaction_read_only = on").unwrap();
        let sql =
            format!("SELECT integrity.book('{ORG}', '{RES}', '2026-12-09 10:00+00', '1 hour')");
        assert_eq!(crate::testutil::sqlstate(&sql), "25006");
    }

    #[pg_test]
    fn book_claims_and_reports_conflicts() {
        Spi::run("SET LOCAL TimeZone = 'UTC'").unwrap();
        let a = book(ORG, RES, "2026-12-01 10:00+00", "30 minutes");
        assert_eq!(a["ok"], true, "{a}");
        assert_eq!(a["starts_at"], "2026-12-01T10:00:00+00:00");
        assert_eq!(a["ends_at"], "2026-12-01T10:30:00+00:00");

        let b = book(ORG, RES, "2026-12-01 10:15+00", "30 minutes");
        assert_eq!(b["ok"], false);
        assert_eq!(b["reason"], "slot_taken");
        assert_eq!(b["conflicts"][0]["booking_id"], a["booking_id"]);
        assert_eq!(b["conflicts"].as_array().unwrap().len(), 1);

        // [start, end): back-to-back bookings do not overlap.
        assert_eq!(
            book(ORG, RES, "2026-12-01 10:30+00", "30 minutes")["ok"],
            true
        );
        assert_eq!(
            book(ORG, RES, "2026-12-01 09:30+00", "30 minutes")["ok"],
            true
        );
        // Another resource, or the same resource id in another tenant, is independent.
        assert_eq!(
            book(ORG, RES2, "2026-12-01 10:00+00", "30 minutes")["ok"],
            true
        );
        assert_eq!(
            book(ORG2, RES, "2026-12-01 10:00+00", "30 minutes")["ok"],
            true
        );

        // One request spanning several bookings lists them all, in order.
        let wide = book(ORG, RES, "2026-12-01 09:00+00", "3 hours");
        let c = wide["conflicts"].as_array().unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0]["starts_at"], "2026-12-01T09:30:00+00:00");
        assert_eq!(c[2]["starts_at"], "2026-12-01T10:30:00+00:00");

        let n = Spi::get_one::<i64>("SELECT count(*) FROM integrity.bookings")
            .unwrap()
            .unwrap();
        assert_eq!(n, 5);
        // Metadata and contact are stored as given.
        let m = json(&format!(
            "SELECT integrity.book('{ORG}', '{RES}', '2026-12-02 10:00+00', '1 hour', \
             contact_id => '00000000-0000-0000-0000-0000000000cc', metadata => '{{\"src\": \"web\"}}')"
        ));
        let stored = json(&format!(
            "SELECT jsonb_build_object('m', metadata, 'c', contact_id) FROM integrity.bookings WHERE id = '{}'",
            id(&m)
        ));
        assert_eq!(stored["m"]["src"], "web");
        assert_eq!(stored["c"], "00000000-0000-0000-0000-0000000000cc");
    }

    #[pg_test]
    fn both_claim_orders_answer_alike() {
        // A run of conflicts moves book() from locking first (the insert's
        // exclusion check finds the conflict) to probing first (taken slots
        // answered without locks), and a run of free slots moves it back;
        // every answer stays right on the way.
        let first = book(ORG, RES, "2026-12-01 10:00+00", "1 hour");
        assert_eq!(first["ok"], true);
        for i in 0..10 {
            let v = book(
                ORG,
                RES,
                &format!("2026-12-01 10:{:02}+00", i * 5),
                "30 minutes",
            );
            assert_eq!(v["reason"], "slot_taken", "attempt {i}: {v}");
            assert_eq!(v["conflicts"][0]["booking_id"], first["booking_id"]);
        }
        for i in 0..30 {
            let v = book(
                ORG,
                RES,
                &format!("2026-12-02 00:00+00'::timestamptz + '{i} hours"),
                "1 hour",
            );
            assert_eq!(v["ok"], true, "free slot {i}: {v}");
            let again = book(
                ORG,
                RES,
                &format!("2026-12-02 00:30+00'::timestamptz + '{i} hours"),
                "15 minutes",
            );
            assert_eq!(again["reason"], "slot_taken", "taken slot {i}: {again}");
        }
        let n = Spi::get_one::<i64>("SELECT count(*) FROM integrity.bookings")
            .unwrap()
            .unwrap();
        assert_eq!(
            n, 31,
            "claims that found their slot taken leave no rows behind"
        );
    }

    #[pg_test]
    fn a_conflict_found_by_the_insert_leaves_nothing_behind() {
        // A long run of free slots makes book() lock first and let the
        // insert's exclusion check find a conflict: the row it had written
        // is deleted again, and the answer lists the booking in the way.
        let mut first = None;
        for i in 0..40 {
            let v = book(
                ORG,
                RES,
                &format!("2026-12-03 00:00+00'::timestamptz + '{i} hours"),
                "1 hour",
            );
            assert_eq!(v["ok"], true, "free slot {i}: {v}");
            first.get_or_insert(v);
        }
        let first = first.unwrap();
        let v = book(ORG, RES, "2026-12-03 00:30+00", "10 minutes");
        assert_eq!(v["reason"], "slot_taken", "{v}");
        assert_eq!(v["conflicts"][0]["booking_id"], first["booking_id"]);
        assert_eq!(v["conflicts"].as_array().unwrap().len(), 1);
        let (all, active) = Spi::get_two::<i64, i64>(
            "SELECT count(*), count(*) FILTER (WHERE status = 'booked') FROM integrity.bookings",
        )
        .unwrap();
        assert_eq!((all, active), (Some(40), Some(40)));
        // It was the insert that found the conflict: one row written and deleted.
        let deleted = Spi::get_one::<i64>(
            "SELECT pg_stat_get_xact_tuples_deleted('integrity.bookings'::regclass)",
        )
        .unwrap();
        assert_eq!(deleted, Some(1));
        // The same transaction books on, and sees everything it booked.
        assert_eq!(book(ORG, RES, "2026-12-05 00:00+00", "1 hour")["ok"], true);
        assert_eq!(
            book(ORG, RES, "2026-12-05 00:15+00", "1 hour")["conflicts"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
    }

    /// The columns of a stored booking that do not depend on its id and time.
    fn stored(id: &str) -> serde_json::Value {
        json(&format!(
            "SELECT jsonb_build_object('status', status, 'contact', contact_id, 'metadata', metadata,
                 'created_now', created_at = now(), 'updated_now', updated_at = now(),
                 'cancelled_at', cancelled_at, 'reason', cancel_reason, 'from', rescheduled_from,
                 'bounds', lower_inc(during) AND NOT upper_inc(during))
             FROM integrity.bookings WHERE id = '{id}'"
        ))
    }

    #[pg_test]
    fn a_trigger_on_bookings_still_fires_and_rows_are_alike() {
        crate::testutil::serialize_ddl();
        let args = "contact_id => '00000000-0000-0000-0000-0000000000cc', metadata => '{\"src\": \"web\"}'";
        let direct = json(&format!(
            "SELECT integrity.book('{ORG_DDL1}', '{RES}', '2026-12-01 10:00+00', '1 hour', {args})"
        ));
        assert_eq!(direct["ok"], true);
        // A user's trigger on the table: book() must not bypass it.
        Spi::run(
            "CREATE TABLE public.integrity_test_seen (id uuid);
             CREATE FUNCTION public.integrity_test_note() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO public.integrity_test_seen VALUES (NEW.id); RETURN NEW; END $$;
             CREATE TRIGGER integrity_test_note AFTER INSERT ON integrity.bookings
               FOR EACH ROW EXECUTE FUNCTION public.integrity_test_note();",
        )
        .unwrap();
        let via_sql = json(&format!(
            "SELECT integrity.book('{ORG_DDL1}', '{RES}', '2026-12-01 11:00+00', '1 hour', {args})"
        ));
        assert_eq!(via_sql["ok"], true);
        let seen = Spi::get_one::<String>(
            "SELECT string_agg(id::text, ',') FROM public.integrity_test_seen",
        )
        .unwrap();
        assert_eq!(seen.as_deref(), via_sql["booking_id"].as_str());
        assert_eq!(stored(&id(&direct)), stored(&id(&via_sql)));
        assert_eq!(stored(&id(&direct))["created_now"], true);
        assert_eq!(stored(&id(&direct))["status"], "booked");
        // Conflicts read the same either way.
        let taken_sql = book(ORG_DDL1, RES, "2026-12-01 10:30+00", "1 hour");
        Spi::run("DROP TRIGGER integrity_test_note ON integrity.bookings").unwrap();
        let taken_direct = book(ORG_DDL1, RES, "2026-12-01 10:30+00", "1 hour");
        assert_eq!(taken_sql, taken_direct);
        assert_eq!(taken_direct["conflicts"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            taken_direct["conflicts"][0]["booking_id"],
            direct["booking_id"]
        );
    }

    #[pg_test]
    fn indexes_added_later_are_maintained() {
        // book keeps what it builds per index across calls; an index made
        // or dropped after that must be seen at once.
        assert_eq!(
            book(ORG_DDL3, RES, "2026-12-01 10:00+00", "1 hour")["ok"],
            true
        );
        Spi::run("CREATE INDEX integrity_test_contact ON integrity.bookings (contact_id)").unwrap();
        let cc = "00000000-0000-0000-0000-0000000000cc";
        let v = json(&format!(
            "SELECT integrity.book('{ORG_DDL3}', '{RES}', '2026-12-01 11:00+00', '1 hour', contact_id => '{cc}')"
        ));
        assert_eq!(v["ok"], true, "{v}");
        Spi::run("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off").unwrap();
        // With sequential and bitmap scans off, the count reads the new index.
        let n = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM integrity.bookings WHERE contact_id = '{cc}'"
        ))
        .unwrap();
        assert_eq!(n, Some(1), "the new index has the booking");
        Spi::run("RESET enable_seqscan; RESET enable_bitmapscan").unwrap();
        // An index of a kind book keeps no state for: the statement's way.
        Spi::run("CREATE INDEX integrity_test_brin ON integrity.bookings USING brin (created_at)")
            .unwrap();
        assert_eq!(
            book(ORG_DDL3, RES, "2026-12-01 12:00+00", "1 hour")["ok"],
            true
        );
        Spi::run(
            "DROP INDEX integrity.integrity_test_contact; DROP INDEX integrity.integrity_test_brin",
        )
        .unwrap();
        assert_eq!(
            book(ORG_DDL3, RES, "2026-12-01 13:00+00", "1 hour")["ok"],
            true
        );
        let taken = book(ORG_DDL3, RES, "2026-12-01 12:30+00", "1 hour");
        assert_eq!(
            taken["conflicts"].as_array().map(Vec::len),
            Some(2),
            "{taken}"
        );
    }

    #[pg_test]
    fn book_without_table_privileges_is_refused() {
        Spi::run(
            "CREATE ROLE integrity_test_nogrant;
             GRANT USAGE ON SCHEMA integrity TO integrity_test_nogrant;
             SET LOCAL ROLE integrity_test_nogrant",
        )
        .unwrap();
        assert_eq!(
            sqlstate(&format!(
                "SELECT integrity.book('{ORG}', '{RES}', '2026-12-01 10:00+00', '1 hour')"
            )),
            "42501"
        );
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test]
    fn one_transaction_can_book_thousands() {
        // Hour locks are held to the end of the transaction; past the
        // per-transaction budget book() claims without them instead of
        // filling the shared lock table ("out of shared memory").
        let n = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FILTER (WHERE (integrity.book('{ORG}', '{RES}',
                 '2026-01-01 00:00+00'::timestamptz + g * interval '90 minutes', '1 hour'))->>'ok' = 'true')
             FROM generate_series(1, 3000) g"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(n, 3000);
        let held = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        )
        .unwrap()
        .unwrap();
        assert!(held <= 64 + 2, "advisory locks held: {held}");
        // Overlaps are still refused on the arbitrated path.
        let again = book(ORG, RES, "2026-01-01 01:30+00", "30 minutes");
        assert_eq!(again["reason"], "slot_taken");
    }

    #[pg_test]
    fn exclusion_constraint_is_the_last_line_of_defence() {
        assert_eq!(book(ORG, RES, "2026-12-01 10:00+00", "1 hour")["ok"], true);
        let direct = format!(
            "INSERT INTO integrity.bookings (org_id, resource_id, during) \
             VALUES ('{ORG}', '{RES}', tstzrange('2026-12-01 10:30+00', '2026-12-01 11:30+00'))"
        );
        assert_eq!(sqlstate(&direct), "23P01");
    }

    #[pg_test]
    fn cancel_frees_the_slot_and_is_audited() {
        let a = book(ORG, RES, "2026-12-01 10:00+00", "1 hour");
        let c = json(&format!(
            "SELECT integrity.cancel('{}', 'customer asked')",
            id(&a)
        ));
        assert_eq!(c["ok"], true, "{c}");
        assert_eq!(c["status"], "cancelled");
        let again = json(&format!("SELECT integrity.cancel('{}')", id(&a)));
        assert_eq!(again["reason"], "already_cancelled");
        let none = json("SELECT integrity.cancel('00000000-0000-0000-0000-0000000000ff')");
        assert_eq!(none["ok"], false);
        assert_eq!(none["reason"], "not_found");
        // The slot is free again.
        assert_eq!(book(ORG, RES, "2026-12-01 10:00+00", "1 hour")["ok"], true);
        let ev = json(&format!(
            "SELECT jsonb_agg(jsonb_build_object('e', event, 'd', details)) FROM integrity.booking_events WHERE booking_id = '{}'",
            id(&a)
        ));
        assert_eq!(ev.as_array().unwrap().len(), 1);
        assert_eq!(ev[0]["e"], "cancelled");
        assert_eq!(ev[0]["d"]["reason"], "customer asked");
        let row = json(&format!(
            "SELECT jsonb_build_object('s', status, 'r', cancel_reason, 'c', cancelled_at IS NOT NULL) FROM integrity.bookings WHERE id = '{}'",
            id(&a)
        ));
        assert_eq!(
            row,
            serde_json::json!({"s": "cancelled", "r": "customer asked", "c": true})
        );
    }

    #[pg_test]
    fn a_span_past_the_end_of_time_is_refused_by_name() {
        // Postgres's own error from inside the sum would name nothing (and
        // come through pgrx with a Rust backtrace where RUST_BACKTRACE is
        // set); ours names the sum, and the booking stays as it was.
        let a = book(ORG, RES, "2026-12-01 10:00+00", "1 hour");
        let end = "'294276-12-31 23:30+00'";
        for (sql, what) in [
            (
                format!("SELECT integrity.book('{ORG}', '{RES}', {end}, '1 hour')"),
                "starts_at + duration",
            ),
            (
                format!("SELECT integrity.slot_available('{ORG}', '{RES}', {end}, '1 hour')"),
                "starts_at + duration",
            ),
            (
                format!("SELECT integrity.reschedule('{}', {end})", id(&a)),
                "new_starts_at + duration",
            ),
        ] {
            assert_eq!(sqlstate(&sql), "22008", "{sql}");
            let m = crate::testutil::error_message(&sql);
            assert!(
                m.contains(&format!("{what} is past the end of timestamptz's range")),
                "{sql}: {m}"
            );
        }
        assert_eq!(
            Spi::get_one::<String>(&format!(
                "SELECT status::text FROM integrity.bookings WHERE id = '{}'",
                id(&a)
            ))
            .unwrap()
            .as_deref(),
            Some("booked")
        );
    }

    #[pg_test]
    fn reschedule_moves_atomically_and_leaves_old_untouched_on_conflict() {
        Spi::run("SET LOCAL TimeZone = 'UTC'").unwrap();
        let a = book(ORG, RES, "2026-12-01 10:00+00", "1 hour");
        let other = book(ORG, RES, "2026-12-01 12:00+00", "1 hour");
        // Overlapping its own old time is fine: the old booking gives way.
        let r = json(&format!(
            "SELECT integrity.reschedule('{}', '2026-12-01 10:30+00')",
            id(&a)
        ));
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["previous_booking_id"], a["booking_id"]);
        assert_eq!(r["starts_at"], "2026-12-01T10:30:00+00:00");
        assert_eq!(
            r["ends_at"], "2026-12-01T11:30:00+00:00",
            "duration defaults to the old one"
        );
        let old = json(&format!(
            "SELECT jsonb_build_object('s', status, 'r', cancel_reason) FROM integrity.bookings WHERE id = '{}'",
            id(&a)
        ));
        assert_eq!(
            old,
            serde_json::json!({"s": "cancelled", "r": "rescheduled"})
        );
        let ev = json(&format!(
            "SELECT jsonb_build_object('e', event, 'n', details->>'new_booking_id') FROM integrity.booking_events WHERE booking_id = '{}'",
            id(&a)
        ));
        assert_eq!(ev["e"], "rescheduled");
        assert_eq!(ev["n"], r["booking_id"]);

        // Into a taken slot: refused as data, the booking stays exactly as it was.
        let before = json(&format!(
            "SELECT to_jsonb(b) FROM integrity.bookings b WHERE id = '{}'",
            id(&r)
        ));
        let t = json(&format!(
            "SELECT integrity.reschedule('{}', '2026-12-01 11:45+00', '30 minutes')",
            id(&r)
        ));
        assert_eq!(t["reason"], "slot_taken", "{t}");
        assert_eq!(t["conflicts"][0]["booking_id"], other["booking_id"]);
        let after = json(&format!(
            "SELECT to_jsonb(b) FROM integrity.bookings b WHERE id = '{}'",
            id(&r)
        ));
        assert_eq!(before, after);

        let gone = json(&format!(
            "SELECT integrity.reschedule('{}', '2026-12-01 15:00+00')",
            id(&a)
        ));
        assert_eq!(gone["reason"], "already_cancelled");
        let none = json("SELECT integrity.reschedule('00000000-0000-0000-0000-0000000000ff', '2026-12-01 15:00+00')");
        assert_eq!(none["reason"], "not_found");
        let active =
            Spi::get_one::<i64>("SELECT count(*) FROM integrity.bookings WHERE status = 'booked'")
                .unwrap()
                .unwrap();
        assert_eq!(active, 2);
    }

    #[pg_test]
    fn slot_available_and_free_slots() {
        Spi::run("SET LOCAL TimeZone = 'UTC'").unwrap();
        book(ORG, RES, "2026-12-01 10:00+00", "30 minutes");
        book(ORG, RES, "2026-12-01 10:45+00", "30 minutes");
        let avail = |at: &str| {
            Spi::get_one::<bool>(&format!(
                "SELECT integrity.slot_available('{ORG}', '{RES}', '{at}', '30 minutes')"
            ))
            .unwrap()
            .unwrap()
        };
        assert!(!avail("2026-12-01 10:15+00"));
        assert!(avail("2026-12-01 09:30+00"));
        assert!(avail("2026-12-01 11:15+00"));
        let slots = Spi::get_one::<String>(&format!(
            "SELECT string_agg(to_char(lower(s), 'HH24:MI'), ' ' ORDER BY s) FROM \
             integrity.free_slots('{ORG}', '{RES}', tstzrange('2026-12-01 09:00+00', '2026-12-01 12:00+00'), '30 minutes') s"
        ))
        .unwrap()
        .unwrap();
        // 10:00 is booked, 10:30 and 11:00 overlap the 10:45 booking.
        assert_eq!(slots, "09:00 09:30 11:30");
        // A slot that does not fit in what is left of the window is not offered.
        let n = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM integrity.free_slots('{ORG}', '{RES2}', tstzrange('2026-12-01 09:00+00', '2026-12-01 10:10+00'), '30 minutes')"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(n, 2);
    }

    /// Each statement and the SQLSTATE it must end with ("00000": success).
    fn expect_sqlstates(cases: &[(String, &str)]) {
        for (sql, want) in cases {
            assert_eq!(sqlstate(sql), *want, "{sql}");
        }
    }

    #[pg_test]
    fn bad_input_gets_a_clear_sqlstate() {
        let book = |args: &str| format!("SELECT integrity.book({args})");
        let at = "'2026-12-01 10:00+00'";
        let ok_args = format!("'{ORG}', '{RES}', {at}, '30 min'");
        let any = "00000000-0000-0000-0000-0000000000ff";
        let sa = |args: &str| format!("SELECT integrity.slot_available({args})");
        let fs = |args: &str| format!("SELECT * FROM integrity.free_slots({args})");
        let win = "tstzrange('2026-12-01 09:00+00', '2026-12-01 17:00+00')";
        expect_sqlstates(&[
            (book(&ok_args), "00000"),
            // NULL where a value is needed
            (book(&format!("NULL, '{RES}', {at}, '30 min'")), "22004"),
            (book(&format!("'{ORG}', NULL, {at}, '30 min'")), "22004"),
            (book(&format!("'{ORG}', '{RES}', NULL, '30 min'")), "22004"),
            (book(&format!("'{ORG}', '{RES}', {at}, NULL")), "22004"),
            (book(&format!("{ok_args}, metadata => NULL")), "22004"),
            (book(&format!("{ok_args}, wait => NULL")), "22004"),
            // malformed
            (book(&format!("{ok_args}, metadata => '[1]'")), "22023"),
            (book(&format!("{ok_args}, metadata => '{{bad'")), "22P02"),
            (
                book(&format!("'not-a-uuid', '{RES}', {at}, '30 min'")),
                "22P02",
            ),
            // zero, negative, too long, huge durations
            (
                book(&format!("'{ORG}', '{RES}', '2026-12-02 10:00+00', '0 min'")),
                "22023",
            ),
            (
                book(&format!(
                    "'{ORG}', '{RES}', '2026-12-02 10:00+00', '-30 min'"
                )),
                "22023",
            ),
            // Mixed signs: 23 hours on most days, 22 or 24 across a
            // daylight-saving change; refused like every such interval.
            (
                book(&format!(
                    "'{ORG}', '{RES}', '2026-12-02 10:00+00', '1 day -1 hour'"
                )),
                "22023",
            ),
            (
                book(&format!(
                    "'{ORG}', '{RES}', '2026-12-02 10:00+00', '23 hours'"
                )),
                "00000",
            ),
            (
                book(&format!(
                    "'{ORG}', '{RES}', '2026-12-03 10:00+00', '25 hours'"
                )),
                "22023",
            ),
            (
                book(&format!("'{ORG}', '{RES}', '2026-12-03 10:00+00', '1 mon'")),
                "22023",
            ),
            (
                book(&format!(
                    "'{ORG}', '{RES}', '2026-12-03 10:00+00', '1000000 years'"
                )),
                "22023",
            ),
            // infinite or out-of-range timestamps
            (
                book(&format!("'{ORG}', '{RES}', 'infinity', '30 min'")),
                "22008",
            ),
            (
                book(&format!("'{ORG}', '{RES}', '-infinity', '30 min'")),
                "22008",
            ),
            (
                book(&format!(
                    "'{ORG}', '{RES}', '294276-12-31 23:59+00', '1 hour'"
                )),
                "22008",
            ),
            // cancel, reschedule
            ("SELECT integrity.cancel(NULL)".into(), "22004"),
            ("SELECT integrity.reschedule(NULL, now())".into(), "22004"),
            (
                format!("SELECT integrity.reschedule('{any}', NULL)"),
                "22004",
            ),
            (
                format!("SELECT integrity.reschedule('{any}', 'infinity')"),
                "22008",
            ),
            (
                format!("SELECT integrity.reschedule('{any}', now(), '-1 hour')"),
                "22023",
            ),
            (
                format!("SELECT integrity.reschedule('{any}', now(), wait => NULL)"),
                "22004",
            ),
            // slot_available
            (sa(&format!("NULL, '{RES}', now(), '1 hour'")), "22004"),
            (sa(&format!("'{ORG}', '{RES}', now(), '0 s'")), "22023"),
            (
                sa(&format!("'{ORG}', '{RES}', 'infinity', '1 hour'")),
                "22008",
            ),
            (
                sa(&format!(
                    "'{ORG}', '{RES}', '294276-12-31 23:59+00', '1 hour'"
                )),
                "22008",
            ),
            // free_slots: NULLs, empty and unbounded windows, bad slots, too many candidates
            (fs(&format!("'{ORG}', '{RES}', {win}, '30 min'")), "00000"),
            (fs(&format!("'{ORG}', '{RES}', NULL, '30 min'")), "22004"),
            (fs(&format!("'{ORG}', '{RES}', {win}, NULL")), "22004"),
            (fs(&format!("NULL, '{RES}', {win}, '30 min'")), "22004"),
            (fs(&format!("'{ORG}', '{RES}', 'empty', '30 min'")), "22023"),
            (
                fs(&format!("'{ORG}', '{RES}', '[2026-12-01,)', '30 min'")),
                "22023",
            ),
            (
                fs(&format!("'{ORG}', '{RES}', '(,2026-12-01)', '30 min'")),
                "22023",
            ),
            (
                fs(&format!(
                    "'{ORG}', '{RES}', '[2026-12-01,infinity)', '30 min'"
                )),
                "22023",
            ),
            (fs(&format!("'{ORG}', '{RES}', {win}, '0 min'")), "22023"),
            (fs(&format!("'{ORG}', '{RES}', {win}, '-5 min'")), "22023"),
            (
                fs(&format!("'{ORG}', '{RES}', {win}, '1000000 years'")),
                "22008",
            ),
            (
                fs(&format!(
                    "'{ORG}', '{RES}', tstzrange('294276-12-31 21:00+00', '294276-12-31 23:59+00'), '1 hour'"
                )),
                "22008",
            ),
            // 8 hours of 1-second slots is 28,800 candidates: over the default 10,000.
            (fs(&format!("'{ORG}', '{RES}', {win}, '1 second'")), "22023"),
            (
                fs(&format!(
                    "'{ORG}', '{RES}', tstzrange('2000-01-01', '2100-01-01'), '1 microsecond'"
                )),
                "22023",
            ),
        ]);
        // The limits are GUCs.
        Spi::run("SET LOCAL integrity.max_booking_duration = '48h'").unwrap();
        Spi::run("SET LOCAL integrity.max_slots = 30000").unwrap();
        expect_sqlstates(&[
            (
                book(&format!(
                    "'{ORG}', '{RES}', '2026-12-05 10:00+00', '25 hours'"
                )),
                "00000",
            ),
            (fs(&format!("'{ORG}', '{RES}', {win}, '1 second'")), "00000"),
        ]);
    }

    #[pg_test]
    fn lock_key_is_the_documented_one() {
        // Applications can take the same lock from SQL to serialise with book().
        let ours = super::resource_lock_key(
            pgrx::Uuid::from_slice(&[0; 15].iter().chain(&[10u8]).copied().collect::<Vec<_>>())
                .unwrap(),
            pgrx::Uuid::from_slice(&[0; 15].iter().chain(&[1u8]).copied().collect::<Vec<_>>())
                .unwrap(),
        );
        let sql = Spi::get_one::<i64>(&format!(
            "SELECT integrity.lock_key('booking', '{ORG}'::uuid::text, '{RES}'::uuid::text)"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(ours, sql);
    }

    #[pg_test]
    fn row_level_security_scopes_tenants() {
        book(ORG, RES, "2026-12-01 10:00+00", "1 hour");
        book(ORG2, RES, "2026-12-01 10:00+00", "1 hour");
        Spi::run("CREATE ROLE integrity_test_app").unwrap();
        assert_eq!(
            Spi::get_one::<bool>("SELECT integrity.grant_access('integrity_test_app')").unwrap(),
            Some(true)
        );
        assert_eq!(
            sqlstate("SELECT integrity.grant_access('no_such_role_here')"),
            "42704"
        );
        assert_eq!(sqlstate("SELECT integrity.grant_access(NULL)"), "22004");
        Spi::run("SET LOCAL ROLE integrity_test_app").unwrap();
        let all = Spi::get_one::<i64>("SELECT count(*) FROM integrity.bookings")
            .unwrap()
            .unwrap();
        assert_eq!(all, 2, "no integrity.org_id set: no scoping");
        Spi::run(&format!("SET LOCAL integrity.org_id = '{ORG}'")).unwrap();
        let mine = Spi::get_one::<i64>("SELECT count(*) FROM integrity.bookings")
            .unwrap()
            .unwrap();
        assert_eq!(mine, 1);
        // The application role can book through the API within its tenant.
        assert_eq!(book(ORG, RES2, "2026-12-01 10:00+00", "1 hour")["ok"], true);
        // Writing another tenant's row is refused by the policy.
        assert_eq!(
            sqlstate(&format!(
                "SELECT integrity.book('{ORG2}', '{RES2}', '2026-12-01 10:00+00', '1 hour')"
            )),
            "42501"
        );
        // Conflicts within the tenant are reported as data.
        let taken = book(ORG, RES2, "2026-12-01 10:30+00", "1 hour");
        assert_eq!(taken["reason"], "slot_taken", "{taken}");
        assert_eq!(taken["conflicts"].as_array().map(Vec::len), Some(1));
        // A malformed tenant id is 22P02 naming the setting.
        Spi::run("SET LOCAL integrity.org_id = 'not-a-uuid'").unwrap();
        let malformed =
            format!("SELECT integrity.book('{ORG}', '{RES2}', '2026-12-02 10:00+00', '1 hour')");
        assert_eq!(sqlstate(&malformed), "22P02");
        let message = crate::testutil::error_message(&malformed);
        assert!(
            message.contains("integrity.org_id: \"not-a-uuid\" is not a uuid"),
            "{message}"
        );
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test]
    fn a_changed_policy_or_a_new_check_is_obeyed() {
        crate::testutil::serialize_ddl();
        Spi::run("CREATE ROLE integrity_test_app2").unwrap();
        Spi::run("SELECT integrity.grant_access('integrity_test_app2')").unwrap();
        // A policy that is no longer ours: book must apply it, not ours.
        Spi::run("ALTER POLICY bookings_org_scope ON integrity.bookings USING (false)").unwrap();
        Spi::run("SET LOCAL ROLE integrity_test_app2").unwrap();
        assert_eq!(
            sqlstate(&format!(
                "SELECT integrity.book('{ORG_DDL2}', '{RES}', '2026-12-01 10:00+00', '1 hour')"
            )),
            "42501"
        );
        Spi::run("RESET ROLE").unwrap();
        // A CHECK someone added to the table holds for book's rows too.
        Spi::run(
            "ALTER TABLE integrity.bookings ADD CONSTRAINT integrity_test_src CHECK (metadata ? 'src')",
        )
        .unwrap();
        assert_eq!(
            sqlstate(&format!(
                "SELECT integrity.book('{ORG_DDL2}', '{RES}', '2026-12-01 10:00+00', '1 hour')"
            )),
            "23514"
        );
        let ok = json(&format!(
            "SELECT integrity.book('{ORG_DDL2}', '{RES}', '2026-12-01 10:00+00', '1 hour', metadata => '{{\"src\": \"web\"}}')"
        ));
        assert_eq!(ok["ok"], true, "{ok}");
        // Dropping it again gives the direct path back, with the same answers.
        Spi::run("ALTER TABLE integrity.bookings DROP CONSTRAINT integrity_test_src").unwrap();
        let taken = book(ORG_DDL2, RES, "2026-12-01 10:30+00", "1 hour");
        assert_eq!(taken["conflicts"][0]["booking_id"], ok["booking_id"]);
    }
}

//! Settings (`integrity.*` GUCs), declared once and read through getters.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Longest booking `book`/`reschedule` accept, in seconds (GUC unit `s`,
/// so `SET integrity.max_booking_duration = '8h'` works).
static MAX_BOOKING_DURATION: GucSetting<i32> = GucSetting::<i32>::new(24 * 60 * 60);

/// Whether trigger functions log their corrections to integrity.alerts.
static LOG_CORRECTIONS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Most candidate slots `free_slots` will consider in one call.
static MAX_SLOTS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// Longest a consistency check may run in run_checks, in milliseconds
/// (0: no limit).
static CHECK_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(30_000);

/// Backoff of a failed delivery without a schedule: the first retry waits
/// up to this, each next one twice as long (milliseconds).
static RETRY_BASE: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// The longest a backoff grows (milliseconds).
static RETRY_CAP: GucSetting<i32> = GucSetting::<i32>::new(3_600_000);

/// Whether enqueue notifies integrity_deliveries.
static NOTIFY_DELIVERIES: GucSetting<bool> = GucSetting::<bool>::new(true);

pub fn init() {
    GucRegistry::define_int_guc(
        c"integrity.max_booking_duration",
        c"Longest duration integrity.book and integrity.reschedule accept.",
        c"Longer requests are refused with SQLSTATE 22023. Default 24 hours.",
        &MAX_BOOKING_DURATION,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"integrity.max_slots",
        c"Most candidate slots integrity.free_slots considers in one call.",
        c"A window/slot combination with more candidates is refused with SQLSTATE 22023.",
        &MAX_SLOTS,
        1,
        10_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"integrity.check_timeout",
        c"Longest one consistency check may run in integrity.run_checks.",
        c"A check that runs longer is cancelled and reported with SQLSTATE 57014; the others still run. 0 means no limit. Default 30 s.",
        &CHECK_TIMEOUT,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"integrity.retry_base",
        c"Backoff base of a failed delivery: retry n waits a random time up to retry_base * 2^(n-1), capped by retry_cap.",
        c"Used by integrity.fail without retry_in when the event type has no retry schedule. Default 10 s.",
        &RETRY_BASE,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"integrity.retry_cap",
        c"The longest a delivery's backoff grows.",
        c"Default 1 h.",
        &RETRY_CAP,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"integrity.notify_deliveries",
        c"Whether integrity.enqueue (and requeue, redrive) send NOTIFY integrity_deliveries.",
        c"A notifying commit takes Postgres's global notify lock until it has committed, which serializes enqueueing transactions. Off: workers poll. Default on.",
        &NOTIFY_DELIVERIES,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"integrity.log_corrections",
        c"Whether integrity's trigger functions log each correction to integrity.alerts.",
        c"Off: corrections are still made, but not logged. Default on.",
        &LOG_CORRECTIONS,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// `integrity.log_corrections`.
pub fn log_corrections() -> bool {
    LOG_CORRECTIONS.get()
}

/// `integrity.max_booking_duration` in microseconds.
pub fn max_booking_duration_us() -> i128 {
    MAX_BOOKING_DURATION.get() as i128 * 1_000_000
}

pub fn max_slots() -> i64 {
    MAX_SLOTS.get() as i64
}

/// `integrity.check_timeout` in milliseconds (0: none).
pub fn check_timeout_ms() -> i32 {
    CHECK_TIMEOUT.get()
}

/// `integrity.retry_base` and `integrity.retry_cap`, in milliseconds.
pub fn retry_backoff_ms() -> (i64, i64) {
    (RETRY_BASE.get() as i64, RETRY_CAP.get() as i64)
}

/// `integrity.notify_deliveries`.
pub fn notify_deliveries() -> bool {
    NOTIFY_DELIVERIES.get()
}

//! The one place where `integrity` turns a caller's mistake into an SQL error.
//!
//! Every error carries a deliberate SQLSTATE, a message that names the argument
//! and the value, and a HINT saying what to do instead. Business outcomes
//! (slot taken, busy, not found) are never errors: they are returned as jsonb.
//! `XX000` (a panic, `error!()`) is reserved for real bugs.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// A caller's mistake, with the SQLSTATE it is reported under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 22004: a required argument was NULL.
    NullValue,
    /// 22023: an argument has a value outside what the function accepts.
    InvalidParameter,
    /// 22007 / 22008: a timestamp is infinite or out of range.
    DatetimeOutOfRange,
    /// 42704: a named object (role, …) does not exist.
    UndefinedObject,
    /// 55000: the object is not in the state the call needs (an idempotency
    /// key that was never begun, or is no longer processing).
    NotInPrerequisiteState,
    /// 23505: a row that must be unique exists already.
    UniqueViolation,
    /// 25006: a write in a read-only transaction (or on a hot standby).
    ReadOnlyTransaction,
    /// 23502: a NULL in a column that is NOT NULL.
    NotNullViolation,
    /// 23514: a row breaks a rule it must keep (a trigger's `reject`).
    CheckViolation,
    /// 39P01: a trigger function attached at the wrong timing, level or event.
    TriggerProtocol,
    /// 42703: a named column does not exist.
    UndefinedColumn,
    /// 42P01: a named table does not exist.
    UndefinedTable,
    /// 42710: an object of that name exists already.
    DuplicateObject,
    /// 42804: a query returns columns of the wrong types.
    DatatypeMismatch,
    /// 42601: a statement that must be one query is something else.
    SyntaxError,
    /// 42602: a name that does not parse as one (`'a..b'`, `'"open'`).
    InvalidName,
    /// 40001: the transaction's snapshot cannot see what it must; retry.
    SerializationFailure,
    /// 42809: the object is of the wrong kind (a view where a table is needed).
    WrongObjectType,
    /// 42501: the caller may not do this (e.g. index a table it does not own).
    InsufficientPrivilege,
    /// 42P07: a relation of that name exists already.
    DuplicateTable,
    /// 53400: a server limit is reached (e.g. no background worker slot).
    ConfigurationLimitExceeded,
    /// 22P02: a value that does not parse as its type (a setting that is
    /// not a uuid).
    InvalidTextRepresentation,
}

impl Kind {
    fn code(self) -> PgSqlErrorCode {
        match self {
            Kind::NullValue => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            Kind::InvalidParameter => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            Kind::DatetimeOutOfRange => PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW,
            Kind::UndefinedObject => PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            Kind::NotInPrerequisiteState => {
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            Kind::UniqueViolation => PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            Kind::CheckViolation => PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            Kind::NotNullViolation => PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
            Kind::ReadOnlyTransaction => PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            Kind::TriggerProtocol => PgSqlErrorCode::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
            Kind::UndefinedColumn => PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            Kind::UndefinedTable => PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            Kind::DuplicateObject => PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            Kind::DatatypeMismatch => PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            Kind::SyntaxError => PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            Kind::InvalidName => PgSqlErrorCode::ERRCODE_INVALID_NAME,
            Kind::SerializationFailure => PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            Kind::WrongObjectType => PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            Kind::InsufficientPrivilege => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            Kind::DuplicateTable => PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE,
            Kind::ConfigurationLimitExceeded => {
                PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED
            }
            Kind::InvalidTextRepresentation => PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
        }
    }
}

/// Raise an ERROR with SQLSTATE, message and hint. Never returns.
///
/// `function` is the SQL name of the function the caller called
/// (`integrity.book`), so the message says where the mistake is.
#[track_caller]
pub fn raise(
    kind: Kind,
    function: &'static str,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> ! {
    report(kind.code(), function, message.into(), None, hint.into())
}

/// The one place our errors are reported.
#[track_caller]
fn report(
    code: PgSqlErrorCode,
    function: &'static str,
    message: String,
    detail: Option<String>,
    hint: String,
) -> ! {
    let mut e = ErrorReport::new(code, format!("{function}: {message}"), function).set_hint(hint);
    if let Some(detail) = detail {
        e = e.set_detail(detail);
    }
    e.report(PgLogLevel::ERROR);
    // `report` at ERROR level does not return; this keeps the type `!` honest.
    unreachable!("ERROR-level report returned")
}

/// `raise` with an SQLSTATE of Postgres's choosing (one a caught error
/// had) and a DETAIL.
#[track_caller]
pub fn raise_as(
    code: PgSqlErrorCode,
    function: &'static str,
    message: impl Into<String>,
    detail: impl Into<String>,
    hint: impl Into<String>,
) -> ! {
    report(
        code,
        function,
        message.into(),
        Some(detail.into()),
        hint.into(),
    )
}

/// Unwrap a required argument or raise 22004 naming it.
#[track_caller]
pub fn required<T>(value: Option<T>, function: &'static str, arg: &'static str) -> T {
    match value {
        Some(v) => v,
        None => raise(
            Kind::NullValue,
            function,
            format!("{arg} must not be NULL"),
            format!("Pass a value for {arg}."),
        ),
    }
}

/// The longest interval `positive_interval` and `not_too_long` accept, in
/// years: added to or taken from any `now()` of this era it stays far
/// inside timestamptz's range (4713 BC to 294276 AD), however its months
/// fall. (10,000 years, the bound before, could not be taken from now():
/// a purge's `older_than` of 9,000 years failed with Postgres's bare
/// "timestamp out of range".)
pub const MAX_INTERVAL_YEARS: i64 = 1_000;

/// A required interval above zero and at most `MAX_INTERVAL_YEARS`, or
/// 22004 / 22023 / 22008 naming it. The bound is checked here, in the call:
/// the sum with `now()` is formed later (for an idempotency key, at its
/// write, perhaps at COMMIT), where an overflow would name nothing.
pub fn positive_interval(
    f: &'static str,
    arg: &'static str,
    i: Option<pgrx::datum::Interval>,
) -> pgrx::datum::Interval {
    let i = required(i, f, arg);
    if span_us(f, arg, i) <= 0 {
        raise(
            Kind::InvalidParameter,
            f,
            format!("{arg} must be positive"),
            format!("Pass a positive interval for {arg}, such as '5 minutes'."),
        );
    }
    not_too_long(f, arg, i)
}

/// `i` if it is at most `MAX_INTERVAL_YEARS` long (either way from zero),
/// else 22008 naming it: an interval the call adds to or takes from
/// `now()`, here or later (a breaker's `open_for` when it opens, a retry
/// schedule's step when a delivery fails), where an overflow would name
/// nothing.
pub fn not_too_long(
    f: &'static str,
    arg: &'static str,
    i: pgrx::datum::Interval,
) -> pgrx::datum::Interval {
    // Months at 31 days, a year at 12 of them: the bound holds for every
    // calendar month the interval may span.
    let longest = (i.months() as i128).abs() * 31 * USECS_PER_DAY
        + (i.days() as i128).abs() * USECS_PER_DAY
        + (i.micros() as i128).abs();
    if longest > MAX_INTERVAL_YEARS as i128 * 12 * 31 * USECS_PER_DAY {
        raise(
            Kind::DatetimeOutOfRange,
            f,
            format!("{arg} must be at most {MAX_INTERVAL_YEARS} years"),
            format!("Pass an interval for {arg} such as '5 minutes' or '24 hours'."),
        );
    }
    i
}

const USECS_PER_DAY: i128 = 86_400_000_000;

/// `i` in microseconds (a month as 30 days, as Postgres compares
/// intervals), for a check of its sign or length; 22023 naming it when its
/// months, days and time have different signs. Postgres adds the months
/// by the calendar, then the days, then the time, so such an interval is
/// ahead of one date and behind another: `'-2 months 60 days 1 second'`
/// counts as one second, yet taken from December 4 it lands on December
/// 3, and a lease of it would be over before it was handed out.
pub fn span_us(f: &'static str, arg: &'static str, i: pgrx::datum::Interval) -> i128 {
    let signs = [i.months() as i64, i.days() as i64, i.micros()].map(i64::signum);
    if signs.contains(&1) && signs.contains(&-1) {
        raise(
            Kind::InvalidParameter,
            f,
            format!(
                "{arg} mixes signs across its months, days and time ({i}), so its sign depends on the date it is added to"
            ),
            format!("Pass {arg} with every part of one sign, such as '5 minutes', '1 day' or '1 month'."),
        );
    }
    i.as_micros()
}

/// `t + i` as timestamptz + interval computes it (calendar-aware, in the
/// session's time zone). A sum past either end of timestamptz's range
/// (4713 BC to 294276 AD) is 22008 naming `what` (`"starts_at +
/// duration"`), not Postgres's bare "timestamp out of range" from inside
/// the call.
pub fn timestamp_plus(
    f: &'static str,
    what: &str,
    t: pgrx::datum::TimestampWithTimeZone,
    i: pgrx::datum::Interval,
) -> pgrx::datum::TimestampWithTimeZone {
    use pgrx::{pg_sys, IntoDatum};
    // SAFETY: timestamptz_pl_interval of two non-NULL values; it computes
    // and allocates nothing else, so its one ERROR (the sum out of range)
    // can be caught without a subtransaction and answered with ours.
    let sum = pgrx::PgTryBuilder::new(|| unsafe {
        pgrx::direct_function_call::<pgrx::datum::TimestampWithTimeZone>(
            pg_sys::timestamptz_pl_interval,
            &[t.into_datum(), i.into_datum()],
        )
    })
    .catch_when(PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW, |_| None)
    .execute();
    match sum {
        Some(sum) => sum,
        None => raise(
            Kind::DatetimeOutOfRange,
            f,
            format!("{what} is past the end of timestamptz's range (4713 BC to 294276 AD)"),
            "Pass a point in time well inside the range.",
        ),
    }
}

/// A required text argument of 1 to `max` bytes, or 22004 / 22023 naming it.
#[track_caller]
pub fn text_arg<'a>(
    function: &'static str,
    arg: &'static str,
    v: Option<&'a str>,
    max: usize,
) -> &'a str {
    let v = required(v, function, arg);
    if v.is_empty() || v.len() > max {
        raise(
            Kind::InvalidParameter,
            function,
            format!("{arg} must be 1 to {max} bytes, got {}", v.len()),
            format!("Pass a non-empty {arg} of at most {max} bytes."),
        );
    }
    v
}

/// A required count within `range`, or 22004 / 22023 naming it.
#[track_caller]
pub fn count_arg(
    function: &'static str,
    arg: &'static str,
    v: Option<i32>,
    range: std::ops::RangeInclusive<i32>,
    hint: &str,
) -> i32 {
    let v = required(v, function, arg);
    if !range.contains(&v) {
        raise(
            Kind::InvalidParameter,
            function,
            format!(
                "{arg} must be between {} and {}, got {v}",
                range.start(),
                range.end()
            ),
            hint,
        );
    }
    v
}

/// Turn an SPI failure of one of our own, fixed statements into an internal
/// error. A Postgres error raised while the statement runs (a constraint, an
/// out-of-range timestamp, a serialization failure) does not come through
/// here: it propagates with its own SQLSTATE. What does come here is a
/// mismatch between our code and our SQL, which is a bug (`XX000`).
pub trait OrBug<T> {
    fn or_bug(self, what: &str) -> T;
}

impl<T> OrBug<T> for Result<T, pgrx::spi::SpiError> {
    #[track_caller]
    fn or_bug(self, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => bug(format!("{what}: {e}")),
        }
    }
}

/// Raise `XX000` for a state our own code should never reach (our schema
/// not as we created it, an SPI mismatch). Never returns.
#[track_caller]
pub fn bug(what: impl std::fmt::Display) -> ! {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("integrity internal error in {what}"),
        "integrity",
    )
    .set_hint("This is a bug in the integrity extension; please report it.")
    .report(PgLogLevel::ERROR);
    unreachable!("ERROR-level report returned")
}

/// An error caught by `in_subtransaction`: its SQLSTATE and message.
#[derive(Debug, Clone)]
pub struct Caught {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
}

impl Caught {
    /// The five-character SQLSTATE.
    pub fn sqlstate(&self) -> String {
        let mut code = self.code as i32;
        let mut s = String::with_capacity(5);
        for _ in 0..5 {
            s.push(((code & 0x3f) as u8 + b'0') as char);
            code >>= 6;
        }
        s
    }

    /// Raise it again, as it was.
    pub fn raise_again(&self, function: &'static str) -> ! {
        ErrorReport::new(self.code, self.message.clone(), function).report(PgLogLevel::ERROR);
        unreachable!("ERROR-level report returned")
    }
}

/// Run `f` in a subtransaction of its own, as a PL/pgSQL exception block
/// does: an ERROR inside rolls back exactly what `f` did and comes back as
/// `Err`, with its SQLSTATE and message; on success the subtransaction is
/// kept. The memory context and resource owner are restored either way.
pub fn in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, Caught> {
    use pgrx::pg_sys;
    // SAFETY: the subtransaction is begun and ended here, around `f`; an
    // error inside is caught by PgTryBuilder before it leaves this frame.
    unsafe {
        let cxt = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cxt);
        let f = std::panic::AssertUnwindSafe(f);
        let r = pgrx::PgTryBuilder::new(move || Ok(f()))
            .catch_others(|e| Err(caught(e)))
            .execute();
        match r {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(cxt);
        pg_sys::CurrentResourceOwner = owner;
        r
    }
}

/// The SQLSTATE and message of an error caught by `PgTryBuilder`.
pub fn caught(e: pgrx::pg_sys::panic::CaughtError) -> Caught {
    use pgrx::pg_sys::panic::CaughtError;
    match e {
        CaughtError::PostgresError(r)
        | CaughtError::ErrorReport(r)
        | CaughtError::RustPanic { ereport: r, .. } => Caught {
            code: r.sql_error_code(),
            message: r.message().to_string(),
            detail: r.detail().map(str::to_string),
        },
    }
}

/// A finite timestamp, or 22008 naming it.
pub fn check_finite(
    f: &'static str,
    arg: &'static str,
    t: pgrx::datum::TimestampWithTimeZone,
) -> pgrx::datum::TimestampWithTimeZone {
    if t.is_infinity() || t.is_neg_infinity() {
        raise(
            Kind::DatetimeOutOfRange,
            f,
            format!(
                "{arg} must be a finite timestamp, got {}",
                if t.is_infinity() {
                    "infinity"
                } else {
                    "-infinity"
                }
            ),
            format!("Pass a real point in time for {arg}."),
        );
    }
    t
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::testutil::{error_message, sqlstate};
    use pgrx::prelude::*;

    const ORG: &str = "'0000000a-0000-0000-0000-000000000000'";
    const RES: &str = "'00000000-0000-0000-0000-0000000000e1'";

    /// Every interval argument refuses one whose months, days and time have
    /// different signs, however Postgres would count it: its sign depends
    /// on the date it is added to (a lease of '-2 months 60 days 1 second'
    /// taken on December 4 ran out on December 3, before it was handed out).
    #[pg_test]
    fn an_interval_whose_sign_depends_on_the_date_is_refused_by_name() {
        let calls = |i: &str| {
            [
                (format!("SELECT integrity.idem_begin({ORG}, 's', 'k', '{{}}', lease => {i})"), "lease"),
                (format!("SELECT integrity.idem_begin({ORG}, 's', 'k', '{{}}', ttl => {i})"), "ttl"),
                (format!("SELECT integrity.purge_idempotency_keys({i})"), "older_than"),
                (format!("SELECT * FROM integrity.claim('w', 1, {i})"), "lease"),
                (format!("SELECT integrity.fail(1, 'e', {i})"), "retry_in"),
                (format!("SELECT integrity.purge_deliveries({i})"), "older_than"),
                (format!("SELECT integrity.set_retry_schedule('e', ARRAY['1 minute', {i}]::interval[])"), "each schedule step"),
                (format!("SELECT integrity.sync_start({ORG}, 'c', '1', 'crm', '{{}}', {i})"), "lease"),
                (format!("SELECT integrity.breaker_configure('b', open_for => {i})"), "open_for"),
                (format!("SELECT integrity.saga_begin({ORG}, 'k', '{{}}', {i})"), "stuck_after"),
                (format!("SELECT integrity.book({ORG}, {RES}, '2026-12-04 10:00+00', {i})"), "duration"),
                (format!("SELECT integrity.slot_available({ORG}, {RES}, '2026-12-04 10:00+00', {i})"), "duration"),
                (format!("SELECT * FROM integrity.free_slots({ORG}, {RES}, '[2026-12-04, 2026-12-05)', {i})"), "slot"),
                (format!("SELECT integrity.add_check('c', 'SELECT 1 WHERE false', throttle => {i})"), "throttle"),
                (format!("SELECT * FROM integrity.consistency_report({i})"), "since"),
                (format!("SELECT * FROM integrity.delivery_stats({i})"), "range"),
            ]
        };
        for i in [
            "'-2 months 60 days 1 second'",
            "'1 month -29 days'",
            "'1 day -1 hour'",
            "'1 year -1 second'",
            "'-1 day 25 hours'",
        ] {
            for (sql, arg) in calls(i) {
                assert_eq!(sqlstate(&sql), "22023", "{sql}");
                let m = error_message(&sql);
                assert!(m.contains(arg) && m.contains("mixes signs"), "{sql}: {m}");
            }
        }
        // Every part of one sign (or zero) is not refused for it: each call
        // answers or fails for another reason.
        for i in [
            "'1 month 2 days 3 hours'",
            "'2 hours 30 minutes'",
            "'-0 days'",
        ] {
            for (sql, _) in calls(i) {
                let m = error_message(&sql);
                assert!(!m.contains("mixes signs"), "{sql}: {m}");
            }
        }
    }
}

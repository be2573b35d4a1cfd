//! `integrity`: data-integrity guarantees inside PostgreSQL, atomic with the
//! caller's own transaction and the same for every client language.

use pgrx::prelude::*;

::pgrx::pg_module_magic!();

/// Direct row access to integrity's own tables for the hot paths.
mod direct;
/// One helper that raises errors with SQLSTATE, message and hint.
mod errors;
/// `integrity.*` settings, declared once and read through getters.
mod gucs;
/// Random UUIDs from Postgres's strong random source, fetched in batches.
mod ids;
/// jsonb carried as a datum, built directly, printed only when needed.
mod jsonb;
/// Statements prepared once per backend for the hot paths.
mod plans;

/// Tenant scoping and `grant_access`: what an application role may touch.
mod access;
/// Booking: no two active bookings of one resource ever overlap.
mod booking;
/// Circuit breakers shared by every client.
mod breaker;
/// Consistency checks, alerts, health views and the report.
mod checks;
/// The delivery log: webhooks and jobs with leases, retries, ordering keys, dead letters.
mod deliveries;
/// Idempotency keys: a retried request takes effect once; its response is replayed.
mod idempotency;
/// Stable, documented keys: `lock_key` and `fingerprint` agree across machines and languages.
mod keys;
/// The user's own tables and columns: catalog lookups and quoting.
mod names;
/// The manual review queue.
mod review;
/// Sagas: each step's compensation, handed out in reverse order on abort.
mod sagas;
/// Integration sync state: external ids, fingerprints, leases.
mod sync;
/// Trigger functions that keep the user's own tables consistent, with corrections logged.
mod triggers;
/// Soft-delete-aware uniqueness: partial unique indexes, built concurrently by a worker.
mod unique;

#[cfg(any(test, feature = "pg_test"))]
mod testutil;

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}

//! Random UUIDs (version 4) from Postgres's strong random source, fetched
//! in batches.
//!
//! `gen_random_uuid()` asks `pg_strong_random` (OpenSSL's DRBG here) for 16
//! bytes on every call, and most of its ~3 µs is the DRBG's per-request
//! overhead, not the bytes. `book` makes one id per booking, so it takes
//! 4 KiB at a time from the same source and hands out 16 bytes per id: the
//! same randomness and the same version-4 layout, with the overhead paid
//! once per 256 ids. The pool belongs to the backend process and is filled
//! there on first use, never before the fork that created the backend, so
//! no two backends hand out the same bytes.

use crate::errors::bug;
use pgrx::datum::Uuid;
use pgrx::pg_sys;
use std::cell::RefCell;

const POOL: usize = 4096;

struct Pool {
    bytes: [u8; POOL],
    next: usize,
}

thread_local! {
    static RANDOM: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; POOL], next: POOL }) };
}

/// A new random (version 4, RFC 9562) UUID.
pub fn random_uuid() -> Uuid {
    RANDOM.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.next + 16 > POOL {
            // SAFETY: fills the pool's buffer, of exactly POOL bytes.
            let ok = unsafe { pg_sys::pg_strong_random(pool.bytes.as_mut_ptr().cast(), POOL) };
            if !ok {
                bug("could not generate random values (pg_strong_random)");
            }
            pool.next = 0;
        }
        let mut b = [0u8; 16];
        let at = pool.next;
        b.copy_from_slice(&pool.bytes[at..at + 16]);
        // Each id's bytes are handed out once.
        pool.bytes[at..at + 16].fill(0);
        pool.next += 16;
        b[6] = (b[6] & 0x0f) | 0x40; // version 4
        b[8] = (b[8] & 0x3f) | 0x80; // variant 10
        Uuid::from_bytes(b)
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn ids_are_version_4_and_distinct() {
        let ids: Vec<String> = (0..1000)
            .map(|_| super::random_uuid().to_string())
            .collect();
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ids.len(),
            "1000 ids across pool refills, all distinct"
        );
        for id in &ids {
            assert_eq!(&id[14..15], "4", "version nibble of {id}");
            assert!("89ab".contains(&id[19..20]), "variant of {id}");
        }
        // Postgres reads them as version-4 UUIDs too.
        let v = Spi::get_one::<i32>(&format!(
            "SELECT count(*)::int FROM unnest('{{{}}}'::uuid[]) u WHERE substr(u::text, 15, 1) = '4'",
            ids.join(",")
        ))
        .unwrap();
        assert_eq!(v, Some(1000));
    }
}

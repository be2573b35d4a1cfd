//! Stable keys: the same inputs give the same key on every machine, version
//! and client language.
//!
//! * `lock_key(VARIADIC parts text[]) → bigint`: SipHash-2-4 with the 16-byte
//!   ASCII key `integrity-keys-1`, each part fed as its UTF-8 byte length
//!   (u32 little-endian) followed by its bytes, so `('ab','c')` and
//!   `('a','bc')` differ. The 64-bit result is read as a signed bigint.
//! * `fingerprint(jsonb) → text`: lowercase hex of the 16 output bytes of
//!   SipHash-2-4-128 (same key) over the jsonb's text output. Postgres
//!   normalises key order and whitespace in jsonb, so equal JSON gives an
//!   equal fingerprint.

use crate::errors::{raise, required, Kind};
use crate::jsonb::Jsonb;
use pgrx::prelude::*;
use siphasher::sip::SipHasher24;
use siphasher::sip128::{Hasher128, SipHasher24 as SipHasher24_128};
use std::hash::Hasher;

/// The documented SipHash key: 16 ASCII bytes, k0/k1 read little-endian.
pub const SIPHASH_KEY: &[u8; 16] = b"integrity-keys-1";

pgrx::extension_sql_file!(
    "../sql/keys_api.sql",
    name = "keys_api",
    requires = [lock_key, fingerprint]
);

/// `lock_key` over Rust strings; also used by other modules to derive the
/// advisory-lock key they document.
pub fn lock_key_of<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> i64 {
    // The hasher's input gathered first and written once: SipHash over
    // one buffer is the same as over its pieces, at a third of the cost
    // for the short pieces a key is made of.
    let mut input = smallvec::SmallVec::<[u8; 512]>::new();
    for part in parts {
        input.extend_from_slice(&(part.len() as u32).to_le_bytes());
        input.extend_from_slice(part);
    }
    let mut h = SipHasher24::new_with_key(SIPHASH_KEY);
    h.write(&input);
    h.finish() as i64
}

/// `fingerprint` of a jsonb value: its text form's bytes hashed where
/// Postgres printed them.
pub fn fingerprint_of_jsonb(request: &Jsonb) -> String {
    request.with_text(fingerprint_of)
}

/// Lowercase hex digits, for the text forms below (`fmt` costs more than
/// the hashing they feed).
const HEX: &[u8; 16] = b"0123456789abcdef";

/// A uuid's text form, as `uuid::text` prints it (lowercase, hyphenated).
pub fn uuid_text(bytes: &[u8; 16]) -> [u8; 36] {
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at] = HEX[(b >> 4) as usize];
        out[at + 1] = HEX[(b & 0x0f) as usize];
        at += 2;
    }
    out
}

/// 128-bit SipHash-2-4 of `bytes`, as 32 lowercase hex digits.
pub fn fingerprint_of(bytes: &[u8]) -> String {
    let mut h = SipHasher24_128::new_with_key(SIPHASH_KEY);
    h.write(bytes);
    let out = h.finish128();
    // The 16 output bytes in the reference order: h1 then h2, each
    // little-endian, printed byte by byte.
    let mut hex = String::with_capacity(32);
    for b in out.h1.to_le_bytes().into_iter().chain(out.h2.to_le_bytes()) {
        hex.push(HEX[(b >> 4) as usize] as char);
        hex.push(HEX[(b & 0x0f) as usize] as char);
    }
    hex
}

/// Stable advisory-lock key for the given parts.
/// The lock tag `pg_advisory_xact_lock(bigint)` uses for `key`, so our
/// locks and an application's `pg_advisory_xact_lock(key)` are the same
/// lock (what SET_LOCKTAG_ADVISORY builds in advisory lock functions).
pub fn advisory_tag(key: i64) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set for the life of a backend.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: ((key as u64) >> 32) as u32,
        locktag_field3: key as u64 as u32,
        locktag_field4: 1,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// `pg_advisory_xact_lock_shared(key)` or `pg_advisory_xact_lock(key)`,
/// without the function-call detour.
pub fn advisory_lock(key: i64, shared: bool) {
    let mode = if shared {
        pg_sys::ShareLock
    } else {
        pg_sys::ExclusiveLock
    };
    // SAFETY: a transaction-scoped lock on a tag built above; LockAcquire
    // waits (and checks for deadlocks and interrupts) like the SQL function.
    unsafe { pg_sys::LockAcquire(&advisory_tag(key), mode as pg_sys::LOCKMODE, false, false) };
}

/// `pg_try_advisory_xact_lock(key)`.
pub fn advisory_try_lock(key: i64) -> bool {
    // SAFETY: as in `advisory_lock`, without waiting.
    unsafe {
        pg_sys::LockAcquire(
            &advisory_tag(key),
            pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
            false,
            true,
        ) != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
    }
}

/// `pg_advisory_unlock(key)` for a transaction-scoped lock: releases it
/// before the transaction ends.
pub fn advisory_unlock(key: i64) {
    // SAFETY: releases a lock taken by `advisory_lock` in this transaction;
    // LockRelease only warns when it is not held.
    unsafe {
        pg_sys::LockRelease(
            &advisory_tag(key),
            pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
            false,
        );
    }
}

#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn lock_key(parts: Option<VariadicArray<'_, &str>>) -> i64 {
    const F: &str = "integrity.lock_key";
    let parts = required(parts, F, "parts");
    if parts.is_empty() {
        raise(
            Kind::InvalidParameter,
            F,
            "parts must contain at least one element",
            "Call integrity.lock_key('booking', org_id::text, resource_id::text) with one or more parts.",
        );
    }
    let mut items: Vec<&[u8]> = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        match part {
            Some(p) => items.push(p.as_bytes()),
            None => raise(
                Kind::NullValue,
                F,
                format!("part {} must not be NULL", i + 1),
                "Use coalesce(part, '') if an empty part is what you mean.",
            ),
        }
    }
    lock_key_of(items)
}

/// Stable fingerprint of a JSON request: equal jsonb gives an equal value.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn fingerprint(request: Option<Jsonb>) -> String {
    let request = required(request, "integrity.fingerprint", "request");
    fingerprint_of_jsonb(&request)
}

#[cfg(test)]
mod uuid_text_tests {
    #[test]
    fn uuid_text_is_the_canonical_form() {
        let b: [u8; 16] = [
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54,
            0x32, 0x10,
        ];
        assert_eq!(
            &super::uuid_text(&b),
            b"01234567-89ab-cdef-fedc-ba9876543210"
        );
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    /// The reference SipHash-2-4-128 vector (key 00..0f, empty message) proves
    /// our byte order is the reference implementation's.
    #[test]
    fn siphash128_matches_reference_vector() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let h = SipHasher24_128::new_with_key(&key).finish128();
        let mut bytes = h.h1.to_le_bytes().to_vec();
        bytes.extend_from_slice(&h.h2.to_le_bytes());
        assert_eq!(
            bytes,
            [
                0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55,
                0x02, 0x93
            ]
        );
    }

    /// The reference SipHash-2-4-64 vector (key 00..0f, empty message).
    #[test]
    fn siphash64_matches_reference_vector() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let h = SipHasher24::new_with_key(&key);
        assert_eq!(
            h.finish().to_le_bytes(),
            [0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72]
        );
    }

    #[test]
    fn parts_are_length_prefixed() {
        assert_ne!(
            lock_key_of([&b"ab"[..], b"c"]),
            lock_key_of([&b"a"[..], b"bc"])
        );
        assert_ne!(lock_key_of([&b""[..], b"x"]), lock_key_of([&b"x"[..], b""]));
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testutil::sqlstate;
    use pgrx::prelude::*;

    /// Pinned vectors: these values are the contract with other languages.
    #[pg_test]
    fn lock_key_vectors() {
        let cases: &[(&str, i64)] = &[
            ("SELECT integrity.lock_key('a')", VEC_A),
            ("SELECT integrity.lock_key('ab', 'c')", VEC_AB_C),
            ("SELECT integrity.lock_key('a', 'bc')", VEC_A_BC),
            ("SELECT integrity.lock_key('')", VEC_EMPTY),
            (
                "SELECT integrity.lock_key('booking', 'ünïcødé')",
                VEC_UNICODE,
            ),
        ];
        for (q, want) in cases {
            assert_eq!(Spi::get_one::<i64>(q).unwrap(), Some(*want), "{q}");
        }
    }

    #[pg_test]
    fn fingerprint_vectors_and_normalisation() {
        let a = Spi::get_one::<String>(
            r#"SELECT integrity.fingerprint('{"b": 2, "a": [1, {"c": null}]}')"#,
        )
        .unwrap()
        .unwrap();
        let b = Spi::get_one::<String>(
            r#"SELECT integrity.fingerprint('{ "a":[1,{"c":null}],"b":2 }')"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(a, b, "key order and whitespace must not matter");
        assert_eq!(a, VEC_FP_OBJ);
        let c = Spi::get_one::<String>(
            r#"SELECT integrity.fingerprint('{"a": [1, {"c": null}], "b": 3}')"#,
        )
        .unwrap()
        .unwrap();
        assert_ne!(a, c);
        assert_eq!(
            Spi::get_one::<String>("SELECT integrity.fingerprint('{}')")
                .unwrap()
                .unwrap(),
            VEC_FP_EMPTY
        );
        assert_eq!(a.len(), 32);
    }

    #[pg_test]
    fn keys_bad_input() {
        assert_eq!(sqlstate("SELECT integrity.lock_key(NULL::text)"), "22004");
        assert_eq!(sqlstate("SELECT integrity.lock_key('a', NULL)"), "22004");
        assert_eq!(
            sqlstate("SELECT integrity.lock_key(VARIADIC NULL::text[])"),
            "22004"
        );
        assert_eq!(
            sqlstate("SELECT integrity.lock_key(VARIADIC '{}'::text[])"),
            "22023"
        );
        assert_eq!(sqlstate("SELECT integrity.fingerprint(NULL)"), "22004");
        assert_eq!(sqlstate("SELECT integrity.fingerprint('{bad')"), "22P02");
        // Huge input is fine: a 1 MB part hashes like any other.
        assert_eq!(
            sqlstate("SELECT integrity.lock_key(repeat('x', 1000000))"),
            "00000"
        );
    }

    // Computed independently by examples/keys.py (pure Python SipHash).
    const VEC_A: i64 = -3860236242027281110;
    const VEC_AB_C: i64 = -256480985665053302;
    const VEC_A_BC: i64 = -8067110913176610981;
    const VEC_EMPTY: i64 = 1936783090276884721;
    const VEC_UNICODE: i64 = -7171019416818274589;
    const VEC_FP_OBJ: &str = "66cbba85903091b9d8e0663a2fe71b0b";
    const VEC_FP_EMPTY: &str = "0f025d92ff182aff65c622d4b159133c";
}

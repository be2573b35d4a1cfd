#!/usr/bin/env python3
"""integrity's stable keys computed outside the database, in pure Python.

    integrity.lock_key(VARIADIC parts text[]) -> bigint
    integrity.fingerprint(request jsonb)       -> text

Both are SipHash-2-4 keyed with the 16 ASCII bytes b"integrity-keys-1"
(k0, k1 read little-endian from bytes 0-7 and 8-15).

lock_key feeds each part as its UTF-8 byte length (u32, little-endian)
followed by its bytes, and reads the 64-bit result as a signed integer.
fingerprint is the lowercase hex of the 16 output bytes of SipHash-2-4-128
over the jsonb value's text output (what `SELECT '<json>'::jsonb::text`
prints), so hash the text Postgres gives back, not your own serialisation.

Run it to print the vectors pinned in the extension's tests:
    python3 examples/keys.py
"""
import struct

KEY = b"integrity-keys-1"
MASK = (1 << 64) - 1


def _rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & MASK


def _siphash24(key: bytes, msg: bytes, out128: bool) -> bytes:
    k0, k1 = struct.unpack("<QQ", key)
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    if out128:
        v1 ^= 0xEE

    def rnd():
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & MASK; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & MASK; v3 = _rotl(v3, 16); v3 ^= v2
        v0 = (v0 + v3) & MASK; v3 = _rotl(v3, 21); v3 ^= v0
        v2 = (v2 + v1) & MASK; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)

    n = len(msg)
    end = n - n % 8
    for i in range(0, end, 8):
        m = struct.unpack("<Q", msg[i:i + 8])[0]
        v3 ^= m; rnd(); rnd(); v0 ^= m
    b = (n & 0xFF) << 56
    for i, c in enumerate(msg[end:]):
        b |= c << (8 * i)
    v3 ^= b; rnd(); rnd(); v0 ^= b
    v2 ^= 0xEE if out128 else 0xFF
    for _ in range(4):
        rnd()
    first = v0 ^ v1 ^ v2 ^ v3
    if not out128:
        return struct.pack("<Q", first)
    v1 ^= 0xDD
    for _ in range(4):
        rnd()
    return struct.pack("<QQ", first, v0 ^ v1 ^ v2 ^ v3)


def lock_key(*parts: str) -> int:
    msg = b"".join(struct.pack("<I", len(p.encode())) + p.encode() for p in parts)
    return struct.unpack("<q", _siphash24(KEY, msg, False))[0]


def fingerprint(jsonb_text: str) -> str:
    return _siphash24(KEY, jsonb_text.encode(), True).hex()


if __name__ == "__main__":
    # The reference vectors of SipHash itself (key 00..0f, empty message).
    ref = bytes(range(16))
    assert _siphash24(ref, b"", False).hex() == "310e0edd47db6f72"
    assert _siphash24(ref, b"", True).hex() == "a3817f04ba25a8e66df67214c7550293"
    for parts in [("a",), ("ab", "c"), ("a", "bc"), ("",), ("booking", "ünïcødé")]:
        print(f"lock_key{parts!r} = {lock_key(*parts)}")
    for text in ['{"a": [1, {"c": null}], "b": 2}', "{}"]:
        print(f"fingerprint({text!r}) = {fingerprint(text)}")

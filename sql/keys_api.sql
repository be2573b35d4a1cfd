COMMENT ON FUNCTION integrity.lock_key(text[]) IS
'Stable bigint key for pg_advisory_xact_lock: SipHash-2-4, key ''integrity-keys-1'', each part fed as its UTF-8 length (u32 LE) then its bytes. Identical on every machine, version and client language. Example: SELECT integrity.lock_key(''booking'', org_id::text, resource_id::text).';
COMMENT ON FUNCTION integrity.fingerprint(jsonb) IS
'Lowercase hex of the 128-bit SipHash-2-4 (key ''integrity-keys-1'') of the jsonb text output: equal JSON (any key order, any whitespace) gives an equal fingerprint.';

COMMENT ON FUNCTION integrity.add_check(text, text, text, text, boolean, text, text, interval, boolean, text) IS
'Register a consistency check: a SELECT returning (subject text, details jsonb) per violation, validated now (it must parse and return those columns) and run later under search_path (default: the caller''s). Optional fix (run per violation when auto_fix), checked (a bigint count of subjects looked at), throttle. replace => true replaces a check of that name.';
COMMENT ON FUNCTION integrity.run_checks(text[]) IS
'Run the named checks, or every enabled one: each in its own subtransaction under integrity.check_timeout, raising throttled alerts, running fixes, resolving alerts of subjects no longer found. One row per check, failures included (error, sqlstate).';
COMMENT ON FUNCTION integrity.resolve_alert(bigint, text) IS
'Resolve an open alert by hand, with a note as its resolution. {"ok":false,"reason":"not_found"|"already_resolved"} as data.';
COMMENT ON FUNCTION integrity.enable_check(text) IS
'Run the check again in run_checks. false when there is no such check.';
COMMENT ON FUNCTION integrity.disable_check(text) IS
'Skip the check in run_checks (unless it is named). false when there is no such check.';
COMMENT ON FUNCTION integrity.drop_check(text) IS
'Drop a check (its alerts stay). false when there is no such check; built-in checks cannot be dropped.';

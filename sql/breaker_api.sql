COMMENT ON FUNCTION integrity.breaker_allow(text) IS
'May a call to the service behind key go ahead? {"allowed":…,"state":…}, "probe":true for one of the half_open_calls probes a half-open breaker admits across all clients, retry_after_ms when refused. Writes nothing while the breaker is closed (or unknown: closed with the defaults).';
COMMENT ON FUNCTION integrity.breaker_record(text, boolean, integer) IS
'Record a call''s outcome (and duration, for the slow-call rule); returns the state afterwards. Opens a closed breaker whose window reaches its failure or slow-call rate; a half-open breaker closes or opens again by its probes.';
COMMENT ON FUNCTION integrity.breaker_configure(text, integer, integer, real, integer, real, interval, integer, boolean) IS
'Configure a breaker: count-based window size, minimum calls, failure-rate threshold, slow-call threshold and rate, time open before probing, half-open probes, review on open. Returns the configuration; invalid values are 22023.';
COMMENT ON FUNCTION integrity.breaker_stats(text) IS
'A breaker''s state, window failure rate, configuration, times opened and last event, as jsonb ("configured": false for a key never configured or recorded).';

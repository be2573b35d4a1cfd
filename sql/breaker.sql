-- Circuit breakers shared by every client: resilience4j's model in a table.

CREATE TYPE integrity.breaker_state AS ENUM ('closed', 'open', 'half_open');
COMMENT ON TYPE integrity.breaker_state IS
'closed: calls go through and are counted; open: calls are refused until open_for has passed; half_open: a few probe calls decide whether to close or open again.';

CREATE TABLE integrity.circuit_breakers (
    key              text        PRIMARY KEY,
    state            integrity.breaker_state NOT NULL DEFAULT 'closed',
    window_size      integer     NOT NULL DEFAULT 20,
    minimum_calls    integer     NOT NULL DEFAULT 10,
    failure_rate     real        NOT NULL DEFAULT 0.5,
    slow_call_ms     integer,
    slow_call_rate   real        NOT NULL DEFAULT 1.0,
    open_for         interval    NOT NULL DEFAULT '30 seconds',
    half_open_calls  integer     NOT NULL DEFAULT 3,
    review_on_open   boolean     NOT NULL DEFAULT false,
    outcomes         text        NOT NULL DEFAULT '',
    probes_admitted  integer     NOT NULL DEFAULT 0,
    probe_outcomes   text        NOT NULL DEFAULT '',
    opened_at        timestamptz,
    half_open_at     timestamptz,
    closed_at        timestamptz,
    last_failure_at  timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT circuit_breakers_config_check CHECK (
        window_size >= 1 AND minimum_calls >= 1 AND minimum_calls <= window_size
        AND failure_rate > 0 AND failure_rate <= 1 AND slow_call_rate > 0 AND slow_call_rate <= 1
        AND (slow_call_ms IS NULL OR slow_call_ms >= 0) AND open_for > '0' AND half_open_calls >= 1)
);
COMMENT ON TABLE integrity.circuit_breakers IS
'One circuit breaker per key (an external service), shared by every client: integrity.breaker_allow before a call, integrity.breaker_record after it. Configure with integrity.breaker_configure; an unknown key behaves as a closed breaker with the defaults.';
COMMENT ON COLUMN integrity.circuit_breakers.key IS 'What the breaker guards, e.g. payments.stripe.';
COMMENT ON COLUMN integrity.circuit_breakers.state IS 'closed, open or half_open.';
COMMENT ON COLUMN integrity.circuit_breakers.window_size IS 'How many recent calls the closed breaker judges (a count-based sliding window).';
COMMENT ON COLUMN integrity.circuit_breakers.minimum_calls IS 'Calls the window needs before it can open the breaker.';
COMMENT ON COLUMN integrity.circuit_breakers.failure_rate IS 'Share of failed calls in the window (or of failed probes) that opens the breaker.';
COMMENT ON COLUMN integrity.circuit_breakers.slow_call_ms IS 'A call at least this slow counts as slow; NULL: no slow-call rule.';
COMMENT ON COLUMN integrity.circuit_breakers.slow_call_rate IS 'Share of slow calls in the window that opens the breaker.';
COMMENT ON COLUMN integrity.circuit_breakers.open_for IS 'How long an open breaker refuses calls before it lets probes through.';
COMMENT ON COLUMN integrity.circuit_breakers.half_open_calls IS 'Probe calls a half-open breaker admits, across all clients.';
COMMENT ON COLUMN integrity.circuit_breakers.review_on_open IS 'Whether opening puts an item in integrity.review_queue.';
COMMENT ON COLUMN integrity.circuit_breakers.outcomes IS 'The window, oldest first: one letter per recorded call (s: success, f: failure, w: slow success, x: slow failure).';
COMMENT ON COLUMN integrity.circuit_breakers.probes_admitted IS 'Probes admitted in the current half-open state.';
COMMENT ON COLUMN integrity.circuit_breakers.probe_outcomes IS 'Outcomes of the probes recorded so far (same letters).';
COMMENT ON COLUMN integrity.circuit_breakers.opened_at IS 'When it last opened.';
COMMENT ON COLUMN integrity.circuit_breakers.half_open_at IS 'When it last became half-open.';
COMMENT ON COLUMN integrity.circuit_breakers.closed_at IS 'When it last closed.';
COMMENT ON COLUMN integrity.circuit_breakers.last_failure_at IS 'When a failure was last recorded.';
COMMENT ON COLUMN integrity.circuit_breakers.updated_at IS 'When it last changed.';
COMMENT ON CONSTRAINT circuit_breakers_config_check ON integrity.circuit_breakers IS 'A breaker''s configuration is valid (rates in (0, 1], sizes >= 1, minimum_calls <= window_size, open_for > 0).';
SELECT pg_catalog.pg_extension_config_dump('integrity.circuit_breakers', '');

CREATE TABLE integrity.breaker_events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key         text        NOT NULL,
    from_state  integrity.breaker_state NOT NULL,
    to_state    integrity.breaker_state NOT NULL,
    at          timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    details     jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX breaker_events_key_idx ON integrity.breaker_events (key, id);
COMMENT ON TABLE integrity.breaker_events IS 'Every state change of every breaker, with the numbers that caused it.';
COMMENT ON COLUMN integrity.breaker_events.id IS 'Event id, in order.';
COMMENT ON COLUMN integrity.breaker_events.key IS 'The breaker.';
COMMENT ON COLUMN integrity.breaker_events.from_state IS 'State before.';
COMMENT ON COLUMN integrity.breaker_events.to_state IS 'State after.';
COMMENT ON COLUMN integrity.breaker_events.at IS 'When it changed.';
COMMENT ON COLUMN integrity.breaker_events.details IS 'Why: calls, failure and slow rates of the window or of the probes.';
COMMENT ON INDEX integrity.breaker_events_key_idx IS 'A breaker''s events in order.';
SELECT pg_catalog.pg_extension_config_dump('integrity.breaker_events', '');

CREATE VIEW integrity.breakers WITH (security_invoker = true) AS
SELECT b.key, b.state,
       pg_catalog.length(b.outcomes) AS calls_in_window,
       CASE WHEN b.outcomes <> '' THEN
           round((pg_catalog.length(b.outcomes) - pg_catalog.length(pg_catalog.translate(b.outcomes, 'fx', '')))::numeric
                 / pg_catalog.length(b.outcomes), 4) END AS failure_rate_now,
       b.failure_rate AS failure_rate_threshold,
       CASE WHEN b.state = 'open' THEN
           greatest(0, round(EXTRACT(epoch FROM b.opened_at + b.open_for - pg_catalog.now()) * 1000))::bigint END AS retry_after_ms,
       b.probes_admitted, b.opened_at, b.half_open_at, b.closed_at, b.last_failure_at,
       b.window_size, b.minimum_calls, b.slow_call_ms, b.slow_call_rate, b.open_for, b.half_open_calls
  FROM integrity.circuit_breakers b;
COMMENT ON VIEW integrity.breakers IS
'Every configured or used breaker: its state, the failure rate of its window against the threshold, when an open one lets probes through, and its configuration.';

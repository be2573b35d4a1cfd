-- The naive shared breaker for bench/breaker.rs: the state in a row, read
-- under a row lock on every call (what "SELECT … FOR UPDATE" designs do).
CREATE TABLE naive_breakers (key text PRIMARY KEY, state text NOT NULL DEFAULT 'closed',
                             opened_at timestamptz, open_for interval NOT NULL DEFAULT '30 seconds');
INSERT INTO naive_breakers (key) VALUES ('payments');
CREATE FUNCTION naive_allow(k text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE b naive_breakers;
BEGIN
  SELECT * INTO b FROM naive_breakers WHERE key = k FOR UPDATE;
  RETURN b.state = 'closed' OR (b.state = 'open' AND b.opened_at + b.open_for <= now());
END $$;

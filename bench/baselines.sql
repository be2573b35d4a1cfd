-- Baselines the benchmark compares integrity.book against.
-- Loaded by bench/run.rs into the throwaway benchmark cluster.

CREATE SCHEMA bench;

-- (b) A plain INSERT into a table guarded only by the same exclusion
--     constraint; the client treats 23P01 as "taken".
--     Same columns and defaults as integrity.bookings, so only the approach differs.
CREATE TABLE bench.plain_bookings (
    LIKE integrity.bookings INCLUDING DEFAULTS,
    PRIMARY KEY (id),
    EXCLUDE USING gist (org_id WITH =, resource_id WITH =, during WITH &&) WHERE (status = 'booked')
);

-- (c) What a typical application-level fix does: a try-advisory-lock keyed on
--     the slot's start, an overlap SELECT, then INSERT. No exclusion
--     constraint: the application believes its lock is enough. It is not: two
--     requests with different start times that overlap take different locks.
CREATE TABLE bench.app_bookings (
    LIKE integrity.bookings INCLUDING DEFAULTS,
    PRIMARY KEY (id)
);
CREATE INDEX ON bench.app_bookings USING gist (org_id, resource_id, during) WHERE status = 'booked';

CREATE FUNCTION bench.app_book(p_org uuid, p_res uuid, p_start timestamptz, p_dur interval)
RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext(p_res::text || p_start::text)) THEN
        RETURN 'busy';
    END IF;
    IF EXISTS (SELECT 1 FROM bench.app_bookings
               WHERE org_id = p_org AND resource_id = p_res AND status = 'booked'
                 AND during && tstzrange(p_start, p_start + p_dur)) THEN
        RETURN 'taken';
    END IF;
    INSERT INTO bench.app_bookings (org_id, resource_id, during)
    VALUES (p_org, p_res, tstzrange(p_start, p_start + p_dur));
    RETURN 'booked';
END $$;

-- Shared objects every capability relies on: tenant scoping.
-- (The schema itself is created by CREATE EXTENSION from integrity.control.)

-- integrity.current_org() is defined in src/access.rs: it names the
-- setting when integrity.org_id is not a uuid.
COMMENT ON FUNCTION integrity.current_org() IS
'The tenant the session is scoped to: the uuid in GUC integrity.org_id, or NULL when unset or empty (no scoping); 22P02 naming the setting when it is not a uuid. Row-level security on integrity tables uses it.';

-- How far back a report reaches, checked in one place for
-- integrity.consistency_report (since) and integrity.delivery_stats (range):
-- a negative period would report from a moment in the future, and one that
-- reaches before 4713 BC failed with Postgres's bare "timestamp out of
-- range". The bound is the one integrity's Rust functions use.
CREATE FUNCTION integrity.report_period(fn text, arg text, period interval, otherwise interval)
RETURNS interval LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    months numeric := extract(year FROM period) * 12 + extract(month FROM period);
    days numeric := extract(day FROM period);
    secs numeric := extract(hour FROM period) * 3600 + extract(minute FROM period) * 60 + extract(second FROM period);
BEGIN
    -- Months, days and time of different signs: ahead of one date and
    -- behind another (as integrity.errors::span_us refuses in Rust).
    IF (months > 0 OR days > 0 OR secs > 0) AND (months < 0 OR days < 0 OR secs < 0) THEN
        RAISE EXCEPTION '%: % mixes signs across its months, days and time (%), so its sign depends on the date it is added to', fn, arg, period
            USING ERRCODE = '22023',
                  HINT = format('Pass %s with every part of one sign, such as ''1 day'' or ''7 days''.', arg);
    END IF;
    IF period < interval '0' THEN
        RAISE EXCEPTION '%: % must not be negative, got %', fn, arg, period
            USING ERRCODE = '22023',
                  HINT = 'Pass how far back the report reaches, such as ''1 day'' or ''7 days''.';
    END IF;
    IF period > interval '1000 years' THEN
        RAISE EXCEPTION '%: % must be at most 1000 years', fn, arg
            USING ERRCODE = '22008',
                  HINT = 'Pass how far back the report reaches, such as ''1 day'' or ''7 days''.';
    END IF;
    RETURN coalesce(period, otherwise);
END
$$;

COMMENT ON FUNCTION integrity.report_period(text, text, interval, interval) IS
'How far back a report reaches: period, or otherwise when it is NULL; 22023 for a negative period or one whose months, days and time have different signs, and 22008 for one over 1,000 years, naming the function fn and its argument arg. Used by integrity.consistency_report and integrity.delivery_stats.';

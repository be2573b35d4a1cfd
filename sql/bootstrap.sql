-- Shared objects every capability relies on: tenant scoping.
-- (The schema itself is created by CREATE EXTENSION from integrity.control.)

CREATE FUNCTION integrity.current_org() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT NULLIF(pg_catalog.current_setting('integrity.org_id', true), '')::uuid $$;

COMMENT ON FUNCTION integrity.current_org() IS
'The tenant the session is scoped to: the uuid in GUC integrity.org_id, or NULL when unset (no scoping). Row-level security on integrity tables uses it.';

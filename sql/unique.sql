-- Soft-delete-aware uniqueness: the partial unique indexes unique_active
-- builds, and the background builds it hands to a worker.

CREATE TABLE integrity.index_builds (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_oid     oid         NOT NULL,
    table_name    text        NOT NULL,
    column_name   text        NOT NULL,
    deleted_column text,
    index_name    text        NOT NULL,
    statement     text        NOT NULL,
    requested_by  oid         NOT NULL,
    status        text        NOT NULL DEFAULT 'queued'
                  CONSTRAINT index_builds_status_check
                  CHECK (status IN ('queued', 'building', 'done', 'failed')),
    error         text,
    sqlstate      text,
    pid           integer,
    requested_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    started_at    timestamptz,
    finished_at   timestamptz
);
COMMENT ON TABLE integrity.index_builds IS
'Unique indexes integrity.unique_active is building CONCURRENTLY in a background worker, and how each build ended.';
COMMENT ON COLUMN integrity.index_builds.id IS 'Build id (unique_active''s build_id).';
COMMENT ON COLUMN integrity.index_builds.table_oid IS 'The table indexed.';
COMMENT ON COLUMN integrity.index_builds.table_name IS 'Its qualified name when the build was asked for.';
COMMENT ON COLUMN integrity.index_builds.column_name IS 'The column kept unique among live rows.';
COMMENT ON COLUMN integrity.index_builds.deleted_column IS 'The soft-delete column (NULL: every row counts).';
COMMENT ON COLUMN integrity.index_builds.index_name IS 'Name of the index.';
COMMENT ON COLUMN integrity.index_builds.statement IS 'The CREATE UNIQUE INDEX CONCURRENTLY statement, for people to read: the worker works it out again from the table and columns, as the asking role.';
COMMENT ON COLUMN integrity.index_builds.requested_by IS 'The role that asked; the worker builds the index as that role. The worker is told the role, the table and the columns directly: it reads none of them from here.';
COMMENT ON COLUMN integrity.index_builds.status IS 'queued (until the asking transaction commits and no other build of the table runs), building, done or failed.';
COMMENT ON COLUMN integrity.index_builds.error IS 'Why the build failed (e.g. a duplicate that arrived during the build); its invalid index is dropped.';
COMMENT ON COLUMN integrity.index_builds.sqlstate IS 'The failure''s SQLSTATE.';
COMMENT ON COLUMN integrity.index_builds.pid IS 'The process id of the worker started for the build.';
COMMENT ON COLUMN integrity.index_builds.requested_at IS 'When unique_active asked for it.';
COMMENT ON COLUMN integrity.index_builds.started_at IS 'When the worker started building.';
COMMENT ON COLUMN integrity.index_builds.finished_at IS 'When the build ended.';
-- Not in pg_dump's output (no pg_extension_config_dump): its rows name
-- tables by OID, which a restored database does not share.

-- A build's row is seen and changed only by the roles that own its table
-- (the roles that may call unique_active on it), not by every role
-- integrity.grant_access lets write here.
ALTER TABLE integrity.index_builds ENABLE ROW LEVEL SECURITY;
CREATE POLICY index_builds_table_owner ON integrity.index_builds
    USING (pg_catalog.pg_has_role(
        (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = table_oid), 'USAGE'));
COMMENT ON POLICY index_builds_table_owner ON integrity.index_builds IS
'A build is visible to, and can be changed by, members of the role that owns the table indexed (superusers see all).';

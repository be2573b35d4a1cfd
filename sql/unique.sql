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
COMMENT ON COLUMN integrity.index_builds.requested_by IS 'The role that asked; the worker builds the index as that role (passed to it directly, not read from here).';
COMMENT ON COLUMN integrity.index_builds.status IS 'queued (until the asking transaction commits), building, done or failed.';
COMMENT ON COLUMN integrity.index_builds.error IS 'Why the build failed (e.g. a duplicate that arrived during the build); its invalid index is dropped.';
COMMENT ON COLUMN integrity.index_builds.sqlstate IS 'The failure''s SQLSTATE.';
COMMENT ON COLUMN integrity.index_builds.pid IS 'The worker''s process id.';
COMMENT ON COLUMN integrity.index_builds.requested_at IS 'When unique_active asked for it.';
COMMENT ON COLUMN integrity.index_builds.started_at IS 'When the worker started building.';
COMMENT ON COLUMN integrity.index_builds.finished_at IS 'When the build ended.';
-- Not in pg_dump's output (no pg_extension_config_dump): its rows name
-- tables by OID, which a restored database does not share.

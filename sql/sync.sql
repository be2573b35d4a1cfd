-- Integration sync state: which external record each of our entities is,
-- and whether it is in step.

CREATE TABLE integrity.sync_links (
    org_id               uuid        NOT NULL,
    entity_type          text        NOT NULL,
    entity_id            text        NOT NULL,
    integration          text        NOT NULL,
    external_id          text,
    status               text        NOT NULL DEFAULT 'syncing'
                         CONSTRAINT sync_links_status_check
                         CHECK (status IN ('syncing', 'synced', 'failed', 'orphaned')),
    fingerprint          text,
    pending_fingerprint  text,
    locked_until         timestamptz,
    attempts             integer     NOT NULL DEFAULT 0,
    retryable            boolean,
    last_error           text,
    synced_at            timestamptz,
    created_at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (org_id, entity_type, entity_id, integration),
    CONSTRAINT sync_links_external_key UNIQUE (org_id, integration, external_id)
);
COMMENT ON TABLE integrity.sync_links IS
'One row per (entity, integration): the external id it is linked to, the fingerprint of the payload last synced, and the lease of a sync in progress. Written by integrity.sync_start / sync_succeeded / sync_failed.';
COMMENT ON COLUMN integrity.sync_links.org_id IS 'Tenant.';
COMMENT ON COLUMN integrity.sync_links.entity_type IS 'Our kind of entity (e.g. customer).';
COMMENT ON COLUMN integrity.sync_links.entity_id IS 'Our id of it, as text.';
COMMENT ON COLUMN integrity.sync_links.integration IS 'The external system (e.g. hubspot).';
COMMENT ON COLUMN integrity.sync_links.external_id IS 'Its id there; unique per org and integration. NULL until the first sync succeeds.';
COMMENT ON COLUMN integrity.sync_links.status IS 'syncing (a caller holds the lease), synced, failed, orphaned.';
COMMENT ON COLUMN integrity.sync_links.fingerprint IS 'integrity.fingerprint of the payload last synced.';
COMMENT ON COLUMN integrity.sync_links.pending_fingerprint IS 'Fingerprint of the payload being synced now.';
COMMENT ON COLUMN integrity.sync_links.locked_until IS 'End of the current sync''s lease.';
COMMENT ON COLUMN integrity.sync_links.attempts IS 'Sync attempts started.';
COMMENT ON COLUMN integrity.sync_links.retryable IS 'After a failure: whether it may be tried again.';
COMMENT ON COLUMN integrity.sync_links.last_error IS 'The last failure''s error.';
COMMENT ON COLUMN integrity.sync_links.synced_at IS 'When it was last synced.';
COMMENT ON COLUMN integrity.sync_links.created_at IS 'When the link was first started.';
COMMENT ON COLUMN integrity.sync_links.updated_at IS 'When it last changed.';
COMMENT ON CONSTRAINT sync_links_external_key ON integrity.sync_links IS 'An external id belongs to one entity per org and integration.';

ALTER TABLE integrity.sync_links ENABLE ROW LEVEL SECURITY;
CREATE POLICY sync_links_org_scope ON integrity.sync_links
    USING ((SELECT integrity.current_org()) IS NULL OR org_id = (SELECT integrity.current_org()));
COMMENT ON POLICY sync_links_org_scope ON integrity.sync_links IS
'Rows of the tenant in integrity.org_id only, when that GUC is set.';
SELECT pg_catalog.pg_extension_config_dump('integrity.sync_links', '');

-- The idempotency benchmark's own tables (bench/idempotency.rs and
-- bench/instructions.sh): the business table, and floor (5)'s key table
-- with our primary key in our column order. One statement a line: the
-- instruction count feeds them to a single-user backend, which ends a
-- command at a newline.
CREATE TABLE bench_orders (id bigserial PRIMARY KEY, key text NOT NULL, amount int NOT NULL);
CREATE TABLE bench_keys (org_id uuid, scope text COLLATE "C", key text COLLATE "C", fingerprint text NOT NULL, status text NOT NULL, response_code int, response jsonb, created_at timestamptz NOT NULL, expires_at timestamptz NOT NULL, PRIMARY KEY (key, scope, org_id)) WITH (fillfactor = 85);

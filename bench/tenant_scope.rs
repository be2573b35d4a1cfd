//! Tenant-scope benchmark: what integrity's row-level security policy
//! costs a scoped read. The policy (on every tenant table) is
//! `(SELECT integrity.current_org()) IS NULL OR org_id = (SELECT
//! integrity.current_org())`: each call a scalar subquery, evaluated once
//! per statement, and `current_org()` a C function of ours. Measured
//! against
//!
//!   (1) the owner's read of the same rows, row security bypassed, with
//!       `WHERE org_id = …` instead of the policy (the floor: no policy);
//!   (3) the policy calling `current_org()` on every row, as it did
//!       before, with our C function;
//!   (4) the same with `current_org()` as it was before that, an SQL
//!       function with `SET search_path` in its definition.
//!
//!   (2) ours: a role granted integrity's access, `integrity.org_id` set,
//!       `SELECT count(*) FROM integrity.idempotency_keys`.
//!
//! (3) and (4) replace the policy (and the function) in a transaction that
//! is rolled back. Every read is one `count(*)` over BENCH_KEYS keys
//! (default 400,000), half of them the scoped tenant's, serial (no
//! parallel workers), timed by the client; BENCH_ROUNDS (5) interleaved
//! rounds, medians. Each read must count the tenant's rows exactly.
//!
//! env: BENCH_KEYS, BENCH_ROUNDS, BENCH_SETTINGS.

#[path = "../tests/common/mod.rs"]
mod common;
#[allow(dead_code)]
mod shared;

use common::Cluster;
use std::time::Instant;

const ORG: &str = "0000000a-0000-0000-0000-000000000000";
const OTHER: &str = "0000000b-0000-0000-0000-000000000000";

/// The policy as it was: `current_org()` called on every row.
const PER_ROW_POLICY: &str = "ALTER POLICY idempotency_keys_org_scope ON integrity.idempotency_keys
    USING (integrity.current_org() IS NULL OR org_id = integrity.current_org())";

/// `current_org()` as sql/bootstrap.sql defined it before it was ours.
const SQL_CURRENT_ORG: &str = "CREATE OR REPLACE FUNCTION integrity.current_org() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT NULLIF(pg_catalog.current_setting('integrity.org_id', true), '')::uuid $$";

fn main() {
    let keys: i64 = shared::var("BENCH_KEYS", 400_000);
    let rounds: usize = shared::var("BENCH_ROUNDS", 5);
    let settings_owned = shared::settings();
    let settings: Vec<&str> = settings_owned.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(&settings);
    let mut c = cluster.connect();
    c.batch_execute(&format!(
        "INSERT INTO integrity.idempotency_keys
             (org_id, scope, key, fingerprint, status, response_code, response, lease,
              created_at, completed_at, expires_at)
         SELECT CASE WHEN g % 2 = 0 THEN '{ORG}' ELSE '{OTHER}' END::uuid,
                'POST /orders', 'k-' || g, integrity.fingerprint('{{}}'), 'completed', 201,
                '{{}}', '5 minutes', now(), now(), now() + '24 hours'
           FROM generate_series(1, {keys}) g"
    ))
    .unwrap();
    // Each its own statement: VACUUM cannot run in batch_execute's
    // implicit transaction.
    c.batch_execute("VACUUM ANALYZE integrity.idempotency_keys")
        .unwrap();
    c.batch_execute(
        "CREATE ROLE scoped;
         SELECT integrity.grant_access('scoped');
         SET max_parallel_workers_per_gather = 0;",
    )
    .unwrap();
    let expected = keys / 2;
    let count = "SELECT count(*) FROM integrity.idempotency_keys";
    // One read of approach `i`, in ms.
    let mut read = |i: usize| -> f64 {
        let mut tx = c.transaction().unwrap();
        let sql = match i {
            0 => format!("{count} WHERE org_id = '{ORG}'"),
            _ => {
                if i >= 2 {
                    tx.batch_execute(PER_ROW_POLICY).unwrap();
                }
                if i == 3 {
                    tx.batch_execute(SQL_CURRENT_ORG).unwrap();
                }
                tx.batch_execute(&format!(
                    "SET LOCAL ROLE scoped; SET LOCAL integrity.org_id = '{ORG}'"
                ))
                .unwrap();
                count.to_string()
            }
        };
        let t = Instant::now();
        let n: i64 = tx.query_one(sql.as_str(), &[]).unwrap().get(0);
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(n, expected, "approach {i} counted another tenant's rows");
        tx.rollback().unwrap();
        ms
    };
    // Warm the cache: the table read once by each approach.
    for i in 0..4 {
        read(i);
    }
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); 4];
    for round in 0..rounds {
        for j in 0..4 {
            let i = (j + round) % 4;
            runs[i].push(read(i));
        }
    }
    let m: Vec<f64> = runs.into_iter().map(shared::median).collect();
    let pg: String = c.query_one("SHOW server_version", &[]).unwrap().get(0);
    println!(
        "tenant-scope benchmark: PostgreSQL {pg}, count(*) of {expected} of {keys} keys, {rounds} interleaved rounds, medians"
    );
    println!(
        "  (1) owner, WHERE org_id (no policy)                  {:>9.1} ms",
        m[0]
    );
    println!(
        "  (2) scoped role, our policy                         {:>9.1} ms",
        m[1]
    );
    println!(
        "  (3) scoped role, current_org() on every row          {:>9.1} ms",
        m[2]
    );
    println!(
        "  (4) scoped role, on every row, current_org() in SQL  {:>9.1} ms",
        m[3]
    );
    println!(
        "summary: a scoped read costs {:.2}x the unscoped one; per-row calls {:.2}x, per-row SQL calls (before) {:.2}x",
        m[1] / m[0],
        m[2] / m[0],
        m[3] / m[0]
    );
}

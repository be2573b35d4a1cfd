//! What an application role may touch. Our functions run with the caller's
//! rights (no SECURITY DEFINER), so a role needs the schema, the functions
//! and the tables; row-level security then scopes tenant rows to
//! `integrity.org_id` when the session sets it.

use crate::errors::{raise, required, Kind, OrBug};
use pgrx::prelude::*;

pgrx::extension_sql_file!(
    "../sql/access_api.sql",
    name = "access_api",
    requires = [grant_access]
);

/// Grant `role` what the integrity API needs: USAGE on the schema, EXECUTE on
/// its functions, SELECT/INSERT/UPDATE on its tables, USAGE on its sequences.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn grant_access(role: Option<&str>) -> bool {
    const F: &str = "integrity.grant_access";
    let role = required(role, F, "role");
    let exists = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)",
        &[role.into()],
    )
    .or_bug("role lookup")
    .unwrap_or(false);
    if !exists {
        raise(
            Kind::UndefinedObject,
            F,
            format!("role \"{role}\" does not exist"),
            "Create it first: CREATE ROLE app LOGIN;",
        );
    }
    // The role name only ever reaches SQL quoted by format('%I').
    let stmts = [
        "GRANT USAGE ON SCHEMA integrity TO %I",
        "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA integrity TO %I",
        "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA integrity TO %I",
        "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA integrity TO %I",
    ];
    for template in stmts {
        let sql = Spi::get_one_with_args::<String>(
            "SELECT pg_catalog.format($1, $2)",
            &[template.into(), role.into()],
        )
        .or_bug("format grant")
        .unwrap_or_default();
        Spi::run(&sql).or_bug("grant");
    }
    true
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use crate::testutil::one;
    use pgrx::prelude::*;

    const ORG: &str = "0000000c-0000-0000-0000-000000000001";
    const OTHER: &str = "0000000c-0000-0000-0000-000000000002";

    #[pg_test]
    fn views_show_a_scoped_role_its_own_tenant_only() {
        for org in [ORG, OTHER] {
            Spi::run(&format!(
                "SELECT integrity.enqueue('{org}', 'job-1', 'ping', '{{}}');
                 UPDATE integrity.deliveries SET status = 'dead_letter', dead_at = now() WHERE org_id = '{org}';
                 WITH s AS (SELECT integrity.saga_begin('{org}', 'k') AS id)
                 SELECT integrity.saga_step(id, 'a', '{{}}') FROM s;
                 SELECT * FROM integrity.saga_abort((SELECT id FROM integrity.sagas WHERE org_id = '{org}'));"
            ))
            .unwrap();
        }
        Spi::run("CREATE ROLE integrity_test_viewer").unwrap();
        Spi::run("SELECT integrity.grant_access('integrity_test_viewer')").unwrap();
        Spi::run("SET LOCAL ROLE integrity_test_viewer").unwrap();
        Spi::run(&format!("SET LOCAL integrity.org_id = '{ORG}'")).unwrap();
        for view in ["dead_letters", "stuck_sagas"] {
            assert_eq!(
                one::<i64>(&format!(
                    "SELECT count(*) FROM integrity.{view} WHERE org_id = '{ORG}'"
                )),
                Some(1),
                "{view}: the tenant's own row"
            );
            assert_eq!(
                one::<i64>(&format!(
                    "SELECT count(*) FROM integrity.{view} WHERE org_id <> '{ORG}'"
                )),
                Some(0),
                "{view}: another tenant's row seen through the view"
            );
        }
        assert_eq!(
            one::<i64>("SELECT dead_letter FROM integrity.queue_health"),
            Some(1)
        );
        Spi::run("RESET ROLE").unwrap();
    }
}

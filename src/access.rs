//! What an application role may touch. Our functions run with the caller's
//! rights (no SECURITY DEFINER), so a role needs the schema, the functions
//! and the tables; row-level security then scopes tenant rows to
//! `integrity.org_id` when the session sets it.

use crate::errors::{raise, required, Kind, OrBug};
use pgrx::prelude::*;

// The shared objects (sql/bootstrap.sql) comment on current_org, defined
// below, so they come after it.
pgrx::extension_sql_file!(
    "../sql/bootstrap.sql",
    name = "bootstrap",
    requires = [current_org]
);
pgrx::extension_sql_file!(
    "../sql/access_api.sql",
    name = "access_api",
    requires = [grant_access]
);

/// The tenant the session is scoped to: the uuid in `integrity.org_id`, or
/// NULL when it is unset or empty. Every table's row-level security policy
/// calls it, as a scalar subquery: once per statement.
///
/// It runs no SQL, so it does not pin `search_path`: a `SET` in its
/// definition would cost each call a GUC save and restore (see Security in
/// README).
#[pg_extern(stable, parallel_safe)]
fn current_org() -> Option<pgrx::datum::Uuid> {
    session_org()
}

/// `integrity.org_id` as a uuid: `None` when it is unset or empty, and
/// 22P02 naming the setting when it is not a uuid (Postgres's own cast
/// would say only "invalid input syntax for type uuid").
pub fn session_org() -> Option<pgrx::datum::Uuid> {
    use pgrx::pg_sys;
    // SAFETY: GetConfigOption returns the setting's current string (valid
    // until the setting changes, which nothing here does) or NULL. uuid_in
    // reads that string and allocates its result; its one ERROR (the text
    // is not a uuid) can be caught without a subtransaction and answered
    // with ours.
    unsafe {
        let p = crate::direct::plain::GetConfigOption(c"integrity.org_id".as_ptr(), true, false);
        if p.is_null() || *p == 0 {
            return None;
        }
        let parsed = pgrx::PgTryBuilder::new(|| {
            pgrx::direct_function_call::<pgrx::datum::Uuid>(
                pg_sys::uuid_in,
                &[Some(pg_sys::Datum::from(p))],
            )
        })
        .catch_when(
            pgrx::PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
            |_| None,
        )
        .execute();
        if parsed.is_none() {
            let text = std::ffi::CStr::from_ptr(p).to_string_lossy();
            raise(
                Kind::InvalidTextRepresentation,
                "integrity.org_id",
                format!("{text:?} is not a uuid"),
                "SET integrity.org_id to the tenant's uuid (e.g. '0000000a-0000-0000-0000-000000000000'), or RESET integrity.org_id for a session scoped to no tenant.",
            );
        }
        parsed
    }
}

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
    fn current_org_reads_the_setting_and_names_it_when_malformed() {
        use crate::testutil::{error_message, sqlstate};
        assert_eq!(one::<String>("SELECT integrity.current_org()::text"), None);
        Spi::run("SET LOCAL integrity.org_id = ''").unwrap();
        assert_eq!(one::<String>("SELECT integrity.current_org()::text"), None);
        Spi::run(&format!("SET LOCAL integrity.org_id = '{ORG}'")).unwrap();
        assert_eq!(
            one::<String>("SELECT integrity.current_org()::text").as_deref(),
            Some(ORG)
        );
        // Whatever uuid_in accepts: upper case, braces, no hyphens.
        Spi::run("SET LOCAL integrity.org_id = '{0000000C00000000000000000000000A}'").unwrap();
        assert_eq!(
            one::<String>("SELECT integrity.current_org()::text").as_deref(),
            Some("0000000c-0000-0000-0000-00000000000a")
        );
        for bad in ["not-a-uuid", " ", "0000000c-0000-0000-0000-00000000000"] {
            Spi::run(&format!("SET LOCAL integrity.org_id = '{bad}'")).unwrap();
            assert_eq!(
                sqlstate("SELECT integrity.current_org()"),
                "22P02",
                "{bad:?}"
            );
            let message = error_message("SELECT integrity.current_org()");
            assert!(
                message.contains("integrity.org_id") && message.contains(&format!("{bad:?}")),
                "{bad:?}: {message}"
            );
        }
        // Through a table's policy, as a scoped role reads it: the policy
        // calls current_org() once a statement, when it checks its first
        // row (an empty table is read without it).
        Spi::run("RESET integrity.org_id").unwrap();
        Spi::run(&format!(
            "SELECT integrity.idem_begin('{ORG}', 's', 'k', '{{}}');
             SELECT integrity.idem_complete('{ORG}', 's', 'k', 200, '{{}}')"
        ))
        .unwrap();
        Spi::run("SET LOCAL integrity.org_id = 'not-a-uuid'").unwrap();
        Spi::run("CREATE ROLE integrity_test_malformed").unwrap();
        Spi::run("SELECT integrity.grant_access('integrity_test_malformed')").unwrap();
        Spi::run("SET LOCAL ROLE integrity_test_malformed").unwrap();
        let read = "SELECT count(*) FROM integrity.idempotency_keys";
        assert_eq!(sqlstate(read), "22P02");
        // error_message's helper, made above, replaced only by its owner.
        let message = Spi::get_one_with_args::<String>(
            "SELECT pg_temp.integrity_message($1)",
            &[read.into()],
        )
        .unwrap()
        .unwrap_or_default();
        assert!(message.contains("integrity.org_id"), "{message}");
        Spi::run("RESET ROLE").unwrap();
    }

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

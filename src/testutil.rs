//! Helpers for `#[pg_test]`s: run a statement in a real subtransaction (a
//! PL/pgSQL exception block) and report the SQLSTATE it ended with, so bad
//! input is tested exactly as a client sees it, including errors Postgres
//! itself raises.

use pgrx::prelude::*;

/// SQLSTATE the statement ends with; `"00000"` when it succeeds.
pub fn sqlstate(sql: &str) -> String {
    let exists = Spi::get_one::<bool>(
        "SELECT to_regprocedure('pg_temp.integrity_sqlstate(text)') IS NOT NULL",
    )
    .expect("look up sqlstate helper")
    .unwrap_or(false);
    if !exists {
        Spi::run(
            "CREATE FUNCTION pg_temp.integrity_sqlstate(q text) RETURNS text
         LANGUAGE plpgsql AS $$
         BEGIN
           EXECUTE q;
           RETURN '00000';
         EXCEPTION WHEN OTHERS THEN
           RETURN SQLSTATE;
         END $$",
        )
        .expect("create sqlstate helper");
    }
    Spi::get_one_with_args::<String>("SELECT pg_temp.integrity_sqlstate($1)", &[sql.into()])
        .expect("run sqlstate helper")
        .expect("sqlstate is never NULL")
}

/// The jsonb a statement returns, as a serde value.
pub fn json(sql: &str) -> serde_json::Value {
    Spi::get_one::<pgrx::JsonB>(sql)
        .expect("query ran")
        .expect("query returned a value")
        .0
}

/// The error message a statement ends with; `""` when it succeeds.
pub fn error_message(sql: &str) -> String {
    Spi::run(
        "CREATE OR REPLACE FUNCTION pg_temp.integrity_message(q text) RETURNS text
         LANGUAGE plpgsql AS $$
         BEGIN
           EXECUTE q;
           RETURN '';
         EXCEPTION WHEN OTHERS THEN
           RETURN SQLERRM;
         END $$",
    )
    .expect("create message helper");
    Spi::get_one_with_args::<String>("SELECT pg_temp.integrity_message($1)", &[sql.into()])
        .expect("run message helper")
        .unwrap_or_default()
}

/// The one value a query returns.
pub fn one<T: FromDatum + IntoDatum>(sql: &str) -> Option<T> {
    Spi::get_one::<T>(sql).expect("query ran")
}

/// The one text a query returns, `"NULL"` for NULL.
pub fn text(sql: &str) -> String {
    one::<String>(sql).unwrap_or_else(|| "NULL".into())
}

/// For tests that change one of integrity's own tables (CREATE TRIGGER,
/// ALTER TABLE on it): one at a time, or two of them deadlock (each holds
/// the table for its writes, then asks for a stronger lock on it).
pub fn serialize_ddl() {
    Spi::run("SELECT pg_advisory_xact_lock(4210421)").expect("test DDL lock");
}

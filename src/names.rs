//! Names of the user's own tables and columns, found in the catalogs and
//! quoted the way `quote_ident` does: the only way a user-supplied
//! identifier reaches SQL text.

use crate::errors::{raise, Kind};
use pgrx::pg_sys::{self, Oid};
use std::ffi::{CStr, CString};

/// `schema.table` of a relation, quoted as needed.
pub fn qualified(relid: Oid) -> String {
    // SAFETY: catalog lookups of an existing relation; quote_identifier
    // returns its argument or a palloc'd quoted copy.
    unsafe {
        let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
        let rel = pg_sys::get_rel_name(relid);
        if nsp.is_null() || rel.is_null() {
            return format!("oid {}", relid.to_u32());
        }
        format!(
            "{}.{}",
            CStr::from_ptr(pg_sys::quote_identifier(nsp)).to_string_lossy(),
            CStr::from_ptr(pg_sys::quote_identifier(rel)).to_string_lossy()
        )
    }
}

/// A type's name as Postgres prints it (`integer`, `character varying(20)`).
pub fn type_name(t: Oid) -> String {
    // SAFETY: a catalog lookup by OID; the name is copied.
    unsafe {
        let p = pg_sys::format_type_be(t);
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// A type's category (`pg_type.typcategory`: `S` string, `D` date/time,
/// …); a domain has its base type's.
pub fn type_category(t: Oid) -> u8 {
    let (mut category, mut preferred) = (0 as std::ffi::c_char, false);
    // SAFETY: a catalog lookup by OID.
    unsafe { pg_sys::get_type_category_preferred(t, &mut category, &mut preferred) };
    category as u8
}

pub fn quote(ident: &str) -> String {
    let c = CString::new(ident).unwrap_or_default();
    // SAFETY: quote_identifier of a NUL-terminated string.
    unsafe { CStr::from_ptr(pg_sys::quote_identifier(c.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}

/// SQL string literal for a hint.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A column of a relation: its number and type.
pub struct Column {
    pub name: String,
    pub typid: Oid,
    pub attnum: i16,
}

/// The relation `relid`, or `42P01` when there is none (a dropped OID).
pub fn relation(f: &'static str, arg: &str, relid: Oid) {
    // SAFETY: a catalog lookup by OID; NULL when there is no such relation.
    if unsafe { pg_sys::get_rel_name(relid) }.is_null() {
        raise(
            Kind::UndefinedTable,
            f,
            format!("{arg}: no table has OID {}", relid.to_u32()),
            format!("Pass the table by name, e.g. {arg} => 'customers'."),
        );
    }
}

/// What a function needs of a relation it is given.
#[derive(Clone, Copy, PartialEq)]
pub enum Needs {
    /// A table (plain or partitioned): it gets triggers or indexes.
    Table,
    /// Rows to read: a table, a view, a materialized view or a foreign
    /// table.
    Rows,
}

/// `relid` is the kind of relation the argument needs, or `42809` saying
/// what it is instead (an index, a sequence, a view where a table is
/// needed, …), as Postgres's own "is not a table" does. `relid` exists
/// (see `relation`).
pub fn check_kind(f: &'static str, arg: &str, relid: Oid, needs: Needs, hint: &str) {
    // SAFETY: a catalog lookup of an existing relation.
    let kind = unsafe { pg_sys::get_rel_relkind(relid) } as u8;
    let table = kind == pg_sys::RELKIND_RELATION || kind == pg_sys::RELKIND_PARTITIONED_TABLE;
    let rows = table
        || kind == pg_sys::RELKIND_VIEW
        || kind == pg_sys::RELKIND_MATVIEW
        || kind == pg_sys::RELKIND_FOREIGN_TABLE;
    if (needs == Needs::Table && table) || (needs == Needs::Rows && rows) {
        return;
    }
    let what = match kind {
        pg_sys::RELKIND_INDEX | pg_sys::RELKIND_PARTITIONED_INDEX => "an index",
        pg_sys::RELKIND_SEQUENCE => "a sequence",
        pg_sys::RELKIND_VIEW => "a view",
        pg_sys::RELKIND_MATVIEW => "a materialized view",
        pg_sys::RELKIND_FOREIGN_TABLE => "a foreign table",
        pg_sys::RELKIND_COMPOSITE_TYPE => "a composite type",
        pg_sys::RELKIND_TOASTVALUE => "a TOAST table",
        // Every kind Postgres 15 can refuse here is named above (tables
        // always pass); one a later release adds is still said plainly.
        _ => "of another kind",
    };
    let needed = match needs {
        Needs::Table => "a table",
        Needs::Rows => "a table or view",
    };
    raise(
        Kind::WrongObjectType,
        f,
        format!("{arg}: {} is {what}, not {needed}", qualified(relid)),
        hint,
    );
}

/// The column `name` of `relid`, or `42703` naming the argument.
pub fn column(f: &'static str, arg: &str, relid: Oid, name: &str) -> Column {
    let c = CString::new(name).unwrap_or_default();
    // SAFETY: catalog lookups by OID and name.
    let (attnum, typid) = unsafe {
        let attnum = pg_sys::get_attnum(relid, c.as_ptr());
        let typid = if attnum > 0 {
            pg_sys::get_atttype(relid, attnum)
        } else {
            Oid::INVALID
        };
        (attnum, typid)
    };
    if attnum <= 0 {
        raise(
            Kind::UndefinedColumn,
            f,
            format!(
                "{arg} names column {name:?}, which table {} does not have",
                qualified(relid)
            ),
            "Pass the column's name as it is in the table (case matters for quoted names).",
        );
    }
    Column {
        name: name.to_string(),
        typid,
        attnum,
    }
}

//! `JsonbText`: a jsonb value carried as Postgres's own text form.
//!
//! pgrx's `JsonB` parses into `serde_json::Value` and prints it back, which
//! costs two conversions and loses Postgres's exact spelling (numbers, key
//! order after normalisation, spacing). Fingerprints hash that exact spelling,
//! and values we only pass through (metadata, results built in SQL) need no
//! Rust-side model at all, so they travel as the output of `jsonb_out`.

use pgrx::{direct_function_call, direct_function_call_as_datum, pg_sys, FromDatum, IntoDatum};
use std::ffi::{CStr, CString};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonbText(pub String);

pgrx::impl_sql_translatable!(JsonbText, "jsonb");

impl FromDatum for JsonbText {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            return None;
        }
        // SAFETY: Postgres hands us a jsonb datum (the SQL type says so);
        // jsonb_out detoasts it itself and returns a palloc'd C string.
        let cstr = direct_function_call::<&CStr>(pg_sys::jsonb_out, &[Some(datum)])?;
        let text = cstr.to_string_lossy().into_owned();
        pg_sys::pfree(cstr.as_ptr() as *mut std::ffi::c_void);
        Some(JsonbText(text))
    }
}

impl IntoDatum for JsonbText {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        // Text that came out of jsonb_out has no NUL byte; text built by us is
        // fixed JSON. Either way a NUL would be a bug, reported as such.
        let cstring = CString::new(self.0).ok()?;
        unsafe { direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(cstring.as_ptr().into())]) }
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// Calling-convention glue, the same pgrx gives its own `JsonB`.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for JsonbText {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(
        arg: pgrx::callconv::Arg<'_, 'fcx>,
    ) -> pgrx::nullable::Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

unsafe impl pgrx::callconv::BoxRet for JsonbText {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        match self.into_datum() {
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}

//! `Jsonb`: a jsonb datum passed through without conversion.
//!
//! pgrx's `JsonB` parses every value into `serde_json::Value` and prints it
//! back on the way out. Our hot paths never need a Rust model of the JSON:
//! metadata goes straight into a table, results are built in SQL, and a
//! fingerprint hashes Postgres's own text form. So the datum travels as it
//! is, and is printed (`jsonb_out`) only when its text is needed.

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::nullable::Nullable;
use pgrx::{direct_function_call, direct_function_call_as_datum, pg_sys, FromDatum, IntoDatum};
use std::ffi::{CStr, CString};

/// A jsonb datum valid for the current function call.
#[derive(Debug, Clone, Copy)]
pub struct Jsonb(pg_sys::Datum);

pgrx::impl_sql_translatable!(Jsonb, "jsonb");

impl Jsonb {
    /// Parse JSON text we wrote ourselves (fixed outcomes such as `busy`).
    pub fn from_text(text: &str) -> Jsonb {
        let c = CString::new(text).expect("our own JSON literals contain no NUL");
        // SAFETY: jsonb_in takes a C string and returns a jsonb datum.
        let d =
            unsafe { direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(c.as_ptr().into())]) };
        Jsonb(d.expect("jsonb_in never returns NULL"))
    }

    /// Keep a jsonb datum that SPI returned: copy it out of SPI's memory into
    /// the memory of the calling function, so it survives `SPI_finish`.
    pub fn from_spi(datum: pg_sys::Datum) -> Jsonb {
        // SAFETY: called inside an SPI connection with a varlena datum.
        Jsonb(unsafe { pg_sys::SPI_datumTransfer(datum, false, -1) })
    }

    /// Postgres's text form of the value (`jsonb_out`): keys sorted,
    /// normalised spacing.
    pub fn text(&self) -> String {
        // SAFETY: jsonb_out takes a jsonb datum and returns a palloc'd C string.
        unsafe {
            let cstr = direct_function_call::<&CStr>(pg_sys::jsonb_out, &[Some(self.0)])
                .expect("jsonb_out never returns NULL");
            let s = cstr.to_string_lossy().into_owned();
            pg_sys::pfree(cstr.as_ptr() as *mut std::ffi::c_void);
            s
        }
    }

    /// `jsonb_typeof`: object, array, string, number, boolean or null.
    pub fn type_name(&self) -> String {
        // SAFETY: jsonb_typeof takes a jsonb datum and returns text.
        unsafe { direct_function_call::<String>(pg_sys::jsonb_typeof, &[Some(self.0)]) }
            .unwrap_or_default()
    }
}

impl FromDatum for Jsonb {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _: pg_sys::Oid,
    ) -> Option<Self> {
        (!is_null).then_some(Jsonb(datum))
    }
}

impl IntoDatum for Jsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// Calling-convention glue, as pgrx has for its own types.
unsafe impl<'fcx> ArgAbi<'fcx> for Jsonb {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }

    unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

unsafe impl BoxRet for Jsonb {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

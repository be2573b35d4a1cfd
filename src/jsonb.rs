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

    /// A fixed answer: built by `build` once per backend, then copied for
    /// each call (a palloc and a memcpy instead of building it again).
    pub fn cached(
        cell: &'static std::thread::LocalKey<std::cell::RefCell<Vec<u8>>>,
        build: impl FnOnce() -> Jsonb,
    ) -> Jsonb {
        cell.with(|c| {
            let mut bytes = c.borrow_mut();
            if bytes.is_empty() {
                let j = build();
                // SAFETY: a jsonb we built: a plain varlena with a 4-byte
                // header, VARSIZE bytes long.
                unsafe {
                    let p = j.0.cast_mut_ptr::<u8>();
                    let len = pgrx::varlena::varsize_any(p.cast());
                    bytes.extend_from_slice(std::slice::from_raw_parts(p, len));
                }
            }
            // SAFETY: a copy of a complete jsonb varlena, in the current
            // memory context.
            unsafe {
                let p = pg_sys::palloc(bytes.len()).cast::<u8>();
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
                Jsonb(pg_sys::Datum::from(p))
            }
        })
    }

    /// Keep a jsonb datum that SPI returned: copy it out of SPI's memory into
    /// the memory of the calling function, so it survives `SPI_finish`.
    pub fn from_spi(datum: pg_sys::Datum) -> Jsonb {
        // SAFETY: called inside an SPI connection with a varlena datum.
        Jsonb(unsafe { pg_sys::SPI_datumTransfer(datum, false, -1) })
    }

    /// This value, read from an SPI row, copied out of SPI's memory (as
    /// `from_spi`).
    pub fn kept(self) -> Jsonb {
        Jsonb::from_spi(self.0)
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

    /// Postgres's text form of the value, as `jsonb_out` prints it, handed
    /// to `f` as bytes: no copy into a `String` and no UTF-8 check on the
    /// way (what a fingerprint hashes).
    pub fn with_text<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        // SAFETY: what jsonb_out does: the detoasted value's root container
        // printed by JsonbToCString into a palloc'd C string, which is
        // freed once `f` has read it.
        unsafe {
            let j = pg_sys::pg_detoast_datum(self.0.cast_mut_ptr()).cast::<pg_sys::Jsonb>();
            let len = pgrx::varlena::varsize_any(j.cast()) as i32;
            let out = pg_sys::JsonbToCString(std::ptr::null_mut(), &raw mut (*j).root, len);
            let r = f(CStr::from_ptr(out).to_bytes());
            pg_sys::pfree(out.cast());
            r
        }
    }

    /// Whether the value is a JSON object (the root container's flag; no
    /// text is made).
    pub fn is_object(&self) -> bool {
        // SAFETY: a jsonb datum; pg_detoast_datum returns it in plain form
        // (a copy only if it was toasted or had a short header).
        unsafe {
            let j = pg_sys::pg_detoast_datum(self.0.cast_mut_ptr()).cast::<pg_sys::Jsonb>();
            (*j).root.header & pg_sys::JB_FOBJECT != 0
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

/// Builds a jsonb value directly (`pushJsonbValue`), with no JSON text to
/// print and parse again. Only what our answers need: objects, arrays,
/// strings and booleans.
pub struct Builder {
    state: *mut pg_sys::JsonbParseState,
    result: *mut pg_sys::JsonbValue,
    /// For each open container: whether it is an array.
    open: Vec<bool>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder {
            state: std::ptr::null_mut(),
            result: std::ptr::null_mut(),
            open: Vec::with_capacity(4),
        }
    }

    fn push(&mut self, token: pg_sys::JsonbIteratorToken::Type, value: *mut pg_sys::JsonbValue) {
        // SAFETY: pushJsonbValue builds in the current memory context; the
        // tokens are pushed in a well-formed order by the methods below.
        self.result = unsafe { pg_sys::pushJsonbValue(&mut self.state, token, value) };
    }

    fn scalar(&mut self, mut v: pg_sys::JsonbValue) {
        let token = match self.open.last() {
            Some(true) => pg_sys::JsonbIteratorToken::WJB_ELEM,
            _ => pg_sys::JsonbIteratorToken::WJB_VALUE,
        };
        self.push(token, &mut v);
    }

    fn string_value(s: &str) -> pg_sys::JsonbValue {
        let mut v = pg_sys::JsonbValue {
            type_: pg_sys::jbvType::jbvString,
            ..Default::default()
        };
        // SAFETY: a palloc'd copy outlives the builder (current context).
        unsafe {
            let p = pg_sys::palloc(s.len().max(1)).cast::<u8>();
            std::ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
            v.val.string.len = s.len() as i32;
            v.val.string.val = p.cast();
        }
        v
    }

    pub fn begin_object(&mut self) -> &mut Self {
        self.push(
            pg_sys::JsonbIteratorToken::WJB_BEGIN_OBJECT,
            std::ptr::null_mut(),
        );
        self.open.push(false);
        self
    }

    pub fn begin_array(&mut self) -> &mut Self {
        self.push(
            pg_sys::JsonbIteratorToken::WJB_BEGIN_ARRAY,
            std::ptr::null_mut(),
        );
        self.open.push(true);
        self
    }

    pub fn end(&mut self) -> &mut Self {
        let token = match self.open.pop() {
            Some(true) => pg_sys::JsonbIteratorToken::WJB_END_ARRAY,
            _ => pg_sys::JsonbIteratorToken::WJB_END_OBJECT,
        };
        self.push(token, std::ptr::null_mut());
        self
    }

    pub fn key(&mut self, k: &str) -> &mut Self {
        let mut v = Self::string_value(k);
        self.push(pg_sys::JsonbIteratorToken::WJB_KEY, &mut v);
        self
    }

    pub fn string(&mut self, s: &str) -> &mut Self {
        self.scalar(Self::string_value(s));
        self
    }

    pub fn bool(&mut self, b: bool) -> &mut Self {
        let mut v = pg_sys::JsonbValue {
            type_: pg_sys::jbvType::jbvBool,
            ..Default::default()
        };
        v.val.boolean = b;
        self.scalar(v);
        self
    }

    pub fn int(&mut self, i: i64) -> &mut Self {
        let mut v = pg_sys::JsonbValue {
            type_: pg_sys::jbvType::jbvNumeric,
            ..Default::default()
        };
        // SAFETY: int8_numeric makes a numeric of any int8.
        v.val.numeric = unsafe {
            pgrx::direct_function_call_as_datum(pg_sys::int8_numeric, &[i.into_datum()])
                .unwrap_or_else(|| crate::errors::bug("int8_numeric returned NULL"))
                .cast_mut_ptr()
        };
        self.scalar(v);
        self
    }

    pub fn null(&mut self) -> &mut Self {
        self.scalar(pg_sys::JsonbValue {
            type_: pg_sys::jbvType::jbvNull,
            ..Default::default()
        });
        self
    }

    /// A stored jsonb value (any datum of type jsonb, possibly toasted).
    /// It is read when the builder finishes, so it must stay valid until
    /// then.
    ///
    /// # Safety
    /// `datum` is a jsonb datum.
    pub unsafe fn jsonb(&mut self, datum: pg_sys::Datum) -> &mut Self {
        let j = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()).cast::<pg_sys::Jsonb>();
        let mut v = pg_sys::JsonbValue {
            type_: pg_sys::jbvType::jbvBinary,
            ..Default::default()
        };
        v.val.binary.data = &mut (*j).root;
        v.val.binary.len = pgrx::varlena::varsize_any_exhdr(j.cast()) as i32;
        // pushJsonbValue unpacks a binary value (a raw scalar included).
        let token = match self.open.last() {
            Some(true) => pg_sys::JsonbIteratorToken::WJB_ELEM,
            _ => pg_sys::JsonbIteratorToken::WJB_VALUE,
        };
        self.push(token, &mut v);
        self
    }

    /// The finished value; every container must have been closed.
    pub fn finish(&mut self) -> Jsonb {
        assert!(
            self.open.is_empty() && !self.result.is_null(),
            "jsonb builder finished with open containers"
        );
        // SAFETY: result is the complete top-level value pushJsonbValue built.
        Jsonb(pg_sys::Datum::from(unsafe {
            pg_sys::JsonbValueToJsonb(self.result)
        }))
    }
}

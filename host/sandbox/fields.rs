//! The `wasi:http` calls that make the host hold header bytes (`fields` made empty, from a
//! list, set, appended, cloned), defined over wasi-http's own for both 0.2 and 0.3: each
//! charges what it adds to the instance's host budget (and the node's) first, and over it
//! the call traps. A charge stays until the instance ends, as handles do: headers are few and
//! small, and a guest that makes and drops them without end runs into its own budget, not
//! the node's memory.

use wasmtime::component::Linker;

use super::{GuestState, budget};

/// What a header costs beside its name and value: its place in the map.
const FIELD_OVERHEAD_BYTES: usize = 64;
/// What a `fields` resource costs empty.
const FIELDS_OVERHEAD_BYTES: usize = 256;
/// The `wasi:http/types` interfaces these functions are defined in (every 0.2 version a guest
/// imports resolves to the first, every 0.3 version to the second).
const P2_HTTP_TYPES: &str = "wasi:http/types@0.2.12";
const P3_HTTP_TYPES: &str = "wasi:http/types@0.3.0";

fn charge(state: &mut GuestState, bytes: usize) -> wasmtime::Result<()> {
    state.budget.charge(bytes, "HTTP fields").map_err(budget::HostRefusal::into_trap)
}

fn entries_bytes(entries: &[(String, Vec<u8>)]) -> usize {
    entries.iter().map(|(name, value)| name.len() + value.len() + FIELD_OVERHEAD_BYTES).sum()
}

/// Defines the charged calls in `$interface`, whose bindings are `$types` and whose calls
/// fail with `$failure` (the 0.2 and 0.3 `fields` have the same functions and signatures).
macro_rules! define_charged_fields {
    ($linker:expr, $interface:expr, $types:path, $failure:ty) => {{
        use wasmtime::component::Resource;
        use wasmtime_wasi_http::{FieldMap, WasiHttpView as _};
        use $types::{self as types, HostFields};

        type Answer<T> = wasmtime::Result<(Result<T, types::HeaderError>,)>;
        fn answered<T>(result: Result<T, $failure>) -> Answer<T> {
            match result {
                Ok(value) => Ok((Ok(value),)),
                Err(error) => Ok((Err(error.downcast()?),)),
            }
        }
        let linker: &mut Linker<GuestState> = $linker;
        linker.allow_shadowing(true);
        let mut fields = linker.instance($interface)?;
        fields.func_wrap("[constructor]fields", |mut store, (): ()| {
            let state = store.data_mut();
            charge(state, FIELDS_OVERHEAD_BYTES)?;
            Ok((HostFields::new(&mut state.http())?,))
        })?;
        fields.func_wrap("[static]fields.from-list", |mut store, (list,): (Vec<(String, Vec<u8>)>,)| {
            let state = store.data_mut();
            charge(state, FIELDS_OVERHEAD_BYTES + entries_bytes(&list))?;
            answered(HostFields::from_list(&mut state.http(), list))
        })?;
        fields.func_wrap(
            "[method]fields.set",
            |mut store, (map, name, values): (Resource<FieldMap>, String, Vec<Vec<u8>>)| {
                let state = store.data_mut();
                let added: usize =
                    values.iter().map(|value| name.len() + value.len() + FIELD_OVERHEAD_BYTES).sum();
                charge(state, added)?;
                answered(HostFields::set(&mut state.http(), map, name, values))
            },
        )?;
        fields.func_wrap(
            "[method]fields.append",
            |mut store, (map, name, value): (Resource<FieldMap>, String, Vec<u8>)| {
                let state = store.data_mut();
                charge(state, name.len() + value.len() + FIELD_OVERHEAD_BYTES)?;
                answered(HostFields::append(&mut state.http(), map, name, value))
            },
        )?;
        fields.func_wrap("[method]fields.clone", |mut store, (map,): (Resource<FieldMap>,)| {
            let state = store.data_mut();
            let held: usize = state
                .table
                .get(&map)?
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD_BYTES)
                .sum();
            charge(state, FIELDS_OVERHEAD_BYTES + held)?;
            Ok((HostFields::clone(&mut state.http(), map)?,))
        })?;
        linker.allow_shadowing(false);
        Ok(())
    }};
}

/// Charges the header bytes of `wasi:http` 0.2's `fields`.
pub(super) fn charge_p2(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    define_charged_fields!(
        linker,
        P2_HTTP_TYPES,
        wasmtime_wasi_http::p2::bindings::http::types,
        wasmtime_wasi_http::p2::HeaderError
    )
}

/// Charges the header bytes of `wasi:http` 0.3's `fields`.
pub(super) fn charge_p3(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    define_charged_fields!(
        linker,
        P3_HTTP_TYPES,
        wasmtime_wasi_http::p3::bindings::http::types,
        wasmtime_wasi::TrappableError<wasmtime_wasi_http::p3::bindings::http::types::HeaderError>
    )
}

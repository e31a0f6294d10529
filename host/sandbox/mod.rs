//! What a guest instance can reach: the per-request store state and the linker built on it.
//!
//! The sandbox is closed by default. A guest gets the `wasi:http/proxy` world and `wasi:nn`;
//! the rest of WASI that Rust's std links in (`wasi:cli/environment`, `wasi:filesystem`, ...)
//! is present but empty: no environment variables, no arguments, no preopened folders, no
//! sockets, no name lookups. Outgoing HTTP requests are refused, and no folder exists, unless
//! the route opens them (`capabilities`). Linear memory is capped per store; host memory and
//! resource handles per instance (`budget`).
//! Stderr goes to the host's log, tagged and rate-limited (see `guest_log`).
//!
//! The layer below HTTP: `admission` caps a route's instances, `component` makes a fresh
//! instance per request on the `engine`'s pool, `imports` checks what a component may
//! import, `capabilities` holds what its route opens, `nn` is its `wasi:nn` host, `budget`
//! bounds what it makes the host hold, `body` makes its response end as unfinished if its
//! work did not end cleanly, and `guest_log` carries its stderr.

pub mod admission;
pub mod body;
pub mod budget;
pub mod capabilities;
pub mod component;
pub mod engine;
pub mod guest_log;
pub mod imports;
pub mod nn;

use std::sync::Arc;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use self::budget::HostBudget;
use self::capabilities::{Capabilities, OutgoingHttp};
use self::nn::{HasNn, NnGrant, NnView};
use crate::request::RequestContext;
use crate::request::memory::MemoryBudget;
use crate::sandbox::guest_log::GuestStderr;

/// What one instance may use: its linear memory, the host memory it may make the host hold
/// for it, the resource handles it may hold at once, and the response it may send.
#[derive(Clone, Copy, Debug)]
pub struct InstanceLimits {
    pub memory_bytes: usize,
    pub host_memory_bytes: usize,
    pub max_host_resources: usize,
    /// Longest response body the instance may send.
    pub max_response_bytes: u64,
}

/// Everything one guest instance owns, from when it is made (ahead of its request, or on its
/// arrival) to the end of that one request.
pub struct GuestState {
    table: ResourceTable,
    budget: HostBudget,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: OutgoingHttp,
    grant: Arc<NnGrant>,
    context: RequestContext,
    stderr: GuestStderr,
    /// Memory and table caps, enforced by wasmtime through `Store::limiter`.
    pub limits: StoreLimits,
}

impl GuestState {
    /// State for a fresh instance: the route's model grant, limits and capabilities, and the
    /// deadline and priority of `context`, the request it serves (see [`GuestState::serve`]
    /// for an instance made ahead of its request); what it makes the host hold charged to
    /// `memory` too; nothing else. Fails if a read-only folder cannot be opened.
    pub fn new(
        grant: Arc<NnGrant>,
        limits: InstanceLimits,
        capabilities: &Capabilities,
        context: RequestContext,
        stderr: GuestStderr,
        memory: &Arc<MemoryBudget>,
    ) -> wasmtime::Result<GuestState> {
        let mut wasi = WasiCtx::builder();
        wasi.stderr(stderr.clone()).allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        capabilities.preopen(&mut wasi)?;
        let wasi = wasi.build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.max_host_resources);
        Ok(GuestState {
            table,
            budget: HostBudget::new(limits.host_memory_bytes, memory),
            wasi,
            http: WasiHttpCtx::new(),
            hooks: OutgoingHttp(capabilities.clone()),
            grant,
            context,
            stderr,
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
        })
    }

    /// Gives the instance to the request of `context`: its deadline and priority for model
    /// calls, its id on the guest's log lines.
    pub fn serve(&mut self, context: RequestContext) {
        self.stderr.tag(context.id.clone());
        self.context = context;
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

impl HasNn for GuestState {
    fn nn(&mut self) -> NnView<'_> {
        NnView {
            grant: &self.grant,
            context: &self.context,
            table: &mut self.table,
            budget: &mut self.budget,
        }
    }
}

/// The linker every route's component is instantiated with.
pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    charge_http_fields(&mut linker)?;
    nn::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// What a header costs beside its name and value: its place in the map.
const FIELD_OVERHEAD_BYTES: usize = 64;
/// What a `fields` resource costs empty.
const FIELDS_OVERHEAD_BYTES: usize = 256;
/// The `wasi:http/types` interface these functions are defined in (every 0.2 version a guest
/// imports resolves to it).
const HTTP_TYPES: &str = "wasi:http/types@0.2.12";

/// Defines the `wasi:http` calls that make the host hold header bytes (`fields` made empty,
/// from a list, set, appended, cloned) over wasi-http's own, charging what they add to the
/// instance's host budget (and the node's) first: over it, the call traps. A charge stays
/// until the instance ends, as handles do: headers are few and small, and a guest that
/// makes and drops them without end runs into its own budget, not the node's memory.
fn charge_http_fields(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi_http::FieldMap;
    use wasmtime_wasi_http::p2::bindings::http::types::{self, Host as _, HostFields};

    type Answer<T> = wasmtime::Result<(Result<T, types::HeaderError>,)>;
    fn charge(state: &mut GuestState, bytes: usize) -> wasmtime::Result<()> {
        state.budget.charge(bytes, "HTTP fields").map_err(budget::HostRefusal::into_trap)
    }
    fn answered<T>(
        view: &mut WasiHttpCtxView<'_>,
        result: wasmtime_wasi_http::p2::HeaderResult<T>,
    ) -> Answer<T> {
        match result {
            Ok(value) => Ok((Ok(value),)),
            Err(error) => Ok((Err(view.convert_header_error(error)?),)),
        }
    }
    let entries = |entries: &[(String, Vec<u8>)]| -> usize {
        entries.iter().map(|(name, value)| name.len() + value.len() + FIELD_OVERHEAD_BYTES).sum()
    };
    linker.allow_shadowing(true);
    let mut types = linker.instance(HTTP_TYPES)?;
    types.func_wrap("[constructor]fields", |mut store, (): ()| {
        let state = store.data_mut();
        charge(state, FIELDS_OVERHEAD_BYTES)?;
        Ok((HostFields::new(&mut state.http())?,))
    })?;
    types.func_wrap("[static]fields.from-list", move |mut store, (list,): (Vec<(String, Vec<u8>)>,)| {
        let state = store.data_mut();
        charge(state, FIELDS_OVERHEAD_BYTES + entries(&list))?;
        let mut view = state.http();
        let made = HostFields::from_list(&mut view, list);
        answered(&mut view, made)
    })?;
    types.func_wrap(
        "[method]fields.set",
        move |mut store, (fields, name, values): (Resource<FieldMap>, String, Vec<Vec<u8>>)| {
            let state = store.data_mut();
            let added: usize =
                values.iter().map(|value| name.len() + value.len() + FIELD_OVERHEAD_BYTES).sum();
            charge(state, added)?;
            let mut view = state.http();
            let set = HostFields::set(&mut view, fields, name, values);
            answered(&mut view, set)
        },
    )?;
    types.func_wrap(
        "[method]fields.append",
        move |mut store, (fields, name, value): (Resource<FieldMap>, String, Vec<u8>)| {
            let state = store.data_mut();
            charge(state, name.len() + value.len() + FIELD_OVERHEAD_BYTES)?;
            let mut view = state.http();
            let appended = HostFields::append(&mut view, fields, name, value);
            answered(&mut view, appended)
        },
    )?;
    types.func_wrap("[method]fields.clone", move |mut store, (fields,): (Resource<FieldMap>,)| {
        let state = store.data_mut();
        let held: usize = state
            .table
            .get(&fields)?
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + FIELD_OVERHEAD_BYTES)
            .sum();
        charge(state, FIELDS_OVERHEAD_BYTES + held)?;
        Ok((HostFields::clone(&mut state.http(), fields)?,))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

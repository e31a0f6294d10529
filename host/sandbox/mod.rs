//! What a guest instance can reach: the per-request store state and the linker built on it.
//!
//! The sandbox is closed by default. A guest gets the `wasi:http/proxy` world (0.2) or the
//! `wasi:http/service` world (0.3), and `wasi:nn`;
//! the rest of WASI that Rust's std links in (`wasi:cli/environment`, `wasi:filesystem`, ...)
//! is present but empty: no environment variables, no arguments, no preopened folders, no
//! sockets, no name lookups. Outgoing HTTP requests are refused, and no folder exists, unless
//! the route opens them (`capabilities`). Linear memory is capped per store; host memory and
//! resource handles per instance (`budget`).
//! Stderr goes to the host's log, tagged and rate-limited (see `guest_log`).
//!
//! The layer below HTTP: `admission` caps a route's instances, `abi` tells which `wasi:http`
//! a component serves, `component` makes a fresh instance per request on the `engine`'s pool
//! and `handler` calls it, `imports` checks what a component may import, `fields` charges
//! the header bytes it makes the host hold, `capabilities` holds what its route opens, `nn` is its `wasi:nn` host, `budget`
//! bounds what it makes the host hold, `body` makes its response end as unfinished if its
//! work did not end cleanly, and `guest_log` carries its stderr.

pub mod abi;
pub mod admission;
pub mod body;
pub mod budget;
pub mod capabilities;
pub mod component;
pub mod engine;
pub mod failure;
mod fields;
pub mod guest_log;
pub mod handler;
pub mod imports;
pub mod nn;

use std::sync::Arc;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use self::abi::GuestAbi;
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

/// The linker a route's component is instantiated with: WASI 0.2 and `wasi:nn` for every
/// guest (a 0.3 guest built by Rust's `wasm32-wasip2` still imports 0.2's `wasi:cli`), and
/// the `wasi:http` (with WASI 0.3, for a 0.3 guest) of the guest's `abi`; header bytes are
/// charged to the instance's host budget in either.
pub fn linker(engine: &Engine, abi: GuestAbi) -> wasmtime::Result<Linker<GuestState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    fields::charge_p2(&mut linker)?;
    if abi == GuestAbi::P3 {
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
        fields::charge_p3(&mut linker)?;
    }
    nn::add_to_linker(&mut linker)?;
    Ok(linker)
}

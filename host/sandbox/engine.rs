//! The wasmtime engine: compilation settings, the pooling allocator and the epoch clock.
//!
//! Each version of a route has an engine of its own, so a version being deployed never
//! competes for instance slots with the one it replaces, and its pool goes with it once it
//! has drained. Instances come from a pooling allocator sized from the route's concurrency
//! cap and the instances it makes ahead, so a fresh instance per request costs microseconds
//! (slots are reused and memory is copy-on-write from the component's image). Only a
//! `wasi:http` 0.3 guest's engine has the component model's async ABI
//! (`concurrency_support`); a 0.2 guest's goes without its bookkeeping. A large component
//! (an interpreter and its heap snapshot) keeps its instances' memory resident between
//! requests, rewritten in place, instead of faulting it in again.
//! A background thread advances the engine's epoch every [`EPOCH_TICK`]; guests yield to
//! tokio at each tick, which is how a guest stuck in a loop is cut off at its deadline.

use std::thread;
use std::time::Duration;

use wasmtime::error::Context as _;
use wasmtime::{Cache, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::sandbox::abi::GuestAbi;

/// How often the epoch advances: the granularity of guest time slices and deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Core instances, memories and tables one component may hold (a Rust guest uses a few
/// core instances and one memory; interpreters such as Python use more).
const CORE_INSTANCES_PER_COMPONENT: u32 = 32;
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 8;

/// Bytes of each table slot kept resident when it is reused, instead of being returned to the
/// OS.
const TABLE_KEEP_RESIDENT_BYTES: usize = 1 << 20;

/// Components at least this large keep their instances' memory resident (see
/// [`memory_keep_resident`]).
const LARGE_COMPONENT_BYTES: usize = 1 << 20;

/// The most of one instance's linear memory kept resident between requests.
const MAX_MEMORY_KEEP_RESIDENT_BYTES: usize = 32 << 20;

/// How much of each instance's linear memory to keep resident when its slot is reused, for a
/// component of `component_bytes` and a route allowing `max_memory_bytes`.
///
/// Small components (Rust guests) keep none: wasmtime cannot tell which pages the last request
/// wrote, so every byte kept is rewritten on every reuse, and giving the pages back and
/// faulting in the few a request touches was cheaper (`/hello`, 64 clients: 222-251 µs of
/// server CPU per request against 231-276 µs keeping 64 KiB and 294-376 µs keeping 2 MiB).
/// An interpreter's component (componentize-py, componentize-js) carries a snapshot of its
/// heap, and a request writes all over it: 520 copy-on-write faults per Python request, 220
/// per JavaScript one, each with a TLB shoot-down on the other core. Rewriting the snapshot
/// in place when the slot is reused is cheaper than those faults, so such a component keeps
/// as much as its own size (its snapshot is most of it), up to 32 MiB and the route's cap
/// (benches/RESULTS.md, issue #28).
pub fn memory_keep_resident(component_bytes: usize, max_memory_bytes: usize) -> usize {
    if component_bytes < LARGE_COMPONENT_BYTES {
        return 0;
    }
    let whole_mib = component_bytes.div_ceil(1 << 20) << 20;
    whole_mib.min(MAX_MEMORY_KEEP_RESIDENT_BYTES).min(max_memory_bytes)
}

/// What the engine must be sized for.
#[derive(Clone, Copy, Debug)]
pub struct EngineLimits {
    /// Component instances alive at once: the route's concurrency cap and the instances it
    /// makes ahead of requests.
    pub instances: u32,
    /// The linear memory the route allows, in bytes.
    pub max_memory_bytes: usize,
    /// How much of an instance's linear memory its slot keeps resident between requests
    /// ([`memory_keep_resident`]).
    pub memory_keep_resident_bytes: usize,
    /// Whether to use wasmtime's on-disk compilation cache.
    pub compilation_cache: bool,
    /// The `wasi:http` its component serves: a 0.3 guest needs the component model's async
    /// ABI.
    pub guest_abi: GuestAbi,
}

/// Makes the engine and starts its epoch clock.
pub fn new_engine(limits: EngineLimits) -> anyhow::Result<Engine> {
    let instances = limits.instances.max(1);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_COMPONENT))
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .total_memories(instances.saturating_mul(MEMORIES_PER_COMPONENT))
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .total_tables(instances.saturating_mul(TABLES_PER_COMPONENT))
        .total_stacks(instances)
        .max_memory_size(limits.max_memory_bytes)
        .linear_memory_keep_resident(limits.memory_keep_resident_bytes)
        .table_keep_resident(TABLE_KEEP_RESIDENT_BYTES);

    let mut config = Config::new();
    config.epoch_interruption(true).allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    // A 0.2 guest is called once per store, synchronously: the component-model-async
    // machinery would only add bookkeeping to every host call. A 0.3 guest needs it.
    let p3 = limits.guest_abi == GuestAbi::P3;
    config.concurrency_support(p3);
    if p3 {
        config.wasm_component_model_async(true);
    }
    if limits.compilation_cache {
        let cache = Cache::from_file(None).context("setting up wasmtime's compilation cache")?;
        config.cache(Some(cache));
    }
    let engine = Engine::new(&config).context("creating the wasmtime engine")?;
    start_epoch_clock(&engine)?;
    Ok(engine)
}

/// Advances the engine's epoch every tick, for as long as the engine lives.
fn start_epoch_clock(engine: &Engine) -> anyhow::Result<()> {
    let engine = engine.weak();
    thread::Builder::new()
        .name("epoch-clock".into())
        .spawn(move || {
            while let Some(engine) = engine.upgrade() {
                engine.increment_epoch();
                drop(engine);
                thread::sleep(EPOCH_TICK);
            }
        })
        .context("starting the epoch clock")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_components_keep_memory_resident_within_the_routes_cap() {
        const MIB: usize = 1 << 20;
        assert_eq!(memory_keep_resident(140_000, 64 * MIB), 0, "a Rust guest");
        assert_eq!(memory_keep_resident(18_647_722, 256 * MIB), 18 * MIB, "componentize-py");
        assert_eq!(memory_keep_resident(13_146_895, 256 * MIB), 13 * MIB, "componentize-js");
        assert_eq!(memory_keep_resident(100 * MIB, 256 * MIB), 32 * MIB);
        assert_eq!(memory_keep_resident(18_647_722, 16 * MIB), 16 * MIB, "never beyond the cap");
    }
}

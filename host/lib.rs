//! edge-infer: a WebAssembly edge inference runtime.
//!
//! An HTTP request flows one way through these modules:
//! `server` (listener) → `router` (dispatch, limits) → `admission` (per-route cap and queue)
//! → `component` (a fresh guest instance in its `sandbox`, on the `engine`'s pool) → `nn`
//! (the guest's `wasi:nn` calls) → `scheduler` (per-model queue and executor threads) →
//! `backend` (tract), with the `scheduler` consulting the model's result `cache`, the
//! `batcher` to form (and pad) batches, and `calibration` to decide whether batching pays. `config`,
//! `models` and `runtime` build the node at start-up; `tensor`, `request` and `response`
//! hold the types shared along the way, and `metrics` the Prometheus series every layer
//! updates. Lower layers never import higher ones.

pub mod admission;
pub mod backend;
pub mod batcher;
pub mod bench;
pub mod cache;
pub mod calibration;
pub mod cli;
pub mod component;
pub mod config;
pub mod engine;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod guest_log;
pub mod imports;
pub mod loadgen;
pub mod metrics;
pub mod models;
pub mod nn;
pub mod oip;
pub mod request;
pub mod response;
pub mod router;
pub mod runtime;
pub mod sandbox;
pub mod scheduler;
pub mod server;
pub mod tensor;

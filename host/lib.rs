//! edge-infer: a WebAssembly edge inference runtime.
//!
//! The folders are the layers of a request's flow, top to bottom; a module imports only from
//! its own layer or those below it (`tests/layout.rs` checks this):
//!
//! 1. [`http`]: the listener, dispatch by path, the Open Inference Protocol, JSON errors;
//! 2. [`node`]: what the node serves, assembled at start-up from its configuration: routes
//!    and models; how that changes (deploys, rollbacks, the config file re-read); what
//!    survives a restart; and components and models as OCI artifacts, pushed to and pulled
//!    from registries ([`node::oci`]);
//! 3. [`sandbox`]: per-route admission, a fresh guest instance per request on the engine's
//!    pool, strict imports, the guest's `wasi:nn` host and its log;
//! 4. [`inference`]: each model's queue, batcher and executors, calibration, result cache,
//!    backends, and the tensors they exchange;
//! 5. [`telemetry`]: Prometheus metrics and GPU gauges, which every layer updates.
//!
//! [`request`] (a request's id, deadline, priority and stats) travels through all of them.
//! The command line and `edge-infer bench` (the `edge-infer-bench` crate) belong to the
//! binary, behind the default feature `cli`; this library uses neither.

pub mod http;
pub mod inference;
pub mod node;
pub mod request;
pub mod sandbox;
pub mod serving;
pub mod telemetry;

pub use serving::{serve, start};

//! Inference, below the sandbox: a model's `scheduler` (admission into its `queue`, its
//! `executor` threads, the result `cache`),
//! the `batcher` that forms and pads batches, the `calibration` that decides whether
//! batching pays, the `backend`s that run models (tract, ONNX Runtime), and the `tensor`s
//! they all exchange.

pub mod backend;
pub mod batcher;
pub mod cache;
pub mod calibration;
mod executor;
mod queue;
pub mod scheduler;
pub mod tensor;

//! Inference, below the sandbox: what callers compute through (`served`: a model, or a
//! `pipeline` of models, such as an ensemble or a model cut into stages by `split`), a
//! model's `scheduler` (admission into its `queue`, its `executor` threads, the result
//! `cache`), the `batcher` that forms and pads batches, the `calibration` that decides
//! whether batching pays, the `hints` that declare inputs a model file leaves open, the `backend`s that run models (tract, ONNX Runtime), and the
//! `tensor`s they all exchange.

pub mod backend;
pub mod batcher;
pub mod cache;
pub mod calibration;
mod executor;
pub mod hints;
pub mod pipeline;
mod queue;
pub mod scheduler;
pub mod served;
pub mod split;
pub mod tensor;

//! Inference, below the sandbox: what callers compute through (`served`: a model, or a
//! pipeline of models, such as an ensemble or a model cut into stages by `split`), a
//! model's `scheduler` (admission into its `queue` of `job`s, its `executor` threads, the
//! result `cache`), its `residency` (loaded on use, evicted under the node's model memory
//! budget), the `measurements` a load made, remembered across restarts, `batching` (the policy, batches formed from the queue, padded and parted,
//! and the calibration that decides whether batching pays), the `hints` that declare inputs a
//! model file leaves open, the `backend`s that run models (tract, ONNX Runtime), the
//! `choice` of one for a model, the `tensor`s they all exchange, and `generation`: decoder
//! models whose sequences keep their KV cache in the host between steps, stepped together
//! by their own scheduler (continuous batching).

pub mod backend;
pub mod batching;
pub mod cache;
pub mod choice;
mod executor;
#[cfg(feature = "ort")]
pub mod generation;
pub mod hints;
mod job;
pub mod measurements;
mod queue;
pub mod residency;
pub mod scheduler;
pub mod served;
pub mod split;
pub mod tensor;

pub use self::served::pipeline;

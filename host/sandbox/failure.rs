//! Why a guest produced no response, typed, for the request path to answer each kind with
//! its own status and log line; and how an error out of a guest call is told apart (the
//! node's memory refused, a model overloaded, or a trap).

use wasmtime::component::ResourceTableError;

use crate::inference::scheduler::ComputeError;
use crate::request::memory::MemoryExhausted;

/// Why a guest produced no response.
#[derive(Debug, thiserror::Error)]
pub enum GuestFailure {
    /// The request's deadline passed before the guest answered.
    #[error("the guest did not answer within its deadline")]
    DeadlineExceeded,
    /// No instance could be made (e.g. the instance pool is exhausted).
    #[error("no guest instance available: {0:#}")]
    NoInstance(wasmtime::Error),
    /// A model the guest called was overloaded (its queue full, or no room to load it:
    /// [`ComputeError::is_overload`]).
    #[error(transparent)]
    ModelOverloaded(ComputeError),
    /// The node's memory budget could not take what the guest made the host hold.
    #[error(transparent)]
    MemoryExhausted(MemoryExhausted),
    /// The guest trapped (panic, stack overflow, out of memory, over its host budget, ...).
    #[error("the guest trapped: {}", trap_reason(.0))]
    Trapped(wasmtime::Error),
    /// The task running the guest panicked or was cancelled.
    #[error("the guest task failed: {0}")]
    TaskFailed(tokio::task::JoinError),
    /// The guest returned without setting a response.
    #[error("the guest gave no response")]
    NoResponse,
    /// The guest set an HTTP error code instead of a response.
    #[error("the guest gave no response: it answered with {0}")]
    AnsweredWithError(String),
    /// The request could not be handed to the guest.
    #[error("the request cannot be passed to the guest: {0:#}")]
    BadRequest(wasmtime::Error),
}

/// Why a guest trapped, in one line: the WebAssembly trap (stack overflow, `unreachable`
/// after a panic, out-of-bounds access, ...) or the host error that stopped it. The whole
/// chain, with the wasm backtrace, is in the error's `Debug` form.
fn trap_reason(error: &wasmtime::Error) -> String {
    if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
        return trap.to_string();
    }
    if let Some(ResourceTableError::Full) = error.downcast_ref::<ResourceTableError>() {
        return "it holds as many resource handles as its route allows (max_host_resources)".into();
    }
    error.root_cause().to_string()
}

/// What a failed call means: the node's memory refused, a model overloaded, else a trap.
pub fn failure(error: wasmtime::Error) -> GuestFailure {
    if let Some(exhausted) = error.downcast_ref::<MemoryExhausted>() {
        return GuestFailure::MemoryExhausted(exhausted.clone());
    }
    match error.downcast::<ComputeError>() {
        Ok(overloaded) if overloaded.is_overload() => GuestFailure::ModelOverloaded(overloaded),
        Ok(other) => GuestFailure::Trapped(other.into()),
        Err(trap) => GuestFailure::Trapped(trap),
    }
}

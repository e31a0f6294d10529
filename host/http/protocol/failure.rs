//! The ways a request fails, one [`FailureKind`] each, whatever the protocol: every domain
//! error (a compute's, a deploy's, the state folder's, a registry's, a guest's, admission's,
//! tenancy's, a body's, the memory budget's, a decode's) is converted here once. Each
//! protocol maps a kind once: REST to a status and a JSON error (`response::failure`), gRPC
//! to a status code (`grpc::status`).

use crate::http::body::BodyRefusal;
use crate::http::oip::decode::DecodeError;
use crate::http::tenancy::Refusal;
use crate::inference::scheduler::ComputeError;
use crate::node::control::DeployError;
use crate::node::oci::OciError;
use crate::node::state::StateError;
use crate::request::memory::MemoryExhausted;
use crate::sandbox::admission::Rejection;
use crate::sandbox::failure::GuestFailure;

/// How a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Malformed: a header, a body, a tensor or a setting that is not what the call takes.
    BadRequest,
    /// Credentials missing or not recognised.
    Unauthorized,
    /// This listener does not take the call.
    Forbidden,
    /// No such model, route or call.
    NotFound,
    /// The call does not take this method.
    MethodNotAllowed,
    /// A change that contradicts what is deployed.
    Conflict,
    /// Larger than the call, or the node, can ever take.
    TooLarge,
    /// Well formed, but not what the model or the node takes (a tensor of the wrong shape, a
    /// version that does not load).
    Unprocessable,
    /// The tenant is over its limits, for this many whole seconds (at least 1).
    TooManyRequests { retry_after_seconds: u64 },
    /// The node failed.
    Internal,
    /// A registry failed, refused the node, or sent bytes that are not what it named.
    Upstream,
    /// At capacity (a full queue, the memory budget taken): retry shortly.
    Overloaded,
    /// Not serving yet (still loading): retry shortly.
    Unavailable,
    /// The request's deadline passed.
    DeadlineExceeded,
}

/// A failed request: how it failed, and what its answer says.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure { kind, message: message.into() }
    }

    /// Why a route's admission refused a request for the route at `route_path`.
    pub fn admission(rejection: Rejection, route_path: &str) -> Failure {
        match rejection {
            Rejection::QueueFull => Failure::new(
                FailureKind::Overloaded,
                format!("route {route_path} is at capacity; retry shortly"),
            ),
            Rejection::WaitedTooLong => Failure::new(
                FailureKind::Overloaded,
                format!(
                    "route {route_path} is busy: no instance was free within max_queue_wait_ms; retry shortly"
                ),
            ),
            Rejection::DeadlineExpired => Failure::new(
                FailureKind::DeadlineExceeded,
                "the deadline passed while waiting for an instance",
            ),
        }
    }

    /// Whether the node (or a registry it called) is to blame, not the request or the load.
    pub fn is_the_nodes(&self) -> bool {
        matches!(self.kind, FailureKind::Internal | FailureKind::Upstream)
    }
}

impl From<ComputeError> for Failure {
    fn from(error: ComputeError) -> Failure {
        let kind = match error {
            ComputeError::InvalidInput(_) => FailureKind::Unprocessable,
            ComputeError::Overloaded { .. } | ComputeError::NoRoom { .. } => FailureKind::Overloaded,
            ComputeError::DeadlineExpired { .. } => FailureKind::DeadlineExceeded,
            ComputeError::Failed { .. } => FailureKind::Internal,
        };
        Failure::new(kind, error.to_string())
    }
}

impl From<DeployError> for Failure {
    fn from(error: DeployError) -> Failure {
        let kind = match error {
            DeployError::NotFound(_) => FailureKind::NotFound,
            DeployError::Conflict(_) => FailureKind::Conflict,
            DeployError::Invalid(_) => FailureKind::BadRequest,
            DeployError::Rejected(_) => FailureKind::Unprocessable,
            DeployError::State(error) => return error.into(),
            DeployError::Pull(error) => return error.into(),
            DeployError::Loading => FailureKind::Unavailable,
        };
        Failure::new(kind, error.to_string())
    }
}

impl From<StateError> for Failure {
    fn from(error: StateError) -> Failure {
        let kind = match error {
            StateError::UnknownArtifact(_) => FailureKind::Unprocessable,
            StateError::TooLarge(_) => FailureKind::TooLarge,
            _ => FailureKind::Internal,
        };
        Failure::new(kind, error.to_string())
    }
}

impl From<OciError> for Failure {
    fn from(error: OciError) -> Failure {
        let kind = match error {
            OciError::BadReference(_) => FailureKind::BadRequest,
            OciError::Registry { .. } | OciError::Unauthorized { .. } | OciError::DigestMismatch { .. } => {
                FailureKind::Upstream
            }
            // Not there, not the kind asked for, too large, unreadable credentials: the
            // version cannot load.
            _ => FailureKind::Unprocessable,
        };
        Failure::new(kind, error.to_string())
    }
}

impl From<GuestFailure> for Failure {
    fn from(failure: GuestFailure) -> Failure {
        let kind = match failure {
            GuestFailure::DeadlineExceeded => FailureKind::DeadlineExceeded,
            GuestFailure::NoInstance(_) | GuestFailure::ModelOverloaded(_) => FailureKind::Overloaded,
            GuestFailure::MemoryExhausted(exhausted) => return exhausted.into(),
            GuestFailure::BadRequest(_) => FailureKind::BadRequest,
            GuestFailure::Trapped(_)
            | GuestFailure::TaskFailed(_)
            | GuestFailure::NoResponse
            | GuestFailure::AnsweredWithError(_) => FailureKind::Internal,
        };
        Failure::new(kind, failure.to_string())
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Failure {
        let kind = match &refusal {
            Refusal::Unauthenticated => FailureKind::Unauthorized,
            Refusal::Tenant(refusal) => FailureKind::TooManyRequests {
                retry_after_seconds: refusal.retry_after().as_secs_f64().ceil().max(1.0) as u64,
            },
        };
        Failure::new(kind, refusal.to_string())
    }
}

impl From<BodyRefusal> for Failure {
    fn from(refusal: BodyRefusal) -> Failure {
        let kind = match refusal {
            BodyRefusal::TooLarge(_) => FailureKind::TooLarge,
            BodyRefusal::Memory(exhausted) => return exhausted.into(),
            BodyRefusal::Late => FailureKind::DeadlineExceeded,
            BodyRefusal::Broken(_) => FailureKind::BadRequest,
        };
        Failure::new(kind, refusal.to_string())
    }
}

impl From<MemoryExhausted> for Failure {
    /// Too large if the request could never fit in the budget; else overloaded, for now.
    fn from(exhausted: MemoryExhausted) -> Failure {
        if exhausted.never_fits() {
            Failure::new(FailureKind::TooLarge, format!("{exhausted}: the request can never fit"))
        } else {
            Failure::new(FailureKind::Overloaded, exhausted.to_string())
        }
    }
}

impl From<DecodeError> for Failure {
    fn from(error: DecodeError) -> Failure {
        match error {
            DecodeError::Malformed(message) => Failure::new(FailureKind::BadRequest, message),
            DecodeError::Model(error) => Failure::new(FailureKind::Unprocessable, error.to_string()),
            DecodeError::Memory(exhausted) => exhausted.into(),
        }
    }
}

//! gRPC's answer to each kind of [`Failure`]: its status code (and, for a tenant over its
//! limits, `retry-after`), and the HTTP status each code counts as, so both protocols count
//! outcomes alike.

use http::HeaderValue;
use tonic::{Code, Status};

use crate::http::protocol::{Failure, FailureKind};
use crate::http::response::Body;

/// The status code of a failure of `kind`.
pub fn code_of(kind: FailureKind) -> Code {
    match kind {
        FailureKind::BadRequest | FailureKind::Unprocessable => Code::InvalidArgument,
        FailureKind::Unauthorized => Code::Unauthenticated,
        FailureKind::Forbidden => Code::PermissionDenied,
        FailureKind::NotFound => Code::NotFound,
        FailureKind::MethodNotAllowed => Code::Unimplemented,
        FailureKind::Conflict => Code::FailedPrecondition,
        FailureKind::TooLarge | FailureKind::TooManyRequests { .. } | FailureKind::Overloaded => {
            Code::ResourceExhausted
        }
        FailureKind::Internal => Code::Internal,
        // Repository calls carry their file: only a config-only load of a model whose file is
        // in a registry reaches one, and its failure is answered as the call's, like every
        // other pull's.
        FailureKind::Upstream => Code::InvalidArgument,
        FailureKind::Unavailable => Code::Unavailable,
        FailureKind::DeadlineExceeded => Code::DeadlineExceeded,
    }
}

impl From<Failure> for Status {
    fn from(failure: Failure) -> Status {
        Status::new(code_of(failure.kind), failure.message)
    }
}

/// The status of a domain error, through its [`Failure`].
pub fn status_of(error: impl Into<Failure>) -> Status {
    Status::from(error.into())
}

/// A trailers-only answer refusing a call for `failure`, with `retry-after` for a tenant
/// over its limits.
pub fn refused(failure: Failure) -> hyper::Response<Body> {
    let retry_after = match failure.kind {
        FailureKind::TooManyRequests { retry_after_seconds } => Some(retry_after_seconds),
        _ => None,
    };
    let mut answer = Status::from(failure).into_http();
    if let Some(seconds) = retry_after {
        answer.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    answer
}

/// The HTTP status a gRPC code stands for.
pub fn http_equivalent(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::ResourceExhausted | Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Cancelled => 499,
        _ => 500,
    }
}

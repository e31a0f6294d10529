//! The credentials a request presents in its headers, read in one place: a bearer token
//! (`authorization: Bearer TOKEN`, for a tenant's API key or the admin token), and the
//! admin token check every control-plane call goes through (the admin API, and the model
//! repository's calls over REST and gRPC).

use http::{HeaderMap, header};

use crate::http::protocol::{Failure, FailureKind};
use crate::node::Node;

/// The token of an `authorization: Bearer TOKEN` header, without surrounding whitespace.
pub fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?;
    value.as_bytes().strip_prefix(b"Bearer ").map(<[u8]>::trim_ascii)
}

/// Lets a call through if `headers` carry the admin token (401 otherwise).
pub fn require_admin_token(node: &Node, headers: &HeaderMap) -> Result<(), Failure> {
    match bearer_token(headers) {
        Some(token) if node.control().is_admin_token(token) => Ok(()),
        _ => Err(Failure::new(
            FailureKind::Unauthorized,
            "this call needs the admin token: Authorization: Bearer <token>",
        )),
    }
}

/// Lets model repository changes through on a listener that takes them (`taken_here`; 403
/// otherwise); the admin token is checked apart ([`require_admin_token`]).
pub fn allow_repository_changes(taken_here: bool) -> Result<(), Failure> {
    if taken_here {
        return Ok(());
    }
    Err(Failure::new(
        FailureKind::Forbidden,
        "model repository changes on this listener need server.admin_token_file; use the admin listener",
    ))
}

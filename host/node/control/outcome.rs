//! What a change to what the node serves answers: what it did, or why it was not made.

use serde::Serialize;

use crate::node::oci::OciError;
use crate::node::state::StateError;

/// Why a change was not made. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No route or model by that name.
    #[error("{0}")]
    NotFound(String),
    /// The change contradicts what is deployed (a path taken, a model in use, nothing to roll
    /// back to).
    #[error("{0}")]
    Conflict(String),
    /// The settings are malformed or out of bounds.
    #[error("{0:#}")]
    Invalid(anyhow::Error),
    /// The new version did not load: not a component, imports refused, a model that fails
    /// to load, ...
    #[error("{0:#}")]
    Rejected(anyhow::Error),
    /// The state folder failed (or named an artifact that is not there).
    #[error(transparent)]
    State(#[from] StateError),
    /// An artifact could not be pulled from its registry, or is not what it should be.
    #[error(transparent)]
    Pull(#[from] OciError),
    /// The node is still loading what it serves.
    #[error("the node is still loading; retry shortly")]
    Loading,
}

/// What a change did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Replaced,
    Unchanged,
    Deleted,
    RolledBack,
}

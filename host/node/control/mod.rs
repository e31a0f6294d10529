//! The control plane: every change to what the node serves — a route deployed, deleted or
//! rolled back, a model loaded or unloaded, the config file applied at start-up or on
//! SIGHUP — goes through `Node::change`, one at a time:
//!
//! 1. the desired state is edited (a copy; nothing serves it yet);
//! 2. a new [`Runtime`](crate::node::Runtime) is built from it beside the serving one: new
//!    models loaded and calibrated, new components compiled, their imports checked, one
//!    instance of each made; everything unchanged is reused as it is;
//! 3. the desired state is saved to the state folder (the commit point: a crash before it
//!    restarts on the old version, after it on the new);
//! 4. the new runtime is swapped in. Requests in flight finish on the version they started
//!    on, which is dropped when its last request ends.
//!
//! A change that fails at 1 or 2 changes nothing, and its error says why.
//!
//! Before a change, what it names is brought into the state folder (`artifacts`): a file
//! copied, an OCI artifact pulled (once per digest: a reference pinned by digest and already
//! pulled needs no registry), so a deployed version never depends on a registry again.
//!
//! The config file and the admin API both edit the desired state; the last word wins. The
//! file's entry for a route or model is applied when it differs from what the file said the
//! last time it was applied, so a restart with the same file keeps what the API deployed,
//! and an edited file (at restart or SIGHUP) deploys what it now says.
//!
//! Its parts: `changes` (what each change does, through `Node::change`), `build` (a new
//! runtime beside the serving one), `config_file` (the config file's entries, fetched and
//! applied), `artifacts` (bringing files into the state folder), `status` (what the admin API
//! reports), `token` (the admin token), `outcome` (what a change answers).

mod artifacts;
mod build;
mod changes;
mod config_file;
mod outcome;
mod status;
mod token;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

pub use self::outcome::{DeployError, Outcome};
pub use self::status::RouteStatus;
pub use self::token::admin_token;
use crate::node::Route;
use crate::node::models::LoadContext;
use crate::node::oci::Registries;
use crate::node::state::{DesiredState, StateDir};
use crate::request::memory::MemoryBudget;

/// How the control plane works.
pub struct ControlSettings {
    /// Keep compiled components in wasmtime's on-disk cache.
    pub compilation_cache: bool,
    /// What callers of the admin API must present.
    pub admin_token: String,
    /// Largest artifact accepted, in bytes.
    pub max_artifact_bytes: u64,
    /// Whether the main listener takes model repository changes (with the token): when it
    /// is on the loopback interface, or the token was configured (not made by the node).
    pub repository_changes_on_main_listener: bool,
    /// Whether the gRPC listener takes them (with the token): as the main listener does.
    pub repository_changes_on_grpc_listener: bool,
    /// How to reach OCI registries for `oci://` sources.
    pub registries: Registries,
    /// The main listener's scheme (`http` or `https`) and port, reported to fleet tools.
    pub public_listener: (&'static str, u16),
    /// Where models are charged, and what is remembered of them.
    pub models: LoadContext,
}

/// The node's desired state and the folder that keeps it.
pub struct ControlPlane {
    state: StateDir,
    settings: ControlSettings,
    /// The node's memory budget, which the guests of the routes it builds are charged to.
    memory: Arc<MemoryBudget>,
    /// Held for the whole of a change: one at a time.
    changing: tokio::sync::Mutex<()>,
    /// The desired state as last saved.
    desired: Mutex<DesiredState>,
    /// Route versions replaced by a change, until their last request ends.
    retired: Mutex<Vec<Weak<Route>>>,
}

impl ControlPlane {
    pub(super) fn new(state: StateDir, settings: ControlSettings, memory: Arc<MemoryBudget>) -> ControlPlane {
        ControlPlane {
            state,
            settings,
            memory,
            changing: tokio::sync::Mutex::new(()),
            desired: Mutex::new(DesiredState::default()),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// The `read_only_dirs` of the route `name`'s current and previous versions: the folders
    /// the node's config gave it, which the admin API may restate but not change.
    pub fn read_only_dirs_of(&self, name: &str) -> Vec<BTreeMap<String, PathBuf>> {
        let desired = self.desired.lock().unwrap();
        let record = desired.routes.get(name);
        let versions =
            record.into_iter().flat_map(|record| [Some(&record.current), record.previous.as_ref()]);
        versions.flatten().map(|version| version.settings.read_only_dirs.clone()).collect()
    }

    /// The main listener's scheme and port.
    pub fn public_listener(&self) -> (&'static str, u16) {
        self.settings.public_listener
    }

    /// The state folder (uploads go straight to it).
    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// Largest artifact accepted, in bytes.
    pub fn max_artifact_bytes(&self) -> u64 {
        self.settings.max_artifact_bytes
    }

    /// Whether the main listener takes model repository changes.
    pub fn repository_changes_on_main_listener(&self) -> bool {
        self.settings.repository_changes_on_main_listener
    }

    /// The models unloaded through the repository API, which a load by name brings back.
    pub fn unloaded_models(&self) -> Vec<String> {
        self.desired.lock().unwrap().unloaded.keys().cloned().collect()
    }

    /// Whether the gRPC listener takes model repository changes.
    pub fn repository_changes_on_grpc_listener(&self) -> bool {
        self.settings.repository_changes_on_grpc_listener
    }
}

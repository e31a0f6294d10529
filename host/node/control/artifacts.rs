//! Bringing what a change names into the state folder: a file copied, an artifact already
//! there claimed, an OCI artifact pulled (checked to be the kind it should be) unless the
//! reference pins a digest already pulled.

use std::collections::BTreeMap;

use tracing::info;

use super::{ControlPlane, DeployError};
use crate::node::config::Source;
use crate::node::digest::Digest;
use crate::node::oci::{ArtifactKind, OciReference};
use crate::node::state::StateError;

/// An artifact brought into the state folder.
pub(super) struct Fetched {
    /// Its name in the state folder.
    pub(super) digest: Digest,
    /// The reference it was pulled from, pinned by digest (none for a file or an upload).
    pub(super) pinned: Option<OciReference>,
}

impl Fetched {
    /// The digest, noting in `sources` where it was pulled from.
    pub(super) fn keep_source(self, sources: &mut BTreeMap<Digest, OciReference>) -> Digest {
        if let Some(pinned) = self.pinned {
            sources.insert(self.digest.clone(), pinned);
        }
        self.digest
    }
}

impl ControlPlane {
    /// Brings the artifact `source` names into the state folder: a file is copied; an OCI
    /// artifact is pulled (and checked to be `kind`), unless the reference pins a digest
    /// already pulled.
    pub(super) async fn fetch(&self, source: &Source, kind: ArtifactKind) -> Result<Fetched, DeployError> {
        let state = &self.state;
        let stored = |digest: &Digest| Fetched { digest: digest.clone(), pinned: None };
        match source {
            Source::File(path) => Ok(stored(&tokio::task::block_in_place(|| state.import(path))?)),
            Source::Stored(digest) if state.claim(digest) => Ok(stored(digest)),
            Source::Stored(digest) => Err(StateError::UnknownArtifact(digest.clone()).into()),
            Source::Oci(reference) => {
                if let Some(manifest) = reference.digest() {
                    let pinned = reference.pinned(&manifest);
                    let desired = self.desired.lock().unwrap();
                    let pulled = desired.sources.iter().find(|(_, source)| **source == pinned);
                    if let Some((digest, _)) = pulled.filter(|(digest, _)| state.claim(digest)) {
                        return Ok(Fetched { digest: digest.clone(), pinned: Some(pinned) });
                    }
                }
                let limit = self.settings.max_artifact_bytes;
                let mut upload = state.upload(limit)?;
                let pinned = self.settings.registries.pull(reference, kind, limit, &mut upload).await?;
                let digest = tokio::task::block_in_place(|| upload.finish())?;
                info!(%reference, %pinned, %digest, "pulled");
                Ok(Fetched { digest, pinned: Some(pinned) })
            }
        }
    }
}

//! The state folder: what was deployed to this node, kept so that a restart, a crash or a
//! `kill -9` at any moment brings back exactly the last complete deploy.
//!
//! ```text
//! STATE_DIR/
//!   lock                 held (flock) by the one process using the folder
//!   state.json           the desired state: routes and models, each naming its file by digest
//!   artifacts/sha256/HEX components and models, named by the sha256 of their bytes
//!   admin-token          the admin API's token, when made here (owner-only)
//! ```
//!
//! Every file is written whole to a temporary name, flushed to disk, renamed into place, and
//! the folder flushed: a reader sees the old file or the new one, never a part. A deploy
//! writes its artifacts first and `state.json` last, so `state.json` only ever names files
//! that are complete. Artifacts are checked against their digest each time they are read.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::node::config::{EnsembleConfig, ModelConfig, RouteConfig};
use crate::node::digest::Digest;
use crate::node::oci::OciReference;

/// Unreferenced artifacts younger than this are kept: they may be uploads that a deploy is
/// about to name.
const UNREFERENCED_ARTIFACT_GRACE: Duration = Duration::from_secs(3600);

/// A deployed route: its component named by digest.
pub type RouteSpec = RouteConfig<Digest>;
/// A deployed model: its file named by digest.
pub type ModelSpec = ModelConfig<Digest>;

/// What the node should serve: every route and model, by name; and what the config file
/// said when it was last applied.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    #[serde(default)]
    pub routes: BTreeMap<String, RouteRecord>,
    #[serde(default)]
    pub models: BTreeMap<String, ModelSpec>,
    /// Models unloaded through the model repository API (Triton's unload): not served, but
    /// kept, with their files, to be loaded again by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unloaded: BTreeMap<String, ModelSpec>,
    /// Ensembles (from the config file), by name.
    #[serde(default)]
    pub ensembles: BTreeMap<String, EnsembleConfig>,
    #[serde(default)]
    pub config_applied: ConfigApplied,
    /// Where each artifact pulled from a registry came from, pinned by digest.
    #[serde(default)]
    pub sources: BTreeMap<Digest, OciReference>,
}

/// One route: the version serving, and the one before it (for rollback).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRecord {
    pub current: RouteSpec,
    #[serde(default)]
    pub previous: Option<RouteSpec>,
}

/// The digest of each entry of the config file when the file was last applied, by name;
/// kept whatever the API did to the entry since.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigApplied {
    #[serde(default)]
    pub routes: BTreeMap<String, Digest>,
    #[serde(default)]
    pub models: BTreeMap<String, Digest>,
    #[serde(default)]
    pub ensembles: BTreeMap<String, Digest>,
}

impl DesiredState {
    /// Every artifact a version in this state names (current or previous).
    pub fn artifacts(&self) -> HashSet<Digest> {
        let routes = self.routes.values().flat_map(|r| [Some(&r.current), r.previous.as_ref()]).flatten();
        let models = self.models.values().chain(self.unloaded.values()).map(|model| &model.file);
        routes.map(|route| route.component.clone()).chain(models.cloned()).collect()
    }
}

/// Why the state folder could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("the state folder {} is in use by another edge-infer process", .0.display())]
    InUse(PathBuf),
    #[error("{} is not a valid state file: {source}", path.display())]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("no artifact {0} in the state folder: upload it first (PUT /admin/artifacts)")]
    UnknownArtifact(Digest),
    #[error("artifact {digest} is damaged: its bytes hash to {actual}")]
    Damaged { digest: Digest, actual: Digest },
    #[error("the upload is over the limit of {0} bytes (server.max_artifact_bytes)")]
    TooLarge(u64),
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + use<'a> {
    move |source| StateError::Io { what, path: path.to_path_buf(), source }
}

/// Reads one artifact of the state folder, checked against its digest.
#[derive(Clone, Debug)]
pub struct ArtifactReader {
    path: PathBuf,
    digest: Digest,
}

impl ArtifactReader {
    /// The artifact's size in bytes (an error if it is not there).
    pub fn size(&self) -> Result<u64, StateError> {
        match fs::metadata(&self.path) {
            Ok(metadata) => Ok(metadata.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StateError::UnknownArtifact(self.digest.clone()))
            }
            Err(e) => Err(StateError::Io { what: "reading", path: self.path.clone(), source: e }),
        }
    }

    /// The artifact's bytes, checked against its digest.
    pub fn read(&self) -> Result<Vec<u8>, StateError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::UnknownArtifact(self.digest.clone()));
            }
            Err(e) => return Err(StateError::Io { what: "reading", path: self.path.clone(), source: e }),
        };
        let actual = Digest::of(&bytes);
        if actual != self.digest {
            return Err(StateError::Damaged { digest: self.digest.clone(), actual });
        }
        Ok(bytes)
    }
}

/// The state folder, locked for this process.
pub struct StateDir {
    root: PathBuf,
    /// Held for as long as the folder is in use; the lock goes with it.
    _lock: File,
    /// Whether the folder was made for this process only, and goes when it exits.
    temporary: bool,
}

impl StateDir {
    /// Opens (making it if needed) and locks the state folder at `root`.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        Self::open_as(root, false)
    }

    /// A state folder for this process only, under the system's temporary folder, removed
    /// when the process exits; left-overs of processes that are gone are removed first.
    pub fn temporary() -> Result<StateDir, StateError> {
        let parent = std::env::temp_dir();
        remove_abandoned(&parent);
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let root = parent.join(format!("{TEMPORARY_PREFIX}{}-{nanos}", std::process::id()));
        Self::open_as(&root, true)
    }

    fn open_as(root: &Path, temporary: bool) -> Result<StateDir, StateError> {
        let artifacts = root.join("artifacts/sha256");
        fs::create_dir_all(&artifacts).map_err(io_error("making", &artifacts))?;
        // What is deployed, and the admin token, are the owner's business only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                .map_err(io_error("protecting", root))?;
        }
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error("opening", &lock_path))?;
        if lock.try_lock().is_err() {
            return Err(StateError::InUse(root.to_path_buf()));
        }
        let state = StateDir { root: root.to_path_buf(), _lock: lock, temporary };
        state.remove_partial_files();
        Ok(state)
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }

    fn artifact_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("artifacts/sha256").join(digest.hex())
    }

    /// The desired state last saved (empty in a new folder).
    pub fn load(&self) -> Result<DesiredState, StateError> {
        let path = self.state_file();
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(DesiredState::default()),
            Err(e) => Err(StateError::Io { what: "reading", path, source: e }),
        }
    }

    /// Saves `state` atomically: after a crash, the old state or this one, never a mix.
    pub fn save(&self, state: &DesiredState) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(state).expect("the state serializes");
        write_atomically(&self.state_file(), &json, false)
    }

    /// Stores `bytes` as an artifact and returns its digest (storing the same bytes twice
    /// keeps one copy).
    pub fn store(&self, bytes: &[u8]) -> Result<Digest, StateError> {
        let digest = Digest::of(bytes);
        let path = self.artifact_path(&digest);
        if path.is_file() {
            // Stored again: young again, so it is not collected before the deploy naming it.
            touch(&path)?;
        } else {
            write_atomically(&path, bytes, false)?;
        }
        Ok(digest)
    }

    /// Starts storing an artifact that arrives in pieces (at most `limit` bytes), hashed as
    /// it is written, never held whole in memory.
    pub fn upload(&self, limit: u64) -> Result<Upload<'_>, StateError> {
        let partial = self.root.join(format!("artifacts/{UPLOAD_PREFIX}{}", unique_suffix()));
        let file = File::create_new(&partial).map_err(io_error("creating", &partial))?;
        Ok(Upload { state: self, partial, file, hasher: Sha256::new(), received: 0, limit })
    }

    /// Copies the file at `path` into the artifacts and returns its digest.
    pub fn import(&self, path: &Path) -> Result<Digest, StateError> {
        let bytes = fs::read(path).map_err(io_error("reading", path))?;
        self.store(&bytes)
    }

    /// Whether the artifact is there (not checked); if it is, it counts as new again, so it
    /// is not collected before the change about to name it is saved.
    pub fn claim(&self, digest: &Digest) -> bool {
        touch(&self.artifact_path(digest)).is_ok()
    }

    /// The artifact's bytes, checked against its digest.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, StateError> {
        self.reader(digest).read()
    }

    /// What reads the artifact again later, on any thread (a model loaded again after an
    /// eviction).
    pub fn reader(&self, digest: &Digest) -> ArtifactReader {
        ArtifactReader { path: self.artifact_path(digest), digest: digest.clone() }
    }

    /// Whether the folder goes when the process exits (no state folder was configured).
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// Makes the artifacts a change stopped naming young again, so they are kept an hour:
    /// a roll-back may name them again.
    pub fn release(&self, released: impl IntoIterator<Item = Digest>) {
        for digest in released {
            let _ = touch(&self.artifact_path(&digest));
        }
    }

    /// Removes artifacts that `keep` does not name and that are older than an hour (younger
    /// ones may be uploads a deploy is about to name, or versions a change just released).
    pub fn collect_garbage(&self, keep: &HashSet<Digest>) {
        let folder = self.root.join("artifacts/sha256");
        for entry in fs::read_dir(&folder).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let artifact = Digest::try_from(format!("sha256:{name}"));
            let referenced = artifact.as_ref().is_ok_and(|digest| keep.contains(digest));
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > UNREFERENCED_ARTIFACT_GRACE);
            if artifact.is_ok() && !referenced && old {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Removes the temporary files and partial uploads a crash left behind. Only at opening:
    /// once the folder is locked, no other process writes to it, and this one has not yet.
    fn remove_partial_files(&self) {
        for folder in [self.root.clone(), self.root.join("artifacts"), self.root.join("artifacts/sha256")] {
            for entry in fs::read_dir(&folder).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(TEMPORARY_FILE_PREFIX) || name.starts_with(UPLOAD_PREFIX) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Writes `bytes` to `name` in the folder, atomically, readable by the owner only.
    pub fn write_private(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, StateError> {
        let path = self.root.join(name);
        write_atomically(&path, bytes, true)?;
        Ok(path)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// An artifact being received; the partial file goes unless [`Upload::finish`] completes.
pub struct Upload<'a> {
    state: &'a StateDir,
    partial: PathBuf,
    file: File,
    hasher: Sha256,
    received: u64,
    limit: u64,
}

impl Upload<'_> {
    /// Appends the next piece.
    pub fn write(&mut self, piece: &[u8]) -> Result<(), StateError> {
        self.received += piece.len() as u64;
        if self.received > self.limit {
            return Err(StateError::TooLarge(self.limit));
        }
        self.hasher.update(piece);
        self.file.write_all(piece).map_err(io_error("writing", &self.partial))
    }

    /// Flushes the artifact to disk, names it by its digest, and returns the digest.
    pub fn finish(self) -> Result<Digest, StateError> {
        self.file.sync_all().map_err(io_error("flushing", &self.partial))?;
        let digest = Digest::from_hasher(self.hasher.clone());
        let path = self.state.artifact_path(&digest);
        fs::rename(&self.partial, &path).map_err(io_error("renaming into", &path))?;
        sync_parent(&path)?;
        Ok(digest)
    }
}

/// An upload as a writer, for a registry's stream.
impl Write for Upload<'_> {
    fn write(&mut self, piece: &[u8]) -> io::Result<usize> {
        Upload::write(self, piece).map_err(io::Error::other)?;
        Ok(piece.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        // After `finish` the partial file is renamed away and this finds nothing.
        let _ = fs::remove_file(&self.partial);
    }
}

/// Names of the temporary state folders in the system's temporary folder.
const TEMPORARY_PREFIX: &str = "edge-infer-state-";
/// Names of files being written, and of uploads being received.
const TEMPORARY_FILE_PREFIX: &str = ".tmp-";
const UPLOAD_PREFIX: &str = "upload-";
/// A temporary state folder younger than this may belong to a process that has made it but
/// not locked it yet.
const ABANDONED_AFTER: Duration = Duration::from_secs(60);

/// Removes temporary state folders whose process is gone (their lock is free).
fn remove_abandoned(parent: &Path) {
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().starts_with(TEMPORARY_PREFIX) {
            continue;
        }
        let age = entry.metadata().and_then(|m| m.modified()).map(|t| t.elapsed().unwrap_or_default());
        if !age.is_ok_and(|age| age > ABANDONED_AFTER) {
            continue;
        }
        let Ok(lock) = File::open(entry.path().join("lock")) else { continue };
        if lock.try_lock().is_ok() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A name part no other file of this process or another has: the process id and a count.
fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Sets a file's modification time to now.
fn touch(path: &Path) -> Result<(), StateError> {
    let touched = File::options().write(true).open(path).and_then(|f| f.set_modified(SystemTime::now()));
    touched.map_err(io_error("touching", path))
}

/// Writes `bytes` to `path` through a temporary file in the same folder: flushed, renamed
/// over `path`, and the folder flushed so the rename itself survives a power cut. A
/// `private` file is readable by its owner only, from its creation.
fn write_atomically(path: &Path, bytes: &[u8], private: bool) -> Result<(), StateError> {
    let folder = path.parent().expect("state files live in a folder");
    let temporary = folder.join(format!("{TEMPORARY_FILE_PREFIX}{}", unique_suffix()));
    let written = (|| {
        let mut options = File::options();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut file = options.open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(source) = written {
        let _ = fs::remove_file(&temporary);
        return Err(StateError::Io { what: "writing", path: temporary, source });
    }
    fs::rename(&temporary, path).map_err(io_error("renaming into", path))?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> Result<(), StateError> {
    let folder = path.parent().expect("state files live in a folder");
    File::open(folder).and_then(|f| f.sync_all()).map_err(io_error("flushing", folder))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_checked_when_read() {
        let folder = tempfile::tempdir().unwrap();
        let state = StateDir::open(folder.path()).unwrap();
        let digest = state.store(b"component bytes").unwrap();
        assert_eq!(state.read(&digest).unwrap(), b"component bytes");
        let mut upload = state.upload(100).unwrap();
        upload.write(b"component ").unwrap();
        upload.write(b"bytes").unwrap();
        assert_eq!(upload.finish().unwrap(), digest);
        let mut too_large = state.upload(100).unwrap();
        too_large.write(&[0u8; 60]).unwrap();
        assert!(matches!(too_large.write(&[0u8; 41]), Err(StateError::TooLarge(100))));
        drop(too_large);
        let left: Vec<_> = fs::read_dir(folder.path().join("artifacts")).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only the sha256 folder: the partial upload is gone");

        fs::write(state.artifact_path(&digest), b"component bytez").unwrap();
        assert!(matches!(state.read(&digest), Err(StateError::Damaged { .. })));
        let unknown = Digest::of(b"never stored");
        assert!(matches!(state.read(&unknown), Err(StateError::UnknownArtifact(_))));
    }

    #[test]
    fn one_process_per_folder_and_the_state_survives_reopening() {
        let folder = tempfile::tempdir().unwrap();
        let state = StateDir::open(folder.path()).unwrap();
        assert!(matches!(StateDir::open(folder.path()), Err(StateError::InUse(_))));
        assert_eq!(state.load().unwrap(), DesiredState::default());
        let mut desired = DesiredState::default();
        let model =
            toml::from_str::<ModelConfig<Digest>>(&format!("file = \"{}\"", Digest::of(b"m"))).unwrap();
        desired.models.insert("m".into(), model);
        state.save(&desired).unwrap();
        drop(state);
        let reopened = StateDir::open(folder.path()).unwrap();
        assert_eq!(reopened.load().unwrap(), desired);
        assert_eq!(reopened.load().unwrap().artifacts(), HashSet::from([Digest::of(b"m")]));
    }

    #[test]
    fn temporary_folders_go_with_their_process() {
        let state = StateDir::temporary().unwrap();
        let root = state.root().to_path_buf();
        assert!(root.is_dir());
        drop(state);
        assert!(!root.exists());
    }
}

//! What loading a model measured, remembered across restarts, so that the next start makes
//! the same choices at once instead of measuring again: the model's signature, the engine
//! `backend = "auto"` chose (with every candidate's time), the batching measurement, and the
//! memory the loaded model held.
//!
//! Entries are keyed by what the measurement depends on: the model (its file's digest and its
//! settings, as the caller names them) and the machine ([`machine`]: the CPU model, the core
//! count, the ONNX Runtime library, the GPU feature). A change of any of them misses, and the
//! model is measured again. A measurement taken while other processes kept the CPU busy is
//! not remembered: it says little about the quiet machine the node will mostly run on.
//!
//! The file (`measurements.json`) is written whole to a temporary name and renamed, so a
//! reader sees the old file or the new one; a file that cannot be read is ignored (the models
//! are measured again), never an error: it only saves time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::inference::batching::calibration::Measurement;
use crate::inference::tensor::Signature;

/// The file's format, bumped when what is remembered changes meaning.
const FORMAT: u32 = 1;

/// What loading one model on this machine measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Remembered {
    /// The model's inputs and outputs, as its engine reads them.
    pub signature: Signature,
    /// The engine that runs it (`tract`, `ort`, `ort-cuda`).
    pub engine: String,
    /// For `backend = "auto"`: each candidate engine's time, as the choice logged it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<String>,
    /// For `batching = "auto"`: time per item alone and in batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Measurement>,
    /// The memory the loaded model held: weights, sessions, arenas.
    pub resident_bytes: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    format: u32,
    /// By [`key`].
    entries: BTreeMap<String, Remembered>,
}

/// The remembered measurements of a node, kept in one file (or nowhere).
pub struct Measurements {
    path: Option<PathBuf>,
    machine: String,
    entries: Mutex<BTreeMap<String, Remembered>>,
}

impl Measurements {
    /// The measurements remembered in `path` (none if it cannot be read), to be kept there.
    pub fn open(path: PathBuf) -> Measurements {
        let entries = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<File>(&bytes) {
                Ok(file) if file.format == FORMAT => file.entries,
                Ok(_) => BTreeMap::new(),
                Err(e) => {
                    warn!(path = %path.display(), "ignoring unreadable model measurements ({e}); models are measured again");
                    BTreeMap::new()
                }
            },
            Err(_) => BTreeMap::new(),
        };
        Measurements { path: Some(path), machine: machine(), entries: Mutex::new(entries) }
    }

    /// Measurements that are never kept: every start measures.
    pub fn forgetful() -> Measurements {
        Measurements { path: None, machine: machine(), entries: Mutex::default() }
    }

    /// What was measured for `model` (its file's digest and settings, as the caller names
    /// them) on this machine.
    pub fn recall(&self, model: &str) -> Option<Remembered> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(&self.key(model)).cloned()
    }

    /// Remembers what was measured for `model`, and writes the file.
    pub fn remember(&self, model: &str, measured: Remembered) {
        let Some(path) = &self.path else { return };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(self.key(model), measured);
        let file = File { format: FORMAT, entries: entries.clone() };
        let json = serde_json::to_vec_pretty(&file).expect("measurements serialize");
        if let Err(e) = write_whole(path, &json) {
            warn!(path = %path.display(), "cannot keep model measurements: {e}");
        }
    }

    fn key(&self, model: &str) -> String {
        format!("{model} on {}", self.machine)
    }
}

/// What a measurement depends on besides the model: the CPU model and core count, the ONNX
/// Runtime library the node loads (and its size, which a new release changes), and whether
/// this build can use a GPU.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let onnxruntime = crate::inference::backend::onnxruntime_library()
        .map(|path| {
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            format!("{} ({size} bytes)", path.display())
        })
        .unwrap_or_else(|| "none".to_string());
    let gpu = if cfg!(feature = "gpu") { "gpu build" } else { "cpu build" };
    format!("{cpu}, {cores} cores, onnxruntime {onnxruntime}, {gpu}")
}

/// Writes `bytes` to a temporary file beside `path` and renames it into place.
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder)?;
    }
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let temporary = path.with_extension(format!("json.{}-{nanos}.partial", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temporary);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::tensor::{Dim, ElementType, TensorSpec};

    fn remembered(engine: &str) -> Remembered {
        let spec = TensorSpec {
            name: "x".into(),
            element_type: ElementType::F32,
            shape: vec![Dim::Any, Dim::Fixed(4)],
            batch_axis: Some(0),
            sequence_axis: None,
        };
        Remembered {
            signature: Signature { inputs: vec![spec.clone()], outputs: vec![spec] },
            engine: engine.into(),
            candidates: Some("tract_ms=1 ort_ms=2".into()),
            batching: Some(Measurement { single: 2e-3, batched: 1e-3, batches: vec![32] }),
            resident_bytes: 1 << 20,
        }
    }

    #[test]
    fn what_is_remembered_is_recalled_by_the_next_start_and_other_models_miss() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("measurements.json");
        Measurements::open(path.clone()).remember("sha256:aa", remembered("ort"));
        let next = Measurements::open(path);
        assert_eq!(next.recall("sha256:aa"), Some(remembered("ort")));
        assert_eq!(next.recall("sha256:bb"), None);
    }

    #[test]
    fn an_unreadable_file_is_ignored_and_replaced() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("measurements.json");
        std::fs::write(&path, b"{ not json").unwrap();
        let measurements = Measurements::open(path.clone());
        assert_eq!(measurements.recall("m"), None);
        measurements.remember("m", remembered("tract"));
        assert_eq!(Measurements::open(path).recall("m"), Some(remembered("tract")));
    }

    #[test]
    fn a_forgetful_store_keeps_nothing() {
        let measurements = Measurements::forgetful();
        measurements.remember("m", remembered("tract"));
        assert_eq!(measurements.recall("m"), None);
    }

    #[test]
    fn the_machine_names_the_cores() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert!(machine().contains(&format!("{cores} cores")), "{}", machine());
    }
}

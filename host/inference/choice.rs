//! Which engine runs a model: the one its `backend` setting names, or for `auto` the GPU if
//! one is usable, else the fastest of the CPU engines that load the model; or the engine an
//! earlier load chose ([`load_engine`]), when the model is loaded again.
//!
//! `auto` without a GPU loads the model with every CPU engine ([`CPU_ENGINES`]); one that
//! cannot load it is skipped, its reason logged. Each engine that loads it runs one request
//! alone ([`Trial`]), its outputs compared with those of the first engine that could run, and
//! the engines that agree are timed in turns over [`ROUNDS`] rounds, so that a moment of
//! noise weighs on all of them. The preferred engine (the first) is kept unless another's
//! median is faster by more than [`MARGIN`]. The log line gives every candidate's time and
//! the choice. Only a model that no engine loads fails, with every engine's reason.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tracing::{info, warn};

use crate::inference::backend::{self, Backend, BackendKind, CPU_ENGINES};
use crate::inference::batching::calibration::{ROUNDS, Trial, median};
use crate::inference::tensor::{ElementType, Tensor};

/// Outputs of two engines differing by more than this share of the largest output value mean
/// they do not compute the same thing.
const AGREEMENT: f64 = 1e-3;

/// Another engine replaces the preferred one only if its time is below this share of the
/// preferred one's: a gain within the noise of a measurement is no gain.
pub const MARGIN: f64 = 0.9;

/// Time spent timing each engine, split between the rounds.
const BUDGET_PER_ENGINE: Duration = Duration::from_millis(150);

/// The names of the engines, as backends give them.
const ENGINES: [&str; 3] = ["tract", "ort", "ort-cuda"];

/// A loaded model and, for `auto`, how its engine was chosen.
pub struct Chosen {
    pub backend: Box<dyn Backend>,
    /// Each candidate engine's time, as the log gave it (for `auto` on the CPU).
    pub candidates: Option<String>,
}

/// Loads the ONNX model at `path` with the backend `kind` asks for.
pub fn load_file(name: &str, kind: BackendKind, path: &Path) -> anyhow::Result<Box<dyn Backend>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(load(name, kind, bytes)?.backend)
}

/// The engine called `engine` (`tract`, `ort`, `ort-cuda`), as a name that lives as long as
/// the process; `None` for a name no engine has.
pub fn engine_named(engine: &str) -> Option<&'static str> {
    ENGINES.into_iter().find(|known| *known == engine)
}

/// Loads the ONNX model in `bytes` with the engine called `engine` (one an earlier load
/// chose), measuring nothing.
pub fn load_engine(engine: &str, bytes: Vec<u8>) -> anyhow::Result<Box<dyn Backend>> {
    match engine {
        "tract" => backend::load_tract(bytes),
        "ort" => backend::load_ort_cpu(bytes),
        "ort-cuda" => backend::load_gpu(bytes),
        other => anyhow::bail!("no engine is called {other:?}"),
    }
}

/// Loads the ONNX model in `bytes` with the backend `kind` asks for.
pub fn load(name: &str, kind: BackendKind, bytes: Vec<u8>) -> anyhow::Result<Chosen> {
    let chosen = |backend| Ok(Chosen { backend, candidates: None });
    match kind {
        BackendKind::Cpu | BackendKind::Tract => chosen(backend::load_tract(bytes)?),
        BackendKind::Gpu => chosen(
            backend::load_gpu(bytes)
                .map_err(|reason| anyhow::anyhow!("backend = \"gpu\", but no GPU is usable: {reason:#}"))?,
        ),
        BackendKind::Auto => match backend::load_gpu(bytes.clone()) {
            Ok(backend) => {
                info!(model = %name, "backend auto: using the GPU");
                chosen(backend)
            }
            Err(no_gpu) => {
                let loaded =
                    CPU_ENGINES.iter().map(|engine| (engine.name, (engine.load)(bytes.clone()))).collect();
                Ok(fastest_on_the_cpu(name, loaded, &no_gpu)?)
            }
        },
        BackendKind::Ort => match backend::load_ort_cpu(bytes.clone()) {
            Ok(backend) => chosen(backend),
            Err(reason) => {
                warn!(model = %name, "backend ort: falling back to tract ({reason:#})");
                chosen(backend::load_tract(bytes)?)
            }
        },
    }
}

/// Why `auto` found no engine for a model: why no GPU is usable, and why each CPU engine
/// cannot load the model.
#[derive(Debug, thiserror::Error)]
pub struct NoEngineLoads {
    /// Each engine's name and reason, the GPU's first.
    pub reasons: Vec<(&'static str, String)>,
}

impl fmt::Display for NoEngineLoads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("backend auto: no engine loads the model")?;
        for (engine, reason) in &self.reasons {
            write!(f, "; {engine}: {reason}")?;
        }
        Ok(())
    }
}

/// Of the CPU engines in `loaded` (each engine's name and the model it loaded, or why it
/// could not), the one that runs a request alone fastest (see the module's doc), measured now
/// on synthesized inputs among those whose outputs agree with the first engine that ran.
/// With one engine loaded, that one, unmeasured; with none that could run, the first loaded.
/// Logs every candidate's time, what was left out and why, and the choice; `no_gpu` is why no
/// GPU is usable.
fn fastest_on_the_cpu(
    name: &str,
    loaded: Vec<(&'static str, anyhow::Result<Box<dyn Backend>>)>,
    no_gpu: &anyhow::Error,
) -> Result<Chosen, NoEngineLoads> {
    let mut candidates = Vec::new();
    let mut left_out = Vec::new();
    for (engine, result) in loaded {
        match result {
            Ok(backend) => candidates.push(backend),
            Err(reason) => left_out.push((engine, format!("cannot load the model: {reason:#}"))),
        }
    }
    if candidates.is_empty() {
        let mut reasons = vec![("gpu", format!("{no_gpu:#}"))];
        reasons.extend(left_out);
        return Err(NoEngineLoads { reasons });
    }
    if candidates.len() == 1 {
        let only = candidates.remove(0);
        info!(
            model = %name,
            "backend auto: using {} on the CPU (no usable GPU: {no_gpu:#}){}",
            only.name(),
            notes(&left_out),
        );
        return Ok(Chosen { backend: only, candidates: None });
    }
    // A trial of each candidate that runs, and whose outputs agree with the first's.
    let mut trials: Vec<(usize, Trial)> = Vec::new();
    for (index, candidate) in candidates.iter().enumerate() {
        let trial = match Trial::new(candidate.as_ref()) {
            Ok(trial) => trial,
            Err(reason) => {
                left_out.push((candidate.name(), format!("cannot be measured: {reason}")));
                continue;
            }
        };
        if let Some((first, reference)) = trials.first() {
            let difference = largest_difference(&reference.outputs, &trial.outputs);
            if difference > AGREEMENT {
                let first = candidates[*first].name();
                warn!(model = %name, difference, "{}'s outputs differ from {first}'s", candidate.name());
                left_out.push((candidate.name(), format!("its outputs differ from {first}'s")));
                continue;
            }
        }
        trials.push((index, trial));
    }
    // Each trial's times, the engines taking turns round by round.
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); trials.len()];
    let mut failed = vec![None; trials.len()];
    for _ in 0..ROUNDS {
        for (slot, (_, trial)) in trials.iter_mut().enumerate() {
            if failed[slot].is_some() {
                continue;
            }
            match trial.time(BUDGET_PER_ENGINE / ROUNDS as u32) {
                Ok(seconds) => times[slot].push(seconds),
                Err(reason) => failed[slot] = Some(reason),
            }
        }
    }
    let mut timed: Vec<(usize, f64)> = Vec::new();
    for (slot, (index, _)) in trials.iter().enumerate() {
        match failed[slot].take() {
            Some(reason) => {
                left_out.push((candidates[*index].name(), format!("cannot be measured: {reason}")))
            }
            None => timed.push((*index, median(std::mem::take(&mut times[slot])))),
        }
    }
    drop(trials);
    let Some(&(preferred, preferred_seconds)) = timed.first() else {
        let first = candidates.remove(0);
        info!(
            model = %name,
            "backend auto: using {} on the CPU (no GPU; the engines could not be compared){}",
            first.name(),
            notes(&left_out),
        );
        return Ok(Chosen { backend: first, candidates: None });
    };
    let (fastest, fastest_seconds) =
        timed.iter().copied().reduce(|best, next| if next.1 < best.1 { next } else { best }).unwrap();
    let chosen = if fastest_seconds < preferred_seconds * MARGIN { fastest } else { preferred };
    let times: Vec<String> = timed
        .iter()
        .map(|&(index, seconds)| format!("{}_ms={}", candidates[index].name(), seconds * 1e3))
        .collect();
    let preferred_name = candidates[preferred].name();
    let chosen = candidates.swap_remove(chosen);
    let times = times.join(" ");
    info!(
        model = %name,
        candidates = %times,
        "backend auto: using {} on the CPU (no GPU; the fastest for one request alone, by more than {:.0}% to replace {}){}",
        chosen.name(),
        (1.0 - MARGIN) * 100.0,
        preferred_name,
        notes(&left_out),
    );
    Ok(Chosen { backend: chosen, candidates: Some(times) })
}

/// The engines left out of a choice and why, to follow its log message (nothing if none).
fn notes(left_out: &[(&'static str, String)]) -> String {
    left_out.iter().map(|(engine, reason)| format!("; {engine} {reason}")).collect()
}

/// The largest difference between two sets of float outputs, as a share of the largest value
/// (0 where there are no float outputs to compare).
fn largest_difference(a: &[Tensor], b: &[Tensor]) -> f64 {
    let floats = |t: &Tensor| -> Vec<f64> {
        if t.element_type != ElementType::F32 {
            return Vec::new();
        }
        t.data.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()
    };
    let mut largest_value = f64::MIN_POSITIVE;
    let mut largest_difference: f64 = 0.0;
    for (x, y) in a.iter().zip(b) {
        if x.shape != y.shape {
            return f64::INFINITY;
        }
        for (p, q) in floats(x).into_iter().zip(floats(y)) {
            largest_value = largest_value.max(p.abs());
            largest_difference = largest_difference.max((p - q).abs());
        }
    }
    largest_difference / largest_value
}

#[cfg(test)]
mod tests {
    use prost_onnx::Message;
    use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};
    use tract_onnx::pb::{
        GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
        ValueInfoProto, type_proto,
    };

    use super::*;

    /// A float tensor `[batch, 4]` named `name`, as an ONNX graph declares it.
    fn declared(name: &str) -> ValueInfoProto {
        let dims = [dimension::Value::DimParam("batch".into()), dimension::Value::DimValue(4)];
        let shape = TensorShapeProto {
            dim: dims
                .into_iter()
                .map(|value| Dimension { value: Some(value), ..Dimension::default() })
                .collect(),
        };
        let tensor = type_proto::Tensor { elem_type: 1, shape: Some(shape) };
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(tensor)),
                ..TypeProto::default()
            }),
            ..ValueInfoProto::default()
        }
    }

    /// A model that adds `constant` to a float input `x [batch, 4]`.
    fn adds(constant: f32) -> Vec<u8> {
        let node = NodeProto {
            op_type: "Add".into(),
            input: vec!["x".into(), "c".into()],
            output: vec!["y".into()],
            ..NodeProto::default()
        };
        let c = TensorProto {
            name: "c".into(),
            dims: vec![1],
            data_type: 1,
            float_data: vec![constant],
            ..TensorProto::default()
        };
        let graph = GraphProto {
            node: vec![node],
            initializer: vec![c],
            input: vec![declared("x")],
            output: vec![declared("y")],
            ..GraphProto::default()
        };
        let opset = OperatorSetIdProto { domain: String::new(), version: 13 };
        ModelProto { ir_version: 8, graph: Some(graph), opset_import: vec![opset], ..ModelProto::default() }
            .encode_to_vec()
    }

    /// What `backend` gives for an input of zeros: its outputs' values.
    fn outputs_for_zeros(backend: &dyn Backend) -> Vec<f32> {
        let zeros = Tensor::new(ElementType::F32, vec![1, 4], vec![0u8; 16]).unwrap();
        let outputs = backend.new_session().unwrap().run(vec![zeros]).unwrap();
        outputs[0].data.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    fn no_gpu() -> anyhow::Error {
        anyhow::anyhow!("no GPU on this test")
    }

    #[test]
    fn an_engine_that_cannot_load_the_model_is_skipped_for_the_next() {
        let loaded = vec![
            ("first", backend::load_tract(b"not a model".to_vec())),
            ("second", backend::load_tract(adds(1.0))),
        ];
        let chosen = fastest_on_the_cpu("m", loaded, &no_gpu()).unwrap().backend;
        assert_eq!(outputs_for_zeros(chosen.as_ref()), vec![1.0; 4]);
    }

    #[test]
    fn an_engine_whose_outputs_disagree_with_the_first_measured_is_never_chosen() {
        for _ in 0..3 {
            let loaded = vec![
                ("broken", backend::load_tract(b"not a model".to_vec())),
                ("first", backend::load_tract(adds(1.0))),
                ("second", backend::load_tract(adds(2.0))),
                ("third", backend::load_tract(adds(1.0))),
            ];
            let chosen = fastest_on_the_cpu("m", loaded, &no_gpu()).unwrap().backend;
            assert_eq!(outputs_for_zeros(chosen.as_ref()), vec![1.0; 4]);
        }
    }

    #[test]
    fn a_model_no_engine_loads_fails_with_every_engines_reason() {
        let loaded = vec![
            ("first", backend::load_tract(b"not a model".to_vec())),
            ("second", backend::load_tract(b"\xff".to_vec()).map_err(|e| e.context("truncated"))),
        ];
        let error = fastest_on_the_cpu("m", loaded, &no_gpu()).err().unwrap().to_string();
        for part in [
            "no engine loads the model",
            "gpu: no GPU on this test",
            "first: cannot load",
            "second: cannot load the model: truncated",
        ] {
            assert!(error.contains(part), "{part}: {error}");
        }
    }
}

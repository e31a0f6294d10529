//! `batching = "auto"`: decide at start-up, by measuring, whether batching pays for a model.
//!
//! The model runs on synthesized inputs, alone and in a batch, and batching is chosen only if
//! a batch costs clearly less per item. Inputs are made valid for any model: floats are
//! zeros; integer inputs (token ids, type ids) are zeros, which every embedding table holds,
//! and inputs named like a mask are ones, so the model does its full work. A model with a
//! sequence axis is measured at several representative lengths, and other free dimensions
//! get a representative size. A model that still fails on such inputs (or panics: tract
//! panics on some bad inputs) is not batched, and the log line says why.
//!
//! Runs alone and in a batch take turns over several rounds, so that a moment of noise (a
//! build starting beside the node) weighs on both sides rather than deciding for one. A
//! measurement an earlier start made on this machine (remembered by the inference layer's
//! `measurements`) is used as it is.
//!
//! The same inputs time an engine on one request alone ([`Trial`]), for `backend = "auto"`'s
//! choice of engine.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use tracing::info;

use crate::inference::backend::{Backend, Session};
use crate::inference::tensor::{Dim, ElementType, Signature, Tensor, TensorSpec};

/// Time spent measuring one input shape at start-up, at most, split between the rounds
/// (after a warm-up run, three timed runs at the least each round).
const BUDGET_PER_SHAPE: Duration = Duration::from_millis(150);
/// Rounds in which runs alone and in a batch (or engines, for `backend = "auto"`) take turns.
pub const ROUNDS: usize = 3;
/// Batching is chosen only if it costs at most this fraction per item of unbatched runs.
const GAIN_REQUIRED: f64 = 0.8;
/// Sequence lengths measured, for models with a sequence axis: short and long requests.
const SEQUENCE_LENGTHS: [usize; 2] = [16, 64];
/// The size given to a free dimension that is neither the batch nor the sequence axis.
const OTHER_FREE_DIMENSION: usize = 16;
/// Largest batch measured.
const MAX_MEASURED_BATCH: usize = 64;
/// For models with a sequence axis, most positions (items × length) in a measured batch, so
/// that measuring a transformer on the CPU costs about a second, not many.
const MEASURED_POSITIONS: usize = 256;

/// Seconds per item alone and in batches, summed over the lengths measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measurement {
    pub single: f64,
    pub batched: f64,
    /// The batch size measured at each length.
    pub batches: Vec<usize>,
}

impl Measurement {
    /// Whether batching is clearly cheaper per item.
    pub fn pays(&self) -> bool {
        self.batched <= self.single * GAIN_REQUIRED
    }
}

/// A batching decision: the batch limit, and the measurement it was made on (none where the
/// model could not be measured).
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub limit: usize,
    pub measured: Option<Measurement>,
}

/// Decides the batch limit of `session`'s model (`max_batch_size`, or 1) from `remembered`, a
/// measurement an earlier start made on this machine, or else by measuring it alone and in
/// batches of up to `max_batch_size`; logs the measurement and the decision.
pub fn decide(
    name: &str,
    signature: &Signature,
    max_batch_size: usize,
    session: &mut dyn Session,
    remembered: Option<&Measurement>,
) -> Decision {
    let measured = match remembered {
        Some(measured) => Ok(measured.clone()),
        None => measure(signature, max_batch_size, session),
    };
    match measured {
        Ok(measured) => {
            let limit = if measured.pays() { max_batch_size } else { 1 };
            info!(
                model = %name,
                single_us = %format!("{:.1}", measured.single * 1e6),
                batched_us = %format!("{:.1}", measured.batched * 1e6),
                batches = %format!("{:?}", measured.batches),
                lengths = %lengths_measured(signature),
                max_batch_size = limit,
                remembered = remembered.is_some(),
                "batching: {} (time per item alone vs in a batch)",
                if limit > 1 { "on" } else { "off" },
            );
            Decision { limit, measured: Some(measured) }
        }
        Err(reason) => {
            info!(model = %name, "batching: off ({reason}; set batching = \"on\" to force it)");
            Decision { limit: 1, measured: None }
        }
    }
}

/// Measures the model alone and in batches of up to `max_batch_size`, at each representative
/// length; the error says why the model could not be measured. Runs alone and in a batch
/// take turns ([`ROUNDS`] rounds of each), so that a moment of noise weighs on both sides,
/// and each side counts its median round.
pub fn measure(
    signature: &Signature,
    max_batch_size: usize,
    session: &mut dyn Session,
) -> Result<Measurement, String> {
    let lengths: Vec<Option<usize>> =
        if signature.pads() { SEQUENCE_LENGTHS.iter().map(|&l| Some(l)).collect() } else { vec![None] };
    let mut measured = Measurement { single: 0.0, batched: 0.0, batches: Vec::new() };
    for length in lengths {
        let positions_cap = length.map_or(MAX_MEASURED_BATCH, |l| (MEASURED_POSITIONS / l).max(2));
        let batch = max_batch_size.min(MAX_MEASURED_BATCH).min(positions_cap);
        measured.batches.push(batch);
        let synthesized = |items| {
            synthesize(signature, items, length)
                .ok_or_else(|| "the model has no batch axis to measure along".to_string())
        };
        let (alone, batched) = (synthesized(1)?, synthesized(batch)?);
        let (mut alone_rounds, mut batched_rounds) = (Vec::new(), Vec::new());
        let budget = BUDGET_PER_SHAPE / ROUNDS as u32;
        for round in 0..ROUNDS {
            let warm_up = round == 0;
            alone_rounds.push(time_per_item(session, &alone, 1, budget, warm_up)?);
            batched_rounds.push(time_per_item(session, &batched, batch, budget, warm_up)?);
        }
        measured.single += median(alone_rounds);
        measured.batched += median(batched_rounds);
    }
    Ok(measured)
}

/// The median of some timings.
pub fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or(f64::INFINITY)
}

fn lengths_measured(signature: &Signature) -> String {
    if signature.pads() { format!("{SEQUENCE_LENGTHS:?}") } else { "-".to_string() }
}

/// A session of `backend` ready to be timed on one request alone (sequences of the shortest
/// length measured), with the inputs it runs and the outputs of its first run (on
/// synthesized inputs): for comparing engines ([`Trial::time`]).
pub struct Trial {
    session: Box<dyn Session>,
    inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
}

impl Trial {
    /// Makes a session of `backend` and runs it once; the error says why it cannot be timed.
    pub fn new(backend: &dyn Backend) -> Result<Trial, String> {
        let signature = backend.signature();
        let length = signature.pads().then_some(SEQUENCE_LENGTHS[0]);
        let inputs =
            synthesize(signature, 1, length).ok_or_else(|| "inputs cannot be synthesized".to_string())?;
        let mut session = backend.new_session().map_err(|e| format!("{e:#}"))?;
        let outputs = match catch_unwind(AssertUnwindSafe(|| session.run(inputs.clone()))) {
            Ok(Ok(outputs)) => outputs,
            Ok(Err(e)) => return Err(format!("the model fails on synthesized inputs: {e:#}")),
            Err(_) => return Err("the model panics on synthesized inputs".to_string()),
        };
        Ok(Trial { session, inputs, outputs })
    }

    /// The median seconds of a run alone, timed for about `budget` (the session is warm: it
    /// ran once when the trial was made).
    pub fn time(&mut self, budget: Duration) -> Result<f64, String> {
        time_per_item(self.session.as_mut(), &self.inputs, 1, budget, false)
    }
}

/// Valid inputs for `batch` items `length` long: see the module's doc.
pub fn synthesize(signature: &Signature, batch: usize, length: Option<usize>) -> Option<Vec<Tensor>> {
    signature.inputs.iter().map(|spec| synthesize_one(spec, batch, length)).collect()
}

fn synthesize_one(spec: &TensorSpec, batch: usize, length: Option<usize>) -> Option<Tensor> {
    let mut sized = spec.clone();
    // Free dimensions other than batch and sequence get a representative size.
    for (axis, dim) in sized.shape.iter_mut().enumerate() {
        if Some(axis) != spec.batch_axis && Some(axis) != spec.sequence_axis && *dim == Dim::Any {
            *dim = Dim::Fixed(OTHER_FREE_DIMENSION);
        }
    }
    let shape = sized.concrete_shape(batch, Some(length.unwrap_or(OTHER_FREE_DIMENSION)))?;
    let count: usize = shape.iter().product();
    let one: Vec<u8> = match spec.element_type {
        ElementType::I32 if spec.is_mask() => 1i32.to_le_bytes().to_vec(),
        ElementType::I64 if spec.is_mask() => 1i64.to_le_bytes().to_vec(),
        ElementType::U8 if spec.is_mask() => vec![1],
        other => vec![0; other.size()],
    };
    let data: Vec<u8> = one.iter().copied().cycle().take(count * one.len()).collect();
    Tensor::new(spec.element_type, shape, data).ok()
}

/// Median seconds per item of running the model on `inputs` (`batch` items), after a warm-up
/// run if `warm_up`: at least three timed runs (one where a run takes more than a third of
/// `budget`), and more while `budget` lasts.
fn time_per_item(
    session: &mut dyn Session,
    inputs: &[Tensor],
    batch: usize,
    budget: Duration,
    warm_up: bool,
) -> Result<f64, String> {
    let mut run = || match catch_unwind(AssertUnwindSafe(|| session.run(inputs.to_vec()))) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("the model fails on synthesized inputs: {e:#}")),
        Err(_) => Err("the model panics on synthesized inputs".to_string()),
    };
    if warm_up {
        run()?;
    }
    let mut times = Vec::new();
    let started = Instant::now();
    loop {
        let timed = Instant::now();
        run()?;
        let took = timed.elapsed();
        times.push(took.as_secs_f64() / batch as f64);
        let least_runs = if took > budget / 3 { 1 } else { 3 };
        if times.len() >= least_runs && (started.elapsed() >= budget || times.len() >= 200) {
            break;
        }
    }
    Ok(median(times))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        name: &str,
        element_type: ElementType,
        shape: Vec<Dim>,
        sequence_axis: Option<usize>,
    ) -> TensorSpec {
        TensorSpec { name: name.into(), element_type, shape, batch_axis: Some(0), sequence_axis }
    }

    #[test]
    fn synthesized_token_inputs_are_in_range_and_masks_are_ones() {
        let signature = Signature {
            inputs: vec![
                spec("input_ids", ElementType::I64, vec![Dim::Any, Dim::Any], Some(1)),
                spec("attention_mask", ElementType::I64, vec![Dim::Any, Dim::Any], Some(1)),
            ],
            outputs: vec![spec("hidden", ElementType::F32, vec![Dim::Any, Dim::Any, Dim::Fixed(4)], Some(1))],
        };
        let inputs = synthesize(&signature, 3, Some(5)).unwrap();
        assert_eq!(inputs[0].shape, vec![3, 5]);
        assert!(inputs[0].data.iter().all(|&b| b == 0));
        let mask: Vec<i64> =
            inputs[1].data.chunks(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(mask, vec![1; 15]);
    }

    #[test]
    fn other_free_dimensions_get_a_representative_size() {
        let image = spec("image", ElementType::F32, vec![Dim::Any, Dim::Fixed(3), Dim::Any, Dim::Any], None);
        let signature = Signature { inputs: vec![image.clone()], outputs: vec![image] };
        assert_eq!(synthesize(&signature, 2, None).unwrap()[0].shape, vec![2, 3, 16, 16]);
    }
}

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
//! The same inputs time an engine on one request alone ([`alone`]), for `backend = "auto"`'s
//! choice of engine.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use tracing::info;

use crate::inference::backend::{Backend, Session};
use crate::inference::tensor::{Dim, ElementType, Signature, Tensor, TensorSpec};

/// Time spent measuring one input shape at start-up, at most (after a warm-up run, three
/// timed runs at the least, or one where a run takes more than a third of this).
const BUDGET_PER_SHAPE: Duration = Duration::from_millis(150);
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
#[derive(Clone, Debug, PartialEq)]
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

/// Measures `session`'s model alone and in batches of up to `max_batch_size` and decides; logs
/// the measurement. Returns the batch limit: `max_batch_size`, or 1.
pub fn batch_limit(
    name: &str,
    signature: &Signature,
    max_batch_size: usize,
    session: &mut dyn Session,
) -> usize {
    match measure(signature, max_batch_size, session) {
        Ok(measured) => {
            let chosen = if measured.pays() { max_batch_size } else { 1 };
            info!(
                model = %name,
                single_us = %format!("{:.1}", measured.single * 1e6),
                batched_us = %format!("{:.1}", measured.batched * 1e6),
                batches = %format!("{:?}", measured.batches),
                lengths = %lengths_measured(signature),
                max_batch_size = chosen,
                "batching: {} (time per item alone vs in a batch)",
                if chosen > 1 { "on" } else { "off" },
            );
            chosen
        }
        Err(reason) => {
            info!(model = %name, "batching: off ({reason}; set batching = \"on\" to force it)");
            1
        }
    }
}

/// Measures the model alone and in batches of up to `max_batch_size`, at each representative
/// length; the error says why the model could not be measured.
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
        for (items, total) in [(1, &mut measured.single), (batch, &mut measured.batched)] {
            let inputs = synthesize(signature, items, length)
                .ok_or_else(|| "the model has no batch axis to measure along".to_string())?;
            *total += time_per_item(session, &inputs, items)?;
        }
    }
    Ok(measured)
}

fn lengths_measured(signature: &Signature) -> String {
    if signature.pads() { format!("{SEQUENCE_LENGTHS:?}") } else { "-".to_string() }
}

/// How `backend` does on one request alone: the median seconds of a run of one item
/// (sequences of the shortest length measured), and its outputs, on synthesized inputs.
pub fn alone(backend: &dyn Backend) -> Result<(f64, Vec<Tensor>), String> {
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
    Ok((time_per_item(session.as_mut(), &inputs, 1)?, outputs))
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

/// Median seconds per item of running the model on `inputs` (`batch` items).
fn time_per_item(session: &mut dyn Session, inputs: &[Tensor], batch: usize) -> Result<f64, String> {
    let mut run = || match catch_unwind(AssertUnwindSafe(|| session.run(inputs.to_vec()))) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("the model fails on synthesized inputs: {e:#}")),
        Err(_) => Err("the model panics on synthesized inputs".to_string()),
    };
    let warm_up = Instant::now();
    run()?;
    let least_runs = if warm_up.elapsed() > BUDGET_PER_SHAPE / 3 { 1 } else { 3 };
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < least_runs || (started.elapsed() < BUDGET_PER_SHAPE && times.len() < 200) {
        let timed = Instant::now();
        run()?;
        times.push(timed.elapsed().as_secs_f64() / batch as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
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

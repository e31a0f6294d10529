//! Batch assembly: requests' inputs padded and joined into one run, and the run's outputs
//! cut apart again into each request's.
//!
//! A model whose inputs share a sequence axis (tokens, samples) batches requests of
//! different lengths: each input is padded to the batch's longest with the input's pad value
//! ([`pad_values`]), and every output that carries the sequence axis is cut back to each
//! request's own length.

use std::collections::BTreeMap;

use anyhow::bail;

use crate::inference::tensor::{self, Signature, Tensor};

/// Joins requests' inputs into one batch: each input padded along the sequence axis to
/// `longest` with `pad_values` (one element's bytes per input), then concatenated along the
/// batch axis. Returns the batch and its element counts (real, padding).
pub fn assemble(
    signature: &Signature,
    requests: &[&[Tensor]],
    longest: usize,
    pad_values: &[Vec<u8>],
) -> (Vec<Tensor>, ElementCounts) {
    let mut counts = ElementCounts::default();
    let inputs = signature
        .inputs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let padded: Vec<std::borrow::Cow<Tensor>> = requests
                .iter()
                .map(|inputs| {
                    let tensor = &inputs[i];
                    counts.real += element_count(tensor);
                    match spec.sequence_axis {
                        Some(axis) if tensor.shape[axis] < longest => {
                            std::borrow::Cow::Owned(tensor::pad(tensor, axis, longest, &pad_values[i]))
                        }
                        _ => std::borrow::Cow::Borrowed(tensor),
                    }
                })
                .collect();
            let batch_axis = spec.batch_axis.expect("batched models have batch axes");
            let parts: Vec<&Tensor> = padded.iter().map(|t| t.as_ref()).collect();
            let joined = tensor::concat(&parts, batch_axis);
            counts.padding += element_count(&joined);
            joined
        })
        .collect();
    counts.padding -= counts.real;
    (inputs, counts)
}

/// Parts a batch's outputs back into each request's: split along the batch axis by `items`,
/// and outputs that carry the sequence axis at the batch's `longest` cut to each request's
/// length (an output whose sequence size differs from the inputs' is left whole).
pub fn disassemble(
    signature: &Signature,
    outputs: Vec<Tensor>,
    items: &[usize],
    lengths: &[usize],
    longest: usize,
) -> Vec<Vec<Tensor>> {
    let mut per_request: Vec<Vec<Tensor>> = items.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for (output, spec) in outputs.into_iter().zip(&signature.outputs) {
        let batch_axis = spec.batch_axis.expect("batched models have batch axes");
        let pieces = tensor::split(&output, batch_axis, items);
        for ((request, piece), &length) in per_request.iter_mut().zip(pieces).zip(lengths) {
            let piece = match spec.sequence_axis {
                Some(axis) if length < longest && piece.shape[axis] == longest => {
                    tensor::truncate(&piece, axis, length)
                }
                _ => piece,
            };
            request.push(piece);
        }
    }
    per_request
}

/// Elements of a batch's inputs: from the requests, and added as padding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ElementCounts {
    pub real: usize,
    pub padding: usize,
}

fn element_count(tensor: &Tensor) -> usize {
    tensor.shape.iter().product()
}

/// Each input's pad value as one element's bytes: the configured value, else 0.
pub fn pad_values(signature: &Signature, configured: &BTreeMap<String, f64>) -> anyhow::Result<Vec<Vec<u8>>> {
    if let Some(name) =
        configured.keys().find(|name| !signature.inputs.iter().any(|spec| &spec.name == *name))
    {
        let inputs: Vec<&str> = signature.inputs.iter().map(|spec| spec.name.as_str()).collect();
        bail!("pad_values names {name:?}, which is not an input; the inputs are {inputs:?}");
    }
    signature
        .inputs
        .iter()
        .map(|spec| {
            let value = configured.get(&spec.name).copied().unwrap_or(0.0);
            spec.element_type
                .encode(value)
                .map_err(|reason| anyhow::anyhow!("pad value of input {:?}: {reason}", spec.name))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::tensor::{Dim, ElementType, TensorSpec};

    fn sequence_signature() -> Signature {
        let spec = |name: &str, element_type, shape| TensorSpec {
            name: name.into(),
            element_type,
            shape,
            batch_axis: Some(0),
            sequence_axis: Some(1),
        };
        Signature {
            inputs: vec![spec("ids", ElementType::U8, vec![Dim::Any, Dim::Any])],
            outputs: vec![
                spec("hidden", ElementType::U8, vec![Dim::Any, Dim::Any, Dim::Fixed(2)]),
                TensorSpec {
                    sequence_axis: None,
                    ..spec("pooled", ElementType::U8, vec![Dim::Any, Dim::Fixed(2)])
                },
            ],
        }
    }

    fn bytes(shape: Vec<usize>, data: Vec<u8>) -> Tensor {
        Tensor::new(ElementType::U8, shape, data).unwrap()
    }

    #[test]
    fn padded_batches_come_apart_into_each_requests_own_outputs() {
        let signature = sequence_signature();
        let short = vec![bytes(vec![1, 1], vec![1])];
        let long = vec![bytes(vec![2, 3], vec![2, 3, 4, 5, 6, 7])];
        let (inputs, counts) = assemble(&signature, &[&short, &long], 3, &[vec![0]]);
        assert_eq!(inputs[0].shape, vec![3, 3]);
        assert_eq!(inputs[0].data, vec![1, 0, 0, 2, 3, 4, 5, 6, 7]);
        assert_eq!(counts, ElementCounts { real: 7, padding: 2 });

        // A "model" whose hidden state echoes each token twice and pools the first token.
        let hidden = bytes(vec![3, 3, 2], inputs[0].data.iter().flat_map(|&v| [v, v]).collect());
        let pooled = bytes(vec![3, 2], vec![1, 1, 2, 2, 5, 5]);
        let parts = disassemble(&signature, vec![hidden, pooled], &[1, 2], &[1, 3], 3);
        assert_eq!(parts[0], vec![bytes(vec![1, 1, 2], vec![1, 1]), bytes(vec![1, 2], vec![1, 1])]);
        assert_eq!(parts[1][0].shape, vec![2, 3, 2]);
        assert_eq!(parts[1][0].data, vec![2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]);
        assert_eq!(parts[1][1], bytes(vec![2, 2], vec![2, 2, 5, 5]));
    }

    #[test]
    fn pad_values_must_name_inputs_and_fit_their_type() {
        let mut signature = sequence_signature();
        signature.inputs[0].element_type = ElementType::I64;
        let values = pad_values(&signature, &BTreeMap::from([("ids".to_string(), -1.0)])).unwrap();
        assert_eq!(values, vec![(-1i64).to_le_bytes().to_vec()]);
        let unknown = pad_values(&signature, &BTreeMap::from([("mask".to_string(), 0.0)])).unwrap_err();
        assert!(format!("{unknown:#}").contains("\"mask\", which is not an input"), "{unknown:#}");
        let fraction = pad_values(&signature, &BTreeMap::from([("ids".to_string(), 0.5)])).unwrap_err();
        assert!(format!("{fraction:#}").contains("INT64 cannot hold 0.5"), "{fraction:#}");
    }
}

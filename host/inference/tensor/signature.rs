//! What a model declares about its tensors: each one's [`TensorSpec`] (type, shape of
//! [`Dim`]s, batch and sequence axes) and the model's [`Signature`], against which
//! [`Signature::check_inputs`] validates a request's tensors before they reach a queue.

use super::value::{ElementType, NamedTensor, Tensor, TensorError};

/// One dimension of a declared tensor shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Dim {
    /// The size is fixed by the model.
    Fixed(usize),
    /// Any size (a symbolic dimension, such as the batch axis).
    Any,
}

/// What a model declares about one input or output.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub element_type: ElementType,
    pub shape: Vec<Dim>,
    /// The axis that holds independent items (the batch axis), if the model has one.
    pub batch_axis: Option<usize>,
    /// The axis of variable length that every input shares besides the batch axis (tokens,
    /// samples), if the model has one: requests of different lengths are padded along it to
    /// share a batch, and outputs that carry it are cut back to each request's length.
    pub sequence_axis: Option<usize>,
}

impl TensorSpec {
    /// Whether `shape` fits this spec: same rank, fixed dimensions equal, none zero.
    fn accepts_shape(&self, shape: &[usize]) -> bool {
        shape.len() == self.shape.len()
            && shape.iter().zip(&self.shape).all(|(&size, dim)| match dim {
                Dim::Fixed(fixed) => size == *fixed,
                Dim::Any => size > 0,
            })
    }

    /// A concrete shape for `batch` items: the batch axis set to `batch`, fixed dimensions as
    /// they are. `None` if another dimension is symbolic, or `batch` is not 1 and the tensor
    /// has no batch axis.
    pub fn shape_for_batch(&self, batch: usize) -> Option<Vec<usize>> {
        self.concrete_shape(batch, None)
    }

    /// Like [`TensorSpec::shape_for_batch`], with the sequence axis (if any) set to `length`;
    /// a tensor without a sequence axis ignores `length`.
    pub fn concrete_shape(&self, batch: usize, length: Option<usize>) -> Option<Vec<usize>> {
        if self.batch_axis.is_none() && batch != 1 {
            return None;
        }
        self.shape
            .iter()
            .enumerate()
            .map(|(axis, dim)| match dim {
                _ if Some(axis) == self.batch_axis => Some(batch),
                _ if Some(axis) == self.sequence_axis => length,
                Dim::Fixed(size) => Some(*size),
                Dim::Any => None,
            })
            .collect()
    }

    /// Whether this input holds a mask (an attention mask: 1 where there is content, 0 over
    /// padding), judged by its name.
    pub fn is_mask(&self) -> bool {
        self.name.to_ascii_lowercase().contains("mask")
    }

    /// The shape written the way error messages and metadata show it (`-1` for any size).
    pub fn shape_for_display(&self) -> Vec<i64> {
        self.shape
            .iter()
            .map(|dim| match dim {
                Dim::Fixed(size) => *size as i64,
                Dim::Any => -1,
            })
            .collect()
    }
}

/// The inputs and outputs of a model, in the model's order.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl Signature {
    /// Whether requests can be batched: every input and output has a batch axis.
    pub fn batchable(&self) -> bool {
        self.inputs.iter().chain(&self.outputs).all(|spec| spec.batch_axis.is_some())
    }

    /// Whether requests of different lengths can share a batch: the model batches, and every
    /// input has a sequence axis.
    pub fn pads(&self) -> bool {
        self.batchable() && self.inputs.iter().all(|spec| spec.sequence_axis.is_some())
    }

    /// A checked request's length along the sequence axis (1 for models without one).
    pub fn sequence_length(&self, inputs: &[Tensor]) -> usize {
        self.inputs
            .iter()
            .zip(inputs)
            .find_map(|(spec, tensor)| spec.sequence_axis.map(|axis| tensor.shape[axis]))
            .unwrap_or(1)
    }

    /// Items in a checked request (its size along the batch axis), 1 without a batch axis.
    pub fn items(&self, inputs: &[Tensor]) -> usize {
        match (self.inputs.first().and_then(|spec| spec.batch_axis), inputs.first()) {
            (Some(axis), Some(tensor)) => tensor.shape[axis],
            _ => 1,
        }
    }

    /// Whether two checked requests can share a batch: equal shapes but for the batch axis
    /// and, where the model pads, the sequence axis.
    pub fn compatible(&self, a: &[Tensor], b: &[Tensor]) -> bool {
        let pads = self.pads();
        self.inputs.iter().zip(a.iter().zip(b)).all(|(spec, (a, b))| {
            let free =
                |axis: usize| Some(axis) == spec.batch_axis || (pads && Some(axis) == spec.sequence_axis);
            a.shape.len() == b.shape.len()
                && a.shape.iter().zip(&b.shape).enumerate().all(|(axis, (x, y))| free(axis) || x == y)
        })
    }

    /// Checks one input as a request declares it, before its data exists: the model has such
    /// an input, of this type, and `shape` fits it. The error is the one
    /// [`Signature::check_inputs`] would give.
    pub fn check_declared(
        &self,
        name: &str,
        element_type: ElementType,
        shape: &[usize],
    ) -> Result<(), TensorError> {
        let Some(spec) = self.inputs.iter().find(|spec| spec.name == name) else {
            let inputs = self.inputs.iter().map(|spec| spec.name.clone()).collect();
            return Err(TensorError::UnknownInput { name: name.to_string(), inputs });
        };
        if element_type != spec.element_type {
            let expected = spec.element_type;
            return Err(TensorError::WrongType { name: name.to_string(), expected, got: element_type });
        }
        if !spec.accepts_shape(shape) {
            let (expected, got) = (spec.shape_for_display(), shape.to_vec());
            return Err(TensorError::WrongShape { name: name.to_string(), expected, got });
        }
        Ok(())
    }

    /// The most bytes one request's inputs can hold with at most `items` items, if every
    /// dimension but the batch axis is fixed; `None` if some other dimension is free.
    pub fn max_request_bytes(&self, items: usize) -> Option<usize> {
        self.inputs.iter().try_fold(0usize, |total, spec| {
            let elements = spec.shape.iter().enumerate().try_fold(1usize, |acc, (axis, dim)| match dim {
                _ if Some(axis) == spec.batch_axis => acc.checked_mul(items),
                Dim::Fixed(size) => acc.checked_mul(*size),
                Dim::Any => None,
            })?;
            total.checked_add(elements.checked_mul(spec.element_type.size())?)
        })
    }

    /// Checks named tensors against the declared inputs and returns them in the model's input
    /// order. Every input must be given exactly once, with the declared type and a fitting
    /// shape; the error says which rule was broken.
    pub fn check_inputs(&self, mut given: Vec<NamedTensor>) -> Result<Vec<Tensor>, TensorError> {
        if let Some((name, _)) =
            given.iter().find(|(name, _)| !self.inputs.iter().any(|spec| &spec.name == name))
        {
            let inputs = self.inputs.iter().map(|spec| spec.name.clone()).collect();
            return Err(TensorError::UnknownInput { name: name.clone(), inputs });
        }
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            let position = given
                .iter()
                .position(|(name, _)| name == &spec.name)
                .ok_or_else(|| TensorError::MissingInput(spec.name.clone()))?;
            let (_, tensor) = given.swap_remove(position);
            if given.iter().any(|(name, _)| name == &spec.name) {
                return Err(TensorError::RepeatedInput(spec.name.clone()));
            }
            if tensor.element_type != spec.element_type {
                let (expected, got) = (spec.element_type, tensor.element_type);
                return Err(TensorError::WrongType { name: spec.name.clone(), expected, got });
            }
            if !spec.accepts_shape(&tensor.shape) {
                let (expected, got) = (spec.shape_for_display(), tensor.shape);
                return Err(TensorError::WrongShape { name: spec.name.clone(), expected, got });
            }
            ordered.push(tensor);
        }
        let lengths = self
            .inputs
            .iter()
            .zip(&ordered)
            .filter_map(|(spec, tensor)| spec.sequence_axis.map(|axis| (&spec.name, tensor.shape[axis])));
        let mut first = None;
        for (name, length) in lengths {
            match first {
                None => first = Some((name, length)),
                Some((first_name, first_length)) if first_length != length => {
                    return Err(TensorError::SequenceLengths {
                        first: first_name.clone(),
                        second: name.clone(),
                        first_length,
                        second_length: length,
                    });
                }
                Some(_) => {}
            }
        }
        Ok(ordered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits_signature() -> Signature {
        let spec = |name: &str, width| TensorSpec {
            name: name.into(),
            element_type: ElementType::F32,
            shape: vec![Dim::Any, Dim::Fixed(width)],
            batch_axis: Some(0),
            sequence_axis: None,
        };
        Signature { inputs: vec![spec("pixels", 64)], outputs: vec![spec("probabilities", 10)] }
    }

    fn zeros(element_type: ElementType, shape: Vec<usize>) -> Tensor {
        let len = shape.iter().product::<usize>() * element_type.size();
        Tensor::new(element_type, shape, vec![0; len]).unwrap()
    }

    #[test]
    fn accepts_any_batch_size() {
        let signature = digits_signature();
        for batch in [1, 7, 300] {
            let inputs = vec![("pixels".to_string(), zeros(ElementType::F32, vec![batch, 64]))];
            assert_eq!(signature.check_inputs(inputs).unwrap()[0].shape, vec![batch, 64]);
        }
    }

    #[test]
    fn rejects_wrong_name_type_shape_and_duplicates() {
        let signature = digits_signature();
        let check = |inputs: Vec<NamedTensor>| signature.check_inputs(inputs).unwrap_err().to_string();
        let good = || zeros(ElementType::F32, vec![1, 64]);
        assert!(check(vec![("image".into(), good())]).contains("unknown input \"image\""));
        assert!(check(vec![]).contains("missing input \"pixels\""));
        assert!(check(vec![("pixels".into(), good()), ("pixels".into(), good())]).contains("more than once"));
        let wrong_type = zeros(ElementType::I32, vec![1, 64]);
        assert!(check(vec![("pixels".into(), wrong_type)]).contains("must be FP32, got INT32"));
        let wrong_width = zeros(ElementType::F32, vec![1, 63]);
        assert!(check(vec![("pixels".into(), wrong_width)]).contains("shape [-1, 64]"));
        let wrong_rank = zeros(ElementType::F32, vec![64]);
        assert!(check(vec![("pixels".into(), wrong_rank)]).contains("got [64]"));
        let empty_batch = zeros(ElementType::F32, vec![0, 64]);
        assert!(check(vec![("pixels".into(), empty_batch)]).contains("got [0, 64]"));
    }
    #[test]
    fn compatibility_ignores_only_the_batch_axis() {
        let signature = digits_signature();
        let one = vec![zeros(ElementType::F32, vec![1, 64])];
        let five = vec![zeros(ElementType::F32, vec![5, 64])];
        assert!(signature.compatible(&one, &five));
        assert_eq!(signature.items(&five), 5);
        assert!(signature.batchable());
    }

    #[test]
    fn concrete_shapes_fill_in_the_batch_axis_only() {
        let spec = &digits_signature().inputs[0];
        assert_eq!(spec.shape_for_batch(8), Some(vec![8, 64]));
        let unbatched =
            TensorSpec { batch_axis: None, shape: vec![Dim::Fixed(1), Dim::Fixed(576)], ..spec.clone() };
        assert_eq!(unbatched.shape_for_batch(1), Some(vec![1, 576]));
        assert_eq!(unbatched.shape_for_batch(8), None);
        let open = TensorSpec { shape: vec![Dim::Any, Dim::Any], ..spec.clone() };
        assert_eq!(open.shape_for_batch(2), None);
    }

    /// MiniLM's shape: three `[batch, sequence]` int64 inputs, `[batch, sequence, 4]` out.
    fn sequence_signature() -> Signature {
        let spec = |name: &str, shape: Vec<Dim>| TensorSpec {
            name: name.into(),
            element_type: ElementType::I64,
            shape,
            batch_axis: Some(0),
            sequence_axis: Some(1),
        };
        Signature {
            inputs: vec![spec("ids", vec![Dim::Any, Dim::Any]), spec("mask", vec![Dim::Any, Dim::Any])],
            outputs: vec![TensorSpec {
                element_type: ElementType::F32,
                ..spec("hidden", vec![Dim::Any, Dim::Any, Dim::Fixed(4)])
            }],
        }
    }

    #[test]
    fn sequences_of_different_lengths_are_compatible_only_where_the_model_pads() {
        let signature = sequence_signature();
        let request =
            |length| vec![zeros(ElementType::I64, vec![1, length]), zeros(ElementType::I64, vec![1, length])];
        assert!(signature.pads());
        assert!(signature.compatible(&request(3), &request(9)));
        assert_eq!(signature.sequence_length(&request(9)), 9);
        let mut unpadded = signature.clone();
        unpadded.inputs[1].sequence_axis = None;
        assert!(!unpadded.pads());
        assert!(!unpadded.compatible(&request(3), &request(9)));
        assert!(unpadded.compatible(&request(9), &request(9)));
    }

    #[test]
    fn inputs_must_agree_on_the_sequence_length() {
        let signature = sequence_signature();
        let inputs = vec![
            ("ids".to_string(), zeros(ElementType::I64, vec![1, 5])),
            ("mask".to_string(), zeros(ElementType::I64, vec![1, 6])),
        ];
        let error = signature.check_inputs(inputs).unwrap_err().to_string();
        assert!(error.contains("same sequence length, got 5 and 6"), "{error}");
    }
}

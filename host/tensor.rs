//! Tensors as the host moves them between guests, schedulers and backends, and the
//! signature a model declares for its inputs and outputs.
//!
//! A [`Tensor`] is plain data (element type, shape, little-endian bytes), independent of any
//! backend, so `wasi:nn`, the scheduler and every backend agree on one representation.
//! [`Signature::check_inputs`] is where a request's tensors are validated against a model,
//! before they reach a queue; [`concat`] and [`split`] join requests into one batch along a
//! model's batch axis and part the outputs again.

use std::fmt;

/// The element types `wasi:nn` can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElementType {
    F16,
    F32,
    F64,
    Bf16,
    U8,
    I32,
    I64,
}

impl ElementType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElementType::U8 => 1,
            ElementType::F16 | ElementType::Bf16 => 2,
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::F64 | ElementType::I64 => 8,
        }
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ElementType::F16 => "FP16",
            ElementType::F32 => "FP32",
            ElementType::F64 => "FP64",
            ElementType::Bf16 => "BF16",
            ElementType::U8 => "UINT8",
            ElementType::I32 => "INT32",
            ElementType::I64 => "INT64",
        };
        f.write_str(name)
    }
}

/// A dense tensor: element type, shape and row-major little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub element_type: ElementType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Tensor {
    /// Makes a tensor, checking that `data` holds exactly `shape`'s elements.
    pub fn new(element_type: ElementType, shape: Vec<usize>, data: Vec<u8>) -> Result<Tensor, String> {
        let expected = shape
            .iter()
            .try_fold(element_type.size(), |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| format!("tensor shape {shape:?} is too large"))?;
        if data.len() != expected {
            return Err(format!(
                "tensor of shape {shape:?} and type {element_type} needs {expected} bytes, got {}",
                data.len()
            ));
        }
        Ok(Tensor { element_type, shape, data })
    }
}

/// A tensor paired with the model input or output it belongs to.
pub type NamedTensor = (String, Tensor);

/// One dimension of a declared tensor shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dim {
    /// The size is fixed by the model.
    Fixed(usize),
    /// Any size (a symbolic dimension, such as the batch axis).
    Any,
}

/// What a model declares about one input or output.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub element_type: ElementType,
    pub shape: Vec<Dim>,
    /// The axis that holds independent items (the batch axis), if the model has one.
    pub batch_axis: Option<usize>,
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
        if self.batch_axis.is_none() && batch != 1 {
            return None;
        }
        self.shape
            .iter()
            .enumerate()
            .map(|(axis, dim)| match dim {
                _ if Some(axis) == self.batch_axis => Some(batch),
                Dim::Fixed(size) => Some(*size),
                Dim::Any => None,
            })
            .collect()
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
#[derive(Clone, Debug, PartialEq)]
pub struct Signature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

impl Signature {
    /// Whether requests can be batched: every input and output has a batch axis.
    pub fn batchable(&self) -> bool {
        self.inputs.iter().chain(&self.outputs).all(|spec| spec.batch_axis.is_some())
    }

    /// Items in a checked request (its size along the batch axis), 1 without a batch axis.
    pub fn items(&self, inputs: &[Tensor]) -> usize {
        match (self.inputs.first().and_then(|spec| spec.batch_axis), inputs.first()) {
            (Some(axis), Some(tensor)) => tensor.shape[axis],
            _ => 1,
        }
    }

    /// Whether two checked requests can share a batch: equal shapes but for the batch axis.
    pub fn compatible(&self, a: &[Tensor], b: &[Tensor]) -> bool {
        self.inputs.iter().zip(a.iter().zip(b)).all(|(spec, (a, b))| {
            let other_dims = |t: &Tensor| {
                t.shape
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| Some(*i) != spec.batch_axis)
                    .map(|(_, d)| *d)
                    .collect::<Vec<_>>()
            };
            other_dims(a) == other_dims(b)
        })
    }

    /// Checks named tensors against the declared inputs and returns them in the model's input
    /// order. Every input must be given exactly once, with the declared type and a fitting
    /// shape; the error says which rule was broken.
    pub fn check_inputs(&self, mut given: Vec<NamedTensor>) -> Result<Vec<Tensor>, String> {
        if let Some((name, _)) =
            given.iter().find(|(name, _)| !self.inputs.iter().any(|spec| &spec.name == name))
        {
            let expected: Vec<&str> = self.inputs.iter().map(|spec| spec.name.as_str()).collect();
            return Err(format!("unknown input {name:?}; the model's inputs are {expected:?}"));
        }
        let mut ordered = Vec::with_capacity(self.inputs.len());
        for spec in &self.inputs {
            let position = given
                .iter()
                .position(|(name, _)| name == &spec.name)
                .ok_or_else(|| format!("missing input {:?}", spec.name))?;
            let (_, tensor) = given.swap_remove(position);
            if given.iter().any(|(name, _)| name == &spec.name) {
                return Err(format!("input {:?} given more than once", spec.name));
            }
            if tensor.element_type != spec.element_type {
                return Err(format!(
                    "input {:?} must be {}, got {}",
                    spec.name, spec.element_type, tensor.element_type
                ));
            }
            if !spec.accepts_shape(&tensor.shape) {
                return Err(format!(
                    "input {:?} must have shape {:?} (-1: any size), got {:?}",
                    spec.name,
                    spec.shape_for_display(),
                    tensor.shape
                ));
            }
            ordered.push(tensor);
        }
        Ok(ordered)
    }
}

/// Joins tensors of equal shape but for `axis` into one, in order.
pub fn concat(parts: &[&Tensor], axis: usize) -> Tensor {
    let first = parts[0];
    let mut shape = first.shape.clone();
    shape[axis] = parts.iter().map(|t| t.shape[axis]).sum();
    // Row-major: the data is `outer` blocks, each holding the axis's slices for one position
    // of the dimensions before `axis`.
    let outer: usize = first.shape[..axis].iter().product();
    let mut data = Vec::with_capacity(parts.iter().map(|t| t.data.len()).sum());
    for block in 0..outer {
        for part in parts {
            let block_len = part.data.len() / outer.max(1);
            data.extend_from_slice(&part.data[block * block_len..(block + 1) * block_len]);
        }
    }
    Tensor { element_type: first.element_type, shape, data }
}

/// Parts a tensor along `axis` into pieces of the given sizes, in order.
pub fn split(tensor: &Tensor, axis: usize, sizes: &[usize]) -> Vec<Tensor> {
    let outer: usize = tensor.shape[..axis].iter().product();
    let per_item = tensor.data.len() / outer.max(1) / tensor.shape[axis].max(1);
    let mut pieces: Vec<Tensor> = sizes
        .iter()
        .map(|&size| {
            let mut shape = tensor.shape.clone();
            shape[axis] = size;
            Tensor {
                element_type: tensor.element_type,
                shape,
                data: Vec::with_capacity(outer * size * per_item),
            }
        })
        .collect();
    let block_len = tensor.data.len() / outer.max(1);
    for block in tensor.data.chunks(block_len.max(1)).take(outer) {
        let mut offset = 0;
        for (piece, &size) in pieces.iter_mut().zip(sizes) {
            piece.data.extend_from_slice(&block[offset..offset + size * per_item]);
            offset += size * per_item;
        }
    }
    pieces
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
        };
        Signature { inputs: vec![spec("pixels", 64)], outputs: vec![spec("probabilities", 10)] }
    }

    fn zeros(element_type: ElementType, shape: Vec<usize>) -> Tensor {
        let len = shape.iter().product::<usize>() * element_type.size();
        Tensor::new(element_type, shape, vec![0; len]).unwrap()
    }

    #[test]
    fn tensor_data_length_must_match_shape() {
        assert!(Tensor::new(ElementType::F32, vec![2, 3], vec![0; 24]).is_ok());
        let err = Tensor::new(ElementType::F32, vec![2, 3], vec![0; 23]).unwrap_err();
        assert!(err.contains("needs 24 bytes, got 23"), "{err}");
        assert!(Tensor::new(ElementType::F32, vec![usize::MAX, 2], vec![]).is_err());
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
        let check = |inputs: Vec<NamedTensor>| signature.check_inputs(inputs).unwrap_err();
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

    fn counting(shape: Vec<usize>, start: u8) -> Tensor {
        let len = shape.iter().product::<usize>();
        Tensor::new(ElementType::U8, shape, (0..len).map(|i| start + i as u8).collect()).unwrap()
    }

    #[test]
    fn concat_then_split_round_trips_on_any_axis() {
        // Like a recurrent state [layers=2, batch, width=3], batched along axis 1.
        let a = counting(vec![2, 1, 3], 0);
        let b = counting(vec![2, 2, 3], 100);
        let joined = concat(&[&a, &b], 1);
        assert_eq!(joined.shape, vec![2, 3, 3]);
        // Layer 0 holds a's row then b's two rows, then layer 1 the same.
        assert_eq!(&joined.data[..9], &[0, 1, 2, 100, 101, 102, 103, 104, 105]);
        assert_eq!(split(&joined, 1, &[1, 2]), vec![a.clone(), b.clone()]);

        let c = counting(vec![3, 1, 3], 100);
        let rows = concat(&[&c, &a], 0);
        assert_eq!(rows.shape, vec![5, 1, 3]);
        assert_eq!(&rows.data[7..11], &[107, 108, 0, 1], "a's rows follow c's");
        assert_eq!(split(&rows, 0, &[3, 2]), vec![c, a]);
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
}

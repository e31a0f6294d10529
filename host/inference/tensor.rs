//! Tensors as the host moves them between guests, schedulers and backends, and the
//! signature a model declares for its inputs and outputs.
//!
//! A [`Tensor`] is plain data (element type, shape, little-endian bytes), independent of any
//! backend, so `wasi:nn`, the scheduler and every backend agree on one representation.
//! [`Signature::check_inputs`] is where a request's tensors are validated against a model,
//! before they reach a queue; [`concat()`] and [`split`] join requests into one batch along a
//! model's batch axis and part the outputs again; [`pad`] and [`truncate`] lengthen requests
//! along a sequence axis to a batch's longest and cut outputs back to each request's length.
//! [`find_axes`] tells both backends which axis is which from the model's symbolic dimensions.

use std::fmt;

use bytes::Bytes;

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

/// Why tensors are not acceptable: a tensor's own data, a value for its type, or a request's
/// inputs against a model's signature. The message says which rule was broken.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("tensor shape {0:?} is too large")]
    TooLarge(Vec<usize>),
    #[error("tensor of shape {shape:?} and type {element_type} needs {expected} bytes, got {got}")]
    WrongLength { shape: Vec<usize>, element_type: ElementType, expected: usize, got: usize },
    #[error("{element_type} cannot hold {value}")]
    CannotHold { element_type: ElementType, value: f64 },
    #[error("unknown input {name:?}; the model's inputs are {inputs:?}")]
    UnknownInput { name: String, inputs: Vec<String> },
    #[error("missing input {0:?}")]
    MissingInput(String),
    #[error("input {0:?} given more than once")]
    RepeatedInput(String),
    #[error("input {name:?} must be {expected}, got {got}")]
    WrongType { name: String, expected: ElementType, got: ElementType },
    #[error("input {name:?} must have shape {expected:?} (-1: any size), got {got:?}")]
    WrongShape { name: String, expected: Vec<i64>, got: Vec<usize> },
    #[error(
        "inputs {first:?} and {second:?} must have the same sequence length, got {first_length} and {second_length}"
    )]
    SequenceLengths { first: String, second: String, first_length: usize, second_length: usize },
}

/// Each element type by its name in the inference protocol (OIP, Triton) and the config.
const PROTOCOL_NAMES: [(ElementType, &str); 7] = [
    (ElementType::F16, "FP16"),
    (ElementType::F32, "FP32"),
    (ElementType::F64, "FP64"),
    (ElementType::Bf16, "BF16"),
    (ElementType::U8, "UINT8"),
    (ElementType::I32, "INT32"),
    (ElementType::I64, "INT64"),
];

impl ElementType {
    /// The inference protocol's names of every element type.
    pub fn protocol_names() -> impl Iterator<Item = &'static str> {
        PROTOCOL_NAMES.iter().map(|(_, name)| *name)
    }

    /// The inference protocol's name for this element type (`FP32`, …).
    pub fn protocol_name(&self) -> &'static str {
        PROTOCOL_NAMES
            .iter()
            .find(|(t, _)| t == self)
            .map(|(_, name)| *name)
            .expect("every element type is named")
    }

    /// The element type the inference protocol calls `name` (`FP32`, `INT64`, …), if
    /// `wasi:nn` carries it.
    pub fn from_name(name: &str) -> Option<ElementType> {
        PROTOCOL_NAMES.iter().find(|(_, n)| *n == name).map(|(element_type, _)| *element_type)
    }

    /// One element of this type holding `value`, as little-endian bytes; an error if the type
    /// cannot hold it exactly (a fraction in an integer type, a value out of range).
    pub fn encode(self, value: f64) -> Result<Vec<u8>, TensorError> {
        let integral = |min: f64, max: f64| {
            if value.fract() == 0.0 && (min..=max).contains(&value) {
                Ok(value)
            } else {
                Err(TensorError::CannotHold { element_type: self, value })
            }
        };
        Ok(match self {
            ElementType::F16 => half::f16::from_f64(value).to_le_bytes().to_vec(),
            ElementType::Bf16 => half::bf16::from_f64(value).to_le_bytes().to_vec(),
            ElementType::F32 => (value as f32).to_le_bytes().to_vec(),
            ElementType::F64 => value.to_le_bytes().to_vec(),
            ElementType::U8 => vec![integral(0.0, 255.0)? as u8],
            ElementType::I32 => (integral(i32::MIN.into(), i32::MAX.into())? as i32).to_le_bytes().to_vec(),
            ElementType::I64 => (integral(-(2f64.powi(53)), 2f64.powi(53))? as i64).to_le_bytes().to_vec(),
        })
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.protocol_name())
    }
}

/// A dense tensor: element type, shape and row-major little-endian bytes.
///
/// The bytes are shared ([`Bytes`]): cloning a tensor, caching it, answering it from the
/// cache or parting a batch along its first axis copies no data.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub element_type: ElementType,
    pub shape: Vec<usize>,
    pub data: Bytes,
}

impl Tensor {
    /// Makes a tensor, checking that `data` holds exactly `shape`'s elements.
    pub fn new(
        element_type: ElementType,
        shape: Vec<usize>,
        data: impl Into<Bytes>,
    ) -> Result<Tensor, TensorError> {
        let data = data.into();
        let Some(expected) = shape.iter().try_fold(element_type.size(), |acc, &d| acc.checked_mul(d)) else {
            return Err(TensorError::TooLarge(shape));
        };
        if data.len() != expected {
            return Err(TensorError::WrongLength { shape, element_type, expected, got: data.len() });
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

/// Which axes of a model's tensors are its batch and sequence axes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Axes {
    pub batch: Option<usize>,
    pub sequence: Option<usize>,
}

/// One dimension of a model's tensor as the model file declares it, for [`find_axes`].
#[derive(Clone, Debug, PartialEq)]
pub enum DeclaredDim<S> {
    /// A fixed size.
    Fixed,
    /// A free size named by a symbol (`batch`, `sequence`).
    Named(S),
    /// A free size with no name, or one derived from others (`sequence - 2`).
    Unnamed,
}

/// Finds the batch and sequence axes of a model from its tensors' declared dimensions, inputs
/// and outputs in order:
/// - the batch axis is a symbol of the first input that every input and output has exactly
///   once (`batch` in `pixels [batch, 64]` and `state [2, batch, 128]`);
/// - the sequence axis is the one other symbol that every input has exactly once
///   (`sequence` in MiniLM's `input_ids [batch, sequence]`). It is only a sequence axis if
///   every output's free dimensions are its batch axis and at most one sequence axis: then
///   padding a request and cutting its outputs back gives it exactly the shapes it would get
///   alone. An output sized by something else (`sequence - 2`, an unnamed length, the
///   sequence twice as in `[batch, sequence, sequence]`) makes none.
///
/// A model without a batch axis has no sequence axis either, and two candidates for the
/// sequence axis make neither one (padding along the wrong axis would change the answers).
pub fn find_axes<S: PartialEq>(
    inputs: &[Vec<DeclaredDim<S>>],
    outputs: &[Vec<DeclaredDim<S>>],
) -> (Vec<Axes>, Vec<Axes>) {
    let count = |dims: &[DeclaredDim<S>], symbol: &S| {
        dims.iter().filter(|d| matches!(d, DeclaredDim::Named(s) if s == symbol)).count()
    };
    let once_in =
        |tensors: &[Vec<DeclaredDim<S>>], symbol: &S| tensors.iter().all(|dims| count(dims, symbol) == 1);
    let first_symbols: Vec<&S> = inputs
        .first()
        .map(|dims| {
            dims.iter().filter_map(|d| if let DeclaredDim::Named(s) = d { Some(s) } else { None }).collect()
        })
        .unwrap_or_default();
    let batch =
        first_symbols.iter().copied().find(|symbol| once_in(inputs, symbol) && once_in(outputs, symbol));
    let sequence = batch.and_then(|batch| {
        let mut candidates =
            first_symbols.iter().copied().filter(|symbol| *symbol != batch && once_in(inputs, symbol));
        let only = match (candidates.next(), candidates.next()) {
            (Some(only), None) => only,
            _ => return None,
        };
        let output_fits = |dims: &Vec<DeclaredDim<S>>| {
            count(dims, only) <= 1
                && dims.iter().all(|d| match d {
                    DeclaredDim::Fixed => true,
                    DeclaredDim::Named(s) => s == batch || s == only,
                    DeclaredDim::Unnamed => false,
                })
        };
        outputs.iter().all(output_fits).then_some(only)
    });
    let position = |dims: &Vec<DeclaredDim<S>>, symbol: Option<&S>| {
        symbol.and_then(|symbol| dims.iter().position(|d| matches!(d, DeclaredDim::Named(s) if s == symbol)))
    };
    let axes = |tensors: &[Vec<DeclaredDim<S>>]| {
        tensors
            .iter()
            .map(|dims| Axes { batch: position(dims, batch), sequence: position(dims, sequence) })
            .collect()
    };
    (axes(inputs), axes(outputs))
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
    Tensor { element_type: first.element_type, shape, data: data.into() }
}

/// Parts a tensor along `axis` into pieces of the given sizes, in order. Along the first
/// axis (a batch) each piece shares the tensor's bytes.
pub fn split(tensor: &Tensor, axis: usize, sizes: &[usize]) -> Vec<Tensor> {
    let outer: usize = tensor.shape[..axis].iter().product();
    let per_item = tensor.data.len() / outer.max(1) / tensor.shape[axis].max(1);
    let block_len = tensor.data.len() / outer.max(1);
    let mut offset = 0;
    sizes
        .iter()
        .map(|&size| {
            let (start, end) = (offset, offset + size * per_item);
            offset = end;
            let data = if outer == 1 {
                tensor.data.slice(start..end)
            } else {
                let blocks = tensor.data.chunks(block_len.max(1)).take(outer);
                blocks.flat_map(|block| &block[start..end]).copied().collect::<Vec<u8>>().into()
            };
            let mut shape = tensor.shape.clone();
            shape[axis] = size;
            Tensor { element_type: tensor.element_type, shape, data }
        })
        .collect()
}

/// Lengthens a tensor along `axis` to `length`, filling the new positions with `fill` (one
/// element's little-endian bytes).
pub fn pad(tensor: &Tensor, axis: usize, length: usize, fill: &[u8]) -> Tensor {
    let size = tensor.shape[axis];
    debug_assert!(length >= size && fill.len() == tensor.element_type.size());
    // Row-major: for each position of the dimensions before `axis` there is one block of
    // `size` slices, each `inner` bytes long; it grows to `length` slices.
    let outer: usize = tensor.shape[..axis].iter().product();
    let inner = tensor.element_type.size() * tensor.shape[axis + 1..].iter().product::<usize>();
    let padding: Vec<u8> = fill.iter().copied().cycle().take((length - size) * inner).collect();
    let mut data = Vec::with_capacity(outer * length * inner);
    for block in tensor.data.chunks((size * inner).max(1)).take(outer) {
        data.extend_from_slice(block);
        data.extend_from_slice(&padding);
    }
    let mut shape = tensor.shape.clone();
    shape[axis] = length;
    Tensor { element_type: tensor.element_type, shape, data: data.into() }
}

/// Keeps the first `length` positions of a tensor along `axis`.
pub fn truncate(tensor: &Tensor, axis: usize, length: usize) -> Tensor {
    let size = tensor.shape[axis];
    debug_assert!(length <= size);
    let outer: usize = tensor.shape[..axis].iter().product();
    let inner = tensor.element_type.size() * tensor.shape[axis + 1..].iter().product::<usize>();
    let mut data = Vec::with_capacity(outer * length * inner);
    for block in tensor.data.chunks((size * inner).max(1)).take(outer) {
        data.extend_from_slice(&block[..length * inner]);
    }
    let mut shape = tensor.shape.clone();
    shape[axis] = length;
    Tensor { element_type: tensor.element_type, shape, data: data.into() }
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
    fn tensor_data_length_must_match_shape() {
        assert!(Tensor::new(ElementType::F32, vec![2, 3], vec![0; 24]).is_ok());
        let err = Tensor::new(ElementType::F32, vec![2, 3], vec![0; 23]).unwrap_err().to_string();
        assert!(err.contains("needs 24 bytes, got 23"), "{err}");
        assert!(Tensor::new(ElementType::F32, vec![usize::MAX, 2], vec![]).is_err());
    }

    #[test]
    fn pad_values_encode_exactly_or_not_at_all() {
        assert_eq!(ElementType::I64.encode(-1.0).unwrap(), (-1i64).to_le_bytes());
        assert_eq!(ElementType::F32.encode(0.5).unwrap(), 0.5f32.to_le_bytes());
        assert_eq!(ElementType::U8.encode(255.0).unwrap(), vec![255]);
        assert_eq!(ElementType::U8.encode(256.0).unwrap_err().to_string(), "UINT8 cannot hold 256");
        assert!(ElementType::I32.encode(0.5).is_err());
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

    fn counting(shape: Vec<usize>, start: u8) -> Tensor {
        let len = shape.iter().product::<usize>();
        Tensor::new(ElementType::U8, shape, (0..len).map(|i| start + i as u8).collect::<Vec<u8>>()).unwrap()
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

    #[test]
    fn pad_then_truncate_round_trips_on_any_axis() {
        // [batch=2, sequence=2, width=2] padded along the sequence axis to 3 with 0xff.
        let tensor = counting(vec![2, 2, 2], 1);
        let padded = pad(&tensor, 1, 3, &[0xff]);
        assert_eq!(padded.shape, vec![2, 3, 2]);
        assert_eq!(padded.data, vec![1, 2, 3, 4, 255, 255, 5, 6, 7, 8, 255, 255]);
        assert_eq!(truncate(&padded, 1, 2), tensor);
        // The last axis, with multi-byte elements.
        let ids = Tensor::new(
            ElementType::I32,
            vec![1, 2],
            [7i32, 8].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        )
        .unwrap();
        let padded = pad(&ids, 1, 4, &(-1i32).to_le_bytes());
        let values: Vec<i32> =
            padded.data.chunks(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(values, vec![7, 8, -1, -1]);
        assert_eq!(truncate(&padded, 1, 2), ids);
    }

    #[test]
    fn axes_come_from_shared_symbols() {
        use DeclaredDim::{Fixed, Named, Unnamed};
        let b = || Named("b");
        let s = || Named("s");
        // MiniLM: the batch and sequence symbols; a pooled output has no sequence axis.
        let (inputs, outputs) =
            find_axes(&[vec![b(), s()], vec![b(), s()]], &[vec![b(), s(), Fixed], vec![b(), Fixed]]);
        assert_eq!(inputs, vec![Axes { batch: Some(0), sequence: Some(1) }; 2]);
        assert_eq!(
            outputs,
            vec![Axes { batch: Some(0), sequence: Some(1) }, Axes { batch: Some(0), sequence: None }]
        );
        // A recurrent state batched along axis 1, no sequence.
        let (inputs, _) = find_axes(&[vec![Fixed, b(), Fixed]], &[vec![Fixed, b(), Fixed]]);
        assert_eq!(inputs, vec![Axes { batch: Some(1), sequence: None }]);
        // Two candidates for the sequence axis (an image's height and width): neither.
        let (inputs, _) = find_axes(&[vec![b(), Fixed, Named("h"), Named("w")]], &[vec![b(), Fixed]]);
        assert_eq!(inputs, vec![Axes { batch: Some(0), sequence: None }]);
        // A symbol one input lacks is not a sequence axis.
        let (inputs, _) = find_axes(&[vec![b(), s()], vec![b(), Fixed]], &[vec![b()]]);
        assert_eq!(inputs[0], Axes { batch: Some(0), sequence: None });
        // No batch axis, no sequence axis.
        let (inputs, _) = find_axes(&[vec![s()]], &[vec![Fixed]]);
        assert_eq!(inputs, vec![Axes::default()]);
        // Outputs whose length is not the inputs' cannot be cut back: no padding.
        for output in [vec![b(), s(), s()], vec![b(), Unnamed], vec![b(), Named("frames")]] {
            let (inputs, outputs) = find_axes(&[vec![b(), s()]], std::slice::from_ref(&output));
            assert_eq!(inputs, vec![Axes { batch: Some(0), sequence: None }], "{output:?}");
            assert_eq!(outputs[0].sequence, None);
        }
    }
}

/// Fuzzing what a guest's `wasi:nn` calls and OIP clients hand the host: any shape, type
/// and byte count makes a tensor or a `TensorError` (no overflow, no panic); any named
/// tensors pass a model's input check only if they fit it; and the batcher's reshaping
/// (pad, truncate, split, concat) gives back what it was given.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn element_type() -> impl Strategy<Value = ElementType> {
        prop::sample::select(vec![
            ElementType::F16,
            ElementType::F32,
            ElementType::F64,
            ElementType::Bf16,
            ElementType::U8,
            ElementType::I32,
            ElementType::I64,
        ])
    }

    /// A valid tensor of rank 1 to 3, each dimension 1 to 4.
    fn tensor() -> impl Strategy<Value = Tensor> {
        (element_type(), prop::collection::vec(1usize..5, 1..4)).prop_flat_map(|(element_type, shape)| {
            let bytes = shape.iter().product::<usize>() * element_type.size();
            prop::collection::vec(any::<u8>(), bytes)
                .prop_map(move |data| Tensor::new(element_type, shape.clone(), data).unwrap())
        })
    }

    /// A text model's inputs: `ids` and `mask`, `[batch, sequence]`, int64.
    fn text_model() -> Signature {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            element_type: ElementType::I64,
            shape: vec![Dim::Any, Dim::Any],
            batch_axis: Some(0),
            sequence_axis: Some(1),
        };
        Signature { inputs: vec![spec("ids"), spec("mask")], outputs: vec![spec("hidden")] }
    }

    proptest! {
        #[test]
        fn any_shape_and_length(
            element_type in element_type(),
            shape in prop::collection::vec(prop_oneof![0usize..8, Just(usize::MAX), Just(1usize << 33)], 0..6),
            length in prop_oneof![0usize..512, Just(usize::MAX)],
        ) {
            let expected = shape.iter().try_fold(element_type.size(), |acc, &d| acc.checked_mul(d));
            // Data only as long as a test can afford: a huge claimed length is checked by size.
            let data = vec![0u8; length.min(4096)];
            let result = Tensor::new(element_type, shape, data);
            prop_assert_eq!(result.is_ok(), expected == Some(length.min(4096)));
        }

        #[test]
        fn any_named_inputs(
            given in prop::collection::vec(
                (prop::sample::select(vec!["ids", "mask", "other"]), element_type(), prop::collection::vec(0usize..4, 0..4)),
                0..4,
            ),
        ) {
            let signature = text_model();
            let named: Vec<NamedTensor> = given
                .into_iter()
                .map(|(name, element_type, shape)| {
                    let bytes = shape.iter().product::<usize>() * element_type.size();
                    (name.to_string(), Tensor::new(element_type, shape, vec![0u8; bytes]).unwrap())
                })
                .collect();
            if let Ok(ordered) = signature.check_inputs(named) {
                prop_assert_eq!(ordered.len(), 2);
                prop_assert!(ordered.iter().all(|t| t.element_type == ElementType::I64 && t.shape.len() == 2));
                prop_assert!(ordered.iter().all(|t| t.shape.iter().all(|&d| d > 0)));
                prop_assert_eq!(ordered[0].shape[1], ordered[1].shape[1]);
            }
        }

        #[test]
        fn reshaping_gives_back_what_it_was_given(tensor in tensor(), axis_pick in any::<prop::sample::Index>(), extra in 0usize..4) {
            let axis = axis_pick.index(tensor.shape.len());
            let size = tensor.shape[axis];
            let fill = vec![7u8; tensor.element_type.size()];
            let padded = pad(&tensor, axis, size + extra, &fill);
            prop_assert_eq!(&truncate(&padded, axis, size), &tensor);
            let cut = size / 2;
            let parts = split(&tensor, axis, &[cut, size - cut]);
            prop_assert_eq!(&concat(&[&parts[0], &parts[1]], axis), &tensor);
        }
    }
}

//! Tensors as plain data: the element types `wasi:nn` carries, a [`Tensor`] (element type,
//! shape, little-endian bytes) independent of any backend, and [`TensorError`], why tensors
//! are not acceptable.

use std::fmt;

use bytes::Bytes;

/// The element types `wasi:nn` can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

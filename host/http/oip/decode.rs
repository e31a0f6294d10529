//! An infer request's body decoded within bounds: the KServe v2 JSON request, with the
//! binary tensor data extension (`Inference-Header-Content-Length`).
//!
//! No generic JSON tree is built. The JSON part is read once into small typed structures,
//! every list capped (inputs, outputs, parameters, dimensions), each input's `data` kept as
//! the unparsed text it is in the body. Each input's declared datatype and shape are then
//! checked against the model, and its size against the text that must hold it, before any
//! memory is committed for it; its bytes are charged to the node's memory budget, allocated
//! once at their exact size, and filled by reading the numbers straight out of the text.
//! Binary inputs are slices of the body: no copy.

use std::fmt;

use bytes::Bytes;
use http::HeaderValue;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::http::protocol::{MAX_DIMENSIONS, MAX_PARAMETERS, MAX_TENSORS};
use crate::inference::tensor::{ElementType, NamedTensor, Signature, Tensor, TensorError};
use crate::request::memory::{Charge, MemoryExhausted};

/// Header giving the length of the JSON part of a binary-extension body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// An infer request, decoded.
#[derive(Debug)]
pub struct Decoded {
    /// The request's `id`, echoed in the answer.
    pub id: Option<String>,
    pub inputs: Vec<NamedTensor>,
    /// The outputs asked for (none: all), each with whether it is wanted as binary data.
    pub outputs: Vec<(String, Option<bool>)>,
    /// `parameters.binary_data_output`: every output as binary data.
    pub binary_output: bool,
}

/// Why an infer request could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a well-formed request: answered 400.
    #[error("{0}")]
    Malformed(String),
    /// Well formed, but not what the model takes: answered 422, as the model would.
    #[error(transparent)]
    Model(#[from] TensorError),
    /// Its tensors do not fit in the node's memory budget now.
    #[error(transparent)]
    Memory(#[from] MemoryExhausted),
}

/// The JSON part of an infer request, its tensors' data left as text.
#[derive(Deserialize)]
struct RequestText<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(borrow)]
    inputs: Capped<InputText<'a>, MAX_TENSORS>,
    #[serde(default, borrow)]
    outputs: Capped<OutputText<'a>, MAX_TENSORS>,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
}

#[derive(Deserialize)]
struct InputText<'a> {
    name: String,
    shape: Capped<u64, MAX_DIMENSIONS>,
    datatype: String,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
}

#[derive(Deserialize)]
struct OutputText<'a> {
    name: String,
    #[serde(default, borrow)]
    parameters: Parameters<'a>,
}

/// A JSON list of at most `N` items.
struct Capped<T, const N: usize>(Vec<T>);

impl<T, const N: usize> Default for Capped<T, N> {
    fn default() -> Self {
        Capped(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Capped<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Items<T, const N: usize>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Items<T, N> {
            type Value = Capped<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a list of at most {N} items")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    if items.len() == N {
                        return Err(de::Error::custom(format!("a list of at most {N} items")));
                    }
                    items.push(item);
                }
                Ok(Capped(items))
            }
        }
        deserializer.deserialize_seq(Items(std::marker::PhantomData))
    }
}

/// A JSON object of at most [`MAX_PARAMETERS`] parameters, their values left as text.
#[derive(Default)]
struct Parameters<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Parameters<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Entries<'a> {
            type Value = Parameters<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an object of at most {MAX_PARAMETERS} parameters")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, &'a RawValue>()? {
                    if entries.len() == MAX_PARAMETERS {
                        return Err(de::Error::custom(format!("at most {MAX_PARAMETERS} parameters")));
                    }
                    entries.push((key, value));
                }
                Ok(Parameters(entries))
            }
        }
        deserializer.deserialize_map(Entries(std::marker::PhantomData))
    }
}

impl Parameters<'_> {
    /// The parameter `name`, if given; one given that is not a `T` is a malformed request.
    fn get<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, DecodeError> {
        let Some((_, value)) = self.0.iter().find(|(key, _)| key == name) else { return Ok(None) };
        serde_json::from_str(value.get())
            .map(Some)
            .map_err(|e| DecodeError::Malformed(format!("parameter {name:?}: {e}")))
    }
}

/// Decodes `body` for a model of `signature`, charging the tensors it decodes to `charge`.
pub fn decode(
    body: &Bytes,
    header_length: Option<&HeaderValue>,
    signature: &Signature,
    charge: &mut Charge,
) -> Result<Decoded, DecodeError> {
    let json_length = match header_length {
        None => body.len(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n <= body.len())
            .ok_or_else(|| {
                DecodeError::Malformed(format!("{HEADER_LENGTH} must be a length within the body"))
            })?,
    };
    let request: RequestText = serde_json::from_slice(&body[..json_length])
        .map_err(|e| DecodeError::Malformed(format!("malformed infer request: {e}")))?;
    let mut binary = body.slice(json_length..);
    let mut inputs = Vec::with_capacity(request.inputs.0.len());
    for input in &request.inputs.0 {
        let tensor = input_tensor(input, &mut binary, signature, charge)?;
        inputs.push((input.name.clone(), tensor));
    }
    if !binary.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} bytes of binary data are left after the last input's",
            binary.len()
        )));
    }
    let outputs = request
        .outputs
        .0
        .iter()
        .map(|o| Ok((o.name.clone(), o.parameters.get("binary_data")?)))
        .collect::<Result<_, DecodeError>>()?;
    Ok(Decoded {
        id: request.id,
        inputs,
        outputs,
        binary_output: request.parameters.get("binary_data_output")?.unwrap_or(false),
    })
}

/// One input's tensor: checked against the model, then read from its binary part or its JSON
/// data.
fn input_tensor(
    input: &InputText,
    binary: &mut Bytes,
    signature: &Signature,
    charge: &mut Charge,
) -> Result<Tensor, DecodeError> {
    let bad = |reason: String| DecodeError::Malformed(format!("input {:?}: {reason}", input.name));
    let element_type = ElementType::from_name(&input.datatype)
        .ok_or_else(|| DecodeError::Malformed(format!("datatype {} is not supported", input.datatype)))?;
    let shape: Vec<usize> = input
        .shape
        .0
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("dimension {d} is too large"))))
        .collect::<Result<_, _>>()?;
    let elements = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let bytes = elements.and_then(|n| n.checked_mul(element_type.size()));
    let (Some(elements), Some(bytes)) = (elements, bytes) else {
        return Err(DecodeError::Model(TensorError::TooLarge(shape)));
    };
    signature.check_declared(&input.name, element_type, &shape)?;
    if let Some(declared) = input.parameters.get::<u64>("binary_data_size")? {
        let size = usize::try_from(declared).ok().filter(|&size| size <= binary.len());
        let size = size.ok_or_else(|| bad(format!("binary data is shorter than its {declared} bytes")))?;
        let data = binary.split_to(size);
        return Tensor::new(element_type, shape, data).map_err(|reason| bad(reason.to_string()));
    }
    let data = input.data.ok_or_else(|| bad("no data".into()))?;
    if matches!(element_type, ElementType::F16 | ElementType::Bf16) {
        return Err(bad(format!("send {element_type} data with the binary tensor data extension")));
    }
    // Each number takes a character and a separator at least: refuse a shape the text cannot
    // hold before committing memory to it.
    let most = data.get().len().div_ceil(2);
    if elements > most {
        return Err(bad(format!("the shape has {elements} elements; the data holds at most {most}")));
    }
    charge.grow(bytes)?;
    let mut out = Vec::with_capacity(bytes);
    let mut numbers = Numbers { element_type, out: &mut out, remaining: elements };
    let mut reader = serde_json::Deserializer::from_str(data.get());
    (&mut numbers).deserialize(&mut reader).map_err(|e| bad(e.to_string()))?;
    if numbers.remaining > 0 {
        let given = elements - numbers.remaining;
        return Err(bad(format!("the shape has {elements} elements; the data has {given}")));
    }
    Tensor::new(element_type, shape, out).map_err(|reason| bad(reason.to_string()))
}

/// Reads a (possibly nested) JSON list of numbers as little-endian elements of one type, in
/// row-major order, into a buffer made for exactly `remaining` of them.
struct Numbers<'b> {
    element_type: ElementType,
    out: &'b mut Vec<u8>,
    remaining: usize,
}

impl Numbers<'_> {
    fn push<E: de::Error>(&mut self, integer: Option<i128>, float: f64) -> Result<(), E> {
        if self.remaining == 0 {
            return Err(E::custom("the data has more elements than the shape"));
        }
        self.remaining -= 1;
        let in_range = |min: i128, max: i128| {
            integer
                .filter(|v| (min..=max).contains(v))
                .ok_or_else(|| E::custom(format!("{float} is not a {} in range", self.element_type)))
        };
        match self.element_type {
            ElementType::F32 => self.out.extend((float as f32).to_le_bytes()),
            ElementType::F64 => self.out.extend(float.to_le_bytes()),
            ElementType::U8 => self.out.push(in_range(0, u8::MAX.into())? as u8),
            ElementType::I32 => {
                self.out.extend((in_range(i32::MIN.into(), i32::MAX.into())? as i32).to_le_bytes())
            }
            ElementType::I64 => {
                self.out.extend((in_range(i64::MIN.into(), i64::MAX.into())? as i64).to_le_bytes())
            }
            ElementType::F16 | ElementType::Bf16 => unreachable!("binary only, refused before"),
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for &mut Numbers<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &mut Numbers<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number or a list of numbers")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.push(Some(value.into()), value as f64)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.push(Some(value.into()), value as f64)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        self.push(None, value)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::tensor::{Dim, TensorSpec};
    use crate::request::memory::MemoryBudget;

    fn signature(element_type: ElementType, shape: Vec<Dim>) -> Signature {
        let spec =
            TensorSpec { name: "x".into(), element_type, shape, batch_axis: None, sequence_axis: None };
        Signature { inputs: vec![spec.clone()], outputs: vec![TensorSpec { name: "y".into(), ..spec }] }
    }

    fn decode_text(text: &str, signature: &Signature) -> (Result<Decoded, DecodeError>, usize) {
        let budget = MemoryBudget::new(1 << 20);
        let mut charge = budget.nothing();
        let decoded = decode(&Bytes::from(text.to_string()), None, signature, &mut charge);
        (decoded, charge.bytes())
    }

    #[test]
    fn nested_json_data_is_read_in_row_major_order_into_exactly_its_bytes() {
        let signature = signature(ElementType::I32, vec![Dim::Any, Dim::Fixed(2)]);
        let text = r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT32","data":[[1,2],[3,4]]}]}"#;
        let (decoded, charged) = decode_text(text, &signature);
        let tensor = &decoded.unwrap().inputs[0].1;
        let values: Vec<i32> =
            tensor.data.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!((values, charged), (vec![1, 2, 3, 4], 16));
        for (data, why) in [
            ("[1,\"x\",3,4]", "a string"),
            ("[1,2,3]", "too few"),
            ("[1,2,3,4,5]", "too many"),
            ("[1,2,3,4.5]", "not an integer"),
            ("[1,2,3,3000000000]", "out of range"),
        ] {
            let text =
                format!(r#"{{"inputs":[{{"name":"x","shape":[2,2],"datatype":"INT32","data":{data}}}]}}"#);
            assert!(matches!(decode_text(&text, &signature).0, Err(DecodeError::Malformed(_))), "{why}");
        }
    }

    #[test]
    fn a_shape_is_checked_against_the_model_and_the_text_before_memory_is_committed() {
        let signature = signature(ElementType::F32, vec![Dim::Any, Dim::Fixed(4)]);
        let wrong = r#"{"inputs":[{"name":"x","shape":[1,5],"datatype":"FP32","data":[1,2,3,4,5]}]}"#;
        assert!(matches!(decode_text(wrong, &signature), (Err(DecodeError::Model(_)), 0)));
        let huge = r#"{"inputs":[{"name":"x","shape":[100000000,4],"datatype":"FP32","data":[0,0]}]}"#;
        assert!(matches!(decode_text(huge, &signature), (Err(DecodeError::Malformed(_)), 0)));
        let over_budget = r#"{"inputs":[{"name":"x","shape":[1000000,4],"datatype":"FP32","data":[0]}]}"#;
        let padded = over_budget.replace("[0]", &format!("[{}0]", "0,".repeat(4_000_000)));
        assert!(matches!(decode_text(&padded, &signature), (Err(DecodeError::Memory(_)), 0)));
    }

    #[test]
    fn lists_are_capped() {
        let signature = signature(ElementType::F32, vec![Dim::Any]);
        let inputs =
            vec![r#"{"name":"x","shape":[1],"datatype":"FP32","data":[0]}"#; MAX_TENSORS + 1].join(",");
        let text = format!(r#"{{"inputs":[{inputs}]}}"#);
        assert!(
            matches!(decode_text(&text, &signature).0, Err(DecodeError::Malformed(m)) if m.contains("at most"))
        );
        let parameters: Vec<String> = (0..=MAX_PARAMETERS).map(|n| format!(r#""p{n}":1"#)).collect();
        let text = format!(r#"{{"inputs":[],"parameters":{{{}}}}}"#, parameters.join(","));
        assert!(
            matches!(decode_text(&text, &signature).0, Err(DecodeError::Malformed(m)) if m.contains("at most"))
        );
    }
}

/// Fuzzing the infer body decoder (`PROPTEST_CASES` sets the inputs per target; see
/// README, "Fuzzing"): any body, structured or not, is a tensor list or an error, never a
/// panic; every tensor decoded holds exactly its shape's bytes, and what was charged for
/// tensors read from JSON is their size.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::inference::tensor::{Dim, TensorSpec};
    use crate::request::memory::MemoryBudget;

    /// JSON that looks like tensor data: numbers, nested arrays, and now and then junk.
    fn data() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|v| json!(v)),
            Just(json!("seven")),
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 64, 8, |inner| prop::collection::vec(inner, 0..8).prop_map(Value::from))
    }

    fn input() -> impl Strategy<Value = Value> {
        let datatype =
            prop::sample::select(vec!["FP32", "FP16", "FP64", "BF16", "UINT8", "INT32", "INT64", "BOOL", ""]);
        let dim = prop_oneof![0u64..6, Just(u64::MAX), Just(1u64 << 40)];
        (
            prop::sample::select(vec!["x", "ids", ""]),
            datatype,
            prop::collection::vec(dim, 0..4),
            prop::option::of(data()),
            prop::option::of(prop_oneof![0u64..64, Just(u64::MAX)]),
        )
            .prop_map(|(name, datatype, shape, data, binary)| {
                let mut input = json!({ "name": name, "datatype": datatype, "shape": shape });
                if let Some(data) = data {
                    input["data"] = data;
                }
                if let Some(size) = binary {
                    input["parameters"] = json!({ "binary_data_size": size });
                }
                input
            })
    }

    /// A model that takes any `x` of any rank up to 3, for each type in turn.
    fn signatures() -> Vec<Signature> {
        [ElementType::F32, ElementType::I64, ElementType::U8, ElementType::F16]
            .into_iter()
            .flat_map(|element_type| {
                (0..=3).map(move |rank| {
                    let spec = TensorSpec {
                        name: "x".into(),
                        element_type,
                        shape: vec![Dim::Any; rank],
                        batch_axis: None,
                        sequence_axis: None,
                    };
                    Signature { inputs: vec![spec.clone()], outputs: vec![spec] }
                })
            })
            .collect()
    }

    fn check(header_length: Option<usize>, body: Vec<u8>) {
        let header = header_length.map(|n| HeaderValue::from(n as u64));
        let body = Bytes::from(body);
        let budget = MemoryBudget::new(1 << 20);
        for signature in signatures() {
            let mut charge = budget.nothing();
            if let Ok(decoded) = decode(&body, header.as_ref(), &signature, &mut charge) {
                for (_, tensor) in &decoded.inputs {
                    let elements: usize = tensor.shape.iter().product();
                    assert_eq!(tensor.data.len(), elements * tensor.element_type.size());
                }
            }
            assert!(charge.bytes() <= budget.limit());
        }
        assert_eq!(budget.used(), 0, "every charge is given back");
    }

    proptest! {
        #[test]
        fn any_bytes(body in prop::collection::vec(any::<u8>(), 0..512), header in prop::option::of(0usize..600)) {
            check(header, body);
        }

        #[test]
        fn infer_requests(
            inputs in prop::collection::vec(input(), 0..4),
            binary in prop::collection::vec(any::<u8>(), 0..128),
            declare_length in any::<bool>(),
        ) {
            let mut body = json!({ "inputs": inputs }).to_string().into_bytes();
            let json_length = body.len();
            body.extend(binary);
            check(declare_length.then_some(json_length), body);
        }
    }
}

//! The answer to an infer request: the outputs asked for (all, if none were named), each as
//! JSON numbers or, where asked for, as binary data after the JSON part (the binary tensor
//! data extension).
//!
//! Its size is bounded before it is written: the longest text each element can take is
//! charged to the node's memory budget first, the JSON is written straight into one buffer
//! (no JSON tree of the numbers), and the charge is then trimmed to what was written; it is
//! held until the answer has been handed to the connection.

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode};

use crate::http::oip::decode::{Decoded, HEADER_LENGTH};
use crate::http::response::{self, Body};
use crate::inference::tensor::{ElementType, NamedTensor, Tensor};
use crate::request::memory::{Charge, MemoryExhausted};

/// Room for the answer's fixed text and each output's name, type and shape.
const HEADER_ROOM: usize = 256;

/// The answer to `request` from `outputs` of `model`, charged to `charge`.
pub fn answer(
    model: &str,
    request: &Decoded,
    outputs: Vec<NamedTensor>,
    charge: &mut Charge,
) -> Result<Response<Body>, MemoryExhausted> {
    let chosen: Vec<(String, Tensor, bool)> = outputs
        .into_iter()
        .filter_map(|(name, tensor)| {
            let asked = request.outputs.iter().find(|(asked, _)| *asked == name);
            if !request.outputs.is_empty() && asked.is_none() {
                return None;
            }
            let binary = asked.and_then(|(_, binary)| *binary).unwrap_or(request.binary_output)
                || longest_text(tensor.element_type).is_none();
            Some((name, tensor, binary))
        })
        .collect();
    // A string's escaped text takes at most six bytes a byte (`\u00XX`).
    let strings = 6 * (model.len() + request.id.as_ref().map_or(0, String::len));
    let most: usize = HEADER_ROOM
        + strings
        + chosen
            .iter()
            .map(|(name, tensor, binary)| {
                let data = match longest_text(tensor.element_type) {
                    Some(per_element) if !binary => {
                        tensor.data.len() / tensor.element_type.size() * per_element
                    }
                    _ => tensor.data.len(),
                };
                HEADER_ROOM + 6 * name.len() + 21 * tensor.shape.len() + data
            })
            .sum::<usize>();
    charge.grow(most)?;
    let mut text = Vec::with_capacity(most);
    text.extend_from_slice(b"{\"model_name\":");
    write_string(&mut text, model);
    text.extend_from_slice(b",\"model_version\":\"1\"");
    if let Some(id) = &request.id {
        text.extend_from_slice(b",\"id\":");
        write_string(&mut text, id);
    }
    text.extend_from_slice(b",\"outputs\":[");
    let mut binary = BytesMut::new();
    for (index, (name, tensor, as_binary)) in chosen.iter().enumerate() {
        if index > 0 {
            text.push(b',');
        }
        text.extend_from_slice(b"{\"name\":");
        write_string(&mut text, name);
        text.extend_from_slice(format!(",\"datatype\":\"{}\",\"shape\":[", tensor.element_type).as_bytes());
        for (axis, size) in tensor.shape.iter().enumerate() {
            if axis > 0 {
                text.push(b',');
            }
            text.extend_from_slice(size.to_string().as_bytes());
        }
        text.push(b']');
        if *as_binary {
            text.extend_from_slice(
                format!(",\"parameters\":{{\"binary_data_size\":{}}}}}", tensor.data.len()).as_bytes(),
            );
            binary.extend_from_slice(&tensor.data);
        } else {
            text.extend_from_slice(b",\"data\":[");
            write_numbers(&mut text, tensor);
            text.extend_from_slice(b"]}");
        }
    }
    text.extend_from_slice(b"]}");
    drop(chosen);
    let header_length = text.len();
    let (content_type, body) = if binary.is_empty() {
        ("application/json", Bytes::from(text))
    } else {
        let mut body = BytesMut::from(&text[..]);
        body.extend_from_slice(&binary);
        ("application/octet-stream", body.freeze())
    };
    charge.resize(body.len())?;
    let mut response = response::text(StatusCode::OK, content_type, body);
    if content_type == "application/octet-stream" {
        response.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(header_length));
    }
    Ok(response)
}

/// The longest JSON text one element of `element_type` takes, with its separator; `None` for
/// types sent as binary data only.
fn longest_text(element_type: ElementType) -> Option<usize> {
    match element_type {
        ElementType::F32 => Some(16),
        ElementType::F64 => Some(25),
        ElementType::I64 => Some(21),
        ElementType::I32 => Some(12),
        ElementType::U8 => Some(4),
        ElementType::F16 | ElementType::Bf16 => None,
    }
}

/// `tensor`'s elements as JSON numbers, comma-separated (non-finite floats as `null`).
fn write_numbers(text: &mut Vec<u8>, tensor: &Tensor) {
    fn each<const N: usize, T: serde::Serialize>(text: &mut Vec<u8>, data: &[u8], read: fn([u8; N]) -> T) {
        for (index, bytes) in data.chunks_exact(N).enumerate() {
            if index > 0 {
                text.push(b',');
            }
            let value = read(bytes.try_into().expect("chunks of N bytes"));
            serde_json::to_writer(&mut *text, &value).expect("numbers always serialize");
        }
    }
    let data = &tensor.data;
    match tensor.element_type {
        ElementType::F32 => each(text, data, f32::from_le_bytes),
        ElementType::F64 => each(text, data, f64::from_le_bytes),
        ElementType::I64 => each(text, data, i64::from_le_bytes),
        ElementType::I32 => each(text, data, i32::from_le_bytes),
        ElementType::U8 => each(text, data, u8::from_le_bytes),
        ElementType::F16 | ElementType::Bf16 => unreachable!("sent as binary data"),
    }
}

/// `value` as a JSON string, escaped.
fn write_string(text: &mut Vec<u8>, value: &str) {
    serde_json::to_writer(text, value).expect("strings always serialize");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::memory::MemoryBudget;

    fn decoded(outputs: Vec<(String, Option<bool>)>, binary_output: bool) -> Decoded {
        Decoded { id: Some("req \"7\"".into()), inputs: Vec::new(), outputs, binary_output }
    }

    async fn text_of(response: Response<Body>) -> Vec<u8> {
        use http_body_util::BodyExt;
        response.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn outputs_are_written_as_json_or_binary_and_the_charge_is_what_was_written() {
        let budget = MemoryBudget::new(1 << 20);
        let mut charge = budget.nothing();
        let floats = Tensor::new(
            ElementType::F32,
            vec![1, 3],
            [0.5f32, -2.0, f32::NAN].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        )
        .unwrap();
        let ids = Tensor::new(
            ElementType::I64,
            vec![2],
            [7i64, -9].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        )
        .unwrap();
        let outputs = vec![("y".to_string(), floats.clone()), ("ids".to_string(), ids.clone())];
        let response = answer("m", &decoded(Vec::new(), false), outputs, &mut charge).unwrap();
        let text = text_of(response).await;
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value["id"], "req \"7\"");
        assert_eq!(value["outputs"][0]["data"], serde_json::json!([0.5, -2.0, null]));
        assert_eq!(value["outputs"][1]["data"], serde_json::json!([7, -9]));
        assert_eq!(charge.bytes(), text.len());

        let mut charge = budget.nothing();
        let outputs = vec![("y".to_string(), floats), ("ids".to_string(), ids)];
        let asked = vec![("ids".to_string(), Some(true))];
        let response = answer("m", &decoded(asked, false), outputs, &mut charge).unwrap();
        let length: usize = response.headers()[HEADER_LENGTH].to_str().unwrap().parse().unwrap();
        let body = text_of(response).await;
        let header: serde_json::Value = serde_json::from_slice(&body[..length]).unwrap();
        assert_eq!(header["outputs"].as_array().unwrap().len(), 1, "only the output asked for");
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 16);
        assert_eq!(body.len(), length + 16);
    }

    #[test]
    fn an_answer_over_the_budget_is_refused_before_it_is_written() {
        let budget = MemoryBudget::new(1000);
        let mut charge = budget.nothing();
        let big = Tensor::new(ElementType::F32, vec![1000], vec![0u8; 4000]).unwrap();
        assert!(answer("m", &decoded(Vec::new(), false), vec![("y".into(), big)], &mut charge).is_err());
        assert_eq!(budget.used(), 0);
    }
}

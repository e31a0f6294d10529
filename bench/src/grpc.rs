//! The gRPC form of a load: `grpc://HOST:PORT/MODEL` as the Open Inference Protocol's
//! `ModelInfer` call, sent over HTTP/2 like any other request. A body is given as the REST
//! protocol's JSON infer request (`{"inputs": [{"name", "shape", "datatype", "data"}]}`) and
//! sent as the protobuf `ModelInferRequest` with raw tensor contents, framed as gRPC frames
//! it (a flag byte and a big-endian length). The answer's `grpc-status` trailer says whether
//! it succeeded.

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use http::Uri;
use prost::Message;
use serde_json::Value;

/// The HTTP/2 path of the protocol's unary infer call.
const MODEL_INFER_PATH: &str = "/inference.GRPCInferenceService/ModelInfer";

/// The part of the protocol's `ModelInferRequest` a load sends (same field numbers).
#[derive(Clone, PartialEq, Message)]
struct ModelInferRequest {
    #[prost(string, tag = "1")]
    model_name: String,
    #[prost(message, repeated, tag = "5")]
    inputs: Vec<InferInputTensor>,
    #[prost(bytes = "vec", repeated, tag = "7")]
    raw_input_contents: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct InferInputTensor {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    datatype: String,
    #[prost(int64, repeated, tag = "3")]
    shape: Vec<i64>,
}

/// For a `grpc://HOST:PORT/MODEL` URL: the HTTP/2 URL of the infer call, and the model.
pub fn endpoint(url: &Uri) -> anyhow::Result<Option<(Uri, String)>> {
    if url.scheme_str() != Some("grpc") {
        return Ok(None);
    }
    let authority = url.authority().context("a gRPC URL names host:port")?;
    let model = url.path().trim_matches('/');
    if model.is_empty() || model.contains('/') {
        bail!("a gRPC URL names one model: grpc://HOST:PORT/MODEL");
    }
    let call = format!("http://{authority}{MODEL_INFER_PATH}").parse()?;
    Ok(Some((call, model.to_string())))
}

/// The gRPC frame of a `ModelInferRequest` for `model` from the REST JSON infer request.
pub fn infer_frame(model: &str, json: &[u8]) -> anyhow::Result<Bytes> {
    let request: Value = serde_json::from_slice(json).context("the body is not a JSON infer request")?;
    let inputs = request["inputs"].as_array().context("the infer request has no \"inputs\"")?;
    let mut message = ModelInferRequest { model_name: model.to_string(), ..Default::default() };
    for input in inputs {
        let name = input["name"].as_str().context("an input has no name")?;
        let datatype = input["datatype"].as_str().context("an input has no datatype")?;
        let shape: Vec<i64> = input["shape"]
            .as_array()
            .context("an input has no shape")?
            .iter()
            .map(|d| d.as_i64().context("a dimension is not a number"))
            .collect::<anyhow::Result<_>>()?;
        let mut values = Vec::new();
        flatten(&input["data"], &mut values);
        let raw: Vec<u8> = match datatype {
            "FP32" => values.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect(),
            "FP64" => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            "INT64" => values.iter().flat_map(|v| (*v as i64).to_le_bytes()).collect(),
            "INT32" => values.iter().flat_map(|v| (*v as i32).to_le_bytes()).collect(),
            "UINT8" => values.iter().map(|v| *v as u8).collect(),
            other => bail!("input {name}: datatype {other} is not supported here"),
        };
        message.inputs.push(InferInputTensor { name: name.into(), datatype: datatype.into(), shape });
        message.raw_input_contents.push(raw);
    }
    let encoded = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + encoded.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(encoded.len()).context("the request is over 4 GiB")?);
    frame.put_slice(&encoded);
    Ok(frame.freeze())
}

/// The numbers of a (possibly nested) JSON array, in order.
fn flatten(value: &Value, out: &mut Vec<f64>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        Value::Number(number) => out.push(number.as_f64().unwrap_or(0.0)),
        _ => {}
    }
}

/// The HTTP status a gRPC status code stands for in a report (`grpc-status` 0 is 200).
pub fn status_of(grpc_status: Option<&[u8]>) -> u16 {
    // As the server counts them (edge-infer's http/grpc.rs).
    match grpc_status {
        Some(b"0") => 200,
        Some(b"3") | Some(b"9") | Some(b"11") => 400,
        Some(b"16") => 401,
        Some(b"7") => 403,
        Some(b"5") => 404,
        Some(b"1") => 499,
        Some(b"8") | Some(b"14") => 503,
        Some(b"4") => 504,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_urls_name_the_infer_call_and_the_model() {
        let (call, model) = endpoint(&"grpc://127.0.0.1:8001/digits".parse().unwrap()).unwrap().unwrap();
        assert_eq!(
            (call.to_string().as_str(), model.as_str()),
            ("http://127.0.0.1:8001/inference.GRPCInferenceService/ModelInfer", "digits")
        );
        assert!(endpoint(&"http://127.0.0.1:8080/digits".parse().unwrap()).unwrap().is_none());
        assert!(endpoint(&"grpc://127.0.0.1:8001/".parse().unwrap()).is_err());
    }

    #[test]
    fn a_json_infer_request_becomes_a_framed_protobuf() {
        let json =
            br#"{"inputs": [{"name": "pixels", "shape": [1, 2], "datatype": "FP32", "data": [[1, 2]]}]}"#;
        let frame = infer_frame("digits", json).unwrap();
        assert_eq!(frame[0], 0, "not compressed");
        let length = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
        let message = ModelInferRequest::decode(&frame[5..]).unwrap();
        assert_eq!(length, frame.len() - 5);
        assert_eq!(message.model_name, "digits");
        assert_eq!(message.inputs[0].shape, [1, 2]);
        assert_eq!(message.raw_input_contents[0], [1f32.to_le_bytes(), 2f32.to_le_bytes()].concat());
    }
}

//! `POST /embed`: sentence embeddings with all-MiniLM-L6-v2 (the host's `minilm` model).
//!
//! Request: `{"texts": ["...", ...]}` (1 to 64 texts). Each text is tokenized here
//! (WordPiece, see `tokenizer`), truncated to 256 tokens with `[CLS]` and `[SEP]`; the texts
//! go to the model as one padded batch; the last hidden states are mean-pooled over each
//! text's tokens and L2-normalised. Response: `{"embeddings": [[384 numbers], ...]}`.

mod tokenizer;

use edge_infer_guest::nn::{errors::Error, graph, tensor};
use edge_infer_guest::{read_body, respond_error, respond_json, respond_nn_error};
use serde_json::{Value, json};
use wasip2::http::types::{IncomingRequest, Method, ResponseOutparam};

/// Most tokens per text, `[CLS]` and `[SEP]` included.
const MAX_TOKENS: usize = 256;
/// Most texts per request.
const MAX_TEXTS: usize = 64;
/// Width of an embedding.
const DIMENSIONS: usize = 384;

struct Embed;

wasip2::http::proxy::export!(Embed);

impl wasip2::exports::http::incoming_handler::Guest for Embed {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if !matches!(request.method(), Method::Post) {
            return respond_error(out, 405, r#"use POST with {"texts": [...]}"#);
        }
        let texts = match read_body(&request).and_then(|body| parse_request(&body)) {
            Ok(texts) => texts,
            Err(message) => return respond_error(out, 400, &message),
        };
        match embed(&texts) {
            Ok(embeddings) => respond_json(out, 200, &json!({ "embeddings": embeddings })),
            Err(error) => respond_nn_error(out, "minilm model", &error),
        }
    }
}

fn parse_request(body: &[u8]) -> Result<Vec<String>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let Some(Value::Array(texts)) = value.get("texts") else {
        return Err(r#"expected {"texts": ["...", ...]}"#.into());
    };
    if texts.is_empty() || texts.len() > MAX_TEXTS {
        return Err(format!(r#""texts" must hold 1 to {MAX_TEXTS} texts, got {}"#, texts.len()));
    }
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            text.as_str().map(str::to_string).ok_or_else(|| format!("texts[{i}] is not a string"))
        })
        .collect()
}

/// Token ids of each text with `[CLS]`/`[SEP]`, truncated to `MAX_TOKENS`.
fn token_ids(texts: &[String]) -> Vec<Vec<u32>> {
    let (cls, sep) = (tokenizer::special("[CLS]"), tokenizer::special("[SEP]"));
    texts
        .iter()
        .map(|text| {
            let mut ids = vec![cls];
            ids.extend(tokenizer::tokenize(text).into_iter().take(MAX_TOKENS - 2));
            ids.push(sep);
            ids
        })
        .collect()
}

fn embed(texts: &[String]) -> Result<Vec<Vec<f32>>, Error> {
    let ids = token_ids(texts);
    let length = ids.iter().map(Vec::len).max().unwrap_or(0);
    let int64 =
        |values: &mut dyn Iterator<Item = i64>| values.flat_map(i64::to_le_bytes).collect::<Vec<u8>>();
    let padded = |value: &dyn Fn(&Vec<u32>, usize) -> i64| -> Vec<u8> {
        int64(&mut ids.iter().flat_map(|row| (0..length).map(move |i| value(row, i))))
    };
    let input_ids = padded(&|row, i| row.get(i).map_or(0, |&id| i64::from(id)));
    let attention_mask = padded(&|row, i| i64::from(i < row.len()));
    let token_types = vec![0u8; texts.len() * length * 8];
    let dims = [texts.len() as u32, length as u32];
    let inputs = vec![
        ("input_ids".to_string(), tensor::Tensor::new(&dims, tensor::TensorType::I64, &input_ids)),
        ("attention_mask".to_string(), tensor::Tensor::new(&dims, tensor::TensorType::I64, &attention_mask)),
        ("token_type_ids".to_string(), tensor::Tensor::new(&dims, tensor::TensorType::I64, &token_types)),
    ];
    let context = graph::load_by_name("minilm")?.init_execution_context()?;
    let outputs = context.compute(inputs)?;
    let (_, hidden) =
        outputs.into_iter().find(|(name, _)| name == "last_hidden_state").expect("MiniLM's output");
    let hidden: Vec<f32> =
        hidden.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok(ids
        .iter()
        .enumerate()
        .map(|(text, row)| {
            let mut pooled = vec![0f32; DIMENSIONS];
            for token in 0..row.len() {
                let start = (text * length + token) * DIMENSIONS;
                for (sum, value) in pooled.iter_mut().zip(&hidden[start..start + DIMENSIONS]) {
                    *sum += value;
                }
            }
            let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
            pooled.iter().map(|v| v / norm).collect()
        })
        .collect())
}

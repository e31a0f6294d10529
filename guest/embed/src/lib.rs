//! `POST /embed`: sentence embeddings with all-MiniLM-L6-v2 (the host's `minilm` model).
//!
//! Request: `{"texts": ["...", ...]}` (1 to 64 texts). Each text is tokenized here
//! (WordPiece, see `tokenizer`), truncated to 256 tokens with `[CLS]` and `[SEP]`; the texts
//! go to the model as one padded batch; the last hidden states are mean-pooled over each
//! text's tokens and L2-normalised. Response: `{"embeddings": [[384 numbers], ...]}`.

mod tokenizer;

use edge_infer_guest::{Error, Handler, Request, Response, Tensor, TensorExt, infer};
use serde_json::{Value, json};

/// Most tokens per text, `[CLS]` and `[SEP]` included.
const MAX_TOKENS: usize = 256;
/// Most texts per request.
const MAX_TEXTS: usize = 64;
/// Width of an embedding.
const DIMENSIONS: usize = 384;

struct Embed;

edge_infer_guest::export!(Embed);

impl Handler for Embed {
    fn handle(request: Request) -> Result<Response, Error> {
        request.expect_method("POST", r#"use POST with {"texts": [...]}"#)?;
        let texts = parse_request(request.body()?).map_err(Error::bad_request)?;
        Response::json(&json!({ "embeddings": embed(&texts)? }))
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
    let padded = |value: &dyn Fn(&Vec<u32>, usize) -> i64| -> Vec<i64> {
        ids.iter().flat_map(|row| (0..length).map(move |i| value(row, i))).collect()
    };
    let input_ids = padded(&|row, i| row.get(i).map_or(0, |&id| i64::from(id)));
    let attention_mask = padded(&|row, i| i64::from(i < row.len()));
    let token_types = vec![0i64; texts.len() * length];
    let dims = [texts.len() as u32, length as u32];
    let hidden = infer(
        "minilm",
        [
            ("input_ids", Tensor::from_i64(&dims, &input_ids)),
            ("attention_mask", Tensor::from_i64(&dims, &attention_mask)),
            ("token_type_ids", Tensor::from_i64(&dims, &token_types)),
        ],
    )?
    .f32("last_hidden_state")?;
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

//! `POST /vad`: voice activity in 16 kHz mono audio, with the host's Silero VAD model.
//!
//! The body is the audio: raw 16-bit little-endian PCM (any content type but JSON), or JSON
//! `{"samples": [numbers in -1..1]}`. The audio is cut into 512-sample windows (32 ms); each
//! window goes to the model with the 64 samples before it as context and the model's
//! recurrent state from the window before, as Silero VAD expects. The answer is
//! `{"probabilities": [one per window], "speech": bool}`, `speech` being true if any window
//! is above 0.5. A trailing part shorter than a window is ignored.

use edge_infer_guest::{Error, Handler, Model, Request, Response, Tensor, TensorExt};
use serde_json::{Value, json};

/// New samples per window at 16 kHz.
const WINDOW: usize = 512;
/// Samples of the previous window the model sees before each window.
const CONTEXT: usize = 64;
/// Size of the recurrent state: [2, 1, 128].
const STATE: usize = 2 * 128;
/// Longest audio accepted: 60 s.
const MAX_SAMPLES: usize = 16_000 * 60;
/// Probability above which a window counts as speech.
const SPEECH_THRESHOLD: f32 = 0.5;

struct Vad;

edge_infer_guest::export!(Vad);

impl Handler for Vad {
    fn handle(request: Request) -> Result<Response, Error> {
        request.expect_method("POST", "use POST with 16 kHz audio as the body")?;
        let is_json = request.header("content-type").is_some_and(|t| t.to_lowercase().contains("json"));
        let body = request.body()?;
        let samples = if is_json { parse_json(body) } else { parse_pcm(body) };
        let probabilities = detect(&samples.map_err(Error::bad_request)?)?;
        let speech = probabilities.iter().any(|&p| p > SPEECH_THRESHOLD);
        Response::json(&json!({ "probabilities": probabilities, "speech": speech }))
    }
}

fn check_length(samples: usize) -> Result<(), String> {
    if samples < WINDOW {
        return Err(format!("need at least {WINDOW} samples (32 ms at 16 kHz), got {samples}"));
    }
    if samples > MAX_SAMPLES {
        return Err(format!("at most {MAX_SAMPLES} samples (60 s) per request, got {samples}"));
    }
    Ok(())
}

fn parse_pcm(body: &[u8]) -> Result<Vec<f32>, String> {
    if !body.len().is_multiple_of(2) {
        return Err("16-bit PCM needs an even number of bytes".into());
    }
    check_length(body.len() / 2)?;
    Ok(body.chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0).collect())
}

fn parse_json(body: &[u8]) -> Result<Vec<f32>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let Some(Value::Array(items)) = value.get("samples") else {
        return Err(r#"expected {"samples": [numbers in -1..1]}"#.into());
    };
    check_length(items.len())?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.as_f64() {
            Some(v) if (-1.0..=1.0).contains(&v) => Ok(v as f32),
            Some(v) => Err(format!("samples[{i}] = {v} is outside -1..1")),
            None => Err(format!("samples[{i}] is not a number")),
        })
        .collect()
}

/// Speech probability of each 512-sample window, carrying context and state along.
fn detect(samples: &[f32]) -> Result<Vec<f32>, Error> {
    let model = Model::load("vad")?;
    let mut state = vec![0f32; STATE];
    let mut probabilities = Vec::with_capacity(samples.len() / WINDOW);
    for (index, window) in samples.chunks_exact(WINDOW).enumerate() {
        let mut input = Vec::with_capacity(CONTEXT + WINDOW);
        match index {
            0 => input.extend([0f32; CONTEXT]),
            _ => input.extend(&samples[index * WINDOW - CONTEXT..index * WINDOW]),
        }
        input.extend(window);
        let outputs = model.compute([
            ("input", Tensor::from_f32(&[1, (CONTEXT + WINDOW) as u32], &input)),
            ("state", Tensor::from_f32(&[2, 1, 128], &state)),
        ])?;
        probabilities.push(outputs.f32("output")?[0]);
        state = outputs.f32("stateN")?;
    }
    Ok(probabilities)
}

//! `POST /digits`: classifies 8x8 handwritten digits with the host's `digits` model.
//!
//! Request: `{"pixels": [64 numbers 0..16]}` (one row-major 8x8 image) or
//! `{"images": [[64 numbers], ...]}` (several). Response: `{"label": n, "probabilities": [10]}`
//! for `pixels`, a JSON array of those, one per image, for `images`.
//! Malformed input gets 400 with a message saying what is wrong. Every answer that succeeds
//! names the guest's version in `x-guest-version`.

use edge_infer_guest::{Error, Handler, Request, Response, Tensor, TensorExt, infer};
use serde_json::{Value, json};

/// Pixels in one 8x8 image.
const PIXELS: usize = 64;
/// Largest pixel value in the digits data set (4-bit grey levels).
const MAX_PIXEL: f64 = 16.0;
/// Number of classes the model scores.
const CLASSES: usize = 10;
/// Most images accepted in one request.
const MAX_IMAGES: usize = 1024;
/// This guest's version, in the `x-guest-version` header of its answers (deploy tests make
/// a new version of the guest by changing it).
const VERSION: &str = "digits-guest-v1";

struct Digits;

edge_infer_guest::export!(Digits);

impl Handler for Digits {
    fn handle(request: Request) -> Result<Response, Error> {
        Ok(answer(request)?.with_header("x-guest-version", VERSION))
    }
}

fn answer(request: Request) -> Result<Response, Error> {
    request.expect_method("POST", "use POST with a JSON body")?;
    let input = parse_request(request.body()?).map_err(Error::bad_request)?;
    let probabilities = classify(&input.images)?;
    let mut predictions = probabilities.chunks(CLASSES).map(prediction);
    if input.single {
        Response::json(&predictions.next().expect("one image in, one prediction out"))
    } else {
        Response::json(&predictions.collect::<Vec<_>>())
    }
}

/// A validated request: its images, flattened, and whether it used the one-image form.
struct DigitsRequest {
    images: Vec<f32>,
    single: bool,
}

fn parse_request(body: &[u8]) -> Result<DigitsRequest, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("malformed JSON: {e}"))?;
    let Value::Object(fields) = value else {
        return Err(r#"expected a JSON object with "pixels" or "images""#.into());
    };
    match (fields.get("pixels"), fields.get("images")) {
        (Some(pixels), None) => Ok(DigitsRequest { images: parse_image(pixels, "pixels")?, single: true }),
        (None, Some(images)) => {
            let Value::Array(images) = images else {
                return Err(r#""images" must be an array of images"#.into());
            };
            if images.is_empty() || images.len() > MAX_IMAGES {
                return Err(format!(r#""images" must hold 1 to {MAX_IMAGES} images, got {}"#, images.len()));
            }
            let mut flat = Vec::with_capacity(images.len() * PIXELS);
            for (i, image) in images.iter().enumerate() {
                flat.extend(parse_image(image, &format!("images[{i}]"))?);
            }
            Ok(DigitsRequest { images: flat, single: false })
        }
        _ => Err(r#"expected exactly one of "pixels" or "images""#.into()),
    }
}

fn parse_image(value: &Value, field: &str) -> Result<Vec<f32>, String> {
    let Value::Array(items) = value else {
        return Err(format!("{field} must be an array of {PIXELS} numbers"));
    };
    if items.len() != PIXELS {
        return Err(format!("{field} must hold {PIXELS} numbers, got {}", items.len()));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.as_f64() {
            Some(v) if (0.0..=MAX_PIXEL).contains(&v) => Ok(v as f32),
            Some(v) => Err(format!("{field}[{i}] = {v} is outside 0..{MAX_PIXEL}")),
            None => Err(format!("{field}[{i}] is not a number")),
        })
        .collect()
}

/// Runs the model on `images` (n x 64 pixels) and returns n x 10 probabilities.
fn classify(images: &[f32]) -> Result<Vec<f32>, Error> {
    let count = (images.len() / PIXELS) as u32;
    let input = Tensor::from_f32(&[count, PIXELS as u32], images);
    infer("digits", [("pixels", input)])?.f32("probabilities")
}

fn prediction(probabilities: &[f32]) -> Value {
    let label = probabilities
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(label, _)| label)
        .unwrap_or(0);
    json!({ "label": label, "probabilities": probabilities })
}

//! `POST /stream`: classifies 8x8 handwritten digits with the host's `digits` model, one line
//! of NDJSON per image, each sent as soon as its image is classified: a `wasi:http` 0.3 guest
//! (an async handler, the body streamed from a task that goes on after the response head).
//!
//! Request: `{"images": [[64 numbers 0..16], ...]}`. Response (`application/x-ndjson`): one
//! `{"image": i, "label": n}` line per image, in order. Malformed input gets 400 before any
//! line is sent; a model failure part way ends the body as unfinished, so a client never
//! takes a cut stream for the whole answer.

use edge_infer_guest::p3::{BodyWriter, Handler, Reply, Request};
use edge_infer_guest::{Error, Tensor, TensorExt, infer};
use serde::Deserialize;
use serde_json::json;

/// Pixels in one 8x8 image.
const PIXELS: usize = 64;
/// Most images accepted in one request.
const MAX_IMAGES: usize = 1024;

#[derive(Deserialize)]
struct Images {
    images: Vec<Vec<f32>>,
}

struct Stream;

edge_infer_guest::export_p3!(Stream);

impl Handler for Stream {
    async fn handle(mut request: Request) -> Result<Reply, Error> {
        request.expect_method("POST", r#"use POST with {"images": [[64 numbers], ...]}"#)?;
        let Images { images } = request.json().await?;
        if images.is_empty() || images.len() > MAX_IMAGES {
            return Err(Error::bad_request(format!("\"images\" must hold 1 to {MAX_IMAGES} images")));
        }
        if let Some(i) = images.iter().position(|image| image.len() != PIXELS) {
            return Err(Error::bad_request(format!("images[{i}] must hold {PIXELS} numbers")));
        }
        Ok(Reply::stream(200, "application/x-ndjson", |body| classify_each(images, body)))
    }
}

/// Classifies the images one at a time, writing each answer as it comes.
async fn classify_each(images: Vec<Vec<f32>>, mut body: BodyWriter) -> Result<(), Error> {
    for (image, pixels) in images.iter().enumerate() {
        let outputs = infer("digits", [("pixels", Tensor::from_f32(&[1, PIXELS as u32], pixels))])?;
        let probabilities = outputs.f32("probabilities")?;
        let label = (0..probabilities.len())
            .max_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b]))
            .ok_or_else(|| Error::new(500, "the model scored no classes"))?;
        body.write(format!("{}\n", json!({ "image": image, "label": label }))).await?;
    }
    Ok(())
}

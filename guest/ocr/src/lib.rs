//! `POST /ocr`: text in a PNG or JPEG image, read by three models in turn (PP-OCRv4).
//!
//! The request body is the image. The guest decodes it (`picture`), finds text regions with
//! the detection model `ocr-det` and the DB post-processing (`detect`), cuts each region out
//! upright, asks the direction classifier `ocr-cls` which crops are upside down, and reads
//! each with the recognizer `ocr-rec`, decoding its per-step class probabilities with CTC
//! (`read`). Response, lines in reading order (top to bottom, then left to right):
//! `{"lines": [{"text": "...", "box": [[x, y] × 4], "score": 0.98}]}`, each box's corners
//! clockwise from the top left, in the image's pixels; `score` is the recognizer's mean
//! confidence over the line's characters.
//!
//! Each model is its own scheduler on the host, so while one request is being read, the
//! next one's image can be in detection: the stages of different requests overlap.

mod detect;
mod geometry;
mod picture;
mod read;

use edge_infer_guest::{Error, Handler, Request, Response};
use serde_json::json;

struct Ocr;

edge_infer_guest::export!(Ocr);

impl Handler for Ocr {
    fn handle(request: Request) -> Result<Response, Error> {
        request.expect_method("POST", "POST the image (PNG or JPEG) as the body")?;
        let image = picture::decode(request.body()?)?;
        let regions = detect::text_regions(&image)?;
        let lines = read::read_lines(&image, &regions)?;
        let lines: Vec<_> = regions
            .iter()
            .zip(lines)
            .filter_map(|(region, line)| {
                let line = line?;
                let corners: Vec<[i64; 2]> =
                    region.corners.iter().map(|p| [p.x.round() as i64, p.y.round() as i64]).collect();
                Some(json!({ "text": line.text, "box": corners, "score": line.score }))
            })
            .collect();
        Response::json(&json!({ "lines": lines }))
    }
}

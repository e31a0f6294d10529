//! Reading the text regions: each cut out upright, turned right way up where the direction
//! classifier `ocr-cls` says it is upside down, then read by the recognizer `ocr-rec`, whose
//! per-step class probabilities are decoded with CTC (best class per step, repeats merged,
//! blanks dropped). Crops go to each model in batches of similar width, as PP-OCR does.

use edge_infer_guest::{Error, Tensor, TensorExt, TensorType, infer};

use crate::detect::Region;
use crate::geometry::Quad;
use crate::picture::{Picture, Planes};

/// The recognizer's character list, from the model's metadata (`models/ocr/fetch.py`):
/// class 0 is CTC's blank, classes 1 to N these characters, and the last class a space.
const CHARACTERS: &str = include_str!("../../../models/ocr/characters.txt");
/// Crops per model call.
const BATCH: usize = 6;
/// Crop height both models take.
const CROP_HEIGHT: usize = 48;
/// The classifier's crop width.
const DIRECTION_WIDTH: usize = 192;
/// The classifier's "upside down" is believed above this probability.
const UPSIDE_DOWN_THRESHOLD: f32 = 0.9;
/// The recognizer's narrowest batch width; wider lines widen their batch.
const MIN_LINE_WIDTH: usize = 320;
/// The widest crop read; longer lines are squeezed to it.
const MAX_LINE_WIDTH: usize = 1600;
/// Lines read with a lower mean confidence are dropped (RapidOCR's `text_score`).
const MIN_LINE_SCORE: f32 = 0.5;
/// Crops at least this much taller than wide are vertical text, turned a quarter.
const VERTICAL_RATIO: f32 = 1.5;

/// One line of text read.
pub struct Line {
    pub text: String,
    pub score: f32,
}

/// Reads each region of `image`: `None` where nothing was read with confidence.
pub fn read_lines(image: &Picture, regions: &[Region]) -> Result<Vec<Option<Line>>, Error> {
    let mut quads: Vec<Quad> = regions
        .iter()
        .map(|region| {
            let quad = Quad { corners: region.corners };
            if quad.height() >= VERTICAL_RATIO * quad.width() { quad.turned(1) } else { quad }
        })
        .collect();
    turn_upside_down(image, &mut quads)?;
    recognize(image, &quads)
}

/// The width a crop of `quad` has at the models' height.
fn scaled_width(quad: &Quad) -> f32 {
    CROP_HEIGHT as f32 * quad.width() / quad.height().max(1.0)
}

/// Turns the crops the classifier finds upside down by half a turn.
fn turn_upside_down(image: &Picture, quads: &mut [Quad]) -> Result<(), Error> {
    for (chunk_index, chunk) in quads.chunks_mut(BATCH).enumerate() {
        let mut values = Vec::with_capacity(chunk.len() * 3 * CROP_HEIGHT * DIRECTION_WIDTH);
        for quad in chunk.iter() {
            let mut planes = Planes::new(DIRECTION_WIDTH, CROP_HEIGHT);
            image.cut_into(quad, &mut planes, (scaled_width(quad).ceil() as usize).clamp(1, DIRECTION_WIDTH));
            values.extend_from_slice(&planes.values);
        }
        let dims = [chunk.len() as u32, 3, CROP_HEIGHT as u32, DIRECTION_WIDTH as u32];
        let outputs = infer("ocr-cls", [("x", Tensor::from_f32(&dims, &values))])?;
        let probabilities = outputs.f32("save_infer_model/scale_0.tmp_1")?;
        if probabilities.len() != 2 * chunk.len() {
            let given = probabilities.len();
            return Err(Error::new(500, format!("ocr-cls gave {given} values for batch {chunk_index}")));
        }
        for (quad, pair) in chunk.iter_mut().zip(probabilities.chunks_exact(2)) {
            if pair[1] > pair[0] && pair[1] > UPSIDE_DOWN_THRESHOLD {
                *quad = quad.turned(2);
            }
        }
    }
    Ok(())
}

/// Reads every crop, batching crops of similar width together.
fn recognize(image: &Picture, quads: &[Quad]) -> Result<Vec<Option<Line>>, Error> {
    let characters: Vec<&str> = CHARACTERS.lines().collect();
    let mut order: Vec<usize> = (0..quads.len()).collect();
    order.sort_by(|&a, &b| scaled_width(&quads[a]).total_cmp(&scaled_width(&quads[b])));
    let mut lines: Vec<Option<Line>> = (0..quads.len()).map(|_| None).collect();
    for chunk in order.chunks(BATCH) {
        let widest = chunk.iter().map(|&i| scaled_width(&quads[i]).ceil() as usize).max().unwrap_or(0);
        let width = widest.clamp(MIN_LINE_WIDTH, MAX_LINE_WIDTH);
        let mut values = Vec::with_capacity(chunk.len() * 3 * CROP_HEIGHT * width);
        for &index in chunk {
            let mut planes = Planes::new(width, CROP_HEIGHT);
            let quad = &quads[index];
            image.cut_into(quad, &mut planes, (scaled_width(quad).ceil() as usize).clamp(1, width));
            values.extend_from_slice(&planes.values);
        }
        let dims = [chunk.len() as u32, 3, CROP_HEIGHT as u32, width as u32];
        let outputs = infer("ocr-rec", [("x", Tensor::from_f32(&dims, &values))])?;
        let output = outputs.get("softmax_11.tmp_0")?;
        if output.ty() != TensorType::Fp32 {
            return Err(Error::new(500, format!("ocr-rec gave {:?} values, not FP32", output.ty())));
        }
        // The probabilities stay little-endian bytes: a batch of long lines is tens of MB,
        // read once here rather than copied into floats first.
        let (classes, probabilities) = (characters.len() + 2, output.data());
        let per_crop = match output.dimensions().as_slice() {
            &[n, steps, c]
                if n as usize == chunk.len()
                    && c as usize == classes
                    && steps > 0
                    && probabilities.len() == 4 * chunk.len() * steps as usize * classes =>
            {
                4 * steps as usize * classes
            }
            other => {
                return Err(Error::new(
                    500,
                    format!("ocr-rec gave shape {other:?}, not [{}, steps, {classes}]", chunk.len()),
                ));
            }
        };
        for (&index, steps) in chunk.iter().zip(probabilities.chunks_exact(per_crop)) {
            lines[index] = decode(steps, classes, &characters)
                .filter(|line| line.score >= MIN_LINE_SCORE && !line.text.is_empty());
        }
    }
    Ok(lines)
}

/// CTC's greedy decoding of one crop's steps (`classes` little-endian `f32` probabilities
/// each): the best class per step, repeats merged and blanks dropped; the score is the mean
/// probability of the characters kept. `None` if no character is.
fn decode(steps: &[u8], classes: usize, characters: &[&str]) -> Option<Line> {
    let mut text = String::new();
    let (mut sum, mut count) = (0.0f32, 0usize);
    let mut previous = 0;
    for step in steps.chunks_exact(4 * classes) {
        let (best, probability) = step
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .enumerate()
            .fold((0, f32::MIN), |kept, (i, p)| if p > kept.1 { (i, p) } else { kept });
        if best != 0 && best != previous {
            text.push_str(characters.get(best - 1).copied().unwrap_or(" "));
            sum += probability;
            count += 1;
        }
        previous = best;
    }
    (count > 0).then(|| Line { text: text.trim().to_string(), score: sum / count as f32 })
}

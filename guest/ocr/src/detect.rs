//! Text detection: the image through `ocr-det` (DB, PP-OCRv4), whose output is each pixel's
//! probability of being text, then PP-OCR's DB post-processing into boxes: threshold, dilate,
//! take each connected region's smallest rotated rectangle, keep it if the mean probability
//! inside is high enough, and grow it outward (the model's regions are shrunk text).
//!
//! The settings are RapidOCR 1.4.4's for these models (box threshold 0.5, growth 1.6,
//! dilation; PaddleOCR's own defaults are 0.6, 1.5 and none), except the scaling, which is
//! PaddleOCR's (longest side at most 960) rather than RapidOCR's (shortest side at least
//! 736): it keeps small images small, which is faster, and reads the test images as well.

use edge_infer_guest::{Error, Tensor, TensorExt, infer};

use crate::geometry::{Point, Quad, min_area_rect};
use crate::picture::Picture;

/// The longest side the image is scaled down to for detection (PaddleOCR's default).
const MAX_SIDE: usize = 960;
/// The detector takes sides in multiples of this.
const SIDE_STEP: usize = 32;
/// A pixel is text above this probability.
const PIXEL_THRESHOLD: f32 = 0.3;
/// A region is text if its mean probability is at least this.
const BOX_THRESHOLD: f32 = 0.5;
/// How far a region grows: its area times this over its perimeter.
const UNCLIP_RATIO: f32 = 1.6;
/// Regions whose shorter side is below this are noise (checked in the detector's pixels,
/// and again, after scaling, in the image's).
const MIN_SIDE: f32 = 3.0;
/// Most regions considered.
const MAX_CANDIDATES: usize = 1000;

/// A text region found in the image.
pub struct Region {
    /// Its corners in the image's pixels, clockwise from the top left.
    pub corners: [Point; 4],
}

/// Finds the text in `image`, regions in reading order.
pub fn text_regions(image: &Picture) -> Result<Vec<Region>, Error> {
    let scale = (MAX_SIDE as f32 / image.width.max(image.height) as f32).min(1.0);
    let side =
        |length: usize| (((length as f32 * scale) / SIDE_STEP as f32).round() as usize).max(1) * SIDE_STEP;
    let (width, height) = (side(image.width), side(image.height));
    let planes = image.resized(width, height);
    let dims = [1, 3, height as u32, width as u32];
    let probability =
        infer("ocr-det", [("x", Tensor::from_f32(&dims, &planes.values))])?.f32("sigmoid_0.tmp_0")?;
    if probability.len() != width * height {
        return Err(Error::new(
            500,
            format!("ocr-det gave {} values for a {width}×{height} map", probability.len()),
        ));
    }
    let map = Map { width, height, probability };
    let (x_scale, y_scale) = (image.width as f32 / width as f32, image.height as f32 / height as f32);
    let mut regions: Vec<Region> = map
        .boxes()
        .into_iter()
        .filter_map(|quad| {
            let corners = quad.corners.map(|p| {
                // Pixel centres of the map to pixel centres of the image.
                Point::new(
                    ((p.x + 0.5) * x_scale - 0.5).clamp(0.0, (image.width - 1) as f32),
                    ((p.y + 0.5) * y_scale - 0.5).clamp(0.0, (image.height - 1) as f32),
                )
            });
            let region = Quad::ordered(corners);
            (region.width() > MIN_SIDE && region.height() > MIN_SIDE)
                .then_some(Region { corners: region.corners })
        })
        .collect();
    reading_order(&mut regions);
    Ok(regions)
}

/// The detector's output: text probability per pixel.
struct Map {
    width: usize,
    height: usize,
    probability: Vec<f32>,
}

impl Map {
    /// The text boxes, in the map's pixels.
    fn boxes(&self) -> Vec<Quad> {
        let text = self.dilated_text();
        let mut quads = Vec::new();
        for region in self.regions(&text) {
            let Some(quad) = min_area_rect(region) else { continue };
            if quad.short_side() < MIN_SIDE || self.mean_inside(&quad) < BOX_THRESHOLD {
                continue;
            }
            let grown = quad.grown(quad.unclip_distance(UNCLIP_RATIO));
            if grown.short_side() < MIN_SIDE + 2.0 {
                continue;
            }
            quads.push(grown);
        }
        quads
    }

    /// Pixels above the threshold, dilated by a 2 × 2 square (each pixel also marks its
    /// right, lower and lower-right neighbours), as RapidOCR does.
    fn dilated_text(&self) -> Vec<bool> {
        let (w, h) = (self.width, self.height);
        let above: Vec<bool> = self.probability.iter().map(|&p| p > PIXEL_THRESHOLD).collect();
        let mut dilated = vec![false; w * h];
        for y in 0..h {
            for x in 0..w {
                dilated[y * w + x] = above[y * w + x]
                    || (x > 0 && above[y * w + x - 1])
                    || (y > 0 && above[(y - 1) * w + x])
                    || (x > 0 && y > 0 && above[(y - 1) * w + x - 1]);
            }
        }
        dilated
    }

    /// Each 8-connected region of `text` (the first `MAX_CANDIDATES`), as the outermost
    /// pixel centres of each of its rows (enough for its convex hull).
    fn regions(&self, text: &[bool]) -> Vec<Vec<Point>> {
        let (w, h) = (self.width, self.height);
        let mut seen = vec![false; w * h];
        let mut regions = Vec::new();
        let mut stack = Vec::new();
        for start in 0..w * h {
            if regions.len() == MAX_CANDIDATES {
                break;
            }
            if !text[start] || seen[start] {
                continue;
            }
            // Per row of the region: its leftmost and rightmost pixel.
            let mut rows: std::collections::BTreeMap<usize, (usize, usize)> = Default::default();
            seen[start] = true;
            stack.push(start);
            while let Some(at) = stack.pop() {
                let (x, y) = (at % w, at / w);
                let row = rows.entry(y).or_insert((x, x));
                *row = (row.0.min(x), row.1.max(x));
                for ny in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                    for nx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                        let next = ny * w + nx;
                        if text[next] && !seen[next] {
                            seen[next] = true;
                            stack.push(next);
                        }
                    }
                }
            }
            let points = rows
                .into_iter()
                .flat_map(|(y, (left, right))| {
                    [Point::new(left as f32, y as f32), Point::new(right as f32, y as f32)]
                })
                .collect();
            regions.push(points);
        }
        regions
    }

    /// The mean probability of the pixels inside `quad`.
    fn mean_inside(&self, quad: &Quad) -> f32 {
        let xs = quad.corners.map(|p| p.x);
        let ys = quad.corners.map(|p| p.y);
        let bound = |values: [f32; 4], limit: usize| {
            let low = values.iter().copied().fold(f32::MAX, f32::min).floor().max(0.0) as usize;
            let high =
                (values.iter().copied().fold(f32::MIN, f32::max).ceil().max(0.0) as usize).min(limit - 1);
            (low, high)
        };
        let ((x0, x1), (y0, y1)) = (bound(xs, self.width), bound(ys, self.height));
        let (mut sum, mut count) = (0.0f64, 0usize);
        for y in y0..=y1 {
            for x in x0..=x1 {
                if quad.contains(Point::new(x as f32, y as f32)) {
                    sum += f64::from(self.probability[y * self.width + x]);
                    count += 1;
                }
            }
        }
        if count == 0 { 0.0 } else { (sum / count as f64) as f32 }
    }
}

/// Sorts regions top to bottom, and left to right within a line (tops within 10 pixels), as
/// PP-OCR does.
fn reading_order(regions: &mut [Region]) {
    regions.sort_by(|a, b| {
        let (a, b) = (a.corners[0], b.corners[0]);
        a.y.total_cmp(&b.y).then(a.x.total_cmp(&b.x))
    });
    for i in 0..regions.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            let (upper, lower) = (regions[j].corners[0], regions[j + 1].corners[0]);
            if (lower.y - upper.y).abs() < 10.0 && lower.x < upper.x {
                regions.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
}

//! The request's image: decoded from PNG or JPEG into RGB, sampled with bilinear
//! interpolation, and turned into the models' input layout.

use std::io::Cursor;

use edge_infer_guest::Error;
use image::{ImageError, ImageFormat, ImageReader, Limits};

use crate::geometry::Quad;

/// Largest width or height accepted.
const MAX_SIDE: u32 = 8192;
/// Most pixels accepted: decoding takes up to 8 bytes a pixel (16-bit RGBA), then 3 in RGB,
/// within the guest's 256 MiB.
const MAX_PIXELS: u64 = 8 << 20;
/// Bytes a decoded pixel may take.
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// An RGB image, 8 bits per channel, rows top to bottom.
pub struct Picture {
    pub width: usize,
    pub height: usize,
    rgb: Vec<u8>,
}

/// Decodes a PNG or JPEG image; anything else is a 400, an image too large a 413.
pub fn decode(bytes: &[u8]) -> Result<Picture, Error> {
    let (format, format_name) = match bytes {
        [0x89, b'P', b'N', b'G', ..] => (ImageFormat::Png, "PNG"),
        [0xFF, 0xD8, 0xFF, ..] => (ImageFormat::Jpeg, "JPEG"),
        [] => return Err(Error::bad_request("the body is empty: POST a PNG or JPEG image")),
        _ => return Err(Error::bad_request("the body is not a PNG or JPEG image")),
    };
    let too_large = |what: String| {
        Error::new(413, format!("{what}: at most {MAX_SIDE} pixels a side and {MAX_PIXELS} in all"))
    };
    let unreadable = |e: ImageError| match e {
        ImageError::Limits(limit) => {
            too_large(format!("the {format_name} image is too large to decode ({limit})"))
        }
        other => Error::bad_request(format!("cannot decode the {format_name} image: {other}")),
    };
    let (width, height) =
        ImageReader::with_format(Cursor::new(bytes), format).into_dimensions().map_err(unreadable)?;
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(too_large(format!("the image is {width}×{height}")));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_PIXELS * MAX_BYTES_PER_PIXEL);
    reader.limits(limits);
    let rgb = reader.decode().map_err(unreadable)?.into_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    if width == 0 || height == 0 {
        return Err(Error::bad_request("the image has no pixels"));
    }
    Ok(Picture { width, height, rgb: rgb.into_raw() })
}

/// PP-OCR's input layout: channels first in BGR order (the models were trained on OpenCV's
/// images), each value `(v / 255 − 0.5) / 0.5`; what is not covered is 0.
pub struct Planes {
    pub width: usize,
    pub height: usize,
    /// `3 × height × width` values.
    pub values: Vec<f32>,
}

impl Planes {
    pub fn new(width: usize, height: usize) -> Planes {
        Planes { width, height, values: vec![0.0; 3 * width * height] }
    }

    fn set(&mut self, x: usize, y: usize, rgb: [f32; 3]) {
        let plane = self.width * self.height;
        let at = y * self.width + x;
        for (channel, value) in [rgb[2], rgb[1], rgb[0]].into_iter().enumerate() {
            self.values[channel * plane + at] = value / 127.5 - 1.0;
        }
    }
}

/// OpenCV's bicubic kernel (Keys, a = −0.75): the weight of a pixel `distance` away.
fn cubic(distance: f32) -> f32 {
    const A: f32 = -0.75;
    let d = distance.abs();
    if d <= 1.0 {
        ((A + 2.0) * d - (A + 3.0)) * d * d + 1.0
    } else if d < 2.0 {
        ((A * d - 5.0 * A) * d + 8.0 * A) * d - 4.0 * A
    } else {
        0.0
    }
}

impl Picture {
    fn pixel(&self, x: usize, y: usize) -> [f32; 3] {
        let at = 3 * (y * self.width + x);
        [self.rgb[at], self.rgb[at + 1], self.rgb[at + 2]].map(f32::from)
    }

    /// The colour at `(x, y)` (pixel centres at whole numbers), interpolated bilinearly
    /// between the four nearest pixels; beyond the edges, the edge pixels.
    fn bilinear(&self, x: f32, y: f32) -> [f32; 3] {
        let x = x.clamp(0.0, (self.width - 1) as f32);
        let y = y.clamp(0.0, (self.height - 1) as f32);
        let (x0, y0) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(self.width - 1), (y0 + 1).min(self.height - 1));
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let (a, b, c, d) = (self.pixel(x0, y0), self.pixel(x1, y0), self.pixel(x0, y1), self.pixel(x1, y1));
        std::array::from_fn(|i| {
            let top = a[i] + (b[i] - a[i]) * fx;
            let bottom = c[i] + (d[i] - c[i]) * fx;
            top + (bottom - top) * fy
        })
    }

    /// The colour at `(x, y)` interpolated bicubically over the 4 × 4 nearest pixels (beyond
    /// the edges, the edge pixels), rounded to 8 bits.
    fn bicubic(&self, x: f32, y: f32) -> [u8; 3] {
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (x - x0, y - y0);
        let clamp = |v: f32, size: usize| (v.max(0.0) as usize).min(size - 1);
        let mut sum = [0f32; 3];
        for j in -1..=2 {
            let wy = cubic(fy - j as f32);
            let row = clamp(y0 + j as f32, self.height);
            for i in -1..=2 {
                let weight = wy * cubic(fx - i as f32);
                let colour = self.pixel(clamp(x0 + i as f32, self.width), row);
                for (total, value) in sum.iter_mut().zip(colour) {
                    *total += weight * value;
                }
            }
        }
        sum.map(|v| v.round().clamp(0.0, 255.0) as u8)
    }

    /// The whole image resized to `width × height`, in the models' layout.
    pub fn resized(&self, width: usize, height: usize) -> Planes {
        let mut planes = Planes::new(width, height);
        self.scale_into(&mut planes, width);
        planes
    }

    /// The whole image scaled bilinearly to `planes`' height and to `width` (at most
    /// `planes`' width; the rest stays 0), as OpenCV's `resize` samples: each target pixel's
    /// centre mapped onto the image.
    fn scale_into(&self, planes: &mut Planes, width: usize) {
        let (x_scale, y_scale) =
            (self.width as f32 / width as f32, self.height as f32 / planes.height as f32);
        for row in 0..planes.height {
            let y = (row as f32 + 0.5) * y_scale - 0.5;
            for column in 0..width.min(planes.width) {
                let x = (column as f32 + 0.5) * x_scale - 0.5;
                planes.set(column, row, self.bilinear(x, y).map(f32::round));
            }
        }
    }

    /// Cuts `quad` (corners at pixel centres) out of the image upright, then scales it to
    /// `planes`' height and to `width` (at most `planes`' width; the rest stays 0). As
    /// PP-OCR's pipeline does: the cut at the quad's own size with OpenCV's perspective warp
    /// (bicubic, edges repeated), then the resize; the recognizer was trained on such crops.
    pub fn cut_into(&self, quad: &Quad, planes: &mut Planes, width: usize) {
        let [origin, right, _, down] = quad.corners;
        let (crop_width, crop_height) = ((quad.width() as usize).max(1), (quad.height() as usize).max(1));
        let mut rgb = Vec::with_capacity(3 * crop_width * crop_height);
        for row in 0..crop_height {
            let v = row as f32 / crop_height as f32;
            for column in 0..crop_width {
                let u = column as f32 / crop_width as f32;
                let x = origin.x + u * (right.x - origin.x) + v * (down.x - origin.x);
                let y = origin.y + u * (right.y - origin.y) + v * (down.y - origin.y);
                rgb.extend(self.bicubic(x, y));
            }
        }
        Picture { width: crop_width, height: crop_height, rgb }.scale_into(planes, width);
    }
}

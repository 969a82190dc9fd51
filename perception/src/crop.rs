//! The one recipe that turns pixels into the 48x48 gray faces the networks
//! see, shared by training (datasets), `training predict`, the report's
//! figures and the plugin (through [`Pipeline`](crate::Pipeline)), so that what
//! a model is trained on and what it is served cannot drift apart:
//!
//! - gray: ITU-R BT.601 luma ([`rgb_to_gray`] for whole pixels, rounded as
//!   PIL's `convert("L")`; [`luma`] unrounded, for sampling between pixels);
//! - a face in a larger frame: [`face_crop`], the similarity warp of its five
//!   landmarks onto FER2013's framing ([`crate::align`]);
//! - a whole image as one face: [`to_gray48`] / [`frame_gray48`] (squared as
//!   [`ResizeMode`] says, Catmull-Rom resize), and [`whole_image_crop`], which
//!   also aligns inputs that are already 48x48 crops.

use image::imageops::FilterType;
use image::{DynamicImage, GrayImage};
use models::INPUT_SIZE;

use crate::PerceptionError;
use crate::align::{align, align_crop};
use crate::detect::Detector;
use crate::frame::Frame;

/// A 48x48 gray face crop, row-major, one byte per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayCrop {
    pixels: Vec<u8>,
}

impl GrayCrop {
    /// Wraps 48 * 48 pixels.
    pub fn new(pixels: Vec<u8>) -> Result<Self, PerceptionError> {
        let expected = INPUT_SIZE * INPUT_SIZE;
        if pixels.len() != expected {
            return Err(PerceptionError::CropSize {
                expected,
                found: pixels.len(),
            });
        }
        Ok(Self { pixels })
    }

    /// The pixels, row-major.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The crop mirrored left-right (when `mirror`), then moved by
    /// `(dx, dy)` pixels with its border repeated: test-time augmentation's
    /// views ([`crate::Tta`]).
    pub fn transformed(&self, dx: isize, dy: isize, mirror: bool) -> Self {
        let n = INPUT_SIZE;
        let last = n as isize - 1;
        let mut pixels = Vec::with_capacity(n * n);
        for y in 0..n {
            for x in 0..n {
                let x = if mirror { n - 1 - x } else { x };
                let sx = (x as isize - dx).clamp(0, last) as usize;
                let sy = (y as isize - dy).clamp(0, last) as usize;
                pixels.push(self.pixels[sy * n + sx]);
            }
        }
        Self { pixels }
    }
}

/// ITU-R BT.601 luma, unrounded: the weights of [`rgb_to_gray`], for
/// sampling between pixels before the result is rounded once.
#[inline]
pub fn luma(rgb: [f32; 3]) -> f32 {
    rgb[0] * 0.299 + rgb[1] * 0.587 + rgb[2] * 0.114
}

/// One colour pixel to gray with the ITU-R BT.601 weights (`0.299 R + 0.587 G +
/// 0.114 B`, rounded), as `OpenCV`'s `cvtColor` and PIL's `convert("L")` do.
pub fn rgb_to_gray(r: u8, g: u8, b: u8) -> u8 {
    let y = (299 * u32::from(r) + 587 * u32::from(g) + 114 * u32::from(b) + 500) / 1000;
    // The weights sum to 1000, so y <= 255.
    u8::try_from(y).unwrap_or(u8::MAX)
}

/// Any decoded image to a 48x48 gray face, row-major: gray images keep their
/// values (16-bit ones are scaled to 8 bits), colour images go through
/// [`rgb_to_gray`], alpha is ignored; then, unless the image is already 48x48,
/// it is made square as `mode` says and resized with a Catmull-Rom filter
/// (whose support widens when shrinking, so large photos are low-pass filtered
/// rather than aliased).
pub fn to_gray48(img: &DynamicImage, mode: ResizeMode) -> Vec<u8> {
    let gray: GrayImage = if img.color().has_color() {
        let rgb = img.to_rgb8();
        let (w, h) = rgb.dimensions();
        let data = rgb
            .pixels()
            .map(|p| rgb_to_gray(p[0], p[1], p[2]))
            .collect();
        GrayImage::from_raw(w, h, data).unwrap_or_else(|| GrayImage::new(w, h))
    } else {
        img.to_luma8()
    };
    let side = INPUT_SIZE as u32;
    let (w, h) = gray.dimensions();
    if (w, h) == (side, side) {
        return gray.into_raw();
    }
    let gray = match mode {
        ResizeMode::CenterCrop if w != h => {
            let s = w.min(h);
            image::imageops::crop_imm(&gray, (w - s) / 2, (h - s) / 2, s, s).to_image()
        }
        _ => gray,
    };
    image::imageops::resize(&gray, side, side, FilterType::CatmullRom).into_raw()
}

/// How a non-square image is made square before resizing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Resize the whole image to 48x48, changing its aspect ratio (what Keras'
    /// `flow_from_directory` does).
    #[default]
    Stretch,
    /// Cut the largest centred square out first, keeping the aspect ratio.
    CenterCrop,
}

/// A whole frame as one 48x48 gray face ([`to_gray48`] with `mode`).
pub fn frame_gray48(frame: &Frame, mode: ResizeMode) -> Result<GrayCrop, PerceptionError> {
    let (w, h) = (frame.width(), frame.height());
    let img = image::RgbImage::from_raw(w as u32, h as u32, frame.to_rgb8()).ok_or(
        PerceptionError::FrameBytes {
            expected: w * h * 3,
            found: 0,
        },
    )?;
    GrayCrop::new(to_gray48(&DynamicImage::ImageRgb8(img), mode))
}

/// The face whose five `landmarks` (frame pixels) are given, warped onto
/// FER2013's framing: the crop the classifier sees in the plugin and in
/// `training predict`.
pub fn face_crop(frame: &Frame, landmarks: &[[f32; 2]; 5]) -> Result<GrayCrop, PerceptionError> {
    align(frame, landmarks)
}

/// A whole image taken as one face: a 48x48 image is taken as a face crop and
/// aligned to FER2013's framing (landmarks found by `detector` on an upscaled
/// copy; left as it is when no single confident face is found), anything
/// else is squared by its centre and resized. The flag says whether
/// alignment happened.
pub fn whole_image_crop(
    detector: &Detector,
    frame: &Frame,
) -> Result<(GrayCrop, bool), PerceptionError> {
    let gray = frame_gray48(frame, ResizeMode::CenterCrop)?;
    if frame.width() == INPUT_SIZE && frame.height() == INPUT_SIZE {
        return align_crop(detector, &gray);
    }
    Ok((gray, false))
}

/// The face of an image for a single-face use (`training features`, the
/// report's figures): a 48x48 image is aligned as [`whole_image_crop`] does,
/// a larger one gives its largest detected face. `None` when a larger image
/// has no face.
pub fn main_face_crop(
    detector: &Detector,
    frame: &Frame,
) -> Result<Option<GrayCrop>, PerceptionError> {
    if frame.width() == INPUT_SIZE && frame.height() == INPUT_SIZE {
        return Ok(Some(whole_image_crop(detector, frame)?.0));
    }
    let faces = detector.detect(frame)?;
    faces
        .first()
        .map(|face| face_crop(frame, &face.landmarks))
        .transpose()
}

#[cfg(test)]
mod tests {
    use image::{ImageBuffer, Luma, Rgb};

    use super::*;

    #[test]
    fn wrong_crop_size_is_an_error() {
        let err = GrayCrop::new(vec![0; 10]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a face crop must have 2304 pixels (48x48 gray), got 10"
        );
    }

    #[test]
    fn float_and_integer_luma_agree() {
        for rgb in [
            [255u8, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [10, 200, 30],
            [255; 3],
        ] {
            let f = luma(rgb.map(f32::from));
            assert_eq!(
                f.round() as u8,
                rgb_to_gray(rgb[0], rgb[1], rgb[2]),
                "{rgb:?}"
            );
        }
    }

    #[test]
    fn gray_conversion() {
        assert_eq!(rgb_to_gray(255, 255, 255), 255);
        assert_eq!(rgb_to_gray(0, 0, 0), 0);
        assert_eq!(rgb_to_gray(255, 0, 0), 76);
        assert_eq!(rgb_to_gray(0, 255, 0), 150);
        assert_eq!(rgb_to_gray(0, 0, 255), 29);
        // A 48x48 gray image passes through unchanged.
        let img = GrayImage::from_fn(48, 48, |x, y| Luma([(x * 5 + y) as u8]));
        let out = to_gray48(&DynamicImage::ImageLuma8(img.clone()), ResizeMode::Stretch);
        assert_eq!(out, img.into_raw());
        // A uniform colour image of any size becomes uniform gray.
        let img = ImageBuffer::from_pixel(100, 37, Rgb([200u8, 100, 50]));
        let out = to_gray48(&DynamicImage::ImageRgb8(img), ResizeMode::CenterCrop);
        assert_eq!(out.len(), INPUT_SIZE * INPUT_SIZE);
        assert!(out.iter().all(|&p| p == rgb_to_gray(200, 100, 50)));
    }

    #[test]
    fn center_crop_keeps_the_middle() {
        // 144 x 48: left third black, middle white, right third black.
        let img = GrayImage::from_fn(144, 48, |x, _| {
            Luma([if (48..96).contains(&x) { 255 } else { 0 }])
        });
        let img = DynamicImage::ImageLuma8(img);
        let crop = to_gray48(&img, ResizeMode::CenterCrop);
        assert!(crop.iter().all(|&p| p == 255));
        let stretch = to_gray48(&img, ResizeMode::Stretch);
        assert_eq!(stretch[0], 0);
        assert_eq!(stretch[24], 255);
    }
}

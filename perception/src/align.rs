//! Alignment: a similarity transform (rotation, uniform scale, translation) that
//! maps a face's five landmarks onto where FER2013's faces have them, then a
//! bilinear warp to the 48x48 gray crop the networks were trained on.
//!
//! The canonical positions were measured, not guessed: `tools/mtcnn_framing.py`
//! ran the MTCNN detector on FER2013 `Training` crops and averaged the landmarks
//! of the confidently detected faces (numbers and command in
//! `tools/fer2013_framing.json`).

use crate::GrayCrop;
use crate::PerceptionError;
use crate::crop::luma;
use crate::detect::{Detection, Detector};
use crate::frame::{Frame, PixelFormat};
use kernels::image::{box_fits, box_sum_at, box_sums, sat_row};
use models::INPUT_SIZE;

/// Mean landmark positions of FER2013's 48x48 faces (left eye, right eye, nose,
/// left and right mouth corner), in the crop's pixel coordinates (pixel centres
/// at integers). `tools/fer2013_framing.json` measured them on 3x upscaled crops
/// (PIL bilinear) and divided by 3; the upscale's half-pixel offset is removed
/// here (`x / 3 - 1/3`). 2402 of the first 3000 `Training` crops had one face
/// with score > 0.95; faces that fill the whole crop are the ones MTCNN misses,
/// so the true mean framing is, if anything, slightly tighter.
pub const FER2013_LANDMARKS: [[f32; 2]; 5] = [
    [14.10, 18.31],
    [32.52, 17.96],
    [23.22, 28.88],
    [15.84, 38.48],
    [31.16, 38.30],
];

/// A 2-D similarity transform `p' = [a -b; b a] p + t`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    /// `scale * cos(angle)`.
    pub a: f32,
    /// `scale * sin(angle)`.
    pub b: f32,
    /// Translation.
    pub t: [f32; 2],
}

impl Similarity {
    /// The least-squares similarity taking `src` points onto `dst` points
    /// (Umeyama without reflection). `None` when the source points coincide.
    pub fn estimate(src: &[[f32; 2]], dst: &[[f32; 2]]) -> Option<Self> {
        let n = src.len().min(dst.len());
        if n == 0 {
            return None;
        }
        let mean = |p: &[[f32; 2]]| {
            let (sx, sy) = p[..n].iter().fold((0f64, 0f64), |(x, y), q| {
                (x + f64::from(q[0]), y + f64::from(q[1]))
            });
            (sx / n as f64, sy / n as f64)
        };
        let (mx, my) = mean(src);
        let (nx, ny) = mean(dst);
        let (mut sxx, mut num_a, mut num_b) = (0f64, 0f64, 0f64);
        for (p, q) in src[..n].iter().zip(&dst[..n]) {
            let (px, py) = (f64::from(p[0]) - mx, f64::from(p[1]) - my);
            let (qx, qy) = (f64::from(q[0]) - nx, f64::from(q[1]) - ny);
            sxx += px * px + py * py;
            num_a += px * qx + py * qy;
            num_b += px * qy - py * qx;
        }
        if sxx.is_nan() || sxx <= 1e-9 || !num_a.is_finite() || !num_b.is_finite() {
            return None;
        }
        let (a, b) = (num_a / sxx, num_b / sxx);
        let t = [nx - (a * mx - b * my), ny - (b * mx + a * my)];
        Some(Self {
            a: a as f32,
            b: b as f32,
            t: [t[0] as f32, t[1] as f32],
        })
    }

    /// Applies the transform.
    pub fn apply(&self, p: [f32; 2]) -> [f32; 2] {
        [
            self.a * p[0] - self.b * p[1] + self.t[0],
            self.b * p[0] + self.a * p[1] + self.t[1],
        ]
    }

    /// The inverse transform (`None` if degenerate).
    pub fn inverse(&self) -> Option<Self> {
        let d = self.a * self.a + self.b * self.b;
        if d.is_nan() || d <= 1e-12 {
            return None;
        }
        let (a, b) = (self.a / d, -self.b / d);
        let t = [
            -(a * self.t[0] - b * self.t[1]),
            -(b * self.t[0] + a * self.t[1]),
        ];
        Some(Self { a, b, t })
    }

    /// The uniform scale factor.
    pub fn scale(&self) -> f32 {
        self.a.hypot(self.b)
    }
}

/// Luma of a rectangle of the frame, as floats.
struct GrayRegion {
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
    /// Frame size, for clamping sample positions to the frame's border.
    frame_w: usize,
    frame_h: usize,
    px: Vec<f32>,
}

impl GrayRegion {
    /// The luma of `x0..x1, y0..y1` (clamped to the frame, never empty).
    fn new(frame: &Frame, x0: f32, y0: f32, x1: f32, y1: f32) -> Self {
        let (fw, fh) = (frame.width(), frame.height());
        let clamp = |v: f32, max: usize| (v.max(0.0) as usize).min(max - 1);
        let (x0, y0) = (clamp(x0.floor(), fw), clamp(y0.floor(), fh));
        let (x1, y1) = (clamp(x1.ceil(), fw), clamp(y1.ceil(), fh));
        let (w, h) = (x1 - x0 + 1, y1 - y0 + 1);
        let mut px = Vec::with_capacity(w * h);
        for y in y0..=y1 {
            for x in x0..=x1 {
                px.push(if frame.format() == PixelFormat::Gray8 {
                    f32::from(frame.data()[y * fw + x])
                } else {
                    luma(frame.rgb_at(x, y).map(f32::from))
                });
            }
        }
        Self {
            x0,
            y0,
            w,
            h,
            frame_w: fw,
            frame_h: fh,
            px,
        }
    }

    /// Bilinear sample at frame position `(x, y)` (pixel centres at integers),
    /// clamped to the frame's border.
    fn sample(&self, x: f32, y: f32) -> f32 {
        let x = x.clamp(0.0, (self.frame_w - 1) as f32) - self.x0 as f32;
        let y = y.clamp(0.0, (self.frame_h - 1) as f32) - self.y0 as f32;
        let x = x.clamp(0.0, (self.w - 1) as f32);
        let y = y.clamp(0.0, (self.h - 1) as f32);
        let (xi, yi) = (x.floor() as usize, y.floor() as usize);
        let (x1, y1) = ((xi + 1).min(self.w - 1), (yi + 1).min(self.h - 1));
        let (fx, fy) = (x - xi as f32, y - yi as f32);
        let p = |xx: usize, yy: usize| self.px[yy * self.w + xx];
        let top = p(xi, yi) * (1.0 - fx) + p(x1, yi) * fx;
        let bottom = p(xi, y1) * (1.0 - fx) + p(x1, y1) * fx;
        top * (1.0 - fy) + bottom * fy
    }
}

/// Warps `frame` so that `landmarks` land on [`FER2013_LANDMARKS`] and returns
/// the 48x48 gray crop.
///
/// Each crop pixel is the mean luma of the frame over its footprint: the
/// square of side `f` (the transform's scale, frame pixels per crop pixel;
/// at least 1) centred where the pixel maps, read from a summed-area table
/// of the frame area under the crop, so any footprint costs four bilinear
/// table reads. A side of 1 is exactly bilinear interpolation, so faces
/// smaller than the crop are upsampled bilinearly. Faces of 5 frame pixels
/// per crop pixel and more are read on a grid of every `floor(f / 2.5)`-th
/// pixel (still 2.5 or more samples across each footprint), so the cost stays
/// bounded for faces that fill the frame. `training bench-pipeline` prints
/// the time per face.
pub fn align(frame: &Frame, landmarks: &[[f32; 2]; 5]) -> Result<GrayCrop, PerceptionError> {
    Ok(align_with(frame, landmarks, true)?.0)
}

/// [`align`], and whether every box lay inside the table and was read by
/// `kernels::image::box_sums` (eight at a time where the CPU has AVX2);
/// `gather` off reads every box through the clipping path (the reference
/// that path is tested against).
fn align_with(
    frame: &Frame,
    landmarks: &[[f32; 2]; 5],
    gather: bool,
) -> Result<(GrayCrop, bool), PerceptionError> {
    let m = Similarity::estimate(landmarks, &FER2013_LANDMARKS).ok_or(PerceptionError::Align)?;
    let inv = m.inverse().ok_or(PerceptionError::Align)?;
    let footprint = inv.scale();
    if !footprint.is_finite() || footprint > 1e4 {
        return Err(PerceptionError::Align);
    }
    let f = footprint.max(1.0);
    let stride = ((f / GRID_SAMPLES).floor() as usize).max(1);
    let side = INPUT_SIZE as f32;
    let corners = [[-0.5, -0.5], [side, -0.5], [-0.5, side], [side, side]].map(|p| inv.apply(p));
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for [x, y] in corners {
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    if ![x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
        return Err(PerceptionError::Align);
    }
    let table = Integral::new(frame, [x0 - 1.0, y0 - 1.0, x1 + 1.0, y1 + 1.0], stride);
    let half = f / 2.0 / stride as f32;
    // Round half up (`f32::round` is a libm call on baseline x86-64: 9% of
    // this function in a profile).
    let to_u8 = |mean: f32| (mean.clamp(0.0, 255.0) + 0.5) as u8;
    // Pixel centre -> the table coordinates of its box's top-left corner
    // (cell i spans [i - 1/2, i + 1/2] of grid coordinates).
    let corner = |u: usize, v: usize| {
        let [x, y] = inv.apply([u as f32, v as f32]);
        let (gx, gy) = table.grid(x, y);
        (gx - half + 0.5, gy - half + 0.5)
    };
    let span = 2.0 * half;
    let last = INPUT_SIZE - 1;
    // Every box inside the table (the face is away from the frame's edge):
    // no clipping, one area for all, eight boxes at a time.
    let inside = gather
        && [(0, 0), (last, 0), (0, last), (last, last)]
            .into_iter()
            .map(|(u, v)| corner(u, v))
            // With a margin of 1e-3 on every side.
            .all(|(a, b)| box_fits(a - 1e-3, b - 1e-3, span + 2e-3, table.w + 1, table.h + 1));
    let mut pixels = Vec::with_capacity(INPUT_SIZE * INPUT_SIZE);
    if inside {
        let scale = 1.0 / (span * span * 256.0);
        let (mut a0, mut b0, mut means) =
            ([0f32; INPUT_SIZE], [0f32; INPUT_SIZE], [0f32; INPUT_SIZE]);
        for v in 0..INPUT_SIZE {
            for u in 0..INPUT_SIZE {
                (a0[u], b0[u]) = corner(u, v);
            }
            box_sums(&table.sums, table.w + 1, &a0, &b0, span, scale, &mut means);
            pixels.extend(means.iter().map(|&m| to_u8(m)));
        }
    } else {
        for v in 0..INPUT_SIZE {
            for u in 0..INPUT_SIZE {
                let (a, b) = corner(u, v);
                pixels.push(to_u8(table.box_mean(a, b, a + span, b + span)));
            }
        }
    }
    Ok((GrayCrop::new(pixels)?, inside))
}

/// Grid samples across a footprint at least (below 1 frame pixel per
/// sample the grid is every pixel): the table of a large face is read on
/// every `floor(f / GRID_SAMPLES)`-th pixel.
const GRID_SAMPLES: f32 = 2.5;

/// A summed-area table of the luma of a frame rectangle, sampled every
/// `stride` pixels: grid sample `(i, j)` is frame pixel
/// `(x0 + i stride, y0 + j stride)` and stands for the cell
/// `[i - 1/2, i + 1/2] x [j - 1/2, j + 1/2]` of grid coordinates.
///
/// Entries are luma in 1/256 grey levels (at most 65,280 per sample) summed
/// with wrapping `u32` arithmetic, so the table may overflow: only
/// differences are read, and each one `kernels::image::box_sum_at` converts
/// covers at most `(span + 2)^2` cells (span: a footprint's side in cells,
/// under 6), far below the 2^31 that keeps it exact.
struct Integral {
    x0: usize,
    y0: usize,
    stride: usize,
    /// Grid samples across and down.
    w: usize,
    h: usize,
    /// `(h + 1) x (w + 1)`: entry `(j, i)` sums the samples left of `i` and
    /// above `j`; row and column 0 are zero.
    sums: Vec<u32>,
}

impl Integral {
    /// The table of `[x0, y0, x1, y1]` (frame pixels, clamped to the frame;
    /// never empty).
    fn new(frame: &Frame, [x0, y0, x1, y1]: [f32; 4], stride: usize) -> Self {
        let (fw, fh) = (frame.width(), frame.height());
        let clamp = |v: f32, max: usize| (v.max(0.0) as usize).min(max - 1);
        let (x0, y0) = (clamp(x0.floor(), fw), clamp(y0.floor(), fh));
        let (x1, y1) = (clamp(x1.ceil(), fw), clamp(y1.ceil(), fh));
        let (w, h) = ((x1 - x0) / stride + 1, (y1 - y0) / stride + 1);
        let ch = frame.format().channels();
        let data = frame.data();
        let row_len = w + 1;
        let mut sums = vec![0u32; (h + 1) * row_len];
        for j in 0..h {
            let y = y0 + j * stride;
            let row = &data[(y * fw + x0) * ch..];
            let (above, below) = sums.split_at_mut((j + 1) * row_len);
            sat_row(row, ch, stride * ch, w, &above[j * row_len..], below);
        }
        Self {
            x0,
            y0,
            stride,
            w,
            h,
            sums,
        }
    }

    /// Frame position -> grid coordinates.
    fn grid(&self, x: f32, y: f32) -> (f32, f32) {
        let s = self.stride as f32;
        ((x - self.x0 as f32) / s, (y - self.y0 as f32) / s)
    }

    /// Mean luma (0-255) over the table box `[a0, a1] x [b0, b1]`, clipped
    /// to the table (a box wholly outside gives the nearest border cells).
    fn box_mean(&self, a0: f32, b0: f32, a1: f32, b1: f32) -> f32 {
        let (w, h) = (self.w as f32, self.h as f32);
        let clip = |v: f32, max: f32| v.clamp(0.0, max);
        let (mut a0, mut a1) = (clip(a0, w), clip(a1, w));
        let (mut b0, mut b1) = (clip(b0, h), clip(b1, h));
        // A box clipped to nothing keeps a sliver at the border.
        if a1 - a0 < 1e-6 {
            (a0, a1) = ((a0 - 0.5).max(0.0), (a1 + 0.5).min(w));
        }
        if b1 - b0 < 1e-6 {
            (b0, b1) = ((b0 - 0.5).max(0.0), (b1 + 0.5).min(h));
        }
        // Table index and weight of each coordinate (`w` itself reads the
        // last interval at weight 1).
        let split = |a: f32, n: usize| {
            let i = (a as usize).min(n - 1);
            (i, a - i as f32)
        };
        let sum = box_sum_at(
            &self.sums,
            self.w + 1,
            [split(a0, self.w), split(a1, self.w)],
            [split(b0, self.h), split(b1, self.h)],
        );
        sum / ((a1 - a0) * (b1 - b0)) / 256.0
    }
}

/// The alignment this module used before [`align`] read only what the crop
/// needs: up to `max_k` x `max_k` bilinear samples per crop pixel (4 then),
/// over the whole region in float luma. Kept as the reference the fast path
/// is tested against.
#[cfg(test)]
fn align_supersampled(
    frame: &Frame,
    landmarks: &[[f32; 2]; 5],
    max_k: usize,
) -> Result<GrayCrop, PerceptionError> {
    let m = Similarity::estimate(landmarks, &FER2013_LANDMARKS).ok_or(PerceptionError::Align)?;
    let inv = m.inverse().ok_or(PerceptionError::Align)?;
    let footprint = inv.scale();
    if !footprint.is_finite() || footprint > 1e4 {
        return Err(PerceptionError::Align);
    }
    let k = (footprint.ceil() as usize).clamp(1, max_k);
    // The frame area the crop covers.
    let side = INPUT_SIZE as f32;
    let corners = [[-0.5, -0.5], [side, -0.5], [-0.5, side], [side, side]].map(|p| inv.apply(p));
    let (mut x0, mut y0, mut x1, mut y1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
    for [x, y] in corners {
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let region = GrayRegion::new(frame, x0 - 1.0, y0 - 1.0, x1 + 1.0, y1 + 1.0);
    let mut pixels = Vec::with_capacity(INPUT_SIZE * INPUT_SIZE);
    let offsets: Vec<f32> = (0..k).map(|s| (s as f32 + 0.5) / k as f32 - 0.5).collect();
    for v in 0..INPUT_SIZE {
        for u in 0..INPUT_SIZE {
            let mut acc = 0f32;
            for &dv in &offsets {
                for &du in &offsets {
                    let [x, y] = inv.apply([u as f32 + du, v as f32 + dv]);
                    acc += region.sample(x, y);
                }
            }
            pixels.push((acc / (k * k) as f32).round().clamp(0.0, 255.0) as u8);
        }
    }
    GrayCrop::new(pixels)
}

/// Bilinear sample of a whole frame's luma at `(x, y)`.
#[cfg(test)]
fn sample_luma(frame: &Frame, x: f32, y: f32) -> f32 {
    let (w, h) = (frame.width() as f32, frame.height() as f32);
    GrayRegion::new(frame, x - 1.0, y - 1.0, x + 1.0, y + 1.0)
        .sample(x.clamp(0.0, w - 1.0), y.clamp(0.0, h - 1.0))
}

/// For inputs that are already 48x48 face crops (FER2013, CK+ in this
/// project's data): finds the landmarks on a 3x upscaled copy and aligns the
/// crop to the canonical framing. When no single confident face is found the
/// crop is returned unchanged (the second value says whether it was aligned).
pub fn align_crop(
    detector: &Detector,
    crop: &GrayCrop,
) -> Result<(GrayCrop, bool), PerceptionError> {
    const UP: usize = 3;
    let side = INPUT_SIZE * UP;
    let src = crop.pixels();
    // Bilinear 3x upscale, pixel centres aligned.
    let mut big = Vec::with_capacity(side * side);
    let frame48 = Frame::new(INPUT_SIZE, INPUT_SIZE, PixelFormat::Gray8, src.to_vec())?;
    let last = (INPUT_SIZE - 1) as f32;
    let region = GrayRegion::new(&frame48, 0.0, 0.0, last, last);
    for y in 0..side {
        for x in 0..side {
            let sx = (x as f32 + 0.5) / UP as f32 - 0.5;
            let sy = (y as f32 + 0.5) / UP as f32 - 0.5;
            big.push(region.sample(sx, sy).round() as u8);
        }
    }
    let frame = Frame::new(side, side, PixelFormat::Gray8, big)?;
    let dets: Vec<Detection> = detector
        .detect(&frame)?
        .into_iter()
        .filter(|d| d.score > 0.95)
        .collect();
    let [det] = dets.as_slice() else {
        return Ok((crop.clone(), false));
    };
    // Landmarks back in the 48x48 crop's pixel coordinates.
    let lm = det
        .landmarks
        .map(|[x, y]| [(x + 0.5) / UP as f32 - 0.5, (y + 0.5) / UP as f32 - 0.5]);
    Ok((align(&frame48, &lm)?, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_a_known_transform() {
        let truth = Similarity {
            a: 1.7 * 0.3f32.cos(),
            b: 1.7 * 0.3f32.sin(),
            t: [12.0, -4.0],
        };
        let dst: Vec<[f32; 2]> = FER2013_LANDMARKS.iter().map(|&p| truth.apply(p)).collect();
        let m = Similarity::estimate(&FER2013_LANDMARKS, &dst).unwrap();
        assert!((m.a - truth.a).abs() < 1e-4 && (m.b - truth.b).abs() < 1e-4);
        assert!((m.t[0] - truth.t[0]).abs() < 1e-3 && (m.t[1] - truth.t[1]).abs() < 1e-3);
        let back = m.inverse().unwrap().apply(m.apply([3.0, 5.0]));
        assert!((back[0] - 3.0).abs() < 1e-4 && (back[1] - 5.0).abs() < 1e-4);
        assert!(Similarity::estimate(&[[1.0, 1.0]; 5], &FER2013_LANDMARKS).is_none());
        assert!(Similarity::estimate(&[], &[]).is_none());
    }

    #[test]
    fn fast_alignment_matches_supersampling() {
        // A smooth RGB texture, warped at footprints from 1.3 to 9 frame
        // pixels per crop pixel, rotated: the block-averaged path and the
        // 4x4 supersampled reference give nearly the same crop.
        let (w, h) = (640, 480);
        let mut rgb = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let (fx, fy) = (x as f32, y as f32);
                let v = 128.0
                    + 60.0 * (fx / 9.0).sin() * (fy / 7.0).cos()
                    + 40.0 * ((fx + fy) / 13.0).sin();
                let px = &mut rgb[(y * w + x) * 3..][..3];
                px.copy_from_slice(&[v as u8, (v * 0.8) as u8, (255.0 - v) as u8]);
            }
        }
        let frame = Frame::new(w, h, PixelFormat::Rgb8, rgb).unwrap();
        for (scale, angle) in [
            (1.3f32, 0.0f32),
            (2.5, 0.1),
            (4.2, -0.2),
            (6.0, 0.3),
            (9.0, 0.05),
        ] {
            let m = Similarity {
                a: scale * angle.cos(),
                b: scale * angle.sin(),
                t: [320.0 - 24.0 * scale, 240.0 - 24.0 * scale],
            };
            let lm = FER2013_LANDMARKS.map(|p| m.apply(p));
            let fast = align(&frame, &lm).unwrap();
            // The old 4x4 path, and a dense one (every pixel under the
            // footprint) as the truth both approximate.
            let old = align_supersampled(&frame, &lm, 4).unwrap();
            let dense = align_supersampled(&frame, &lm, 12).unwrap();
            let diff = |a: &GrayCrop, b: &GrayCrop| {
                let d: Vec<i32> = a
                    .pixels()
                    .iter()
                    .zip(b.pixels())
                    .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
                    .collect();
                (
                    d.iter().sum::<i32>() as f32 / d.len() as f32,
                    d.into_iter().max().unwrap(),
                )
            };
            let (mean, max) = diff(&fast, &dense);
            let (old_mean, _) = diff(&old, &dense);
            eprintln!("scale {scale}: mean {mean} (4x4 path {old_mean}), max {max}");
            assert!(
                mean < 0.5 && max <= 2 && mean <= old_mean + 0.2,
                "scale {scale}: mean {mean} (4x4 path {old_mean}), max {max}"
            );
        }
    }

    #[test]
    fn eight_boxes_at_a_time_equal_the_clipping_path() {
        let (w, h) = (320, 240);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| ((i * 7919) % 253) as u8).collect();
        let frame = Frame::new(w, h, PixelFormat::Rgb8, rgb).unwrap();
        for (scale, angle) in [(0.7f32, 0.0f32), (1.6, 0.2), (3.3, -0.1)] {
            let m = Similarity {
                a: scale * angle.cos(),
                b: scale * angle.sin(),
                t: [160.0 - 24.0 * scale, 120.0 - 24.0 * scale],
            };
            let lm = FER2013_LANDMARKS.map(|p| m.apply(p));
            let (fast, gathered) = align_with(&frame, &lm, true).unwrap();
            let (slow, clipped) = align_with(&frame, &lm, false).unwrap();
            assert!(
                gathered && !clipped,
                "scale {scale}: the paths were not both taken"
            );
            let diffs: Vec<i32> = fast
                .pixels()
                .iter()
                .zip(slow.pixels())
                .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
                .collect();
            let moved = diffs.iter().filter(|&&d| d > 0).count();
            assert!(
                diffs.iter().all(|&d| d <= 1) && moved <= diffs.len() / 100,
                "scale {scale}: {moved} pixels differ"
            );
        }
    }

    #[test]
    fn faces_at_the_edge_or_in_tiny_frames_still_align() {
        let frame = Frame::new(64, 48, PixelFormat::Gray8, vec![200; 64 * 48]).unwrap();
        // Half outside the frame, far outside, huge and tiny footprints.
        for (scale, dx) in [
            (1.0f32, -30.0f32),
            (3.0, 50.0),
            (0.3, 0.0),
            (400.0, -9000.0),
        ] {
            let lm = FER2013_LANDMARKS.map(|[x, y]| [x * scale + dx, y * scale]);
            let crop = align(&frame, &lm).unwrap();
            assert!(crop.pixels().iter().all(|&p| p == 200), "scale {scale}");
        }
        let one = Frame::new(1, 1, PixelFormat::Rgba8, vec![10, 20, 30, 255]).unwrap();
        let crop = align(&one, &FER2013_LANDMARKS).unwrap();
        assert!(crop.pixels().iter().all(|&p| p == crop.pixels()[0]));
    }

    #[test]
    fn aligning_canonical_landmarks_is_the_identity() {
        // A 48x48 gradient whose landmarks are already canonical comes back
        // unchanged.
        let px: Vec<u8> = (0..48 * 48)
            .map(|i| ((i % 48) * 3 + (i / 48)) as u8)
            .collect();
        let frame = Frame::new(48, 48, PixelFormat::Gray8, px.clone()).unwrap();
        let crop = align(&frame, &FER2013_LANDMARKS).unwrap();
        assert_eq!(crop.pixels(), px.as_slice());
        // The same face at twice the size, shifted, in RGB: still the gradient.
        let mut rgb = vec![0u8; 200 * 150 * 3];
        for y in 0..150 {
            for x in 0..200 {
                let (sx, sy) = ((x as f32 - 20.0) / 2.0, (y as f32 - 10.0) / 2.0);
                let v = sample_luma(&frame, sx, sy).round() as u8;
                rgb[(y * 200 + x) * 3..][..3].copy_from_slice(&[v, v, v]);
            }
        }
        let big = Frame::new(200, 150, PixelFormat::Rgb8, rgb).unwrap();
        let lm = FER2013_LANDMARKS.map(|[x, y]| [x * 2.0 + 20.0, y * 2.0 + 10.0]);
        let crop2 = align(&big, &lm).unwrap();
        let diff = crop2
            .pixels()
            .iter()
            .zip(&px)
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .max()
            .unwrap();
        assert!(diff <= 3, "max difference {diff}");
        assert!(matches!(
            align(&frame, &[[5.0, 5.0]; 5]),
            Err(PerceptionError::Align)
        ));
    }
}

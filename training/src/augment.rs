//! Data augmentation as in the paper (Keras' `ImageDataGenerator(rotation_range=20,
//! width_shift_range=0.1, height_shift_range=0.1, zoom_range=0.1,
//! horizontal_flip=True, fill_mode="nearest")`) and batches as candle tensors.
//!
//! ```
//! use candle_core::Device;
//! use training::augment::{AugmentConfig, Augmenter, BatchMode, make_batch};
//! use training::data::{Dataset, Origin, IMAGE_PIXELS};
//!
//! let classes = models::FER2013_CLASSES.iter().map(|s| s.to_string()).collect();
//! let origins = (0..4).map(|row| Origin::Row { row, usage: None }).collect();
//! let ds = Dataset::new(classes, vec![128; 4 * IMAGE_PIXELS], vec![0, 3, 3, 6], None, origins)?;
//! let aug = Augmenter::new(AugmentConfig::default(), 42)?;
//! let batch = make_batch(&ds, &[3, 1], BatchMode::Augmented { augmenter: &aug, epoch: 0 }, &Device::Cpu)?;
//! assert_eq!(batch.images.dims(), &[2, 1, 48, 48]);
//! assert_eq!(batch.labels.to_vec1::<u32>()?, vec![6, 3]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # The transform
//!
//! Each image gets one affine map, applied as an inverse map (for every output
//! pixel, where to read in the input), exactly Keras' `apply_affine_transform`
//! composition about the image centre `c = (23.5, 23.5)` in (row, column)
//! coordinates, followed by Keras' flip:
//!
//! ```text
//! col' = flip ? 47 - col : col
//! v    = (zoom_rows * (row - 23.5) + shift_rows, zoom_cols * (col' - 23.5) + shift_cols)
//! in   = c + R(theta) v            R = [[cos, -sin], [sin, cos]]
//! ```
//!
//! The input is sampled bilinearly with clamp-to-edge ("nearest") fill: pixels
//! outside the image repeat the nearest edge pixel. A zoom factor above 1 zooms
//! out, as in Keras. Interpolation runs on normalised values (affine in the
//! pixel), so pixels that land exactly on input pixels (identity, flips) are
//! bit-identical to the un-augmented batch.
//!
//! # Randomness
//!
//! The parameters of sample `i` (its index in the [`Dataset`]) in epoch `e`
//! come from `ChaCha8` seeded with `seed`, stream `e`, word position `8 i`: they
//! depend only on `(seed, e, i)`, not on thread scheduling, batch size or which
//! other samples share the batch. The six words are, in order: rotation
//! `U(-rotation_deg, rotation_deg)`, row shift `U(-h, h) * 48` with `h =
//! height_shift`, column shift `U(-w, w) * 48`, row zoom and column zoom (each
//! `U(1 - zoom, 1 + zoom)`, drawn independently as Keras does) and the flip
//! (probability 1/2, if enabled).

use candle_core::{Device, Tensor};
use models::Normalization;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, IMAGE_PIXELS, IMAGE_SIDE, normalization};

/// What can go wrong augmenting or batching.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AugmentError {
    /// A configuration value is out of its range or not finite.
    #[error("invalid augmentation config: {0}")]
    InvalidConfig(String),
    /// A batch index is past the end of the dataset.
    #[error("sample index {index} is out of range for a dataset of {len}")]
    IndexOutOfRange {
        /// The index.
        index: usize,
        /// The dataset's length.
        len: usize,
    },
    /// An image or output buffer does not have 48x48 values.
    #[error("expected a buffer of 2304 values (48x48), got {0}")]
    WrongLength(usize),
    /// Building a tensor failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The random ranges of the augmentation; the defaults are the paper's (Keras
/// `ImageDataGenerator` arguments in brackets). Serialisable, so it can sit in
/// a training config; missing fields take the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Rotation is uniform in `[-rotation_deg, rotation_deg]` degrees, 0..=180
    /// (`rotation_range=20`).
    pub rotation_deg: f32,
    /// Horizontal shift is uniform in `[-s, s]` times the width, 0..=1
    /// (`width_shift_range=0.1`).
    pub width_shift: f32,
    /// Vertical shift is uniform in `[-s, s]` times the height, 0..=1
    /// (`height_shift_range=0.1`).
    pub height_shift: f32,
    /// Zoom factors (rows and columns independently) are uniform in
    /// `[1 - zoom, 1 + zoom]`, 0..1 (`zoom_range=0.1`).
    pub zoom: f32,
    /// Mirror left-right with probability 1/2 (`horizontal_flip=True`).
    pub horizontal_flip: bool,
    /// Random erasing (Zhong et al. 2020): with this probability, 0..=1, a
    /// rectangle of 2-33 % of the image (aspect 0.3-3.3) is filled with one
    /// random grey level, after the affine transform. 0 (the default) never
    /// erases; not part of the paper's augmentation.
    pub random_erasing: f32,
}

impl Default for AugmentConfig {
    /// The paper's augmentation: ±20°, ±10 % shifts, ±10 % zoom, flips.
    fn default() -> Self {
        Self {
            rotation_deg: 20.0,
            width_shift: 0.1,
            height_shift: 0.1,
            zoom: 0.1,
            horizontal_flip: true,
            random_erasing: 0.0,
        }
    }
}

impl AugmentConfig {
    /// No augmentation at all: every image passes through unchanged.
    pub fn identity() -> Self {
        Self {
            rotation_deg: 0.0,
            width_shift: 0.0,
            height_shift: 0.0,
            zoom: 0.0,
            horizontal_flip: false,
            random_erasing: 0.0,
        }
    }

    /// Only random horizontal flips.
    pub fn flip_only() -> Self {
        Self {
            horizontal_flip: true,
            ..Self::identity()
        }
    }

    /// Checks every range.
    pub fn validate(&self) -> Result<(), AugmentError> {
        let check = |name: &str, v: f32, max: f32, max_inclusive: bool| {
            let ok = v.is_finite() && v >= 0.0 && (v < max || (max_inclusive && v == max));
            if ok {
                Ok(())
            } else {
                let bracket = if max_inclusive { ']' } else { ')' };
                Err(AugmentError::InvalidConfig(format!(
                    "{name} = {v}, must be in [0, {max}{bracket}"
                )))
            }
        };
        check("rotation_deg", self.rotation_deg, 180.0, true)?;
        check("width_shift", self.width_shift, 1.0, true)?;
        check("height_shift", self.height_shift, 1.0, true)?;
        check("zoom", self.zoom, 1.0, false)?;
        check("random_erasing", self.random_erasing, 1.0, true)
    }
}

/// One image's drawn transform (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffineParams {
    /// Rotation in degrees.
    pub rotation_deg: f32,
    /// Row shift in pixels.
    pub shift_rows: f32,
    /// Column shift in pixels.
    pub shift_cols: f32,
    /// Row zoom factor (above 1 zooms out).
    pub zoom_rows: f32,
    /// Column zoom factor.
    pub zoom_cols: f32,
    /// Mirror left-right.
    pub flip: bool,
}

impl AffineParams {
    /// The transform that changes nothing.
    pub const IDENTITY: AffineParams = AffineParams {
        rotation_deg: 0.0,
        shift_rows: 0.0,
        shift_cols: 0.0,
        zoom_rows: 1.0,
        zoom_cols: 1.0,
        flip: false,
    };
}

/// `ChaCha8` words reserved per sample in an epoch's stream.
const WORDS_PER_SAMPLE: u128 = 8;

/// Random erasing draws from its own streams (the epoch with this bit set), so
/// turning it on leaves every sample's affine transform as it was.
const ERASE_STREAM: u64 = 1 << 62;

/// One drawn random erasure: rows `top..top + height`, columns
/// `left..left + width` take the normalised grey level `value`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Erasure {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Rows erased (at least 1).
    pub height: usize,
    /// Columns erased (at least 1).
    pub width: usize,
    /// The fill, a normalised value within the pixel range.
    pub value: f32,
}

impl Erasure {
    /// Fills the rectangle of one 48x48 normalised image.
    pub fn apply(&self, out: &mut [f32]) {
        for row in out
            .chunks_exact_mut(IMAGE_SIDE)
            .skip(self.top)
            .take(self.height)
        {
            row[self.left..self.left + self.width].fill(self.value);
        }
    }
}

/// Pixel values to normalised `f32`: the project's [`normalization()`] as a
/// table, plus its range (for clamping after interpolation).
#[derive(Debug, Clone)]
struct Lut {
    values: [f32; 256],
    lo: f32,
    hi: f32,
}

impl Lut {
    fn new(norm: &Normalization) -> Self {
        let mut values = [0.0; 256];
        for (p, v) in (0..=255u8).zip(values.iter_mut()) {
            *v = norm.apply(p);
        }
        Self {
            values,
            lo: values[0].min(values[255]),
            hi: values[0].max(values[255]),
        }
    }

    fn normalize(&self, src: &[u8], out: &mut [f32]) {
        for (o, &p) in out.iter_mut().zip(src) {
            *o = self.values[usize::from(p)];
        }
    }
}

/// Draws and applies the random transforms of one configuration and seed.
#[derive(Debug, Clone)]
pub struct Augmenter {
    config: AugmentConfig,
    seed: u64,
    rng: ChaCha8Rng,
    lut: Lut,
}

impl Augmenter {
    /// An augmenter for `config` (validated) whose randomness derives from `seed`.
    pub fn new(config: AugmentConfig, seed: u64) -> Result<Self, AugmentError> {
        config.validate()?;
        Ok(Self {
            config,
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            lut: Lut::new(&normalization()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AugmentConfig {
        &self.config
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The transform of sample `index` in `epoch`: a function of `(seed, epoch,
    /// index)` only.
    pub fn params(&self, epoch: u64, index: u64) -> AffineParams {
        let mut rng = self.rng.clone();
        rng.set_stream(epoch);
        rng.set_word_pos(u128::from(index) * WORDS_PER_SAMPLE);
        // Uniform in [-1, 1) from the top 24 bits of a word.
        let mut sym = || (rng.next_u32() >> 8) as f32 * (2.0 / 16_777_216.0) - 1.0;
        let c = &self.config;
        let side = IMAGE_SIDE as f32;
        let rotation_deg = c.rotation_deg * sym();
        let shift_rows = c.height_shift * side * sym();
        let shift_cols = c.width_shift * side * sym();
        let zoom_rows = 1.0 + c.zoom * sym();
        let zoom_cols = 1.0 + c.zoom * sym();
        let flip = c.horizontal_flip && rng.next_u32() >> 31 == 1;
        AffineParams {
            rotation_deg,
            shift_rows,
            shift_cols,
            zoom_rows,
            zoom_cols,
            flip,
        }
    }

    /// The random erasure of sample `index` in `epoch`, if it gets one: a
    /// function of `(seed, epoch, index)` only, drawn apart from
    /// [`Augmenter::params`]. Area 2-33 % of the image, aspect 0.3-3.3 (the
    /// ranges of Zhong et al.), placed uniformly where it fits.
    pub fn erasure(&self, epoch: u64, index: u64) -> Option<Erasure> {
        let p = self.config.random_erasing;
        if p <= 0.0 {
            return None;
        }
        let mut rng = self.rng.clone();
        rng.set_stream(epoch | ERASE_STREAM);
        rng.set_word_pos(u128::from(index) * WORDS_PER_SAMPLE);
        // Uniform in [0, 1) from the top 24 bits of a word.
        let mut unit = || (rng.next_u32() >> 8) as f32 / 16_777_216.0;
        if unit() >= p {
            return None;
        }
        let side = IMAGE_SIDE as f32;
        let area = (0.02 + unit() * (0.33 - 0.02)) * side * side;
        let aspect = (0.3f32.ln() + unit() * (3.3f32.ln() - 0.3f32.ln())).exp();
        let height = ((area * aspect).sqrt().round() as usize).clamp(1, IMAGE_SIDE);
        let width = ((area / aspect).sqrt().round() as usize).clamp(1, IMAGE_SIDE);
        let top = (unit() * (IMAGE_SIDE - height + 1) as f32) as usize;
        let left = (unit() * (IMAGE_SIDE - width + 1) as f32) as usize;
        let value = self.lut.lo + unit() * (self.lut.hi - self.lut.lo);
        Some(Erasure {
            top: top.min(IMAGE_SIDE - height),
            left: left.min(IMAGE_SIDE - width),
            height,
            width,
            value,
        })
    }

    /// Augments one 48x48 image (sample `index` of `epoch`) into normalised
    /// `f32`s.
    pub fn augment_into(
        &self,
        src: &[u8],
        epoch: u64,
        index: u64,
        out: &mut [f32],
    ) -> Result<(), AugmentError> {
        let (src, out) = as_images(src, out)?;
        self.transform(src, epoch, index, out);
        Ok(())
    }

    /// The affine transform, then the erasure, of one sample.
    fn transform(
        &self,
        src: &[u8; IMAGE_PIXELS],
        epoch: u64,
        index: u64,
        out: &mut [f32; IMAGE_PIXELS],
    ) {
        warp(src, &self.params(epoch, index), &self.lut, out);
        if let Some(e) = self.erasure(epoch, index) {
            e.apply(out);
        }
    }
}

fn as_images<'a, 'b>(
    src: &'a [u8],
    out: &'b mut [f32],
) -> Result<(&'a [u8; IMAGE_PIXELS], &'b mut [f32; IMAGE_PIXELS]), AugmentError> {
    let src: &[u8; IMAGE_PIXELS] = src
        .try_into()
        .map_err(|_| AugmentError::WrongLength(src.len()))?;
    let len = out.len();
    let out: &mut [f32; IMAGE_PIXELS] =
        out.try_into().map_err(|_| AugmentError::WrongLength(len))?;
    Ok((src, out))
}

/// Applies one given transform to a 48x48 image, writing normalised `f32`s
/// ([`normalization()`]).
pub fn warp_into(src: &[u8], params: &AffineParams, out: &mut [f32]) -> Result<(), AugmentError> {
    let (src, out) = as_images(src, out)?;
    warp(src, params, &Lut::new(&normalization()), out);
    Ok(())
}

/// Side of the edge-padded working image: one extra column and row repeat
/// the last ones, so the bilinear neighbours `x0 + 1`, `y0 + 1` need no clamping.
const PADDED: usize = IMAGE_SIDE + 1;

/// Output pixels computed together (48 is a multiple): the coordinate and
/// interpolation arithmetic vectorises, only the four neighbour loads are scalar.
const LANES: usize = 8;

/// The inverse-mapped bilinear warp with clamp-to-edge fill.
///
/// Input coordinates are affine along an output row: `start + col * step`.
/// They are clamped to `[0, 47]` (clamp-to-edge: beyond the border the edge
/// pixel repeats), split into integer and fractional parts and interpolated
/// on normalised values. Everything is branch-free; a NaN coordinate (which
/// validated configs cannot produce) clamps to 0 rather than misbehaving.
fn warp(src: &[u8; IMAGE_PIXELS], p: &AffineParams, lut: &Lut, out: &mut [f32; IMAGE_PIXELS]) {
    const N: usize = IMAGE_SIDE;
    const MAX: f32 = (N - 1) as f32;
    const CENTRE: f32 = MAX / 2.0;
    // Adding 2^23 to a float in [0, 2^22) rounds it to an integer held in the
    // low mantissa bits: a floor that vectorises, unlike `as i32`.
    const MAGIC: f32 = 8_388_608.0;
    const MANTISSA: u32 = 0x7F_FFFF;
    const LAST_INDEX: usize = PADDED * PADDED - PADDED - 2;

    let mut img = [0.0f32; PADDED * PADDED];
    for (row, dst) in src.chunks_exact(N).zip(img.chunks_exact_mut(PADDED)) {
        lut.normalize(row, &mut dst[..N]);
        dst[N] = dst[N - 1];
    }
    let (body, last_row) = img.split_at_mut(N * PADDED);
    last_row.copy_from_slice(&body[(N - 1) * PADDED..]);

    let (sin, cos) = p.rotation_deg.to_radians().sin_cos();
    let f = if p.flip { -1.0 } else { 1.0 };
    // With b(col) = zoom_cols * (col' - c) + shift_cols = k1 * col + k0 and
    // a(row) = zoom_rows * (row - c) + shift_rows:
    //   in_row = c + cos a - sin b,   in_col = c + sin a + cos b.
    let k1 = p.zoom_cols * f;
    let k0 = p.shift_cols - k1 * CENTRE;
    let step_r = -sin * k1;
    let step_c = cos * k1;
    let lanes: [f32; LANES] = std::array::from_fn(|k| k as f32);
    let (lo, hi) = (lut.lo, lut.hi);

    for (r, out_row) in out.chunks_exact_mut(N).enumerate() {
        let a = p.zoom_rows * (r as f32 - CENTRE) + p.shift_rows;
        let start_r = CENTRE + cos * a - sin * k0;
        let start_c = CENTRE + sin * a + cos * k0;
        for (chunk, dst) in out_row.chunks_exact_mut(LANES).enumerate() {
            let first = (chunk * LANES) as f32;
            let mut index = [0u32; LANES];
            let mut fy = [0.0f32; LANES];
            let mut fx = [0.0f32; LANES];
            for k in 0..LANES {
                let col = first + lanes[k];
                let y = start_r + col * step_r;
                let x = start_c + col * step_c;
                let y = if y > 0.0 { y } else { 0.0 };
                let y = if y < MAX { y } else { MAX };
                let x = if x > 0.0 { x } else { 0.0 };
                let x = if x < MAX { x } else { MAX };
                let ty = y + MAGIC;
                let ry = ty - MAGIC;
                let over_y = ry > y;
                let y0 = (ty.to_bits() & MANTISSA).wrapping_sub(u32::from(over_y));
                let tx = x + MAGIC;
                let rx = tx - MAGIC;
                let over_x = rx > x;
                let x0 = (tx.to_bits() & MANTISSA).wrapping_sub(u32::from(over_x));
                index[k] = y0 * PADDED as u32 + x0;
                fy[k] = y - if over_y { ry - 1.0 } else { ry };
                fx[k] = x - if over_x { rx - 1.0 } else { rx };
            }
            let mut p00 = [0.0f32; LANES];
            let mut p01 = [0.0f32; LANES];
            let mut p10 = [0.0f32; LANES];
            let mut p11 = [0.0f32; LANES];
            for k in 0..LANES {
                let i = (index[k] as usize).min(LAST_INDEX);
                p00[k] = img[i];
                p01[k] = img[i + 1];
                p10[k] = img[i + PADDED];
                p11[k] = img[i + PADDED + 1];
            }
            for k in 0..LANES {
                let top = p00[k] + fx[k] * (p01[k] - p00[k]);
                let bottom = p10[k] + fx[k] * (p11[k] - p10[k]);
                let v = top + fy[k] * (bottom - top);
                let v = if v > lo { v } else { lo };
                dst[k] = if v < hi { v } else { hi };
            }
        }
    }
}

/// How [`make_batch`] fills a batch.
#[derive(Debug, Clone, Copy)]
pub enum BatchMode<'a> {
    /// The images as they are (evaluation).
    Plain,
    /// Randomly transformed (training).
    Augmented {
        /// The transforms' source.
        augmenter: &'a Augmenter,
        /// The epoch, part of every sample's random stream.
        epoch: u64,
    },
}

/// A batch ready for a network.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(N, 1, 48, 48)` `f32`, normalised with [`normalization()`].
    pub images: Tensor,
    /// `(N,)` `u32` class indices.
    pub labels: Tensor,
    /// `(N, classes)` `f32` label distributions, if the dataset has them.
    pub soft_targets: Option<Tensor>,
}

/// Writes the samples at `indices` into `out` (`indices.len() * 2304`
/// normalised `f32`s, NCHW order), in parallel over samples with rayon.
/// The result does not depend on the number of threads.
pub fn fill_images(
    ds: &Dataset,
    indices: &[usize],
    mode: BatchMode<'_>,
    out: &mut [f32],
) -> Result<(), AugmentError> {
    if out.len() != indices.len() * IMAGE_PIXELS {
        return Err(AugmentError::WrongLength(out.len()));
    }
    if let Some(&index) = indices.iter().find(|&&i| i >= ds.len()) {
        return Err(AugmentError::IndexOutOfRange {
            index,
            len: ds.len(),
        });
    }
    let pixels = ds.pixels();
    let plain_lut;
    let lut = match mode {
        BatchMode::Plain => {
            plain_lut = Lut::new(&normalization());
            &plain_lut
        }
        BatchMode::Augmented { augmenter, .. } => &augmenter.lut,
    };
    out.par_chunks_exact_mut(IMAGE_PIXELS)
        .zip(indices.par_iter())
        .for_each(|(dst, &i)| {
            let src = &pixels[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS];
            match mode {
                BatchMode::Plain => lut.normalize(src, dst),
                BatchMode::Augmented { augmenter, epoch } => {
                    if let Ok((src, dst)) = as_images(src, dst) {
                        augmenter.transform(src, epoch, i as u64, dst);
                    }
                }
            }
        });
    Ok(())
}

/// The samples at `indices` as tensors on `device`: images `(N, 1, 48, 48)`
/// normalised `f32` (augmented or not, as `mode` says), labels `(N,)` `u32` and
/// soft targets `(N, classes)` when the dataset has them.
pub fn make_batch(
    ds: &Dataset,
    indices: &[usize],
    mode: BatchMode<'_>,
    device: &Device,
) -> Result<Batch, AugmentError> {
    let n = indices.len();
    let mut images = vec![0.0f32; n * IMAGE_PIXELS];
    fill_images(ds, indices, mode, &mut images)?;
    let labels: Vec<u32> = indices.iter().map(|&i| u32::from(ds.labels()[i])).collect();
    let soft_targets = match ds.soft_targets() {
        Some(_) => {
            let c = ds.classes().len();
            let mut soft = Vec::with_capacity(n * c);
            for &i in indices {
                soft.extend_from_slice(ds.soft_target(i).unwrap_or(&[]));
            }
            Some(Tensor::from_vec(soft, (n, c), device)?)
        }
        None => None,
    };
    Ok(Batch {
        images: Tensor::from_vec(images, (n, 1, IMAGE_SIDE, IMAGE_SIDE), device)?,
        labels: Tensor::from_vec(labels, n, device)?,
        soft_targets,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::data::Origin;

    /// `n` random-looking images (with some all-0 and all-255 pixels), labels `i % 7`.
    fn dataset(n: usize, soft: bool) -> Dataset {
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let mut pixels = vec![0u8; n * IMAGE_PIXELS];
        rng.fill_bytes(&mut pixels);
        for (i, p) in pixels.iter_mut().enumerate() {
            match i % 13 {
                0 => *p = 0,
                1 => *p = 255,
                _ => {}
            }
        }
        let labels = (0..n).map(|i| (i % 7) as u8).collect();
        let soft = soft.then(|| {
            (0..n * 7)
                .map(|k| if k % 8 == 0 { 1.0 } else { 0.0 })
                .collect()
        });
        let origins = (0..n).map(|row| Origin::Row { row, usage: None }).collect();
        let classes = models::FER2013_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect();
        Dataset::new(classes, pixels, labels, soft, origins).unwrap()
    }

    fn images(ds: &Dataset, idx: &[usize], mode: BatchMode<'_>) -> Vec<f32> {
        let b = make_batch(ds, idx, mode, &Device::Cpu).unwrap();
        b.images.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn aug(aug: &Augmenter, epoch: u64) -> BatchMode<'_> {
        BatchMode::Augmented {
            augmenter: aug,
            epoch,
        }
    }

    #[test]
    fn shapes_labels_and_soft_targets() {
        let ds = dataset(10, true);
        let a = Augmenter::new(AugmentConfig::default(), 1).unwrap();
        let b = make_batch(&ds, &[9, 0, 3], aug(&a, 0), &Device::Cpu).unwrap();
        assert_eq!(b.images.dims(), &[3, 1, 48, 48]);
        assert_eq!(b.images.dtype(), candle_core::DType::F32);
        assert_eq!(b.labels.to_vec1::<u32>().unwrap(), vec![2, 0, 3]);
        let soft = b.soft_targets.unwrap();
        assert_eq!(soft.dims(), &[3, 7]);
        assert_eq!(
            soft.to_vec2::<f32>().unwrap()[1],
            ds.soft_target(0).unwrap()
        );
        let plain = make_batch(&dataset(2, false), &[1], BatchMode::Plain, &Device::Cpu).unwrap();
        assert!(plain.soft_targets.is_none());
    }

    #[test]
    fn plain_batch_is_the_normalised_input() {
        let ds = dataset(4, false);
        let got = images(&ds, &[2, 0], BatchMode::Plain);
        let norm = normalization();
        for (k, &i) in [2usize, 0].iter().enumerate() {
            let want: Vec<f32> = ds
                .image(i)
                .unwrap()
                .iter()
                .map(|&p| norm.apply(p))
                .collect();
            assert_eq!(
                &got[k * IMAGE_PIXELS..(k + 1) * IMAGE_PIXELS],
                want.as_slice()
            );
        }
    }

    #[test]
    fn output_in_unit_range() {
        let ds = dataset(64, false);
        let strong = AugmentConfig {
            rotation_deg: 180.0,
            width_shift: 1.0,
            height_shift: 1.0,
            zoom: 0.9,
            horizontal_flip: true,
            random_erasing: 1.0,
        };
        for cfg in [AugmentConfig::default(), strong] {
            let a = Augmenter::new(cfg, 5).unwrap();
            let idx: Vec<usize> = (0..64).collect();
            let out = images(&ds, &idx, aug(&a, 3));
            assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
            // Clamp-to-edge fill: nothing is invented, so an image of one value
            // stays that value everywhere.
        }
        let mut flat = Dataset::empty(vec!["x".into()]);
        flat.push(
            &[77; IMAGE_PIXELS],
            0,
            None,
            Origin::Row {
                row: 0,
                usage: None,
            },
        );
        let no_erasing = AugmentConfig {
            random_erasing: 0.0,
            ..strong
        };
        let a = Augmenter::new(no_erasing, 5).unwrap();
        for epoch in 0..5 {
            let out = images(&flat, &[0], aug(&a, epoch));
            assert!(out.iter().all(|&v| (v - 77.0 / 255.0).abs() < 1e-6));
        }
    }

    #[test]
    fn identity_config_returns_the_input_exactly() {
        let ds = dataset(20, false);
        let idx: Vec<usize> = (0..20).collect();
        let a = Augmenter::new(AugmentConfig::identity(), 123).unwrap();
        let plain = images(&ds, &idx, BatchMode::Plain);
        for epoch in [0, 1, 1000] {
            assert_eq!(images(&ds, &idx, aug(&a, epoch)), plain);
        }
        let mut out = vec![0.0; IMAGE_PIXELS];
        warp_into(ds.image(0).unwrap(), &AffineParams::IDENTITY, &mut out).unwrap();
        assert_eq!(out, plain[..IMAGE_PIXELS]);
    }

    #[test]
    fn flip_only_config_is_an_exact_mirror() {
        let ds = dataset(40, false);
        let idx: Vec<usize> = (0..40).collect();
        let a = Augmenter::new(AugmentConfig::flip_only(), 7).unwrap();
        let plain = images(&ds, &idx, BatchMode::Plain);
        let out = images(&ds, &idx, aug(&a, 0));
        let mut flipped = 0;
        for i in 0..40 {
            let src = &plain[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS];
            let got = &out[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS];
            if a.params(0, i as u64).flip {
                flipped += 1;
                for r in 0..48 {
                    for c in 0..48 {
                        assert_eq!(got[r * 48 + c], src[r * 48 + 47 - c]);
                    }
                }
            } else {
                assert_eq!(got, src);
            }
        }
        assert!((10..=30).contains(&flipped), "{flipped} of 40 flipped");
    }

    #[test]
    fn a_pure_shift_moves_pixels_with_edge_fill() {
        let ds = dataset(1, false);
        let plain = images(&ds, &[0], BatchMode::Plain);
        let p = AffineParams {
            shift_cols: 3.0,
            shift_rows: -2.0,
            ..AffineParams::IDENTITY
        };
        let mut out = vec![0.0; IMAGE_PIXELS];
        warp_into(ds.image(0).unwrap(), &p, &mut out).unwrap();
        for r in 0..48 {
            for c in 0..48 {
                let (sr, sc) = ((r as i64 - 2).clamp(0, 47), (c as i64 + 3).clamp(0, 47));
                assert_eq!(out[r * 48 + c], plain[(sr * 48 + sc) as usize]);
            }
        }
    }

    #[test]
    fn rotation_by_90_degrees_turns_the_image() {
        let ds = dataset(1, false);
        let plain = images(&ds, &[0], BatchMode::Plain);
        let p = AffineParams {
            rotation_deg: 90.0,
            ..AffineParams::IDENTITY
        };
        let mut out = vec![0.0; IMAGE_PIXELS];
        warp_into(ds.image(0).unwrap(), &p, &mut out).unwrap();
        // in = c + R v with R = [[0, -1], [1, 0]]: output (r, c) reads input
        // (47 - c, r), up to the rounding of cos 90°.
        let mut max_err = 0.0f32;
        for r in 0..48 {
            for c in 0..48 {
                let want = plain[(47 - c) * 48 + r];
                max_err = max_err.max((out[r * 48 + c] - want).abs());
            }
        }
        assert!(max_err < 1e-4, "{max_err}");
    }

    #[test]
    fn seeded_reproducible_and_epoch_dependent() {
        let ds = dataset(16, false);
        let idx: Vec<usize> = (0..16).collect();
        let a = Augmenter::new(AugmentConfig::default(), 2024).unwrap();
        let b = Augmenter::new(AugmentConfig::default(), 2024).unwrap();
        let first = images(&ds, &idx, aug(&a, 4));
        assert_eq!(
            first,
            images(&ds, &idx, aug(&b, 4)),
            "same seed, same output"
        );
        assert_ne!(first, images(&ds, &idx, aug(&a, 5)), "another epoch");
        let c = Augmenter::new(AugmentConfig::default(), 2025).unwrap();
        assert_ne!(first, images(&ds, &idx, aug(&c, 4)), "another seed");
        // Every sample differs between epochs, not just some.
        for i in 0..16 {
            assert_ne!(a.params(4, i), a.params(5, i));
            assert_ne!(a.params(4, i), a.params(4, i + 1));
        }
    }

    #[test]
    fn independent_of_batch_composition_and_threads() {
        let ds = dataset(50, false);
        let a = Augmenter::new(AugmentConfig::default(), 11).unwrap();
        let all: Vec<usize> = (0..50).collect();
        let whole = images(&ds, &all, aug(&a, 2));
        let mut order: Vec<usize> = (0..50).rev().collect();
        order.rotate_left(17);
        let shuffled = images(&ds, &order, aug(&a, 2));
        for (k, &i) in order.iter().enumerate() {
            assert_eq!(
                shuffled[k * IMAGE_PIXELS..(k + 1) * IMAGE_PIXELS],
                whole[i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS]
            );
        }
        let single = images(&ds, &[31], aug(&a, 2));
        assert_eq!(single, whole[31 * IMAGE_PIXELS..32 * IMAGE_PIXELS]);
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| images(&ds, &all, aug(&a, 2)));
        assert_eq!(one_thread, whole);
        let mut one = vec![0.0; IMAGE_PIXELS];
        a.augment_into(ds.image(31).unwrap(), 2, 31, &mut one)
            .unwrap();
        assert_eq!(one, single);
    }

    #[test]
    fn params_stay_in_their_ranges() {
        let cfg = AugmentConfig::default();
        let a = Augmenter::new(cfg, 0).unwrap();
        let mut flips = 0;
        let (mut min_rot, mut max_rot) = (f32::MAX, f32::MIN);
        for i in 0..2000 {
            let p = a.params(1, i);
            assert!(p.rotation_deg.abs() <= 20.0);
            assert!(p.shift_rows.abs() <= 4.8 && p.shift_cols.abs() <= 4.8);
            assert!((0.9..=1.1).contains(&p.zoom_rows) && (0.9..=1.1).contains(&p.zoom_cols));
            flips += usize::from(p.flip);
            min_rot = min_rot.min(p.rotation_deg);
            max_rot = max_rot.max(p.rotation_deg);
        }
        assert!((900..1100).contains(&flips), "{flips}");
        assert!(min_rot < -19.0 && max_rot > 19.0);
        assert_eq!(
            Augmenter::new(AugmentConfig::identity(), 9)
                .unwrap()
                .params(3, 3),
            AffineParams::IDENTITY
        );
    }

    #[test]
    fn random_erasing_fills_one_rectangle_and_leaves_the_warp_alone() {
        let ds = dataset(1, false);
        let plain_cfg = AugmentConfig::default();
        let erase_cfg = AugmentConfig {
            random_erasing: 0.5,
            ..plain_cfg
        };
        let plain = Augmenter::new(plain_cfg, 4).unwrap();
        let erasing = Augmenter::new(erase_cfg, 4).unwrap();
        let (mut erased, mut areas) = (0, Vec::new());
        for i in 0..1000u64 {
            // The affine draw does not depend on erasing being on.
            assert_eq!(plain.params(2, i), erasing.params(2, i));
            assert_eq!(plain.erasure(2, i), None);
            let Some(e) = erasing.erasure(2, i) else {
                continue;
            };
            assert_eq!(erasing.erasure(2, i), Some(e), "not deterministic");
            erased += 1;
            assert!(e.top + e.height <= IMAGE_SIDE && e.left + e.width <= IMAGE_SIDE);
            assert!((0.0..=1.0).contains(&e.value));
            areas.push((e.height * e.width) as f32 / IMAGE_PIXELS as f32);
        }
        assert!(
            (420..580).contains(&erased),
            "{erased} of 1000 erased at p = 0.5"
        );
        let (lo, hi) = areas
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), &a| (l.min(a), h.max(a)));
        assert!(lo < 0.05 && hi > 0.25 && hi < 0.4, "areas {lo}..{hi}");

        // The image is the plain warp with exactly the rectangle replaced.
        let i = (0..1000u64)
            .find(|&i| erasing.erasure(0, i).is_some())
            .unwrap();
        let e = erasing.erasure(0, i).unwrap();
        let (mut want, mut got) = (vec![0.0; IMAGE_PIXELS], vec![0.0; IMAGE_PIXELS]);
        plain
            .augment_into(ds.image(0).unwrap(), 0, i, &mut want)
            .unwrap();
        erasing
            .augment_into(ds.image(0).unwrap(), 0, i, &mut got)
            .unwrap();
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            let (r, c) = (k / IMAGE_SIDE, k % IMAGE_SIDE);
            let inside =
                (e.top..e.top + e.height).contains(&r) && (e.left..e.left + e.width).contains(&c);
            assert_eq!(*g, if inside { e.value } else { *w }, "pixel {r},{c}");
        }
        // Batches go through the same path.
        let batch = images(&ds, &[0], aug(&erasing, 0));
        let mut one = vec![0.0; IMAGE_PIXELS];
        erasing
            .augment_into(ds.image(0).unwrap(), 0, 0, &mut one)
            .unwrap();
        assert_eq!(batch, one);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let bad = AugmentConfig {
            zoom: 1.0,
            ..Default::default()
        };
        assert!(matches!(
            Augmenter::new(bad, 0),
            Err(AugmentError::InvalidConfig(_))
        ));
        let nan = AugmentConfig {
            rotation_deg: f32::NAN,
            ..Default::default()
        };
        assert!(Augmenter::new(nan, 0).is_err());
        let neg = AugmentConfig {
            width_shift: -0.1,
            ..Default::default()
        };
        assert!(Augmenter::new(neg, 0).is_err());
        let erase_all_twice = AugmentConfig {
            random_erasing: 1.5,
            ..Default::default()
        };
        assert!(Augmenter::new(erase_all_twice, 0).is_err());
        let ds = dataset(3, false);
        let err = make_batch(&ds, &[0, 3], BatchMode::Plain, &Device::Cpu).unwrap_err();
        assert!(matches!(
            err,
            AugmentError::IndexOutOfRange { index: 3, len: 3 }
        ));
        let mut out = vec![0.0; 10];
        assert!(warp_into(&[0; 10], &AffineParams::IDENTITY, &mut out).is_err());
    }

    #[test]
    fn config_serde_with_defaults() {
        let cfg: AugmentConfig = serde_json::from_str(r#"{"rotation_deg": 10}"#).unwrap();
        assert_eq!(
            cfg,
            AugmentConfig {
                rotation_deg: 10.0,
                ..Default::default()
            }
        );
        let json = serde_json::to_string(&AugmentConfig::default()).unwrap();
        assert_eq!(
            serde_json::from_str::<AugmentConfig>(&json).unwrap(),
            AugmentConfig::default()
        );
        assert!(serde_json::from_str::<AugmentConfig>(r#"{"rotation": 10}"#).is_err());
    }

    /// One epoch of FER2013's size on one core. Run with
    /// `cargo test --release -p training --lib augment_speed -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing: run in release"]
    fn augment_speed() {
        const N: usize = 28_709;
        let ds = dataset(N, false);
        let a = Augmenter::new(AugmentConfig::default(), 1).unwrap();
        let mut out = vec![0.0f32; IMAGE_PIXELS];
        let mut checksum = 0.0f32;
        let mut best = f64::MAX;
        for epoch in 0..3 {
            let t = Instant::now();
            for i in 0..N {
                a.augment_into(ds.image(i).unwrap(), epoch, i as u64, &mut out)
                    .unwrap();
                checksum += out[1000];
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "augment, one core: {N} images in {:.1} ms = {:.2} us/image (checksum {checksum})",
            best * 1e3,
            best * 1e6 / N as f64
        );
        let idx: Vec<usize> = (0..N).collect();
        let t = Instant::now();
        for chunk in idx.chunks(64) {
            let b = make_batch(&ds, chunk, aug(&a, 0), &Device::Cpu).unwrap();
            assert_eq!(b.images.dims()[0], chunk.len());
        }
        let batched = t.elapsed().as_secs_f64();
        println!(
            "make_batch (64/batch, {} rayon threads): {N} images in {:.1} ms = {:.2} us/image",
            rayon::current_num_threads(),
            batched * 1e3,
            batched * 1e6 / N as f64
        );
        assert!(best < 1.0, "an epoch took {best:.2} s on one core");
    }
}

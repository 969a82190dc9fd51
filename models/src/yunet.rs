//! YuNet (Wu, Peng and Yu, *YuNet: A Tiny Millisecond-level Face Detector*,
//! Machine Intelligence Research 2023), the single-shot face detector of
//! libfacedetection, on the project's kernels: one pass over the whole image
//! gives boxes, scores and five landmarks, where MTCNN needs a pyramid of
//! P-Net passes and two refinement networks.
//!
//! The graph is libfacedetection's `objectdetect_cnn` step for step, with the
//! weights of its `facedetectcnn-data.cpp` (BatchNorm folded into the biases;
//! converted by `tools/yunet_convert.py`): a 3x3 stride-2 head convolution, a
//! backbone of point-wise + depth-wise 3x3 pairs with four 2x2 max-poolings,
//! a top-down neck adding each level to the upsampled level above, and four
//! point-wise + depth-wise heads (class, box, objectness, landmarks) on the
//! stride 8, 16 and 32 feature maps. Activations are channel-last
//! (`rows x cols x channels`), as libfacedetection keeps them, so a
//! point-wise convolution is one GEMM and a depth-wise one a row of vector
//! multiply-adds. The four heads of a level run as one 64 -> 16 point-wise
//! GEMM and one 16-channel depth-wise pass.
//!
//! Tested against libfacedetection's own C++ (`tools/yunet_reference.py`)
//! in `perception/tests/yunet.rs`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use kernels::hwc;
use kernels::slice::{self, Mat};

use crate::WeightsError;

type Result<T> = std::result::Result<T, WeightsError>;

/// The `format` metadata of `yunet.safetensors`.
pub const FORMAT: &str = "yunet-libfacedetection";

/// Input sides are padded up to a multiple of this (the deepest stride).
pub const PAD: usize = 32;

/// The feature-map strides of the three detection levels.
pub const STRIDES: [usize; 3] = [8, 16, 32];

/// One face found by [`YuNet::detect`], in the input image's pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct YuNetFace {
    /// `sqrt(class probability * objectness)`, as libfacedetection scores.
    pub score: f32,
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// Left eye, right eye, nose tip, left and right mouth corners, "left"
    /// as seen in the image.
    pub landmarks: [[f32; 2]; 5],
}

/// A 1x1 convolution, `w` `[out, in]`.
#[derive(Debug, Clone)]
struct Pw {
    w: Vec<f32>,
    b: Vec<f32>,
    cin: usize,
    cout: usize,
}

/// A 3x3 depth-wise convolution with zero padding 1, `w` `[9, channels]`.
#[derive(Debug, Clone)]
struct Dw {
    w: Vec<f32>,
    b: Vec<f32>,
}

/// A point-wise convolution followed by a depth-wise one (libfacedetection's
/// `convolutionDP`).
#[derive(Debug, Clone)]
struct Dp {
    pw: Pw,
    dw: Dw,
}

/// Channels of the four heads, stacked in this order: class, box, objectness,
/// landmarks.
const HEADS: [(&str, usize); 4] = [("cls", 1), ("bbox", 4), ("obj", 1), ("kps", 10)];
const HEAD_CHANNELS: usize = 16;

/// Channels into, between and out of the two pairs of `model1` .. `model5`.
const BLOCK_WIDTHS: [(usize, usize, usize); 5] = [
    (16, 16, 32),
    (32, 32, 64),
    (64, 64, 64),
    (64, 64, 64),
    (64, 64, 64),
];

/// Every tensor of the file with its shape.
fn expected_shapes() -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let mut dp = |prefix: String, cin: usize, cout: usize| {
        out.push((format!("{prefix}.pw.weight"), vec![cout, cin]));
        out.push((format!("{prefix}.pw.bias"), vec![cout]));
        out.push((format!("{prefix}.dw.weight"), vec![9, cout]));
        out.push((format!("{prefix}.dw.bias"), vec![cout]));
    };
    dp("backbone.model0.dp".into(), 16, 16);
    for (i, (a, b, c)) in BLOCK_WIDTHS.into_iter().enumerate() {
        dp(format!("backbone.model{}.dp1", i + 1), a, b);
        dp(format!("backbone.model{}.dp2", i + 1), b, c);
    }
    for l in 0..3 {
        dp(format!("neck.lateral.convs.{l}"), 64, 64);
    }
    for (name, k) in HEADS {
        for l in 0..3 {
            dp(format!("bbox.head.multi.level.{name}.{l}"), 64, k);
        }
    }
    out.push(("backbone.model0.pw.weight".into(), vec![16, 32]));
    out.push(("backbone.model0.pw.bias".into(), vec![16]));
    out
}

/// Checked tensors by name.
struct Tensors(HashMap<String, (Vec<usize>, Vec<f32>)>);

impl Tensors {
    fn take(&mut self, name: &str) -> Result<Vec<f32>> {
        self.0
            .remove(name)
            .map(|(_, v)| v)
            .ok_or_else(|| WeightsError::MissingTensor {
                name: name.to_owned(),
                expected: Vec::new(),
            })
    }

    fn dp(&mut self, prefix: &str, cin: usize, cout: usize) -> Result<Dp> {
        Ok(Dp {
            pw: Pw {
                w: self.take(&format!("{prefix}.pw.weight"))?,
                b: self.take(&format!("{prefix}.pw.bias"))?,
                cin,
                cout,
            },
            dw: Dw {
                w: self.take(&format!("{prefix}.dw.weight"))?,
                b: self.take(&format!("{prefix}.dw.bias"))?,
            },
        })
    }
}

/// YuNet's weights, ready to run. `Send + Sync`; buffers live in a
/// [`YuNetScratch`] per thread.
#[derive(Debug, Clone)]
pub struct YuNet {
    head: Pw,
    stem: Dp,
    /// `model1` .. `model5`, two pairs each.
    blocks: Vec<(Dp, Dp)>,
    /// Per level (stride 8, 16, 32).
    lateral: Vec<Dp>,
    /// Per level: the four heads stacked into one 64 -> 16 pair.
    heads: Vec<Dp>,
}

/// Reused buffers of [`YuNet::detect`].
#[derive(Debug, Default, Clone)]
pub struct YuNetScratch {
    a: Vec<f32>,
    b: Vec<f32>,
    t: Vec<f32>,
    levels: [Vec<f32>; 3],
    out: Vec<f32>,
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

impl Pw {
    /// `x` `[pixels, cin]` -> `y` `[pixels, cout]`.
    fn run(&self, x: &[f32], pixels: usize, y: &mut Vec<f32>) {
        grow(y, pixels * self.cout);
        let y = &mut y[..pixels * self.cout];
        for row in y.chunks_exact_mut(self.cout) {
            row.copy_from_slice(&self.b);
        }
        slice::matmul(
            y,
            Mat::row_major(&x[..pixels * self.cin], pixels, self.cin),
            Mat::transposed(&self.w, self.cin, self.cout),
            true,
            1,
        );
    }
}

impl Dw {
    /// `x` `[h, w, c]` -> `y` `[h, w, c]`, zero padding 1, optional ReLU.
    fn run(&self, x: &[f32], (h, w): (usize, usize), relu: bool, y: &mut Vec<f32>) {
        let c = self.b.len();
        grow(y, h * w * c);
        hwc::depthwise3x3(x, h, w, c, &self.w, &self.b, relu, y);
    }
}

impl Dp {
    /// Point-wise then depth-wise; `x` -> `y`, `t` the intermediate.
    fn run(
        &self,
        x: &[f32],
        hw: (usize, usize),
        relu: bool,
        t: &mut Vec<f32>,
        y: &mut Vec<f32>,
    ) -> usize {
        self.pw.run(x, hw.0 * hw.1, t);
        self.dw.run(t, hw, relu, y);
        self.pw.cout
    }
}

/// 2x2 max-pooling with stride 2 of `[h, w, c]` (even `h` and `w`).
fn max_pool(x: &[f32], (h, w): (usize, usize), c: usize, y: &mut Vec<f32>) {
    let (ho, wo) = (h / 2, w / 2);
    grow(y, ho * wo * c);
    for r in 0..ho {
        let top = &x[2 * r * w * c..][..w * c];
        let bottom = &x[(2 * r + 1) * w * c..][..w * c];
        let out = &mut y[r * wo * c..][..wo * c];
        for (col, o) in out.chunks_exact_mut(c).enumerate() {
            let p = 2 * col * c;
            for (ch, v) in o.iter_mut().enumerate() {
                *v = top[p + ch]
                    .max(top[p + c + ch])
                    .max(bottom[p + ch])
                    .max(bottom[p + c + ch]);
            }
        }
    }
}

/// `fine` `[2h, 2w, c]` += nearest-neighbour upsampling of `coarse` `[h, w, c]`.
fn add_upsampled(fine: &mut [f32], coarse: &[f32], (h, w): (usize, usize), c: usize) {
    for (r, row) in fine.chunks_exact_mut(2 * w * c).take(2 * h).enumerate() {
        let src = &coarse[(r / 2) * w * c..][..w * c];
        for (col, px) in row.chunks_exact_mut(c).enumerate() {
            for (v, s) in px.iter_mut().zip(&src[(col / 2) * c..][..c]) {
                *v += s;
            }
        }
    }
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v.clamp(-88.376_26, 88.376_26)).exp())
}

/// Greedy non-maximum suppression of faces sorted by score, descending.
fn nms(sorted: Vec<YuNetFace>, iou: f32) -> Vec<YuNetFace> {
    let mut kept: Vec<YuNetFace> = Vec::new();
    for f in sorted {
        let overlaps = kept.iter().any(|k| {
            let (a, b) = (&f.bbox, &k.bbox);
            let w = a[2].min(b[2]) - a[0].max(b[0]);
            let h = a[3].min(b[3]) - a[1].max(b[1]);
            if w <= 0.0 || h <= 0.0 {
                return false;
            }
            let inter = w * h;
            let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
            inter / (area(a) + area(b) - inter) > iou
        });
        if !overlaps {
            kept.push(f);
        }
    }
    kept
}

impl YuNet {
    /// Reads `assets/models/yunet.safetensors` (or another file in that format).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_bytes(&crate::weights::read_file(path.as_ref())?)
    }

    /// Parses weights already in memory, checking the format tag and every
    /// tensor's presence, shape and dtype, and that nothing else is in the file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let format =
            crate::weights::format_of(bytes)?.ok_or(WeightsError::MissingMetadata("format"))?;
        if format != FORMAT {
            return Err(WeightsError::BadMetadata {
                key: "format",
                reason: format!("`{format}` is not `{FORMAT}` (not YuNet weights)"),
            });
        }
        let (_, tensors) = crate::weights::read_f32_safetensors(bytes, &Device::Cpu)?;
        let expected: HashMap<String, Vec<usize>> = expected_shapes().into_iter().collect();
        if let Some(name) = tensors.keys().find(|n| !expected.contains_key(*n)) {
            return Err(WeightsError::UnexpectedTensor(name.clone()));
        }
        let mut checked = HashMap::new();
        for (name, shape) in expected {
            let Some(t) = tensors.get(&name) else {
                return Err(WeightsError::MissingTensor {
                    name,
                    expected: shape,
                });
            };
            if t.dims() != shape.as_slice() {
                return Err(WeightsError::ShapeMismatch {
                    name,
                    expected: shape,
                    found: t.dims().to_vec(),
                });
            }
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            checked.insert(name, (shape, values));
        }
        Self::from_tensors(Tensors(checked))
    }

    fn from_tensors(mut t: Tensors) -> Result<Self> {
        let head = Pw {
            w: t.take("backbone.model0.pw.weight")?,
            b: t.take("backbone.model0.pw.bias")?,
            cin: 32,
            cout: 16,
        };
        let stem = t.dp("backbone.model0.dp", 16, 16)?;
        let mut blocks = Vec::new();
        for (i, (a, b, c)) in BLOCK_WIDTHS.into_iter().enumerate() {
            blocks.push((
                t.dp(&format!("backbone.model{}.dp1", i + 1), a, b)?,
                t.dp(&format!("backbone.model{}.dp2", i + 1), b, c)?,
            ));
        }
        let mut lateral = Vec::new();
        let mut heads = Vec::new();
        for l in 0..3 {
            lateral.push(t.dp(&format!("neck.lateral.convs.{l}"), 64, 64)?);
            // Stack the four heads: point-wise rows one after the other,
            // depth-wise columns side by side.
            let mut pw = Pw {
                w: Vec::new(),
                b: Vec::new(),
                cin: 64,
                cout: HEAD_CHANNELS,
            };
            let mut dw_w = vec![0f32; 9 * HEAD_CHANNELS];
            let mut dw_b = Vec::new();
            let mut at = 0;
            for (name, k) in HEADS {
                let d = t.dp(&format!("bbox.head.multi.level.{name}.{l}"), 64, k)?;
                pw.w.extend(&d.pw.w);
                pw.b.extend(&d.pw.b);
                for tap in 0..9 {
                    dw_w[tap * HEAD_CHANNELS + at..][..k].copy_from_slice(&d.dw.w[tap * k..][..k]);
                }
                dw_b.extend(&d.dw.b);
                at += k;
            }
            heads.push(Dp {
                pw,
                dw: Dw { w: dw_w, b: dw_b },
            });
        }
        Ok(Self {
            head,
            stem,
            blocks,
            lateral,
            heads,
        })
    }

    /// A network with every weight zero (it finds no face): for tests and
    /// benchmarks that need the right shapes, never for predictions.
    pub fn zeroed() -> Result<Self> {
        let tensors = expected_shapes()
            .into_iter()
            .map(|(n, s)| {
                let len = s.iter().product();
                (n, (s, vec![0f32; len]))
            })
            .collect();
        Self::from_tensors(Tensors(tensors))
    }

    /// The size the network actually runs at for an `h x w` input: both
    /// sides rounded up to a multiple of [`PAD`] (the padding is zeros).
    pub fn padded_size(h: usize, w: usize) -> (usize, usize) {
        (h.div_ceil(PAD) * PAD, w.div_ceil(PAD) * PAD)
    }

    /// Faces in `image`, an `h x w` channel-last BGR image with values in
    /// 0..=255 (`image[(y * w + x) * 3 + c]`, `c` 0 blue, 1 green, 2 red),
    /// whose score is at least `threshold`, after greedy non-maximum
    /// suppression at IoU `nms_iou` (libfacedetection: 0.2 and 0.45), best
    /// first; at most 1000 candidates enter the suppression.
    ///
    /// # Panics
    /// If `image` is shorter than `h * w * 3`.
    pub fn detect(
        &self,
        image: &[f32],
        (h, w): (usize, usize),
        threshold: f32,
        nms_iou: f32,
        s: &mut YuNetScratch,
    ) -> Vec<YuNetFace> {
        assert!(image.len() >= h * w * 3, "image shorter than h * w * 3");
        if h == 0 || w == 0 {
            return Vec::new();
        }
        let (hp, wp) = Self::padded_size(h, w);
        let (mut rows, mut cols) = (hp / 2, wp / 2);
        // The head's 3x3 stride-2 patches, 27 values (then 5 zeros) per
        // output position, as setDataFrom3x3S2P1to1x1S1P0FromImage.
        grow(&mut s.a, rows * cols * 32);
        let patches = &mut s.a[..rows * cols * 32];
        patches.fill(0.0);
        for r in 0..rows {
            for c in 0..cols {
                let p = &mut patches[(r * cols + c) * 32..][..27];
                for fy in 0..3 {
                    let Some(sy) = (2 * r + fy).checked_sub(1).filter(|&y| y < h) else {
                        continue;
                    };
                    for fx in 0..3 {
                        let Some(sx) = (2 * c + fx).checked_sub(1).filter(|&x| x < w) else {
                            continue;
                        };
                        p[(fy * 3 + fx) * 3..][..3]
                            .copy_from_slice(&image[(sy * w + sx) * 3..][..3]);
                    }
                }
            }
        }
        let (a, b, t) = (&mut s.a, &mut s.b, &mut s.t);
        self.head.run(a, rows * cols, b);
        for v in &mut b[..rows * cols * 16] {
            *v = v.max(0.0);
        }
        let mut ch = self.stem.run(b, (rows, cols), true, t, a);
        max_pool(a, (rows, cols), ch, b);
        (rows, cols) = (rows / 2, cols / 2);
        // b holds the current map from here on; models 3, 4 and 5 each start
        // with a pooling and give the maps of strides 8, 16 and 32.
        for (i, (p1, p2)) in self.blocks.iter().enumerate() {
            if i >= 2 {
                max_pool(b, (rows, cols), ch, a);
                std::mem::swap(a, b);
                (rows, cols) = (rows / 2, cols / 2);
            }
            p1.run(b, (rows, cols), true, t, a);
            ch = p2.run(a, (rows, cols), true, t, b);
            if i >= 2 {
                let level = &mut s.levels[i - 2];
                grow(level, rows * cols * ch);
                level[..rows * cols * ch].copy_from_slice(&b[..rows * cols * ch]);
            }
        }
        // `rows x cols` is now stride 32's map. Top-down: each level gets the
        // upsampled level above (already through its lateral convolution).
        let mut faces = Vec::new();
        for l in (0..3).rev() {
            let (lr, lc) = (hp / STRIDES[l], wp / STRIDES[l]);
            if l < 2 {
                let (above, here) = s.levels.split_at_mut(l + 1);
                add_upsampled(&mut above[l], &here[0], (lr / 2, lc / 2), 64);
            }
            self.lateral[l].run(&s.levels[l], (lr, lc), true, &mut s.t, &mut s.a);
            let n = lr * lc * 64;
            s.levels[l][..n].copy_from_slice(&s.a[..n]);
            self.heads[l].run(&s.levels[l], (lr, lc), false, &mut s.t, &mut s.out);
            decode(&s.out, (lr, lc), STRIDES[l], threshold, &mut faces);
        }
        faces.sort_by(|a: &YuNetFace, b| b.score.total_cmp(&a.score));
        faces.truncate(1000);
        nms(faces, nms_iou)
    }
}

/// Candidates of one level's stacked head output `[rows, cols, 16]`.
fn decode(
    out: &[f32],
    (rows, cols): (usize, usize),
    stride: usize,
    threshold: f32,
    faces: &mut Vec<YuNetFace>,
) {
    let s = stride as f32;
    for r in 0..rows {
        for c in 0..cols {
            let v = &out[(r * cols + c) * HEAD_CHANNELS..][..HEAD_CHANNELS];
            let score = (sigmoid(v[0]) * sigmoid(v[5])).sqrt();
            if score.is_nan() || score < threshold {
                continue;
            }
            let (px, py) = (c as f32 * s, r as f32 * s);
            let (cx, cy) = (v[1] * s + px, v[2] * s + py);
            let (bw, bh) = (v[3].exp() * s, v[4].exp() * s);
            let mut landmarks = [[0f32; 2]; 5];
            for (n, p) in landmarks.iter_mut().enumerate() {
                *p = [v[6 + 2 * n] * s + px, v[7 + 2 * n] * s + py];
            }
            faces.push(YuNetFace {
                score,
                bbox: [cx - bw / 2.0, cy - bh / 2.0, cx + bw / 2.0, cy + bh / 2.0],
                landmarks,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_network_finds_nothing_and_odd_sizes_are_fine() {
        let net = YuNet::zeroed().unwrap();
        let mut s = YuNetScratch::default();
        for (h, w) in [(1, 1), (33, 65), (48, 64)] {
            let img = vec![128f32; h * w * 3];
            // All-zero weights: score sqrt(0.5 * 0.5) = 0.5 everywhere.
            assert!(net.detect(&img, (h, w), 0.6, 0.45, &mut s).is_empty());
        }
        assert!(net.detect(&[], (0, 0), 0.2, 0.45, &mut s).is_empty());
    }
}

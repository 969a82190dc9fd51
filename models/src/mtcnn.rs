//! MTCNN's three networks (Zhang et al. 2016, "Joint Face Detection and Alignment
//! using Multi-task Cascaded Convolutional Networks"), layer for layer as
//! facenet-pytorch 2.6.0 defines them, so its published weights load unchanged
//! (`assets/models/mtcnn.safetensors`, converted by `tools/mtcnn_convert.py`).
//!
//! | net | input | outputs |
//! | --- | --- | --- |
//! | [`PNet`] | `(N, 3, H, W)`, any size >= 12 | box regression `(N, 4, H', W')`, face probability `(N, 2, H', W')` |
//! | [`RNet`] | `(N, 3, 24, 24)` | regression `(N, 4)`, probability `(N, 2)` |
//! | [`ONet`] | `(N, 3, 48, 48)` | regression `(N, 4)`, landmarks `(N, 10)`, probability `(N, 2)` |
//!
//! Inputs are RGB, `(x - 127.5) / 128`. The detection algorithm around the nets
//! (pyramid, box decoding, NMS) lives in the `perception` crate.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use models::mtcnn::Mtcnn;
//!
//! let nets = Mtcnn::new_zeroed(&Device::Cpu)?;
//! let (reg, prob) = nets.pnet.forward(&Tensor::zeros((1, 3, 12, 12), DType::F32, &Device::Cpu)?)?;
//! assert_eq!(reg.dims(), &[1, 4, 1, 1]);
//! assert_eq!(prob.dims(), &[1, 2, 1, 1]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor, bail};

use crate::WeightsError;

/// The value of the `format` metadata key of MTCNN weight files.
pub const FORMAT: &str = "mtcnn/1";

type Result<T> = std::result::Result<T, WeightsError>;

/// Every tensor of the three networks with its shape, in facenet-pytorch's naming
/// prefixed by the network (`pnet.conv1.weight`).
pub fn expected_shapes() -> BTreeMap<String, Vec<usize>> {
    let mut m = BTreeMap::new();
    let mut conv = |net: &str, name: &str, o: usize, c: usize, k: usize| {
        m.insert(format!("{net}.{name}.weight"), vec![o, c, k, k]);
        m.insert(format!("{net}.{name}.bias"), vec![o]);
    };
    conv("pnet", "conv1", 10, 3, 3);
    conv("pnet", "conv2", 16, 10, 3);
    conv("pnet", "conv3", 32, 16, 3);
    conv("pnet", "conv4_1", 2, 32, 1);
    conv("pnet", "conv4_2", 4, 32, 1);
    conv("rnet", "conv1", 28, 3, 3);
    conv("rnet", "conv2", 48, 28, 3);
    conv("rnet", "conv3", 64, 48, 2);
    conv("onet", "conv1", 32, 3, 3);
    conv("onet", "conv2", 64, 32, 3);
    conv("onet", "conv3", 64, 64, 3);
    conv("onet", "conv4", 128, 64, 2);
    let mut dense = |net: &str, name: &str, o: usize, i: usize| {
        m.insert(format!("{net}.{name}.weight"), vec![o, i]);
        m.insert(format!("{net}.{name}.bias"), vec![o]);
    };
    dense("rnet", "dense4", 128, 576);
    dense("rnet", "dense5_1", 2, 128);
    dense("rnet", "dense5_2", 4, 128);
    dense("onet", "dense5", 256, 1152);
    dense("onet", "dense6_1", 2, 256);
    dense("onet", "dense6_2", 4, 256);
    dense("onet", "dense6_3", 10, 256);
    for (net, name, c) in [
        ("pnet", "prelu1", 10),
        ("pnet", "prelu2", 16),
        ("pnet", "prelu3", 32),
        ("rnet", "prelu1", 28),
        ("rnet", "prelu2", 48),
        ("rnet", "prelu3", 64),
        ("rnet", "prelu4", 128),
        ("onet", "prelu1", 32),
        ("onet", "prelu2", 64),
        ("onet", "prelu3", 64),
        ("onet", "prelu4", 128),
        ("onet", "prelu5", 256),
    ] {
        m.insert(format!("{net}.{name}.weight"), vec![c]);
    }
    m
}

/// Checked access to a file's tensors.
struct Tensors {
    tensors: HashMap<String, Tensor>,
    expected: BTreeMap<String, Vec<usize>>,
}

impl Tensors {
    fn new(tensors: HashMap<String, Tensor>) -> Self {
        Self {
            tensors,
            expected: expected_shapes(),
        }
    }

    fn get(&self, name: &str) -> Result<Tensor> {
        let shape = self.expected.get(name).map_or(&[][..], Vec::as_slice);
        Ok(crate::weights::checked_tensor(&self.tensors, name, shape)?.clone())
    }
}

/// A convolution with bias, stride 1, no padding.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    pub(crate) w: Tensor,
    pub(crate) b: Tensor,
}

impl Conv {
    fn load(t: &Tensors, prefix: &str) -> Result<Self> {
        Ok(Self {
            w: t.get(&format!("{prefix}.weight"))?,
            b: t.get(&format!("{prefix}.bias"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        kernels::conv2d_bias(x, &self.w, &self.b, 1, 0)
    }
}

/// A fully connected layer `y = x W^T + b`.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) wt: Tensor,
    pub(crate) b: Tensor,
}

impl Linear {
    fn load(t: &Tensors, prefix: &str) -> Result<Self> {
        Ok(Self {
            wt: t.get(&format!("{prefix}.weight"))?.t()?.contiguous()?,
            b: t.get(&format!("{prefix}.bias"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.wt)?.broadcast_add(&self.b)
    }
}

/// Parametric ReLU with one slope per channel (dimension 1).
#[derive(Debug, Clone)]
pub(crate) struct PRelu {
    pub(crate) a: Tensor,
}

impl PRelu {
    fn load(t: &Tensors, prefix: &str) -> Result<Self> {
        Ok(Self {
            a: t.get(&format!("{prefix}.weight"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        prelu(x, &self.a)
    }
}

/// `max(x, 0) + a_c * min(x, 0)` with `a` holding one slope per channel (dim 1).
pub fn prelu(x: &Tensor, a: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 && a.dtype() == DType::F32 {
        return x.contiguous()?.apply_op2_no_bwd(&a.contiguous()?, &PReluOp);
    }
    let mut shape = vec![1; x.rank()];
    shape[1] = a.elem_count();
    let zeros = x.zeros_like()?;
    x.maximum(&zeros)? + x.minimum(&zeros)?.broadcast_mul(&a.reshape(shape)?)?
}

struct PReluOp;

impl CustomOp2 for PReluOp {
    fn name(&self) -> &'static str {
        "mtcnn-prelu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Some((x0, x1)), Some((a0, a1))) = (xl.contiguous_offsets(), al.contiguous_offsets())
        else {
            bail!("prelu expects contiguous tensors");
        };
        let x = &xs.as_slice::<f32>()?[x0..x1];
        let a = &as_.as_slice::<f32>()?[a0..a1];
        let dims = xl.dims();
        if dims.len() < 2 || dims[1] != a.len() {
            bail!("prelu: input {dims:?} has not {} channels", a.len());
        }
        let inner: usize = dims[2..].iter().product();
        let mut y = Vec::with_capacity(x.len());
        for (chunk_index, chunk) in x.chunks(inner.max(1)).enumerate() {
            let start = y.len();
            y.extend_from_slice(chunk);
            prelu_in_place(&mut y[start..], a[chunk_index % a.len()]);
        }
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }
}

/// PyTorch's `MaxPool2d(k, stride, ceil_mode=True)`: windows that run past the
/// bottom or right edge are clipped rather than dropped.
pub fn max_pool_ceil(x: &Tensor, k: usize, stride: usize) -> candle_core::Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if k == 0 || stride == 0 || stride > k {
        bail!("max_pool_ceil: kernel {k} and stride {stride} must satisfy 0 < stride <= kernel");
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        return x
            .contiguous()?
            .apply_op1_no_bwd(&MaxPoolCeilOp { k, stride });
    }
    let out = |len: usize| pooled_len(len, k, stride);
    // Padding with copies of the last row / column never changes a window's
    // maximum: the copied value is inside the clipped window already.
    let need_h = (out(h) - 1) * stride + k;
    let need_w = (out(w) - 1) * stride + k;
    let x = x.pad_with_same(2, 0, need_h.saturating_sub(h))?;
    let x = x.pad_with_same(3, 0, need_w.saturating_sub(w))?;
    x.max_pool2d_with_stride(k, stride)
}

/// PReLU of `values` with one `slope`, in place: `max(v, 0) + slope *
/// min(v, 0)`, written without a branch so that it vectorises.
pub(crate) fn prelu_in_place(values: &mut [f32], slope: f32) {
    for v in values {
        *v = v.max(0.0) + slope * v.min(0.0);
    }
}

/// Output length of a ceil-mode pooling window sweep (PyTorch, no padding).
pub(crate) fn pooled_len(len: usize, k: usize, stride: usize) -> usize {
    if len < k {
        1
    } else {
        (len - k).div_ceil(stride) + 1
    }
}

/// [`max_pool_ceil`] on `planes` compact `(h, w)` planes of `x` into `y`
/// (`planes` planes of the pooled size); `hmax` is scratch, grown as needed.
/// Returns the pooled `(oh, ow)`.
pub(crate) fn pool_planes(
    x: &[f32],
    planes: usize,
    (h, w): (usize, usize),
    (k, st): (usize, usize),
    y: &mut [f32],
    hmax: &mut Vec<f32>,
) -> (usize, usize) {
    let (oh, ow) = (pooled_len(h, k, st), pooled_len(w, k, st));
    if hmax.len() < h * ow {
        hmax.resize(h * ow, 0.0);
    }
    let hmax = &mut hmax[..h * ow];
    // Separable: the maximum over each window's columns, row by row, then
    // over its rows.
    for (plane, dst) in x
        .chunks_exact(h * w)
        .zip(y.chunks_exact_mut(oh * ow))
        .take(planes)
    {
        for (src, out) in plane.chunks_exact(w).zip(hmax.chunks_exact_mut(ow)) {
            if k == 2 && st == 2 {
                let pairs = src.chunks_exact(2);
                let rest = pairs.remainder();
                for (o, p) in out.iter_mut().zip(pairs) {
                    *o = p[0].max(p[1]);
                }
                if let Some(&last) = rest.first() {
                    out[ow - 1] = last;
                }
            } else if k == 3 && st == 2 {
                // Whole windows first (no clipping, no slicing per window),
                // then the clipped last one if there is one.
                let whole = if w >= 3 { (w - 3) / 2 + 1 } else { 0 };
                for (j, o) in out[..whole].iter_mut().enumerate() {
                    *o = src[2 * j].max(src[2 * j + 1]).max(src[2 * j + 2]);
                }
                for (j, o) in out.iter_mut().enumerate().skip(whole) {
                    *o = src[2 * j..w]
                        .iter()
                        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                }
            } else {
                for (j, o) in out.iter_mut().enumerate() {
                    let a = j * st;
                    *o = src[a..(a + k).min(w)]
                        .iter()
                        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                }
            }
        }
        for (i, out) in dst.chunks_exact_mut(ow).enumerate() {
            let a = i * st;
            out.copy_from_slice(&hmax[a * ow..][..ow]);
            for r in a + 1..(a + k).min(h) {
                for (o, &v) in out.iter_mut().zip(&hmax[r * ow..][..ow]) {
                    *o = o.max(v);
                }
            }
        }
    }
    (oh, ow)
}

struct MaxPoolCeilOp {
    k: usize,
    stride: usize,
}

impl candle_core::CustomOp1 for MaxPoolCeilOp {
    fn name(&self) -> &'static str {
        "mtcnn-max-pool-ceil"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Some((a, b)) = l.contiguous_offsets() else {
            bail!("max_pool_ceil expects a contiguous tensor");
        };
        let x = &s.as_slice::<f32>()?[a..b];
        let &[n, c, h, w] = l.dims() else {
            bail!("max_pool_ceil expects a 4-D tensor, got {:?}", l.dims());
        };
        let (k, st) = (self.k, self.stride);
        let (oh, ow) = (pooled_len(h, k, st), pooled_len(w, k, st));
        let mut y = vec![0f32; n * c * oh * ow];
        pool_planes(x, n * c, (h, w), (k, st), &mut y, &mut Vec::new());
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }
}

/// `(N, C, H, W) -> (N, W*H*C)` in facenet-pytorch's order (it permutes to
/// `(N, W, H, C)` before flattening, a leftover of the Caffe port).
fn flatten_whc(x: &Tensor) -> candle_core::Result<Tensor> {
    x.permute((0, 3, 2, 1))?.flatten_from(1)?.contiguous()
}

/// The proposal network: a fully convolutional 12x12 face / box classifier.
#[derive(Debug, Clone)]
pub struct PNet {
    pub(crate) conv1: Conv,
    pub(crate) prelu1: PRelu,
    pub(crate) conv2: Conv,
    pub(crate) prelu2: PRelu,
    pub(crate) conv3: Conv,
    pub(crate) prelu3: PRelu,
    pub(crate) conv4_1: Conv,
    pub(crate) conv4_2: Conv,
}

impl PNet {
    fn load(t: &Tensors) -> Result<Self> {
        Ok(Self {
            conv1: Conv::load(t, "pnet.conv1")?,
            prelu1: PRelu::load(t, "pnet.prelu1")?,
            conv2: Conv::load(t, "pnet.conv2")?,
            prelu2: PRelu::load(t, "pnet.prelu2")?,
            conv3: Conv::load(t, "pnet.conv3")?,
            prelu3: PRelu::load(t, "pnet.prelu3")?,
            conv4_1: Conv::load(t, "pnet.conv4_1")?,
            conv4_2: Conv::load(t, "pnet.conv4_2")?,
        })
    }

    /// `(N, 3, H, W)` -> (box regression `(N, 4, H', W')`, softmax probabilities
    /// `(N, 2, H', W')`), `H' = ceil((H - 2) / 2) - 4`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let x = self.prelu1.forward(&self.conv1.forward(x)?)?;
        let x = max_pool_ceil(&x, 2, 2)?;
        let x = self.prelu2.forward(&self.conv2.forward(&x)?)?;
        let x = self.prelu3.forward(&self.conv3.forward(&x)?)?;
        let prob = candle_nn::ops::softmax(&self.conv4_1.forward(&x)?, 1)?;
        let reg = self.conv4_2.forward(&x)?;
        Ok((reg, prob))
    }
}

/// The refinement network: 24x24 candidates -> face probability and box correction.
#[derive(Debug, Clone)]
pub struct RNet {
    pub(crate) conv1: Conv,
    pub(crate) prelu1: PRelu,
    pub(crate) conv2: Conv,
    pub(crate) prelu2: PRelu,
    pub(crate) conv3: Conv,
    pub(crate) prelu3: PRelu,
    pub(crate) dense4: Linear,
    pub(crate) prelu4: PRelu,
    pub(crate) dense5_1: Linear,
    pub(crate) dense5_2: Linear,
}

impl RNet {
    fn load(t: &Tensors) -> Result<Self> {
        Ok(Self {
            conv1: Conv::load(t, "rnet.conv1")?,
            prelu1: PRelu::load(t, "rnet.prelu1")?,
            conv2: Conv::load(t, "rnet.conv2")?,
            prelu2: PRelu::load(t, "rnet.prelu2")?,
            conv3: Conv::load(t, "rnet.conv3")?,
            prelu3: PRelu::load(t, "rnet.prelu3")?,
            dense4: Linear::load(t, "rnet.dense4")?,
            prelu4: PRelu::load(t, "rnet.prelu4")?,
            dense5_1: Linear::load(t, "rnet.dense5_1")?,
            dense5_2: Linear::load(t, "rnet.dense5_2")?,
        })
    }

    /// `(N, 3, 24, 24)` -> (box regression `(N, 4)`, probabilities `(N, 2)`).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let x = self.prelu1.forward(&self.conv1.forward(x)?)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.prelu2.forward(&self.conv2.forward(&x)?)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.prelu3.forward(&self.conv3.forward(&x)?)?;
        let x = self
            .prelu4
            .forward(&self.dense4.forward(&flatten_whc(&x)?)?)?;
        let prob = candle_nn::ops::softmax(&self.dense5_1.forward(&x)?, 1)?;
        let reg = self.dense5_2.forward(&x)?;
        Ok((reg, prob))
    }
}

/// The output network: 48x48 candidates -> probability, box correction and five
/// landmarks (left eye, right eye, nose, left and right mouth corner; x in
/// columns 0..5, y in 5..10, relative to the box).
#[derive(Debug, Clone)]
pub struct ONet {
    pub(crate) conv1: Conv,
    pub(crate) prelu1: PRelu,
    pub(crate) conv2: Conv,
    pub(crate) prelu2: PRelu,
    pub(crate) conv3: Conv,
    pub(crate) prelu3: PRelu,
    pub(crate) conv4: Conv,
    pub(crate) prelu4: PRelu,
    pub(crate) dense5: Linear,
    pub(crate) prelu5: PRelu,
    pub(crate) dense6_1: Linear,
    pub(crate) dense6_2: Linear,
    pub(crate) dense6_3: Linear,
}

impl ONet {
    fn load(t: &Tensors) -> Result<Self> {
        Ok(Self {
            conv1: Conv::load(t, "onet.conv1")?,
            prelu1: PRelu::load(t, "onet.prelu1")?,
            conv2: Conv::load(t, "onet.conv2")?,
            prelu2: PRelu::load(t, "onet.prelu2")?,
            conv3: Conv::load(t, "onet.conv3")?,
            prelu3: PRelu::load(t, "onet.prelu3")?,
            conv4: Conv::load(t, "onet.conv4")?,
            prelu4: PRelu::load(t, "onet.prelu4")?,
            dense5: Linear::load(t, "onet.dense5")?,
            prelu5: PRelu::load(t, "onet.prelu5")?,
            dense6_1: Linear::load(t, "onet.dense6_1")?,
            dense6_2: Linear::load(t, "onet.dense6_2")?,
            dense6_3: Linear::load(t, "onet.dense6_3")?,
        })
    }

    /// `(N, 3, 48, 48)` -> (box regression `(N, 4)`, landmarks `(N, 10)`,
    /// probabilities `(N, 2)`).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let x = self.prelu1.forward(&self.conv1.forward(x)?)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.prelu2.forward(&self.conv2.forward(&x)?)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = self.prelu3.forward(&self.conv3.forward(&x)?)?;
        let x = max_pool_ceil(&x, 2, 2)?;
        let x = self.prelu4.forward(&self.conv4.forward(&x)?)?;
        let x = self
            .prelu5
            .forward(&self.dense5.forward(&flatten_whc(&x)?)?)?;
        let prob = candle_nn::ops::softmax(&self.dense6_1.forward(&x)?, 1)?;
        let reg = self.dense6_2.forward(&x)?;
        let landmarks = self.dense6_3.forward(&x)?;
        Ok((reg, landmarks, prob))
    }
}

/// The three networks, loaded from one weights file.
#[derive(Debug, Clone)]
pub struct Mtcnn {
    /// Proposal network.
    pub pnet: PNet,
    /// Refinement network.
    pub rnet: RNet,
    /// Output network.
    pub onet: ONet,
}

impl Mtcnn {
    /// Reads `assets/models/mtcnn.safetensors` (or another file in that format).
    pub fn from_file(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::from_bytes(&crate::weights::read_file(path.as_ref())?, device)
    }

    /// Parses weights already in memory, checking the format tag, every tensor's
    /// presence, shape and dtype, and that nothing else is in the file.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let format =
            crate::weights::format_of(bytes)?.ok_or(WeightsError::MissingMetadata("format"))?;
        if format != FORMAT {
            return Err(WeightsError::BadMetadata {
                key: "format",
                reason: format!("`{format}` is not `{FORMAT}` (not MTCNN weights)"),
            });
        }
        let (_, tensors) = crate::weights::read_f32_safetensors(bytes, device)?;
        let t = Tensors::new(tensors);
        if let Some(name) = t.tensors.keys().find(|n| !t.expected.contains_key(*n)) {
            return Err(WeightsError::UnexpectedTensor(name.clone()));
        }
        Self::from_tensors(t)
    }

    fn from_tensors(t: Tensors) -> Result<Self> {
        Ok(Self {
            pnet: PNet::load(&t)?,
            rnet: RNet::load(&t)?,
            onet: ONet::load(&t)?,
        })
    }

    /// Networks with every weight zero (for tests and examples that need no
    /// detections).
    pub fn new_zeroed(device: &Device) -> Result<Self> {
        let tensors = expected_shapes()
            .into_iter()
            .map(|(n, s)| Ok((n, Tensor::zeros(s, DType::F32, device)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        Self::from_tensors(Tensors::new(tensors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731).sin() * scale).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn prelu_matches_the_composed_formula() {
        let x = ramp(&[2, 3, 4, 5], 2.0);
        let a = Tensor::new(&[0.1f32, -0.5, 0.25], &Device::Cpu).unwrap();
        let fast = prelu(&x, &a).unwrap();
        let zeros = x.zeros_like().unwrap();
        let slow = (x.maximum(&zeros).unwrap()
            + x.minimum(&zeros)
                .unwrap()
                .broadcast_mul(&a.reshape((1, 3, 1, 1)).unwrap())
                .unwrap())
        .unwrap();
        let d = (fast - slow)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-7);
        // Two-dimensional inputs (dense layers) take one slope per column.
        let x2 = ramp(&[4, 3], 1.0);
        let y2 = prelu(&x2, &a).unwrap().to_vec2::<f32>().unwrap();
        let v2 = x2.to_vec2::<f32>().unwrap();
        for (r, row) in v2.iter().enumerate() {
            for c in 0..3 {
                let slope = [0.1, -0.5, 0.25][c];
                let want = if row[c] > 0.0 { row[c] } else { row[c] * slope };
                assert_eq!(y2[r][c], want);
            }
        }
    }

    #[test]
    fn ceil_mode_pool_keeps_clipped_windows() {
        // 5x5 input, kernel 3, stride 2: PyTorch's ceil mode gives 2x2
        // (windows at 0 and 2); a 6x6 input gives 3x3, the last window clipped.
        let x = Tensor::arange(0f32, 36., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 6, 6))
            .unwrap();
        let y = max_pool_ceil(&x, 3, 2).unwrap();
        assert_eq!(y.dims(), &[1, 1, 3, 3]);
        let v = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v, vec![14., 16., 17., 26., 28., 29., 32., 34., 35.]);
        let x5 = x.narrow(2, 0, 5).unwrap().narrow(3, 0, 5).unwrap();
        assert_eq!(max_pool_ceil(&x5, 3, 2).unwrap().dims(), &[1, 1, 2, 2]);
        // Kernel 2, stride 2 on an odd size: the last column is its own window.
        let x3 = Tensor::arange(0f32, 15., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 3, 5))
            .unwrap();
        let y3 = max_pool_ceil(&x3, 2, 2).unwrap();
        assert_eq!(
            y3.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![6., 8., 9., 11., 13., 14.]
        );
    }

    #[test]
    fn ceil_pool_fast_path_matches_the_padded_stock_pool() {
        for (h, w, k, st) in [
            (7, 9, 3, 2),
            (6, 6, 2, 2),
            (5, 11, 3, 2),
            (1, 4, 2, 2),
            (12, 13, 3, 2),
        ] {
            let x = ramp(&[2, 3, h, w], 3.0);
            let fast = max_pool_ceil(&x, k, st).unwrap();
            let need = |len: usize| (pooled_len(len, k, st) - 1) * st + k;
            let stock = x
                .pad_with_same(2, 0, need(h).saturating_sub(h))
                .unwrap()
                .pad_with_same(3, 0, need(w).saturating_sub(w))
                .unwrap()
                .max_pool2d_with_stride(k, st)
                .unwrap();
            assert_eq!(fast.dims(), stock.dims());
            let d = (fast - stock).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
        }
    }

    #[test]
    fn output_shapes() {
        let nets = Mtcnn::new_zeroed(&Device::Cpu).unwrap();
        let (reg, prob) = nets.pnet.forward(&ramp(&[1, 3, 23, 31], 1.0)).unwrap();
        assert_eq!(reg.dims(), &[1, 4, 7, 11]);
        assert_eq!(prob.dims(), &[1, 2, 7, 11]);
        let (reg, prob) = nets.rnet.forward(&ramp(&[2, 3, 24, 24], 1.0)).unwrap();
        assert_eq!((reg.dims(), prob.dims()), (&[2, 4][..], &[2, 2][..]));
        let (reg, lm, prob) = nets.onet.forward(&ramp(&[2, 3, 48, 48], 1.0)).unwrap();
        assert_eq!(
            (reg.dims(), lm.dims(), prob.dims()),
            (&[2, 4][..], &[2, 10][..], &[2, 2][..])
        );
    }

    #[test]
    fn bad_files_are_errors() {
        assert!(matches!(
            Mtcnn::from_bytes(b"not safetensors", &Device::Cpu),
            Err(WeightsError::Corrupt(_))
        ));
        // A valid safetensors file with another format tag.
        let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let meta: HashMap<String, String> = [("format".to_owned(), "emotion-cnn/1".to_owned())]
            .into_iter()
            .collect();
        let bytes = safetensors::serialize([("x", &t)], Some(meta)).unwrap();
        assert!(matches!(
            Mtcnn::from_bytes(&bytes, &Device::Cpu),
            Err(WeightsError::BadMetadata { key: "format", .. })
        ));
        // The right tag but a missing tensor.
        let meta: HashMap<String, String> = [("format".to_owned(), FORMAT.to_owned())]
            .into_iter()
            .collect();
        let w = Tensor::zeros((10, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
        let bytes = safetensors::serialize([("pnet.conv1.weight", &w)], Some(meta)).unwrap();
        let err = Mtcnn::from_bytes(&bytes, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("pnet.conv1.bias"), "{err}");
    }
}

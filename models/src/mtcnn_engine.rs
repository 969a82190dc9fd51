//! MTCNN's three networks on plain slices: the same layers as
//! [`crate::mtcnn`] (whose candle graphs stay the reference), as im2col +
//! GEMM with the bias in the GEMM's accumulator and PReLU in place, the
//! output heads stacked into one product, and every buffer in a
//! [`MtcnnScratch`] reused across calls, pyramid levels and frames.
//!
//! The 3x3 layers whose channel counts are whole blocks of 16 (P-Net's
//! third, O-Net's second and third: most of their multiplies) run as
//! Winograd F(2x2, 3x3) ([`kernels::winograd`]) on the whole plane, keeping
//! the interior: an unpadded convolution is the interior of the padded one.
//! The direct 3x3 kernels of [`kernels::direct`] were tried for the other
//! layers and lost to im2col + GEMM: few input channels (3, 10, 28) and
//! output counts that are not whole kernel blocks. `examples/mtcnn_ab.rs`
//! times the engine against the graphs.
//!
//! Outputs equal the candle graphs' to 1e-4 (tested below and in
//! `perception`'s detector tests).

use kernels::slice::{self, ConvGeom, Mat};
use kernels::winograd::{self, Winograd};

use crate::WeightsError;
use crate::mtcnn::{Mtcnn, pool_planes, pooled_len, prelu_in_place};

type Result<T> = std::result::Result<T, WeightsError>;

fn values(t: &candle_core::Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// An unpadded, stride-1 convolution with bias and an optional PReLU.
#[derive(Debug, Clone)]
struct Conv {
    /// `(o, c * k * k)` row-major, for im2col + GEMM.
    w: Vec<f32>,
    /// 3x3 layers whose channel counts are whole Winograd blocks: the
    /// weights in Winograd's domain (see [`Conv::run`]).
    wino: Option<Winograd>,
    b: Vec<f32>,
    /// PReLU slopes, one per output channel.
    alpha: Option<Vec<f32>>,
    o: usize,
    c: usize,
    k: usize,
}

impl Conv {
    fn new(conv: &crate::mtcnn::Conv, prelu: Option<&crate::mtcnn::PRelu>) -> Result<Self> {
        let (o, c, k, _) = conv.w.dims4()?;
        let w = values(&conv.w)?;
        let wino = if k == 3 {
            Winograd::new(&w, o, c)
        } else {
            None
        };
        Ok(Self {
            wino,
            w,
            b: values(&conv.b)?,
            alpha: prelu.map(|p| values(&p.a)).transpose()?,
            o,
            c,
            k,
        })
    }

    /// `x` `(c, h, w)` -> `y` `(o, h - k + 1, w - k + 1)`; returns the output size.
    fn run(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        s: &mut Buffers,
        y: &mut Vec<f32>,
    ) -> (usize, usize) {
        let (ho, wo) = (h + 1 - self.k, w + 1 - self.k);
        grow(y, self.o * ho * wo);
        let g = ConvGeom {
            c: self.c,
            h,
            w,
            k: self.k,
            stride: 1,
            pad: 0,
        };
        let hw = ho * wo;
        if let Some(u) = &self.wino {
            // The unpadded output is the interior of the zero-padded one:
            // Winograd F(2x2, 3x3) on the whole plane, then its inner rows
            // and columns (2.25x fewer multiplies than the direct form, for
            // (h * w) / (ho * wo) more outputs).
            grow(&mut s.col, self.o * h * w);
            let same = &mut s.col[..self.o * h * w];
            let tiles = winograd::Tiles { h, w };
            winograd::conv_planes(x, u, Some(&self.b), false, tiles, &mut s.wino, same);
            let y = &mut y[..self.o * hw];
            for (plane, out) in same.chunks_exact(h * w).zip(y.chunks_exact_mut(hw)) {
                for (row, dst) in plane.chunks_exact(w).skip(1).zip(out.chunks_exact_mut(wo)) {
                    dst.copy_from_slice(&row[1..=wo]);
                }
            }
            if let Some(alpha) = &self.alpha {
                for (row, &a) in y.chunks_exact_mut(hw).zip(alpha) {
                    prelu_in_place(row, a);
                }
            }
            return (ho, wo);
        }
        let src: &[f32] = if g.is_pointwise() {
            &x[..self.c * hw]
        } else {
            grow(&mut s.col, g.col_rows() * hw);
            slice::im2col(x, &g, &mut s.col);
            &s.col[..g.col_rows() * hw]
        };
        let y = &mut y[..self.o * hw];
        for (row, &b) in y.chunks_exact_mut(hw).zip(&self.b) {
            row.fill(b);
        }
        let kk = g.col_rows();
        slice::matmul(
            y,
            Mat::row_major(&self.w, self.o, kk),
            Mat::row_major(src, kk, hw),
            true,
            1,
        );
        if let Some(alpha) = &self.alpha {
            for (row, &a) in y.chunks_exact_mut(hw).zip(alpha) {
                prelu_in_place(row, a);
            }
        }
        (ho, wo)
    }
}

/// A dense layer `y = x W^T + b` over a batch, with an optional PReLU.
#[derive(Debug, Clone)]
struct Dense {
    /// `(in, out)` row-major.
    wt: Vec<f32>,
    b: Vec<f32>,
    alpha: Option<Vec<f32>>,
    inputs: usize,
    outputs: usize,
}

impl Dense {
    fn new(l: &crate::mtcnn::Linear, prelu: Option<&crate::mtcnn::PRelu>) -> Result<Self> {
        let (inputs, outputs) = l.wt.dims2()?;
        Ok(Self {
            wt: values(&l.wt)?,
            b: values(&l.b)?,
            alpha: prelu.map(|p| values(&p.a)).transpose()?,
            inputs,
            outputs,
        })
    }

    /// `x` `(n, inputs)` -> `y` `(n, outputs)`.
    fn run(&self, x: &[f32], n: usize, y: &mut Vec<f32>) {
        grow(y, n * self.outputs);
        let y = &mut y[..n * self.outputs];
        for row in y.chunks_exact_mut(self.outputs) {
            row.copy_from_slice(&self.b);
        }
        slice::matmul(
            y,
            Mat::row_major(&x[..n * self.inputs], n, self.inputs),
            Mat::row_major(&self.wt, self.inputs, self.outputs),
            true,
            1,
        );
        if let Some(alpha) = &self.alpha {
            for row in y.chunks_exact_mut(self.outputs) {
                for (v, &a) in row.iter_mut().zip(alpha) {
                    *v = v.max(0.0) + a * v.min(0.0);
                }
            }
        }
    }
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

/// The two-class softmax's second probability (the face score), as
/// `candle_nn::ops::softmax` computes it.
fn face_probability(a: f32, b: f32) -> f32 {
    let m = a.max(b);
    let (ea, eb) = ((a - m).exp(), (b - m).exp());
    eb / (ea + eb)
}

/// `(c, h, w)` -> `(w, h, c)` flattened, facenet-pytorch's order before its
/// dense layers.
fn flatten_whc(x: &[f32], (c, h, w): (usize, usize, usize), out: &mut [f32]) {
    for ci in 0..c {
        for hi in 0..h {
            for wi in 0..w {
                out[(wi * h + hi) * c + ci] = x[(ci * h + hi) * w + wi];
            }
        }
    }
}

/// Kernel work space (see [`MtcnnScratch`]).
#[derive(Debug, Default)]
struct Buffers {
    col: Vec<f32>,
    hmax: Vec<f32>,
    /// Winograd's blocked planes and transformed input.
    wino: Vec<f32>,
}

/// Every buffer the engine needs, grown on first use and reused: keep one per
/// thread that runs the engine.
#[derive(Debug, Default)]
pub struct MtcnnScratch {
    k: Buffers,
    a: Vec<f32>,
    b: Vec<f32>,
    flat_in: Vec<f32>,
    hidden: Vec<f32>,
    head: Vec<f32>,
    /// P-Net: face probability per position.
    pub prob: Vec<f32>,
    /// Box regression (`4` planes for P-Net, `(n, 4)` for R-Net and O-Net).
    pub reg: Vec<f32>,
    /// O-Net: landmarks `(n, 10)`.
    pub landmarks: Vec<f32>,
}

/// P-Net, R-Net and O-Net on the engine's kernels.
#[derive(Debug, Clone)]
pub struct MtcnnEngine {
    p1: Conv,
    p2: Conv,
    p3: Conv,
    p4: Conv,
    rnet: Refiner,
    onet: Refiner,
}

/// R-Net or O-Net: convolutions (each with an optional ceil-mode max-pool
/// `(kernel, stride)` after it) on a square crop, flattened in
/// facenet-pytorch's order, a dense layer, then the stacked heads.
#[derive(Debug, Clone)]
struct Refiner {
    side: usize,
    body: Vec<(Conv, Option<(usize, usize)>)>,
    hidden: Dense,
    heads: Dense,
}

impl Refiner {
    /// Runs `n` normalised `(3, side, side)` crops; leaves the heads'
    /// outputs, `(n, heads.outputs)`, in `s.head`.
    fn run(&self, x: &[f32], n: usize, s: &mut MtcnnScratch) {
        let flat_len = self.hidden.inputs;
        grow(&mut s.flat_in, n * flat_len);
        let side = self.side;
        // Ping-pong buffers: `cur` holds the last output.
        let (mut cur, mut next) = (std::mem::take(&mut s.a), std::mem::take(&mut s.b));
        for (img, flat) in x
            .chunks_exact(3 * side * side)
            .zip(s.flat_in.chunks_exact_mut(flat_len))
            .take(n)
        {
            let mut size = (side, side);
            for (i, (conv, pool)) in self.body.iter().enumerate() {
                let input: &[f32] = if i == 0 { img } else { &cur };
                size = conv.run(input, size, &mut s.k, &mut next);
                std::mem::swap(&mut cur, &mut next);
                if let Some((k, stride)) = *pool {
                    let pooled = |len| pooled_len(len, k, stride);
                    grow(&mut next, conv.o * pooled(size.0) * pooled(size.1));
                    size = pool_planes(&cur, conv.o, size, (k, stride), &mut next, &mut s.k.hmax);
                    std::mem::swap(&mut cur, &mut next);
                }
            }
            let last = self.body.last().map_or(3, |(c, _)| c.o);
            flatten_whc(&cur, (last, size.0, size.1), flat);
        }
        (s.a, s.b) = (cur, next);
        self.hidden.run(&s.flat_in, n, &mut s.hidden);
        self.heads.run(&s.hidden, n, &mut s.head);
    }
}

/// Concatenates 1x1 heads (or dense heads) into one layer: their output
/// rows one after the other.
fn stack_conv(parts: &[&crate::mtcnn::Conv]) -> Result<Conv> {
    let mut out = Conv::new(parts[0], None)?;
    for p in &parts[1..] {
        let next = Conv::new(p, None)?;
        out.w.extend_from_slice(&next.w);
        out.b.extend_from_slice(&next.b);
        out.o += next.o;
    }
    // The stacked weights are GEMM's only.
    out.wino = None;
    Ok(out)
}

fn stack_dense(parts: &[&crate::mtcnn::Linear]) -> Result<Dense> {
    let layers = parts
        .iter()
        .map(|p| Dense::new(p, None))
        .collect::<Result<Vec<_>>>()?;
    let inputs = layers[0].inputs;
    let outputs: usize = layers.iter().map(|l| l.outputs).sum();
    let mut wt = vec![0f32; inputs * outputs];
    let mut b = Vec::with_capacity(outputs);
    let mut col = 0;
    for l in &layers {
        for i in 0..inputs {
            wt[i * outputs + col..][..l.outputs]
                .copy_from_slice(&l.wt[i * l.outputs..][..l.outputs]);
        }
        b.extend_from_slice(&l.b);
        col += l.outputs;
    }
    Ok(Dense {
        wt,
        b,
        alpha: None,
        inputs,
        outputs,
    })
}

impl MtcnnEngine {
    /// The engine for loaded networks (their weights are copied).
    pub fn new(nets: &Mtcnn) -> Result<Self> {
        let (p, r, o) = (&nets.pnet, &nets.rnet, &nets.onet);
        Ok(Self {
            p1: Conv::new(&p.conv1, Some(&p.prelu1))?,
            p2: Conv::new(&p.conv2, Some(&p.prelu2))?,
            p3: Conv::new(&p.conv3, Some(&p.prelu3))?,
            // Probability logits (2), then box regression (4).
            p4: stack_conv(&[&p.conv4_1, &p.conv4_2])?,
            rnet: Refiner {
                side: 24,
                body: vec![
                    (Conv::new(&r.conv1, Some(&r.prelu1))?, Some((3, 2))),
                    (Conv::new(&r.conv2, Some(&r.prelu2))?, Some((3, 2))),
                    (Conv::new(&r.conv3, Some(&r.prelu3))?, None),
                ],
                hidden: Dense::new(&r.dense4, Some(&r.prelu4))?,
                heads: stack_dense(&[&r.dense5_1, &r.dense5_2])?,
            },
            onet: Refiner {
                side: 48,
                body: vec![
                    (Conv::new(&o.conv1, Some(&o.prelu1))?, Some((3, 2))),
                    (Conv::new(&o.conv2, Some(&o.prelu2))?, Some((3, 2))),
                    (Conv::new(&o.conv3, Some(&o.prelu3))?, Some((2, 2))),
                    (Conv::new(&o.conv4, Some(&o.prelu4))?, None),
                ],
                hidden: Dense::new(&o.dense5, Some(&o.prelu5))?,
                heads: stack_dense(&[&o.dense6_1, &o.dense6_2, &o.dense6_3])?,
            },
        })
    }

    /// P-Net on one normalised image `x` `(3, h, w)`, `h, w >= 12`: fills
    /// `s.prob` (face probability, `oh x ow`) and `s.reg` (`4` planes of
    /// `oh x ow`) and returns `(oh, ow)`.
    pub fn pnet(&self, x: &[f32], (h, w): (usize, usize), s: &mut MtcnnScratch) -> (usize, usize) {
        let (h1, w1) = self.p1.run(x, (h, w), &mut s.k, &mut s.a);
        grow(
            &mut s.b,
            self.p1.o * pooled_len(h1, 2, 2) * pooled_len(w1, 2, 2),
        );
        let (h2, w2) = pool_planes(&s.a, self.p1.o, (h1, w1), (2, 2), &mut s.b, &mut s.k.hmax);
        let (h3, w3) = self.p2.run(&s.b, (h2, w2), &mut s.k, &mut s.a);
        let (h4, w4) = self.p3.run(&s.a, (h3, w3), &mut s.k, &mut s.b);
        let (oh, ow) = self.p4.run(&s.b, (h4, w4), &mut s.k, &mut s.a);
        let n = oh * ow;
        s.prob.clear();
        s.prob
            .extend((0..n).map(|i| face_probability(s.a[i], s.a[n + i])));
        s.reg.clear();
        s.reg.extend_from_slice(&s.a[2 * n..6 * n]);
        (oh, ow)
    }

    /// R-Net on `n` normalised `(3, 24, 24)` crops: fills `s.prob` (`n`
    /// face probabilities) and `s.reg` (`(n, 4)`).
    pub fn rnet(&self, x: &[f32], n: usize, s: &mut MtcnnScratch) {
        self.rnet.run(x, n, s);
        s.prob.clear();
        s.reg.clear();
        for row in s.head.chunks_exact(6).take(n) {
            s.prob.push(face_probability(row[0], row[1]));
            s.reg.extend_from_slice(&row[2..6]);
        }
    }

    /// O-Net on `n` normalised `(3, 48, 48)` crops: fills `s.prob` (`n`
    /// face probabilities), `s.reg` (`(n, 4)`) and `s.landmarks`
    /// (`(n, 10)`: x of the five points, then y).
    pub fn onet(&self, x: &[f32], n: usize, s: &mut MtcnnScratch) {
        self.onet.run(x, n, s);
        s.prob.clear();
        s.reg.clear();
        s.landmarks.clear();
        for row in s.head.chunks_exact(16).take(n) {
            s.prob.push(face_probability(row[0], row[1]));
            s.reg.extend_from_slice(&row[2..6]);
            s.landmarks.extend_from_slice(&row[6..16]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn nets() -> Mtcnn {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../assets/models/mtcnn.safetensors"
        );
        Mtcnn::from_file(path, &Device::Cpu).unwrap()
    }

    fn input(n: usize, h: usize, w: usize, seed: f32) -> Vec<f32> {
        (0..n * 3 * h * w)
            .map(|i| (i as f32 * 0.37 + seed).sin() * 0.9)
            .collect()
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{what}: max difference {worst}");
    }

    #[test]
    fn engine_matches_the_candle_graphs() {
        let nets = nets();
        let engine = MtcnnEngine::new(&nets).unwrap();
        let mut s = MtcnnScratch::default();
        // P-Net at several sizes, odd and even, reusing the scratch.
        for (h, w) in [(12, 12), (37, 50), (144, 192), (13, 29)] {
            let x = input(1, h, w, h as f32);
            let (oh, ow) = engine.pnet(&x, (h, w), &mut s);
            let t = Tensor::from_vec(x, (1, 3, h, w), &Device::Cpu).unwrap();
            let (reg, prob) = nets.pnet.forward(&t).unwrap();
            assert_eq!(prob.dims(), &[1, 2, oh, ow]);
            let prob = prob.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            close(&s.prob, &prob[oh * ow..], "pnet prob");
            close(
                &s.reg,
                &reg.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "pnet reg",
            );
        }
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let face =
            |p: &Tensor| -> Vec<f32> { p.to_vec2::<f32>().unwrap().iter().map(|r| r[1]).collect() };
        for n in [1, 5] {
            let x = input(n, 24, 24, n as f32);
            engine.rnet(&x, n, &mut s);
            let t = Tensor::from_vec(x, (n, 3, 24, 24), &Device::Cpu).unwrap();
            let (reg, prob) = nets.rnet.forward(&t).unwrap();
            close(&s.prob, &face(&prob), "rnet prob");
            close(&s.reg, &flat(&reg), "rnet reg");

            let x = input(n, 48, 48, n as f32 + 0.5);
            engine.onet(&x, n, &mut s);
            let t = Tensor::from_vec(x, (n, 3, 48, 48), &Device::Cpu).unwrap();
            let (reg, lms, prob) = nets.onet.forward(&t).unwrap();
            close(&s.prob, &face(&prob), "onet prob");
            close(&s.reg, &flat(&reg), "onet reg");
            close(&s.landmarks, &flat(&lms), "onet landmarks");
        }
    }
}

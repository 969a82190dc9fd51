//! The deployment path for ARCH-1: BatchNorm folded into the convolutions, the
//! residual branch's two 1x1 convolutions composed into one (evaluated only at
//! the stride-2 positions it keeps), ReLU fused into each convolution's epilogue,
//! preallocated buffers reused across calls. The 48x48 and 24x24 layers work on
//! NCHW planes (direct 3x3 kernels, depthwise, GEMM); the 12x12 and 6x6 3x3
//! convolutions, which are 60% of the multiply-adds, run as Winograd F(2x2, 3x3)
//! on blocked activations ([`kernels::winograd`]), and the last convolution,
//! which only feeds the global average, is never computed plane by plane: its
//! average comes from window sums ([`winograd::conv3x3_mean`]). After the
//! first call at a given batch size, [`Arch1Engine::run`] allocates nothing.
//!
//! The outputs match the candle graph ([`crate::Arch1`] in eval mode) to 1e-4
//! (tested below).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use candle_core::Tensor;
use rayon::prelude::*;

use crate::layers::BnConfig;
use crate::weights::WeightsError;
use kernels::direct::{self, Padded};
use kernels::helper::Helper;
use kernels::slice::{self, ConvGeom, Mat};
use kernels::winograd::{self, Tiles, Winograd};

/// A convolution with BatchNorm folded in: `y = relu?(W x + b)`.
#[derive(Debug, Clone)]
struct FoldedConv {
    /// `(O, C * k * k)` row-major.
    w: Vec<f32>,
    b: Vec<f32>,
    o: usize,
    c: usize,
    k: usize,
    stride: usize,
    relu: bool,
    /// `w` packed for the direct kernels (3x3, stride 1, on CPUs where they
    /// are the faster path) once [`FoldedConv::with_direct`] asked for it,
    /// else `None` (im2col + GEMM).
    packed: Option<direct::Packed>,
}

impl FoldedConv {
    /// The same convolution with its weights packed for the direct 3x3
    /// kernels, for any plane size, where they run it (else unchanged).
    fn with_direct(mut self) -> Self {
        let (w, o, c, k, stride) = (&self.w, self.o, self.c, self.k, self.stride);
        self.packed = direct::handles(k, stride, k / 2).then(|| direct::Packed::new(w, o, c, None));
        self
    }

    fn geom(&self, h: usize, w: usize) -> ConvGeom {
        ConvGeom {
            c: self.c,
            h,
            w,
            k: self.k,
            stride: self.stride,
            pad: self.k / 2,
        }
    }

    /// Output channels `o` of the convolution from its input columns `src`
    /// (`(C * k * k, hw)`, or the input itself for a pointwise convolution)
    /// into `y` (those channels' planes): bias, product, ReLU.
    fn rows(
        &self,
        o: std::ops::Range<usize>,
        src: &[f32],
        hw: usize,
        y: &mut [f32],
        threads: usize,
    ) {
        let kk = src.len() / hw;
        for (row, &b) in y.chunks_exact_mut(hw).zip(&self.b[o.clone()]) {
            row.fill(b);
        }
        let wm = Mat::row_major(&self.w[o.start * kk..o.end * kk], o.len(), kk);
        slice::matmul(y, wm, Mat::row_major(src, kk, hw), true, threads);
        if self.relu {
            for v in y.iter_mut() {
                *v = v.max(0.0);
            }
        }
    }

    /// Runs on one image `x` `(C, h, w)` into `y` `(O, ho, wo)`; returns `(ho, wo)`.
    fn run(
        &self,
        x: &[f32],
        h: usize,
        w: usize,
        y: &mut [f32],
        col: &mut Vec<f32>,
        threads: usize,
    ) -> (usize, usize) {
        let g = self.geom(h, w);
        let (ho, wo) = (g.ho(), g.wo());
        if let Some(p) = &self.packed {
            let (b, pg) = (Some(&self.b[..]), Padded { h, w });
            let y = &mut y[..self.o * h * w];
            direct::conv_image(x, p, b, pg, self.relu, col, y);
            return (ho, wo);
        }
        let hw = ho * wo;
        let kk = g.col_rows();
        let src: &[f32] = if g.is_pointwise() {
            &x[..kk * hw]
        } else {
            if col.len() < kk * hw {
                col.resize(kk * hw, 0.0);
            }
            slice::im2col(x, &g, col);
            &col[..kk * hw]
        };
        self.rows(0..self.o, src, hw, &mut y[..self.o * hw], threads);
        (ho, wo)
    }
}

/// A folded 3x3 convolution on the Winograd kernels, activations in the
/// blocked layout ([`winograd`]).
#[derive(Debug, Clone)]
struct WinoConv {
    u: Winograd,
    b: Vec<f32>,
    relu: bool,
}

/// Room for one lane's transformed input in the tail: the largest is
/// `conv2d_7`'s, 64 channels of 12x12 (36 tiles of 16 values).
const WINO_LEN: usize = 16 * 36 * 64;

impl WinoConv {
    fn new(f: FoldedConv) -> Result<Self, WeightsError> {
        let u = Winograd::new(&f.w, f.o, f.c).filter(|_| f.k == 3 && f.stride == 1);
        let u = u.ok_or_else(|| {
            WeightsError::Candle(candle_core::Error::Msg(format!(
                "engine: a {}x{} convolution {} -> {} does not fit the Winograd kernels",
                f.k, f.k, f.c, f.o
            )))
        })?;
        Ok(Self {
            u,
            b: f.b,
            relu: f.relu,
        })
    }

    /// Output blocks `blocks` of the convolution of blocked `x` (`h x w`)
    /// into `y` (those blocks), with `v` as room for the transformed input.
    fn run(
        &self,
        x: &[f32],
        g: Tiles,
        blocks: std::ops::Range<usize>,
        v: &mut [f32],
        y: &mut [f32],
    ) {
        winograd::transform_input(x, self.u.inputs(), g, v);
        winograd::multiply(&self.u, v, g, blocks, Some(&self.b), self.relu, y);
    }
}

/// The residual join: `relu(m + r)` of `c` planes of `hw` (NCHW) into the
/// blocked layout (`c` a whole number of blocks).
fn join_blocked(m: &[f32], r: &[f32], c: usize, hw: usize, y: &mut [f32]) {
    let n = c * hw;
    assert!(
        c.is_multiple_of(winograd::BLOCK) && m.len() >= n && r.len() >= n && y.len() >= n,
        "engine: bad shapes for the residual join"
    );
    for ci in 0..c {
        for px in 0..hw {
            let i = ci * hw + px;
            y[winograd::blocked_index(ci, px, hw)] = (m[i] + r[i]).max(0.0);
        }
    }
}

/// Per-image working memory.
#[derive(Debug, Default, Clone)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    trunk: Vec<f32>,
    res: Vec<f32>,
    col: Vec<f32>,
}

impl Scratch {
    fn reserve(&mut self) {
        let big = 16 * 48 * 48;
        for v in [&mut self.a, &mut self.b] {
            v.resize(big, 0.0);
        }
        self.trunk.resize(16 * 24 * 24, 0.0);
        self.res.resize(32 * 12 * 12, 0.0);
        self.col.resize(16 * 9 * 48 * 48, 0.0);
    }
}

/// ARCH-1 compiled for fast CPU inference.
#[derive(Debug, Clone)]
pub struct Arch1Engine {
    stem: [FoldedConv; 4],
    dw1: Vec<f32>,
    pw1: FoldedConv,
    dw2: Vec<f32>,
    pw2: FoldedConv,
    res: FoldedConv,
    /// `conv2d_6..9` on the Winograd kernels (blocked activations).
    tail: [WinoConv; 4],
    /// `conv2d_10`'s weights `(classes, 128, 3, 3)` and bias: only its global
    /// average is needed, which [`winograd::conv3x3_mean`] computes directly.
    head_w: Vec<f32>,
    head_b: Vec<f32>,
    classes: usize,
    scratch: Vec<Scratch>,
    logits: Vec<f32>,
    two_lanes: bool,
    /// The second lane's thread, started on the first two-lane call.
    helper: Helper,
}

fn get(t: &HashMap<String, Tensor>, name: &str) -> Result<Vec<f32>, WeightsError> {
    let v = t.get(name).ok_or_else(|| WeightsError::MissingTensor {
        name: name.to_owned(),
        expected: vec![],
    })?;
    Ok(v.flatten_all()?.to_vec1::<f32>()?)
}

/// BatchNorm `(scale, shift)` per channel, `y = x * scale + shift`.
fn bn(
    t: &HashMap<String, Tensor>,
    name: &str,
    eps: f64,
) -> Result<(Vec<f32>, Vec<f32>), WeightsError> {
    let gamma = get(t, &format!("{name}.gamma"))?;
    let beta = get(t, &format!("{name}.beta"))?;
    let mean = get(t, &format!("{name}.moving_mean"))?;
    let var = get(t, &format!("{name}.moving_variance"))?;
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&var)
        .map(|(g, v)| (f64::from(*g) / (f64::from(*v) + eps).sqrt()) as f32)
        .collect();
    let shift = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    Ok((scale, shift))
}

fn fold(
    t: &HashMap<String, Tensor>,
    conv: &str,
    weight: &str,
    bn_name: &str,
    (o, c, k, stride, relu): (usize, usize, usize, usize, bool),
    eps: f64,
) -> Result<FoldedConv, WeightsError> {
    let mut w = get(t, &format!("{conv}.{weight}"))?;
    let expected = o * c * k * k;
    if w.len() != expected {
        return Err(WeightsError::ShapeMismatch {
            name: format!("{conv}.{weight}"),
            expected: vec![o, c, k, k],
            found: vec![w.len()],
        });
    }
    let bias = match t.get(&format!("{conv}.bias")) {
        Some(b) => b.to_vec1::<f32>()?,
        None => vec![0.0; o],
    };
    let (scale, shift) = bn(t, bn_name, eps)?;
    let per_out = c * k * k;
    for (oi, row) in w.chunks_exact_mut(per_out).enumerate() {
        for v in row.iter_mut() {
            *v *= scale[oi];
        }
    }
    let b = (0..o).map(|oi| bias[oi] * scale[oi] + shift[oi]).collect();
    Ok(FoldedConv {
        packed: None,
        w,
        b,
        o,
        c,
        k,
        stride,
        relu,
    })
}

impl Arch1Engine {
    /// Compiles ARCH-1 from its parameters (as in a weights file or a `VarMap`).
    pub fn new(
        t: &HashMap<String, Tensor>,
        bn_cfg: BnConfig,
        classes: usize,
    ) -> Result<Self, WeightsError> {
        let eps = bn_cfg.eps;
        let f = |conv: &str, bn_name: &str, shape| fold(t, conv, "weight", bn_name, shape, eps);
        let stem = [
            f("conv2d", "batch_normalization", (8, 1, 3, 1, true))?,
            f("conv2d_1", "batch_normalization_1", (8, 8, 3, 1, true))?,
            f("conv2d_2", "batch_normalization_2", (16, 8, 3, 1, true))?,
            // ReLU commutes with the max-pooling that follows, so it is fused here.
            f("conv2d_3", "batch_normalization_3", (16, 16, 3, 1, true))?,
        ]
        .map(FoldedConv::with_direct);
        let dw1 = get(t, "separable_conv2d.depthwise.weight")?;
        let pw1 = fold(
            t,
            "separable_conv2d",
            "pointwise.weight",
            "batch_normalization_6",
            (32, 16, 1, 1, true),
            eps,
        )?;
        let dw2 = get(t, "separable_conv2d_1.depthwise.weight")?;
        let pw2 = fold(
            t,
            "separable_conv2d_1",
            "pointwise.weight",
            "batch_normalization_7",
            (32, 32, 1, 1, true),
            eps,
        )?;
        // Residual: conv2d_4 (1x1) + BN, conv2d_5 (1x1, stride 2) + BN, with no
        // nonlinearity between: one affine 1x1 map on the stride-2 positions.
        let r4 = fold(
            t,
            "conv2d_4",
            "weight",
            "batch_normalization_4",
            (16, 16, 1, 1, false),
            eps,
        )?;
        let r5 = fold(
            t,
            "conv2d_5",
            "weight",
            "batch_normalization_5",
            (32, 16, 1, 2, false),
            eps,
        )?;
        let mut w = vec![0f32; 32 * 16];
        slice::matmul(
            &mut w,
            Mat::row_major(&r5.w, 32, 16),
            Mat::row_major(&r4.w, 16, 16),
            false,
            1,
        );
        let b = (0..32)
            .map(|o| r5.b[o] + (0..16).map(|i| r5.w[o * 16 + i] * r4.b[i]).sum::<f32>())
            .collect();
        let res = FoldedConv {
            packed: None,
            w,
            b,
            o: 32,
            c: 16,
            k: 1,
            stride: 1,
            relu: false,
        };
        let w = |conv: &str, bn_name: &str, shape| WinoConv::new(f(conv, bn_name, shape)?);
        let tail = [
            w("conv2d_6", "batch_normalization_8", (64, 32, 3, 1, true))?,
            w("conv2d_7", "batch_normalization_9", (64, 64, 3, 1, true))?,
            w("conv2d_8", "batch_normalization_10", (128, 64, 3, 1, true))?,
            w("conv2d_9", "batch_normalization_11", (128, 128, 3, 1, true))?,
        ];
        let head_w = get(t, "conv2d_10.weight")?;
        let head_b = get(t, "conv2d_10.bias")?;
        if head_w.len() != classes * 128 * 9 || head_b.len() != classes {
            return Err(WeightsError::ShapeMismatch {
                name: "conv2d_10.weight".into(),
                expected: vec![classes, 128, 3, 3],
                found: vec![head_w.len()],
            });
        }
        Ok(Self {
            stem,
            dw1,
            pw1,
            dw2,
            pw2,
            res,
            tail,
            head_w,
            head_b,
            classes,
            scratch: Vec::new(),
            logits: Vec::new(),
            two_lanes: false,
            helper: Helper::default(),
        })
    }

    /// Compiles the network held by a `LoadedWeights` (must be ARCH-1).
    pub fn from_weights(w: &crate::LoadedWeights) -> Result<Self, WeightsError> {
        w.expect_arch(crate::Arch::Arch1)?;
        w.validate()?;
        let crate::ModelConfig::Arch1(cfg) = &w.meta.config else {
            return Err(WeightsError::WrongArch {
                expected: crate::Arch::Arch1,
                found: w.meta.arch(),
            });
        };
        if cfg.in_channels != 1 {
            return Err(WeightsError::BadMetadata {
                key: "config",
                reason: "the engine takes gray (1-channel) input".into(),
            });
        }
        Self::new(&w.tensors, cfg.bn, cfg.num_classes)
    }

    /// Whether a single image may use two threads (when the rayon pool has
    /// two or more): each layer's work is split in halves between the calling
    /// thread and a persistent helper thread (started on the first such call),
    /// which meet at a spinning barrier after each step. After a call the
    /// helper polls for the next one for up to 200 us, then sleeps.
    /// Off by default: the gain is about 1.45x at batch 1 on an idle 2-core
    /// machine (`docs/PERFORMANCE.md`), and during a call the helper takes the
    /// second core from the game.
    pub fn set_two_lanes(&mut self, on: bool) {
        self.two_lanes = on;
    }

    /// Number of outputs per image.
    pub fn classes(&self) -> usize {
        self.classes
    }

    fn image(&self, s: &mut Scratch, x: &[f32], logits: &mut [f32], threads: usize) {
        let Scratch {
            a,
            b,
            trunk,
            res,
            col,
        } = s;
        // Stem at 48x48.
        self.stem[0].run(x, 48, 48, a, col, threads);
        self.stem[1].run(a, 48, 48, b, col, threads);
        self.stem[2].run(b, 48, 48, a, col, threads);
        self.stem[3].run(a, 48, 48, b, col, threads);
        slice::maxpool2(b, 16, 48, 48, trunk);
        // Main branch at 24x24.
        slice::depthwise3x3(trunk, &self.dw1, 16, 24, 24, a);
        self.pw1.run(a, 24, 24, b, col, threads);
        slice::depthwise3x3(b, &self.dw2, 32, 24, 24, a);
        self.pw2.run(a, 24, 24, b, col, threads);
        slice::maxpool2(b, 32, 24, 24, a);
        // Residual branch at the stride-2 positions of the trunk.
        for c in 0..16 {
            for y in 0..12 {
                for xx in 0..12 {
                    col[c * 144 + y * 12 + xx] = trunk[c * 576 + 2 * y * 24 + 2 * xx];
                }
            }
        }
        let (sub, _) = col.split_at_mut(16 * 144);
        self.res.run(sub, 12, 12, res, &mut Vec::new(), 1);
        join_blocked(a, res, 32, 144, b);
        // Tail at 12x12 and 6x6, blocked.
        let (t12, t6) = (Tiles { h: 12, w: 12 }, Tiles { h: 6, w: 6 });
        self.tail[0].run(b, t12, 0..4, col, a);
        self.tail[1].run(a, t12, 0..4, col, b);
        winograd::maxpool2(b, 0..4, 12, 12, a);
        self.tail[2].run(a, t6, 0..8, col, b);
        self.tail[3].run(b, t6, 0..8, col, a);
        winograd::conv3x3_mean(a, 128, (6, 6), (&self.head_w, &self.head_b), col, logits);
    }

    /// Logits for `n` gray 48x48 faces given as `n * 2304` normalised values;
    /// returns `n * classes` values. Images run in parallel on the rayon pool
    /// when `n > 1`; a single image uses the pool inside its matrix products.
    pub fn run(&mut self, faces: &[f32], n: usize) -> Result<&[f32], WeightsError> {
        const PIX: usize = 48 * 48;
        if faces.len() != n * PIX {
            return Err(WeightsError::Candle(candle_core::Error::Msg(format!(
                "expected {n} faces of 48x48 ({} values), got {}",
                n * PIX,
                faces.len()
            ))));
        }
        // Within one image the matrices are too small for a second thread to
        // pay for its synchronisation (measured: 2 threads were slower than 1),
        // so threads split the batch, never an image.
        let threads = kernels::num_threads();
        let parts = threads.min(n).max(1);
        if self.scratch.len() < parts {
            self.scratch.resize_with(parts, || {
                let mut s = Scratch::default();
                s.reserve();
                s
            });
        }
        let k = self.classes;
        let mut logits = std::mem::take(&mut self.logits);
        logits.resize(n * k, 0.0);
        let mut scratch = std::mem::take(&mut self.scratch);
        if n == 1 && threads >= 2 && self.two_lanes {
            let mut helper = std::mem::take(&mut self.helper);
            self.image_two_lanes(&mut helper, &mut scratch[0], faces, &mut logits[..k]);
            self.helper = helper;
        } else if parts == 1 {
            for i in 0..n {
                self.image(
                    &mut scratch[0],
                    &faces[i * PIX..(i + 1) * PIX],
                    &mut logits[i * k..(i + 1) * k],
                    1,
                );
            }
        } else {
            let per = n.div_ceil(parts);
            let this = &*self;
            scratch
                .par_iter_mut()
                .zip(logits.par_chunks_mut(per * k))
                .zip(faces.par_chunks(per * PIX))
                .for_each(|((s, out), imgs)| {
                    for (img, l) in imgs.chunks_exact(PIX).zip(out.chunks_exact_mut(k)) {
                        this.image(s, img, l, 1);
                    }
                });
        }
        self.scratch = scratch;
        self.logits = logits;
        Ok(&self.logits)
    }
}

// ---------------------------------------------------------------------------
// One image on two threads

/// A scratch buffer both lanes use, each phase writing disjoint ranges.
#[derive(Clone, Copy)]
struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: `Shared` is only a pointer and a length; the lanes' phase protocol
// (see `Lanes`) is what makes the accesses through it race-free.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

impl Shared {
    fn new(v: &mut [f32]) -> Self {
        Self {
            ptr: v.as_mut_ptr(),
            len: v.len(),
        }
    }

    /// The whole buffer, read-only.
    ///
    /// # Safety
    /// No lane may write to the buffer until the next barrier.
    unsafe fn all(&self) -> &[f32] {
        // SAFETY: `ptr..ptr + len` is one live allocation borrowed for the
        // whole two-lane call; the caller guarantees no concurrent writes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Elements `lo..hi`, read-only.
    ///
    /// # Safety
    /// No lane may write to `lo..hi` until the next barrier.
    unsafe fn part(&self, lo: usize, hi: usize) -> &[f32] {
        assert!(lo <= hi && hi <= self.len, "lane range out of bounds");
        // SAFETY: in bounds (asserted); not written concurrently (caller).
        unsafe { std::slice::from_raw_parts(self.ptr.add(lo), hi - lo) }
    }

    /// Elements `lo..hi`, writable.
    ///
    /// # Safety
    /// Until the next barrier, no other lane touches `lo..hi` and this lane
    /// reads nothing of the buffer through another view.
    #[expect(
        clippy::mut_from_ref,
        reason = "lanes write disjoint ranges between barriers (see Safety)"
    )]
    unsafe fn range(&self, lo: usize, hi: usize) -> &mut [f32] {
        assert!(lo <= hi && hi <= self.len, "lane range out of bounds");
        // SAFETY: in bounds (asserted); exclusive for this phase (caller).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(lo), hi - lo) }
    }
}

/// A two-party spinning barrier with a poison flag, so that a panic in one
/// lane ends the other instead of leaving it spinning.
#[derive(Default)]
struct SpinBarrier {
    arrived: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

impl SpinBarrier {
    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) == 1 {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            assert!(
                !self.poisoned.load(Ordering::Relaxed),
                "the other inference lane panicked"
            );
            spins += 1;
            if spins < 20_000 {
                std::hint::spin_loop();
            } else {
                // The other lane has been descheduled: give it the core.
                std::thread::yield_now();
            }
        }
    }
}

/// Marks the barrier poisoned if its lane unwinds.
struct PoisonOnPanic<'a>(&'a SpinBarrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Relaxed);
        }
    }
}

/// The buffers of one image and the barrier, shared by its two lanes.
///
/// Phase protocol: between two `bar.wait()` calls, each lane writes only its
/// half (`half(n, lane)`) of one output buffer and reads only buffers no lane
/// writes in that phase. Every step below states its reads and writes.
struct Lanes {
    a: Shared,
    b: Shared,
    trunk: Shared,
    res: Shared,
    col: Shared,
    bar: SpinBarrier,
}

/// Lane `lane`'s share `lo..hi` of `n` items.
fn half(n: usize, lane: usize) -> (usize, usize) {
    if lane == 0 { (0, n / 2) } else { (n / 2, n) }
}

impl FoldedConv {
    /// This lane's half of the convolution `x (C, h, w) -> y (O, ho, wo)`:
    /// half of the im2col rows (by input channel), a barrier, half of the
    /// output channels. The caller waits at the barrier after it, once `x`
    /// is no longer borrowed (the other lane may write it in the next phase).
    fn run_lane(&self, lane: usize, x: &[f32], h: usize, w: usize, y: Shared, l: &Lanes) {
        if let Some(p) = &self.packed {
            self.direct_lane(p, lane, x, h, w, y, l);
            return;
        }
        let g = self.geom(h, w);
        let hw = g.ho() * g.wo();
        let kk = g.col_rows();
        if !g.is_pointwise() {
            let (c0, c1) = half(self.c, lane);
            if c1 > c0 {
                let sub = ConvGeom { c: c1 - c0, ..g };
                let per = self.k * self.k * hw;
                // SAFETY: this lane writes col rows of channels c0..c1 only;
                // nothing reads col in this phase.
                let dst = unsafe { l.col.range(c0 * per, c1 * per) };
                slice::im2col(&x[c0 * h * w..c1 * h * w], &sub, dst);
            }
            l.bar.wait();
        }
        let src: &[f32] = if g.is_pointwise() {
            &x[..kk * hw]
        } else {
            // SAFETY: col was completed before the barrier above and nobody
            // writes it until the barrier below.
            unsafe { &l.col.all()[..kk * hw] }
        };
        let (o0, o1) = half(self.o, lane);
        if o1 > o0 {
            // SAFETY: output channels o0..o1 are this lane's alone; `y` is a
            // different buffer from `x` and col.
            let yr = unsafe { y.range(o0 * hw, o1 * hw) };
            self.rows(o0..o1, src, hw, yr, 1);
        }
    }
}

impl FoldedConv {
    /// [`FoldedConv::run_lane`] on the direct kernels: this lane pads half of
    /// the input channels into col, a barrier, then convolves its half of
    /// the output channels (whole blocks of [`direct::WIDE`] on small planes,
    /// else of [`direct::ROWS`], whose flat output goes through col's region
    /// after the planes) into `y`; the caller waits at the barrier after it.
    fn direct_lane(
        &self,
        p: &direct::Packed,
        lane: usize,
        x: &[f32],
        h: usize,
        w: usize,
        y: Shared,
        l: &Lanes,
    ) {
        let pg = Padded { h, w };
        let (plane, len, hw) = (pg.plane(), pg.out_len(), h * w);
        let (c0, c1) = half(self.c, lane);
        if c1 > c0 {
            // SAFETY: this lane writes the padded planes of channels c0..c1
            // only; nothing reads col in this phase.
            let dst = unsafe { l.col.range(c0 * plane, c1 * plane) };
            pg.pad(&x[c0 * hw..c1 * hw], c1 - c0, dst);
        }
        l.bar.wait();
        let wide = p.wide_for(pg);
        let block = if wide.is_some() {
            direct::WIDE
        } else {
            direct::ROWS
        };
        let (b0, b1) = half(self.o.div_ceil(block), lane);
        let (o0, o1) = (b0 * block, (b1 * block).min(self.o));
        if o1 > o0 {
            let flat0 = self.c * plane;
            // SAFETY: the padded planes were completed before the barrier and
            // no lane writes them in this phase.
            let xp = unsafe { l.col.part(0, flat0) };
            // SAFETY: output channels o0..o1 are this lane's; `y` is a
            // different buffer from `x` and col.
            let yr = unsafe { y.range(o0 * hw, o1 * hw) };
            let bias = Some(&self.b[o0..]);
            if let Some(wq) = wide {
                let wq = &wq[o0 * self.c * 9..];
                direct::conv_wide(xp, wq, bias, o1 - o0, self.c, pg, self.relu, yr);
            } else {
                // SAFETY: this lane alone writes the flat rows of channels
                // o0..o1, after the planes.
                let flat = unsafe { l.col.range(flat0 + o0 * len, flat0 + o1 * len) };
                let wp = &p.rows()[direct::packed_len(o0, self.c)..];
                direct::conv(xp, wp, bias, o1 - o0, self.c, pg, self.relu, flat);
                // SAFETY: as above, these flat rows are this lane's own.
                let flat = unsafe { l.col.part(flat0 + o0 * len, flat0 + o1 * len) };
                pg.unpad(flat, o1 - o0, yr);
            }
        }
    }
}

impl WinoConv {
    /// This lane's half of the output blocks of the convolution of blocked
    /// `x` into `y`; the caller waits at the barrier after it. Each lane transforms the whole input
    /// into its own region of col (cheaper than a barrier to share it).
    fn run_lane(&self, lane: usize, x: &[f32], g: Tiles, y: Shared, l: &Lanes) {
        // SAFETY: region `lane` of col is this lane's alone in the tail
        // phases; nothing else reads or writes col there.
        let v = unsafe { l.col.range(lane * WINO_LEN, (lane + 1) * WINO_LEN) };
        let (b0, b1) = half(self.u.blocks(), lane);
        let per = winograd::BLOCK * g.h * g.w;
        // SAFETY: output blocks b0..b1 are this lane's; `y` is a different
        // buffer from `x` and col.
        let yr = unsafe { y.range(b0 * per, b1 * per) };
        self.run(x, g, b0..b1, v, yr);
    }
}

impl Arch1Engine {
    /// One lane of [`Arch1Engine::image`]: the same steps, each split in
    /// halves between lane 0 and lane 1, with a barrier after each.
    fn image_lane(&self, lane: usize, x: &[f32], l: &Lanes, logits: Option<&mut [f32]>) {
        let _guard = PoisonOnPanic(&l.bar);
        // Reads of a buffer written in an earlier phase (all are complete
        // after that phase's barrier, and not written in the current one).
        // SAFETY (for every `r(..)` below): the buffer's last writers passed
        // a barrier since, and the current phase writes another buffer.
        fn r(s: &Shared) -> &[f32] {
            // SAFETY: see above.
            unsafe { s.all() }
        }
        // Per-channel steps: this lane's channels of `planes`.
        let chans = |planes: usize| half(planes, lane);

        self.stem[0].run_lane(lane, x, 48, 48, l.a, l);
        l.bar.wait();
        self.stem[1].run_lane(lane, r(&l.a), 48, 48, l.b, l);
        l.bar.wait();
        self.stem[2].run_lane(lane, r(&l.b), 48, 48, l.a, l);
        l.bar.wait();
        self.stem[3].run_lane(lane, r(&l.a), 48, 48, l.b, l);
        l.bar.wait();
        let (c0, c1) = chans(16);
        // SAFETY: channels c0..c1 of trunk are this lane's.
        let t = unsafe { l.trunk.range(c0 * 576, c1 * 576) };
        slice::maxpool2(&r(&l.b)[c0 * 2304..], c1 - c0, 48, 48, t);
        l.bar.wait();
        // SAFETY: channels c0..c1 of a are this lane's.
        let y = unsafe { l.a.range(c0 * 576, c1 * 576) };
        slice::depthwise3x3(
            &r(&l.trunk)[c0 * 576..],
            &self.dw1[c0 * 9..],
            c1 - c0,
            24,
            24,
            y,
        );
        l.bar.wait();
        self.pw1.run_lane(lane, r(&l.a), 24, 24, l.b, l);
        l.bar.wait();
        let (c0, c1) = chans(32);
        // SAFETY: channels c0..c1 of a are this lane's.
        let y = unsafe { l.a.range(c0 * 576, c1 * 576) };
        slice::depthwise3x3(
            &r(&l.b)[c0 * 576..],
            &self.dw2[c0 * 9..],
            c1 - c0,
            24,
            24,
            y,
        );
        l.bar.wait();
        self.pw2.run_lane(lane, r(&l.a), 24, 24, l.b, l);
        l.bar.wait();
        // SAFETY: channels c0..c1 of a are this lane's.
        let y = unsafe { l.a.range(c0 * 144, c1 * 144) };
        slice::maxpool2(&r(&l.b)[c0 * 576..], c1 - c0, 24, 24, y);
        // Residual input: the trunk at stride-2 positions, into col.
        let (r0, r1) = chans(16);
        // SAFETY: col rows r0..r1 (144 each) are this lane's; col is not
        // read in this phase.
        let sub = unsafe { l.col.range(r0 * 144, r1 * 144) };
        let trunk = r(&l.trunk);
        for (i, c) in (r0..r1).enumerate() {
            for yy in 0..12 {
                for xx in 0..12 {
                    sub[i * 144 + yy * 12 + xx] = trunk[c * 576 + 2 * yy * 24 + 2 * xx];
                }
            }
        }
        l.bar.wait();
        // SAFETY: col was completed before the barrier; `run_lane` on a
        // pointwise convolution does not write col.
        let gathered = unsafe { &l.col.all()[..16 * 144] };
        self.res.run_lane(lane, gathered, 12, 12, l.res, l);
        l.bar.wait();
        // The join of this lane's channels (one block of 16) into b, blocked.
        // SAFETY: channels c0..c1 of b are this lane's; a and res were
        // completed before the barriers above.
        let y = unsafe { l.b.range(c0 * 144, c1 * 144) };
        let (m, rs) = (&r(&l.a)[c0 * 144..], &r(&l.res)[c0 * 144..]);
        join_blocked(m, rs, c1 - c0, 144, y);
        l.bar.wait();
        // Tail at 12x12 and 6x6, blocked, split by output blocks.
        let (t12, t6) = (Tiles { h: 12, w: 12 }, Tiles { h: 6, w: 6 });
        self.tail[0].run_lane(lane, r(&l.b), t12, l.a, l);
        l.bar.wait();
        self.tail[1].run_lane(lane, r(&l.a), t12, l.b, l);
        l.bar.wait();
        let (b0, b1) = half(4, lane);
        // SAFETY: blocks b0..b1 of a are this lane's.
        let y = unsafe { l.a.range(b0 * 16 * 36, b1 * 16 * 36) };
        winograd::maxpool2(r(&l.b), b0..b1, 12, 12, y);
        l.bar.wait();
        self.tail[2].run_lane(lane, r(&l.a), t6, l.b, l);
        l.bar.wait();
        self.tail[3].run_lane(lane, r(&l.b), t6, l.a, l);
        l.bar.wait();
        if let Some(logits) = logits {
            // SAFETY: lane 0's own region of col; lane 1 is done with col.
            let s = unsafe { l.col.range(0, 9 * 128) };
            let k = (&self.head_w[..], &self.head_b[..]);
            winograd::conv3x3_mean(r(&l.a), 128, (6, 6), k, s, logits);
        }
    }

    /// One image on the calling thread and the helper thread.
    fn image_two_lanes(&self, helper: &mut Helper, s: &mut Scratch, x: &[f32], logits: &mut [f32]) {
        let lanes = Lanes {
            a: Shared::new(&mut s.a),
            b: Shared::new(&mut s.b),
            trunk: Shared::new(&mut s.trunk),
            res: Shared::new(&mut s.res),
            col: Shared::new(&mut s.col),
            bar: SpinBarrier::default(),
        };
        // A panic in either lane is re-raised here.
        helper.join(
            || self.image_lane(0, x, &lanes, Some(logits)),
            || self.image_lane(1, x, &lanes, None),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arch, EmotionNet, ModelConfig};
    use candle_core::{DType, Device};
    use candle_nn::{ModuleT, VarBuilder, VarMap};

    /// An ARCH-1 graph with non-trivial BatchNorm statistics (a few
    /// train-mode passes move them) and the engine compiled from it.
    fn graph_and_engine() -> (EmotionNet, Arch1Engine) {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let net = EmotionNet::new(
            &ModelConfig::preset(Arch::Arch1),
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        )
        .unwrap();
        for _ in 0..3 {
            let x = Tensor::rand(0f32, 1f32, (8, 1, 48, 48), &dev).unwrap();
            net.forward_t(&x, true).unwrap();
        }
        let tensors = crate::weights::varmap_tensors(&varmap).unwrap();
        let engine = Arch1Engine::new(&tensors, BnConfig::default(), 7).unwrap();
        (net, engine)
    }

    #[test]
    fn engine_matches_the_candle_graph() {
        let dev = Device::Cpu;
        let (net, mut engine) = graph_and_engine();
        for n in [1usize, 3, 5] {
            let x = Tensor::rand(0f32, 1f32, (n, 1, 48, 48), &dev).unwrap();
            let want = net
                .forward_t(&x, false)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let flat = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = engine.run(&flat, n).unwrap().to_vec();
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "batch {n}: engine {a} vs graph {b}"
                );
            }
        }
        assert!(engine.run(&[0.0; 10], 1).is_err());
    }

    #[test]
    fn two_lanes_match_one_lane() {
        let (_, engine) = graph_and_engine();
        let mut s1 = Scratch::default();
        s1.reserve();
        let mut s2 = Scratch::default();
        s2.reserve();
        let mut helper = Helper::default();
        for seed in 0..4 {
            let x: Vec<f32> = (0..2304)
                .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0)
                .collect();
            let (mut one, mut two) = ([0f32; 7], [0f32; 7]);
            engine.image(&mut s1, &x, &mut one, 1);
            engine.image_two_lanes(&mut helper, &mut s2, &x, &mut two);
            for (a, b) in one.iter().zip(&two) {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                    "{one:?} vs {two:?}"
                );
            }
        }
    }
}

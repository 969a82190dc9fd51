//! The compute backend: CPU kernels on plain slices and the candle custom
//! ops built on them, with forward and backward, so the networks, training
//! and the plugin use them through the ordinary candle graph.
//!
//! - [`hwc`]: channel-last depth-wise convolution for the single-shot detector;
//! - [`slice`]: GEMM (through `gemm`), im2col/col2im, depthwise 3x3, 2x2
//!   max-pooling and BatchNorm statistics on NCHW `f32` slices;
//! - [`direct`]: direct 3x3 convolutions (AVX2 + FMA, portable fallback);
//! - [`winograd`]: Winograd F(2x2, 3x3) on channel-blocked activations;
//! - [`helper`]: a persistent second thread for two-lane batch-1 inference;
//! - the ops below, used by `models`' layers.
//!
//! | op | replaces | why |
//! | --- | --- | --- |
//! | [`conv2d`] | `Tensor::conv2d` | 3x3 stride 1: the direct kernel of [`direct`] for the output and the input gradient (no im2col, no GEMM packing); other shapes: im2col + `gemm` forward, GEMM + col2im backward instead of a direct-loop transposed convolution |
//! | [`depthwise3x3`] | `conv2d` with `groups = C` | one direct kernel instead of C separate convolutions |
//! | [`max_pool2`] | `Tensor::max_pool2d(2)` | one pass, backward routes to the window's maximum |
//! | [`batch_norm_train`] | composed mean/var/normalise ops | one fused pass per statistic, fused ReLU, fused backward |
//! | [`conv_bn_train`] | [`conv2d`] + [`batch_norm_train`] (+ [`max_pool2_relu`]) in train mode | one graph node: no convolution-output gradient for candle's autograd to zero, add and write out; BatchNorm's input gradient made per image in cache for both convolution gradients |
//!
//! Every op falls back to candle's stock implementation on other devices (CUDA)
//! and for non-`f32` tensors. Each is tested against the stock op (values and
//! gradients) in this module's tests.

#![deny(unsafe_code)]

mod conv_bn;
#[expect(unsafe_code, reason = "AVX2 intrinsics and raw-pointer row loops")]
pub mod direct;
#[expect(
    unsafe_code,
    reason = "a job borrowing the caller's stack is sent to the helper thread"
)]
pub mod helper;
#[expect(unsafe_code, reason = "run-time AVX2 dispatch")]
pub mod hwc;
#[expect(unsafe_code, reason = "AVX2 gathers")]
pub mod image;
#[expect(unsafe_code, reason = "AVX2 intrinsics")]
pub mod slice;
#[expect(unsafe_code, reason = "AVX2 intrinsics")]
pub mod winograd;

pub use conv_bn::{BnThen, conv_bn_train};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail,
};
use rayon::prelude::*;

use slice::{ConvGeom, Mat};

/// Threads these kernels use: the current rayon pool's size (the global
/// pool: `RAYON_NUM_THREADS`, else all cores; inside `ThreadPool::install`,
/// that pool's, so a caller with a thread budget is kept to it).
pub fn num_threads() -> usize {
    rayon::current_num_threads().max(1)
}

static FAST_OPS: AtomicBool = AtomicBool::new(true);

/// Turns the fast ops on or off for the whole process (on by default). Off, every
/// op runs candle's stock implementation: used to benchmark against stock candle
/// and to cross-check the two paths.
pub fn set_fast_ops(enabled: bool) {
    FAST_OPS.store(enabled, Ordering::Relaxed);
}

/// Whether the fast ops are on (see [`set_fast_ops`]).
pub fn fast_ops() -> bool {
    FAST_OPS.load(Ordering::Relaxed)
}

fn use_fast_path(ts: &[&Tensor]) -> bool {
    fast_ops()
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The contiguous `f32` data of a CPU tensor argument.
fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fast op expects a contiguous tensor"),
    }
}

fn dims4(l: &Layout, what: &str) -> Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        d => bail!("{what}: expected a 4-D tensor, got shape {d:?}"),
    }
}

/// Locks state an op shares between its forward and backward passes.
fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| candle_core::Error::Msg("fast op: state lock poisoned".into()))
}

/// `len` values of a backward op's packed 1-D output from `start`, copied
/// into their own storage. A parameter gradient must not stay a view: the
/// gradient store would keep the whole batch-sized buffer (`dx` included)
/// alive until the optimizer step.
fn owned_part(packed: &Tensor, start: usize, len: usize) -> Result<Tensor> {
    packed.narrow(0, start, len)?.force_contiguous()
}

/// Splits `n` items into at most `parts` contiguous ranges.
fn ranges(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts)
        .map(|p| (p * n / parts)..((p + 1) * n / parts))
        .filter(|r| !r.is_empty())
        .collect()
}

/// Zeroes `chunk`, which is then initialised.
#[expect(
    unsafe_code,
    reason = "a slice of initialised MaybeUninit viewed as f32"
)]
fn zeroed(chunk: &mut [std::mem::MaybeUninit<f32>]) -> &mut [f32] {
    for v in chunk.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every element of `chunk` was initialised just above, and
    // `MaybeUninit<f32>` has the layout of `f32`.
    unsafe { &mut *(std::ptr::from_mut(chunk) as *mut [f32]) }
}

/// An op's output of `n` chunks of `size` values plus `extra` zeros, the
/// chunks filled in parallel by `fill(state, i, chunk)` (with one `init()`
/// state per rayon job, for scratch buffers). Each chunk is zeroed by the
/// thread that fills it, just before `fill`: `vec![0.0; len]` zeroes the whole
/// output serially on the thread that runs the op (mimalloc reuses freed
/// memory, so the zeroing is a real `memset`), which the second thread spent
/// waiting for.
#[expect(unsafe_code, reason = "set_len after every chunk was written")]
fn par_output<S>(
    n: usize,
    size: usize,
    extra: usize,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) -> Vec<f32> {
    let len = n * size;
    let mut out: Vec<f32> = Vec::with_capacity(len + extra);
    if size > 0 {
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(size)
            .enumerate()
            .for_each_init(init, |state, (i, chunk)| fill(state, i, zeroed(chunk)));
        // SAFETY: the chunks of `size` values cover `0..len` exactly (`len` is
        // a multiple of `size`) and the loop above initialised every one; a
        // panic in `fill` propagates before this line, leaving the length 0.
        unsafe { out.set_len(len) };
    }
    out.resize(len + extra, 0.0);
    out
}

/// [`par_output`] for ops that also reduce over the batch: at most
/// [`num_threads`] jobs, each filling the chunks of a contiguous range of
/// items (zeroed first, by the job) and returning a partial result, such as
/// its share of a kernel gradient; then `extra` zeros.
#[expect(unsafe_code, reason = "set_len after every chunk was written")]
fn par_ranges<R: Send>(
    n: usize,
    size: usize,
    extra: usize,
    fill: impl Fn(std::ops::Range<usize>, &mut [f32]) -> R + Sync + Send,
) -> (Vec<f32>, Vec<R>) {
    let len = n * size;
    let mut out: Vec<f32> = Vec::with_capacity(len + extra);
    let mut rest = &mut out.spare_capacity_mut()[..len];
    let mut jobs = Vec::new();
    for r in ranges(n, num_threads()) {
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(r.len() * size);
        jobs.push((r, head));
        rest = tail;
    }
    let parts = jobs
        .into_par_iter()
        .map(|(r, chunk)| fill(r, zeroed(chunk)))
        .collect();
    // SAFETY: the ranges cover `0..n` exactly, so the chunks cover `0..len`,
    // and each job initialised its chunk; a panic in `fill` propagates before
    // this line, leaving the length 0.
    unsafe { out.set_len(len) };
    out.resize(len + extra, 0.0);
    (out, parts)
}

// ---------------------------------------------------------------------------
// Convolution

/// 2-D convolution of `x` `(N, C, H, W)` with `w` `(O, C, k, k)`, square kernel,
/// no groups, no dilation.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    if !use_fast_path(&[x, w]) {
        return x.conv2d(w, pad, stride, 1, 1);
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, Conv2dOp { stride, pad })
}

/// [`conv2d`] plus a per-channel bias `b` `(O,)`, added inside the same pass.
pub fn conv2d_bias(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    if !use_fast_path(&[x, w, b]) {
        return x
            .conv2d(w, pad, stride, 1, 1)?
            .broadcast_add(&b.reshape((1, (), 1, 1))?);
    }
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, Conv2dOp { stride, pad })
}

/// [`conv2d`], or [`conv2d_bias`] when there is a bias.
pub fn conv2d_maybe_bias(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    match bias {
        Some(b) => conv2d_bias(x, w, b, stride, pad),
        None => conv2d(x, w, stride, pad),
    }
}

struct Conv2dOp {
    stride: usize,
    pad: usize,
}

fn conv_geom(
    x: (usize, usize, usize, usize),
    w: (usize, usize, usize, usize),
    stride: usize,
    pad: usize,
) -> Result<ConvGeom> {
    let (_, c, h, wd) = x;
    let (_, wc, kh, kw) = w;
    if c != wc || kh != kw {
        bail!("conv2d: input channels {c} vs kernel {wc}, kernel {kh}x{kw} must be square");
    }
    if h + 2 * pad < kh || wd + 2 * pad < kw || stride == 0 {
        bail!("conv2d: input {h}x{wd} too small for kernel {kh} with padding {pad}");
    }
    Ok(ConvGeom {
        c,
        h,
        w: wd,
        k: kh,
        stride,
        pad,
    })
}

/// Planes of at most this many positions (12x12) run their 3x3 convolutions,
/// forward and input gradient, on the Winograd kernels when both channel
/// counts are whole blocks of 16 (ARCH-1's `conv2d_6..9`): 2.25x fewer
/// multiply-adds than the direct kernel. Larger planes stay on the direct
/// kernel, whose padded planes stay in cache where the transformed input of
/// a large plane would not. Like the direct kernel, this path is taken on
/// CPUs with AVX2 and FMA only; elsewhere im2col + GEMM is used.
const WINOGRAD_MAX_POSITIONS: usize = 144;

/// The Winograd weights for a 3x3 convolution `g` with weights `w` (`o`
/// outputs), or of its input gradient if `flipped`, where it runs on them.
fn winograd_for(g: &ConvGeom, w: &[f32], o: usize, flipped: bool) -> Option<winograd::Winograd> {
    if !direct::handles(g.k, g.stride, g.pad) || g.h * g.w > WINOGRAD_MAX_POSITIONS {
        return None;
    }
    if flipped {
        winograd::Winograd::flipped(w, o, g.c)
    } else {
        winograd::Winograd::new(w, o, g.c)
    }
}

/// The convolution forward pass shared by [`Conv2dOp`] and the fused
/// convolution + BatchNorm op: the output `(N, O, Ho, Wo)` and its dimensions.
fn conv_forward(
    x: &[f32],
    l1: &Layout,
    w: &[f32],
    l2: &Layout,
    bias: Option<&[f32]>,
    (stride, pad): (usize, usize),
) -> Result<(Vec<f32>, [usize; 4])> {
    let xd = dims4(l1, "conv2d input")?;
    let wdims = dims4(l2, "conv2d kernel")?;
    let g = conv_geom(xd, wdims, stride, pad)?;
    let (n, o) = (xd.0, wdims.0);
    if bias.is_some_and(|b| b.len() != o) {
        bail!("conv2d: bias length does not match {o} output channels");
    }
    let dims = [n, o, g.ho(), g.wo()];
    let (kk, hw) = (g.col_rows(), g.col_cols());
    let in_size = g.c * g.h * g.w;
    if let Some(u) = winograd_for(&g, w, o, false) {
        let tiles = winograd::Tiles { h: g.h, w: g.w };
        let out = par_output(n, o * hw, 0, Vec::new, |scratch, i, y| {
            let xi = &x[i * in_size..(i + 1) * in_size];
            winograd::conv_planes(xi, &u, bias, false, tiles, scratch, y);
        });
        return Ok((out, dims));
    }
    if direct::handles(g.k, g.stride, g.pad) {
        let pg = direct::Padded { h: g.h, w: g.w };
        let packed = direct::Packed::new(w, o, g.c, Some(pg));
        let out = par_output(n, o * hw, 0, Vec::new, |scratch, i, y| {
            let xi = &x[i * in_size..(i + 1) * in_size];
            direct::conv_image(xi, &packed, bias, pg, false, scratch, y);
        });
        return Ok((out, dims));
    }
    // Images in parallel; one image's matrices are too small to split.
    let out = par_output(n, o * hw, 0, Vec::new, |col, i, y| {
        if let Some(b) = bias {
            for (row, &bv) in y.chunks_exact_mut(hw).zip(b) {
                row.fill(bv);
            }
        }
        let xi = &x[i * in_size..(i + 1) * in_size];
        let wm = Mat::row_major(w, o, kk);
        let acc = bias.is_some();
        if g.is_pointwise() {
            slice::matmul(y, wm, Mat::row_major(xi, kk, hw), acc, 1);
        } else {
            col.resize(kk * hw, 0.0);
            slice::im2col(xi, &g, col);
            slice::matmul(y, wm, Mat::row_major(col, kk, hw), acc, 1);
        }
    });
    Ok((out, dims))
}

impl Conv2dOp {
    fn forward(
        &self,
        x: &[f32],
        l1: &Layout,
        w: &[f32],
        l2: &Layout,
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (out, dims) = conv_forward(x, l1, w, l2, bias, (self.stride, self.pad))?;
        Ok((CpuStorage::F32(out), Shape::from(dims.to_vec())))
    }

    /// Input and kernel gradients. The input gradient is skipped when nothing
    /// upstream of `x` needs it (the first layer, whose input is the data):
    /// candle asks every op for all its inputs' gradients.
    fn backward(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Tensor)> {
        let (_, c, h, wd) = x.dims4()?;
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                w,
                &ConvBwdData {
                    stride: self.stride,
                    pad: self.pad,
                    c,
                    h,
                    w: wd,
                },
            )?)
        } else {
            None
        };
        let dw = x.apply_op2_no_bwd(
            grad,
            &ConvBwdFilter {
                stride: self.stride,
                pad: self.pad,
                k: w.dim(2)?,
            },
        )?;
        Ok((dx, dw))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "fast-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(slice(s1, l1)?, l1, slice(s2, l2)?, l2, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.backward(x, w, &grad.contiguous()?)?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "fast-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = slice(s3, l3)?;
        self.forward(slice(s1, l1)?, l1, slice(s2, l2)?, l2, Some(b))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dx, dw) = self.backward(x, w, &grad)?;
        let db = grad.apply_op1_no_bwd(&ChannelSum)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// Per-channel sum of an `(N, C, H, W)` tensor: `(C,)` (a bias gradient).
struct ChannelSum;

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "fast-channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let (n, c, h, w) = dims4(l, "channel sum input")?;
        let hw = h * w;
        let sums = (0..c)
            .map(|ch| {
                (0..n)
                    .map(|i| f64::from(slice::sum(&x[(i * c + ch) * hw..(i * c + ch + 1) * hw])))
                    .sum::<f64>() as f32
            })
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

/// A convolution's input gradient, one image at a time, with the kernel
/// prepared once per call.
enum DataGrad<'a> {
    /// 3x3 stride 1 padding 1 on small planes, channels in blocks of 16: the
    /// Winograd kernels on the transposed and flipped kernel.
    Winograd(winograd::Winograd, winograd::Tiles),
    /// 3x3 stride 1 padding 1: the direct kernel with the kernel transposed and
    /// flipped (the input gradient is that convolution of the output gradient).
    Direct(direct::Packed, direct::Padded),
    /// Other shapes: GEMM with the transposed kernel, then col2im.
    Gemm(Mat<'a>, ConvGeom),
}

impl<'a> DataGrad<'a> {
    fn new(w: &'a [f32], o: usize, g: ConvGeom) -> Self {
        if let Some(u) = winograd_for(&g, w, o, true) {
            return Self::Winograd(u, winograd::Tiles { h: g.h, w: g.w });
        }
        if direct::handles(g.k, g.stride, g.pad) {
            let pg = direct::Padded { h: g.h, w: g.w };
            return Self::Direct(direct::Packed::flipped(w, o, g.c, Some(pg)), pg);
        }
        Self::Gemm(Mat::transposed(w, g.col_rows(), o), g)
    }

    /// `dxi` `(C, H, W)`, overwritten, from `dyi` `(O, Ho, Wo)`.
    fn image(&self, dyi: &[f32], scratch: &mut Vec<f32>, dxi: &mut [f32]) {
        match self {
            Self::Winograd(u, tiles) => {
                winograd::conv_planes(dyi, u, None, false, *tiles, scratch, dxi);
            }
            Self::Direct(packed, pg) => {
                direct::conv_image(dyi, packed, None, *pg, false, scratch, dxi);
            }
            Self::Gemm(wt, g) => {
                let (kk, hw) = (g.col_rows(), g.col_cols());
                let dyi = Mat::row_major(dyi, dyi.len() / hw, hw);
                if g.is_pointwise() {
                    slice::matmul(dxi, *wt, dyi, false, 1);
                } else {
                    scratch.resize(kk * hw, 0.0);
                    slice::matmul(scratch, *wt, dyi, false, 1);
                    slice::col2im(scratch, g, dxi);
                }
            }
        }
    }
}

/// Input gradient of a convolution: `(grad (N, O, Ho, Wo), w) -> (N, C, H, W)`.
struct ConvBwdData {
    stride: usize,
    pad: usize,
    c: usize,
    h: usize,
    w: usize,
}

impl CustomOp2 for ConvBwdData {
    fn name(&self) -> &'static str {
        "fast-conv2d-bwd-data"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (dy, w) = (slice(s1, l1)?, slice(s2, l2)?);
        let (n, o, _, _) = dims4(l1, "conv2d grad")?;
        let wdims = dims4(l2, "conv2d kernel")?;
        let g = conv_geom((n, self.c, self.h, self.w), wdims, self.stride, self.pad)?;
        let out_size = o * g.col_cols();
        let grad = DataGrad::new(w, o, g);
        let dx = par_output(n, g.c * g.h * g.w, 0, Vec::new, |scratch, i, dxi| {
            grad.image(&dy[i * out_size..(i + 1) * out_size], scratch, dxi);
        });
        Ok((
            CpuStorage::F32(dx),
            Shape::from((n, self.c, self.h, self.w)),
        ))
    }
}

/// Flat positions per plane from which [`ConvBwdFilter`] uses the direct
/// kernel gradient (about a 30x30 image; ARCH-1's 48x48 stem).
const DIRECT_GRAD_MIN_POSITIONS: usize = 1000;

/// A convolution's kernel gradient, accumulated one image at a time.
struct FilterGrad {
    g: ConvGeom,
    o: usize,
    /// The direct kernel gradient (3x3 stride 1 padding 1 on large planes: it
    /// ends each (output, input) channel pair in nine horizontal sums), else
    /// im2col + GEMM.
    direct: Option<direct::Padded>,
}

/// Per-thread buffers of [`FilterGrad::image`].
#[derive(Default)]
struct FilterScratch {
    xp: Vec<f32>,
    dyf: Vec<f32>,
    col: Vec<f32>,
}

impl FilterGrad {
    fn new(g: ConvGeom, o: usize) -> Self {
        let pg = direct::Padded { h: g.h, w: g.w };
        let direct = (direct::handles(g.k, g.stride, g.pad)
            && pg.out_len() >= DIRECT_GRAD_MIN_POSITIONS)
            .then_some(pg);
        Self { g, o, direct }
    }

    /// Values of the kernel gradient `(O, C, k, k)`.
    fn len(&self) -> usize {
        self.o * self.g.col_rows()
    }

    /// Adds image `xi` `(C, H, W)`'s contribution, given its output gradient
    /// `dyi` `(O, Ho, Wo)`, to `acc`.
    fn image(&self, xi: &[f32], dyi: &[f32], s: &mut FilterScratch, acc: &mut [f32]) {
        let (g, o) = (&self.g, self.o);
        let (kk, hw) = (g.col_rows(), g.col_cols());
        if let Some(pg) = self.direct {
            s.xp.resize(g.c * pg.plane(), 0.0);
            s.dyf.resize(o * pg.out_len(), 0.0);
            pg.pad(xi, g.c, &mut s.xp);
            pg.flatten(dyi, o, &mut s.dyf);
            direct::conv_grad_kernel(&s.xp, &s.dyf, o, g.c, pg, acc);
            return;
        }
        let dyi = Mat::row_major(dyi, o, hw);
        if g.is_pointwise() {
            slice::matmul(acc, dyi, Mat::transposed(xi, hw, kk), true, 1);
        } else {
            s.col.resize(kk * hw, 0.0);
            slice::im2col(xi, g, &mut s.col);
            slice::matmul(acc, dyi, Mat::transposed(&s.col, hw, kk), true, 1);
        }
    }
}

/// Sums per-thread partial gradients.
fn sum_parts(len: usize, parts: impl IntoIterator<Item = Vec<f32>>) -> Vec<f32> {
    let mut total = vec![0f32; len];
    for p in parts {
        for (a, b) in total.iter_mut().zip(p) {
            *a += b;
        }
    }
    total
}

/// Kernel gradient of a convolution: `(x (N, C, H, W), grad) -> (O, C, k, k)`.
struct ConvBwdFilter {
    stride: usize,
    pad: usize,
    k: usize,
}

impl CustomOp2 for ConvBwdFilter {
    fn name(&self) -> &'static str {
        "fast-conv2d-bwd-filter"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (slice(s1, l1)?, slice(s2, l2)?);
        let xd = dims4(l1, "conv2d input")?;
        let (_, o, _, _) = dims4(l2, "conv2d grad")?;
        let g = conv_geom(xd, (o, xd.1, self.k, self.k), self.stride, self.pad)?;
        let n = xd.0;
        let (in_size, out_size) = (g.c * g.h * g.w, o * g.col_cols());
        let grad = FilterGrad::new(g, o);
        let parts: Vec<Vec<f32>> = ranges(n, num_threads())
            .into_par_iter()
            .map(|r| {
                let (mut acc, mut s) = (vec![0f32; grad.len()], FilterScratch::default());
                for i in r {
                    let (xi, dyi) = (
                        &x[i * in_size..(i + 1) * in_size],
                        &dy[i * out_size..(i + 1) * out_size],
                    );
                    grad.image(xi, dyi, &mut s, &mut acc);
                }
                acc
            })
            .collect();
        let dw = sum_parts(grad.len(), parts);
        Ok((CpuStorage::F32(dw), Shape::from((o, g.c, self.k, self.k))))
    }
}

// ---------------------------------------------------------------------------
// Depthwise convolution

/// Depthwise 3x3 convolution (stride 1, padding 1, multiplier 1) of `x`
/// `(N, C, H, W)` with `w` `(C, 1, 3, 3)`.
pub fn depthwise3x3(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !use_fast_path(&[x, w]) {
        let c = x.dim(1)?;
        return x.conv2d(w, 1, 1, 1, c);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, DepthwiseOp)
}

struct DepthwiseOp;

fn check_depthwise(xd: (usize, usize, usize, usize), l2: &Layout) -> Result<()> {
    if l2.dims() != [xd.1, 1, 3, 3] {
        bail!(
            "depthwise3x3: kernel {:?} does not fit {} channels",
            l2.dims(),
            xd.1
        );
    }
    Ok(())
}

impl CustomOp2 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "fast-depthwise3x3"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1)?, slice(s2, l2)?);
        let xd = dims4(l1, "depthwise input")?;
        check_depthwise(xd, l2)?;
        let (n, c, h, wd) = xd;
        let size = c * h * wd;
        let y = par_output(
            n,
            size,
            0,
            || (),
            |_, i, yi| {
                slice::depthwise3x3(&x[i * size..(i + 1) * size], w, c, h, wd, yi);
            },
        );
        Ok((CpuStorage::F32(y), Shape::from(xd)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, wd) = x.dims4()?;
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &DepthwiseBwd)?;
        let len = n * c * h * wd;
        let dx = packed.narrow(0, 0, len)?.reshape((n, c, h, wd))?;
        let dw = owned_part(&packed, len, c * 9)?.reshape((c, 1, 3, 3))?;
        Ok((Some(dx), Some(dw)))
    }
}

/// Both depthwise gradients in one pass, packed as `[dx..., dw...]`.
struct DepthwiseBwd;

impl CustomOp3 for DepthwiseBwd {
    fn name(&self) -> &'static str {
        "fast-depthwise3x3-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, dy) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let xd = dims4(l1, "depthwise input")?;
        check_depthwise(xd, l2)?;
        let (n, c, h, wd) = xd;
        let size = c * h * wd;
        let mut dx = vec![0f32; n * size + c * 9];
        let (dx_part, _) = dx.split_at_mut(n * size);
        let dws: Vec<Vec<f32>> = dx_part
            .par_chunks_mut(size)
            .enumerate()
            .map(|(i, dxi)| {
                let mut dw = vec![0f32; c * 9];
                let r = i * size..(i + 1) * size;
                slice::depthwise3x3_backward(&x[r.clone()], w, &dy[r], c, h, wd, dxi, &mut dw);
                dw
            })
            .collect();
        let tail = &mut dx[n * size..];
        for dw in dws {
            for (a, b) in tail.iter_mut().zip(dw) {
                *a += b;
            }
        }
        let len = dx.len();
        Ok((CpuStorage::F32(dx), Shape::from(len)))
    }
}

// ---------------------------------------------------------------------------
// Max-pooling

/// 2x2 max-pooling with stride 2 of `x` `(N, C, H, W)`.
pub fn max_pool2(x: &Tensor) -> Result<Tensor> {
    pool(x, false)
}

/// [`max_pool2`] followed by ReLU, in one pass.
pub fn max_pool2_relu(x: &Tensor) -> Result<Tensor> {
    pool(x, true)
}

fn pool(x: &Tensor, relu: bool) -> Result<Tensor> {
    if !fast_ops() {
        // Stock mode (benchmarks, cross-checks): candle's own op, as it is.
        let y = x.max_pool2d(2)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    if !use_fast_path(&[x]) {
        // Other devices: not `max_pool2d`, whose backward in candle 0.11 scales
        // gradients by 1/4.
        let (n, c, h, w) = x.dims4()?;
        let x = x.narrow(2, 0, h / 2 * 2)?.narrow(3, 0, w / 2 * 2)?;
        let y = x.reshape((n, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)?;
        return if relu { y.relu() } else { Ok(y) };
    }
    x.contiguous()?.apply_op1(MaxPool2Op { relu })
}

/// One image's 2x2 max-pooling of `c` planes of `h x w` into `y`, then ReLU
/// when `relu` is set.
fn pool_image(x: &[f32], (c, h, w): (usize, usize, usize), relu: bool, y: &mut [f32]) {
    slice::maxpool2(x, c, h, w, y);
    if relu {
        for v in y.iter_mut() {
            *v = v.max(0.0);
        }
    }
}

struct MaxPool2Op {
    relu: bool,
}

impl CustomOp1 for MaxPool2Op {
    fn name(&self) -> &'static str {
        "fast-maxpool2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let (n, c, h, w) = dims4(l, "max_pool2 input")?;
        let (ho, wo) = (h / 2, w / 2);
        let y = par_output(
            n,
            c * ho * wo,
            0,
            || (),
            |_, i, yi| {
                pool_image(
                    &x[i * c * h * w..(i + 1) * c * h * w],
                    (c, h, w),
                    self.relu,
                    yi,
                );
            },
        );
        Ok((CpuStorage::F32(y), Shape::from((n, c, ho, wo))))
    }

    fn bwd(&self, x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = MaxPool2Bwd { relu: self.relu };
        Ok(Some(x.apply_op3_no_bwd(res, &grad.contiguous()?, &op)?))
    }
}

/// `(x, y, dy) -> dx` for [`MaxPool2Op`]; with `relu`, windows whose output is
/// not positive pass no gradient.
struct MaxPool2Bwd {
    relu: bool,
}

impl CustomOp3 for MaxPool2Bwd {
    fn name(&self) -> &'static str {
        "fast-maxpool2-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, y, dy) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (n, c, h, w) = dims4(l1, "max_pool2 input")?;
        let (ho, wo) = (h / 2, w / 2);
        let size = c * h * w;
        let osize = c * ho * wo;
        let dx = par_output(
            n,
            size,
            0,
            || (),
            |_, i, dxi| {
                let (r, o) = (i * size..(i + 1) * size, i * osize..(i + 1) * osize);
                let yi = self.relu.then(|| &y[o.clone()]);
                slice::maxpool2_backward(&x[r], &dy[o], yi, c, h, w, dxi);
            },
        );
        Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))))
    }
}

// ---------------------------------------------------------------------------
// BatchNorm (train mode)

/// Per-channel batch statistics of the last train-mode forward pass.
#[derive(Debug, Clone, Default)]
pub struct BatchStats {
    /// Batch mean per channel.
    pub mean: Vec<f32>,
    /// Biased batch variance per channel.
    pub var: Vec<f32>,
}

/// Train-mode BatchNorm of `x` `(N, C, H, W)` with the batch statistics,
/// `y = [relu]((x - mean) / sqrt(var + eps) * gamma + beta)`. Returns `y` and the
/// statistics used (for the moving averages).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, BatchStats)> {
    if !use_fast_path(&[x, gamma, beta]) {
        let mean = x.mean_keepdim((0, 2, 3))?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
        let shape = (1, gamma.dim(0)?, 1, 1);
        let y = centred
            .broadcast_mul(&(&var + eps)?.sqrt()?.recip()?)?
            .broadcast_mul(&gamma.reshape(shape)?)?
            .broadcast_add(&beta.reshape(shape)?)?;
        let y = if relu { y.relu()? } else { y };
        let stats = BatchStats {
            mean: mean.flatten_all()?.to_vec1()?,
            var: var.flatten_all()?.to_vec1()?,
        };
        return Ok((y, stats));
    }
    let stats = Arc::new(Mutex::new(BatchStats::default()));
    let op = BnTrainOp {
        eps,
        relu,
        stats: stats.clone(),
    };
    let y = x
        .contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let stats = lock(&stats)?.clone();
    Ok((y, stats))
}

struct BnTrainOp {
    eps: f64,
    relu: bool,
    stats: Arc<Mutex<BatchStats>>,
}

/// Mean and biased variance of each channel (two passes; per-plane sums in
/// vectorised `f32`, accumulated across planes in `f64`).
fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize) -> (Vec<f32>, Vec<f32>) {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let plane = |i: usize| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw];
            let count = (n * hw) as f64;
            let mean = (0..n).map(|i| f64::from(slice::sum(plane(i)))).sum::<f64>() / count;
            let m = mean as f32;
            let sq: f64 = (0..n)
                .map(|i| f64::from(slice::sum_sq_dev(plane(i), m)))
                .sum();
            (m, (sq / count) as f32)
        })
        .unzip()
}

/// Train-mode BatchNorm of `x` `(N, C, H, W)`, then ReLU or max-pooling +
/// ReLU: the output and the batch statistics it used. Under pooling, each
/// image's BatchNorm output is made in a scratch buffer and not kept.
fn bn_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    [n, c, h, w]: [usize; 4],
    eps: f64,
    then: BnThen,
) -> (Vec<f32>, BatchStats) {
    let hw = h * w;
    let (mean, var) = channel_stats(x, n, c, hw);
    let stats = BatchStats { mean, var };
    let (scale, shift) = bn_affine(gamma, beta, &stats, eps);
    let size = c * hw;
    let image = |i: usize| &x[i * size..(i + 1) * size];
    let y = if then == BnThen::PoolRelu {
        par_output(n, c * (h / 2) * (w / 2), 0, Vec::new, |full, i, yi| {
            full.resize(size, 0.0);
            slice::affine_channels(image(i), &scale, &shift, 1, c, hw, false, full);
            pool_image(full, (c, h, w), true, yi);
        })
    } else {
        let relu = then == BnThen::Relu;
        par_output(
            n,
            size,
            0,
            || (),
            |_, i, yi| {
                slice::affine_channels(image(i), &scale, &shift, 1, c, hw, relu, yi);
            },
        )
    };
    (y, stats)
}

/// Train-mode BatchNorm as `y = x * scale + shift` per channel.
fn bn_affine(gamma: &[f32], beta: &[f32], stats: &BatchStats, eps: f64) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = (0..gamma.len())
        .map(|i| gamma[i] / (f64::from(stats.var[i]) + eps).sqrt() as f32)
        .collect();
    let shift = (0..gamma.len())
        .map(|i| beta[i] - stats.mean[i] * scale[i])
        .collect();
    (scale, shift)
}

impl CustomOp3 for BnTrainOp {
    fn name(&self) -> &'static str {
        "fast-batchnorm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, gamma, beta) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (n, c, h, w) = dims4(l1, "batch_norm input")?;
        if gamma.len() != c || beta.len() != c {
            bail!(
                "batch_norm: {c} channels but gamma/beta have {}/{}",
                gamma.len(),
                beta.len()
            );
        }
        let then = if self.relu {
            BnThen::Relu
        } else {
            BnThen::Nothing
        };
        let (y, stats) = bn_forward(x, gamma, beta, [n, c, h, w], self.eps, then);
        *lock(&self.stats)? = stats;
        Ok((CpuStorage::F32(y), Shape::from((n, c, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let st = lock(&self.stats)?.clone();
        let op = BnTrainBwd(BnGrad::new(gamma.to_vec1()?, st, self.eps, self.relu));
        let (n, c, h, w) = x.dims4()?;
        let packed = x.apply_op3_no_bwd(res, &grad.contiguous()?, &op)?;
        let len = n * c * h * w;
        let dx = packed.narrow(0, 0, len)?.reshape((n, c, h, w))?;
        let dgamma = owned_part(&packed, len, c)?;
        let dbeta = owned_part(&packed, len + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// Train-mode BatchNorm's backward pass, one image at a time once the
/// per-channel sums over the batch are known.
struct BnGrad {
    gamma: Vec<f32>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    relu: bool,
}

impl BnGrad {
    fn new(gamma: Vec<f32>, stats: BatchStats, eps: f64, relu: bool) -> Self {
        let inv_std = stats
            .var
            .iter()
            .map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32)
            .collect();
        Self {
            gamma,
            mean: stats.mean,
            inv_std,
            relu,
        }
    }

    /// Per channel, over the batch: `(sum(g), sum(g * xhat))`, the gradients
    /// of beta and gamma (`g = dy`, masked by `y > 0` under ReLU).
    fn sums(&self, x: &[f32], y: &[f32], dy: &[f32], [n, c, hw]: [usize; 3]) -> Vec<(f64, f64)> {
        (0..c)
            .into_par_iter()
            .map(|ch| {
                (0..n).fold((0f64, 0f64), |acc, i| {
                    let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                    self.add_plane(ch, (&x[r.clone()], &y[r.clone()], &dy[r]), acc)
                })
            })
            .collect()
    }

    /// Adds one image's `(x, y, dy)` planes to the per-channel [`sums`](Self::sums).
    fn add_sums(&self, (x, y, dy): (&[f32], &[f32], &[f32]), acc: &mut [(f64, f64)]) {
        let hw = x.len() / acc.len().max(1);
        for (ch, a) in acc.iter_mut().enumerate() {
            let r = ch * hw..(ch + 1) * hw;
            *a = self.add_plane(ch, (&x[r.clone()], &y[r.clone()], &dy[r]), *a);
        }
    }

    /// `acc` plus channel `ch`'s sums over one plane.
    fn add_plane(
        &self,
        ch: usize,
        (x, y, dy): (&[f32], &[f32], &[f32]),
        acc: (f64, f64),
    ) -> (f64, f64) {
        let (m, s) = (self.mean[ch], self.inv_std[ch]);
        let (sg, sgx) = slice::bn_backward_sums(x, y, dy, m, s, self.relu);
        (acc.0 + f64::from(sg), acc.1 + f64::from(sgx))
    }

    /// One image's input gradient `dxi` `(C, HW)` (overwritten) from its
    /// `(x, y, dy)` planes and the batch [`sums`](Self::sums) over `count`
    /// values per channel.
    fn image(
        &self,
        (x, y, dy): (&[f32], &[f32], &[f32]),
        sums: &[(f64, f64)],
        count: f64,
        dxi: &mut [f32],
    ) {
        let hw = dxi.len() / sums.len().max(1);
        for (ch, &(sg, sgx)) in sums.iter().enumerate() {
            let s = self.inv_std[ch];
            let coef = (
                self.mean[ch],
                s,
                self.gamma[ch] * s,
                (sg / count) as f32,
                (sgx / count) as f32,
            );
            let r = ch * hw..(ch + 1) * hw;
            slice::bn_backward_dx(
                &x[r.clone()],
                &y[r.clone()],
                &dy[r.clone()],
                coef,
                self.relu,
                &mut dxi[r],
            );
        }
    }
}

/// `dgamma` then `dbeta` from [`BnGrad::sums`].
fn bn_param_grads(sums: &[(f64, f64)], out: &mut [f32]) {
    let c = sums.len();
    for (ch, &(sg, sgx)) in sums.iter().enumerate() {
        out[ch] = sgx as f32;
        out[c + ch] = sg as f32;
    }
}

/// BatchNorm backward `(x, y, dy) -> [dx..., dgamma..., dbeta...]`.
struct BnTrainBwd(BnGrad);

impl CustomOp3 for BnTrainBwd {
    fn name(&self) -> &'static str {
        "fast-batchnorm-train-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, y, dy) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (n, c, h, w) = dims4(l1, "batch_norm input")?;
        let hw = h * w;
        let sums = self.0.sums(x, y, dy, [n, c, hw]);
        let size = c * hw;
        let mut out = par_output(
            n,
            size,
            2 * c,
            || (),
            |_, i, dxi| {
                let r = i * size..(i + 1) * size;
                let planes = (&x[r.clone()], &y[r.clone()], &dy[r]);
                self.0.image(planes, &sums, (n * hw) as f64, dxi);
            },
        );
        bn_param_grads(&sums, &mut out[n * size..]);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests;

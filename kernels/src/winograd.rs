//! Winograd F(2x2, 3x3) convolution (3x3, stride 1, padding 1) for small
//! planes: the inference engine's 12x12 and 6x6 layers, and the training
//! graph's forward pass and input gradient on the same layers.
//!
//! Each 2x2 block of outputs ("tile") is computed from the 4x4 input patch
//! around it as `A^T [ (G g G^T) . (B^T d B) ] A`: the kernel `g` and the patch
//! `d` are transformed into 16 values each, multiplied point by point and
//! summed over input channels, and the 16 sums transformed back into the 2x2
//! outputs. Summed over channels, the middle step is 16 independent matrix
//! products `(O x C) x (C x tiles)`, which is 16 multiply-adds per tile and
//! channel pair where the direct convolution does 36: 2.25x fewer. The
//! transforms add a few adds per tile and channel, small next to that from
//! 32 channels up. The arithmetic differs from the direct convolution's only
//! by rounding (the transforms' coefficients are 0, +-1 and 1/2).
//!
//! Activations are kept in a *blocked* layout: channel `c` of pixel `(y, x)`
//! is at `((c / 16 * h + y) * w + x) * 16 + c % 16`, so the 16 channels of a
//! block at one pixel are one contiguous run (two AVX2 vectors). The input
//! transform reads and the output transform writes whole runs, and a range
//! of output blocks is one contiguous range of the output, which is what
//! lets two threads split a layer by output blocks.

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
use crate::slice::has_avx2_fma;
use crate::slice::multiversion;

/// Channels per block of the blocked layout, and output channels per block
/// of the weights.
pub const BLOCK: usize = 16;
/// Tiles per step of the matrix product: 6 tiles x 2 vectors of outputs
/// accumulate in 12 AVX2 registers, two more hold the weights and one the
/// broadcast input, 15 of the 16.
const TB: usize = 6;
/// Values per tile in the transformed domain (4x4).
const P: usize = 16;

/// The tiles of an `h x w` plane: `ceil(h / 2) x ceil(w / 2)` blocks of 2x2
/// outputs, the last row or column partly outside the plane when `h` or `w`
/// is odd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiles {
    /// Height of the plane.
    pub h: usize,
    /// Width of the plane.
    pub w: usize,
}

impl Tiles {
    fn rows(&self) -> usize {
        self.h.div_ceil(2)
    }

    fn cols(&self) -> usize {
        self.w.div_ceil(2)
    }

    /// Number of tiles.
    pub fn count(&self) -> usize {
        self.rows() * self.cols()
    }

    /// Length of the transformed input of `c` channels ([`transform_input`]).
    pub fn transformed_len(&self, c: usize) -> usize {
        P * self.count() * c
    }
}

/// Whether a convolution of `c` inputs and `o` outputs can run here: both
/// whole, non-empty numbers of [`BLOCK`]s (the blocked layout's unit).
pub fn fits(o: usize, c: usize) -> bool {
    o > 0 && c > 0 && o.is_multiple_of(BLOCK) && c.is_multiple_of(BLOCK)
}

/// A convolution's weights in the transformed domain, `G g G^T` for each
/// `(output, input)` pair, laid out `[output block][16 values][input][16
/// outputs of the block]`, so that the product reads 16 consecutive floats
/// per input channel.
#[derive(Debug, Clone)]
pub struct Winograd {
    u: Vec<f32>,
    o: usize,
    c: usize,
}

impl Winograd {
    /// Transforms weights `w` `(o, c, 3, 3)`; `None` unless [`fits`].
    ///
    /// # Panics
    /// If `w` is shorter than `o * c * 9`.
    pub fn new(w: &[f32], o: usize, c: usize) -> Option<Self> {
        Self::from_kernel(w, o, c, false)
    }

    /// The weights of a convolution's input gradient: the convolution of the
    /// output gradient (`o` channels) with `w` `(o, c, 3, 3)` transposed and
    /// flipped, `c` outputs. `None` unless [`fits`].
    ///
    /// # Panics
    /// If `w` is shorter than `o * c * 9`.
    pub fn flipped(w: &[f32], o: usize, c: usize) -> Option<Self> {
        Self::from_kernel(w, o, c, true)
    }

    /// [`Winograd::new`], or [`Winograd::flipped`] if `flip`: output `a` of
    /// the gradient reads input `b` through `w[b][a]`, flipped.
    fn from_kernel(w: &[f32], o: usize, c: usize, flip: bool) -> Option<Self> {
        let (outs, ins) = if flip { (c, o) } else { (o, c) };
        if !fits(outs, ins) {
            return None;
        }
        assert!(w.len() >= o * c * 9, "winograd: weights too short");
        let kernel = |a: usize, b: usize| {
            let (oi, ci) = if flip { (b, a) } else { (a, b) };
            &w[(oi * c + ci) * 9..][..9]
        };
        Some(Self::transform(outs, ins, kernel, flip))
    }

    /// `G g G^T` for every pair, `g` from `kernel(output, input)` (row-major
    /// 3x3, read back to front if `flip`), written block by block: the 16
    /// outputs of a block and one input are computed together and stored as
    /// 16 runs, so that the writes are sequential (scattered single-float
    /// writes made this take longer than the product at batch 1).
    fn transform<'a>(
        o: usize,
        c: usize,
        kernel: impl Fn(usize, usize) -> &'a [f32],
        flip: bool,
    ) -> Self {
        let mut u = vec![0f32; P * o * c];
        let mut run = [[0f32; BLOCK]; P];
        for ob in 0..o / BLOCK {
            for ci in 0..c {
                for (l, oi) in (ob * BLOCK..(ob + 1) * BLOCK).enumerate() {
                    let k = kernel(oi, ci);
                    let g = |t: usize| if flip { k[8 - t] } else { k[t] };
                    // G g: 4 rows of 3, built column by column.
                    let col = |j: usize| {
                        let (g0, g1, g2) = (g(j), g(3 + j), g(6 + j));
                        [g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2]
                    };
                    let cols = [col(0), col(1), col(2)];
                    let gg: [[f32; 3]; 4] = std::array::from_fn(|i| cols.map(|c| c[i]));
                    // (G g) G^T: 4 x 4.
                    for (i, r) in gg.iter().enumerate() {
                        run[i * 4][l] = r[0];
                        run[i * 4 + 1][l] = 0.5 * (r[0] + r[1] + r[2]);
                        run[i * 4 + 2][l] = 0.5 * (r[0] - r[1] + r[2]);
                        run[i * 4 + 3][l] = r[2];
                    }
                }
                for (p, r) in run.iter().enumerate() {
                    let at = ((ob * P + p) * c + ci) * BLOCK;
                    u[at..at + BLOCK].copy_from_slice(r);
                }
            }
        }
        Self { u, o, c }
    }

    /// Number of output channels.
    pub fn outputs(&self) -> usize {
        self.o
    }

    /// Number of input channels.
    pub fn inputs(&self) -> usize {
        self.c
    }

    /// Number of output blocks (`outputs() / 16`).
    pub fn blocks(&self) -> usize {
        self.o / BLOCK
    }
}

/// Copies `c` planes `(h * w)` from `x` into the blocked layout in `y`
/// (`c` a multiple of [`BLOCK`]).
///
/// # Panics
/// If `c` is not a multiple of [`BLOCK`] or a slice is too short.
pub fn to_blocked(x: &[f32], c: usize, hw: usize, y: &mut [f32]) {
    relayout(x, c, hw, y, true);
}

/// The inverse of [`to_blocked`].
///
/// # Panics
/// As [`to_blocked`].
pub fn from_blocked(x: &[f32], c: usize, hw: usize, y: &mut [f32]) {
    relayout(x, c, hw, y, false);
}

/// Where channel `ci` of pixel `px` (of `hw` per plane) sits in the blocked
/// layout.
#[inline(always)]
pub fn blocked_index(ci: usize, px: usize, hw: usize) -> usize {
    ((ci / BLOCK) * hw + px) * BLOCK + ci % BLOCK
}

/// [`to_blocked`] if `to`, else [`from_blocked`].
fn relayout(x: &[f32], c: usize, hw: usize, y: &mut [f32], to: bool) {
    assert!(
        c.is_multiple_of(BLOCK),
        "winograd: channels not whole blocks"
    );
    assert!(
        x.len() >= c * hw && y.len() >= c * hw,
        "winograd: slices too short"
    );
    for ci in 0..c {
        for px in 0..hw {
            let (planar, blocked) = (ci * hw + px, blocked_index(ci, px, hw));
            if to {
                y[blocked] = x[planar];
            } else {
                y[planar] = x[blocked];
            }
        }
    }
}

type Run = [f32; BLOCK];

#[inline(always)]
fn zip(a: &Run, b: &Run, f: impl Fn(f32, f32) -> f32) -> Run {
    std::array::from_fn(|l| f(a[l], b[l]))
}

/// The input transform `B^T d B` of one block of 16 channels of one tile,
/// `d` its 4x4 patch (row-major), into the 16 values of the result.
#[inline(always)]
fn input_tile(d: &[Run; P]) -> [Run; P] {
    let sub = |a: &Run, b: &Run| zip(a, b, |x, y| x - y);
    let add = |a: &Run, b: &Run| zip(a, b, |x, y| x + y);
    // B^T d: combine rows.
    let mut e = [[0f32; BLOCK]; P];
    for j in 0..4 {
        let (d0, d1, d2, d3) = (&d[j], &d[4 + j], &d[8 + j], &d[12 + j]);
        e[j] = sub(d0, d2);
        e[4 + j] = add(d1, d2);
        e[8 + j] = sub(d2, d1);
        e[12 + j] = sub(d1, d3);
    }
    // (B^T d) B: combine columns.
    let mut f = [[0f32; BLOCK]; P];
    for i in 0..4 {
        let r = &e[4 * i..4 * i + 4];
        f[4 * i] = sub(&r[0], &r[2]);
        f[4 * i + 1] = add(&r[1], &r[2]);
        f[4 * i + 2] = sub(&r[2], &r[1]);
        f[4 * i + 3] = sub(&r[1], &r[3]);
    }
    f
}

multiversion! {
    /// The input transform of a layer: `x` is `c` channels of `g.h x g.w` in
    /// the blocked layout; `v` (at least [`Tiles::transformed_len`]`(c)`
    /// values) receives `B^T d B` laid out `[16 values][tile][channel]`. Tile
    /// `t` covers output rows `2 * (t / cols)..` and columns `2 * (t % cols)..`,
    /// `cols` being `ceil(w / 2)`.
    ///
    /// # Panics
    /// If `c` is not a multiple of [`BLOCK`] or a slice is too short.
    pub fn transform_input(x: &[f32], c: usize, g: Tiles, v: &mut [f32]) {
        assert!(c.is_multiple_of(BLOCK), "winograd: channels not whole blocks");
        assert!(
            x.len() >= c * g.h * g.w && v.len() >= g.transformed_len(c),
            "winograd: slices too short for the input transform"
        );
        let (h, w, cols, n) = (g.h, g.w, g.cols(), g.count());
        let zero = [0f32; BLOCK];
        for cb in 0..c / BLOCK {
            let xb = &x[cb * h * w * BLOCK..(cb + 1) * h * w * BLOCK];
            for t in 0..n {
                let (ty, tx) = (t / cols, t % cols);
                let mut d = [zero; P];
                for (i, row) in d.chunks_exact_mut(4).enumerate() {
                    let Some(iy) = (2 * ty + i).checked_sub(1).filter(|&y| y < h) else {
                        continue;
                    };
                    for (j, run) in row.iter_mut().enumerate() {
                        if let Some(ix) = (2 * tx + j).checked_sub(1).filter(|&x| x < w) {
                            let at = (iy * w + ix) * BLOCK;
                            run.copy_from_slice(&xb[at..at + BLOCK]);
                        }
                    }
                }
                for (p, run) in input_tile(&d).iter().enumerate() {
                    let at = (p * n + t) * c + cb * BLOCK;
                    v[at..at + BLOCK].copy_from_slice(run);
                }
            }
        }
    }
}

/// The 16 transformed values of up to [`TB`] tiles for one output block.
type Sums = [[Run; TB]; P];

/// The products for one transformed value `p` of up to [`TB`] tiles:
/// `m[k][l] = sum over ci of u[ci * 16 + l] * v[k * c + ci]` for `k < NT`,
/// where `u` is the output block's `[input][16]` weights at `p` and `v` the
/// transformed inputs at `p` of the tiles, from the first (`c` per tile).
#[inline(always)]
fn products_portable<const NT: usize>(u: &[f32], v: &[f32], c: usize, m: &mut [Run; TB]) {
    for (k, acc) in m.iter_mut().enumerate().take(NT) {
        *acc = [0.0; BLOCK];
        for ci in 0..c {
            let x = v[k * c + ci];
            let w = &u[ci * BLOCK..][..BLOCK];
            for (a, &wl) in acc.iter_mut().zip(w) {
                *a += wl * x;
            }
        }
    }
}

/// [`products_portable`] with the 12 accumulators in AVX2 registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn products_avx2<const NT: usize>(u: &[f32], v: &[f32], c: usize, m: &mut [Run; TB]) {
    use std::arch::x86_64::*;
    assert!(
        NT <= TB && u.len() >= c * BLOCK && v.len() >= NT * c,
        "winograd: product slices too short"
    );
    let (up, vp) = (u.as_ptr(), v.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; NT];
    for ci in 0..c {
        // SAFETY: `ci * 16 + 16 <= c * 16 <= u.len()` (asserted).
        let (u0, u1) = unsafe {
            (
                _mm256_loadu_ps(up.add(ci * BLOCK)),
                _mm256_loadu_ps(up.add(ci * BLOCK + 8)),
            )
        };
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: `k * c + ci < NT * c <= v.len()` (asserted).
            let x = unsafe { _mm256_broadcast_ss(&*vp.add(k * c + ci)) };
            a[0] = _mm256_fmadd_ps(u0, x, a[0]);
            a[1] = _mm256_fmadd_ps(u1, x, a[1]);
        }
    }
    for (dst, a) in m.iter_mut().zip(acc) {
        // SAFETY: `dst` is 16 floats; the two stores write 8 each.
        unsafe {
            _mm256_storeu_ps(dst.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(dst.as_mut_ptr().add(8), a[1]);
        }
    }
}

/// The output transform `A^T m A` of tile `k` of `m`, plus `bias`, ReLU if
/// `relu`: the 2x2 outputs, row-major.
#[inline(always)]
fn output_tile(m: &Sums, k: usize, bias: &Run, relu: bool) -> [Run; 4] {
    let mut s = [[0f32; BLOCK]; 8];
    for j in 0..4 {
        let (m0, m1, m2, m3) = (&m[j][k], &m[4 + j][k], &m[8 + j][k], &m[12 + j][k]);
        for l in 0..BLOCK {
            s[j][l] = m0[l] + m1[l] + m2[l];
            s[4 + j][l] = m1[l] - m2[l] - m3[l];
        }
    }
    let mut y = [[0f32; BLOCK]; 4];
    for (i, r) in s.chunks_exact(4).enumerate() {
        for l in 0..BLOCK {
            let a = r[0][l] + r[1][l] + r[2][l] + bias[l];
            let b = r[1][l] - r[2][l] - r[3][l] + bias[l];
            y[2 * i][l] = if relu { a.max(0.0) } else { a };
            y[2 * i + 1][l] = if relu { b.max(0.0) } else { b };
        }
    }
    y
}

/// Body of [`multiply`], compiled twice; `FAST` picks the AVX2 products.
#[inline(always)]
fn multiply_body<const FAST: bool>(
    u: &Winograd,
    v: &[f32],
    g: Tiles,
    blocks: Range<usize>,
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    let (c, n, cols, hw) = (u.c, g.count(), g.cols(), g.h * g.w);
    let mut m: Sums = [[[0.0; BLOCK]; TB]; P];
    for (yi, ob) in blocks.enumerate() {
        let ub = &u.u[ob * P * c * BLOCK..(ob + 1) * P * c * BLOCK];
        let yb = &mut y[yi * hw * BLOCK..(yi + 1) * hw * BLOCK];
        let b: Run = std::array::from_fn(|l| bias.map_or(0.0, |b| b[ob * BLOCK + l]));
        for t0 in (0..n).step_by(TB) {
            let nt = (n - t0).min(TB);
            for (p, mp) in m.iter_mut().enumerate() {
                let up = &ub[p * c * BLOCK..(p + 1) * c * BLOCK];
                let vp = &v[(p * n + t0) * c..(p * n + t0 + nt) * c];
                products::<FAST>(nt, up, vp, c, mp);
            }
            for k in 0..nt {
                let t = t0 + k;
                let (oy, ox) = (2 * (t / cols), 2 * (t % cols));
                for (q, run) in output_tile(&m, k, &b, relu).iter().enumerate() {
                    let (yy, xx) = (oy + q / 2, ox + q % 2);
                    if yy < g.h && xx < g.w {
                        let at = (yy * g.w + xx) * BLOCK;
                        yb[at..at + BLOCK].copy_from_slice(run);
                    }
                }
            }
        }
    }
}

/// Dispatches the products of `nt` tiles to the kernel for that count.
#[inline(always)]
fn products<const FAST: bool>(nt: usize, u: &[f32], v: &[f32], c: usize, m: &mut [Run; TB]) {
    macro_rules! by_count {
        ($f:ident) => {
            match nt {
                1 => $f::<1>(u, v, c, m),
                2 => $f::<2>(u, v, c, m),
                3 => $f::<3>(u, v, c, m),
                4 => $f::<4>(u, v, c, m),
                5 => $f::<5>(u, v, c, m),
                _ => $f::<TB>(u, v, c, m),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    if FAST {
        debug_assert!(has_avx2_fma(), "winograd: AVX2 product without AVX2");
        // SAFETY: `FAST` is set only on paths that checked that this CPU has
        // AVX2 and FMA first: `multiply_avx2`, reached through `multiply`'s
        // check, and the product test, after its own check.
        unsafe { by_count!(products_avx2) };
        return;
    }
    by_count!(products_portable);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn multiply_avx2(
    u: &Winograd,
    v: &[f32],
    g: Tiles,
    blocks: Range<usize>,
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    multiply_body::<true>(u, v, g, blocks, bias, relu, y);
}

/// Output blocks `blocks` of the convolution whose transformed input is `v`
/// ([`transform_input`] of planes `g`): the products, the output transform,
/// `bias` (all `outputs()` values, if any) and ReLU if `relu`, into `y`, which holds
/// just those blocks in the blocked layout (`blocks.len() * 16 * h * w`
/// values).
///
/// # Panics
/// If the blocks are out of range or a slice is too short.
pub fn multiply(
    u: &Winograd,
    v: &[f32],
    g: Tiles,
    blocks: Range<usize>,
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    assert!(
        blocks.start <= blocks.end && blocks.end <= u.blocks(),
        "winograd: output blocks out of range"
    );
    assert!(
        v.len() >= g.transformed_len(u.c)
            && bias.is_none_or(|b| b.len() >= u.o)
            && y.len() >= blocks.len() * BLOCK * g.h * g.w,
        "winograd: slices too short for the product"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: this CPU has AVX2 and FMA (checked just above).
        return unsafe { multiply_avx2(u, v, g, blocks, bias, relu, y) };
    }
    multiply_body::<false>(u, v, g, blocks, bias, relu, y);
}

/// The convolution of one image on planes: `x` `(c, h, w)` into `y`
/// `(o, h, w)`, through the blocked layout, plus `bias` and ReLU if `relu`.
/// `scratch` holds the blocked input and output and the transformed input;
/// it grows on first use and is meant to be reused across calls.
///
/// # Panics
/// If a slice is too short for the shapes.
pub fn conv_planes(
    x: &[f32],
    u: &Winograd,
    bias: Option<&[f32]>,
    relu: bool,
    g: Tiles,
    scratch: &mut Vec<f32>,
    y: &mut [f32],
) {
    let (o, c, hw) = (u.o, u.c, g.h * g.w);
    let need = c * hw + g.transformed_len(c) + o * hw;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (xb, rest) = scratch.split_at_mut(c * hw);
    let (v, yb) = rest.split_at_mut(g.transformed_len(c));
    to_blocked(x, c, hw, xb);
    transform_input(xb, c, g, v);
    multiply(u, v, g, 0..u.blocks(), bias, relu, &mut yb[..o * hw]);
    from_blocked(yb, o, hw, y);
}

multiversion! {
    /// 2x2 max-pooling (stride 2, odd last row or column dropped) of blocks
    /// `blocks` of `h x w` blocked planes `x` into `y` (just those blocks).
    ///
    /// # Panics
    /// If a slice is too short.
    pub fn maxpool2(x: &[f32], blocks: Range<usize>, h: usize, w: usize, y: &mut [f32]) {
        let (ho, wo) = (h / 2, w / 2);
        assert!(
            x.len() >= blocks.end * h * w * BLOCK && y.len() >= blocks.len() * ho * wo * BLOCK,
            "winograd: slices too short for the pooling"
        );
        for (yi, cb) in blocks.enumerate() {
            let xb = &x[cb * h * w * BLOCK..(cb + 1) * h * w * BLOCK];
            let yb = &mut y[yi * ho * wo * BLOCK..(yi + 1) * ho * wo * BLOCK];
            for oy in 0..ho {
                for ox in 0..wo {
                    let at = |yy: usize, xx: usize| &xb[(yy * w + xx) * BLOCK..][..BLOCK];
                    let (a, b) = (at(2 * oy, 2 * ox), at(2 * oy, 2 * ox + 1));
                    let (c, d) = (at(2 * oy + 1, 2 * ox), at(2 * oy + 1, 2 * ox + 1));
                    let dst = &mut yb[(oy * wo + ox) * BLOCK..][..BLOCK];
                    for l in 0..BLOCK {
                        dst[l] = a[l].max(b[l]).max(c[l].max(d[l]));
                    }
                }
            }
        }
    }
}

multiversion! {
    /// The global average of a 3x3 convolution (stride 1, padding 1, bias, no
    /// activation) of `c` blocked planes `x` of `h x w`, without computing the
    /// convolution: the mean over positions of `sum w x` is `sum w S / (h w)`,
    /// where `S[ci][ky][kx]` is the sum of input channel `ci` over the window
    /// that tap `(ky, kx)` sees: the whole plane less the row and the column
    /// its offset pushes out (tap row 0 never reads the last row, tap row 2
    /// never the first; the same for columns), plus their corner, removed
    /// twice. `k` is the weights `(o, c, 3, 3)` and the bias; writes `o`
    /// values into `out`. `s` is scratch of at least `9 * c` values.
    ///
    /// # Panics
    /// If `c` is not a multiple of [`BLOCK`], the plane is empty or a slice is
    /// too short.
    pub fn conv3x3_mean(
        x: &[f32],
        c: usize,
        plane: (usize, usize),
        k: (&[f32], &[f32]),
        s: &mut [f32],
        out: &mut [f32],
    ) {
        let ((h, w), (wt, bias), o) = (plane, k, out.len());
        assert!(
            c.is_multiple_of(BLOCK) && h > 0 && w > 0,
            "winograd: bad shape for the averaged convolution"
        );
        assert!(
            x.len() >= c * h * w && wt.len() >= o * c * 9 && bias.len() >= o && s.len() >= 9 * c,
            "winograd: slices too short for the averaged convolution"
        );
        let add = |a: &mut Run, b: &[f32]| a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        for cb in 0..c / BLOCK {
            let xb = &x[cb * h * w * BLOCK..(cb + 1) * h * w * BLOCK];
            let px = |yy: usize, xx: usize| &xb[(yy * w + xx) * BLOCK..][..BLOCK];
            let mut total = [0f32; BLOCK];
            // The first and last row, the first and last column.
            let mut edge = [[0f32; BLOCK]; 4];
            for yy in 0..h {
                let row = &xb[yy * w * BLOCK..(yy + 1) * w * BLOCK];
                let mut r = [0f32; BLOCK];
                for run in row.chunks_exact(BLOCK) {
                    add(&mut r, run);
                }
                add(&mut total, &r);
                if yy == 0 {
                    add(&mut edge[0], &r);
                }
                if yy == h - 1 {
                    add(&mut edge[1], &r);
                }
                add(&mut edge[2], &row[..BLOCK]);
                add(&mut edge[3], &row[(w - 1) * BLOCK..]);
            }
            // What tap row (column) 0, 1, 2 leaves out: the last, none, the first.
            let out_y = [Some((h - 1, 1)), None, Some((0, 0))];
            let out_x = [Some((w - 1, 3)), None, Some((0, 2))];
            for (ky, oy) in out_y.iter().enumerate() {
                for (kx, ox) in out_x.iter().enumerate() {
                    let mut v = total;
                    if let Some((_, e)) = oy {
                        v.iter_mut().zip(&edge[*e]).for_each(|(a, b)| *a -= b);
                    }
                    if let Some((_, e)) = ox {
                        v.iter_mut().zip(&edge[*e]).for_each(|(a, b)| *a -= b);
                    }
                    if let (Some((yy, _)), Some((xx, _))) = (oy, ox) {
                        add(&mut v, px(*yy, *xx));
                    }
                    for (l, val) in v.iter().enumerate() {
                        s[(cb * BLOCK + l) * 9 + ky * 3 + kx] = *val;
                    }
                }
            }
        }
        let scale = 1.0 / (h * w) as f32;
        for (oi, dst) in out.iter_mut().enumerate() {
            let row = &wt[oi * c * 9..(oi + 1) * c * 9];
            // Eight partial sums, so that the sum vectorises.
            let mut acc = [0f32; 8];
            for (a, b) in row.chunks_exact(8).zip(s.chunks_exact(8)) {
                for l in 0..8 {
                    acc[l] += a[l] * b[l];
                }
            }
            // `9 * c` is a multiple of 8 (c of 16), so nothing is left over.
            *dst = bias[oi] + acc.iter().sum::<f32>() * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::direct::tests::{reference, values};

    fn close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{what}: [{i}] {g} vs {w}"
            );
        }
    }

    /// One layer through transform, product (in two parts, as two threads
    /// split it) and back to planes.
    fn run(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        o: usize,
        c: usize,
        h: usize,
        wd: usize,
        relu: bool,
        split: usize,
    ) -> Vec<f32> {
        let u = Winograd::new(w, o, c).unwrap();
        let g = Tiles { h, w: wd };
        let mut xb = vec![0f32; c * h * wd];
        to_blocked(x, c, h * wd, &mut xb);
        let mut v = vec![f32::NAN; g.transformed_len(c)];
        transform_input(&xb, c, g, &mut v);
        let mut yb = vec![f32::NAN; o * h * wd];
        let (lo, hi) = yb.split_at_mut(split * BLOCK * h * wd);
        // The dispatching entry point on the first part, the portable body on
        // the rest, so that both paths are checked on this CPU.
        multiply(&u, &v, g, 0..split, Some(b), relu, lo);
        multiply_body::<false>(&u, &v, g, split..u.blocks(), Some(b), relu, hi);
        let mut y = vec![0f32; o * h * wd];
        from_blocked(&yb, o, h * wd, &mut y);
        y
    }

    #[test]
    fn winograd_matches_the_definition() {
        // Even and odd planes, one tile, partial last tile blocks (9 tiles at
        // 6x6, 36 at 12x12), one and several blocks each way.
        let cases = [
            (16, 16, 6, 6, 1),
            (64, 32, 12, 12, 2),
            (32, 48, 5, 7, 1),
            (16, 16, 1, 1, 0),
            (48, 16, 2, 3, 3),
            (32, 32, 9, 4, 1),
        ];
        for (seed, &(o, c, h, wd, split)) in cases.iter().enumerate() {
            let x = values(c * h * wd, seed as f32);
            let w = values(o * c * 9, 100.0 + seed as f32);
            let b = values(o, 200.0 + seed as f32);
            let want = reference(&x, &w, &b, o, c, h, wd);
            let what = format!("o {o} c {c} {h}x{wd}");
            close(&run(&x, &w, &b, o, c, h, wd, false, split), &want, &what);
            let want_relu: Vec<f32> = want.iter().map(|v| v.max(0.0)).collect();
            close(
                &run(&x, &w, &b, o, c, h, wd, true, split),
                &want_relu,
                &what,
            );
        }
    }

    #[test]
    fn planes_and_the_input_gradient_match_the_definition() {
        let (o, c, h, w) = (32, 16, 7, 6);
        let x = values(c * h * w, 40.0);
        let wt = values(o * c * 9, 41.0);
        let g = Tiles { h, w };
        let mut scratch = Vec::new();
        let mut y = vec![f32::NAN; o * h * w];
        let u = Winograd::new(&wt, o, c).unwrap();
        conv_planes(&x, &u, None, false, g, &mut scratch, &mut y);
        close(&y, &reference(&x, &wt, &vec![0.0; o], o, c, h, w), "planes");
        // The input gradient of y = conv(x, w) for an output gradient dy is
        // sum over o of dy[o] correlated with w[o][c] flipped.
        let dy = values(o * h * w, 42.0);
        let mut wf = vec![0f32; o * c * 9];
        for oi in 0..o {
            for ci in 0..c {
                for t in 0..9 {
                    wf[(ci * o + oi) * 9 + 8 - t] = wt[(oi * c + ci) * 9 + t];
                }
            }
        }
        let want = reference(&dy, &wf, &vec![0.0; c], c, o, h, w);
        let uf = Winograd::flipped(&wt, o, c).unwrap();
        let mut dx = vec![f32::NAN; c * h * w];
        conv_planes(&dy, &uf, None, false, g, &mut scratch, &mut dx);
        close(&dx, &want, "input gradient");
    }

    #[test]
    fn portable_products_match_the_simd_ones() {
        let c = 32;
        let u = values(c * BLOCK, 1.0);
        let v = values(TB * c, 2.0);
        let mut want = [[0f32; BLOCK]; TB];
        products::<false>(TB, &u, &v, c, &mut want);
        // Checked against a plain sum, then against the fast kernel if any.
        for (k, acc) in want.iter().enumerate() {
            for (l, &a) in acc.iter().enumerate() {
                let s: f32 = (0..c).map(|ci| u[ci * BLOCK + l] * v[k * c + ci]).sum();
                assert!((a - s).abs() < 1e-4, "tile {k} lane {l}");
            }
        }
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            for nt in 1..=TB {
                let mut got = [[0f32; BLOCK]; TB];
                products::<true>(nt, &u, &v[..nt * c], c, &mut got);
                close(got[..nt].as_flattened(), want[..nt].as_flattened(), "avx2");
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        assert!(Winograd::new(&[0.0; 8 * 16 * 9], 8, 16).is_none());
        assert!(Winograd::new(&[0.0; 16 * 8 * 9], 16, 8).is_none());
        assert!(Winograd::new(&[], 0, 16).is_none());
        assert!(Winograd::new(&[0.0; 16 * 16 * 9], 16, 16).is_some());
    }

    #[test]
    fn blocked_pooling_matches_the_planar_one() {
        let (c, h, w) = (32, 7, 10);
        let x = values(c * h * w, 5.0);
        let mut want = vec![0f32; c * (h / 2) * (w / 2)];
        crate::slice::maxpool2(&x, c, h, w, &mut want);
        let mut xb = vec![0f32; x.len()];
        to_blocked(&x, c, h * w, &mut xb);
        let mut yb = vec![0f32; want.len()];
        let half = BLOCK * (h / 2) * (w / 2);
        let (lo, hi) = yb.split_at_mut(half);
        maxpool2(&xb, 0..1, h, w, lo);
        maxpool2(&xb, 1..2, h, w, hi);
        let mut got = vec![0f32; want.len()];
        from_blocked(&yb, c, (h / 2) * (w / 2), &mut got);
        assert_eq!(got, want);
    }

    #[test]
    fn averaged_convolution_matches_convolving_then_averaging() {
        for (seed, &(o, c, h, w)) in [(7, 32, 6, 6), (3, 16, 5, 8), (2, 16, 1, 1), (1, 16, 2, 3)]
            .iter()
            .enumerate()
        {
            let x = values(c * h * w, 10.0 + seed as f32);
            let wt = values(o * c * 9, 20.0 + seed as f32);
            let b = values(o, 30.0 + seed as f32);
            let full = reference(&x, &wt, &b, o, c, h, w);
            let want: Vec<f32> = full
                .chunks_exact(h * w)
                .map(|p| p.iter().sum::<f32>() / (h * w) as f32)
                .collect();
            let mut xb = vec![0f32; x.len()];
            to_blocked(&x, c, h * w, &mut xb);
            let mut got = vec![0f32; o];
            let mut s = vec![f32::NAN; 9 * c];
            conv3x3_mean(&xb, c, (h, w), (&wt, &b), &mut s, &mut got);
            close(&got, &want, &format!("{o} {c} {h}x{w}"));
        }
    }
}

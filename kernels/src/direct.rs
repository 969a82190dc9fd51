//! Direct 3x3 convolution (stride 1, padding 1) without im2col.
//!
//! Each input channel is stored as a zero-bordered `(h + 2) x (w + 2)` plane
//! (plus slack). Seen as one flat array, output position `j = y * (w + 2) + x`
//! then reads tap `(ky, kx)` at `j + ky * (w + 2) + kx` for every `j`: the
//! convolution becomes nine shifted, contiguous multiply-adds per channel, so a
//! tile of 16 consecutive positions (two AVX2 vectors) times 4 output channels
//! is computed in 8 registers straight from the planes, with no im2col matrix
//! and no GEMM packing. (Three vectors, 12 accumulators, left LLVM one
//! register short: it spilled an accumulator and ran at half the speed.) The two positions per row where `x >= w` are
//! computed and discarded (4% of the work at 48x48, 14% at 12x12).
//!
//! The same kernel computes a convolution's input gradient: it is the
//! convolution of the output gradient with the kernel transposed (channels
//! swapped) and flipped ([`Packed::flipped`]).
//!
//! On small planes those discarded positions cost more (25% at 6x6, plus a
//! partly used last tile), and on planes of at most 8x8 a second kernel,
//! [`conv_wide`], vectorises over output channels instead: 16 output channels
//! (two vectors) x 6 positions accumulate in 12 registers, each input value
//! broadcast once per tap, and only valid positions are computed.

#[cfg(target_arch = "x86_64")]
use crate::slice::has_avx2_fma;

/// 8-lane vectors per tile.
const VECS: usize = 2;
/// Output positions per tile.
const TILE: usize = 8 * VECS;
/// Output channels per tile: weights are packed in blocks of this many.
pub const ROWS: usize = 4;
/// Output channels per block of [`conv_wide`]: two 8-lane vectors.
pub const WIDE: usize = 16;
/// Positions per tile of [`conv_wide`] (6 x 2 accumulators, 2 weight vectors
/// and a broadcast: 15 of the 16 AVX2 registers).
const WIDE_TILE: usize = 6;
/// Planes of at most this many positions (8x8) go to [`conv_wide`]. At 6x6
/// it ran 1.06-1.17x faster than [`conv`] (`examples/conv_ab.rs`), at 12x12
/// 0.94-1.09x, i.e. no better.
const WIDE_MAX_POSITIONS: usize = 64;

/// Whether [`conv`] runs its vectorised kernel on this CPU. Without it the
/// im2col + GEMM path, which has SSE kernels, is faster than the portable
/// loop, so callers should use that instead.
pub fn fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a convolution with kernel side `k`, `stride` and padding `pad`
/// runs on this module's kernels: 3x3, stride 1, padding 1, on a CPU where
/// they are the faster path ([`fast`]).
pub fn handles(k: usize, stride: usize, pad: usize) -> bool {
    k == 3 && stride == 1 && pad == 1 && fast()
}

/// Whether a convolution with `o` outputs on planes `g` runs on
/// [`conv_wide`] (given [`handles`]): small planes, `o` a multiple of
/// [`WIDE`], AVX2.
pub fn wide_fits(g: Padded, o: usize) -> bool {
    fast() && whole_wide_blocks(o) && g.h.saturating_mul(g.w) <= WIDE_MAX_POSITIONS
}

/// Whether `o` outputs fill whole [`WIDE`] blocks (at least one), as
/// [`conv_wide`]'s packing needs.
fn whole_wide_blocks(o: usize) -> bool {
    o > 0 && o.is_multiple_of(WIDE)
}

const OVERFLOW: &str = "direct convolution: image size overflows usize";

/// `a * b`, or `usize::MAX` if it overflows, for length checks: a slice is
/// never that long, so an overflowing size fails the check.
fn size(a: usize, b: usize) -> usize {
    a.saturating_mul(b)
}

/// The padded layout of one image of `h x w` planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Padded {
    /// Height of the (unpadded) image.
    pub h: usize,
    /// Width of the (unpadded) image.
    pub w: usize,
}

impl Padded {
    /// Length of a padded row: `w + 2`.
    ///
    /// # Panics
    /// This and the other sizes panic rather than wrap if they overflow
    /// `usize` (no tensor is that large): the kernels' bounds rely on them.
    pub fn row(&self) -> usize {
        self.w.checked_add(2).expect(OVERFLOW)
    }

    /// Output positions computed per channel: `h` rows of `w + 2`, rounded up to
    /// whole tiles. Position `y * (w + 2) + x` is output `(y, x)` for `x < w`.
    pub fn out_len(&self) -> usize {
        self.h
            .checked_mul(self.row())
            .and_then(|n| n.checked_next_multiple_of(TILE))
            .expect(OVERFLOW)
    }

    /// Stride between padded planes: the bordered plane plus the slack the
    /// last tile reads past it.
    pub fn plane(&self) -> usize {
        self.row()
            .checked_mul(2)
            .and_then(|r| r.checked_add(2))
            .and_then(|r| r.checked_add(self.out_len()))
            .expect(OVERFLOW)
    }

    /// Copies `c` planes `(h, w)` from `x` into padded planes in `xp`
    /// (`c * plane()` values), zeroing the border and the slack.
    pub fn pad(&self, x: &[f32], c: usize, xp: &mut [f32]) {
        // Input (0, 0) sits after the top border row and one left border.
        self.spread(x, c, xp, self.plane(), self.row() + 1);
    }

    /// Copies `n` planes `(h, w)` from `src` into `n` planes of `stride`
    /// values in `dst`, in the padded row layout: row `y` at
    /// `first + y * row()`, each followed by two zeros, zeros before `first`
    /// and after the last row.
    fn spread(&self, src: &[f32], n: usize, dst: &mut [f32], stride: usize, first: usize) {
        let (h, w, row) = (self.h, self.w, self.row());
        assert!(
            src.len() >= size(n, h * w) && dst.len() >= size(n, stride),
            "direct: slices too short for the planes"
        );
        assert!(first + h * row <= stride, "direct: plane too short");
        for (i, p) in dst.chunks_exact_mut(stride.max(1)).take(n).enumerate() {
            p[..first].fill(0.0);
            for y in 0..h {
                let start = first + y * row;
                p[start..start + w].copy_from_slice(&src[(i * h + y) * w..][..w]);
                p[start + w..start + row].fill(0.0);
            }
            p[first + h * row..].fill(0.0);
        }
    }

    /// Copies `o` planes `(h, w)` (an output gradient) into the flat layout of
    /// [`conv`]'s output, `o * out_len()` values, with zeros at the discarded
    /// positions: the input of [`conv_grad_kernel`].
    pub fn flatten(&self, dy: &[f32], o: usize, dyf: &mut [f32]) {
        self.spread(dy, o, dyf, self.out_len(), 0);
    }

    /// Copies the valid outputs of `o` channels from [`conv`]'s flat layout
    /// (`flat`, channel `i` at `i * out_len()`) into compact `(o, h, w)` planes.
    pub fn unpad(&self, flat: &[f32], o: usize, y: &mut [f32]) {
        let (h, w, row, stride) = (self.h, self.w, self.row(), self.out_len());
        assert!(
            flat.len() >= size(o, stride) && y.len() >= size(o, h * w),
            "unpad: slices too short"
        );
        for (oi, dst) in y.chunks_exact_mut(h * w).take(o).enumerate() {
            for (yy, d) in dst.chunks_exact_mut(w).enumerate() {
                let s = oi * stride + yy * row;
                d.copy_from_slice(&flat[s..s + w]);
            }
        }
    }
}

/// A convolution's weights packed for this module's kernels: in [`ROWS`]
/// blocks for [`conv`] and, when the output count allows, in [`WIDE`] blocks
/// for [`conv_wide`]. [`conv_image`] picks the kernel by plane size.
#[derive(Debug, Clone)]
pub struct Packed {
    o: usize,
    c: usize,
    rows: Option<Vec<f32>>,
    wide: Option<Vec<f32>>,
}

impl Packed {
    /// Packs `(o, c, 3, 3)` weights for planes `g`, or for any plane size
    /// with `None` (both layouts).
    pub fn new(w: &[f32], o: usize, c: usize, g: Option<Padded>) -> Self {
        assert!(w.len() >= size(size(o, c), 9), "pack: weights too short");
        Self::with(o, c, g, Source::Plain(w))
    }

    /// Packs the kernel of the input gradient of a convolution with
    /// `(o, c, 3, 3)` weights, for planes `g` or any: a convolution from `o`
    /// channels to `c` with `w'[ci][oi][ky][kx] = w[oi][ci][2 - ky][2 - kx]`.
    pub fn flipped(w: &[f32], o: usize, c: usize, g: Option<Padded>) -> Self {
        assert!(w.len() >= size(size(o, c), 9), "pack: weights too short");
        Self::with(c, o, g, Source::Flipped(w))
    }

    fn with(o: usize, c: usize, g: Option<Padded>, src: Source<'_>) -> Self {
        let (rows, wide) = match g {
            Some(g) if wide_fits(g, o) => (false, true),
            Some(_) => (true, false),
            None => (true, whole_wide_blocks(o)),
        };
        Self {
            o,
            c,
            rows: rows.then(|| pack_blocks(ROWS, o, c, src)),
            wide: wide.then(|| pack_wide(o, c, src)),
        }
    }

    /// Output channels.
    pub fn outputs(&self) -> usize {
        self.o
    }

    /// Input channels.
    pub fn inputs(&self) -> usize {
        self.c
    }

    /// The [`ROWS`] blocks for [`conv`].
    ///
    /// # Panics
    /// If they were not packed (`Packed::new` for planes that [`conv_wide`]
    /// takes).
    pub fn rows(&self) -> &[f32] {
        self.rows
            .as_deref()
            .expect("direct: 4-row packing not made")
    }

    /// The [`WIDE`] blocks for [`conv_wide`], when made and `g` is small, or
    /// when they are the only layout made (the wide kernel is right on any
    /// plane, only slower on large ones), so that weights packed for one
    /// plane size still run on another.
    pub fn wide_for(&self, g: Padded) -> Option<&[f32]> {
        let wide = self.wide.as_deref()?;
        (self.rows.is_none() || wide_fits(g, self.o)).then_some(wide)
    }
}

/// Where packing reads a convolution's weights (`o` outputs from `c`
/// inputs) from.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    /// `(o, c, 3, 3)` weights.
    Plain(&'a [f32]),
    /// The kernel of the input gradient of a convolution with `(c, o, 3, 3)`
    /// weights: `w'[oi][ci][t] = w[ci][oi][8 - t]`.
    Flipped(&'a [f32]),
}

/// Packs weights for [`conv_wide`]: blocks of 16 output channels, each
/// `[c][tap][16]`; `o` must be a multiple of [`WIDE`].
fn pack_wide(o: usize, c: usize, src: Source<'_>) -> Vec<f32> {
    assert!(
        o.is_multiple_of(WIDE),
        "pack_wide: {o} outputs are not whole blocks"
    );
    pack_blocks(WIDE, o, c, src)
}

/// Packed length of the weights of a convolution with `o` outputs and `c` inputs.
pub fn packed_len(o: usize, c: usize) -> usize {
    size(size(o.div_ceil(ROWS) * ROWS, c), 9)
}

/// Packs `(o, c, 3, 3)` weights for [`conv`]: blocks of 4 output channels, each
/// `[c][tap][4]`, zero rows past `o`.
pub fn pack(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    assert!(w.len() >= o * c * 9, "pack: weights too short");
    pack_blocks(ROWS, o, c, Source::Plain(w))
}

/// Weights in blocks of `block` output channels, each `[c][tap][block]`,
/// zero rows past `o`.
///
/// Written in the order the source is read: one output's weights at a time,
/// each value to its place in the block. Reading in the packed order instead
/// jumps a whole filter per value.
fn pack_blocks(block: usize, o: usize, c: usize, src: Source<'_>) -> Vec<f32> {
    let mut p = vec![0f32; size(size(o.div_ceil(block) * block, c), 9)];
    if p.is_empty() {
        // No input or output channels (an empty tensor): nothing to pack.
        return p;
    }
    let per = c * 9;
    for oi in 0..o {
        let blk = &mut p[(oi / block) * block * per..][..block * per];
        let r = oi % block;
        match src {
            Source::Plain(w) => {
                for (d, &v) in blk.chunks_exact_mut(block).zip(&w[oi * per..][..per]) {
                    d[r] = v;
                }
            }
            Source::Flipped(w) => {
                // Input `ci` of this output is output `ci` of the original
                // convolution, whose inputs number `o`.
                for (ci, taps) in blk.chunks_exact_mut(block * 9).enumerate() {
                    let k = &w[(ci * o + oi) * 9..][..9];
                    for (d, &v) in taps.chunks_exact_mut(block).zip(k.iter().rev()) {
                        d[r] = v;
                    }
                }
            }
        }
    }
    p
}

/// The 3x3 convolution (stride 1, padding 1) of `c` padded planes `xp` with
/// weights packed by [`pack`] (or `Packed::rows`) for `o` outputs, plus `bias`,
/// then ReLU if `relu`. Writes [`Padded::out_len`] positions per output channel
/// into `out` (channel `i` at `i * out_len()`), including the discarded
/// `x >= w` ones.
///
/// # Panics
/// If a slice is too short for the shapes (a bug in the caller: all sizes come
/// from tensor shapes).
pub fn conv(
    xp: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    o: usize,
    c: usize,
    g: Padded,
    relu: bool,
    out: &mut [f32],
) {
    assert!(xp.len() >= size(c, g.plane()), "conv: input too short");
    assert!(
        wp.len() >= packed_len(o, c),
        "conv: packed weights too short"
    );
    assert!(bias.is_none_or(|b| b.len() >= o), "conv: bias too short");
    assert!(out.len() >= size(o, g.out_len()), "conv: output too short");
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked); the slice lengths were
        // checked above, which is all `conv_avx2` relies on.
        unsafe { conv_avx2(xp, wp, bias, o, c, g, relu, out) };
        return;
    }
    conv_portable(xp, wp, bias, o, c, g, relu, out);
}

/// One image from and to compact planes: pads `x` (`p.inputs()` planes
/// `(h, w)`), convolves with `p`'s weights for `p.outputs()` channels, on [`conv_wide`]
/// where it takes the planes and else as [`conv`] does, and writes the output
/// planes `(h, w)` into `y`. `scratch` holds the padded input (and [`conv`]'s
/// flat output); it grows on first use and is meant to be reused across calls.
pub fn conv_image(
    x: &[f32],
    p: &Packed,
    bias: Option<&[f32]>,
    g: Padded,
    relu: bool,
    scratch: &mut Vec<f32>,
    y: &mut [f32],
) {
    let (o, c) = (p.outputs(), p.inputs());
    let wide = p.wide_for(g);
    let planes = size(c, g.plane());
    let len = if wide.is_some() {
        0
    } else {
        size(o, g.out_len())
    };
    let need = planes.checked_add(len).expect(OVERFLOW);
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (xp, flat) = scratch.split_at_mut(planes);
    g.pad(x, c, xp);
    if let Some(wq) = wide {
        conv_wide(xp, wq, bias, o, c, g, relu, y);
        return;
    }
    conv(xp, p.rows(), bias, o, c, g, relu, flat);
    g.unpad(flat, o, y);
}

/// The 3x3 convolution (stride 1, padding 1) of `c` padded planes `xp` with
/// weights in [`WIDE`] blocks (`Packed::wide_for`) for `o` outputs, plus
/// `bias`, then ReLU if `relu`, into compact planes `y` (`(o, h, w)`).
///
/// # Panics
/// If `o` is not a multiple of [`WIDE`] or a slice is too short for the
/// shapes (a bug in the caller).
pub fn conv_wide(
    xp: &[f32],
    wq: &[f32],
    bias: Option<&[f32]>,
    o: usize,
    c: usize,
    g: Padded,
    relu: bool,
    y: &mut [f32],
) {
    assert!(
        o.is_multiple_of(WIDE),
        "conv_wide: {o} outputs are not whole blocks"
    );
    assert!(xp.len() >= size(c, g.plane()), "conv_wide: input too short");
    assert!(
        wq.len() >= size(size(o, c), 9),
        "conv_wide: packed weights too short"
    );
    assert!(
        bias.is_none_or(|b| b.len() >= o),
        "conv_wide: bias too short"
    );
    assert!(
        y.len() >= size(o, size(g.h, g.w)),
        "conv_wide: output too short"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked); the slice lengths were
        // checked above, which is all `conv_wide_avx2` relies on.
        unsafe { conv_wide_avx2(xp, wq, bias, o, c, g, relu, y) };
        return;
    }
    conv_wide_portable(xp, wq, bias, o, c, g, relu, y);
}

/// Flat index in a padded plane of the top-left of output position `p`'s
/// window (output `(p / w, p % w)`).
fn window(g: Padded, p: usize) -> usize {
    (p / g.w) * g.row() + p % g.w
}

/// [`conv_wide`] without SIMD (CPUs without AVX2, and the reference in tests).
fn conv_wide_portable(
    xp: &[f32],
    wq: &[f32],
    bias: Option<&[f32]>,
    o: usize,
    c: usize,
    g: Padded,
    relu: bool,
    y: &mut [f32],
) {
    let hw = g.h * g.w;
    for oi in 0..o {
        for (p, v) in y[oi * hw..(oi + 1) * hw].iter_mut().enumerate() {
            *v = portable_output(xp, wq, WIDE, bias, oi, c, g, relu, window(g, p));
        }
    }
}

/// One output of the portable kernels: output channel `oi` at window `j` of
/// the padded planes `xp`, with weights packed in blocks of `block` channels.
fn portable_output(
    xp: &[f32],
    wp: &[f32],
    block: usize,
    bias: Option<&[f32]>,
    oi: usize,
    c: usize,
    g: Padded,
    relu: bool,
    j: usize,
) -> f32 {
    let (plane, offs) = (g.plane(), taps(g.row()));
    let blk = &wp[(oi / block) * block * c * 9..];
    let mut s = bias.map_or(0.0, |b| b[oi]);
    for ci in 0..c {
        for (t, off) in offs.iter().enumerate() {
            s += blk[(ci * 9 + t) * block + oi % block] * xp[ci * plane + j + off];
        }
    }
    if relu { s.max(0.0) } else { s }
}

/// [`conv_wide`] with AVX2: per block of 16 output channels and tile of 6
/// positions, each tap loads two weight vectors and broadcasts each
/// position's input value into 12 accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn conv_wide_avx2(
    xp: &[f32],
    wq: &[f32],
    bias: Option<&[f32]>,
    o: usize,
    c: usize,
    g: Padded,
    relu: bool,
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (plane, hw) = (g.plane(), g.h * g.w);
    let zero = _mm256_setzero_ps();
    let mut out = [0f32; WIDE];
    for ob in 0..o / WIDE {
        let blk = &wq[ob * WIDE * c * 9..(ob + 1) * WIDE * c * 9];
        for p0 in (0..hw).step_by(WIDE_TILE) {
            let n = (hw - p0).min(WIDE_TILE);
            // A short last tile repeats its last position (not stored).
            let js: [usize; WIDE_TILE] = std::array::from_fn(|i| window(g, p0 + i.min(n - 1)));
            let mut acc = [[zero; 2]; WIDE_TILE];
            let row = g.row();
            for ci in 0..c {
                let xc = &xp[ci * plane..(ci + 1) * plane];
                let wc = &blk[ci * 9 * WIDE..(ci + 1) * 9 * WIDE];
                // Each position's window, advanced a row per `ky` (pointers,
                // so that LLVM keeps six bases in registers and the taps are
                // address offsets).
                let mut win: [*const f32; WIDE_TILE] = js.map(|j| xc[j..].as_ptr());
                for ky in 0..3 {
                    for kx in 0..3 {
                        let t = ky * 3 + kx;
                        // SAFETY: `wc` holds 9 * WIDE floats; these are the
                        // 16 at `t * WIDE`.
                        let (w0, w1) = unsafe {
                            (
                                _mm256_loadu_ps(wc.as_ptr().add(t * WIDE)),
                                _mm256_loadu_ps(wc.as_ptr().add(t * WIDE + 8)),
                            )
                        };
                        for (a, &pw) in acc.iter_mut().zip(&win) {
                            // SAFETY: `pw` is `j + ky * row` floats into
                            // `xc`, with `j <= (h - 1) * row + w - 1`, so
                            // `j + ky * row + kx < (h + 2) * row <= plane
                            // = xc.len()`.
                            let xv = unsafe { _mm256_broadcast_ss(&*pw.add(kx)) };
                            a[0] = _mm256_fmadd_ps(w0, xv, a[0]);
                            a[1] = _mm256_fmadd_ps(w1, xv, a[1]);
                        }
                    }
                    if ky < 2 {
                        // SAFETY: stays inside `xc`, as above (one more row
                        // for the next `ky`).
                        win = win.map(|pw| unsafe { pw.add(row) });
                    }
                }
            }
            let b = bias.map(|b| &b[ob * WIDE..(ob + 1) * WIDE]);
            for (i, a) in acc.iter().enumerate().take(n) {
                for (k, &ak) in a.iter().enumerate() {
                    let mut v = ak;
                    if let Some(b) = b {
                        // SAFETY: `b` holds WIDE = 16 floats; this reads 8 at 8k.
                        v = _mm256_add_ps(v, unsafe { _mm256_loadu_ps(b.as_ptr().add(8 * k)) });
                    }
                    if relu {
                        v = _mm256_max_ps(v, zero);
                    }
                    // SAFETY: `out` holds 16 floats; this writes 8 at 8k.
                    unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * k), v) };
                }
                for (r, v) in out.iter().enumerate() {
                    y[(ob * WIDE + r) * hw + p0 + i] = *v;
                }
            }
        }
    }
}

fn taps(row: usize) -> [usize; 9] {
    [
        0,
        1,
        2,
        row,
        row + 1,
        row + 2,
        2 * row,
        2 * row + 1,
        2 * row + 2,
    ]
}

/// [`conv`] without SIMD: one output at a time (CPUs without AVX2, and the
/// reference in tests).
fn conv_portable(
    xp: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    o: usize,
    c: usize,
    g: Padded,
    relu: bool,
    out: &mut [f32],
) {
    let len = g.out_len();
    for oi in 0..o {
        for (j, v) in out[oi * len..(oi + 1) * len].iter_mut().enumerate() {
            *v = portable_output(xp, wp, ROWS, bias, oi, c, g, relu, j);
        }
    }
}

/// [`conv`] with AVX2: ROWS (4) output channels x TILE (16) positions
/// accumulate in 8 registers over all input channels and taps, then bias, ReLU and store.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn conv_avx2(
    xp: &[f32],
    wp: &[f32],
    bias: Option<&[f32]>,
    o: usize,
    c: usize,
    g: Padded,
    relu: bool,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (plane, len, offs) = (g.plane(), g.out_len(), taps(g.row()));
    let zero = _mm256_setzero_ps();
    for ob in 0..o.div_ceil(ROWS) {
        let blk = &wp[ob * ROWS * c * 9..(ob + 1) * ROWS * c * 9];
        let rows = (o - ob * ROWS).min(ROWS);
        for j0 in (0..len).step_by(TILE) {
            let mut acc = [[zero; VECS]; ROWS];
            for ci in 0..c {
                let wc = &blk[ci * 9 * ROWS..(ci + 1) * 9 * ROWS];
                let xc = xp[ci * plane + j0..].as_ptr();
                for (t, &off) in offs.iter().enumerate() {
                    // SAFETY: `j0 + TILE <= out_len` and `off <= 2 * row + 2`,
                    // so the TILE floats read from `ci * plane + j0 + off` end at
                    // most at `ci * plane + plane`, inside `xp` (length checked
                    // by `conv`: at least `c * plane`).
                    let v: [__m256; VECS] =
                        std::array::from_fn(|k| unsafe { _mm256_loadu_ps(xc.add(off + 8 * k)) });
                    for (r, a) in acc.iter_mut().enumerate() {
                        let wv = _mm256_set1_ps(wc[t * ROWS + r]);
                        for (ak, vk) in a.iter_mut().zip(v) {
                            *ak = _mm256_fmadd_ps(wv, vk, *ak);
                        }
                    }
                }
            }
            for (r, a) in acc.iter().enumerate().take(rows) {
                let oi = ob * ROWS + r;
                let b = _mm256_set1_ps(bias.map_or(0.0, |b| b[oi]));
                let dst = &mut out[oi * len + j0..][..TILE];
                for (k, &ak) in a.iter().enumerate() {
                    let mut v = _mm256_add_ps(ak, b);
                    if relu {
                        v = _mm256_max_ps(v, zero);
                    }
                    // SAFETY: `dst` holds TILE = 8 * VECS floats; this writes 8 at 8k.
                    unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(8 * k), v) };
                }
            }
        }
    }
}

/// Adds one image's kernel gradient to `dw` (`(o, c, 3, 3)`):
/// `dw[oi][ci][t] += sum over j of dyf[oi][j] * xp[ci][j + tap offset t]`, with
/// the input `xp` as padded planes ([`Padded::pad`]) and the output gradient
/// `dyf` in the flat layout ([`Padded::flatten`]). Each `(oi, ci)` pair ends
/// in nine horizontal sums, so this pays off on large planes only (callers use
/// it from about 30x30 up).
///
/// # Panics
/// If a slice is too short for the shapes (a bug in the caller).
pub fn conv_grad_kernel(xp: &[f32], dyf: &[f32], o: usize, c: usize, g: Padded, dw: &mut [f32]) {
    assert!(
        xp.len() >= size(c, g.plane()),
        "conv_grad_kernel: input too short"
    );
    assert!(
        dyf.len() >= size(o, g.out_len()),
        "conv_grad_kernel: gradient too short"
    );
    assert!(
        dw.len() >= size(size(o, c), 9),
        "conv_grad_kernel: kernel gradient too short"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked); the slice lengths were
        // checked above, which is all `grad_kernel_avx2` relies on.
        unsafe { grad_kernel_avx2(xp, dyf, o, c, g, dw) };
        return;
    }
    grad_kernel_portable(xp, dyf, o, c, g, dw);
}

/// [`conv_grad_kernel`] without SIMD.
fn grad_kernel_portable(xp: &[f32], dyf: &[f32], o: usize, c: usize, g: Padded, dw: &mut [f32]) {
    let (plane, len, offs) = (g.plane(), g.out_len(), taps(g.row()));
    for oi in 0..o {
        let d = &dyf[oi * len..(oi + 1) * len];
        for ci in 0..c {
            let xc = &xp[ci * plane..(ci + 1) * plane];
            for (t, off) in offs.iter().enumerate() {
                let s: f32 = d.iter().zip(&xc[*off..]).map(|(a, b)| a * b).sum();
                dw[(oi * c + ci) * 9 + t] += s;
            }
        }
    }
}

/// [`conv_grad_kernel`] with AVX2: the nine taps of one `(oi, ci)` pair
/// accumulate in nine registers over the plane, 8 positions at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn grad_kernel_avx2(xp: &[f32], dyf: &[f32], o: usize, c: usize, g: Padded, dw: &mut [f32]) {
    use std::arch::x86_64::*;
    let (plane, len, offs) = (g.plane(), g.out_len(), taps(g.row()));
    for oi in 0..o {
        let d = &dyf[oi * len..(oi + 1) * len];
        for ci in 0..c {
            let xc = &xp[ci * plane..(ci + 1) * plane];
            let mut acc = [_mm256_setzero_ps(); 9];
            for j in (0..len).step_by(8) {
                // SAFETY: `len` is a multiple of 8, so `j + 8 <= len = d.len()`;
                // `j + off + 8 <= len + 2 * row + 2 = plane = xc.len()`.
                let dv = unsafe { _mm256_loadu_ps(d.as_ptr().add(j)) };
                for (a, &off) in acc.iter_mut().zip(&offs) {
                    // SAFETY: as above.
                    let xv = unsafe { _mm256_loadu_ps(xc.as_ptr().add(j + off)) };
                    *a = _mm256_fmadd_ps(dv, xv, *a);
                }
            }
            for (t, a) in acc.iter().enumerate() {
                let mut lanes = [0f32; 8];
                // SAFETY: writes 8 floats into an 8-float array.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
                dw[(oi * c + ci) * 9 + t] += lanes.iter().sum::<f32>();
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Direct definition: `(o, h, w)` outputs of a 3x3, padding-1 convolution.
    pub(crate) fn reference(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        o: usize,
        c: usize,
        h: usize,
        wd: usize,
    ) -> Vec<f32> {
        let mut y = vec![0f32; o * h * wd];
        for oi in 0..o {
            for yy in 0..h {
                for xx in 0..wd {
                    let mut s = b[oi];
                    for ci in 0..c {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = (yy + ky, xx + kx);
                                if iy >= 1 && iy <= h && ix >= 1 && ix <= wd {
                                    s += w[((oi * c + ci) * 3 + ky) * 3 + kx]
                                        * x[(ci * h + iy - 1) * wd + ix - 1];
                                }
                            }
                        }
                    }
                    y[(oi * h + yy) * wd + xx] = s;
                }
            }
        }
        y
    }

    /// A test convolution: planes, input, weights, bias and the definition's
    /// output, from values seeded with `seed`.
    fn case(
        o: usize,
        c: usize,
        h: usize,
        w: usize,
        seed: f32,
    ) -> (Padded, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = values(c * h * w, seed);
        let wt = values(o * c * 9, seed + 1.0);
        let b = values(o, seed + 2.0);
        let want = reference(&x, &wt, &b, o, c, h, w);
        (Padded { h, w }, x, wt, b, want)
    }

    /// `got` equals the definition's `want` (after ReLU if `relu`) within `tol`.
    fn assert_matches(got: &[f32], want: &[f32], relu: bool, tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, (a, e)) in got.iter().zip(want).enumerate() {
            let e = if relu { e.max(0.0) } else { *e };
            assert!((a - e).abs() <= tol, "{what} at {i}: {a} vs {e}");
        }
    }

    pub(crate) fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + seed) * 0.731).sin()).collect()
    }

    type ConvFn = fn(&[f32], &[f32], Option<&[f32]>, usize, usize, Padded, bool, &mut [f32]);

    fn run(
        which: ConvFn,
        x: &[f32],
        wp: &[f32],
        b: &[f32],
        o: usize,
        c: usize,
        g: Padded,
        relu: bool,
    ) -> Vec<f32> {
        let mut xp = vec![f32::NAN; c * g.plane()];
        g.pad(x, c, &mut xp);
        let mut flat = vec![f32::NAN; o * g.out_len()];
        which(&xp, wp, Some(b), o, c, g, relu, &mut flat);
        let mut y = vec![f32::NAN; o * g.h * g.w];
        g.unpad(&flat, o, &mut y);
        y
    }

    #[test]
    fn direct_conv_matches_the_definition() {
        if !fast() {
            eprintln!("no AVX2/FMA on this CPU: only the portable kernel is tested");
        }
        for (o, c, h, w) in [
            (8, 1, 48, 48),
            (16, 8, 12, 12),
            (7, 128, 6, 6),
            (5, 3, 5, 7),
            (1, 1, 1, 1),
            (6, 2, 1, 9),
            (9, 4, 11, 3),
        ] {
            let (g, x, wt, b, want) = case(o, c, h, w, 1.0);
            let tol = 1e-4 * (c as f32 * 9.0).sqrt();
            for relu in [false, true] {
                for (name, which) in [
                    ("dispatch", conv as ConvFn),
                    ("portable", conv_portable as ConvFn),
                ] {
                    let got = run(which, &x, &pack(&wt, o, c), &b, o, c, g, relu);
                    let what = format!("{name} o{o} c{c} {h}x{w} relu {relu}");
                    assert_matches(&got, &want, relu, tol, &what);
                }
            }
        }
    }

    #[test]
    fn zero_channels_pack_to_nothing_and_give_the_bias() {
        assert!(pack(&[], 4, 0).is_empty());
        assert!(Packed::flipped(&[], 0, 3, None).rows().is_empty());
        let g = Padded { h: 2, w: 3 };
        let mut flat = vec![f32::NAN; 2 * g.out_len()];
        conv(
            &[],
            &pack(&[], 2, 0),
            Some(&[0.5, -1.0]),
            2,
            0,
            g,
            true,
            &mut flat,
        );
        assert!(flat[..g.out_len()].iter().all(|v| *v == 0.5));
        assert!(flat[g.out_len()..].iter().all(|v| *v == 0.0));
    }

    #[test]
    fn flipped_packing_gives_the_input_gradient() {
        // <conv(x, w), dy> = <x, conv(dy, flip(w)^T)> for the same padding:
        // on the 4-row kernel, and with 16 input channels on a small plane,
        // where the input gradient runs on the wide kernel.
        for (o, c, h, w) in [(5, 3, 7, 6), (5, 16, 6, 6)] {
            let g = Padded { h, w };
            let x = values(c * h * w, 4.0);
            let wt = values(o * c * 9, 5.0);
            let dy = values(o * h * w, 6.0);
            let y = reference(&x, &wt, &vec![0.0; o], o, c, h, w);
            let flipped = Packed::flipped(&wt, o, c, Some(g));
            assert_eq!((flipped.outputs(), flipped.inputs()), (c, o));
            assert_eq!(flipped.wide_for(g).is_some(), wide_fits(g, c));
            let mut dx = vec![f32::NAN; c * h * w];
            conv_image(&dy, &flipped, None, g, false, &mut Vec::new(), &mut dx);
            let lhs: f32 = y.iter().zip(&dy).map(|(a, b)| a * b).sum();
            let rhs: f32 = x.iter().zip(&dx).map(|(a, b)| a * b).sum();
            assert!(
                (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
                "o{o} c{c} {h}x{w}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn kernel_gradient_matches_the_definition() {
        type GradFn = fn(&[f32], &[f32], usize, usize, Padded, &mut [f32]);
        for (o, c, h, w) in [(8, 1, 48, 48), (5, 3, 7, 6), (3, 2, 1, 1), (4, 4, 12, 12)] {
            let g = Padded { h, w };
            let x = values(c * h * w, 10.0);
            let dy = values(o * h * w, 11.0);
            let mut want = vec![0f32; o * c * 9];
            for oi in 0..o {
                for ci in 0..c {
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let mut s = 0.0;
                            for yy in 0..h {
                                for xx in 0..w {
                                    let (iy, ix) = (yy + ky, xx + kx);
                                    if iy >= 1 && iy <= h && ix >= 1 && ix <= w {
                                        s += dy[(oi * h + yy) * w + xx]
                                            * x[(ci * h + iy - 1) * w + ix - 1];
                                    }
                                }
                            }
                            want[((oi * c + ci) * 3 + ky) * 3 + kx] = s;
                        }
                    }
                }
            }
            let mut xp = vec![f32::NAN; c * g.plane()];
            g.pad(&x, c, &mut xp);
            let mut dyf = vec![f32::NAN; o * g.out_len()];
            g.flatten(&dy, o, &mut dyf);
            let tol = 1e-4 * ((h * w) as f32).sqrt();
            for (name, which) in [
                ("dispatch", conv_grad_kernel as GradFn),
                ("portable", grad_kernel_portable as GradFn),
            ] {
                // Accumulates onto what is there.
                let mut got = vec![1f32; o * c * 9];
                which(&xp, &dyf, o, c, g, &mut got);
                for (i, (a, e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - 1.0 - e).abs() <= tol,
                        "{name} o{o} c{c} {h}x{w} at {i}: {a} - 1 vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn wide_conv_matches_the_definition() {
        type WideFn = fn(&[f32], &[f32], Option<&[f32]>, usize, usize, Padded, bool, &mut [f32]);
        // Positions that are and are not whole tiles of 6, 1x1 and one-row
        // planes, and several blocks of 16 outputs.
        for (o, c, h, w) in [
            (16, 3, 6, 6),
            (32, 5, 12, 12),
            (16, 1, 1, 1),
            (48, 2, 5, 7),
            (16, 4, 1, 11),
            (16, 9, 16, 16),
        ] {
            let (g, x, wt, b, want) = case(o, c, h, w, 12.0);
            // Both layouts, whichever kernel this plane size would get.
            let packed = Packed::new(&wt, o, c, None);
            assert_eq!(packed.wide_for(g).is_some(), wide_fits(g, o));
            let wq = packed.wide.as_deref().expect("wide packing");
            let mut xp = vec![f32::NAN; c * g.plane()];
            g.pad(&x, c, &mut xp);
            let tol = 1e-4 * (c as f32 * 9.0).sqrt();
            for relu in [false, true] {
                for (name, which) in [
                    ("dispatch", conv_wide as WideFn),
                    ("portable", conv_wide_portable as WideFn),
                ] {
                    let mut got = vec![f32::NAN; o * h * w];
                    which(&xp, wq, Some(&b), o, c, g, relu, &mut got);
                    let what = format!("{name} o{o} c{c} {h}x{w} relu {relu}");
                    assert_matches(&got, &want, relu, tol, &what);
                }
            }
        }
    }

    #[test]
    fn packing_picks_the_kernel_by_plane_size_with_the_same_result() {
        let (o, c) = (16, 8);
        let wt = values(o * c * 9, 15.0);
        let b = values(o, 16.0);
        let any = Packed::new(&wt, o, c, None);
        for (h, w) in [(6, 6), (3, 5), (12, 12), (20, 20)] {
            let g = Padded { h, w };
            let x = values(c * h * w, 17.0);
            let sized = Packed::new(&wt, o, c, Some(g));
            // Small planes pack only the wide blocks, large ones only rows.
            assert_eq!(sized.rows.is_some(), !wide_fits(g, o));
            assert_eq!(sized.wide.is_some(), wide_fits(g, o));
            let mut got = vec![0f32; o * h * w];
            conv_image(&x, &sized, Some(&b), g, true, &mut Vec::new(), &mut got);
            // Against the 4-row kernel, whichever kernel ran above.
            let rows = run(conv, &x, any.rows(), &b, o, c, g, true);
            let want = reference(&x, &wt, &b, o, c, h, w);
            for ((a, e), r) in got.iter().zip(&rows).zip(&want) {
                assert!((a - e).abs() < 1e-3 && (a - r.max(0.0)).abs() < 1e-3);
            }
        }
        // Weights packed for a small plane only (wide blocks) still run on a
        // large one.
        let small = Packed::new(&wt, o, c, Some(Padded { h: 6, w: 6 }));
        let (g, x) = (Padded { h: 20, w: 20 }, values(c * 400, 18.0));
        let mut got = vec![0f32; o * 400];
        conv_image(&x, &small, Some(&b), g, false, &mut Vec::new(), &mut got);
        assert_matches(
            &got,
            &reference(&x, &wt, &b, o, c, 20, 20),
            false,
            1e-3,
            "20x20",
        );
        // Outputs that are not whole blocks of 16 always get rows.
        assert!(!wide_fits(Padded { h: 6, w: 6 }, 7));
        assert!(
            Packed::new(&values(7 * 4 * 9, 1.0), 7, 4, None)
                .wide
                .is_none()
        );
    }

    #[test]
    fn conv_image_chains_layers_through_one_scratch() {
        let (c, o, h, w) = (2, 4, 5, 7);
        let g = Padded { h, w };
        let x = values(c * h * w, 7.0);
        let (w1, w2) = (values(o * c * 9, 8.0), values(o * o * 9, 9.0));
        let zeros = vec![0.0; o];
        // Two layers of different widths, the scratch reused (and grown).
        let mut scratch = Vec::new();
        let mut mid = vec![f32::NAN; o * h * w];
        let p1 = Packed::new(&w1, o, c, Some(g));
        conv_image(&x, &p1, None, g, true, &mut scratch, &mut mid);
        let mut got = vec![f32::NAN; o * h * w];
        let p2 = Packed::new(&w2, o, o, Some(g));
        conv_image(&mid, &p2, None, g, false, &mut scratch, &mut got);
        // The same through the definition.
        let y1: Vec<f32> = reference(&x, &w1, &zeros, o, c, h, w)
            .iter()
            .map(|v| v.max(0.0))
            .collect();
        let want = reference(&y1, &w2, &zeros, o, o, h, w);
        for (a, e) in got.iter().zip(&want) {
            assert!((a - e).abs() < 1e-3, "{a} vs {e}");
        }
    }
}

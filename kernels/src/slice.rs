//! Slice-level CPU kernels (NCHW, `f32`): GEMM through the `gemm` crate,
//! im2col/col2im, depthwise 3x3, 2x2 max-pooling and BatchNorm statistics.
//!
//! These are shared by the candle custom ops ([`super`]) and the deployment
//! engine (`models::infer`). Each function documents the layout it expects and
//! checks slice lengths before touching memory.

use gemm::Parallelism;

/// A read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    /// Backing storage.
    pub data: &'a [f32],
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A row-major `rows x cols` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major `cols x rows` matrix, viewed as `rows x cols`.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: 1,
            cs: rows,
        }
    }

    fn max_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs
        }
    }
}

/// `dst (m x n, row-major) = [dst +] a (m x k) * b (k x n)`.
///
/// # Panics
/// If the shapes disagree or a view reaches past its slice (a bug in the caller,
/// never a property of user input: callers derive all sizes from tensor shapes).
pub fn matmul(dst: &mut [f32], a: Mat, b: Mat, accumulate: bool, threads: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul inner dimensions");
    assert!(dst.len() >= m * n, "matmul destination too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!(
        a.max_index() < a.data.len(),
        "matmul lhs view out of bounds"
    );
    assert!(
        b.max_index() < b.data.len(),
        "matmul rhs view out of bounds"
    );
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above guarantee that every element the gemm reads
    // (indices up to `max_index`) lies inside `a.data` / `b.data`, and that
    // the `m x n` row-major destination lies inside `dst`, which we borrow
    // mutably, so nothing else aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Whether this CPU has AVX2 and FMA, checked once by `std`.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Defines a kernel whose body is compiled twice: for the baseline target and,
/// on x86-64, with AVX2 and FMA enabled, chosen at run time. The crate is built
/// for baseline x86-64 (SSE2) so that it runs on any x86-64 CPU; without this,
/// the auto-vectoriser works on 4 lanes and the BatchNorm sums were not
/// vectorised at all (a release profile showed scalar `movss`/`subss`).
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn wide($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if has_avx2_fma() {
                    // SAFETY: `wide` only needs AVX2 and FMA, which this CPU
                    // has (checked just above); its body is the same safe code
                    // as the baseline path, compiled for more instructions.
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Geometry of a square-kernel convolution on one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel side.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub pad: usize,
}

impl ConvGeom {
    /// Output height.
    pub fn ho(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Output width.
    pub fn wo(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }

    /// Rows of the im2col matrix (`c * k * k`).
    pub fn col_rows(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Columns of the im2col matrix (`ho * wo`).
    pub fn col_cols(&self) -> usize {
        self.ho() * self.wo()
    }

    /// Whether the convolution is a plain matrix product (1x1, stride 1, no pad).
    pub fn is_pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// For output coordinate range along one axis, the valid range of outputs
    /// whose input index `o * stride + kk - pad` falls inside `0..len`.
    fn valid(&self, kk: usize, len: usize, out: usize) -> (usize, usize) {
        // o * s + kk - pad >= 0  <=>  o >= ceil((pad - kk) / s)
        let lo = if kk >= self.pad {
            0
        } else {
            (self.pad - kk).div_ceil(self.stride)
        };
        // o * s + kk - pad <= len - 1  <=>  o <= (len - 1 + pad - kk) / s
        let hi = if len + self.pad > kk {
            ((len - 1 + self.pad - kk) / self.stride + 1).min(out)
        } else {
            0
        };
        (lo.min(hi), hi)
    }
}

multiversion! {
    /// im2col for one image: `x` is `(c, h, w)`, `col` is `(c*k*k, ho*wo)` row-major.
    pub fn im2col(x: &[f32], g: &ConvGeom, col: &mut [f32]) {
        let (ho, wo) = (g.ho(), g.wo());
        assert!(x.len() >= g.c * g.h * g.w && col.len() >= g.col_rows() * ho * wo);
        let mut row = 0;
        for c in 0..g.c {
            let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
            for ky in 0..g.k {
                let (oy0, oy1) = g.valid(ky, g.h, ho);
                for kx in 0..g.k {
                    let (ox0, ox1) = g.valid(kx, g.w, wo);
                    let dst = &mut col[row * ho * wo..(row + 1) * ho * wo];
                    dst[..oy0 * wo].fill(0.0);
                    dst[oy1 * wo..].fill(0.0);
                    for oy in oy0..oy1 {
                        let iy = oy * g.stride + ky - g.pad;
                        let drow = &mut dst[oy * wo..(oy + 1) * wo];
                        drow[..ox0].fill(0.0);
                        drow[ox1..].fill(0.0);
                        let src = &plane[iy * g.w..(iy + 1) * g.w];
                        if g.stride == 1 {
                            let start = ox0 + kx - g.pad;
                            drow[ox0..ox1].copy_from_slice(&src[start..start + (ox1 - ox0)]);
                        } else {
                            for ox in ox0..ox1 {
                                drow[ox] = src[ox * g.stride + kx - g.pad];
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }
}

multiversion! {
    /// col2im for one image: accumulates `col` (`(c*k*k, ho*wo)`) into `dx`
    /// (`(c, h, w)`), which the caller zeroes first.
    pub fn col2im(col: &[f32], g: &ConvGeom, dx: &mut [f32]) {
        let (ho, wo) = (g.ho(), g.wo());
        assert!(dx.len() >= g.c * g.h * g.w && col.len() >= g.col_rows() * ho * wo);
        let mut row = 0;
        for c in 0..g.c {
            let plane = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
            for ky in 0..g.k {
                let (oy0, oy1) = g.valid(ky, g.h, ho);
                for kx in 0..g.k {
                    let (ox0, ox1) = g.valid(kx, g.w, wo);
                    let src = &col[row * ho * wo..(row + 1) * ho * wo];
                    for oy in oy0..oy1 {
                        let iy = oy * g.stride + ky - g.pad;
                        let drow = &mut plane[iy * g.w..(iy + 1) * g.w];
                        let srow = &src[oy * wo..(oy + 1) * wo];
                        if g.stride == 1 {
                            let start = ox0 + kx - g.pad;
                            for (d, s) in drow[start..start + (ox1 - ox0)]
                                .iter_mut()
                                .zip(&srow[ox0..ox1])
                            {
                                *d += s;
                            }
                        } else {
                            for ox in ox0..ox1 {
                                drow[ox * g.stride + kx - g.pad] += srow[ox];
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }
}

/// The largest zero-bordered plane, `(h + 2) * (w + 2)` floats, that
/// [`depthwise3x3`] pads on the stack (planes up to 32x32).
pub const DW_PAD_MAX: usize = 34 * 34;

multiversion! {
    /// Depthwise 3x3 convolution, stride 1, padding 1, one image:
    /// `x` `(c, h, w)`, `wt` `(c, 9)`, `y` `(c, h, w)` (overwritten).
    ///
    /// Row by row: the interior columns take each input row's three taps in
    /// one vectorised pass (the centre row first, assigning), and the two
    /// edge columns are summed on their own, so the output is written three
    /// times per row rather than zeroed and then updated nine times.
    ///
    /// Planes of up to [`DW_PAD_MAX`] positions with their border (ARCH-1's
    /// 24x24) are first copied into a zero-bordered plane on the stack, so
    /// that every output row is one pass of nine taps with no edge cases.
    pub fn depthwise3x3(x: &[f32], wt: &[f32], c: usize, h: usize, w: usize, y: &mut [f32]) {
        let hw = h * w;
        assert!(x.len() >= c * hw && y.len() >= c * hw && wt.len() >= c * 9);
        if hw == 0 {
            return;
        }
        let pw = w + 2;
        if (h + 2) * pw <= DW_PAD_MAX {
            // The border stays zero: each channel writes the interior only.
            let mut pad = [0f32; DW_PAD_MAX];
            for ch in 0..c {
                let xp = &x[ch * hw..(ch + 1) * hw];
                for (iy, row) in xp.chunks_exact(w).enumerate() {
                    pad[(iy + 1) * pw + 1..][..w].copy_from_slice(row);
                }
                let k = &wt[ch * 9..ch * 9 + 9];
                for (oy, yr) in y[ch * hw..(ch + 1) * hw].chunks_exact_mut(w).enumerate() {
                    let r = |ky: usize, kx: usize| &pad[(oy + ky) * pw + kx..][..w];
                    let (a0, a1, a2) = (r(0, 0), r(0, 1), r(0, 2));
                    let (b0, b1, b2) = (r(1, 0), r(1, 1), r(1, 2));
                    let (c0, c1, c2) = (r(2, 0), r(2, 1), r(2, 2));
                    for j in 0..w {
                        yr[j] = k[0] * a0[j] + k[1] * a1[j] + k[2] * a2[j]
                            + (k[3] * b0[j] + k[4] * b1[j] + k[5] * b2[j])
                            + (k[6] * c0[j] + k[7] * c1[j] + k[8] * c2[j]);
                    }
                }
            }
            return;
        }
        for ch in 0..c {
            let xp = &x[ch * hw..(ch + 1) * hw];
            let k = &wt[ch * 9..ch * 9 + 9];
            for oy in 0..h {
                let yr = &mut y[ch * hw + oy * w..ch * hw + (oy + 1) * w];
                // Input rows of taps ky = 1 (the same row), 0 and 2 that are
                // inside the image.
                let rows = [1usize, 0, 2].into_iter().filter_map(|ky| {
                    let iy = (oy + ky).checked_sub(1).filter(|&iy| iy < h)?;
                    Some((ky, &xp[iy * w..(iy + 1) * w]))
                });
                if w >= 3 {
                    for (i, (ky, r)) in rows.clone().enumerate() {
                        let (k0, k1, k2) = (k[ky * 3], k[ky * 3 + 1], k[ky * 3 + 2]);
                        let taps = r[..w - 2].iter().zip(&r[1..w - 1]).zip(&r[2..]);
                        let out = yr[1..w - 1].iter_mut().zip(taps);
                        if i == 0 {
                            for (d, ((&a, &b), &e)) in out {
                                *d = k0 * a + k1 * b + k2 * e;
                            }
                        } else {
                            for (d, ((&a, &b), &e)) in out {
                                *d += k0 * a + k1 * b + k2 * e;
                            }
                        }
                    }
                }
                // The edge columns: the first and the last (the only ones
                // when w < 3).
                for ox in [0, w - 1].into_iter().take(w.min(2)) {
                    let mut s = 0.0;
                    for (ky, r) in rows.clone() {
                        for kx in 0..3 {
                            if let Some(ix) = (ox + kx).checked_sub(1).filter(|&ix| ix < w) {
                                s += k[ky * 3 + kx] * r[ix];
                            }
                        }
                    }
                    yr[ox] = s;
                }
            }
        }
    }
}

multiversion! {
    /// Gradients of [`depthwise3x3`] for one image: accumulates the input gradient
    /// into `dx` (zeroed by the caller) and the kernel gradient into `dw` `(c, 9)`.
    ///
    /// Each tap's kernel gradient is summed into a row-wide accumulator, one
    /// multiply-add per position in the same pass as the input gradient, and
    /// reduced once per tap: a per-row float `sum()` is a serial chain that
    /// does not vectorise.
    pub fn depthwise3x3_backward(
        x: &[f32],
        wt: &[f32],
        dy: &[f32],
        c: usize,
        h: usize,
        w: usize,
        dx: &mut [f32],
        dw: &mut [f32],
    ) {
        let hw = h * w;
        assert!(x.len() >= c * hw && dy.len() >= c * hw && dx.len() >= c * hw);
        assert!(wt.len() >= c * 9 && dw.len() >= c * 9);
        let mut acc = vec![0f32; w];
        for ch in 0..c {
            let xp = &x[ch * hw..(ch + 1) * hw];
            let gp = &dy[ch * hw..(ch + 1) * hw];
            let dxp = &mut dx[ch * hw..(ch + 1) * hw];
            for ky in 0..3 {
                let oy0 = usize::from(ky == 0);
                let oy1 = if ky == 2 { h.saturating_sub(1) } else { h };
                for kx in 0..3 {
                    let wv = wt[ch * 9 + ky * 3 + kx];
                    let ox0 = usize::from(kx == 0);
                    let ox1 = if kx == 2 { w.saturating_sub(1) } else { w };
                    if ox0 >= ox1 {
                        continue;
                    }
                    let acc = &mut acc[..ox1 - ox0];
                    acc.fill(0.0);
                    for oy in oy0..oy1 {
                        let i0 = (oy + ky - 1) * w + ox0 + kx - 1;
                        let xs = &xp[i0..i0 + acc.len()];
                        let ds = &mut dxp[i0..i0 + acc.len()];
                        let gs = &gp[oy * w + ox0..oy * w + ox1];
                        for (((d, a), &xv), &g) in ds.iter_mut().zip(acc.iter_mut()).zip(xs).zip(gs) {
                            *d += wv * g;
                            *a += xv * g;
                        }
                    }
                    dw[ch * 9 + ky * 3 + kx] += sum(acc);
                }
            }
        }
    }
}

multiversion! {
    /// 2x2 max-pooling with stride 2 on `planes` planes of `h x w` (odd trailing
    /// rows/columns dropped, as Keras' `valid` pooling does).
    pub fn maxpool2(x: &[f32], planes: usize, h: usize, w: usize, y: &mut [f32]) {
        let (ho, wo) = (h / 2, w / 2);
        assert!(x.len() >= planes * h * w && y.len() >= planes * ho * wo);
        for p in 0..planes {
            let xp = &x[p * h * w..(p + 1) * h * w];
            let yp = &mut y[p * ho * wo..(p + 1) * ho * wo];
            for oy in 0..ho {
                let r0 = &xp[2 * oy * w..2 * oy * w + w];
                let r1 = &xp[(2 * oy + 1) * w..(2 * oy + 1) * w + w];
                for ox in 0..wo {
                    let a = r0[2 * ox].max(r0[2 * ox + 1]);
                    let b = r1[2 * ox].max(r1[2 * ox + 1]);
                    yp[oy * wo + ox] = a.max(b);
                }
            }
        }
    }
}

/// `v` if `on`, else `+0.0`, with a bit mask instead of a branch (LLVM turns
/// `if on { v } else { 0.0 }` into a jump, which mispredicts on pooling's
/// data-dependent choices).
#[inline(always)]
fn keep(v: f32, on: bool) -> f32 {
    f32::from_bits(v.to_bits() & 0u32.wrapping_sub(u32::from(on)))
}

/// Gradient of [`maxpool2`]: each output gradient goes to the first input of its
/// window equal to the window's maximum (for inputs without NaN, the one a
/// strict `>` scan picks);
/// `dx` is overwritten, the rows and columns that pooling dropped with
/// zeros. With `y` (the pooled output of [`maxpool2`] followed by ReLU),
/// windows whose output is not positive pass no gradient.
///
/// Branch-free: the window's maximum and its first position are found
/// with `max` and bit masks and all four inputs are written, where a
/// compare-and-jump scan with a scattered add mispredicted on about every
/// other window. With AVX2, eight windows at a time.
pub fn maxpool2_backward(
    x: &[f32],
    dy: &[f32],
    y: Option<&[f32]>,
    planes: usize,
    h: usize,
    w: usize,
    dx: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        let row = |r: PoolRow| {
            // SAFETY: this CPU has AVX2 and FMA.
            unsafe { pool_bwd_row_avx2(r) }
        };
        return pool_bwd_rows((x, dy, y), (planes, h, w), dx, row);
    }
    pool_bwd_rows((x, dy, y), (planes, h, w), dx, pool_bwd_row);
}

/// One pair of input rows of [`maxpool2_backward`]: `r0`, `r1` and their
/// gradients `d0`, `d1` (`2 * g.len()` values used of each), the output
/// gradients `g` and, under ReLU, the pooled outputs `y`.
struct PoolRow<'a> {
    r0: &'a [f32],
    r1: &'a [f32],
    g: &'a [f32],
    y: Option<&'a [f32]>,
    d0: &'a mut [f32],
    d1: &'a mut [f32],
}

/// Runs `row` over every pair of rows, then zeroes what pooling dropped.
fn pool_bwd_rows(
    (x, dy, y): (&[f32], &[f32], Option<&[f32]>),
    (planes, h, w): (usize, usize, usize),
    dx: &mut [f32],
    row: impl Fn(PoolRow),
) {
    let (ho, wo) = (h / 2, w / 2);
    let (size, osize) = (h * w, ho * wo);
    assert!(x.len() >= planes * size && dx.len() >= planes * size && dy.len() >= planes * osize);
    assert!(y.is_none_or(|y| y.len() >= planes * osize));
    for p in 0..planes {
        let xp = &x[p * size..(p + 1) * size];
        let dxp = &mut dx[p * size..(p + 1) * size];
        for oy in 0..ho {
            let o = p * osize + oy * wo;
            let (r0, r1) = xp[2 * oy * w..(2 * oy + 2) * w].split_at(w);
            let (d0, d1) = dxp[2 * oy * w..(2 * oy + 2) * w].split_at_mut(w);
            if w % 2 == 1 {
                d0[w - 1] = 0.0;
                d1[w - 1] = 0.0;
            }
            let g = &dy[o..o + wo];
            let y = y.map(|y| &y[o..o + wo]);
            row(PoolRow {
                r0,
                r1,
                g,
                y,
                d0,
                d1,
            });
        }
        dxp[2 * ho * w..].fill(0.0);
    }
}

/// [`PoolRow`], one window at a time (inlined, so that within
/// [`pool_bwd_row_avx2`] it is compiled for AVX2 too).
#[inline(always)]
fn pool_bwd_row(r: PoolRow) {
    let pairs = r.r0.chunks_exact(2).zip(r.r1.chunks_exact(2));
    let outs = r.d0.chunks_exact_mut(2).zip(r.d1.chunks_exact_mut(2));
    for (ox, ((a, b), (da, db))) in pairs.zip(outs).take(r.g.len()).enumerate() {
        let gv = r.y.map_or(r.g[ox], |y| keep(r.g[ox], y[ox] > 0.0));
        // Masks of the first maximum, in scan order.
        let m = a[0].max(a[1]).max(b[0].max(b[1]));
        let e0 = a[0] == m;
        let e1 = (a[1] == m) & !e0;
        let e2 = (b[0] == m) & !(e0 | e1);
        let e3 = !(e0 | e1 | e2);
        da[0] = keep(gv, e0);
        da[1] = keep(gv, e1);
        db[0] = keep(gv, e2);
        db[1] = keep(gv, e3);
    }
}

/// [`pool_bwd_row`] on eight windows at a time (sixteen values of each
/// row), the rest one at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn pool_bwd_row_avx2(r: PoolRow) {
    use std::arch::x86_64::*;
    let n = r.g.len();
    assert!(r.r0.len() >= 2 * n && r.r1.len() >= 2 * n);
    assert!(r.d0.len() >= 2 * n && r.d1.len() >= 2 * n && r.y.is_none_or(|y| y.len() >= n));
    let full = n / 8 * 8;
    // Even and odd lanes of sixteen values, in order: `shuffle_ps` picks
    // within each 128-bit half (windows 0,1,4,5 | 2,3,6,7), the 64-bit
    // permute puts the halves' pairs back in order.
    let split = |lo: __m256, hi: __m256| {
        let fix = |v: __m256| {
            _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
        };
        (
            fix(_mm256_shuffle_ps::<0b10_00_10_00>(lo, hi)),
            fix(_mm256_shuffle_ps::<0b11_01_11_01>(lo, hi)),
        )
    };
    let zero = _mm256_setzero_ps();
    let mut i = 0;
    while i < full {
        // SAFETY: `i + 8 <= n`, so the loads of 16 values at `2 * i` stay
        // within `r0`, `r1` (at least `2 * n` long, asserted above) and those
        // of 8 at `i` within `g` and `y`.
        let (a_lo, a_hi, b_lo, b_hi, gv) = unsafe {
            (
                _mm256_loadu_ps(r.r0.as_ptr().add(2 * i)),
                _mm256_loadu_ps(r.r0.as_ptr().add(2 * i + 8)),
                _mm256_loadu_ps(r.r1.as_ptr().add(2 * i)),
                _mm256_loadu_ps(r.r1.as_ptr().add(2 * i + 8)),
                _mm256_loadu_ps(r.g.as_ptr().add(i)),
            )
        };
        let gv = match r.y {
            Some(y) => {
                // SAFETY: as above, `y` holds at least `n` values.
                let yv = unsafe { _mm256_loadu_ps(y.as_ptr().add(i)) };
                _mm256_and_ps(gv, _mm256_cmp_ps::<_CMP_GT_OQ>(yv, zero))
            }
            None => gv,
        };
        let ((a0, a1), (b0, b1)) = (split(a_lo, a_hi), split(b_lo, b_hi));
        let m = _mm256_max_ps(_mm256_max_ps(a0, a1), _mm256_max_ps(b0, b1));
        let e0 = _mm256_cmp_ps::<_CMP_EQ_OQ>(a0, m);
        let e1 = _mm256_andnot_ps(e0, _mm256_cmp_ps::<_CMP_EQ_OQ>(a1, m));
        let taken = _mm256_or_ps(e0, e1);
        let e2 = _mm256_andnot_ps(taken, _mm256_cmp_ps::<_CMP_EQ_OQ>(b0, m));
        let e3 = _mm256_andnot_ps(_mm256_or_ps(taken, e2), gv);
        let (v0, v1, v2) = (
            _mm256_and_ps(e0, gv),
            _mm256_and_ps(e1, gv),
            _mm256_and_ps(e2, gv),
        );
        // Interleave back: (even, odd) pairs of windows 0-3 and 4-7.
        let join = |even: __m256, odd: __m256| {
            let (lo, hi) = (_mm256_unpacklo_ps(even, odd), _mm256_unpackhi_ps(even, odd));
            (
                _mm256_permute2f128_ps::<0x20>(lo, hi),
                _mm256_permute2f128_ps::<0x31>(lo, hi),
            )
        };
        let ((d0_lo, d0_hi), (d1_lo, d1_hi)) = (join(v0, v1), join(v2, e3));
        // SAFETY: as for the loads, 16 values at `2 * i` of `d0` and `d1`.
        unsafe {
            _mm256_storeu_ps(r.d0.as_mut_ptr().add(2 * i), d0_lo);
            _mm256_storeu_ps(r.d0.as_mut_ptr().add(2 * i + 8), d0_hi);
            _mm256_storeu_ps(r.d1.as_mut_ptr().add(2 * i), d1_lo);
            _mm256_storeu_ps(r.d1.as_mut_ptr().add(2 * i + 8), d1_hi);
        }
        i += 8;
    }
    pool_bwd_row(PoolRow {
        r0: &r.r0[2 * full..],
        r1: &r.r1[2 * full..],
        g: &r.g[full..],
        y: r.y.map(|y| &y[full..]),
        d0: &mut r.d0[2 * full..],
        d1: &mut r.d1[2 * full..],
    });
}

multiversion! {
    /// Applies `y = max?(x * scale[c] + shift[c], 0)` to `n` images of `c` planes of
    /// `hw` values.
    pub fn affine_channels(
        x: &[f32],
        scale: &[f32],
        shift: &[f32],
        n: usize,
        c: usize,
        hw: usize,
        relu: bool,
        y: &mut [f32],
    ) {
        assert!(x.len() >= n * c * hw && y.len() >= n * c * hw && scale.len() >= c && shift.len() >= c);
        for i in 0..n * c {
            let ch = i % c;
            let (s, t) = (scale[ch], shift[ch]);
            let xs = &x[i * hw..(i + 1) * hw];
            let ys = &mut y[i * hw..(i + 1) * hw];
            if relu {
                for (d, v) in ys.iter_mut().zip(xs) {
                    *d = (v * s + t).max(0.0);
                }
            } else {
                for (d, v) in ys.iter_mut().zip(xs) {
                    *d = v * s + t;
                }
            }
        }
    }
}

multiversion! {
    /// Sum with eight independent accumulators, so the loop vectorises (a plain
    /// float `sum()` is a serial dependency chain).
    pub fn sum(x: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let chunks = x.chunks_exact(8);
        let rest: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for (a, v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        acc.iter().sum::<f32>() + rest
    }
}

multiversion! {
    /// `sum((x - m)^2)`, vectorised as [`sum`].
    pub fn sum_sq_dev(x: &[f32], m: f32) -> f32 {
        let mut acc = [0f32; 8];
        let chunks = x.chunks_exact(8);
        let rest: f32 = chunks.remainder().iter().map(|v| (v - m) * (v - m)).sum();
        for c in chunks {
            for (a, v) in acc.iter_mut().zip(c) {
                *a += (v - m) * (v - m);
            }
        }
        acc.iter().sum::<f32>() + rest
    }
}

/// BatchNorm backward sums over one plane: `(sum(g), sum(g * xhat))` where
/// `xhat = (x - m) * s` and `g = dy`, masked to `y > 0` when `relu` is set.
pub fn bn_backward_sums(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    m: f32,
    s: f32,
    relu: bool,
) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: `bn_sums_avx2` needs AVX2 and FMA, which this CPU has.
        return unsafe { bn_sums_avx2(x, y, dy, m, s, relu) };
    }
    bn_sums_portable(x, y, dy, m, s, relu)
}

/// [`bn_backward_sums`] with AVX2 intrinsics: LLVM did not vectorise the
/// masked two-sum loop well even for AVX2 (it kept a per-lane test and
/// branch), and this was the largest of our own kernels in a training step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn bn_sums_avx2(x: &[f32], y: &[f32], dy: &[f32], m: f32, s: f32, relu: bool) -> (f32, f32) {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len()).min(dy.len());
    let full = n / 8 * 8;
    let (mut sg, mut sgx) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mv, zero) = (_mm256_set1_ps(m), _mm256_setzero_ps());
    let mut i = 0;
    while i < full {
        // SAFETY: `i + 8 <= full <= n`, and `n` is at most each slice's
        // length, so the three unaligned 8-lane loads stay inside the slices.
        let (xv, yv, gv) = unsafe {
            (
                _mm256_loadu_ps(x.as_ptr().add(i)),
                _mm256_loadu_ps(y.as_ptr().add(i)),
                _mm256_loadu_ps(dy.as_ptr().add(i)),
            )
        };
        let g = if relu {
            _mm256_and_ps(gv, _mm256_cmp_ps::<_CMP_GT_OQ>(yv, zero))
        } else {
            gv
        };
        sg = _mm256_add_ps(sg, g);
        sgx = _mm256_fmadd_ps(g, _mm256_sub_ps(xv, mv), sgx);
        i += 8;
    }
    let (mut lg, mut lgx) = ([0f32; 8], [0f32; 8]);
    // SAFETY: each store writes 8 floats into an 8-float array.
    unsafe {
        _mm256_storeu_ps(lg.as_mut_ptr(), sg);
        _mm256_storeu_ps(lgx.as_mut_ptr(), sgx);
    }
    // The last `n % 8` values, with the portable loop (scale applied below).
    let (ta, tb) = bn_sums_portable(&x[full..n], &y[full..n], &dy[full..n], m, 1.0, relu);
    let a = lg.iter().sum::<f32>() + ta;
    let b = lgx.iter().sum::<f32>() + tb;
    (a, b * s)
}

/// `g` where `y > 0`, else 0, as a bit mask rather than a branch so that loops
/// over it vectorise (with `if`, LLVM kept a compare and jump per element).
#[inline(always)]
fn relu_mask(g: f32, y: f32) -> f32 {
    f32::from_bits(g.to_bits() & u32::from(y > 0.0).wrapping_neg())
}

/// [`bn_backward_sums`] without AVX2.
fn bn_sums_portable(x: &[f32], y: &[f32], dy: &[f32], m: f32, s: f32, relu: bool) -> (f32, f32) {
    if relu {
        bn_sums::<true>(x, y, dy, m, s)
    } else {
        bn_sums::<false>(x, y, dy, m, s)
    }
}

/// [`bn_sums_portable`] specialised on the mask.
fn bn_sums<const RELU: bool>(x: &[f32], y: &[f32], dy: &[f32], m: f32, s: f32) -> (f32, f32) {
    let mut sg = [0f32; 8];
    let mut sgx = [0f32; 8];
    let n = x.len().min(y.len()).min(dy.len());
    let full = n / 8 * 8;
    let lanes = x[..full]
        .chunks_exact(8)
        .zip(y[..full].chunks_exact(8))
        .zip(dy[..full].chunks_exact(8));
    for ((xc, yc), gc) in lanes {
        for l in 0..8 {
            let g = if RELU { relu_mask(gc[l], yc[l]) } else { gc[l] };
            sg[l] += g;
            sgx[l] += g * (xc[l] - m);
        }
    }
    let (mut a, mut b) = (sg.iter().sum::<f32>(), sgx.iter().sum::<f32>());
    for i in full..n {
        let g = if RELU { relu_mask(dy[i], y[i]) } else { dy[i] };
        a += g;
        b += g * (x[i] - m);
    }
    (a, b * s)
}

multiversion! {
    /// BatchNorm input gradient over one plane:
    /// `dx = k * (g - mean_g - xhat * mean_gx)`, with `coef = (m, s, k, mean_g,
    /// mean_gx)`.
    pub fn bn_backward_dx(
        x: &[f32],
        y: &[f32],
        dy: &[f32],
        coef: (f32, f32, f32, f32, f32),
        relu: bool,
        dx: &mut [f32],
    ) {
        if relu {
            bn_dx::<true>(x, y, dy, coef, dx);
        } else {
            bn_dx::<false>(x, y, dy, coef, dx);
        }
    }
}

/// [`bn_backward_dx`] specialised on the mask.
#[inline(always)]
fn bn_dx<const RELU: bool>(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    (m, s, k, mg, mgx): (f32, f32, f32, f32, f32),
    dx: &mut [f32],
) {
    let ms = s * mgx;
    for (((d, &xv), &yv), &gv) in dx.iter_mut().zip(x).zip(y).zip(dy) {
        let g = if RELU { relu_mask(gv, yv) } else { gv };
        *d = k * (g - mg - (xv - m) * ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxpool2_backward_picks_the_first_maximum_and_zeroes_the_rest() {
        // Few distinct values, so most windows have ties; odd sizes leave a
        // dropped row and column, which must come out zero even when `dx`
        // starts as garbage.
        // Rows of 16 or more windows take the 8-window AVX2 path.
        for (planes, h, w) in [
            (2usize, 5usize, 7usize),
            (1, 4, 4),
            (3, 1, 3),
            (1, 6, 9),
            (2, 5, 37),
            (1, 4, 48),
        ] {
            let x: Vec<f32> = (0..planes * h * w).map(|i| ((i * 7) % 3) as f32).collect();
            let (ho, wo) = (h / 2, w / 2);
            let dy: Vec<f32> = (0..planes * ho * wo).map(|i| i as f32 + 1.0).collect();
            let y: Vec<f32> = (0..planes * ho * wo)
                .map(|i| (i % 3) as f32 - 1.0)
                .collect();
            for relu in [false, true] {
                let mut want = vec![0f32; planes * h * w];
                for p in 0..planes {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let i00 = p * h * w + 2 * oy * w + 2 * ox;
                            let mut best = i00;
                            for i in [i00 + 1, i00 + w, i00 + w + 1] {
                                if x[i] > x[best] {
                                    best = i;
                                }
                            }
                            let o = p * ho * wo + oy * wo + ox;
                            if !relu || y[o] > 0.0 {
                                want[best] += dy[o];
                            }
                        }
                    }
                }
                let mask = relu.then_some(&y[..]);
                let mut got = vec![f32::NAN; planes * h * w];
                maxpool2_backward(&x, &dy, mask, planes, h, w, &mut got);
                assert_eq!(got, want, "{planes}x{h}x{w} relu {relu}");
                let mut got = vec![f32::NAN; planes * h * w];
                pool_bwd_rows((&x, &dy, mask), (planes, h, w), &mut got, pool_bwd_row);
                assert_eq!(got, want, "portable {planes}x{h}x{w} relu {relu}");
            }
        }
    }

    #[test]
    fn depthwise3x3_and_its_backward_match_the_definition() {
        for (c, h, w) in [
            (2usize, 5usize, 7usize),
            (1, 1, 1),
            (3, 2, 9),
            (2, 24, 24),
            (1, 4, 2),
        ] {
            let x: Vec<f32> = (0..c * h * w).map(|i| (i as f32 * 0.37).sin()).collect();
            let dy: Vec<f32> = (0..c * h * w).map(|i| (i as f32 * 0.53).cos()).collect();
            let wt: Vec<f32> = (0..c * 9).map(|i| (i as f32 * 0.71).sin()).collect();
            let (mut want_dx, mut want_dw) = (vec![0f32; c * h * w], vec![0f32; c * 9]);
            let mut want_y = vec![0f32; c * h * w];
            for ch in 0..c {
                for oy in 0..h {
                    for ox in 0..w {
                        let g = dy[ch * h * w + oy * w + ox];
                        for k in 0..9 {
                            let (iy, ix) =
                                ((oy + k / 3).wrapping_sub(1), (ox + k % 3).wrapping_sub(1));
                            if iy < h && ix < w {
                                let i = ch * h * w + iy * w + ix;
                                want_dx[i] += wt[ch * 9 + k] * g;
                                want_dw[ch * 9 + k] += x[i] * g;
                                want_y[ch * h * w + oy * w + ox] += wt[ch * 9 + k] * x[i];
                            }
                        }
                    }
                }
            }
            let mut y = vec![f32::NAN; c * h * w];
            depthwise3x3(&x, &wt, c, h, w, &mut y);
            for (a, b) in y.iter().zip(&want_y) {
                assert!((a - b).abs() < 1e-4, "forward {c}x{h}x{w}: {a} vs {b}");
            }
            let (mut dx, mut dw) = (vec![0f32; c * h * w], vec![0f32; c * 9]);
            depthwise3x3_backward(&x, &wt, &dy, c, h, w, &mut dx, &mut dw);
            for (a, b) in dx.iter().zip(&want_dx).chain(dw.iter().zip(&want_dw)) {
                assert!((a - b).abs() < 1e-4, "{c}x{h}x{w}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn bn_backward_sums_agree_with_the_portable_loop() {
        // Odd lengths exercise the tails. The AVX2 version is compared where
        // the CPU has AVX2 (CI's and ours do); elsewhere this only checks the
        // dispatching function against the loop it dispatches to.
        for n in [1usize, 7, 8, 9, 45, 2116] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let y: Vec<f32> = (0..n).map(|i| (i as f32 * 0.91).cos()).collect();
            let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.13).sin() * 2.0).collect();
            for relu in [false, true] {
                let want = bn_sums_portable(&x, &y, &g, 0.1, 1.7, relu);
                #[cfg(target_arch = "x86_64")]
                let got = if has_avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA (checked).
                    unsafe { bn_sums_avx2(&x, &y, &g, 0.1, 1.7, relu) }
                } else {
                    bn_backward_sums(&x, &y, &g, 0.1, 1.7, relu)
                };
                #[cfg(not(target_arch = "x86_64"))]
                let got = bn_backward_sums(&x, &y, &g, 0.1, 1.7, relu);
                let tol = 1e-4 * (n as f32).sqrt();
                assert!(
                    (got.0 - want.0).abs() < tol,
                    "n {n} relu {relu}: {got:?} vs {want:?}"
                );
                assert!(
                    (got.1 - want.1).abs() < tol,
                    "n {n} relu {relu}: {got:?} vs {want:?}"
                );
            }
        }
    }

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matmul_matches_naive_including_transposed_views() {
        let (m, k, n) = (7, 13, 29);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.11).cos()).collect();
        let want = naive(&a, &b, m, k, n);
        let mut got = vec![0.0; m * n];
        matmul(
            &mut got,
            Mat::row_major(&a, m, k),
            Mat::row_major(&b, k, n),
            false,
            1,
        );
        for (x, y) in got.iter().zip(&want) {
            assert!((x - y).abs() < 1e-4);
        }
        // a^T stored as (k x m) row-major, viewed transposed.
        let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let mut got2 = vec![1.0; m * n];
        matmul(
            &mut got2,
            Mat::transposed(&at, m, k),
            Mat::row_major(&b, k, n),
            true,
            2,
        );
        for (x, y) in got2.iter().zip(&want) {
            assert!((x - (y + 1.0)).abs() < 1e-4);
        }
    }

    #[test]
    fn im2col_then_col2im_counts_window_overlaps() {
        for g in [
            ConvGeom {
                c: 2,
                h: 5,
                w: 7,
                k: 3,
                stride: 1,
                pad: 1,
            },
            ConvGeom {
                c: 3,
                h: 6,
                w: 4,
                k: 1,
                stride: 2,
                pad: 0,
            },
            ConvGeom {
                c: 1,
                h: 1,
                w: 1,
                k: 3,
                stride: 1,
                pad: 1,
            },
        ] {
            let x = vec![1.0; g.c * g.h * g.w];
            let mut col = vec![f32::NAN; g.col_rows() * g.col_cols()];
            im2col(&x, &g, &mut col);
            assert!(col.iter().all(|v| *v == 0.0 || *v == 1.0));
            let mut dx = vec![0.0; x.len()];
            col2im(&col, &g, &mut dx);
            // Centre pixel of a 3x3/pad-1 conv is covered by 9 windows.
            if g.k == 3 && g.h >= 3 && g.w >= 3 {
                assert_eq!(dx[g.w + 1], 9.0);
                assert_eq!(dx[0], 4.0);
            }
        }
    }
}

//! Channel-last (`rows x cols x channels`) kernels for small single-shot
//! networks (YuNet in `models::yunet`): a point-wise convolution there is one
//! GEMM ([`crate::slice::matmul`]); these are the rest. Compiled for AVX2 and
//! FMA as well as the baseline, chosen at run time.

#[cfg(target_arch = "x86_64")]
use crate::slice::has_avx2_fma;
use crate::slice::multiversion;

multiversion! {
    /// 3x3 depth-wise convolution with zero padding 1 and stride 1 of `x`
    /// (`h x w x c`) into `y` (the same shape): `wts` is `[9, c]` (tap
    /// `ky * 3 + kx` first), `bias` `[c]`, optionally followed by ReLU.
    ///
    /// # Panics
    /// If a slice is shorter than its shape says.
    pub fn depthwise3x3(
        x: &[f32],
        h: usize,
        w: usize,
        c: usize,
        wts: &[f32],
        bias: &[f32],
        relu: bool,
        y: &mut [f32],
    ) {
        assert!(x.len() >= h * w * c && y.len() >= h * w * c, "depthwise3x3 sizes");
        assert!(wts.len() >= 9 * c && bias.len() >= c, "depthwise3x3 weights");
        // Fixed channel counts keep a pixel's sums in vector registers
        // across the nine taps.
        match c {
            8 => dw_fixed::<8>(x, h, w, wts, bias, relu, y),
            16 => dw_fixed::<16>(x, h, w, wts, bias, relu, y),
            32 => dw_fixed::<32>(x, h, w, wts, bias, relu, y),
            64 => dw_fixed::<64>(x, h, w, wts, bias, relu, y),
            _ => dw_any(x, h, w, c, wts, bias, relu, y),
        }
    }
}

/// The input pixel under tap `k` (0..3) of output index `i` (rows or
/// columns, `n` of them), if inside.
#[inline(always)]
fn tap(i: usize, k: usize, n: usize) -> Option<usize> {
    (i + k).checked_sub(1).filter(|&s| s < n)
}

#[inline(always)]
fn dw_fixed<const C: usize>(
    x: &[f32],
    h: usize,
    w: usize,
    wts: &[f32],
    bias: &[f32],
    relu: bool,
    y: &mut [f32],
) {
    for (r, out_row) in y[..h * w * C].chunks_exact_mut(w * C).enumerate() {
        for (col, out) in out_row.chunks_exact_mut(C).enumerate() {
            let mut acc = [0f32; C];
            acc.copy_from_slice(&bias[..C]);
            for ky in 0..3 {
                let Some(sy) = tap(r, ky, h) else { continue };
                for kx in 0..3 {
                    let Some(sx) = tap(col, kx, w) else { continue };
                    let px = &x[(sy * w + sx) * C..][..C];
                    let wk = &wts[(ky * 3 + kx) * C..][..C];
                    for i in 0..C {
                        acc[i] += wk[i] * px[i];
                    }
                }
            }
            if relu {
                for v in &mut acc {
                    *v = v.max(0.0);
                }
            }
            out.copy_from_slice(&acc);
        }
    }
}

#[inline(always)]
fn dw_any(
    x: &[f32],
    h: usize,
    w: usize,
    c: usize,
    wts: &[f32],
    bias: &[f32],
    relu: bool,
    y: &mut [f32],
) {
    for (r, out_row) in y[..h * w * c].chunks_exact_mut(w * c).enumerate() {
        for (col, out) in out_row.chunks_exact_mut(c).enumerate() {
            out.copy_from_slice(&bias[..c]);
            for ky in 0..3 {
                let Some(sy) = tap(r, ky, h) else { continue };
                for kx in 0..3 {
                    let Some(sx) = tap(col, kx, w) else { continue };
                    let px = &x[(sy * w + sx) * c..][..c];
                    let wk = &wts[(ky * 3 + kx) * c..][..c];
                    for ((o, k), v) in out.iter_mut().zip(wk).zip(px) {
                        *o += k * v;
                    }
                }
            }
            if relu {
                for v in out.iter_mut() {
                    *v = v.max(0.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depthwise_matches_a_plain_loop_for_every_channel_path() {
        for c in [3, 8, 16, 32, 64] {
            let (h, w) = (5, 7);
            let x: Vec<f32> = (0..h * w * c).map(|i| (i as f32 * 0.37).sin()).collect();
            let wts: Vec<f32> = (0..9 * c).map(|i| (i as f32 * 0.11).cos()).collect();
            let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.1 - 0.3).collect();
            for relu in [false, true] {
                let mut y = vec![0f32; h * w * c];
                depthwise3x3(&x, h, w, c, &wts, &bias, relu, &mut y);
                for r in 0..h {
                    for col in 0..w {
                        for ch in 0..c {
                            let mut want = bias[ch];
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (sy, sx) = (r as isize + ky - 1, col as isize + kx - 1);
                                    if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                        continue;
                                    }
                                    want += wts[(ky * 3 + kx) as usize * c + ch]
                                        * x[(sy as usize * w + sx as usize) * c + ch];
                                }
                            }
                            if relu {
                                want = want.max(0.0);
                            }
                            let got = y[(r * w + col) * c + ch];
                            assert!(
                                (got - want).abs() < 1e-5,
                                "c {c} at {r} {col} {ch}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}

//! Summed-area tables of 8-bit images, for resampling faces
//! (`perception::align`): built one row at a time from the luma of every
//! `step`-th byte of a frame row ([`sat_row`]), read as box sums
//! ([`box_sums`]). On x86-64 with AVX2, gathers read eight samples or boxes
//! at once; elsewhere (and for what a gather could not read safely) the same
//! arithmetic runs one at a time, so both paths give identical results.

#[cfg(target_arch = "x86_64")]
use crate::slice::has_avx2_fma;

/// BT.601 luma of the pixel that starts `px`, in 1/256 grey levels
/// (0..=65,280): a gray pixel (`channels == 1`) times 256, else the first
/// three bytes taken as R, G, B with fixed-point weights summing to 2^16,
/// rounded.
///
/// # Panics
/// If `px` is shorter than one pixel.
#[inline]
pub fn luma256(px: &[u8], channels: usize) -> u32 {
    if channels == 1 {
        u32::from(px[0]) << 8
    } else {
        (19_595 * u32::from(px[0]) + 38_470 * u32::from(px[1]) + 7_471 * u32::from(px[2]) + 128)
            >> 8
    }
}

/// One row of a summed-area table kept in wrapping `u32` arithmetic (a
/// difference of entries is exact whenever the sum it stands for fits in 32
/// bits; [`box_sums`] needs 31): `out[0] = above[0]` and, for `i < n`,
/// `out[i + 1] = above[i + 1] + luma256(row[i * step..]) + ... + luma256(row[0..])`.
/// `channels` is 1 (gray) or 3 and more (R, G, B first); `step` is in bytes.
///
/// # Panics
/// If `channels` is 0 or 2, if `step` is 0, if `row` does not hold the `n` samples, or if
/// `above` or `out` is shorter than `n + 1`.
pub fn sat_row(row: &[u8], channels: usize, step: usize, n: usize, above: &[u32], out: &mut [u32]) {
    assert!(
        channels == 1 || channels >= 3,
        "sat_row: {channels} channels"
    );
    assert!(step > 0, "sat_row: step 0");
    assert!(
        n == 0 || (n - 1) * step + channels <= row.len(),
        "sat_row: row too short"
    );
    assert!(
        above.len() > n && out.len() > n,
        "sat_row: table rows too short"
    );
    out[0] = above[0];
    let mut lumas = [0u32; CHUNK];
    let mut acc = 0u32;
    let mut first = 0;
    while first < n {
        let m = (n - first).min(CHUNK);
        lumas_into(row, channels, step, first, &mut lumas[..m]);
        let (up, dst) = (&above[first + 1..][..m], &mut out[first + 1..][..m]);
        for ((d, &u), &l) in dst.iter_mut().zip(up).zip(&lumas[..m]) {
            acc = acc.wrapping_add(l);
            *d = u.wrapping_add(acc);
        }
        first += m;
    }
}

/// Samples converted per pass (a stack buffer).
const CHUNK: usize = 64;

/// `out[k] = luma256(row[(first + k) * step..])`.
fn lumas_into(row: &[u8], channels: usize, step: usize, first: usize, out: &mut [u32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() && row.len() <= i32::MAX as usize {
        // A gather reads four bytes from each sample's start: only samples
        // with four bytes left in the row, whole groups of eight.
        let readable = if row.len() < 4 {
            0
        } else {
            ((row.len() - 4) / step + 1).saturating_sub(first)
        };
        let groups = out.len().min(readable) / 8;
        if groups > 0 {
            // SAFETY: AVX2 is present (checked above); every gathered offset
            // `(first + k) * step` for `k < 8 * groups` has four bytes left in
            // `row` (`readable`), fits in an `i32` (the row does), and
            // `out` holds `8 * groups` values.
            unsafe { gather_lumas(row, channels == 1, step, first, &mut out[..8 * groups]) };
            done = 8 * groups;
        }
    }
    for (k, o) in out.iter_mut().enumerate().skip(done) {
        *o = luma256(&row[(first + k) * step..], channels);
    }
}

/// [`lumas_into`] for whole groups of eight samples, with AVX2 gathers.
///
/// # Safety
/// AVX2 must be available; `out.len()` must be a multiple of 8; for every
/// `k < out.len()`, `(first + k) * step + 4 <= row.len() <= i32::MAX`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gather_lumas(row: &[u8], gray: bool, step: usize, first: usize, out: &mut [u32]) {
    use std::arch::x86_64::*;
    let base = row.as_ptr().cast::<i32>();
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let stepv = _mm256_set1_epi32(step as i32);
    let byte = _mm256_set1_epi32(0xff);
    let (wr, wg, wb) = (
        _mm256_set1_epi32(19_595),
        _mm256_set1_epi32(38_470),
        _mm256_set1_epi32(7_471),
    );
    let half = _mm256_set1_epi32(128);
    for (g, dst) in out.chunks_exact_mut(8).enumerate() {
        let start = _mm256_set1_epi32((first + 8 * g) as i32);
        let offsets = _mm256_mullo_epi32(_mm256_add_epi32(start, lane), stepv);
        // SAFETY: every offset has four readable bytes (the caller's
        // contract); a gather needs no alignment.
        let v = unsafe { _mm256_i32gather_epi32::<1>(base, offsets) };
        let luma = if gray {
            _mm256_slli_epi32::<8>(_mm256_and_si256(v, byte))
        } else {
            let red = _mm256_and_si256(v, byte);
            let green = _mm256_and_si256(_mm256_srli_epi32::<8>(v), byte);
            let blue = _mm256_and_si256(_mm256_srli_epi32::<16>(v), byte);
            let sum = _mm256_add_epi32(
                _mm256_add_epi32(_mm256_mullo_epi32(red, wr), _mm256_mullo_epi32(green, wg)),
                _mm256_add_epi32(_mm256_mullo_epi32(blue, wb), half),
            );
            _mm256_srli_epi32::<8>(sum)
        };
        // SAFETY: `dst` is eight `u32`s; an unaligned store.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast::<__m256i>(), luma) };
    }
}

/// Sums over square boxes of a summed-area table made by [`sat_row`]
/// (`sums` holds rows of `row_len` entries), read bilinearly at the corners:
/// `out[k]` is `scale` times the sum over table coordinates
/// `[a0[k], a0[k] + span] x [b0[k], b0[k] + span]`. Every term is formed as an
/// exact integer box or strip sum (a wrapping difference, exact when the box
/// sum fits in 31 bits) before it is weighted, so the table's magnitude never
/// costs precision. Eight boxes at a time with AVX2 gathers where the CPU has
/// them, with the same operations in the same order as one at a time (equal
/// results).
///
/// # Panics
/// If the slices' lengths differ, if `span` is negative or NaN, or if a box
/// does not lie inside the table: every `a0[k] >= 0`,
/// `a0[k] + span < row_len - 1`, `b0[k] >= 0` and
/// `b0[k] + span < sums.len() / row_len - 1`.
pub fn box_sums(
    sums: &[u32],
    row_len: usize,
    a0: &[f32],
    b0: &[f32],
    span: f32,
    scale: f32,
    out: &mut [f32],
) {
    assert!(
        a0.len() == out.len() && b0.len() == out.len(),
        "box_sums: lengths differ"
    );
    let rows = sums.len().checked_div(row_len).unwrap_or(0);
    assert!(
        a0.iter()
            .zip(b0)
            .all(|(&a, &b)| box_fits(a, b, span, row_len, rows)),
        "box_sums: a box leaves the table"
    );
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() && sums.len() <= i32::MAX as usize {
        done = out.len() / 8 * 8;
        // SAFETY: AVX2 is present (checked above); every box lies inside the
        // table (asserted above), so every gathered index is below
        // `sums.len()`, which fits in an `i32`; the slices hold `done` values.
        unsafe {
            gather_box_sums(
                sums,
                row_len,
                &a0[..done],
                &b0[..done],
                span,
                scale,
                &mut out[..done],
            );
        }
    }
    for k in done..out.len() {
        out[k] = box_sum(sums, row_len, a0[k], b0[k], span) * scale;
    }
}

/// Whether the box `[a, a + span] x [b, b + span]` (table coordinates) lies
/// inside a table of `rows` rows of `row_len` entries as [`box_sums`] needs
/// it: false for a negative or NaN span or corner.
pub fn box_fits(a: f32, b: f32, span: f32, row_len: usize, rows: usize) -> bool {
    let inside = |x: f32, n: usize| x >= 0.0 && x + span < n.saturating_sub(1) as f32;
    span >= 0.0 && inside(a, row_len) && inside(b, rows)
}

/// One box of [`box_sums`], unscaled.
#[inline]
fn box_sum(sums: &[u32], row_len: usize, a0: f32, b0: f32, span: f32) -> f32 {
    let split = |a: f32| {
        let i = a as i32;
        (i as usize, a - i as f32)
    };
    box_sum_at(
        sums,
        row_len,
        [split(a0), split(a0 + span)],
        [split(b0), split(b0 + span)],
    )
}

/// The sum of the table box between columns `i0 + fa0` and `i1 + fa1` and
/// rows `j0 + fb0` and `j1 + fb1` (table coordinates split into index and
/// weight, `i0 <= i1`, `j0 <= j1`), bilinear at the corners, as
/// [`box_sums`] forms it.
///
/// # Panics
/// If `i1 + 1 >= row_len` or row `j1 + 1` is outside the table. With
/// `i0 > i1` or `j0 > j1` the result is meaningless (not a box).
#[inline]
pub fn box_sum_at(
    sums: &[u32],
    row_len: usize,
    [(i0, fa0), (i1, fa1)]: [(usize, f32); 2],
    [(j0, fb0), (j1, fb1)]: [(usize, f32); 2],
) -> f32 {
    // Columns `i0..i1` of row `j` and the partial columns at both ends, as
    // sums over the rows above `j`.
    let row = |j: usize| {
        let r = &sums[j * row_len..][..row_len];
        [
            r[i1].wrapping_sub(r[i0]),
            r[i1 + 1].wrapping_sub(r[i1]),
            r[i0 + 1].wrapping_sub(r[i0]),
        ]
    };
    let (r0, r0n, r1, r1n) = (row(j0), row(j0 + 1), row(j1), row(j1 + 1));
    // Rows between two table rows: exact integers, then weighted.
    let strip = |top: [u32; 3], bottom: [u32; 3]| {
        let d = |k: usize| bottom[k].wrapping_sub(top[k]) as i32 as f32;
        d(0) + fa1 * d(1) - fa0 * d(2)
    };
    strip(r0, r1) + fb1 * strip(r1, r1n) - fb0 * strip(r0, r0n)
}

/// [`box_sums`] for whole groups of eight boxes, with AVX2 gathers.
///
/// # Safety
/// AVX2 must be available; the slices' lengths must be equal multiples of 8;
/// every box must lie inside the table as [`box_sums`] asserts, and
/// `sums.len() <= i32::MAX`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gather_box_sums(
    sums: &[u32],
    row_len: usize,
    a0: &[f32],
    b0: &[f32],
    span: f32,
    scale: f32,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let base = sums.as_ptr().cast::<i32>();
    let spanv = _mm256_set1_ps(span);
    let scalev = _mm256_set1_ps(scale);
    let row_lenv = _mm256_set1_epi32(row_len as i32);
    let one = _mm256_set1_epi32(1);
    let groups = out.len() / 8;
    for g in 0..groups {
        // SAFETY: `8 * g + 8 <= len` for all three slices; unaligned loads.
        let (av, bv) = unsafe {
            (
                _mm256_loadu_ps(a0.as_ptr().add(8 * g)),
                _mm256_loadu_ps(b0.as_ptr().add(8 * g)),
            )
        };
        let split = |a: __m256| {
            let i = _mm256_cvttps_epi32(a);
            (i, _mm256_sub_ps(a, _mm256_cvtepi32_ps(i)))
        };
        let ((i0, fa0), (i1, fa1)) = (split(av), split(_mm256_add_ps(av, spanv)));
        let ((j0, fb0), (j1, fb1)) = (split(bv), split(_mm256_add_ps(bv, spanv)));
        let (i0n, i1n) = (_mm256_add_epi32(i0, one), _mm256_add_epi32(i1, one));
        let row = |j: __m256i| {
            let start = _mm256_mullo_epi32(j, row_lenv);
            // SAFETY: each index `j * row_len + i` with `i <= i1 + 1 < row_len`
            // and `j <= j1 + 1 < rows` is inside `sums` (the caller's contract).
            let at = |i: __m256i| unsafe {
                _mm256_i32gather_epi32::<4>(base, _mm256_add_epi32(start, i))
            };
            let (s0, s0n, s1, s1n) = (at(i0), at(i0n), at(i1), at(i1n));
            [
                _mm256_sub_epi32(s1, s0),
                _mm256_sub_epi32(s1n, s1),
                _mm256_sub_epi32(s0n, s0),
            ]
        };
        let (r0, r0n) = (row(j0), row(_mm256_add_epi32(j0, one)));
        let (r1, r1n) = (row(j1), row(_mm256_add_epi32(j1, one)));
        let strip = |top: [__m256i; 3], bottom: [__m256i; 3]| {
            let d = |k: usize| _mm256_cvtepi32_ps(_mm256_sub_epi32(bottom[k], top[k]));
            _mm256_sub_ps(
                _mm256_add_ps(d(0), _mm256_mul_ps(fa1, d(1))),
                _mm256_mul_ps(fa0, d(2)),
            )
        };
        let sum = _mm256_sub_ps(
            _mm256_add_ps(strip(r0, r1), _mm256_mul_ps(fb1, strip(r1, r1n))),
            _mm256_mul_ps(fb0, strip(r0, r0n)),
        );
        // SAFETY: `8 * g + 8 <= out.len()`; an unaligned store.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * g), _mm256_mul_ps(sum, scalev)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table row one sample at a time, in `u64` (no wrapping).
    fn reference(row: &[u8], channels: usize, step: usize, n: usize, above: &[u32]) -> Vec<u32> {
        let mut out = vec![above[0]];
        let mut acc = 0u64;
        for i in 0..n {
            acc += u64::from(luma256(&row[i * step..], channels));
            out.push((u64::from(above[i + 1]) + acc) as u32);
        }
        out
    }

    #[test]
    fn rows_equal_the_one_at_a_time_sums() {
        // Pseudo-random bytes; rows that end exactly at a sample (where a
        // gather could read past the end), every channel count and stride.
        let bytes: Vec<u8> = (0u32..4000)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for channels in [1, 3, 4] {
            for stride in [1, 2, 3, 7] {
                let step = stride * channels;
                for n in [0, 1, 7, 8, 9, 63, 64, 65, 130] {
                    let len = if n == 0 { 0 } else { (n - 1) * step + channels };
                    let row = &bytes[..len];
                    let above: Vec<u32> = (0..=n as u32)
                        .map(|i| i.wrapping_mul(3_000_000_019))
                        .collect();
                    let mut out = vec![0u32; n + 1];
                    sat_row(row, channels, step, n, &above, &mut out);
                    assert_eq!(
                        out,
                        reference(row, channels, step, n, &above),
                        "channels {channels} stride {stride} n {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn box_sums_equal_one_box_at_a_time_and_the_pixels() {
        // A table of a known image: box sums of whole cells are its pixel
        // sums, fractional ones interpolate, and eight at a time (AVX2) equal
        // one at a time bit for bit.
        let (w, h) = (23, 17);
        let img: Vec<u8> = (0..w * h).map(|i| ((i * 37) % 251) as u8).collect();
        let row_len = w + 1;
        let mut sums = vec![0u32; (h + 1) * row_len];
        for j in 0..h {
            let (above, below) = sums.split_at_mut((j + 1) * row_len);
            sat_row(&img[j * w..], 1, 1, w, &above[j * row_len..], below);
        }
        let whole = box_sum(&sums, row_len, 2.0, 3.0, 4.0);
        let img = &img;
        let pixels: u32 = (3..7)
            .flat_map(|y| (2..6).map(move |x| u32::from(img[y * w + x]) << 8))
            .sum();
        assert_eq!(whole, pixels as f32);
        let n = 37;
        let a0: Vec<f32> = (0..n).map(|k| (k as f32 * 0.53) % 17.9).collect();
        let b0: Vec<f32> = (0..n).map(|k| (k as f32 * 0.31) % 12.9).collect();
        let mut out = vec![0f32; n];
        box_sums(&sums, row_len, &a0, &b0, 3.05, 0.5, &mut out);
        for k in 0..n {
            assert_eq!(
                out[k],
                box_sum(&sums, row_len, a0[k], b0[k], 3.05) * 0.5,
                "box {k}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "a box leaves the table")]
    fn a_box_outside_the_table_is_refused() {
        let sums = vec![0u32; 5 * 5];
        box_sums(&sums, 5, &[1.0], &[0.5], 3.0, 1.0, &mut [0.0]);
    }

    #[test]
    fn luma_of_white_and_gray() {
        assert_eq!(luma256(&[255, 255, 255], 3), 65_280);
        assert_eq!(luma256(&[0, 0, 0], 3), 0);
        assert_eq!(luma256(&[200], 1), 51_200);
    }

    #[test]
    #[should_panic(expected = "row too short")]
    fn a_short_row_is_refused() {
        sat_row(&[0; 5], 3, 3, 3, &[0; 4], &mut [0; 4]);
    }
}

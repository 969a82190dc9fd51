//! Per-layer A/B of ARCH-1's 3x3 convolutions on one thread, one image:
//! im2col + GEMM (the `gemm` crate), the direct kernel on 4-row blocks
//! (`direct::conv`) and what `direct::conv_image` picks (the wide kernel,
//! `direct::conv_wide`, on small planes), each including its padding and
//! unpadding copies. All run in the same process, alternated over three
//! rounds (the last one is printed), so the ratios hold on a noisy machine.
//!
//! `cargo bench -p kernels --bench conv_ab`

use std::time::Instant;

use kernels::direct::{self, Padded};
use kernels::slice::{self, ConvGeom, Mat};

/// `(outputs, inputs, side)` of ARCH-1's 3x3 convolutions (Table 1).
const LAYERS: [(usize, usize, usize); 9] = [
    (8, 1, 48),
    (8, 8, 48),
    (16, 8, 48),
    (16, 16, 48),
    (64, 32, 12),
    (64, 64, 12),
    (128, 64, 6),
    (128, 128, 6),
    (7, 128, 6),
];

fn seconds_per_call(reps: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    if !direct::fast() {
        println!("this CPU lacks AVX2/FMA: the direct kernel is not used here");
    }
    let (mut total_gemm, mut total_rows, mut total_direct) = (0.0, 0.0, 0.0);
    for round in 0..3 {
        for &(o, c, s) in &LAYERS {
            let g = ConvGeom {
                c,
                h: s,
                w: s,
                k: 3,
                stride: 1,
                pad: 1,
            };
            let x: Vec<f32> = (0..c * s * s).map(|i| (i as f32).sin()).collect();
            let w: Vec<f32> = (0..o * c * 9).map(|i| (i as f32).cos()).collect();
            let mut y = vec![0f32; o * s * s];
            let macs = o * c * 9 * s * s;
            let reps = (20_000_000 / macs).max(5);
            let mut col = vec![0f32; g.col_rows() * s * s];
            let gemm = seconds_per_call(reps, || {
                slice::im2col(&x, &g, &mut col);
                let wm = Mat::row_major(&w, o, c * 9);
                slice::matmul(&mut y, wm, Mat::row_major(&col, c * 9, s * s), false, 1);
            });
            let pg = Padded { h: s, w: s };
            let wp = direct::pack(&w, o, c);
            let (mut xp, mut flat) = (vec![0f32; c * pg.plane()], vec![0f32; o * pg.out_len()]);
            let rows = seconds_per_call(reps, || {
                pg.pad(&x, c, &mut xp);
                direct::conv(&xp, &wp, None, o, c, pg, false, &mut flat);
                pg.unpad(&flat, o, &mut y);
            });
            let packed = direct::Packed::new(&w, o, c, None);
            let mut scratch = Vec::new();
            let dir = seconds_per_call(reps, || {
                direct::conv_image(&x, &packed, None, pg, false, &mut scratch, &mut y);
            });
            if round == 2 {
                let rate = |t: f64| macs as f64 / t / 1e9;
                let kind = if direct::wide_fits(pg, o) {
                    "wide"
                } else {
                    "rows"
                };
                println!(
                    "o{o:3} c{c:3} {s:2}x{s:2}: im2col+gemm {:6.1} us ({:4.1} GMAC/s) | rows {:6.1} us ({:4.1} GMAC/s) | {kind} {:6.1} us ({:4.1} GMAC/s) | vs gemm {:.2}x, vs rows {:.2}x",
                    gemm * 1e6,
                    rate(gemm),
                    rows * 1e6,
                    rate(rows),
                    dir * 1e6,
                    rate(dir),
                    gemm / dir,
                    rows / dir
                );
                total_gemm += gemm;
                total_rows += rows;
                total_direct += dir;
            }
        }
    }
    println!(
        "all 3x3 layers: im2col+gemm {:.1} us, rows {:.1} us, chosen {:.1} us; speed-up {:.2}x over gemm, {:.2}x over rows",
        total_gemm * 1e6,
        total_rows * 1e6,
        total_direct * 1e6,
        total_gemm / total_direct,
        total_rows / total_direct
    );
}

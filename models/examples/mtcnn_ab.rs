//! Times MTCNN's networks on the engine against the candle graphs, net by
//! net, alternating in one process:
//! `cargo run --release -p models --example mtcnn_ab`.
//! Needs `assets/models/mtcnn.safetensors`; one thread (`RAYON_NUM_THREADS=1`
//! is set before anything runs).

use std::time::Instant;

use candle_core::{Device, Tensor};
use models::mtcnn::Mtcnn;
use models::mtcnn_engine::{MtcnnEngine, MtcnnScratch};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn input(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.37).sin() * 0.9).collect()
}

fn time(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

#[expect(unsafe_code, reason = "set_var before any thread pool exists")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: nothing has started a thread yet.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", "1") };
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../assets/models/mtcnn.safetensors"
    );
    let nets = Mtcnn::from_file(path, &Device::Cpu)?;
    let engine = MtcnnEngine::new(&nets)?;
    let mut s = MtcnnScratch::default();
    let runs = 30;
    for (h, w) in [(144, 192), (72, 97), (26, 34)] {
        let x = input(3 * h * w);
        let t = Tensor::from_vec(x.clone(), (1, 3, h, w), &Device::Cpu)?;
        let e = time(runs, || {
            engine.pnet(&x, (h, w), &mut s);
        });
        let c = time(runs, || {
            let _ = nets.pnet.forward(&t);
        });
        println!(
            "pnet {h}x{w}: engine {e:.3} ms, candle {c:.3} ms ({:.2}x)",
            c / e
        );
    }
    for n in [1, 10, 50] {
        let x = input(n * 3 * 24 * 24);
        let t = Tensor::from_vec(x.clone(), (n, 3, 24, 24), &Device::Cpu)?;
        let e = time(runs, || engine.rnet(&x, n, &mut s));
        let c = time(runs, || {
            let _ = nets.rnet.forward(&t);
        });
        println!(
            "rnet n={n}: engine {e:.3} ms, candle {c:.3} ms ({:.2}x)",
            c / e
        );
        let x = input(n * 3 * 48 * 48);
        let t = Tensor::from_vec(x.clone(), (n, 3, 48, 48), &Device::Cpu)?;
        let e = time(runs, || engine.onet(&x, n, &mut s));
        let c = time(runs, || {
            let _ = nets.onet.forward(&t);
        });
        println!(
            "onet n={n}: engine {e:.3} ms, candle {c:.3} ms ({:.2}x)",
            c / e
        );
    }
    Ok(())
}

//! `training bench`: CPU inference speed of one network on random input.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use clap::Args;
use models::{Arch, EmotionNet, INPUT_SIZE, ModelConfig};

/// Options of `training bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which network: arch1, arch2, arch3 or arch4.
    #[arg(long, default_value = "arch1")]
    arch: Arch,
    /// CPU threads for candle's kernels (sets `RAYON_NUM_THREADS`).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Timed batch-1 runs (after the warm-up).
    #[arg(long, default_value_t = 200)]
    runs: usize,
    /// Untimed runs before timing starts.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Timed batch-64 runs for the throughput figure.
    #[arg(long, default_value_t = 10)]
    batch_runs: usize,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_runs(net: &EmotionNet, x: &Tensor, warmup: usize, runs: usize) -> Result<Vec<Duration>> {
    for _ in 0..warmup {
        net.forward_t(x, false)?;
    }
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            // Reading one value forces the whole computation to finish.
            let y = net.forward_t(x, false)?;
            y.get(0)?.get(0)?.to_scalar::<f32>()?;
            Ok(t.elapsed())
        })
        .collect()
}

/// Runs the benchmark and prints its figures; the last line is
/// `archN b1 median_ms: X`.
pub fn run(args: &BenchArgs) -> Result<()> {
    ensure!(args.threads > 0, "--threads must be at least 1");
    ensure!(
        args.runs > 0 && args.batch_runs > 0,
        "--runs and --batch-runs must be at least 1"
    );
    // SAFETY: called before this program starts any thread (candle and rayon
    // create their pools lazily, on first use below), so nothing reads the
    // environment concurrently.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string()) };
    let dev = Device::Cpu;
    let cfg = ModelConfig::preset(args.arch);
    let varmap = VarMap::new();
    let net = EmotionNet::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))
        .context("building the network")?;
    let params: usize = varmap.all_vars().iter().map(|v| v.elem_count()).sum();
    let c = cfg.in_channels();
    let one = Tensor::rand(0f32, 1f32, (1, c, INPUT_SIZE, INPUT_SIZE), &dev)?;
    let batch = Tensor::rand(0f32, 1f32, (64, c, INPUT_SIZE, INPUT_SIZE), &dev)?;

    tracing::info!(arch = %args.arch, threads = args.threads, "benchmarking (random weights and input)");
    let b64 = time_runs(&net, &batch, 2, args.batch_runs)?;
    let b64_med = median(b64).as_secs_f64();
    let b1 = time_runs(&net, &one, args.warmup, args.runs)?;
    let mut sorted = b1.clone();
    sorted.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p10, p90) = (sorted[sorted.len() / 10], sorted[sorted.len() * 9 / 10]);
    println!("{} params: {params} threads: {}", args.arch, args.threads);
    println!(
        "{} b64 median_ms: {:.2} throughput_img_s: {:.0}",
        args.arch,
        b64_med * 1e3,
        64.0 / b64_med
    );
    println!(
        "{} b1 p10_ms: {:.3} p90_ms: {:.3} runs: {}",
        args.arch,
        ms(p10),
        ms(p90),
        args.runs
    );
    println!("{} b1 median_ms: {:.3}", args.arch, ms(median(b1)));
    Ok(())
}

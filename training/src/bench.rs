//! `training bench`: CPU inference speed of a network on random input, with our
//! fast ops and with candle's stock ops, in the same process.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use candle_core::{DType, Device, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use clap::{Args, ValueEnum};
use models::{Arch, EmotionNet, INPUT_SIZE, ModelConfig};

use serde_json::{Value, json};

use crate::output::line;

/// Which implementations to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Impl {
    /// The project's fast CPU ops (`kernels`).
    Fast,
    /// candle 0.11's stock ops.
    Stock,
    /// Both, stock first, with the speed-up ratio.
    Both,
}

/// Options of `training bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Which network: arch1, arch2, arch3 or arch4.
    #[arg(long, default_value = "arch1")]
    arch: Arch,
    /// CPU threads (sets `RAYON_NUM_THREADS` for candle and our kernels).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Implementations to time.
    #[arg(long = "impl", value_enum, default_value = "both")]
    implementation: Impl,
    /// Timed batch-1 runs (after the warm-up).
    #[arg(long, default_value_t = 300)]
    runs: usize,
    /// Untimed runs before timing starts.
    #[arg(long, default_value_t = 30)]
    warmup: usize,
    /// Timed batch-64 runs for the throughput figure.
    #[arg(long, default_value_t = 10)]
    batch_runs: usize,
    /// Also time training steps (forward, backward, Adam) at batch 64 and 256.
    #[arg(long)]
    train: bool,
    /// Timed training steps per batch size.
    #[arg(long, default_value_t = 6)]
    train_steps: usize,
    /// Also write the inference figures as JSON to this file (what
    /// `training report` reads for its latency table).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
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

/// Batch-1 median latency and batch-64 throughput of one implementation.
struct Figures {
    b1_median: Duration,
    b1_p10: Duration,
    b1_p90: Duration,
    b64_img_s: f64,
}

impl Figures {
    /// From the batch-1 run times and the batch-64 throughput.
    fn new(b1: &[Duration], b64_img_s: f64) -> Self {
        let mut sorted = b1.to_vec();
        sorted.sort();
        Self {
            b1_median: median(b1),
            b1_p10: sorted[sorted.len() / 10],
            b1_p90: sorted[sorted.len() * 9 / 10],
            b64_img_s,
        }
    }
}

fn measure(net: &EmotionNet, args: &BenchArgs, fast: bool) -> Result<Figures> {
    kernels::set_fast_ops(fast);
    let dev = Device::Cpu;
    let c = 1;
    let one = Tensor::rand(0f32, 1f32, (1, c, INPUT_SIZE, INPUT_SIZE), &dev)?;
    let batch = Tensor::rand(0f32, 1f32, (64, c, INPUT_SIZE, INPUT_SIZE), &dev)?;
    let b64 = time_runs(net, &batch, 2, args.batch_runs)?;
    let b1 = time_runs(net, &one, args.warmup, args.runs)?;
    Ok(Figures::new(&b1, 64.0 / median(&b64).as_secs_f64()))
}

fn report(arch: Arch, which: &str, f: &Figures, json: &mut serde_json::Map<String, Value>) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    json.insert(
        which.to_owned(),
        json!({
            "b1_median_ms": ms(f.b1_median),
            "b1_p10_ms": ms(f.b1_p10),
            "b1_p90_ms": ms(f.b1_p90),
            "b64_img_s": f.b64_img_s,
        }),
    );
    line(format!(
        "{arch} {which} b1 median_ms: {:.3} p10_ms: {:.3} p90_ms: {:.3} | b64 img_s: {:.0}",
        ms(f.b1_median),
        ms(f.b1_p10),
        ms(f.b1_p90),
        f.b64_img_s
    ));
}

/// Training throughput: forward (train mode), cross-entropy, backward, Adam.
fn train_bench(net: &EmotionNet, varmap: &VarMap, args: &BenchArgs) -> Result<()> {
    let dev = Device::Cpu;
    let impls: &[bool] = match args.implementation {
        Impl::Fast => &[true],
        Impl::Stock => &[false],
        Impl::Both => &[false, true],
    };
    // A synthetic dataset of 256 random faces for the augmented runs.
    let n = 256usize;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let pixels: Vec<u8> = (0..n * 48 * 48)
        .map(|_| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 56) as u8
        })
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 7) as u8).collect();
    let origins = (0..n)
        .map(|row| training::data::Origin::Row { row, usage: None })
        .collect();
    let classes = models::FER2013_CLASSES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let ds = training::data::Dataset::new(classes, pixels, labels, None, origins)?;
    let augmenter = training::augment::Augmenter::new(Default::default(), 0)?;
    for &fast in impls {
        kernels::set_fast_ops(fast);
        let mut opt = training::optim::Adam::new(varmap, training::optim::AdamConfig::default())?;
        for batch in [64usize, 256] {
            for augment in [false, true] {
                let idx: Vec<usize> = (0..batch).collect();
                let mut phases = [Duration::ZERO; 4];
                let mut steps = Vec::new();
                for i in 0..args.train_steps + 1 {
                    let t0 = Instant::now();
                    let mode = if augment {
                        training::augment::BatchMode::Augmented {
                            augmenter: &augmenter,
                            epoch: i as u64,
                        }
                    } else {
                        training::augment::BatchMode::Plain
                    };
                    let b = training::augment::make_batch(&ds, &idx, mode, &dev)?;
                    let t1 = Instant::now();
                    let logits = net.forward_t(&b.images, true)?;
                    let loss = candle_nn::loss::cross_entropy(&logits, &b.labels)?;
                    loss.to_scalar::<f32>()?;
                    let t2 = Instant::now();
                    let grads = loss.backward()?;
                    let t3 = Instant::now();
                    opt.step(&grads, 1e-3)?;
                    let t4 = Instant::now();
                    if i > 0 {
                        for (p, d) in phases.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2, t4 - t3]) {
                            *p += d;
                        }
                        steps.push(t4 - t0);
                    }
                }
                let n = args.train_steps as f64;
                let ms = |d: Duration| d.as_secs_f64() * 1e3 / n;
                let total: Duration = phases.iter().sum();
                line(format!(
                    "{} {} train b{batch}{} img_s: {:.0} (data {:.1} ms = {:.1}% of the step, forward {:.1} ms, backward {:.1} ms, adam {:.1} ms)",
                    args.arch,
                    if fast { "fast" } else { "stock" },
                    if augment { "_aug" } else { "" },
                    batch as f64 / median(&steps).as_secs_f64(),
                    ms(phases[0]),
                    100.0 * phases[0].as_secs_f64() / total.as_secs_f64(),
                    ms(phases[1]),
                    ms(phases[2]),
                    ms(phases[3]),
                ));
            }
        }
    }
    kernels::set_fast_ops(true);
    Ok(())
}

/// Runs the benchmark and prints its figures; the last line is
/// `archN b1 median_ms: X` for the fastest path timed: for ARCH-1 the engine
/// (on two lanes with two or more threads), otherwise the fast ops (or the
/// only implementation timed).
#[expect(unsafe_code, reason = "set_var before any thread pool exists")]
pub fn run(args: &BenchArgs) -> Result<()> {
    ensure!(args.threads > 0, "--threads must be at least 1");
    ensure!(
        args.runs >= 10 && args.batch_runs > 0,
        "--runs must be at least 10 and --batch-runs at least 1"
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
    tracing::info!(arch = %args.arch, threads = args.threads, "benchmarking on random weights and input");
    line(format!(
        "{} params: {params} threads: {}",
        args.arch, args.threads
    ));
    let mut figures = serde_json::Map::new();

    let stock = match args.implementation {
        Impl::Stock | Impl::Both => {
            let f = measure(&net, args, false)?;
            report(args.arch, "stock", &f, &mut figures);
            Some(f)
        }
        Impl::Fast => None,
    };
    let fast = match args.implementation {
        Impl::Fast | Impl::Both => {
            let f = measure(&net, args, true)?;
            report(args.arch, "fast", &f, &mut figures);
            Some(f)
        }
        Impl::Stock => None,
    };
    if let (Some(s), Some(f)) = (&stock, &fast) {
        line(format!(
            "{} speed-up fast/stock: b1 {:.2}x, b64 {:.2}x",
            args.arch,
            s.b1_median.as_secs_f64() / f.b1_median.as_secs_f64(),
            f.b64_img_s / s.b64_img_s
        ));
    }
    if args.arch == Arch::Arch1 && args.implementation != Impl::Stock {
        kernels::set_fast_ops(true);
        let tensors = models::weights::varmap_tensors(&varmap)?;
        let mut engine = models::infer::Arch1Engine::new(&tensors, models::BnConfig::default(), 7)?;
        let one: Vec<f32> = Tensor::rand(0f32, 1f32, 48 * 48, &dev)?.to_vec1()?;
        let many: Vec<f32> = Tensor::rand(0f32, 1f32, 64 * 48 * 48, &dev)?.to_vec1()?;
        let time = |engine: &mut models::infer::Arch1Engine,
                    x: &[f32],
                    n: usize,
                    warmup: usize,
                    runs: usize|
         -> Result<Vec<Duration>> {
            for _ in 0..warmup {
                engine.run(x, n)?;
            }
            (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    engine.run(x, n)?;
                    Ok(t.elapsed())
                })
                .collect()
        };
        let b64 = time(&mut engine, &many, 64, 2, args.batch_runs)?;
        let b1 = time(&mut engine, &one, 1, args.warmup, args.runs)?;
        let mut f = Figures::new(&b1, 64.0 / median(&b64).as_secs_f64());
        report(args.arch, "engine", &f, &mut figures);
        if args.threads >= 2 {
            // The same engine with one image split over two threads.
            engine.set_two_lanes(true);
            let b1 = time(&mut engine, &one, 1, args.warmup, args.runs)?;
            engine.set_two_lanes(false);
            f = Figures::new(&b1, f.b64_img_s);
            report(args.arch, "engine-2lane", &f, &mut figures);
        }
        if args.train {
            train_bench(&net, &varmap, args)?;
        }
        write_json(args, params, figures)?;
        line(format!(
            "{} b1 median_ms: {:.3}",
            args.arch,
            f.b1_median.as_secs_f64() * 1e3
        ));
        return Ok(());
    }
    if args.train {
        train_bench(&net, &varmap, args)?;
    }
    write_json(args, params, figures)?;
    let last = fast.as_ref().or(stock.as_ref()).map(|f| f.b1_median);
    if let Some(d) = last {
        line(format!(
            "{} b1 median_ms: {:.3}",
            args.arch,
            d.as_secs_f64() * 1e3
        ));
    }
    Ok(())
}

/// Writes `--json`: the architecture, parameters, machine and every timed
/// implementation's inference figures.
fn write_json(
    args: &BenchArgs,
    params: usize,
    figures: serde_json::Map<String, Value>,
) -> Result<()> {
    let Some(path) = &args.json else {
        return Ok(());
    };
    let machine = training::train::MachineRecord::here(0);
    let value = json!({
        "arch": args.arch.to_string(),
        "params": params,
        "threads": args.threads,
        "runs": args.runs,
        "cpu": machine.cpu,
        "logical_cpus": machine.logical_cpus,
        "commit": machine.commit,
        "figures": figures,
    });
    let text = serde_json::to_string_pretty(&value)? + "\n";
    models::weights::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

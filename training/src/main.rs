//! `training`: the command-line tool that inspects, benchmarks, trains and
//! evaluates the paper's four networks.
//!
//! ```text
//! cargo run --release -p training -- summary --arch arch1
//! cargo run --release -p training -- bench --arch arch1 --threads 2
//! cargo run --release -p training -- train --arch arch1 --data ../shared/data/fer2013/fer2013.csv.gz --run-dir runs/arch1
//! cargo run --release -p training -- evaluate --model runs/arch1/best.safetensors --data ../shared/data/fer2013/fer2013.csv.gz --usage PublicTest
//! ```

#![deny(unsafe_code)]

mod annotate;
mod bench;
mod bench_pipeline;
mod cli;
mod faces;
mod output;

use anyhow::Result;
use clap::{Parser, Subcommand};
use models::{Arch, ModelConfig, Summary};

// mimalloc as the allocator: the training loop allocates and frees
// multi-megabyte activations every step, which glibc's malloc maps and unmaps
// each time (page faults and zeroing on every call); mimalloc reuses them,
// more so with `keep_freed_memory`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3 alike); libmimalloc-sys
/// 0.1.49 does not name it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the OS ("purge"), unless the
/// user set the delay themselves (`MIMALLOC_PURGE_DELAY` or its older name
/// `MIMALLOC_RESET_DELAY`, any case, as mimalloc reads them). By default it
/// purges memory that stayed free for about a second, and a training step
/// takes longer than that, so every step faulted its activations back in and
/// the kernel zeroed them (as transparent huge pages): 14% of a step in
/// `perf`, 10-20% more images per second without it (docs/PERFORMANCE.md).
/// The process's memory stays at its peak, which a training run reaches in
/// its first step anyway.
#[expect(unsafe_code, reason = "sets an option of the linked mimalloc")]
fn keep_freed_memory() {
    if !user_set_purge_delay() {
        // SAFETY: `mi_option_set` only stores an integer in mimalloc's option
        // table (which it reads at every purge); the option index is valid for
        // the mimalloc the `mimalloc` crate links (v3; checked by a test).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// Whether the environment sets mimalloc's purge delay (either name, any case).
fn user_set_purge_delay() -> bool {
    std::env::vars_os().any(|(k, _)| {
        k.to_str().is_some_and(|k| {
            k.eq_ignore_ascii_case("MIMALLOC_PURGE_DELAY")
                || k.eq_ignore_ascii_case("MIMALLOC_RESET_DELAY")
        })
    })
}

/// candle's own spin limit for its element-wise worker threads, unless the
/// user set `CANDLE_BARRIER_POOL_SPIN_LIMIT`: candle 0.11 runs large
/// element-wise ops (gradient sums, Adam) on a pool of its own beside rayon's,
/// whose idle worker spins 25,000 times after every op before it sleeps. On
/// two cores that spinning took a core from the rayon threads running our
/// kernels (3% of a training step's samples in `perf`). With 500, batch-64
/// training at 2 threads ran at a median 331 img/s against 292 over four
/// alternated rounds (docs/PERFORMANCE.md).
const CANDLE_SPIN_LIMIT: &str = "500";

#[expect(unsafe_code, reason = "set_var before any thread starts")]
fn short_candle_spin() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: called first thing in `main`, before this program starts
        // any thread, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", CANDLE_SPIN_LIMIT) };
    }
}

/// Train, inspect and benchmark the facial-expression networks of Chowanda 2021
/// (ARCH-1..4: separable or plain CNNs with global-average-pooling or dense heads,
/// 48x48 gray faces in, seven FER2013 expressions out).
#[derive(Debug, Parser)]
#[command(name = "training", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a network's layers as Keras' `model.summary()` does, in the paper's
    /// row order: layer (type), output shape, parameters. The last line is
    /// `total: N trainable: N non-trainable: N` (`BatchNorm` moving statistics are
    /// the non-trainable ones).
    Summary {
        /// Which network: arch1, arch2, arch3 or arch4.
        #[arg(long, default_value = "arch1")]
        arch: Arch,
    },
    /// Measure CPU speed on random input: batch-1 latency (median of many runs
    /// after warm-up) and batch-64 throughput, for candle's stock ops and ours
    /// (and, with --train, training steps). The last line is
    /// `archN b1 median_ms: X`.
    Bench(bench::BenchArgs),
    /// Time the face pipeline (MTCNN detection, alignment, ARCH-1) on a 640x480
    /// frame with one face, stage by stage (1 thread by default). The last line
    /// is `pipeline 640x480 median_ms: X`; `tools/bench_pipeline.sh` compares it
    /// with facenet-pytorch.
    BenchPipeline(bench_pipeline::BenchPipelineArgs),
    /// Train a network. The run directory gets `config.json` (first),
    /// `metrics.jsonl` (one line per epoch), atomic checkpoints,
    /// `best.safetensors` (best validation accuracy) and `last.safetensors`.
    /// Ctrl-C or a crash loses at most the running epoch: continue with --resume.
    Train(Box<cli::TrainArgs>),
    /// Evaluate a weights file: accuracy, per-class precision / recall / F1 and
    /// the confusion matrix. The last line is `accuracy: 0.XXXX (CORRECT/TOTAL)`.
    Evaluate(cli::EvaluateArgs),
    /// Average several weights files of one network element-wise (a "model
    /// soup" of runs fine-tuned from a common start, or of a run's last
    /// epochs: stochastic weight averaging) into one; BatchNorm statistics are
    /// averaged too, or re-estimated on the training images with --bn-data
    /// (also for a single file). Check the result with `evaluate` on PublicTest.
    Soup(cli::SoupArgs),
    /// Find the faces in photos (MTCNN), align them and classify each: one line
    /// per face with its box and emotion (`--json`: one JSON object per face),
    /// optionally an annotated copy (`--annotate out.png`). `--crop` takes each
    /// image as one face instead.
    Predict(faces::PredictArgs),
    /// Detect, align and write 48x48 gray face crops for a folder of class
    /// sub-folders, with a report of images where no face or several were found.
    Preprocess(faces::PreprocessArgs),
    /// Write the experiment report: `REPORT.md` and PNG figures (results table
    /// next to the paper's, accuracy bars, learning curves, ARCH-1 confusion
    /// matrices, feature maps, latency) from every run under --runs.
    Report(ReportArgs),
    /// Draw one layer's feature maps (Keras names of the paper's tables, e.g.
    /// `conv2d_4`) for the face in an image, like the paper's Figure 4.
    Features(FeaturesArgs),
}

/// Options of `training report`.
#[derive(Debug, clap::Args)]
struct ReportArgs {
    /// The folder of runs: every sub-folder (three levels deep) with a
    /// `config.json` and `metrics.jsonl`; benchmark files in its `bench/`.
    #[arg(long, default_value = "runs")]
    runs: std::path::PathBuf,
    /// Where `REPORT.md` and the figures go (created).
    #[arg(long, default_value = "report")]
    out: std::path::PathBuf,
    #[command(flatten)]
    maps: MapsArgs,
    /// The layer whose feature maps the report draws.
    #[arg(long, default_value = "conv2d_4")]
    layer: String,
}

/// Which network and face the feature maps come from.
#[derive(Debug, clap::Args)]
struct MapsArgs {
    /// The weights [default: assets/models/arch1_fer2013.safetensors].
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// A photo (the largest face is found and aligned) or a 48x48 face crop
    /// [default: assets/images/astronaut.png].
    #[arg(long)]
    image: Option<std::path::PathBuf>,
    /// MTCNN weights [default: assets/models/mtcnn.safetensors].
    #[arg(long)]
    detector: Option<std::path::PathBuf>,
}

impl MapsArgs {
    fn paths(&self) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
        (
            self.model
                .clone()
                .unwrap_or_else(perception::default_classifier_path),
            self.image
                .clone()
                .unwrap_or_else(|| perception::assets_dir().join("images/astronaut.png")),
            self.detector
                .clone()
                .unwrap_or_else(perception::default_detector_path),
        )
    }
}

/// Options of `training features`.
#[derive(Debug, clap::Args)]
struct FeaturesArgs {
    #[command(flatten)]
    maps: MapsArgs,
    /// The layer (an unknown name lists the network's layers).
    #[arg(long, default_value = "conv2d_4")]
    layer: String,
    /// The PNG to write.
    #[arg(long)]
    out: std::path::PathBuf,
}

fn main() -> Result<()> {
    short_candle_spin();
    keep_freed_memory();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Summary { arch } => {
            let summary = Summary::of(&ModelConfig::preset(arch))?;
            output::line(format!("{arch}: {}", describe(arch)));
            output::line(summary);
        }
        Command::Bench(args) => bench::run(&args)?,
        Command::BenchPipeline(args) => bench_pipeline::run(&args)?,
        Command::Train(args) => cli::train(*args)?,
        Command::Evaluate(args) => cli::evaluate(&args)?,
        Command::Soup(args) => cli::soup(&args)?,
        Command::Predict(args) => faces::predict(&args)?,
        Command::Preprocess(args) => faces::preprocess(&args)?,
        Command::Report(args) => {
            let (model, image, detector) = args.maps.paths();
            let written = training::report::write(&training::report::ReportOptions {
                runs: args.runs,
                out: args.out,
                model,
                image,
                detector,
                layer: args.layer,
            })?;
            for path in &written {
                output::line(format!("wrote {}", path.display()));
            }
        }
        Command::Features(args) => {
            let (model, image, detector) = args.maps.paths();
            let (maps, _) = training::report::features::draw(
                &model,
                &image,
                &detector,
                &args.layer,
                &args.out,
            )?;
            output::line(format!(
                "{}: {} maps of {}x{} written to {}",
                args.layer,
                maps.channels,
                maps.height,
                maps.width,
                args.out.display()
            ));
        }
    }
    Ok(())
}

fn describe(arch: Arch) -> &'static str {
    match arch {
        Arch::Arch1 => "separable convolutions + residual, global average pooling (Table 1)",
        Arch::Arch2 => "separable convolutions + residual, dense head (Table 2)",
        Arch::Arch3 => "plain convolutions, global average pooling (Table 3)",
        Arch::Arch4 => "plain convolutions, dense head (Table 4)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    #[expect(unsafe_code, reason = "reads an option of the linked mimalloc")]
    fn purge_delay_option_is_the_one_we_set() {
        // Option 15 has mimalloc's documented purge-delay default (1000 ms)
        // before `keep_freed_memory` and -1 (never) after it. Only this test
        // touches the option, and only when the user did not set it.
        if user_set_purge_delay() {
            return;
        }
        // SAFETY: reading an option of the linked mimalloc.
        let get = || unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(get(), 1000);
        keep_freed_memory();
        assert_eq!(get(), -1);
    }

    #[test]
    fn bad_arch_is_a_clear_error() {
        let err = Cli::try_parse_from(["training", "summary", "--arch", "arch9"]).unwrap_err();
        assert!(
            err.to_string().contains("unknown architecture `arch9`"),
            "{err}"
        );
    }
}

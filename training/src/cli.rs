//! The `train`, `evaluate` and `predict` subcommands' arguments and drivers.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use candle_core::Device;
use clap::Args;
use models::{Arch, LoadedWeights};
use training::data::{
    Dataset, ErrorPolicy, Fer2013Options, FerPlusOptions, FolderOptions, Usage, load_fer2013,
    load_ferplus, load_image_folder,
};
use training::metrics::evaluate_ensemble as eval_ensemble;
use training::spec::DataSpec;
use training::train::{Overrides, Preset, RunOptions, TrainConfig, train as run_training};

use crate::output::line;

/// `--tta`, as clap spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TtaArg {
    /// The face alone.
    None,
    /// The face and its mirror image.
    Flip,
    /// The face, its mirror image and four 2-pixel shifts.
    FlipShift,
}

impl From<TtaArg> for perception::Tta {
    fn from(t: TtaArg) -> Self {
        match t {
            TtaArg::None => Self::None,
            TtaArg::Flip => Self::Flip,
            TtaArg::FlipShift => Self::FlipShift,
        }
    }
}

/// Options of `training train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Which network: arch1, arch2, arch3 or arch4 [default: arch1].
    #[arg(long)]
    arch: Option<Arch>,
    #[command(flatten)]
    data: DataSpec,
    /// The run directory (created; must not hold a run unless --resume).
    #[arg(long)]
    run_dir: PathBuf,
    /// Start from a preset: `default` (the project's CPU recipe) or `paper`
    /// (the paper's literal recipe) [default: default].
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// A JSON `TrainConfig` (as written to `config.json`) to start from instead of
    /// the preset; command-line options still override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in --run-dir from its last checkpoint. Its `config.json`
    /// is used: only --epochs may change, and --data must name the run's data;
    /// any other option is refused.
    #[arg(long)]
    resume: bool,
    /// No progress bar (logs only).
    #[arg(long)]
    no_progress: bool,
    #[command(flatten)]
    overrides: Overrides,
}

/// Refuses `--resume` with options that would change the run: a resumed run
/// computes what an uninterrupted one would, so only the epoch budget may
/// change, and the data must be the run's own.
fn check_resume_args(args: &TrainArgs) -> Result<()> {
    let mut given = args.overrides.given();
    given.retain(|o| *o != "--epochs");
    for (set, name) in [
        (args.arch.is_some(), "--arch"),
        (args.preset.is_some(), "--preset"),
        (args.config.is_some(), "--config"),
    ] {
        if set {
            given.push(name);
        }
    }
    if !given.is_empty() {
        bail!(
            "--resume continues the run with its own config.json; {} would change it \
             (only --epochs may change on resume): drop {} or start a new --run-dir",
            given.join(", "),
            if given.len() == 1 { "it" } else { "them" }
        );
    }
    let saved_path = args.run_dir.join("config.json");
    let Ok(text) = std::fs::read_to_string(&saved_path) else {
        return Ok(()); // `train` says the run does not exist
    };
    let saved: TrainConfig = serde_json::from_str(&text)
        .with_context(|| format!("--resume: {} is not a valid config", saved_path.display()))?;
    // Every data option must match; paths match when they name the same file.
    let canonical = |d: &DataSpec| {
        let path = |p: &std::path::Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
        DataSpec {
            data: path(&d.data),
            ferplus: d.ferplus.as_deref().map(path),
            ..d.clone()
        }
    };
    let then = &saved.data;
    if canonical(&args.data) != canonical(then) {
        bail!(
            "--resume: the data options differ from the run's ({}: --data {}{}{}); \
             pass the run's own data options",
            saved_path.display(),
            then.data.display(),
            then.ferplus
                .as_ref()
                .map(|f| format!(" --ferplus {}", f.display()))
                .unwrap_or_default(),
            then.limit
                .map(|l| format!(" --limit {l}"))
                .unwrap_or_default(),
        );
    }
    Ok(())
}

/// Runs `training train`.
pub fn train(args: TrainArgs) -> Result<()> {
    if args.resume {
        check_resume_args(&args)?;
    }
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --config {}", path.display()))?;
            serde_json::from_str::<TrainConfig>(&text).with_context(|| {
                format!("--config {} is not a valid TrainConfig", path.display())
            })?
        }
        None => TrainConfig::preset(
            args.preset.unwrap_or(Preset::Default),
            args.arch.unwrap_or(Arch::Arch1),
            args.data.clone(),
        ),
    };
    if args.config.is_some() {
        cfg.data = args.data.clone();
    }
    args.overrides.apply(&mut cfg);
    if args.resume && args.overrides.epochs.is_none() {
        // Keep the run's own budget: read it back inside `train`.
        let saved = args.run_dir.join("config.json");
        if let Ok(text) = std::fs::read_to_string(&saved)
            && let Ok(c) = serde_json::from_str::<TrainConfig>(&text)
        {
            cfg.epochs = c.epochs;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed)) {
        tracing::warn!("cannot install the Ctrl-C handler ({e}); Ctrl-C will end the run abruptly");
    }
    let opts = RunOptions {
        run_dir: args.run_dir.clone(),
        resume: args.resume,
        progress: !args.no_progress,
    };
    let summary = run_training(cfg, &opts, stop)?;
    let s = &summary.state;
    line(format!(
        "run {}: {} epochs, best validation accuracy {:.4} at epoch {}{}",
        args.run_dir.display(),
        s.epochs_done,
        s.best_accuracy,
        s.best_epoch,
        if summary.interrupted {
            " (interrupted: continue with --resume)"
        } else if s.stopped_early {
            " (stopped early)"
        } else {
            ""
        }
    ));
    Ok(())
}

/// Options of `training soup`.
#[derive(Debug, Args)]
pub struct SoupArgs {
    /// Where the averaged weights go (written atomically; an existing file is
    /// replaced).
    #[arg(long)]
    out: PathBuf,
    /// Two or more weights files of one network and class list, best trained
    /// from a common start (fine-tuned runs of one model, or the last epochs
    /// of one run kept with `train --keep-epochs`); one is enough with
    /// --bn-data (its BatchNorm statistics re-estimated).
    #[arg(required = true, num_args = 1..)]
    models: Vec<PathBuf>,
    /// Re-estimate the soup's BatchNorm statistics on this data's training
    /// images (FER2013 CSV or image folder, as `train --data`), as stochastic
    /// weight averaging does, instead of averaging the files' statistics.
    #[arg(long, value_name = "DATA")]
    bn_data: Option<PathBuf>,
    /// With --bn-data: FER+ labels for it (`--ferplus` of `train`).
    #[arg(long, requires = "bn_data")]
    bn_ferplus: Option<PathBuf>,
    /// Score the soup on this split of a FER2013 CSV (`--score-data`, by
    /// default the --bn-data file), single crop, before writing it: prints
    /// the accuracy line of `evaluate` and records the figure in the file's
    /// provenance (`publictest_accuracy`, ...).
    #[arg(long, value_name = "USAGE")]
    score: Option<Usage>,
    /// The FER2013 CSV that --score reads (default: the --bn-data file).
    #[arg(long, value_name = "CSV", requires = "score")]
    score_data: Option<PathBuf>,
    /// Append the members, the BatchNorm treatment and the score as one JSON
    /// line to this file (`RUN_DIR/soups.jsonl`: `training report` lists a
    /// run's soups under "Weight averaging").
    #[arg(long, value_name = "FILE", requires = "score")]
    log: Option<PathBuf>,
}

/// Loads every weights file of `paths`, naming the one that fails.
fn load_all(paths: &[PathBuf], device: &Device) -> Result<Vec<LoadedWeights>> {
    paths
        .iter()
        .map(|p| {
            LoadedWeights::from_file(p, device).with_context(|| format!("loading {}", p.display()))
        })
        .collect()
}

/// Runs `training soup`.
pub fn soup(args: &SoupArgs) -> Result<()> {
    if args.models.len() < 2 && args.bn_data.is_none() {
        bail!("a soup needs two or more weights files (or one with --bn-data)");
    }
    let all = load_all(&args.models, &Device::Cpu)?;
    let mut mean = LoadedWeights::average(&all)?;
    if let Some(data) = &args.bn_data {
        let spec = DataSpec {
            data: data.clone(),
            ferplus: args.bn_ferplus.clone(),
            contempt: mean.meta.classes.iter().any(|c| c == "contempt"),
            ..DataSpec::default()
        };
        mean = training::train::recompute_batch_norm(&mean, &spec, 64)
            .context("--bn-data: re-estimating BatchNorm statistics")?;
    }
    let names: Vec<String> = args
        .models
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    mean.meta.provenance.notes = format!(
        "{} (training soup: {}{})",
        mean.meta.provenance.notes,
        names.join(", "),
        match &args.bn_data {
            Some(d) => format!("; BatchNorm statistics re-estimated on {}", d.display()),
            None => String::new(),
        }
    );
    let score = match args.score {
        Some(usage) => {
            let (correct, total) = score_soup(args, &mean, usage)?;
            let accuracy = correct as f64 / total as f64;
            mean.meta.provenance.metrics.insert(
                format!("{}_accuracy", usage.to_string().to_lowercase()),
                accuracy,
            );
            Some((usage, accuracy, correct, total))
        }
        None => None,
    };
    models::weights::write_atomic(&args.out, &mean.to_bytes()?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    line(format!(
        "soup of {} files written to {}",
        all.len(),
        args.out.display()
    ));
    if let Some((usage, accuracy, correct, total)) = score {
        if let Some(log) = &args.log {
            let record = training::report::SoupRecord {
                models: names,
                bn: if args.bn_data.is_some() {
                    training::report::SoupBn::ReEstimated
                } else {
                    training::report::SoupBn::Averaged
                },
                usage: usage.to_string(),
                accuracy,
                correct,
                total,
            };
            append_line(log, &serde_json::to_string(&record)?)
                .with_context(|| format!("--log: appending to {}", log.display()))?;
        }
        line(format!("accuracy: {accuracy:.4} ({correct}/{total})"));
    }
    Ok(())
}

/// `soup --score`: the soup's correct answers and faces on `usage`, single crop.
fn score_soup(args: &SoupArgs, soup: &LoadedWeights, usage: Usage) -> Result<(u64, u64)> {
    let data = args
        .score_data
        .as_ref()
        .or(args.bn_data.as_ref())
        .context("--score needs the FER2013 CSV to score on: --score-data (or --bn-data)")?;
    if !training::spec::is_csv(data) {
        bail!(
            "--score reads a FER2013 CSV's split; {} is not one (score a folder with `evaluate`)",
            data.display()
        );
    }
    let (ds, _, _) =
        load_eval_data(data, Some(usage), None, &soup.meta.classes).context("--score")?;
    let device = Device::Cpu;
    let net = soup.build(&device)?;
    let all: Vec<usize> = (0..ds.len()).collect();
    let eval = eval_ensemble(&[&net], &ds, &all, 256, perception::Tta::None, &device)?;
    Ok((eval.confusion.correct(), eval.confusion.total()))
}

/// Appends `text` and a newline to `path` (created if missing).
fn append_line(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{text}")
}

/// Options of `training evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// The weights file. Give it more than once to score an ensemble: each
    /// face's probabilities averaged over the models (which must share
    /// their classes), with equal weights.
    #[arg(long = "model", required = true)]
    models: Vec<PathBuf>,
    /// A FER2013 CSV (`.csv` or `.csv.gz`) or a folder of class sub-folders.
    #[arg(long)]
    data: PathBuf,
    /// FER2013 CSVs: evaluate only the rows of this split (Training, PublicTest,
    /// PrivateTest); by default every row of the file.
    #[arg(long)]
    usage: Option<Usage>,
    /// FER+ votes (`fer2013new.csv[.gz]`) that line up row by row with the
    /// FER2013 CSV of --data: score against their majority labels (rows
    /// without a clear majority or not-a-face are left out, as in training;
    /// contempt rows too, unless the model has FER+'s eighth class
    /// `contempt`).
    #[arg(long)]
    ferplus: Option<PathBuf>,
    /// Test-time augmentation: average each face's probabilities over its
    /// mirror image (`flip`) or its mirror image and four 2-pixel shifts
    /// (`flip-shift`).
    #[arg(long, value_enum, default_value = "none")]
    tta: TtaArg,
    /// Print one JSON object instead of the tables (the last line stays the
    /// accuracy line).
    #[arg(long)]
    json: bool,
    /// Abstention: print the risk-coverage curve of the classifier's
    /// confidence gate (accuracy on the faces answered as the gate moves),
    /// the image statistics the plugin's quality gate uses, and, as the last
    /// line, `selective accuracy: A coverage: C (threshold T)` for the
    /// plugin's default gate. With --json, the curve is in the JSON object.
    #[arg(long)]
    abstain: bool,
    /// Neutral calibration at the population level (FER2013 CSVs): one
    /// baseline from the file's `Training` faces labelled neutral, applied to
    /// every evaluated face as the plugin applies a player's baseline; prints
    /// the calibrated accuracy and per-class recall beside the raw ones.
    #[arg(long)]
    calibrate: bool,
    /// Faces per batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
}

/// Whether a model's classes include FER+'s eighth, `contempt` (then FER+
/// labels are scored over all eight classes).
fn has_contempt(classes: &[String]) -> bool {
    classes.iter().any(|c| c == "contempt")
}

/// The faces to score for a model with `classes`, and what was left out as
/// `(count, first reasons)`; data with other classes is an error.
fn load_eval_data(
    path: &std::path::Path,
    usage: Option<Usage>,
    ferplus: Option<&std::path::Path>,
    classes: &[String],
) -> Result<(Dataset, usize, Vec<String>)> {
    let loaded = load_eval_rows(path, usage, ferplus, has_contempt(classes))?;
    if loaded.0.classes() != classes {
        bail!(
            "the data's classes {:?} differ from the model's {:?}",
            loaded.0.classes(),
            classes
        );
    }
    Ok(loaded)
}

/// [`load_eval_data`] before the class check.
fn load_eval_rows(
    path: &std::path::Path,
    usage: Option<Usage>,
    ferplus: Option<&std::path::Path>,
    contempt: bool,
) -> Result<(Dataset, usize, Vec<String>)> {
    if ferplus.is_some() && !training::spec::is_csv(path) {
        bail!("--ferplus needs the FER2013 CSV it lines up with as --data");
    }
    if training::spec::is_csv(path) {
        let opts = Fer2013Options {
            usage,
            on_error: ErrorPolicy::Skip,
        };
        let (ds, report) = match ferplus {
            Some(plus) => {
                let plus_opts = FerPlusOptions {
                    contempt,
                    ..FerPlusOptions::default()
                };
                let (ds, report, plus_report) = load_ferplus(path, plus, &opts, &plus_opts)?;
                tracing::info!(
                    kept = plus_report.kept,
                    not_face = plus_report.not_face,
                    contempt = plus_report.contempt,
                    unknown = plus_report.unknown,
                    ties = plus_report.ties,
                    "FER+ majority labels"
                );
                (ds, report)
            }
            None => load_fer2013(path, &opts)?,
        };
        let reasons: Vec<String> = report
            .skipped_rows
            .iter()
            .map(|r| format!("line {}: {}", r.line, r.problem))
            .collect();
        if usage.is_none()
            && ds
                .origins()
                .iter()
                .any(|o| o.usage() == Some(Usage::Training))
        {
            bail!(
                "{} has Training rows: choose the split to score with --usage \
                 (PublicTest for model selection; scoring every row would mix the \
                 training data into the accuracy)",
                path.display()
            );
        }
        if ds.is_empty() {
            let split = usage
                .map(|u| format!(" in the {u} split"))
                .unwrap_or_default();
            bail!(
                "nothing to score{split} in {}: {} data rows seen, {} in other splits, {} rejected{}",
                path.display(),
                report.seen,
                report.other_split,
                report.skipped_rows.len(),
                first_reasons(&reasons)
            );
        }
        Ok((ds, report.skipped_rows.len(), reasons))
    } else if path.is_dir() {
        if usage.is_some() {
            bail!("--usage applies to FER2013 CSVs only");
        }
        let opts = FolderOptions {
            on_error: ErrorPolicy::Skip,
            ..FolderOptions::default()
        };
        let (ds, report) = load_image_folder(path, &opts)?;
        let reasons: Vec<String> = report
            .skipped_files
            .iter()
            .map(|f| format!("{}: {}", f.path.display(), f.reason))
            .collect();
        if ds.is_empty() {
            bail!(
                "nothing to score in {}: {} images seen, {} unreadable{}",
                path.display(),
                report.seen,
                report.skipped_files.len(),
                first_reasons(&reasons)
            );
        }
        Ok((ds, report.skipped_files.len(), reasons))
    } else {
        bail!(
            "--data {} is neither a .csv/.csv.gz file nor a folder",
            path.display()
        )
    }
}

/// `" (first: a; b; c)"` for up to three reasons, or nothing.
fn first_reasons(reasons: &[String]) -> String {
    if reasons.is_empty() {
        return String::new();
    }
    format!(
        " (first: {})",
        reasons
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    )
}

/// Runs `training evaluate`.
pub fn evaluate(args: &EvaluateArgs) -> Result<()> {
    let device = Device::Cpu;
    let members = load_all(&args.models, &device)?;
    let weights = &members[0];
    if let Some((other, path)) = members
        .iter()
        .zip(&args.models)
        .find(|(w, _)| w.meta.classes != weights.meta.classes)
    {
        bail!(
            "{} has the classes {:?}, {} has {:?}: an ensemble's models must share them",
            path.display(),
            other.meta.classes,
            args.models[0].display(),
            weights.meta.classes
        );
    }
    let built = members
        .iter()
        .map(|w| w.build(&device))
        .collect::<Result<Vec<_>, _>>()?;
    let nets: Vec<&models::EmotionNet> = built.iter().collect();
    let model_text = args
        .models
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    let (ds, unscored, reasons) = load_eval_data(
        &args.data,
        args.usage,
        args.ferplus.as_deref(),
        &weights.meta.classes,
    )?;
    if unscored > 0 {
        tracing::warn!(
            "{unscored} rows or files could not be scored{}",
            first_reasons(&reasons)
        );
    }
    let all: Vec<usize> = (0..ds.len()).collect();
    let eval = eval_ensemble(&nets, &ds, &all, args.batch_size, args.tta.into(), &device)?;
    let c = &eval.confusion;
    let abstain = args.abstain.then(|| abstention(&ds, &eval));
    let calibrated = if args.calibrate {
        Some(calibrated(args, &nets, &eval, &device)?)
    } else {
        None
    };
    if args.json {
        let per_class: serde_json::Map<String, serde_json::Value> = c
            .classes
            .iter()
            .zip(c.per_class())
            .map(|(n, s)| (n.clone(), serde_json::to_value(s).unwrap_or_default()))
            .collect();
        line(serde_json::json!({
            "model": model_text,
            "data": args.data,
            "usage": args.usage.map(|u| u.to_string()),
            "ferplus": args.ferplus,
            "tta": perception::Tta::from(args.tta),
            "accuracy": c.accuracy(),
            "correct": c.correct(),
            "total": c.total(),
            "unscored_rows": unscored,
            "loss": eval.loss,
            "per_class": per_class,
            "confusion": c.counts,
            "classes": c.classes,
            "abstain": abstain.as_ref().map(|a| serde_json::to_value(a).unwrap_or_default()),
            "calibrated": calibrated.as_ref().map(|(b, c)| serde_json::json!({
                "baseline": b,
                "accuracy": c.accuracy(),
                "confusion": c.counts,
            })),
        }));
    } else {
        line(format!(
            "model {} ({}) on {}{}: {} faces scored, {unscored} rows could not be scored",
            model_text,
            members
                .iter()
                .map(|w| w.meta.arch().to_string())
                .collect::<Vec<_>>()
                .join(" + "),
            args.data.display(),
            args.usage.map(|u| format!(" [{u}]")).unwrap_or_default(),
            c.total()
        ));
        line(format!("loss: {:.4}", eval.loss));
        line(c);
    }
    line(format!(
        "accuracy: {:.4} ({}/{})",
        c.accuracy(),
        c.correct(),
        c.total()
    ));
    if let Some((b, cal)) = &calibrated {
        if !args.json {
            line(format!(
                "population neutral baseline from {} Training faces labelled neutral: {}",
                b.frames,
                crate::faces::probs_text(&b.classes, &b.probs)
            ));
            line("class raw_recall calibrated_recall");
            for ((n, r), k) in c.classes.iter().zip(c.per_class()).zip(cal.per_class()) {
                line(format!("{n} {:.4} {:.4}", r.recall, k.recall));
            }
        }
        line(format!(
            "calibrated accuracy: {:.4} ({}/{}), raw {:.4}",
            cal.accuracy(),
            cal.correct(),
            cal.total(),
            c.accuracy()
        ));
    }
    if let Some(a) = &abstain {
        if !args.json {
            line("threshold coverage selective_accuracy");
            for p in &a.curve {
                line(format!(
                    "{:.2} {:.4} {:.4}",
                    p.threshold, p.coverage, p.accuracy
                ));
            }
            line(format!(
                "image statistics (5th / 50th percentile): sharpness {:.1} / {:.1}, brightness {:.1} / {:.1}, contrast {:.1} / {:.1}; the default image gates refuse {} of {} faces (accuracy on them {:.4})",
                a.sharpness[0],
                a.sharpness[1],
                a.brightness[0],
                a.brightness[1],
                a.contrast[0],
                a.contrast[1],
                a.image_refused,
                c.total(),
                a.image_refused_accuracy
            ));
            line(format!(
                "threshold keeping 80% of the faces: {:.2}",
                a.threshold_80
            ));
        }
        line(format!(
            "selective accuracy: {:.4} coverage: {:.4} (threshold {:.2})",
            a.default.accuracy, a.default.coverage, a.default.threshold
        ));
    }
    Ok(())
}

/// `evaluate --calibrate`: the baseline of the Training faces labelled
/// neutral, and the evaluated faces' confusion after calibration.
fn calibrated(
    args: &EvaluateArgs,
    nets: &[&models::EmotionNet],
    eval: &training::metrics::Evaluation,
    device: &Device,
) -> Result<(perception::NeutralBaseline, training::metrics::Confusion)> {
    if !training::spec::is_csv(&args.data) {
        bail!("--calibrate needs a FER2013 CSV (its Training faces make the baseline)");
    }
    let (train, _, _) = load_eval_data(
        &args.data,
        Some(Usage::Training),
        args.ferplus.as_deref(),
        &eval.confusion.classes,
    )?;
    let classes = train.classes().to_vec();
    let neutral =
        perception::calibrate::neutral_index(&classes).context("the classes have no neutral")?;
    let rows: Vec<usize> = (0..train.len())
        .filter(|&i| train.label(i) == Some(neutral as u8))
        .collect();
    let rest = eval_ensemble(
        nets,
        &train,
        &rows,
        args.batch_size,
        args.tta.into(),
        device,
    )?;
    let cfg = perception::CalibrationConfig {
        min_frames: 1,
        ..Default::default()
    };
    let baseline = perception::NeutralBaseline::from_samples(&classes, &rest.probs, &cfg)?;
    let mut confusion = training::metrics::Confusion::new(classes);
    for (p, &t) in eval.probs.iter().zip(&eval.truth) {
        confusion.add(t, perception::argmax(&baseline.calibrate(p, &cfg)));
    }
    Ok((baseline, confusion))
}

/// What `evaluate --abstain` reports.
#[derive(Debug, serde::Serialize)]
struct Abstention {
    /// The confidence gate at 0.00, 0.05, ..., 0.95.
    curve: Vec<training::metrics::CoveragePoint>,
    /// The plugin's default confidence gate.
    default: training::metrics::CoveragePoint,
    /// The threshold that keeps 80% of the faces.
    threshold_80: f32,
    /// 5th and 50th percentiles of the crops' sharpness.
    sharpness: [f32; 2],
    /// 5th and 50th percentiles of the crops' brightness.
    brightness: [f32; 2],
    /// 5th and 50th percentiles of the crops' contrast.
    contrast: [f32; 2],
    /// Faces the default image gates (sharpness, brightness, contrast) refuse.
    image_refused: usize,
    /// Accuracy on those faces.
    image_refused_accuracy: f64,
}

fn abstention(ds: &Dataset, eval: &training::metrics::Evaluation) -> Abstention {
    use perception::quality::{DEFAULT_MIN_CONFIDENCE, crop_stats};
    let thresholds: Vec<f32> = (0..20).map(|i| i as f32 * 0.05).collect();
    let curve = training::metrics::risk_coverage(&eval.top1, &eval.correct, &thresholds);
    let default =
        training::metrics::risk_coverage(&eval.top1, &eval.correct, &[DEFAULT_MIN_CONFIDENCE])[0];
    let gate = perception::QualityGate::default();
    let (mut sharp, mut bright, mut contrast) = (Vec::new(), Vec::new(), Vec::new());
    let (mut refused, mut refused_right) = (0usize, 0usize);
    for i in 0..ds.len() {
        let Some(crop) = ds
            .image(i)
            .and_then(|px| perception::GrayCrop::new(px.to_vec()).ok())
        else {
            continue;
        };
        let (s, b, c) = crop_stats(&crop);
        sharp.push(s);
        bright.push(b);
        contrast.push(c);
        let bad = s < gate.min_sharpness
            || b < gate.min_brightness
            || b > gate.max_brightness
            || c < gate.min_contrast;
        if bad {
            refused += 1;
            refused_right += usize::from(eval.correct.get(i).copied().unwrap_or(false));
        }
    }
    let pct = |v: &mut Vec<f32>| {
        v.sort_by(f32::total_cmp);
        let at = |q: f64| {
            v.get(((v.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or(0.0)
        };
        [at(0.05), at(0.5)]
    };
    Abstention {
        curve,
        default,
        threshold_80: training::metrics::threshold_for_coverage(&eval.top1, 0.8),
        sharpness: pct(&mut sharp),
        brightness: pct(&mut bright),
        contrast: pct(&mut contrast),
        image_refused: refused,
        image_refused_accuracy: if refused > 0 {
            refused_right as f64 / refused as f64
        } else {
            f64::NAN
        },
    }
}

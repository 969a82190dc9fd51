//! `training report`: reads every run under a folder (its `config.json`,
//! `metrics.jsonl` and `machine.jsonl`) and the benchmark files, and writes
//! `REPORT.md` with PNG figures, the counterparts of the paper's Table 5 and
//! Figures 4-8.
//!
//! The output depends only on those files, the feature-map model and image:
//! running the command again on the same inputs rewrites the same bytes.

pub mod features;
pub mod plot;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use models::{Arch, ModelConfig, Summary};
use serde::Deserialize;

use crate::metrics::{Confusion, CoveragePoint};
use crate::train::{EpochMetrics, MachineRecord, Schedule, TrainConfig};
use plot::{Bar, Series};

/// What the report is made from and where it goes.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// The folder of runs (searched three levels deep for `config.json` +
    /// `metrics.jsonl`; benchmark files in its `bench/` sub-folder).
    pub runs: PathBuf,
    /// The output folder (`REPORT.md` and the PNG figures).
    pub out: PathBuf,
    /// Weights whose feature maps are drawn.
    pub model: PathBuf,
    /// The face image for the feature maps.
    pub image: PathBuf,
    /// MTCNN weights to find the face in `image`.
    pub detector: PathBuf,
    /// The layer whose maps are drawn.
    pub layer: String,
}

/// One run: a training run directory.
#[derive(Debug, Clone)]
pub struct Run {
    /// Its path relative to the runs folder.
    pub name: String,
    /// Its configuration.
    pub config: TrainConfig,
    /// One entry per finished epoch.
    pub metrics: Vec<EpochMetrics>,
    /// Where its parts ran.
    pub machines: Vec<MachineRecord>,
    /// The best epoch's validation confusion from an `evaluate.json` (for
    /// runs made before `metrics.jsonl` recorded it).
    pub evaluated: Option<Confusion>,
    /// The risk-coverage curve of its weights from an `abstain.json`
    /// (`training evaluate --abstain --json`), and the default gate's point.
    pub abstain: Option<(Vec<CoveragePoint>, CoveragePoint)>,
    /// Raw and calibrated confusions from a `calibrated.json`
    /// (`training evaluate --calibrate --json`).
    pub calibrated: Option<(Confusion, Confusion)>,
    /// Soups of its weights and their scores, from a `soups.jsonl`
    /// (`training soup --score USAGE --log`).
    pub soups: Vec<SoupRecord>,
}

/// How a soup's BatchNorm moving statistics were made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SoupBn {
    /// The mean of the members' statistics.
    Averaged,
    /// Measured again on the training images (`soup --bn-data`).
    ReEstimated,
}

/// One line of a run's `soups.jsonl`: a soup that `training soup --score
/// --log` made and scored.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoupRecord {
    /// The averaged weights files, as given.
    pub models: Vec<String>,
    /// How its BatchNorm statistics were made.
    pub bn: SoupBn,
    /// The split it was scored on (`PublicTest`).
    pub usage: String,
    /// Its single-crop accuracy there.
    pub accuracy: f64,
    /// Faces answered right.
    pub correct: u64,
    /// Faces scored.
    pub total: u64,
}

impl SoupRecord {
    /// The members in words: `epochs 31-36` (or `epochs 4-7, 13-20`) when
    /// they are a run's kept epochs (`epochs/weights-E.safetensors`), else
    /// their file names.
    pub fn members_text(&self) -> String {
        let epoch = |m: &String| {
            m.replace('\\', "/")
                .rsplit_once("epochs/weights-")
                .and_then(|(_, e)| e.strip_suffix(".safetensors"))
                .and_then(|e| e.parse::<usize>().ok())
        };
        let epochs: Option<Vec<usize>> = self.models.iter().map(epoch).collect();
        match epochs {
            Some(mut e) if !e.is_empty() => {
                e.sort_unstable();
                e.dedup();
                let mut ranges: Vec<(usize, usize)> = Vec::new();
                for n in e {
                    match ranges.last_mut() {
                        Some((_, hi)) if *hi + 1 == n => *hi = n,
                        _ => ranges.push((n, n)),
                    }
                }
                let text: Vec<String> = ranges
                    .iter()
                    .map(|&(lo, hi)| {
                        if lo == hi {
                            lo.to_string()
                        } else {
                            format!("{lo}-{hi}")
                        }
                    })
                    .collect();
                let word = if self.models.len() == 1 {
                    "epoch"
                } else {
                    "epochs"
                };
                format!("{word} {}", text.join(", "))
            }
            _ => self
                .models
                .iter()
                .map(|m| {
                    let name = Path::new(m)
                        .file_name()
                        .map_or_else(|| m.clone(), |n| n.to_string_lossy().into_owned());
                    format!("`{name}`")
                })
                .collect::<Vec<_>>()
                .join(" + "),
        }
    }
}

impl Run {
    /// The dataset's display name.
    pub fn dataset(&self) -> String {
        dataset_name(&self.config)
    }

    /// Whether the validation split steered training (plateau schedule or
    /// early stopping), so that even the last epoch's accuracy on it is not
    /// an independent estimate.
    pub fn val_steers(&self) -> bool {
        matches!(self.config.schedule, Schedule::Plateau { .. })
            || self.config.early_stopping.is_some()
    }

    /// Whether every configured epoch ran (or early stopping ended it).
    pub fn complete(&self) -> bool {
        let last = self.epochs_done();
        last >= self.config.epochs
            || self.config.early_stopping.is_some_and(|patience| {
                let best = self.best().map_or(0, |m| m.epoch);
                last > 0 && last.saturating_sub(best) >= patience
            })
    }

    /// The last finished epoch (by number, not by counting lines).
    pub fn epochs_done(&self) -> usize {
        self.metrics.iter().map(|m| m.epoch).max().unwrap_or(0)
    }

    /// The epoch with the best validation accuracy (the first of ties).
    pub fn best(&self) -> Option<&EpochMetrics> {
        self.metrics
            .iter()
            .fold(None, |b: Option<&EpochMetrics>, m| match b {
                Some(b) if b.val_accuracy >= m.val_accuracy => Some(b),
                _ => Some(m),
            })
    }

    /// Training seconds of the finished epochs.
    pub fn seconds(&self) -> f64 {
        self.metrics.iter().map(|m| m.seconds).sum()
    }

    /// The best epoch's validation confusion matrix.
    pub fn best_confusion(&self) -> Option<Confusion> {
        self.best()
            .and_then(|m| m.val_confusion.clone())
            .or_else(|| self.evaluated.clone())
    }
}

/// The display name of a configuration's dataset.
pub fn dataset_name(cfg: &TrainConfig) -> String {
    if cfg.data.ferplus.is_some() {
        return if cfg.data.contempt {
            "FER+ (8 classes)".into()
        } else {
            "FER+".into()
        };
    }
    if crate::spec::is_csv(&cfg.data.data) {
        return "FER2013".into();
    }
    let folder = cfg
        .data
        .data
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if folder.to_ascii_lowercase().contains("ck") {
        "CK+".into()
    } else {
        folder
    }
}

/// A file name made of `name`'s letters, digits, `_` and `-`.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Reads every run under `root` (sorted by path). A folder with a
/// `config.json` but unreadable metrics is an error naming the file.
pub fn discover(root: &Path) -> Result<Vec<Run>> {
    if !root.is_dir() {
        bail!("--runs {} is not a folder", root.display());
    }
    let mut dirs = Vec::new();
    collect_dirs(root, 0, &mut dirs)?;
    dirs.sort();
    let mut runs = Vec::new();
    for dir in dirs {
        let config_path = dir.join("config.json");
        let metrics_path = dir.join("metrics.jsonl");
        if !config_path.is_file() || !metrics_path.is_file() {
            continue;
        }
        let config: TrainConfig = serde_json::from_str(
            &std::fs::read_to_string(&config_path)
                .with_context(|| format!("reading {}", config_path.display()))?,
        )
        .with_context(|| format!("{} is not a training config", config_path.display()))?;
        let metrics = read_lines::<EpochMetrics>(&metrics_path)?;
        if let Some(m) = metrics.iter().find(|m| {
            m.val_confusion
                .as_ref()
                .is_some_and(|c| c.counts.len() != c.classes.len() * c.classes.len())
        }) {
            bail!(
                "{}: epoch {} has a confusion matrix of the wrong size",
                metrics_path.display(),
                m.epoch
            );
        }
        let machines = read_lines_if_any::<MachineRecord>(&dir.join("machine.jsonl"))?;
        let evaluated = read_evaluate(&dir.join("evaluate.json"))?;
        let abstain = read_abstain(&dir.join("abstain.json"))?;
        let calibrated = read_calibrated(&dir.join("calibrated.json"))?;
        let soups = read_lines_if_any::<SoupRecord>(&dir.join("soups.jsonl"))?;
        let name = dir
            .strip_prefix(root)
            .unwrap_or(&dir)
            .to_string_lossy()
            .replace('\\', "/");
        runs.push(Run {
            name,
            config,
            metrics,
            machines,
            evaluated,
            abstain,
            calibrated,
            soups,
        });
    }
    Ok(runs)
}

fn collect_dirs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    out.push(dir.to_path_buf());
    if depth >= 3 {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() && path.file_name().is_none_or(|n| n != "ckpt") {
            collect_dirs(&path, depth + 1, out)?;
        }
    }
    Ok(())
}

/// [`read_lines`] of a file that may be absent (then nothing).
fn read_lines_if_any<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    if path.is_file() {
        read_lines(path)
    } else {
        Ok(Vec::new())
    }
}

fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {} is not valid", path.display(), i + 1))
        })
        .collect()
}

/// `calibrated.json`: the output of `training evaluate --calibrate --json`.
fn read_calibrated(path: &Path) -> Result<Option<(Confusion, Confusion)>> {
    #[derive(Deserialize)]
    struct Cal {
        confusion: Vec<u64>,
    }
    #[derive(Deserialize)]
    struct Evaluated {
        classes: Vec<String>,
        confusion: Vec<u64>,
        calibrated: Cal,
    }
    let Some(e) = read_json_line::<Evaluated>(path, "training evaluate --calibrate --json")? else {
        return Ok(None);
    };
    let k = e.classes.len();
    if e.confusion.len() != k * k || e.calibrated.confusion.len() != k * k {
        bail!("{}: a confusion matrix has the wrong size", path.display());
    }
    let raw = Confusion {
        classes: e.classes.clone(),
        counts: e.confusion,
    };
    let cal = Confusion {
        classes: e.classes,
        counts: e.calibrated.confusion,
    };
    Ok(Some((raw, cal)))
}

/// The first line of `path` that parses as `T` (the JSON object a
/// `training` command printed among its text lines); `None` when the file
/// does not exist, an error when no line parses.
fn read_json_line<T: serde::de::DeserializeOwned>(path: &Path, command: &str) -> Result<Option<T>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    match text.lines().find_map(|l| serde_json::from_str::<T>(l).ok()) {
        Some(v) => Ok(Some(v)),
        None => bail!("{} holds no `{command}` object", path.display()),
    }
}
/// `abstain.json`: the output of `training evaluate --abstain --json`.
fn read_abstain(path: &Path) -> Result<Option<(Vec<CoveragePoint>, CoveragePoint)>> {
    #[derive(Deserialize)]
    struct Abstain {
        curve: Vec<CoveragePoint>,
        default: CoveragePoint,
    }
    #[derive(Deserialize)]
    struct Evaluated {
        abstain: Abstain,
    }
    Ok(
        read_json_line::<Evaluated>(path, "training evaluate --abstain --json")?
            .map(|e| (e.abstain.curve, e.abstain.default)),
    )
}
/// `evaluate.json`: the output of `training evaluate --json` (its JSON line).
fn read_evaluate(path: &Path) -> Result<Option<Confusion>> {
    #[derive(Deserialize)]
    struct Evaluated {
        classes: Vec<String>,
        confusion: Vec<u64>,
    }
    let Some(e) = read_json_line::<Evaluated>(path, "training evaluate --json")? else {
        return Ok(None);
    };
    if e.confusion.len() != e.classes.len() * e.classes.len() {
        bail!(
            "{}: the confusion matrix has the wrong size",
            path.display()
        );
    }
    Ok(Some(Confusion {
        classes: e.classes,
        counts: e.confusion,
    }))
}
/// `bench/<arch>.json`: what `training bench --json` wrote.
#[derive(Debug, Clone, Deserialize)]
pub struct BenchRecord {
    /// `arch1` ... `arch4`.
    pub arch: String,
    /// Threads used.
    pub threads: usize,
    /// Timed batch-1 runs.
    pub runs: usize,
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs of the machine.
    pub logical_cpus: usize,
    /// Per implementation: `stock`, `fast`, `engine`.
    pub figures: BTreeMap<String, BenchFigures>,
}

/// One implementation's inference figures.
#[derive(Debug, Clone, Deserialize)]
pub struct BenchFigures {
    /// Batch-1 median latency.
    pub b1_median_ms: f64,
    /// Batch-64 throughput.
    pub b64_img_s: f64,
}

fn read_bench(root: &Path) -> Result<Vec<BenchRecord>> {
    let dir = root.join("bench");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a `training bench --json` file", p.display()))
        })
        .collect()
}

/// The runs of one architecture on one dataset (one run, or one per fold).
#[derive(Debug, Clone)]
pub struct Group<'a> {
    /// The architecture.
    pub arch: Arch,
    /// The dataset's display name.
    pub dataset: String,
    /// The experiment's folder under the runs folder.
    pub name: String,
    /// Its runs, by fold.
    pub runs: Vec<&'a Run>,
}

impl Group<'_> {
    /// Whether this group is a cross-validation (image folder) experiment.
    pub fn cross_validated(&self) -> bool {
        self.runs
            .first()
            .is_some_and(|r| !crate::spec::is_csv(&r.config.data.data))
    }

    /// Folds the protocol asks for (1 for fixed splits).
    pub fn folds_planned(&self) -> usize {
        if self.cross_validated() {
            self.runs.first().map_or(1, |r| r.config.data.folds.max(1))
        } else {
            1
        }
    }

    /// Finished runs.
    pub fn complete_runs(&self) -> Vec<&Run> {
        self.runs.iter().copied().filter(|r| r.complete()).collect()
    }

    /// Per counted run: (best validation accuracy, last-epoch accuracy).
    /// Cross-validation counts finished folds only; a fixed split shows its
    /// run's figures so far.
    fn accuracies(&self) -> Vec<(f64, f64)> {
        let runs = if self.cross_validated() {
            self.complete_runs()
        } else {
            self.runs.clone()
        };
        runs.iter()
            .filter_map(|r| Some((r.best()?.val_accuracy, r.metrics.last()?.val_accuracy)))
            .collect()
    }

    /// Mean and (sample) standard deviation of the last-epoch accuracy over
    /// finished runs.
    pub fn last_accuracy(&self) -> Option<(f64, f64)> {
        mean_std(&self.accuracies().iter().map(|a| a.1).collect::<Vec<_>>())
    }

    /// Mean and standard deviation of the best validation accuracy.
    pub fn best_accuracy(&self) -> Option<(f64, f64)> {
        mean_std(&self.accuracies().iter().map(|a| a.0).collect::<Vec<_>>())
    }

    /// The headline accuracy: the best PublicTest epoch for fixed splits
    /// (that is how the shipped model is chosen), the mean last-epoch accuracy
    /// on the held-out subjects for cross-validation (no selection on the
    /// fold that is scored).
    pub fn headline(&self) -> Option<(f64, f64)> {
        if self.cross_validated() {
            self.last_accuracy()
        } else {
            self.best_accuracy()
        }
    }

    /// Whether all planned runs are finished.
    pub fn finished(&self) -> bool {
        self.complete_runs().len() >= self.folds_planned()
    }

    /// The planned epochs per run (its first run's configuration).
    pub fn epochs(&self) -> usize {
        self.runs.first().map_or(0, |r| r.config.epochs)
    }

    /// The confusion matrix to show: the best epoch's for a fixed split, the
    /// sum of every finished fold's last epoch for cross-validation.
    pub fn confusion(&self) -> Option<Confusion> {
        if !self.cross_validated() {
            return self.runs.first().and_then(|r| r.best_confusion());
        }
        let mut sum: Option<Confusion> = None;
        for r in self.complete_runs() {
            // Folds trained before matrices were recorded are left out.
            let Some(c) = r.metrics.last().and_then(|m| m.val_confusion.clone()) else {
                continue;
            };
            match &mut sum {
                None => sum = Some(c),
                Some(s) if s.classes == c.classes => {
                    for (a, b) in s.counts.iter_mut().zip(&c.counts) {
                        *a += b;
                    }
                }
                Some(_) => return None,
            }
        }
        sum
    }
}

fn mean_std(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    Some((mean, var.sqrt()))
}

/// Groups runs by (architecture, dataset), in the order ARCH-1..4 and
/// FER2013, CK+, FER+, then others by name.
pub fn group(runs: &[Run]) -> Result<Vec<Group<'_>>> {
    let mut map: BTreeMap<(Arch, usize, String, String), Vec<&Run>> = BTreeMap::new();
    for r in runs {
        let d = r.dataset();
        // The folds of one cross-validation share their parent folder; any
        // other run is an experiment of its own.
        let experiment = if crate::spec::is_csv(&r.config.data.data) {
            r.name.clone()
        } else {
            r.name
                .rsplit_once('/')
                .map_or(r.name.as_str(), |(parent, _)| parent)
                .to_owned()
        };
        map.entry((r.config.model.arch(), dataset_rank(&d), d, experiment))
            .or_default()
            .push(r);
    }
    map.into_iter()
        .map(|((arch, _, dataset, name), mut runs)| {
            runs.sort_by_key(|r| (r.config.data.fold, r.name.clone()));
            let g = Group {
                arch,
                dataset,
                name,
                runs,
            };
            if g.cross_validated()
                && let Some(w) = g
                    .runs
                    .windows(2)
                    .find(|w| w[0].config.data.fold == w[1].config.data.fold)
            {
                bail!(
                    "`{}` and `{}` are both fold {} of one cross-validation: move one away",
                    w[0].name,
                    w[1].name,
                    w[0].config.data.fold
                );
            }
            Ok(g)
        })
        .collect()
}

const DATASET_ORDER: [&str; 4] = ["FER2013", "CK+", "FER+", "FER+ (8 classes)"];

fn dataset_rank(name: &str) -> usize {
    DATASET_ORDER
        .iter()
        .position(|d| *d == name)
        .unwrap_or(DATASET_ORDER.len())
}

/// The accuracies the paper's text states (Figure 5 gives the others only as
/// bars): (architecture, dataset, percent, what it is).
pub const PAPER_ACCURACY: [(Arch, &str, f64, &str); 3] = [
    (
        Arch::Arch1,
        "FER2013",
        70.3,
        "test, early-stopped at epoch 102",
    ),
    (Arch::Arch1, "CK+", 99.4, "test; no subject split stated"),
    (Arch::Arch4, "FER2013", 62.3, "test"),
];

/// The accuracy (percent) the paper's text states for `arch` on `dataset`,
/// and what it was measured on.
fn paper_accuracy(arch: Arch, dataset: &str) -> Option<(f64, &'static str)> {
    PAPER_ACCURACY
        .iter()
        .find(|(a, d, _, _)| *a == arch && *d == dataset)
        .map(|&(_, _, v, what)| (v, what))
}

fn paper_cell(arch: Arch, dataset: &str) -> String {
    if let Some((v, what)) = paper_accuracy(arch, dataset) {
        return format!("{v:.1}% ({what})");
    }
    if dataset.starts_with("FER+") {
        return if arch == Arch::Arch1 {
            "IMED 96.4% (not public; FER+ stands in)".into()
        } else {
            "IMED: figure only".into()
        };
    }
    "figure only".into()
}

fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

fn pct_std((m, s): (f64, f64), n: usize) -> String {
    if n > 1 {
        format!("{:.1} ± {:.1}%", 100.0 * m, 100.0 * s)
    } else {
        pct(m)
    }
}

fn machines_of(runs: &[&Run]) -> String {
    let mut seen: Vec<String> = Vec::new();
    for r in runs {
        for m in &r.machines {
            let mut d = if m.device == "cpu" {
                format!("{} ({})", m.cpu, threads(m.threads))
            } else {
                m.device.clone()
            };
            if m.written_after {
                d.push_str(", recorded after the run");
            }
            if !seen.contains(&d) {
                seen.push(d);
            }
        }
    }
    if seen.is_empty() {
        "not recorded".into()
    } else {
        seen.join("; ")
    }
}

fn preset_name(p: crate::train::Preset) -> &'static str {
    match p {
        crate::train::Preset::Default => "default",
        crate::train::Preset::Paper => "paper",
    }
}

fn threads(n: usize) -> String {
    if n == 1 {
        "1 thread".into()
    } else {
        format!("{n} threads")
    }
}

fn arch_label(arch: Arch) -> String {
    arch.to_string()
        .to_ascii_uppercase()
        .replace("ARCH", "ARCH-")
}

/// Writes the report; returns the paths written (REPORT.md first).
pub fn write(opts: &ReportOptions) -> Result<Vec<PathBuf>> {
    let runs = discover(&opts.runs)?;
    let bench = read_bench(&opts.runs)?;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let groups = group(&runs)?;
    let mut written = Vec::new();
    let mut md = String::new();
    let rel = |p: &Path| {
        p.strip_prefix(&opts.out)
            .unwrap_or(p)
            .to_string_lossy()
            .replace('\\', "/")
    };

    md.push_str("# Reproducing Chowanda 2021: four architectures, three datasets\n\n");
    md.push_str(
        "Generated by `training report` from the `config.json`, `metrics.jsonl`, \
         `machine.jsonl` (and `evaluate.json` where present) of every run under the \
         runs folder, its `bench/*.json` benchmark files and, for the feature maps, \
         the weights and image named there; do not edit by hand. Regenerate with\n\n",
    );
    let _ = writeln!(
        md,
        "```\ncargo run --release -p training -- report --runs {} --out {}\n```\n",
        opts.runs.display(),
        opts.out.display()
    );
    md.push_str(PROTOCOL);

    // Table 5.
    md.push_str("\n## Results (the paper's Table 5 and Figure 5)\n\n");
    md.push_str(
        "| Architecture | Dataset | Params | Preset | Epochs | Training time | \
         Best validation acc. (epoch) | Last-epoch acc. (no selection) | Paper | Machine |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for g in &groups {
        let params = Summary::of(&ModelConfig::preset(g.arch))?.total;
        let first = g.runs[0];
        let done = g.complete_runs();
        let epochs = if g.cross_validated() {
            format!(
                "{} x {}/{} folds",
                first.config.epochs,
                done.len(),
                g.folds_planned()
            )
        } else {
            format!("{}/{}", first.epochs_done(), first.config.epochs)
        };
        let hours: f64 = g.runs.iter().map(|r| r.seconds()).sum::<f64>() / 3600.0;
        let n = done.len();
        let (best, last) = if g.cross_validated() {
            (
                g.best_accuracy().map_or("–".into(), |v| pct_std(v, n)),
                g.last_accuracy().map_or("–".into(), |v| pct_std(v, n)),
            )
        } else {
            let best = first.best().map_or("–".into(), |m| {
                format!("{} ({})", pct(m.val_accuracy), m.epoch)
            });
            let last = first
                .metrics
                .last()
                .map_or("–".into(), |m| pct(m.val_accuracy));
            (best, last)
        };
        let status = if g.finished() { "" } else { " (in progress)" };
        let _ = writeln!(
            md,
            "| {} | {}{status} | {params} | {}, batch {}{} | {epochs} | {hours:.2} h | {best} | {last}{} | {} | {} |",
            arch_label(g.arch),
            g.dataset,
            preset_name(first.config.preset),
            first.config.batch_size,
            recipe_extras(&first.config),
            if first.val_steers() {
                " (val. steered training)"
            } else {
                ""
            },
            paper_cell(g.arch, &g.dataset),
            machines_of(&g.runs),
        );
    }
    if groups.is_empty() {
        md.push_str("| (no runs yet) | | | | | | | | | |\n");
    }
    let missing = missing_cells(&groups);
    if !missing.is_empty() {
        let _ = writeln!(md, "\nNot run yet: {}.", missing.join(", "));
    }
    md.push_str(TABLE_NOTES);
    md.push_str(&findings(&groups));
    md.push_str(&paper_budget(&groups));
    md.push_str(&ablations(&groups));
    md.push_str(&soups(&runs));

    // Figure 5.
    let bars_path = opts.out.join("accuracy.png");
    accuracy_chart(&groups, &bars_path)?;
    let _ = writeln!(
        md,
        "\n![Accuracy per architecture and dataset]({})\n\n\
         Bars: best PublicTest accuracy (FER2013, FER+) or the mean last-epoch \
         accuracy over held-out subject folds with its standard deviation (CK+), \
         of the experiments the findings above compare (where an architecture \
         has several on a dataset, the one with the training budget most common \
         there; the table lists them all); diamonds: the accuracies the paper's \
         text states.\n",
        rel(&bars_path)
    );
    written.push(bars_path);

    // Figures 6-8.
    md.push_str("\n## Learning curves (the paper's Figures 6-8)\n\n");
    md.push_str(
        "Solid: training (augmented batches, train mode); dashed: validation. \
         Cross-validated runs show the mean over the folds that have reached each \
         epoch.\n\n",
    );
    for g in &groups {
        let path = opts
            .out
            .join("curves")
            .join(format!("{}.png", file_stem(&g.name)));
        let name = experiment_name(g, &groups);
        curves_chart(g, &name, &path)?;
        let _ = writeln!(md, "![{name}]({})\n", rel(&path));
        written.push(path);
    }

    // Confusion matrices of ARCH-1.
    md.push_str("\n## Confusion matrices of ARCH-1\n\n");
    md.push_str(
        "Rows are the true classes, each normalised to 1 (the cell text is the \
         fraction and the count). FER2013 and FER+: the best epoch on PublicTest. \
         CK+: the last epoch of every finished fold, summed.\n\n",
    );
    let mut any_confusion = false;
    for g in groups.iter().filter(|g| g.arch == Arch::Arch1) {
        let Some(c) = g.confusion() else {
            let _ = writeln!(md, "- {}: no confusion matrix recorded yet.\n", g.dataset);
            continue;
        };
        let path = opts
            .out
            .join(format!("confusion_{}.png", file_stem(&g.name)));
        let name = experiment_name(g, &groups);
        let title = if g.cross_validated() {
            format!("{name}, pooled over finished folds")
        } else {
            name.clone()
        };
        confusion_chart(&c, &title, &path)?;
        let _ = writeln!(md, "![Confusion of {name}]({})\n", rel(&path));
        md.push_str(&class_table(&c));
        written.push(path);
        any_confusion = true;
    }
    if !any_confusion && !groups.iter().any(|g| g.arch == Arch::Arch1) {
        md.push_str("No ARCH-1 run yet.\n\n");
    }

    // Abstention.
    md.push_str("\n## Abstention: accuracy against coverage\n\n");
    md.push_str(
        "The plugin withholds a face's expression (`Unsure`) when the classifier's \
         top-1 probability is below its gate. The curve is the accuracy on the faces \
         answered as the gate moves (`training evaluate --abstain --json`, saved as the \
         run's `abstain.json`); the marked point is the plugin's default gate, chosen \
         to keep 80% of PublicTest's faces.\n\n",
    );
    let mut any_abstain = false;
    for g in &groups {
        let Some((curve, default)) = g.runs.iter().find_map(|r| r.abstain.as_ref()) else {
            continue;
        };
        let name = experiment_name(g, &groups);
        let path = opts.out.join(format!("abstain_{}.png", file_stem(&g.name)));
        abstain_chart(curve, default, &name, &path)?;
        let _ = writeln!(md, "![Risk-coverage of {name}]({})\n", rel(&path));
        md.push_str(
            "| gate (top-1 at least) | coverage | accuracy on the answered |\n|---|---|---|\n",
        );
        for p in curve.iter().filter(|p| {
            let k = (p.threshold * 20.0).round() as i32;
            (5..=18).contains(&k) && k % 2 == 0
        }) {
            let _ = writeln!(
                md,
                "| {:.2} | {} | {} |",
                p.threshold,
                pct(p.coverage),
                pct(p.accuracy)
            );
        }
        let _ = writeln!(
            md,
            "| **{:.2} (default)** | **{}** | **{}** |\n",
            default.threshold,
            pct(default.coverage),
            pct(default.accuracy)
        );
        written.push(path);
        any_abstain = true;
    }
    if !any_abstain {
        md.push_str("No `abstain.json` in the runs yet.\n\n");
    }

    // Neutral calibration.
    md.push_str("\n## Neutral calibration\n\n");
    md.push_str(
        "The plugin corrects a player's probabilities by their resting face \
         (`p' ∝ p · q / b`, `perception::calibrate`). No dataset here has per-person \
         neutral frames (FER2013 has no identities, the CK+ crops are peak frames), so \
         the measurable case is the population's: one baseline from FER2013 `Training` \
         faces labelled neutral, applied to every evaluated face \
         (`training evaluate --calibrate --json`, the run's `calibrated.json`). It \
         trades recall between classes: the classes the average resting face leans to \
         (sad, neutral) lose, the others gain.\n\n",
    );
    let mut any_calibrated = false;
    for g in &groups {
        let Some((raw, cal)) = g.runs.iter().find_map(|r| r.calibrated.as_ref()) else {
            continue;
        };
        let name = experiment_name(g, &groups);
        let _ = writeln!(
            md,
            "{name}: accuracy {} raw, {} calibrated.\n\n| class | recall, raw | recall, calibrated |\n|---|---|---|",
            pct(raw.accuracy()),
            pct(cal.accuracy())
        );
        for ((n, r), c) in raw.classes.iter().zip(raw.per_class()).zip(cal.per_class()) {
            let _ = writeln!(md, "| {n} | {} | {} |", pct(r.recall), pct(c.recall));
        }
        md.push('\n');
        any_calibrated = true;
    }
    if !any_calibrated {
        md.push_str("No `calibrated.json` in the runs yet.\n\n");
    }

    // Figure 4.
    md.push_str("\n## Feature maps (the paper's Figure 4)\n\n");
    let maps_path = opts.out.join(format!("feature_maps_{}.png", opts.layer));
    let (maps, arch) = features::draw(
        &opts.model,
        &opts.image,
        &opts.detector,
        &opts.layer,
        &maps_path,
    )?;
    let file = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let _ = writeln!(
        md,
        "The {} maps ({}x{}) of `{}`{} of `{}` for the face MTCNN finds in `{}`, aligned to \
         48x48; each map is scaled to its own range. Any layer of any weights file: \
         `training features --model F --layer NAME --image IMG --out PNG`.\n\n![Feature maps]({})\n",
        maps.channels,
        maps.height,
        maps.width,
        opts.layer,
        if opts.layer == "conv2d_4" && arch == Arch::Arch1 {
            " (Table 1 naming: the residual branch's first 1x1 convolution, the layer of the paper's Figure 4)"
        } else {
            ""
        },
        file(&opts.model),
        file(&opts.image),
        rel(&maps_path)
    );
    written.push(maps_path);

    // Latency and parameters.
    md.push_str("\n## Inference latency and parameters\n\n");
    if bench.is_empty() {
        md.push_str(
            "No benchmark files yet: `training bench --arch archN --threads 1 --json runs/bench/archN.json`.\n",
        );
    } else {
        md.push_str(
            "From `training bench --arch archN --threads 1 --json runs/bench/archN.json` \
             (random weights and input; batch-1 median latency, batch-64 throughput). \
             `fast`: the training graph with this project's CPU ops; `engine`: ARCH-1's \
             deployment path (BatchNorm folded, buffers reused); `stock`: candle's own ops.\n\n\
             | Architecture | Params (total) | Trainable | b1 latency, ms (fast / engine / stock) | b64 img/s (fast) | Machine |\n\
             |---|---|---|---|---|---|\n",
        );
        for b in &bench {
            let arch: Arch = b.arch.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let s = Summary::of(&ModelConfig::preset(arch))?;
            let ms = |k: &str| {
                b.figures
                    .get(k)
                    .map_or("–".into(), |f| format!("{:.2}", f.b1_median_ms))
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} / {} / {} | {} | {} ({} of {}) |",
                arch_label(arch),
                s.total,
                s.trainable,
                ms("fast"),
                ms("engine"),
                ms("stock"),
                b.figures
                    .get("fast")
                    .map_or("–".into(), |f| format!("{:.0}", f.b64_img_s)),
                b.cpu,
                threads(b.threads),
                b.logical_cpus
            );
        }
        let lat_path = opts.out.join("latency.png");
        latency_chart(&bench, &lat_path)?;
        let _ = writeln!(
            md,
            "\n![Batch-1 latency per architecture]({})\n",
            rel(&lat_path)
        );
        written.push(lat_path);
    }

    // Per-run details.
    md.push_str("\n## Runs\n\n| Run | Dataset | Fold | Epochs | Best val. (epoch) | Last epoch | Seconds | img/s (median) |\n|---|---|---|---|---|---|---|---|\n");
    for r in &runs {
        let mut rates: Vec<f64> = r.metrics.iter().map(|m| m.img_per_s).collect();
        rates.sort_by(f64::total_cmp);
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {}/{} | {} | {} | {:.0} | {} |",
            r.name,
            r.dataset(),
            if crate::spec::is_csv(&r.config.data.data) {
                "–".into()
            } else {
                r.config.data.fold.to_string()
            },
            r.epochs_done(),
            r.config.epochs,
            r.best().map_or("–".into(), |m| format!(
                "{} ({})",
                pct(m.val_accuracy),
                m.epoch
            )),
            r.metrics.last().map_or("–".into(), |m| pct(m.val_accuracy)),
            r.seconds(),
            rates
                .get(rates.len() / 2)
                .map_or("–".into(), |v| format!("{v:.0}")),
        );
    }

    let md_path = opts.out.join("REPORT.md");
    models::weights::write_atomic(&md_path, md.as_bytes())
        .with_context(|| format!("writing {}", md_path.display()))?;
    written.insert(0, md_path);
    Ok(written)
}

/// Per-class precision, recall, F1 and support of a confusion matrix, as a
/// Markdown table (classes without samples are left out).
fn class_table(c: &Confusion) -> String {
    let mut out =
        String::from("| class | precision | recall | F1 | samples |\n|---|---|---|---|---|\n");
    for (name, sc) in c.classes.iter().zip(c.per_class()) {
        if sc.support == 0 {
            continue;
        }
        let _ = writeln!(
            out,
            "| {name} | {:.3} | {:.3} | {:.3} | {} |",
            sc.precision, sc.recall, sc.f1, sc.support
        );
    }
    out.push('\n');
    out
}

/// "ARCH-1 on FER2013", with the epoch budget (or, for equal budgets, the
/// run's folder) when another experiment has the same architecture and
/// dataset, so that their figures can be told apart.
fn experiment_name(g: &Group<'_>, groups: &[Group<'_>]) -> String {
    let base = format!("{} on {}", arch_label(g.arch), g.dataset);
    let twins: Vec<&Group<'_>> = groups
        .iter()
        .filter(|o| o.arch == g.arch && o.dataset == g.dataset)
        .collect();
    if twins.len() < 2 {
        base
    } else if twins.iter().filter(|o| o.epochs() == g.epochs()).count() == 1 {
        format!("{base} ({} epochs)", g.epochs())
    } else {
        format!("{base} ({})", g.name)
    }
}

/// The experiment compared for each architecture on dataset `d` (finished
/// ones only with `finished_only`), in folder order: the first of those
/// trained for the epoch budget most common there, else the first, so that a
/// like-for-like run (e.g. ARCH-1 for 30 epochs beside its 60-epoch shipped
/// run) is preferred when there is one. The findings and Figure 5 both use it.
fn compared<'g, 'a>(groups: &'g [Group<'a>], d: &str, finished_only: bool) -> Vec<&'g Group<'a>> {
    let cands: Vec<&Group<'a>> = groups
        .iter()
        .filter(|g| g.dataset == d && (g.finished() || !finished_only) && g.headline().is_some())
        .collect();
    let mut counts: Vec<(usize, usize)> = Vec::new();
    for g in &cands {
        match counts.iter_mut().find(|(e, _)| *e == g.epochs()) {
            Some((_, n)) => *n += 1,
            None => counts.push((g.epochs(), 1)),
        }
    }
    let common = counts
        .iter()
        .max_by(|x, y| x.1.cmp(&y.1).then(y.0.cmp(&x.0)))
        .map_or(0, |c| c.0);
    let mut chosen: Vec<&Group<'a>> = Vec::new();
    for g in cands.iter().filter(|g| g.epochs() == common).chain(&cands) {
        if !chosen.iter().any(|x| x.arch == g.arch) {
            chosen.push(g);
        }
    }
    chosen
}

/// The paper's main claim (ARCH-1 is the most accurate) against a ranking,
/// given ARCH-1's place in it.
fn arch1_claim(place: Option<usize>) -> &'static str {
    match place {
        Some(0) => "ARCH-1 is the most accurate here, as the paper reports",
        Some(_) => "ARCH-1 is not the most accurate here, unlike the paper's report",
        None => "ARCH-1 has not finished here yet",
    }
}

/// What the finished runs say about the paper's main claim (ARCH-1 is the
/// most accurate on every dataset), per dataset with two or more finished
/// architectures.
fn findings(groups: &[Group<'_>]) -> String {
    let mut out = String::from("\n### What the finished runs show\n\n");
    let mut any = false;
    let mut datasets: Vec<&str> = groups.iter().map(|g| g.dataset.as_str()).collect();
    datasets.sort_by_key(|d| (dataset_rank(d), *d));
    datasets.dedup();
    for d in datasets {
        let mut ranked: Vec<(Arch, f64, f64, usize, usize)> = compared(groups, d, true)
            .into_iter()
            .filter_map(|g| {
                let (m, s) = g.headline()?;
                Some((g.arch, m, s, g.complete_runs().len(), g.epochs()))
            })
            .collect();
        if ranked.len() < 2 {
            continue;
        }
        any = true;
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let order: Vec<String> = ranked
            .iter()
            .map(|(a, m, s, n, _)| format!("{} {}", arch_label(*a), pct_std((*m, *s), *n)))
            .collect();
        // Unequal training budgets make the order less telling: say so.
        let budget_note = if ranked.iter().all(|r| r.4 == ranked[0].4) {
            String::new()
        } else {
            let each: Vec<String> = ranked
                .iter()
                .map(|r| format!("{} {}", arch_label(r.0), r.4))
                .collect();
            format!(
                " The training budgets differ (epochs: {}), so this is not a like-for-like comparison.",
                each.join(", ")
            )
        };
        let claim = arch1_claim(ranked.iter().position(|r| r.0 == Arch::Arch1));
        let _ = writeln!(
            out,
            "- {d}: {} ({} of 4 architectures finished). {claim}.{budget_note}",
            order.join(" > "),
            ranked.len()
        );
    }
    if !any {
        out.push_str(
            "No dataset has two finished architectures yet, so the paper's \
             comparison cannot be checked.\n",
        );
    }
    out.push_str(
        "\nTraining times are not compared: runs shared the CPU with each other \
         in varying numbers, so their seconds per epoch measure the load as much \
         as the network. The latency table below compares the architectures' speed \
         on equal terms.\n",
    );
    out
}

fn missing_cells(groups: &[Group<'_>]) -> Vec<String> {
    let mut out = Vec::new();
    // The paper's grid: the eight-class FER+ run is an extra, not a cell.
    for arch in [Arch::Arch1, Arch::Arch2, Arch::Arch3, Arch::Arch4] {
        for d in &DATASET_ORDER[..3] {
            if !groups.iter().any(|g| g.arch == arch && g.dataset == *d) {
                out.push(format!("{} on {d}", arch_label(arch)));
            }
        }
    }
    out
}

fn accuracy_chart(groups: &[Group<'_>], path: &Path) -> Result<()> {
    let mut datasets: Vec<String> = DATASET_ORDER.iter().map(|s| (*s).to_owned()).collect();
    for g in groups {
        if !datasets.contains(&g.dataset) {
            datasets.push(g.dataset.clone());
        }
    }
    let archs = [Arch::Arch1, Arch::Arch2, Arch::Arch3, Arch::Arch4];
    let mut bars: Vec<Bar> = Vec::new();
    let shown = datasets.iter().flat_map(|d| compared(groups, d, false));
    for g in shown {
        let Some((m, s)) = g.headline() else { continue };
        let gi = datasets.iter().position(|d| *d == g.dataset).unwrap_or(0);
        let si = archs.iter().position(|a| *a == g.arch).unwrap_or(0);
        let cv = g.cross_validated() && g.complete_runs().len() > 1;
        bars.push(Bar {
            group: gi,
            series: si,
            value: 100.0 * m,
            error: cv.then_some(100.0 * s),
            label: format!("{:.1}{}", 100.0 * m, if g.finished() { "" } else { "*" }),
        });
    }
    let title = if bars.iter().any(|b| b.label.ends_with('*')) {
        "Accuracy per architecture and dataset (* = run in progress)"
    } else {
        "Accuracy per architecture and dataset"
    };
    let markers: Vec<(usize, usize, f64)> = PAPER_ACCURACY
        .iter()
        .filter_map(|(a, d, v, _)| {
            Some((
                datasets.iter().position(|x| x == d)?,
                archs.iter().position(|x| x == a)?,
                *v,
            ))
        })
        .collect();
    let series: Vec<String> = archs.iter().map(|a| arch_label(*a)).collect();
    plot::png(path, (960, 540), |root| {
        plot::grouped_bars(
            root,
            title,
            "accuracy, %",
            &datasets,
            &series,
            &bars,
            &markers,
            110.0,
        )
    })
}

fn curves_chart(g: &Group<'_>, name: &str, path: &Path) -> Result<()> {
    // Mean over the runs that reached each epoch.
    let max_epoch = g.runs.iter().map(|r| r.epochs_done()).max().unwrap_or(0);
    let mean = |f: &dyn Fn(&EpochMetrics) -> f64| -> Vec<(f64, f64)> {
        (1..=max_epoch)
            .filter_map(|e| {
                let v: Vec<f64> = g
                    .runs
                    .iter()
                    .filter_map(|r| r.metrics.iter().find(|m| m.epoch == e).map(f))
                    .collect();
                (!v.is_empty()).then(|| (e as f64, v.iter().sum::<f64>() / v.len() as f64))
            })
            .collect()
    };
    let acc = [
        Series {
            label: "train",
            points: mean(&|m| 100.0 * m.train_accuracy),
            color: 0,
            dashed: false,
        },
        Series {
            label: "validation",
            points: mean(&|m| 100.0 * m.val_accuracy),
            color: 1,
            dashed: true,
        },
    ];
    let loss = [
        Series {
            label: "train",
            points: mean(&|m| m.train_loss),
            color: 0,
            dashed: false,
        },
        Series {
            label: "validation",
            points: mean(&|m| m.val_loss),
            color: 1,
            dashed: true,
        },
    ];
    let folds = if g.cross_validated() {
        format!(", mean of up to {} folds", g.runs.len())
    } else {
        String::new()
    };
    let title = format!("{name}{folds}");
    plot::png(path, (1100, 420), |root| {
        let (left, right) = root.split_horizontally(550);
        plot::line_chart(
            &left,
            &format!("{title}: accuracy"),
            ("epoch", "accuracy, %"),
            &acc,
            plot::Legend::LowerRight,
        )?;
        plot::line_chart(
            &right,
            &format!("{title}: loss"),
            ("epoch", "cross-entropy"),
            &loss,
            plot::Legend::UpperRight,
        )
    })
}

fn abstain_chart(
    curve: &[CoveragePoint],
    default: &CoveragePoint,
    name: &str,
    path: &Path,
) -> Result<()> {
    let points: Vec<(f64, f64)> = curve
        .iter()
        .filter(|p| p.accuracy.is_finite())
        .map(|p| (100.0 * p.coverage, 100.0 * p.accuracy))
        .collect();
    let series = [
        Series {
            label: "confidence gate",
            points,
            color: 0,
            dashed: false,
        },
        Series {
            label: "default gate",
            points: vec![(100.0 * default.coverage, 100.0 * default.accuracy)],
            color: 1,
            dashed: false,
        },
    ];
    plot::png(path, (640, 420), |root| {
        plot::line_chart(
            root,
            &format!("{name}: accuracy against coverage"),
            ("faces answered, %", "accuracy on them, %"),
            &series,
            plot::Legend::UpperRight,
        )
    })
}

fn confusion_chart(c: &Confusion, title: &str, path: &Path) -> Result<()> {
    let k = c.classes.len();
    let mut values = vec![0.0; k * k];
    let mut texts = vec![String::new(); k * k];
    for r in 0..k {
        let row: u64 = c.counts[r * k..(r + 1) * k].iter().sum();
        for col in 0..k {
            let n = c.counts[r * k + col];
            let f = if row > 0 { n as f64 / row as f64 } else { 0.0 };
            values[r * k + col] = f;
            texts[r * k + col] = format!("{f:.2} ({n})");
        }
    }
    plot::png(path, (760, 680), |root| {
        plot::heat_map(
            root,
            &format!(
                "{title}: accuracy {:.1}% ({}/{})",
                100.0 * c.accuracy(),
                c.correct(),
                c.total()
            ),
            ("true class", "predicted class"),
            &c.classes,
            &values,
            &texts,
        )
    })
}

fn latency_chart(bench: &[BenchRecord], path: &Path) -> Result<()> {
    let groups: Vec<String> = bench
        .iter()
        .map(|b| b.arch.to_ascii_uppercase().replace("ARCH", "ARCH-"))
        .collect();
    let kinds = ["fast", "engine", "stock"];
    let mut bars = Vec::new();
    let mut y_max: f64 = 1.0;
    for (gi, b) in bench.iter().enumerate() {
        for (si, k) in kinds.iter().enumerate() {
            if let Some(f) = b.figures.get(*k) {
                y_max = y_max.max(f.b1_median_ms);
                bars.push(Bar {
                    group: gi,
                    series: si,
                    value: f.b1_median_ms,
                    error: None,
                    label: format!("{:.2}", f.b1_median_ms),
                });
            }
        }
    }
    let series: Vec<String> = kinds.iter().map(|s| (*s).to_owned()).collect();
    plot::png(path, (900, 480), |root| {
        plot::grouped_bars(
            root,
            "Batch-1 inference latency (median, ms)",
            "ms",
            &groups,
            &series,
            &bars,
            &[],
            y_max * 1.4,
        )
    })
}

const PROTOCOL: &str = "\
## Protocol

- **Architectures**: ARCH-1..4 exactly as the paper's Tables 1-4 (parameter \
counts match to the parameter); ARCH-1 and ARCH-2 separable with a residual \
branch, ARCH-3 and ARCH-4 plain convolutions; ARCH-1 and ARCH-3 end in global \
average pooling, ARCH-2 and ARCH-4 in dense layers.
- **FER2013**: trained on the 28,709 `Training` rows, selected on the 3,589 \
`PublicTest` rows. `PrivateTest` is withheld from this project (it judges the \
shipped weights), so there is no separate test figure: the paper's test split \
was its own 12-14% hold-out.
- **CK+**: 981 48x48 crops (the last three frames of 327 sequences, 118 \
subjects), subject-independent 10-fold cross-validation: the folds of \
`folds.csv` split by subject `Sxxx`, so no subject is in both the training \
and the held-out fold. `contempt` (54 crops) has no FER2013 counterpart and is \
left out, so 927 crops of six expressions (anger, disgust, fear, happy, \
sadness, surprise, mapped to FER2013's names) train the same seven-output \
networks as FER2013, from scratch; CK+ has no neutral samples, so that output \
is never the truth. The reported figure is the mean and standard deviation \
over folds of the accuracy after the last epoch, with no selection on the fold \
that is scored; the best-epoch figure, which does select on it, is shown \
beside it.
- **FER+ instead of IMED**: IMED is not public. FER+ (the same images as \
FER2013, labelled by the plurality of ten annotators' votes; rows marked not a \
face, tied, or won by `contempt` or `unknown` dropped) stands in as the third \
dataset, `Training` -> `PublicTest` as for FER2013, hard labels. Its numbers \
are not comparable with the paper's IMED figures.
- **Recipe**: the `default` preset unless the table says otherwise (AdamW, \
cosine learning-rate decay with warm-up, label smoothing 0.1, batch 64, the \
paper's augmentation: rotation 20 degrees, shifts 0.1, zoom 0.1, horizontal \
flip). The paper trained with Adam at 0.01, plateau decay and early stopping \
for up to 200 epochs on a Titan V GPU; these runs use fixed, shorter budgets on \
a 2-core CPU (the epochs column), so absolute accuracies are lower bounds for \
the architectures.
";

const TABLE_NOTES: &str = "
- *Best validation acc.*: the highest validation accuracy of any epoch and \
that epoch (for FER2013 and FER+ this is how weights are selected; for CK+ the \
mean ± standard deviation over folds of each fold's best epoch, which selects \
on the scored fold and is optimistic).
- *Last-epoch acc.*: the accuracy after the last epoch, which nothing was \
selected on (mean ± standard deviation over folds for CK+).
- *Training time*: the sum of the epochs' wall-clock seconds (training and \
validation), over all folds for CK+, on the machine named.
- *Paper*: the accuracies the paper's text states; the other cells of its \
Figure 5 are given only as bars. The paper averages per architecture (over \
three datasets): ARCH-1 88.9%, ARCH-2 83.9%, ARCH-3 86.8%, ARCH-4 84.7%, and \
training time per dataset: ARCH-1 0.841 h, ARCH-3 1.013 h, ARCH-4 2.633 h \
(Titan V).
";

/// What a run's recipe adds to its preset, for the table's recipe column:
/// fine-tuning, distillation and random erasing.
/// `distilled from `a` + `b`, mirrored too (alpha A, T T)`.
fn distill_text(d: &crate::train::Distill) -> String {
    let names: Vec<String> = d
        .teachers()
        .map(|t| format!("`{}`", t.file_name().unwrap_or_default().to_string_lossy()))
        .collect();
    format!(
        "distilled from {}{} (alpha {}, T {})",
        names.join(" + "),
        if d.mirror { ", mirrored too" } else { "" },
        d.alpha,
        d.temperature
    )
}

/// A recipe setting the ablations compare: its name in the section's
/// preamble, how to remove it from a configuration, and how to describe a
/// run's value of it.
struct Knob {
    name: &'static str,
    clear: fn(&mut TrainConfig),
    describe: fn(&TrainConfig) -> String,
}

/// `name value`, or `no name` when the value is 0.
fn amount<T: std::fmt::Display + PartialOrd + Default>(name: &str, value: T) -> String {
    if value > T::default() {
        format!("{name} {value}")
    } else {
        format!("no {name}")
    }
}

/// The settings an ablation may vary: runs whose configurations are equal
/// once these are cleared are compared, and each run is described by the
/// knobs that differ among them.
const KNOBS: &[Knob] = &[
    Knob {
        name: "the teacher",
        clear: |c| c.distill = None,
        describe: |c| c.distill.as_ref().map_or("no teacher".into(), distill_text),
    },
    Knob {
        name: "mixup",
        clear: |c| c.mixup = 0.0,
        describe: |c| amount("mixup", c.mixup),
    },
    Knob {
        name: "the optimizer with its learning rate and weight decay",
        clear: |c| {
            c.adam.sgd_momentum = None;
            c.lr = 0.0;
            c.adam.weight_decay = 0.0;
        },
        describe: |c| {
            let optimizer = match c.adam.sgd_momentum {
                Some(mu) => format!("SGD with Nesterov momentum {mu}"),
                None => "Adam".into(),
            };
            format!(
                "{optimizer} at lr {}, weight decay {}",
                c.lr, c.adam.weight_decay
            )
        },
    },
    Knob {
        name: "label smoothing",
        clear: |c| c.label_smoothing = 0.0,
        describe: |c| amount("label smoothing", c.label_smoothing),
    },
    Knob {
        name: "random erasing",
        clear: |c| {
            if let Some(a) = c.augment.as_mut() {
                a.random_erasing = 0.0;
            }
        },
        describe: |c| {
            amount(
                "random erasing",
                c.augment.map_or(0.0, |a| a.random_erasing),
            )
        },
    },
];

/// Finished fixed-split runs whose configurations differ only in the
/// [`KNOBS`] (same network, data, start, seed, schedule, other augmentation
/// and epochs): what each of those settings adds at an equal budget.
fn ablations(groups: &[Group<'_>]) -> String {
    let single: Vec<&Run> = groups
        .iter()
        .filter(|g| !g.cross_validated() && g.finished())
        .filter_map(|g| g.runs.first().copied())
        .collect();
    let cleared = |c: &TrainConfig, knobs: &[&Knob]| {
        let mut c = c.clone();
        for k in knobs {
            (k.clear)(&mut c);
        }
        c
    };
    let all: Vec<&Knob> = KNOBS.iter().collect();
    let key = |r: &Run| serde_json::to_string(&cleared(&r.config, &all)).unwrap_or_default();
    let mut lines = String::new();
    let mut seen = Vec::new();
    for r in &single {
        let k = key(r);
        if seen.contains(&k) {
            continue;
        }
        let mut same: Vec<&Run> = single.iter().copied().filter(|o| key(o) == k).collect();
        seen.push(k);
        if same.len() < 2 {
            continue;
        }
        same.sort_by(|a, b| a.name.cmp(&b.name));
        let varied: Vec<&Knob> = KNOBS
            .iter()
            .filter(|k| {
                same.iter()
                    .any(|o| (k.describe)(&o.config) != (k.describe)(&r.config))
            })
            .collect();
        let variants: Vec<String> = same
            .iter()
            .filter_map(|o| {
                let best = o.best()?;
                let last = o.metrics.last()?;
                let how: Vec<String> = varied.iter().map(|k| (k.describe)(&o.config)).collect();
                Some(format!(
                    "`{}` ({}): best {} (epoch {}), last {}",
                    o.name,
                    how.join(", "),
                    pct(best.val_accuracy),
                    best.epoch,
                    pct(last.val_accuracy)
                ))
            })
            .collect();
        let _ = writeln!(
            lines,
            "- {} {}, {} epochs, seed {}{}: {}.",
            arch_label(r.config.model.arch()),
            r.dataset(),
            r.config.epochs,
            r.config.seed,
            recipe_extras(&cleared(&r.config, &varied)),
            variants.join("; ")
        );
    }
    if lines.is_empty() {
        return lines;
    }
    let names: Vec<&str> = KNOBS.iter().map(|k| k.name).collect();
    format!(
        "\n### Ablations at an equal budget\n\nFinished runs whose configurations differ only in \
         one or more of {} and {} (same network, data, starting weights, seed, schedule, other \
         augmentation and epochs), so the differences are theirs; each run is described by the \
         settings that differ:\n\n{lines}",
        names[..names.len() - 1].join(", "),
        names[names.len() - 1]
    )
}

/// Every run's scored soups (`soups.jsonl`) beside its best single epoch:
/// what averaging kept epochs and re-estimating BatchNorm statistics add.
fn soups(runs: &[Run]) -> String {
    let mut lines = String::new();
    for r in runs.iter().filter(|r| !r.soups.is_empty()) {
        // One soup scored twice counts once, as last scored.
        let mut kept: Vec<&SoupRecord> = Vec::new();
        for s in &r.soups {
            kept.retain(|k| (&k.models, k.bn, &k.usage) != (&s.models, s.bn, &s.usage));
            kept.push(s);
        }
        let scored: Vec<String> = kept
            .iter()
            .map(|s| {
                format!(
                    "{}, BatchNorm statistics {}{}: {:.2}% ({}/{})",
                    s.members_text(),
                    match s.bn {
                        SoupBn::Averaged => "averaged",
                        SoupBn::ReEstimated => "re-estimated",
                    },
                    if s.usage == "PublicTest" {
                        String::new()
                    } else {
                        format!(", on {}", s.usage)
                    },
                    100.0 * s.accuracy,
                    s.correct,
                    s.total
                )
            })
            .collect();
        let best = r.best().map_or_else(String::new, |b| {
            format!(
                " (best single epoch {:.2}%, epoch {}, of {})",
                100.0 * b.val_accuracy,
                b.epoch,
                r.epochs_done()
            )
        });
        let _ = writeln!(lines, "- `{}`{best}: {}.", r.name, scored.join("; "));
    }
    if lines.is_empty() {
        return lines;
    }
    format!(
        "\n### Weight averaging\n\nThe mean of a run's kept epochs (`train --keep-epochs`, then \
         `training soup`), with the BatchNorm moving statistics averaged over the files or \
         re-estimated on the training faces as they are (`--bn-data`), scored single crop on \
         PublicTest unless said (`soup --score PublicTest --log RUN_DIR/soups.jsonl`):\n\n{lines}"
    )
}

fn recipe_extras(cfg: &TrainConfig) -> String {
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let mut out = String::new();
    if let Some(p) = &cfg.init {
        let _ = write!(out, ", fine-tuned from `{}`", name(p));
    }
    if let Some(d) = &cfg.distill {
        let _ = write!(out, ", {}", distill_text(d));
    }
    if cfg.augment.is_none() {
        out.push_str(", no augmentation");
    }
    if let Some(p) = cfg.augment.map(|a| a.random_erasing).filter(|&p| p > 0.0) {
        let _ = write!(out, ", random erasing {p}");
    }
    if cfg.mixup > 0.0 {
        let _ = write!(out, ", mixup {}", cfg.mixup);
    }
    if let Some(mu) = cfg.adam.sgd_momentum {
        let _ = write!(out, ", SGD with Nesterov momentum {mu} at lr {}", cfg.lr);
    }
    // The paper's preset has both; the project's default has neither.
    if cfg.preset == crate::train::Preset::Default {
        if let Schedule::Plateau {
            factor, patience, ..
        } = cfg.schedule
        {
            let _ = write!(
                out,
                ", learning rate x{factor} after {patience} epochs without a better validation accuracy"
            );
        }
        if let Some(p) = cfg.early_stopping {
            let _ = write!(out, ", early stopping after {p}");
        }
    }
    out
}

/// Finished folds that early stopping ended before the network learned
/// (training accuracy under 50% at the stop), per network, as a sentence;
/// empty when there are none.
fn unlearned_folds(groups: &[&Group<'_>]) -> String {
    let counts: Vec<String> = groups
        .iter()
        .filter(|g| g.cross_validated())
        .filter_map(|g| {
            let done = g.complete_runs();
            let n = done
                .iter()
                .filter(|r| {
                    r.epochs_done() < r.config.epochs
                        && r.metrics.last().is_some_and(|m| m.train_accuracy < 0.5)
                })
                .count();
            (n > 0).then(|| format!("{} {n} of {}", arch_label(g.arch), done.len()))
        })
        .collect();
    if counts.is_empty() {
        return String::new();
    }
    format!(
        " Folds that early stopping ended before the network learned (training accuracy \
         under 50% at the stop, which pulls the mean down): {}.",
        counts.join(", ")
    )
}

/// The paper's protocol: every network for up to its epoch budget, stopped
/// early on the validation split. Experiments with early stopping are
/// compared per dataset among those whose configurations are equal but for
/// the network (and the fold), finished or not, so the section says how far
/// the grid has come as well as what it shows.
fn paper_budget(groups: &[Group<'_>]) -> String {
    let key = |g: &Group<'_>| {
        g.runs.first().map(|r| {
            let mut c = r.config.clone();
            c.model = ModelConfig::preset(Arch::Arch1);
            c.data.fold = 0;
            (
                g.dataset.clone(),
                serde_json::to_string(&c).unwrap_or_default(),
            )
        })
    };
    let stopped: Vec<&Group<'_>> = groups
        .iter()
        .filter(|g| {
            g.runs
                .first()
                .is_some_and(|r| r.config.early_stopping.is_some())
        })
        .collect();
    let mut lines = String::new();
    let mut seen = Vec::new();
    for g in &stopped {
        let Some(k) = key(g) else { continue };
        if seen.contains(&k) {
            continue;
        }
        seen.push(k.clone());
        let same: Vec<&Group<'_>> = stopped
            .iter()
            .copied()
            .filter(|o| key(o).as_ref() == Some(&k))
            .collect();
        let cfg = &g.runs[0].config;
        let mut done: Vec<(Arch, f64, f64, usize)> = Vec::new();
        let mut running = Vec::new();
        for o in &same {
            match o.headline() {
                Some((m, s)) if o.finished() => {
                    done.push((o.arch, m, s, o.complete_runs().len()));
                }
                _ if o.cross_validated() => running.push(format!(
                    "{} ({} of {} folds finished)",
                    arch_label(o.arch),
                    o.complete_runs().len(),
                    o.folds_planned()
                )),
                _ => {
                    let at = o.runs.iter().map(|r| r.epochs_done()).max().unwrap_or(0);
                    running.push(format!("{} (epoch {at})", arch_label(o.arch)));
                }
            }
        }
        done.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // Each finished network beside the accuracy the paper states for it,
        // where it states one.
        let order: Vec<String> = done
            .iter()
            .map(|(a, m, s, n)| {
                let paper = paper_accuracy(*a, &g.dataset).map_or(String::new(), |(v, _)| {
                    format!(" (paper {v:.1}%, {:+.1} pp)", 100.0 * m - v)
                });
                format!("{} {}{paper}", arch_label(*a), pct_std((*m, *s), *n))
            })
            .collect();
        let missing: Vec<String> = [Arch::Arch1, Arch::Arch2, Arch::Arch3, Arch::Arch4]
            .into_iter()
            .filter(|a| !same.iter().any(|o| o.arch == *a))
            .map(arch_label)
            .collect();
        let mut parts = Vec::new();
        if !order.is_empty() {
            parts.push(format!("finished: {}", order.join(" > ")));
        }
        if !running.is_empty() {
            parts.push(format!("in progress: {}", running.join(", ")));
        }
        if !missing.is_empty() {
            parts.push(format!("not run yet: {}", missing.join(", ")));
        }
        let claim = if done.len() < 2 {
            String::new()
        } else {
            format!(
                " {}.",
                arch1_claim(done.iter().position(|r| r.0 == Arch::Arch1))
            )
        };
        let _ = writeln!(
            lines,
            "- {}, up to {} epochs, {}, batch {}{}: {}.{claim}{}",
            g.dataset,
            cfg.epochs,
            preset_name(cfg.preset),
            cfg.batch_size,
            recipe_extras(cfg),
            parts.join("; "),
            unlearned_folds(&same)
        );
    }
    if lines.is_empty() {
        return lines;
    }
    format!(
        "\n### At the paper's budget\n\nThe paper trained every network for up to 200 \
         epochs and stopped early on the validation split. Experiments run that way, \
         per dataset and recipe (the same configuration but for the network); the \
         headline figure is the best validation epoch (FER2013, FER+) or the mean \
         last-epoch accuracy over held-out folds (CK+):\n\n{lines}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_matches_hand_values() {
        assert_eq!(mean_std(&[]), None);
        assert_eq!(mean_std(&[0.5]), Some((0.5, 0.0)));
        let (m, s) = mean_std(&[0.6, 0.8]).unwrap();
        assert!((m - 0.7).abs() < 1e-12);
        assert!((s - 0.141_421_356).abs() < 1e-6);
    }

    fn finished_run(name: &str, config: TrainConfig, accuracies: &[f64]) -> Run {
        let metrics = accuracies
            .iter()
            .enumerate()
            .map(|(i, &a)| EpochMetrics {
                epoch: i + 1,
                train_loss: 1.0,
                train_accuracy: 0.5,
                val_loss: 1.0,
                val_accuracy: a,
                lr: config.lr,
                seconds: 1.0,
                img_per_s: 1.0,
                val_confusion: None,
            })
            .collect();
        Run {
            name: name.into(),
            config,
            metrics,
            machines: Vec::new(),
            evaluated: None,
            abstain: None,
            calibrated: None,
            soups: Vec::new(),
        }
    }

    /// ARCH-1 on a FER2013 CSV with the default preset.
    fn fer_config() -> TrainConfig {
        let data = crate::spec::DataSpec {
            data: "fer2013.csv.gz".into(),
            ..Default::default()
        };
        TrainConfig::preset(crate::train::Preset::Default, Arch::Arch1, data)
    }

    #[test]
    fn ablations_compare_runs_differing_only_in_the_knobs() {
        let mut base = fer_config();
        base.epochs = 2;
        let mut sgd = base.clone();
        sgd.adam.sgd_momentum = Some(0.9);
        sgd.lr = 0.01;
        sgd.adam.weight_decay = 0.005;
        let mut plain = base.clone();
        plain.label_smoothing = 0.0;
        // Another seed is another experiment: never compared with these.
        let mut seeded = base.clone();
        seeded.seed = 7;
        let runs = [
            finished_run("a_base", base.clone(), &[0.5, 0.6]),
            finished_run("a_sgd", sgd, &[0.55, 0.62]),
            finished_run("a_plain", plain, &[0.6, 0.58]),
            finished_run("a_seed", seeded, &[0.7, 0.7]),
        ];
        let groups: Vec<Group<'_>> = runs
            .iter()
            .map(|r| Group {
                arch: Arch::Arch1,
                dataset: r.dataset(),
                name: r.name.clone(),
                runs: vec![r],
            })
            .collect();
        let md = ablations(&groups);
        assert!(md.contains("### Ablations at an equal budget"), "{md}");
        assert!(md.contains("label smoothing and random erasing"), "{md}");
        let lines: Vec<&str> = md.lines().filter(|l| l.starts_with("- ")).collect();
        assert_eq!(lines.len(), 1, "{md}");
        let line = lines[0];
        assert!(
            line.contains("ARCH-1") && line.contains("2 epochs, seed 0"),
            "{line}"
        );
        assert!(
            line.contains(
                "`a_sgd` (SGD with Nesterov momentum 0.9 at lr 0.01, weight decay 0.005, \
                 label smoothing 0.1): best 62.0% (epoch 2), last 62.0%"
            ),
            "{line}"
        );
        assert!(line.contains("`a_plain` (Adam at lr 0.002, weight decay 0.05, no label smoothing): best 60.0% (epoch 1), last 58.0%"), "{line}");
        assert!(!line.contains("a_seed") && !line.contains("teacher") && !line.contains("mixup"));
        // A lone run has nothing to be compared with.
        assert_eq!(ablations(&groups[3..]), "");
    }

    #[test]
    fn soups_are_listed_beside_the_best_epoch() {
        let mut cfg = fer_config();
        cfg.epochs = 3;
        let mut run = finished_run("a_swa", cfg, &[0.5, 0.6, 0.55]);
        let record = |epochs: &[usize], bn, correct| SoupRecord {
            models: epochs
                .iter()
                .map(|e| format!("runs/a_swa/epochs/weights-{e}.safetensors"))
                .collect(),
            bn,
            usage: "PublicTest".into(),
            accuracy: correct as f64 / 200.0,
            correct,
            total: 200,
        };
        run.soups = vec![
            record(&[2, 3], SoupBn::Averaged, 100),
            record(&[1, 3, 2], SoupBn::ReEstimated, 125),
            record(&[1, 3], SoupBn::ReEstimated, 119),
            // Scored again: the later line replaces the earlier one.
            record(&[2, 3], SoupBn::Averaged, 110),
        ];
        let md = soups(std::slice::from_ref(&run));
        assert!(md.contains("### Weight averaging"), "{md}");
        let lines: Vec<&str> = md.lines().filter(|l| l.starts_with("- ")).collect();
        assert_eq!(lines.len(), 1, "{md}");
        assert_eq!(
            lines[0],
            "- `a_swa` (best single epoch 60.00%, epoch 2, of 3): \
             epochs 1-3, BatchNorm statistics re-estimated: 62.50% (125/200); \
             epochs 1, 3, BatchNorm statistics re-estimated: 59.50% (119/200); \
             epochs 2-3, BatchNorm statistics averaged: 55.00% (110/200)."
        );
        let other = SoupRecord {
            models: vec!["x/a.safetensors".into(), "b.safetensors".into()],
            ..record(&[1], SoupBn::Averaged, 1)
        };
        assert_eq!(other.members_text(), "`a.safetensors` + `b.safetensors`");
        assert_eq!(record(&[7], SoupBn::Averaged, 1).members_text(), "epoch 7");
        // Runs without soups add nothing.
        run.soups.clear();
        assert_eq!(soups(&[run]), "");
    }

    #[test]
    fn folds_stopped_before_learning_are_counted() {
        let data = crate::spec::DataSpec {
            data: "ckplus48".into(),
            folds: 2,
            ..Default::default()
        };
        let mut cfg = TrainConfig::preset(crate::train::Preset::Default, Arch::Arch4, data);
        cfg.epochs = 10;
        cfg.early_stopping = Some(2);
        let mut stalled = finished_run("a/fold0", cfg.clone(), &[0.3, 0.2, 0.2]);
        for m in &mut stalled.metrics {
            m.train_accuracy = 0.3;
        }
        let learned = finished_run("a/fold1", cfg.clone(), &[0.5, 0.9, 0.8, 0.8]);
        let runs = [stalled, learned];
        let group = Group {
            arch: Arch::Arch4,
            dataset: "CK+".into(),
            name: "a".into(),
            runs: runs.iter().collect(),
        };
        assert!(runs.iter().all(Run::complete));
        let text = unlearned_folds(&[&group]);
        assert!(text.contains("ARCH-4 1 of 2"), "{text}");
        // A fold that ran its whole budget is not "stopped early".
        let mut full = cfg;
        full.epochs = 3;
        let slow = [finished_run("b/fold0", full, &[0.3, 0.3, 0.3])];
        let group = Group {
            arch: Arch::Arch2,
            dataset: "CK+".into(),
            name: "b".into(),
            runs: slow.iter().collect(),
        };
        assert_eq!(unlearned_folds(&[&group]), "");
    }

    #[test]
    fn a_run_without_augmentation_says_so() {
        let mut cfg = fer_config();
        assert!(!recipe_extras(&cfg).contains("augmentation"));
        cfg.augment = None;
        assert_eq!(recipe_extras(&cfg), ", no augmentation");
    }

    #[test]
    fn slugs_and_names() {
        assert_eq!(file_stem("arch1_ck+/x"), "arch1_ck__x");
        assert_eq!(arch_label(Arch::Arch3), "ARCH-3");
        assert_eq!(paper_cell(Arch::Arch2, "CK+"), "figure only");
        assert!(paper_cell(Arch::Arch1, "CK+").starts_with("99.4%"));
    }
}

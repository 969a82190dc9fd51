//! `training train`: the training loop, its configuration and presets, and the
//! run directory it fills.
//!
//! ```text
//! runs/NAME/
//!   config.json          the full configuration, written before anything else
//!   metrics.jsonl        one JSON object per finished epoch
//!   state.json           where the run stands (epoch, best, schedule), last of a checkpoint
//!   ckpt/weights-E.safetensors, ckpt/adam-E.safetensors   the checkpoint of epoch E
//!   last.safetensors     weights after the last finished epoch
//!   best.safetensors     weights of the epoch with the best validation accuracy
//! ```
//!
//! Every file is written atomically (temporary file, then rename) and
//! `state.json` is written last, so a crash or `kill -9` at any moment leaves the
//! previous epoch's checkpoint intact: at most the running epoch is lost.
//! `--resume` continues from `state.json` with the optimizer state, the schedule
//! state and the per-epoch data order and augmentation (both derived from the
//! seed and the epoch number), so a resumed run computes what an uninterrupted
//! one would. One exception: dropout (ARCH-2/ARCH-4 only) draws from candle's
//! global generator, which is not checkpointed.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{D, DType, Device, Tensor};
use candle_nn::{ModuleT, VarBuilder, VarMap};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use models::{Arch, EmotionNet, ModelConfig, Provenance, WeightsMeta};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::augment::{AugmentConfig, Augmenter, BatchMode, make_batch};
use crate::metrics::{Confusion, evaluate};
use crate::optim::{Adam, AdamConfig};
use crate::spec::DataSpec;

/// A named starting point for the training configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The paper's literal recipe: Adam lr 0.01 divided by 10 on a validation
    /// plateau, batch 256, at most 200 epochs, early stopping, L2 0.2 on every
    /// kernel, dropout 0.5 in the dense heads.
    Paper,
    /// The project's CPU recipe: AdamW lr 2e-3 with warm-up and cosine decay,
    /// batch 64, 60 epochs, weight decay 0.05, label smoothing 0.1, the paper's
    /// augmentation.
    Default,
}

/// How the learning rate evolves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// Multiply by `factor` after `patience` epochs without a better validation
    /// accuracy (Keras `ReduceLROnPlateau`).
    Plateau {
        /// Multiplier (0.1 = divide by 10).
        factor: f64,
        /// Epochs without improvement before reducing.
        patience: usize,
        /// Floor.
        min_lr: f64,
    },
    /// Linear warm-up, then cosine decay to `min_lr` at the last epoch.
    Cosine {
        /// Warm-up epochs.
        warmup_epochs: usize,
        /// Final learning rate.
        min_lr: f64,
    },
}

/// Everything that defines a training run (`config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The preset the values started from.
    pub preset: Preset,
    /// The network.
    pub model: ModelConfig,
    /// Where the data comes from.
    pub data: DataSpec,
    /// Epochs at most.
    pub epochs: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// The optimizer's settings: Adam unless `sgd_momentum` (L2 and weight
    /// decay included).
    pub adam: AdamConfig,
    /// Label smoothing epsilon (0 = plain cross-entropy).
    pub label_smoothing: f64,
    /// Train on the FER+ vote distributions instead of the majority label.
    pub soft_targets: bool,
    /// Augmentation (`null`: none).
    pub augment: Option<AugmentConfig>,
    /// Stop after this many epochs without a better validation accuracy.
    pub early_stopping: Option<usize>,
    /// Seed for initialisation, data order and augmentation.
    pub seed: u64,
    /// Validation batch size.
    pub eval_batch_size: usize,
    /// Start from these weights instead of random ones (fine-tuning, e.g. a
    /// FER2013 model on CK+); they must be of the same network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// Knowledge distillation from a trained teacher (none: plain training).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<Distill>,
    /// Mixup (Zhang et al. 2018) with this Beta parameter, 0 < alpha <= 4:
    /// each batch is blended with a shuffled copy of itself, images and
    /// targets alike, by a weight drawn from `Beta(alpha, alpha)` per batch
    /// (seeded by the run's seed, epoch and step). 0: off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mixup: f64,
    /// Keep every epoch's weights as `epochs/weights-E.safetensors` beside
    /// `best` and `last`, so that `training soup` can average the last
    /// epochs afterwards (stochastic weight averaging, Izmailov et al. 2018).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_epochs: bool,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// Knowledge distillation (Hinton et al. 2015): the loss is
/// `(1 - alpha) * CE(labels) + alpha * T^2 * KL(teacher_T || student_T)`, where
/// `_T` are the softmaxes of the logits divided by the temperature `T`. The
/// teacher sees the same augmented batch, in inference mode. Several
/// teachers (`also`) are an ensemble: `teacher_T` is the mean of their
/// softmaxes; with `mirror`, each teacher also sees the batch mirrored and
/// its two softmaxes are averaged (test-time augmentation of the teacher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distill {
    /// The teacher's weights: any of the project's networks trained on the
    /// same classes (e.g. a wider one, or the shipped model itself:
    /// self-distillation).
    pub teacher: PathBuf,
    /// More teachers, averaged with the first (same classes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<PathBuf>,
    /// Each teacher also sees the mirrored batch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mirror: bool,
    /// Weight of the teacher's term, 0..=1.
    pub alpha: f64,
    /// Softmax temperature, above 0.
    pub temperature: f64,
}

impl Distill {
    /// Every teacher's weights file, the first first.
    pub fn teachers(&self) -> impl Iterator<Item = &PathBuf> {
        std::iter::once(&self.teacher).chain(&self.also)
    }

    /// The weight of the teacher's term unless `--distill-alpha` says otherwise.
    pub const DEFAULT_ALPHA: f64 = 0.5;
    /// The temperature unless `--distill-temperature` says otherwise.
    pub const DEFAULT_TEMPERATURE: f64 = 4.0;
}

impl TrainConfig {
    /// The configuration a preset gives for `arch` and `data`.
    pub fn preset(preset: Preset, arch: Arch, data: DataSpec) -> Self {
        let mut cfg = Self::preset_seven(preset, arch, data);
        cfg.model.set_num_classes(cfg.data.num_classes());
        cfg
    }

    fn preset_seven(preset: Preset, arch: Arch, data: DataSpec) -> Self {
        match preset {
            Preset::Paper => Self {
                preset,
                model: ModelConfig::preset(arch),
                data,
                epochs: 200,
                batch_size: 256,
                lr: 0.01,
                schedule: Schedule::Plateau {
                    factor: 0.1,
                    patience: 10,
                    min_lr: 1e-6,
                },
                adam: AdamConfig {
                    l2: 0.2,
                    ..AdamConfig::default()
                },
                label_smoothing: 0.0,
                soft_targets: false,
                augment: Some(AugmentConfig::default()),
                early_stopping: Some(20),
                seed: 0,
                eval_batch_size: 256,
                init: None,
                distill: None,
                mixup: 0.0,
                keep_epochs: false,
            },
            Preset::Default => Self {
                preset,
                model: ModelConfig::preset(arch),
                data,
                epochs: 60,
                batch_size: 64,
                lr: 2e-3,
                schedule: Schedule::Cosine {
                    warmup_epochs: 2,
                    min_lr: 1e-5,
                },
                adam: AdamConfig {
                    weight_decay: 0.05,
                    ..AdamConfig::default()
                },
                label_smoothing: 0.1,
                soft_targets: false,
                augment: Some(AugmentConfig::default()),
                early_stopping: None,
                seed: 0,
                eval_batch_size: 256,
                init: None,
                distill: None,
                mixup: 0.0,
                keep_epochs: false,
            },
        }
    }

    /// Checks values that would make training meaningless.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 || self.eval_batch_size == 0 {
            bail!("epochs, batch_size and eval_batch_size must be at least 1");
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("lr must be a positive number, got {}", self.lr);
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            bail!(
                "label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            );
        }
        if !(self.mixup == 0.0 || (self.mixup > 0.0 && self.mixup <= 4.0)) {
            bail!("mixup must be 0 (off) or in (0, 4], got {}", self.mixup);
        }
        if self.early_stopping == Some(0) {
            bail!("early_stopping must be at least 1 epoch (or absent for none)");
        }
        if let Some(a) = &self.augment {
            a.validate()?;
        }
        if let Some(d) = &self.distill {
            if !(0.0..=1.0).contains(&d.alpha) {
                bail!("distill alpha must be in [0, 1], got {}", d.alpha);
            }
            if !(d.temperature > 0.0 && d.temperature.is_finite()) {
                bail!(
                    "distill temperature must be a positive number, got {}",
                    d.temperature
                );
            }
        }
        self.adam.validate()?;
        Ok(())
    }

    /// The learning rate of `epoch` (0-based) given the schedule's state.
    pub fn lr_at(&self, epoch: usize, plateau_lr: f64) -> f64 {
        match self.schedule {
            Schedule::Plateau { .. } => plateau_lr,
            Schedule::Cosine {
                warmup_epochs,
                min_lr,
            } => {
                if epoch < warmup_epochs {
                    self.lr * (epoch + 1) as f64 / (warmup_epochs + 1) as f64
                } else {
                    let span = (self.epochs - warmup_epochs).max(1) as f64;
                    let t = (epoch - warmup_epochs) as f64 / span;
                    min_lr + 0.5 * (self.lr - min_lr) * (1.0 + (std::f64::consts::PI * t).cos())
                }
            }
        }
    }
}

/// Command-line overrides of the configuration.
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// Maximum epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Coupled L2 penalty on kernels (Keras `kernel_regularizer`).
    #[arg(long)]
    pub l2: Option<f64>,
    /// Decoupled weight decay on kernels (AdamW).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Label smoothing epsilon.
    #[arg(long)]
    pub label_smoothing: Option<f64>,
    /// Dropout in the dense heads (ARCH-2, ARCH-4).
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Early-stopping patience in epochs.
    #[arg(long)]
    pub patience: Option<usize>,
    /// SGD with Nesterov momentum (this momentum, e.g. 0.9) instead of Adam;
    /// set --lr for it (SGD usually wants about 10x Adam's).
    #[arg(long, value_name = "MOMENTUM")]
    pub sgd: Option<f64>,
    /// Mixup: blend each batch with a shuffled copy of itself (images and
    /// targets) by a weight drawn from Beta(ALPHA, ALPHA); 0 < ALPHA <= 4
    /// (0.2-0.4 is usual).
    #[arg(long, value_name = "ALPHA")]
    pub mixup: Option<f64>,
    /// Learning rate on a plateau instead of the preset's schedule: divide
    /// it by 10 after this many epochs without a better validation accuracy
    /// (Keras `ReduceLROnPlateau`, down to 1e-5), as the paper did.
    #[arg(long, value_name = "EPOCHS")]
    pub plateau: Option<usize>,
    /// Keep every epoch's weights as `RUN_DIR/epochs/weights-E.safetensors`
    /// (1.2 MB each for ARCH-1) for `training soup` over the last epochs.
    #[arg(long)]
    pub keep_epochs: bool,
    /// Turn augmentation off.
    #[arg(long)]
    pub no_augment: bool,
    /// Train on FER+ vote distributions (needs `--ferplus`).
    #[arg(long)]
    pub soft_targets: bool,
    /// Seed for initialisation, data order and augmentation.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Start from these weights (a `.safetensors` of the same network, e.g.
    /// `assets/models/arch1_fer2013.safetensors`) instead of random ones:
    /// fine-tuning.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Random erasing: the probability that a training image gets a random
    /// rectangle (2-33 % of it) filled with one grey level (0 = off).
    #[arg(long, conflicts_with = "no_augment")]
    pub random_erasing: Option<f32>,
    /// Knowledge distillation: a trained teacher's weights (`.safetensors` of
    /// any of the networks, same classes); the student also learns the
    /// teacher's softened outputs on the same augmented images. Repeat it for
    /// an ensemble of teachers (their softened outputs are averaged).
    #[arg(long)]
    pub teacher: Vec<PathBuf>,
    /// With --teacher: each teacher also sees the batch mirrored, and its two
    /// outputs are averaged (a stronger teacher for twice its cost).
    #[arg(long, requires = "teacher")]
    pub teacher_mirror: bool,
    /// With --teacher: weight of the teacher's term, 0..=1 [default: 0.5].
    #[arg(long, requires = "teacher")]
    pub distill_alpha: Option<f64>,
    /// With --teacher: softmax temperature [default: 4].
    #[arg(long, requires = "teacher")]
    pub distill_temperature: Option<f64>,
}

impl Overrides {
    /// The options that are set, as they are spelt on the command line.
    pub fn given(&self) -> Vec<&'static str> {
        [
            (self.epochs.is_some(), "--epochs"),
            (self.batch_size.is_some(), "--batch-size"),
            (self.lr.is_some(), "--lr"),
            (self.l2.is_some(), "--l2"),
            (self.weight_decay.is_some(), "--weight-decay"),
            (self.label_smoothing.is_some(), "--label-smoothing"),
            (self.dropout.is_some(), "--dropout"),
            (self.patience.is_some(), "--patience"),
            (self.plateau.is_some(), "--plateau"),
            (self.mixup.is_some(), "--mixup"),
            (self.sgd.is_some(), "--sgd"),
            (self.keep_epochs, "--keep-epochs"),
            (self.no_augment, "--no-augment"),
            (self.soft_targets, "--soft-targets"),
            (self.seed.is_some(), "--seed"),
            (self.init.is_some(), "--init"),
            (self.random_erasing.is_some(), "--random-erasing"),
            (!self.teacher.is_empty(), "--teacher"),
            (self.teacher_mirror, "--teacher-mirror"),
            (self.distill_alpha.is_some(), "--distill-alpha"),
            (self.distill_temperature.is_some(), "--distill-temperature"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }

    /// Applies the overrides that are set.
    pub fn apply(&self, cfg: &mut TrainConfig) {
        if let Some(v) = self.epochs {
            cfg.epochs = v;
        }
        if let Some(v) = self.batch_size {
            cfg.batch_size = v;
        }
        if let Some(v) = self.lr {
            cfg.lr = v;
        }
        if let Some(v) = self.l2 {
            cfg.adam.l2 = v;
        }
        if let Some(v) = self.weight_decay {
            cfg.adam.weight_decay = v;
        }
        if let Some(v) = self.label_smoothing {
            cfg.label_smoothing = v;
        }
        if let Some(v) = self.dropout {
            cfg.model.set_dropout(v);
        }
        if let Some(v) = self.patience {
            cfg.early_stopping = Some(v);
        }
        if let Some(alpha) = self.mixup {
            cfg.mixup = alpha;
        }
        if let Some(mu) = self.sgd {
            cfg.adam.sgd_momentum = Some(mu);
        }
        if let Some(patience) = self.plateau {
            cfg.schedule = Schedule::Plateau {
                factor: 0.1,
                patience,
                min_lr: 1e-5,
            };
        }
        if self.keep_epochs {
            cfg.keep_epochs = true;
        }
        if self.no_augment {
            cfg.augment = None;
        }
        if self.soft_targets {
            cfg.soft_targets = true;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if let Some(p) = &self.init {
            cfg.init = Some(p.clone());
        }
        if let Some(p) = self.random_erasing
            && let Some(a) = &mut cfg.augment
        {
            a.random_erasing = p;
        }
        if let Some((teacher, also)) = self.teacher.split_first() {
            cfg.distill = Some(Distill {
                teacher: teacher.clone(),
                also: also.to_vec(),
                mirror: self.teacher_mirror,
                alpha: Distill::DEFAULT_ALPHA,
                temperature: Distill::DEFAULT_TEMPERATURE,
            });
        }
        if let Some(d) = &mut cfg.distill {
            if let Some(a) = self.distill_alpha {
                d.alpha = a;
            }
            if let Some(t) = self.distill_temperature {
                d.temperature = t;
            }
        }
    }
}

/// Where a run stands after its last finished epoch (`state.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Epochs finished.
    pub epochs_done: usize,
    /// Best validation accuracy so far.
    pub best_accuracy: f64,
    /// Epoch (1-based) of the best accuracy.
    pub best_epoch: usize,
    /// Current learning rate of the plateau schedule.
    pub plateau_lr: f64,
    /// Epochs since the last improvement.
    pub since_best: usize,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Total training seconds so far.
    pub seconds: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    #[serde(deserialize_with = "null_as_nan")]
    pub train_loss: f64,
    /// Training accuracy (on augmented samples, in train mode).
    pub train_accuracy: f64,
    /// Validation loss.
    #[serde(deserialize_with = "null_as_nan")]
    pub val_loss: f64,
    /// Validation accuracy.
    pub val_accuracy: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Wall seconds of the epoch (training and validation).
    pub seconds: f64,
    /// Training images per second.
    pub img_per_s: f64,
    /// The validation confusion matrix of this epoch (absent in runs made
    /// before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_confusion: Option<Confusion>,
}

/// JSON has no NaN: `serde_json` writes a non-finite number as `null`, which
/// reads back as NaN.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Where one part of a run (a start or a `--resume`) ran: one line of
/// `machine.jsonl`, so a report can say which machine made each number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineRecord {
    /// The first epoch (1-based) this part trained.
    pub from_epoch: usize,
    /// The compute device (`cpu`).
    pub device: String,
    /// The CPU model, as `/proc/cpuinfo` names it.
    pub cpu: String,
    /// Logical CPUs the machine has.
    pub logical_cpus: usize,
    /// Threads the kernels use.
    pub threads: usize,
    /// The commit the binary was built from ([`build_commit`]).
    pub commit: String,
    /// The line was written by hand after the run, not by `training train`
    /// as the run started: the machine is what was believed, not measured.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub written_after: bool,
}

impl MachineRecord {
    /// Describes this machine for a part starting at `from_epoch`.
    pub fn here(from_epoch: usize) -> Self {
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
        Self {
            from_epoch,
            device: "cpu".into(),
            cpu,
            logical_cpus: std::thread::available_parallelism().map_or(1, usize::from),
            threads: rayon::current_num_threads(),
            commit: build_commit().to_owned(),
            written_after: false,
        }
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    models::weights::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// The commit this binary was built from, as `build.rs` read it at build
/// time: 12 hex digits, with `-dirty` when tracked files differed from that
/// commit, or `unknown` outside a git checkout. Not the working directory's
/// commit at run time, which may be another.
pub fn build_commit() -> &'static str {
    env!("TRAINING_BUILD_COMMIT")
}

/// Mixup of one batch: `lambda * x + (1 - lambda) * x[perm]` for the images
/// and the targets (`(N, classes)` distributions), with `lambda` from
/// `Beta(alpha, alpha)` and `perm` a shuffle, both drawn from a generator
/// seeded by `seed`, `epoch` and `step` (a resumed run draws the same).
pub fn mixup(
    images: &Tensor,
    targets: &Tensor,
    alpha: f64,
    seed: u64,
    epoch: usize,
    step: usize,
) -> Result<(Tensor, Tensor)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0a1f_3e55_b0c4_d7e9);
    rng.set_stream(((epoch as u64) << 32) | step as u64);
    let lambda = beta_sample(&mut rng, alpha);
    let n = images.dim(0)?;
    let mut perm: Vec<u32> = (0..n as u32).collect();
    shuffle(&mut perm, &mut rng);
    let perm = Tensor::from_vec(perm, n, images.device())?;
    let mix = |t: &Tensor| -> Result<Tensor> {
        let other = t.index_select(&perm, 0)?;
        Ok(((t * lambda)? + (other * (1.0 - lambda))?)?)
    };
    Ok((mix(images)?, mix(targets)?))
}

/// A draw from `Beta(a, a)` (Jöhnk's method: exact for any `a`, quick for
/// the `a <= 4` mixup uses).
fn beta_sample(rng: &mut ChaCha8Rng, a: f64) -> f64 {
    let uniform = |rng: &mut ChaCha8Rng| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    loop {
        let x = uniform(rng).powf(1.0 / a);
        let y = uniform(rng).powf(1.0 / a);
        if x + y <= 1.0 && x + y > 0.0 {
            return x / (x + y);
        }
    }
}

/// The training data order of `epoch`: a seeded shuffle.
pub fn epoch_order(indices: &[usize], seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0f0d_e12a_11ed);
    rng.set_stream(epoch as u64);
    let mut order = indices.to_vec();
    shuffle(&mut order, &mut rng);
    order
}

/// Fisher-Yates shuffle of `items` with `rng`.
fn shuffle<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// Re-draws every kernel from Keras' `glorot_uniform` with a seeded generator
/// (candle's CPU generator cannot be seeded), so runs are reproducible. Other
/// parameters keep their constant initial values.
pub fn seeded_init(varmap: &VarMap, seed: u64) -> Result<()> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("variable map lock poisoned"))?;
    let mut names: Vec<&String> = vars.keys().filter(|n| n.ends_with(".weight")).collect();
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let var = &vars[name];
        let dims = var.dims();
        let (fan_in, fan_out) = match dims {
            // Keras computes a depthwise kernel's fans from its (3, 3, C, 1) shape.
            [c, 1, kh, kw] if name.contains("depthwise") => (c * kh * kw, kh * kw),
            [o, i, kh, kw] => (i * kh * kw, o * kh * kw),
            [o, i] => (*i, *o),
            _ => bail!("unexpected kernel shape {dims:?} for {name}"),
        };
        let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| {
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                ((2.0 * u - 1.0) * limit) as f32
            })
            .collect();
        var.set(&Tensor::from_vec(values, dims, var.device())?)?;
    }
    Ok(())
}

/// Cross-entropy against hard labels or soft targets, with label smoothing.
fn loss_fn(logits: &Tensor, labels: &Tensor, soft: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    let k = logits.dim(1)?;
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let target = match soft {
        Some(t) => t.clone(),
        None => candle_nn::encoding::one_hot(labels.clone(), k, 1f32, 0f32)?,
    };
    let target = if eps > 0.0 {
        ((target * (1.0 - eps))? + eps / k as f64)?
    } else {
        target
    };
    Ok((target * logp)?.sum(1)?.mean(0)?.neg()?)
}

/// The distillation term `T^2 * KL(p || softmax(student / T))` for the
/// teachers' mean softmax `p` (of `teachers`' logits divided by `T`),
/// averaged over the batch (0 when the student matches the teacher).
fn distill_loss(student: &Tensor, teachers: &[Tensor], temperature: f64) -> Result<Tensor> {
    let logq = candle_nn::ops::log_softmax(&(student / temperature)?, D::Minus1)?;
    let mut p: Option<Tensor> = None;
    for t in teachers {
        let pt = candle_nn::ops::softmax(&(t.detach() / temperature)?, D::Minus1)?;
        p = Some(match p {
            Some(sum) => (sum + pt)?,
            None => pt,
        });
    }
    let p = (p.context("distillation without a teacher")? / teachers.len() as f64)?;
    // p > 0 wherever a softmax is; the clamp only guards log(0) in f32.
    let logp = p.clamp(1e-30, 1.0)?.log()?;
    let kl = (p * (logp - logq)?)?.sum(1)?.mean(0)?;
    Ok((kl * (temperature * temperature))?)
}

/// Loads the weights file an option (`--init`, `--teacher`) names.
fn given_weights(flag: &str, path: &Path, device: &Device) -> Result<models::LoadedWeights> {
    models::LoadedWeights::from_file(path, device)
        .with_context(|| format!("{flag}: loading {}", path.display()))
}

/// Refuses weights given with `flag` whose classes are not the data's.
fn same_classes(
    flag: &str,
    path: &Path,
    weights: &models::LoadedWeights,
    data: &[String],
) -> Result<()> {
    if weights.meta.classes != data {
        bail!(
            "{flag} {}: its classes {:?} are not the data's {:?}",
            path.display(),
            weights.meta.classes,
            data
        );
    }
    Ok(())
}

/// Options of `training train` besides the configuration.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Continue the run in `run_dir`.
    pub resume: bool,
    /// Show a progress bar.
    pub progress: bool,
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The state after the last epoch.
    pub state: RunState,
    /// Whether Ctrl-C interrupted the run.
    pub interrupted: bool,
}

fn ckpt_paths(dir: &Path, epoch: usize) -> (PathBuf, PathBuf) {
    (
        dir.join("ckpt")
            .join(format!("weights-{epoch}.safetensors")),
        dir.join("ckpt").join(format!("adam-{epoch}.safetensors")),
    )
}

/// Takes the run folder's lock (`.lock`), or says which run is busy.
fn lock_run(dir: &Path) -> Result<fs::File> {
    let path = dir.join(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => bail!(
            "another `training train` is running in {}; wait for it or stop it first",
            dir.display()
        ),
        Err(fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Copies the checkpoint of `state.epochs_done` to `last.safetensors`, and to
/// `best.safetensors` when that epoch is the best; both atomically. Done after
/// the state is saved, and again on resume (a kill may have come in between).
fn publish(dir: &Path, state: &RunState, keep_epochs: bool) -> Result<()> {
    if state.epochs_done == 0 {
        return Ok(());
    }
    let (w, _) = ckpt_paths(dir, state.epochs_done);
    let bytes = models::weights::read_file(&w)?;
    models::weights::write_atomic(&dir.join("last.safetensors"), &bytes)?;
    if state.best_epoch == state.epochs_done {
        models::weights::write_atomic(&dir.join("best.safetensors"), &bytes)?;
    }
    if keep_epochs {
        let kept = epoch_weights_path(dir, state.epochs_done);
        if let Some(parent) = kept.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        models::weights::write_atomic(&kept, &bytes)?;
    }
    Ok(())
}

/// Re-estimates the BatchNorm moving statistics of `weights` on the training
/// images of `data` (no augmentation), as stochastic weight averaging's
/// `bn_update` does: every training image passes once in train mode and each
/// layer's moving mean and variance become the average of its batch
/// statistics over the whole set (weighted by batch size). Averaged weights
/// have activation statistics of their own, which the average of the runs'
/// moving statistics only approximates; and a run's own moving statistics
/// were measured on augmented images (rotated, shifted, erased), not on faces
/// as they are. Nothing else changes.
pub fn recompute_batch_norm(
    weights: &models::LoadedWeights,
    data: &DataSpec,
    batch_size: usize,
) -> Result<models::LoadedWeights> {
    let device = Device::Cpu;
    let loaded = data.load(0)?;
    if loaded.dataset.classes() != weights.meta.classes.as_slice() {
        bail!(
            "the data's classes ({}) are not the weights' ({})",
            loaded.dataset.classes().join(", "),
            weights.meta.classes.join(", ")
        );
    }
    if loaded.train.is_empty() {
        bail!(
            "{}: no training images to estimate BatchNorm statistics on",
            loaded.name
        );
    }
    // Momentum 0: after a batch, a layer's moving statistics are that batch's.
    let mut config = weights.meta.config.clone();
    config.bn_mut().momentum = 0.0;
    let varmap = VarMap::new();
    let net = EmotionNet::new(
        &config,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    weights.load_into(&varmap)?;
    let mut sums: HashMap<String, Tensor> = HashMap::new();
    for chunk in epoch_order(&loaded.train, 0, 0).chunks(batch_size.max(1)) {
        let batch = make_batch(&loaded.dataset, chunk, BatchMode::Plain, &device)?;
        net.forward_t(&batch.images, true)?;
        let n = chunk.len() as f64;
        for (name, t) in models::weights::varmap_tensors(&varmap)? {
            if models::is_trainable(&name) {
                continue;
            }
            let t = (t * n)?;
            let sum = match sums.remove(&name) {
                Some(s) => (s + t)?,
                None => t,
            };
            sums.insert(name, sum);
        }
    }
    let total = loaded.train.len() as f64;
    let mut tensors = models::weights::varmap_tensors(&varmap)?;
    for (name, sum) in sums {
        tensors.insert(name, (sum / total)?);
    }
    Ok(models::LoadedWeights {
        meta: weights.meta.clone(),
        tensors,
    })
}

/// Where `keep_epochs` keeps the weights of epoch `epoch` (1-based).
pub fn epoch_weights_path(dir: &Path, epoch: usize) -> PathBuf {
    dir.join("epochs")
        .join(format!("weights-{epoch}.safetensors"))
}

/// Trains `cfg` in `opts.run_dir`. `stop` is polled between steps (Ctrl-C).
pub fn train(cfg: TrainConfig, opts: &RunOptions, stop: Arc<AtomicBool>) -> Result<RunSummary> {
    let dir = &opts.run_dir;
    let config_path = dir.join("config.json");
    let state_path = dir.join("state.json");
    if !opts.resume && config_path.exists() {
        bail!(
            "{} already holds a run; continue it with --resume or choose another --run-dir",
            dir.display()
        );
    }
    if opts.resume && !config_path.exists() {
        bail!(
            "--resume: {} holds no run (no config.json); start one without --resume",
            dir.display()
        );
    }
    if !opts.resume {
        // A mistyped weights path must not leave a run folder behind that
        // then needs --resume or removing.
        let teachers = cfg.distill.iter().flat_map(Distill::teachers);
        let given = std::iter::once(("--init", cfg.init.as_ref()))
            .chain(teachers.map(|t| ("--teacher", Some(t))));
        for (flag, path) in given {
            if let Some(p) = path
                && !p.is_file()
            {
                bail!("{flag} {}: no such weights file", p.display());
            }
        }
    }
    fs::create_dir_all(dir.join("ckpt")).with_context(|| format!("creating {}", dir.display()))?;
    // One process per run: a second `train` on the same folder would interleave
    // checkpoints. The lock goes with the process, also on `kill -9`.
    let _lock = lock_run(dir)?;
    let cfg = if opts.resume {
        // Temporary files of a killed writer (never a checkpoint: those are
        // renamed into place whole).
        for d in [dir.clone(), dir.join("ckpt")] {
            let n = models::weights::remove_stale_temporaries(&d)?;
            if n > 0 {
                tracing::info!(folder = %d.display(), files = n, "removed unfinished temporary files");
            }
        }
        let text = fs::read_to_string(&config_path)
            .with_context(|| format!("--resume: cannot read {}", config_path.display()))?;
        let mut saved: TrainConfig = serde_json::from_str(&text).with_context(|| {
            format!("--resume: {} is not a valid config", config_path.display())
        })?;
        // Only the epoch budget may change on resume; everything else is the run's
        // (the command line refuses other changes before it gets here).
        if cfg.epochs != saved.epochs {
            tracing::info!(
                from = saved.epochs,
                to = cfg.epochs,
                "changing the epoch budget on resume"
            );
            saved.epochs = cfg.epochs;
            write_json(&config_path, &saved)?;
        }
        saved
    } else {
        cfg.validate()?;
        write_json(&config_path, &cfg)?;
        cfg
    };
    cfg.validate()?;

    let device = Device::Cpu;
    let loaded = cfg.data.load(cfg.seed)?;
    if cfg.soft_targets && loaded.dataset.soft_targets().is_none() {
        bail!("soft_targets needs label distributions: pass --ferplus");
    }
    if loaded.dataset.classes().len() != cfg.model.num_classes() {
        bail!(
            "the data has {} classes but the network has {} outputs",
            loaded.dataset.classes().len(),
            cfg.model.num_classes()
        );
    }
    tracing::info!(
        data = %loaded.name,
        train = loaded.train.len(),
        val = loaded.val.len(),
        skipped = loaded.report.skipped_rows.len() + loaded.report.skipped_files.len(),
        "data loaded"
    );

    let varmap = VarMap::new();
    let net = EmotionNet::new(
        &cfg.model,
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
    )?;
    seeded_init(&varmap, cfg.seed)?;
    let mut adam = Adam::new(&varmap, cfg.adam)?;
    let mut state = RunState {
        epochs_done: 0,
        best_accuracy: f64::NEG_INFINITY,
        best_epoch: 0,
        plateau_lr: cfg.lr,
        since_best: 0,
        stopped_early: false,
        seconds: 0.0,
    };
    let metrics_path = dir.join("metrics.jsonl");
    if opts.resume && state_path.exists() {
        state = serde_json::from_str(&fs::read_to_string(&state_path)?)
            .with_context(|| format!("{} is not a valid run state", state_path.display()))?;
        let (w, a) = ckpt_paths(dir, state.epochs_done);
        models::LoadedWeights::from_file(&w, &device)
            .with_context(|| format!("loading checkpoint {}", w.display()))?
            .load_into(&varmap)?;
        adam.load(&a)?;
        // A kill between the state and `last`/`best` leaves them one epoch behind.
        publish(dir, &state, cfg.keep_epochs)?;
        // Drop metrics lines of an epoch that finished after the checkpoint.
        if let Ok(text) = fs::read_to_string(&metrics_path) {
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<EpochMetrics>(l)
                        .is_ok_and(|m| m.epoch <= state.epochs_done)
                })
                .collect();
            let mut body = kept.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            models::weights::write_atomic(&metrics_path, body.as_bytes())?;
        }
        tracing::info!(
            epoch = state.epochs_done,
            best = state.best_accuracy,
            "resumed"
        );
    } else if opts.resume {
        tracing::info!("no checkpoint yet; starting from epoch 1");
        // Lines of an epoch that finished without its state being saved.
        if metrics_path.exists() {
            models::weights::write_atomic(&metrics_path, b"")?;
        }
    }
    if state.epochs_done == 0
        && let Some(path) = &cfg.init
    {
        let init = given_weights("--init", path, &device)?;
        if init.meta.config != cfg.model {
            bail!(
                "--init {}: its network ({} with {} classes) is not the one trained here ({} with {})",
                path.display(),
                init.meta.arch(),
                init.meta.config.num_classes(),
                cfg.model.arch(),
                cfg.model.num_classes()
            );
        }
        same_classes("--init", path, &init, loaded.dataset.classes())?;
        init.load_into(&varmap)?;
        tracing::info!(weights = %path.display(), "starting from trained weights");
    }
    let teacher = match &cfg.distill {
        Some(d) => {
            let mut nets = Vec::new();
            for path in d.teachers() {
                let w = given_weights("--teacher", path, &device)?;
                same_classes("--teacher", path, &w, loaded.dataset.classes())?;
                tracing::info!(
                    teacher = %path.display(),
                    arch = %w.meta.arch(),
                    alpha = d.alpha,
                    temperature = d.temperature,
                    mirror = d.mirror,
                    "distilling"
                );
                nets.push(w.build(&device)?);
            }
            Some((nets, d.mirror, d.alpha, d.temperature))
        }
        None => None,
    };
    if state.epochs_done < cfg.epochs {
        let record = serde_json::to_string(&MachineRecord::here(state.epochs_done + 1))?;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("machine.jsonl"))?;
        f.write_all(format!("{record}\n").as_bytes())?;
    }

    let augmenter = match &cfg.augment {
        Some(a) => Some(Augmenter::new(*a, cfg.seed)?),
        None => None,
    };
    let provenance = |metrics: &[(&str, f64)], epoch: usize| Provenance {
        dataset: loaded.name.clone(),
        recipe: serde_json::to_string(&cfg).unwrap_or_default(),
        commit: build_commit().to_owned(),
        metrics: metrics.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        notes: format!("trained by `training train`, epoch {epoch}"),
    };

    let steps = loaded.train.len().div_ceil(cfg.batch_size);
    let mut interrupted = false;
    while state.epochs_done < cfg.epochs && !state.stopped_early {
        let epoch = state.epochs_done;
        let lr = cfg.lr_at(epoch, state.plateau_lr);
        let order = epoch_order(&loaded.train, cfg.seed, epoch);
        let bar = if opts.progress {
            let b = ProgressBar::new(steps as u64);
            b.set_style(
                ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
            b
        } else {
            ProgressBar::hidden()
        };
        let t0 = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0u64, 0usize);
        for (step, chunk) in order.chunks(cfg.batch_size).enumerate() {
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            let mode = match &augmenter {
                Some(a) => BatchMode::Augmented {
                    augmenter: a,
                    epoch: epoch as u64,
                },
                None => BatchMode::Plain,
            };
            let mut batch = make_batch(&loaded.dataset, chunk, mode, &device)?;
            let mut soft = if cfg.soft_targets {
                batch.soft_targets.clone()
            } else {
                None
            };
            if cfg.mixup > 0.0 {
                let target = match soft {
                    Some(t) => t,
                    None => candle_nn::encoding::one_hot(
                        batch.labels.clone(),
                        cfg.model.num_classes(),
                        1f32,
                        0f32,
                    )?,
                };
                let (images, target) =
                    mixup(&batch.images, &target, cfg.mixup, cfg.seed, epoch, step)?;
                batch.images = images;
                soft = Some(target);
            }
            let logits = net.forward_t(&batch.images, true)?;
            let mut loss = loss_fn(&logits, &batch.labels, soft.as_ref(), cfg.label_smoothing)?;
            if let Some((teachers, mirror, alpha, temperature)) = &teacher {
                let mirrored = if *mirror {
                    Some(batch.images.flip(&[3])?)
                } else {
                    None
                };
                let mut taught = Vec::new();
                for t in teachers {
                    taught.push(t.forward_t(&batch.images, false)?);
                    if let Some(m) = &mirrored {
                        taught.push(t.forward_t(m, false)?);
                    }
                }
                let kd = distill_loss(&logits, &taught, *temperature)?;
                loss = ((loss * (1.0 - alpha))? + (kd * *alpha)?)?;
            }
            let loss_v = f64::from(loss.to_scalar::<f32>()?);
            if !loss_v.is_finite() {
                bail!(
                    "the loss became {loss_v} in epoch {}: lower the learning rate (checkpoint of epoch {} is intact)",
                    epoch + 1,
                    state.epochs_done
                );
            }
            let grads = loss.backward()?;
            adam.step(&grads, lr)?;
            let pred = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
            let truth = batch.labels.to_vec1::<u32>()?;
            correct += pred.iter().zip(&truth).filter(|(a, b)| a == b).count() as u64;
            loss_sum += loss_v * chunk.len() as f64;
            seen += chunk.len();
            let rate = seen as f64 / t0.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4} acc {:.4} {:.0} img/s",
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                rate
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        if interrupted {
            tracing::warn!(
                epoch = epoch + 1,
                "interrupted; the checkpoint of epoch {} is intact: continue with --resume",
                state.epochs_done
            );
            break;
        }
        let train_secs = t0.elapsed().as_secs_f64();
        let eval = evaluate(
            &net,
            &loaded.dataset,
            &loaded.val,
            cfg.eval_batch_size,
            perception::Tta::None,
            &device,
        )?;
        let seconds = t0.elapsed().as_secs_f64();
        let acc = eval.confusion.accuracy();
        let m = EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_loss: eval.loss,
            val_accuracy: acc,
            lr,
            seconds,
            img_per_s: seen as f64 / train_secs,
            val_confusion: Some(eval.confusion.clone()),
        };

        // Schedule and early-stopping bookkeeping.
        let improved = acc > state.best_accuracy;
        if improved {
            state.best_accuracy = acc;
            state.best_epoch = epoch + 1;
            state.since_best = 0;
        } else {
            state.since_best += 1;
        }
        if let Schedule::Plateau {
            factor,
            patience,
            min_lr,
        } = cfg.schedule
            && state.since_best > 0
            && state.since_best.is_multiple_of(patience.max(1))
        {
            state.plateau_lr = (state.plateau_lr * factor).max(min_lr);
            tracing::info!(
                lr = state.plateau_lr,
                "validation plateau: reducing the learning rate"
            );
        }
        if cfg.early_stopping.is_some_and(|p| state.since_best >= p) {
            state.stopped_early = true;
        }
        state.epochs_done = epoch + 1;
        state.seconds += seconds;

        // Checkpoint: weights and optimizer of this epoch, the metrics line,
        // then the state that points at them (the commit point), then the
        // published copies. A kill at any moment leaves a state whose
        // checkpoint is whole; `--resume` redoes what came after it.
        let mut meta = WeightsMeta::new(
            cfg.model.clone(),
            provenance(
                &[("val_accuracy", acc), ("epoch", (epoch + 1) as f64)],
                epoch + 1,
            ),
        );
        meta.classes = loaded.dataset.classes().to_vec();
        let (w, a) = ckpt_paths(dir, epoch + 1);
        models::weights::save_varmap(&varmap, &meta, &w)?;
        adam.save(&a)?;
        // The metrics line first, then the state that points past it: a crash
        // in between leaves a line that `--resume` drops, never a gap.
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)?;
        // One write of the whole line: a kill leaves all of it or none.
        f.write_all(format!("{}\n", serde_json::to_string(&m)?).as_bytes())?;
        f.sync_all()?;
        write_json(&state_path, &state)?;
        publish(dir, &state, cfg.keep_epochs)?;
        // Older checkpoints are no longer needed once the state points past them.
        let (old_w, old_a) = ckpt_paths(dir, epoch);
        let _ = fs::remove_file(old_w);
        let _ = fs::remove_file(old_a);

        tracing::info!(
            "epoch {}/{}: loss {:.4} acc {:.4} | val loss {:.4} acc {:.4}{} | lr {:.2e} | {:.0} s, {:.0} img/s",
            m.epoch,
            cfg.epochs,
            m.train_loss,
            m.train_accuracy,
            m.val_loss,
            m.val_accuracy,
            if improved { " (best)" } else { "" },
            lr,
            m.seconds,
            m.img_per_s
        );
        if state.stopped_early {
            tracing::info!(best_epoch = state.best_epoch, "early stopping");
        }
    }
    Ok(RunSummary { state, interrupted })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_draws_have_the_beta_moments() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for a in [0.2, 0.4, 1.0, 4.0] {
            let n = 20_000;
            let xs: Vec<f64> = (0..n).map(|_| beta_sample(&mut rng, a)).collect();
            assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
            let mean = xs.iter().sum::<f64>() / n as f64;
            let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            // Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
            let want = 1.0 / (4.0 * (2.0 * a + 1.0));
            assert!((mean - 0.5).abs() < 0.01, "a {a}: mean {mean}");
            assert!(
                (var - want).abs() < 0.05 * want,
                "a {a}: var {var}, want {want}"
            );
        }
    }

    #[test]
    fn mixup_blends_pairs_and_is_seeded() {
        let dev = Device::Cpu;
        let n = 6;
        let images = Tensor::arange(0f32, (n * 4) as f32, &dev)
            .unwrap()
            .reshape((n, 1, 2, 2))
            .unwrap();
        let labels = Tensor::from_vec(vec![0u32, 1, 2, 0, 1, 2], n, &dev).unwrap();
        let targets = candle_nn::encoding::one_hot(labels, 3, 1f32, 0f32).unwrap();
        let (x, t) = mixup(&images, &targets, 0.4, 1, 2, 3).unwrap();
        let (x2, t2) = mixup(&images, &targets, 0.4, 1, 2, 3).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&x), flat(&x2), "same seed, epoch and step");
        assert_eq!(flat(&t), flat(&t2));
        let (other, _) = mixup(&images, &targets, 0.4, 1, 2, 4).unwrap();
        assert_ne!(flat(&x), flat(&other), "another step draws again");
        // Each target still sums to 1; each image is a blend of two rows
        // (all pixels of an input row here are 4i..4i+3, so a blend keeps
        // consecutive pixels 1 apart).
        let rows = t.to_vec2::<f32>().unwrap();
        assert!(
            rows.iter()
                .all(|r| (r.iter().sum::<f32>() - 1.0).abs() < 1e-5)
        );
        let px = x.reshape((n, 4)).unwrap().to_vec2::<f32>().unwrap();
        for r in &px {
            for w in r.windows(2) {
                assert!((w[1] - w[0] - 1.0).abs() < 1e-4, "{r:?}");
            }
        }
    }

    fn logits(v: &[f32]) -> Tensor {
        Tensor::from_vec(v.to_vec(), (2, 3), &Device::Cpu).unwrap()
    }

    fn scalar(t: Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn distillation_of_ensembles() {
        let student = logits(&[0.1, 0.2, 0.3, 1.0, -1.0, 0.5]);
        let a = logits(&[2.0, 0.0, -1.0, 0.0, 1.0, 0.0]);
        let b = logits(&[-1.0, 0.5, 2.0, 1.0, 1.0, -2.0]);
        // A student equal to its teacher has nothing to learn.
        assert!(scalar(distill_loss(&a, std::slice::from_ref(&a), 4.0).unwrap()).abs() < 1e-6);
        // Two copies of one teacher are that teacher.
        let one = scalar(distill_loss(&student, std::slice::from_ref(&a), 2.0).unwrap());
        let two = scalar(distill_loss(&student, &[a.clone(), a.clone()], 2.0).unwrap());
        assert!((one - two).abs() < 1e-6, "{one} vs {two}");
        // An ensemble's target is the mean of the softmaxes: the student
        // that outputs it exactly (log of that mean, times T) has zero loss.
        let t = 2.0;
        let pa = candle_nn::ops::softmax(&(&a / t).unwrap(), D::Minus1).unwrap();
        let pb = candle_nn::ops::softmax(&(&b / t).unwrap(), D::Minus1).unwrap();
        let mean = ((pa + pb).unwrap() / 2.0).unwrap();
        let matched = (mean.log().unwrap() * t).unwrap();
        let zero = scalar(distill_loss(&matched, &[a.clone(), b.clone()], t).unwrap());
        assert!(zero.abs() < 1e-5, "{zero}");
        assert!(scalar(distill_loss(&student, &[a, b], t).unwrap()) > 0.01);
        assert!(distill_loss(&student, &[], t).is_err());
    }
}

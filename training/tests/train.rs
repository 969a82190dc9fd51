//! The training loop end to end: resume equivalence on a tiny synthetic run, and
//! a one-epoch smoke run on a small subset of the shared FER2013 data.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

mod common;

use candle_core::Device;
use common::{metrics, training_ok, weights, write_fixture};
use models::{Arch, LoadedWeights};
use training::spec::DataSpec;
use training::train::{Distill, Preset, RunOptions, Schedule, TrainConfig, train};

fn config(data: &Path, epochs: usize) -> TrainConfig {
    let spec = DataSpec {
        data: data.to_owned(),
        ..DataSpec::default()
    };
    let mut cfg = TrainConfig::preset(Preset::Default, Arch::Arch1, spec);
    cfg.epochs = epochs;
    cfg.batch_size = 16;
    cfg
}

/// A temporary folder holding `tiny.csv`, a fixture of `train` Training and
/// `val` PublicTest rows.
fn tiny(train: usize, val: usize) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("tiny.csv");
    write_fixture(&csv, train, val);
    (tmp, csv)
}

fn try_run(
    cfg: TrainConfig,
    dir: &Path,
    resume: bool,
) -> anyhow::Result<training::train::RunSummary> {
    let opts = RunOptions {
        run_dir: dir.to_owned(),
        resume,
        progress: false,
    };
    train(cfg, &opts, Arc::new(AtomicBool::new(false)))
}

fn run(cfg: TrainConfig, dir: &Path, resume: bool) -> training::train::RunSummary {
    try_run(cfg, dir, resume).unwrap()
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let (tmp, csv) = tiny(48, 16);

    let straight = tmp.path().join("straight");
    let s = run(config(&csv, 3), &straight, false);
    assert_eq!(s.state.epochs_done, 3);

    let parts = tmp.path().join("parts");
    run(config(&csv, 1), &parts, false);
    // A second start without --resume must refuse to overwrite the run.
    let err = try_run(config(&csv, 1), &parts, false).unwrap_err();
    assert!(err.to_string().contains("--resume"), "{err}");
    let r = run(config(&csv, 3), &parts, true);
    assert_eq!(r.state.epochs_done, 3);

    assert_eq!(
        weights(&straight.join("last.safetensors")),
        weights(&parts.join("last.safetensors")),
        "resumed weights differ from the uninterrupted run's"
    );
    let (a, b) = (metrics(&straight), metrics(&parts));
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.epoch, y.epoch);
        assert_eq!(x.train_loss, y.train_loss);
        assert_eq!(x.val_accuracy, y.val_accuracy);
        assert_eq!(x.lr, y.lr);
    }
    // Only the latest checkpoint is kept.
    let ckpts: Vec<_> = std::fs::read_dir(parts.join("ckpt")).unwrap().collect();
    assert_eq!(ckpts.len(), 2);
}

/// `keep_epochs` keeps each epoch's weights, through a resume, and the last
/// kept file is the run's `last.safetensors`; without it nothing is kept.
#[test]
fn keep_epochs_keeps_every_epochs_weights() {
    let (tmp, csv) = tiny(48, 16);
    let dir = tmp.path().join("kept");
    let mut cfg = config(&csv, 2);
    cfg.keep_epochs = true;
    run(cfg.clone(), &dir, false);
    cfg.epochs = 3;
    run(cfg, &dir, true);
    for e in 1..=3 {
        let p = training::train::epoch_weights_path(&dir, e);
        assert!(p.exists(), "{} missing", p.display());
    }
    let e1 = weights(&training::train::epoch_weights_path(&dir, 1));
    let e3 = weights(&training::train::epoch_weights_path(&dir, 3));
    assert_eq!(e3, weights(&dir.join("last.safetensors")));
    assert_ne!(e1, e3, "epoch 1 and epoch 3 weights are the same");

    let plain = tmp.path().join("plain");
    run(config(&csv, 1), &plain, false);
    assert!(!plain.join("epochs").exists());
}

#[test]
fn one_epoch_smoke_run_on_fer2013() {
    let csv =
        training::data::shared_data("fer2013/fer2013.csv.gz").unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(&csv, 1);
    cfg.data.limit = Some(256);
    cfg.data.val_limit = Some(128);
    cfg.batch_size = 64;
    let s = run(cfg, tmp.path(), false);
    assert_eq!(s.state.epochs_done, 1);
    let m = metrics(tmp.path());
    assert_eq!(m.len(), 1);
    assert!(m[0].train_loss.is_finite() && m[0].val_accuracy >= 0.0);
    let best = LoadedWeights::from_file(tmp.path().join("best.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(best.meta.arch(), Arch::Arch1);
    assert!(best.meta.provenance.dataset.starts_with("fer2013:Training"));
    assert!(best.meta.provenance.metrics.contains_key("val_accuracy"));
}

/// A run that would train on nothing or stop before it starts is refused
/// before anything is written, not finished with exit code 0.
#[test]
fn empty_training_sets_and_zero_patience_are_refused() {
    let (tmp, data) = tiny(14, 7);
    let opts = |name: &str| RunOptions {
        run_dir: tmp.path().join(name),
        resume: false,
        progress: false,
    };
    let mut cfg = config(&data, 1);
    cfg.data.limit = Some(0);
    let err = train(cfg, &opts("limit0"), Arc::new(AtomicBool::new(false)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no training samples"), "{err}");
    let mut cfg = config(&data, 1);
    cfg.early_stopping = Some(0);
    let err = train(cfg, &opts("patience0"), Arc::new(AtomicBool::new(false)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("early_stopping"), "{err}");
    assert!(!tmp.path().join("patience0/metrics.jsonl").exists());
}

#[test]
fn resume_repairs_what_a_kill_left_and_one_process_holds_a_run() {
    let (tmp, csv) = tiny(32, 8);
    let dir = tmp.path().join("run");
    run(config(&csv, 2), &dir, false);
    let ckpt = dir.join("ckpt/weights-2.safetensors");
    // A kill after the state was saved but before `last` was published, and
    // in the middle of writing a temporary file.
    std::fs::remove_file(dir.join("last.safetensors")).unwrap();
    let stale = dir.join(".last.safetensors.999-0.tmp");
    std::fs::write(&stale, b"half a file").unwrap();
    let stale_ckpt = dir.join("ckpt/.weights-3.safetensors.999-1.tmp");
    std::fs::write(&stale_ckpt, b"half").unwrap();
    run(config(&csv, 2), &dir, true);
    assert!(!stale.exists() && !stale_ckpt.exists(), "temporaries stay");
    // The weights name the commit the binary was built from (with -dirty
    // when the tree differed), as git saw it at build time.
    let meta = LoadedWeights::from_file(&ckpt, &Device::Cpu).unwrap().meta;
    let built = training::train::build_commit();
    assert_eq!(meta.provenance.commit, built);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if let Some(head) = head {
        assert!(
            built.starts_with(&head),
            "built from {built}, HEAD is {head}"
        );
    }
    assert_eq!(weights(&dir.join("last.safetensors")), weights(&ckpt));

    // A second process on the same run is refused while the first holds it.
    let lock = std::fs::File::open(dir.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    let err = try_run(config(&csv, 3), &dir, true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("another `training train`"), "{err}");
    drop(lock);
    assert_eq!(run(config(&csv, 3), &dir, true).state.epochs_done, 3);
}

#[test]
fn resume_refuses_options_that_would_change_the_run() {
    let (tmp, csv) = tiny(16, 8);
    let dir = tmp.path().join("run");
    run(config(&csv, 1), &dir, false);
    let cli = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_training"))
            .args(["train", "--resume", "--no-progress", "--run-dir"])
            .arg(&dir)
            .arg("--data")
            .arg(&csv)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = cli(&["--lr", "0.1", "--arch", "arch3"]);
    assert!(!ok);
    assert!(err.contains("--lr, --arch would change it"), "{err}");
    let (ok, err) = cli(&["--plateau", "3"]);
    assert!(!ok);
    assert!(err.contains("--plateau would change it"), "{err}");
    let (ok, err) = cli(&["--limit", "4"]);
    assert!(!ok);
    assert!(err.contains("data options differ"), "{err}");
    // Only the epoch budget may change.
    let (ok, err) = cli(&["--epochs", "2"]);
    assert!(ok, "{err}");
    assert_eq!(metrics(&dir).len(), 2);
}

#[test]
fn the_paper_protocol_options_reach_the_config() {
    let (tmp, csv) = tiny(16, 8);
    let dir = tmp.path().join("run");
    let mut args: Vec<&OsStr> = [
        "train",
        "--no-progress",
        "--epochs",
        "1",
        "--plateau",
        "4",
        "--patience",
        "6",
        "--run-dir",
    ]
    .into_iter()
    .map(OsStr::new)
    .collect();
    args.extend([dir.as_os_str(), OsStr::new("--data"), csv.as_os_str()]);
    training_ok(&args);
    let cfg: TrainConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        cfg.schedule,
        Schedule::Plateau {
            factor: 0.1,
            patience: 4,
            min_lr: 1e-5
        }
    );
    assert_eq!(cfg.early_stopping, Some(6));
}

#[test]
fn mixup_runs_are_reproducible_and_differ_from_plain_ones() {
    let (tmp, csv) = tiny(32, 8);
    let with = |alpha: f64, name: &str| {
        let mut cfg = config(&csv, 1);
        cfg.mixup = alpha;
        let dir = tmp.path().join(name);
        run(cfg, &dir, false);
        weights(&dir.join("last.safetensors"))
    };
    let (a, b, plain) = (with(0.4, "a"), with(0.4, "b"), with(0.0, "plain"));
    assert_eq!(a, b, "one seed, one result");
    assert_ne!(a, plain, "mixup changed nothing");
    let mut bad = config(&csv, 1);
    bad.mixup = -1.0;
    let err = try_run(bad, &tmp.path().join("bad"), false).unwrap_err();
    assert!(err.to_string().contains("mixup"), "{err}");
}

#[test]
fn soup_writes_the_mean_and_refuses_other_networks() {
    let tmp = tempfile::tempdir().unwrap();
    let file = |arch: Arch, name: &str| {
        let p = tmp.path().join(name);
        let w = LoadedWeights::untrained(arch, &Device::Cpu).unwrap();
        std::fs::write(&p, w.to_bytes().unwrap()).unwrap();
        p
    };
    let (a, b, c) = (
        file(Arch::Arch1, "a.safetensors"),
        file(Arch::Arch1, "b.safetensors"),
        file(Arch::Arch3, "c.safetensors"),
    );
    let out = tmp.path().join("soup.safetensors");
    let soup = |inputs: &[&Path]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_training"))
            .arg("soup")
            .arg("--out")
            .arg(&out)
            .args(inputs)
            .output()
            .unwrap()
    };
    training_ok(&[
        OsStr::new("soup"),
        OsStr::new("--out"),
        out.as_os_str(),
        a.as_os_str(),
        b.as_os_str(),
    ]);
    let mean = LoadedWeights::from_file(&out, &Device::Cpu).unwrap();
    mean.validate().unwrap();
    assert!(mean.meta.provenance.notes.contains("training soup"));
    let run = soup(&[&a, &c]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("another network"), "{err}");
}

/// `soup --bn-data` keeps the averaged kernels and replaces the moving
/// statistics with ones measured on the training images.
#[test]
fn soup_can_re_estimate_batch_norm_statistics() {
    let (tmp, csv) = tiny(48, 16);
    let file = |name: &str, seed: u64| {
        let p = tmp.path().join(name);
        let varmap = candle_nn::VarMap::new();
        let cfg = models::ModelConfig::preset(Arch::Arch1);
        models::EmotionNet::new(
            &cfg,
            candle_nn::VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &Device::Cpu),
        )
        .unwrap();
        training::train::seeded_init(&varmap, seed).unwrap();
        let meta = models::WeightsMeta::new(cfg, Default::default());
        models::weights::save_varmap(&varmap, &meta, &p).unwrap();
        p
    };
    let (a, b) = (file("a.safetensors", 1), file("b.safetensors", 2));
    let (plain, measured) = (
        tmp.path().join("plain.safetensors"),
        tmp.path().join("measured.safetensors"),
    );
    let log = tmp.path().join("soups.jsonl");
    fn soup_args<'a>(out: &'a Path, a: &'a Path, b: &'a Path) -> Vec<&'a OsStr> {
        vec![
            OsStr::new("soup"),
            OsStr::new("--out"),
            out.as_os_str(),
            a.as_os_str(),
            b.as_os_str(),
        ]
    }
    training_ok(&soup_args(&plain, &a, &b));
    // Re-estimated, scored on the fixture's PublicTest rows and logged.
    let mut args = soup_args(&measured, &a, &b);
    args.extend([
        OsStr::new("--bn-data"),
        csv.as_os_str(),
        OsStr::new("--score"),
        OsStr::new("PublicTest"),
        OsStr::new("--log"),
        log.as_os_str(),
    ]);
    let out = training_ok(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("accuracy: ") && last.ends_with("/16)"),
        "{stdout}"
    );
    let records: Vec<training::report::SoupRecord> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.bn, training::report::SoupBn::ReEstimated);
    assert_eq!((r.usage.as_str(), r.total), ("PublicTest", 16));
    assert_eq!(r.models, [a.display().to_string(), b.display().to_string()]);
    assert!(last.contains(&format!("({}/16)", r.correct)), "{last}");
    let recorded = LoadedWeights::from_file(&measured, &Device::Cpu)
        .unwrap()
        .meta
        .provenance
        .metrics["publictest_accuracy"];
    assert_eq!(recorded, r.accuracy);
    // --score needs a CSV to score on.
    let unscored = tmp.path().join("unscored.safetensors");
    let mut args = soup_args(&unscored, &a, &b);
    args.extend([OsStr::new("--score"), OsStr::new("PublicTest")]);
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_training"))
        .args(&args)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("--score-data"), "{err}");
    assert!(!unscored.exists(), "an unscorable soup was written");
    let (p, m) = (weights(&plain), weights(&measured));
    let mut stats = 0;
    for (name, values) in &p {
        if !models::is_trainable(name) {
            assert_ne!(values, &m[name], "{name} was not re-estimated");
            stats += 1;
        } else {
            assert_eq!(values, &m[name], "{name} changed");
        }
    }
    assert!(stats > 0);
    let notes = LoadedWeights::from_file(&measured, &Device::Cpu)
        .unwrap()
        .meta
        .provenance
        .notes;
    assert!(
        notes.contains("BatchNorm statistics re-estimated"),
        "{notes}"
    );
}

#[test]
fn init_starts_from_trained_weights() {
    let (tmp, csv) = tiny(48, 16);
    let first = tmp.path().join("first");
    let mut cfg = config(&csv, 2);
    cfg.seed = 1;
    run(cfg, &first, false);
    let trained = weights(&first.join("last.safetensors"));
    // Fine-tuning at a negligible learning rate keeps the kernels where the
    // first run left them; a fresh start (another seed) at that rate stays
    // at its own random initialisation, far from them.
    let still = |init: Option<&Path>, dir: &str| {
        let mut cfg = config(&csv, 1);
        cfg.lr = 1e-12;
        cfg.init = init.map(Path::to_owned);
        let d = tmp.path().join(dir);
        run(cfg, &d, false);
        weights(&d.join("last.safetensors"))
    };
    let distance = |w: &std::collections::BTreeMap<String, Vec<f32>>| {
        trained
            .iter()
            .filter(|(n, _)| n.ends_with(".weight") && !n.contains("batch_norm"))
            .flat_map(|(n, v)| v.iter().zip(&w[n]).map(|(a, b)| (a - b).abs()))
            .fold(0f32, f32::max)
    };
    let tuned = still(Some(&first.join("last.safetensors")), "tuned");
    let fresh = still(None, "fresh");
    assert!(
        distance(&tuned) < 1e-5,
        "fine-tuned moved {}",
        distance(&tuned)
    );
    assert!(
        distance(&fresh) > 1e-2,
        "fresh start equals the trained weights"
    );

    // Weights of another network are refused before training starts.
    let mut cfg = TrainConfig::preset(
        Preset::Default,
        Arch::Arch3,
        DataSpec {
            data: csv.clone(),
            ..DataSpec::default()
        },
    );
    cfg.epochs = 1;
    cfg.init = Some(first.join("last.safetensors"));
    let err = try_run(cfg, &tmp.path().join("wrong"), false).unwrap_err();
    assert!(format!("{err:#}").contains("--init"), "{err:#}");
}

#[test]
fn distillation_learns_from_the_teacher_and_checks_it() {
    let (tmp, csv) = tiny(48, 16);
    // The same faces with every label moved to another class.
    let relabelled = tmp.path().join("relabelled.csv");
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let mut out = format!("{}\n", lines.next().unwrap());
    for line in lines {
        let (label, rest) = line.split_once(',').unwrap();
        let label: usize = label.parse().unwrap();
        out.push_str(&format!("{},{rest}\n", (label + 3) % 7));
    }
    std::fs::write(&relabelled, out).unwrap();

    let teacher_dir = tmp.path().join("teacher");
    run(config(&csv, 2), &teacher_dir, false);
    let teacher = teacher_dir.join("last.safetensors");
    let student = |data: &Path, alpha: f64, dir: &str| {
        let mut cfg = config(data, 1);
        cfg.seed = 3;
        cfg.augment = cfg.augment.map(|a| training::augment::AugmentConfig {
            random_erasing: 0.5,
            ..a
        });
        cfg.distill = Some(Distill {
            teacher: teacher.clone(),
            also: Vec::new(),
            mirror: false,
            alpha,
            temperature: 4.0,
        });
        let d = tmp.path().join(dir);
        run(cfg, &d, false);
        weights(&d.join("last.safetensors"))
    };
    // With alpha = 1 the teacher is the only signal: the labels do not matter.
    assert_eq!(
        student(&csv, 1.0, "only_teacher"),
        student(&relabelled, 1.0, "only_teacher_relabelled")
    );
    // With alpha < 1 they do.
    assert_ne!(
        student(&csv, 0.5, "half"),
        student(&relabelled, 0.5, "half_relabelled")
    );

    // A teacher of other classes, or a missing one, is refused before training.
    let refused = |teacher: &Path, dir: &str| {
        let mut cfg = config(&csv, 1);
        cfg.distill = Some(Distill {
            teacher: teacher.to_owned(),
            also: Vec::new(),
            mirror: false,
            alpha: 0.5,
            temperature: 4.0,
        });
        let err = try_run(cfg, &tmp.path().join(dir), false).unwrap_err();
        format!("{err:#}")
    };
    let err = refused(&tmp.path().join("absent.safetensors"), "absent");
    assert!(err.contains("--teacher"), "{err}");
    // ... and leaves no run folder to clean up.
    assert!(!tmp.path().join("absent").exists());
    let ferplus8 =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/models/arch1_ferplus.safetensors");
    let err = refused(&ferplus8, "eight");
    assert!(err.contains("classes"), "{err}");
    // Nonsense settings are refused too.
    let mut cfg = config(&csv, 1);
    cfg.distill = Some(Distill {
        teacher,
        also: Vec::new(),
        mirror: false,
        alpha: 1.5,
        temperature: 4.0,
    });
    assert!(cfg.validate().is_err());
}

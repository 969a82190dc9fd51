//! The training loop end to end: resume equivalence on a tiny synthetic run, and
//! a one-epoch smoke run on a small subset of the shared FER2013 data.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use models::{Arch, LoadedWeights};
use training::spec::DataSpec;
use training::train::{EpochMetrics, Preset, RunOptions, TrainConfig, train};

/// A FER2013-format CSV with `n_train` Training and `n_val` PublicTest rows of
/// pseudo-random faces whose brightness depends on the label (learnable).
fn write_fixture(path: &Path, n_train: usize, n_val: usize) {
    let mut f = std::fs::File::create(path).unwrap();
    writeln!(f, "emotion,pixels,Usage").unwrap();
    let mut state = 12_345u64;
    for i in 0..n_train + n_val {
        let label = i % 7;
        let pixels: Vec<String> = (0..2304)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                let noise = (state >> 58) as usize;
                ((label * 30 + noise) % 256).to_string()
            })
            .collect();
        let usage = if i < n_train {
            "Training"
        } else {
            "PublicTest"
        };
        writeln!(f, "{label},{},{usage}", pixels.join(" ")).unwrap();
    }
}

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

fn run(cfg: TrainConfig, dir: &Path, resume: bool) -> training::train::RunSummary {
    let opts = RunOptions {
        run_dir: dir.to_owned(),
        resume,
        progress: false,
    };
    train(cfg, &opts, Arc::new(AtomicBool::new(false))).unwrap()
}

fn weights(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let w = LoadedWeights::from_file(path, &Device::Cpu).unwrap();
    w.tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect()
}

fn metrics(dir: &Path) -> Vec<EpochMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("tiny.csv");
    write_fixture(&csv, 48, 16);

    let straight = tmp.path().join("straight");
    let s = run(config(&csv, 3), &straight, false);
    assert_eq!(s.state.epochs_done, 3);

    let parts = tmp.path().join("parts");
    run(config(&csv, 1), &parts, false);
    // A second start without --resume must refuse to overwrite the run.
    let opts = RunOptions {
        run_dir: parts.clone(),
        resume: false,
        progress: false,
    };
    let err = train(config(&csv, 1), &opts, Arc::new(AtomicBool::new(false))).unwrap_err();
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
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("tiny.csv");
    write_fixture(&data, 14, 7);
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

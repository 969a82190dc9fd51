//! Helpers shared by the training tests.
#![allow(dead_code, reason = "each test file uses a part of the helpers")]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use candle_core::Device;
use training::train::EpochMetrics;

/// Every tensor of a weights file, flattened, by name.
pub fn weights(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let w = models::LoadedWeights::from_file(path, &Device::Cpu).unwrap();
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

/// A run's `metrics.jsonl`.
pub fn metrics(dir: &Path) -> Vec<EpochMetrics> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A FER2013-format CSV with `n_train` Training and `n_val` PublicTest rows of
/// pseudo-random faces whose brightness depends on the label (learnable).
pub fn write_fixture(path: &Path, n_train: usize, n_val: usize) {
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

/// Runs the `training` binary with `args`; panics with its stderr unless it
/// succeeds.
#[allow(dead_code)]
pub fn training_ok(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_training"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "training {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

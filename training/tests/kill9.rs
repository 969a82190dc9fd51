//! `kill -9` at any point of a training run (ignored by default: about a
//! minute; run it with
//! `cargo test --workspace --test kill9 -- --ignored --nocapture`).
//!
//! A short run of the `training` binary is killed with SIGKILL again and
//! again, half the time at a random moment and half the time the instant a
//! checkpoint's temporary file appears (in the middle of a checkpoint write),
//! and resumed each time. After every kill each weights, optimizer, state,
//! config and metrics file in the run folder must read back whole; at the end
//! the run's metrics and weights must equal an uninterrupted run's.
//! `KILL9_ROUNDS` (default 24) and `KILL9_SEED` (default: the clock) vary it;
//! the seed is printed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use common::{metrics, weights, write_fixture};
use training::train::{EpochMetrics, RunState, TrainConfig};

const EPOCHS: usize = 12;

fn start(dir: &Path, csv: &Path, resume: bool) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_training"));
    cmd.args(["train", "--no-progress", "--run-dir"])
        .arg(dir)
        .arg("--data")
        .arg(csv)
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if resume {
        cmd.arg("--resume");
    } else {
        cmd.args(["--epochs", &EPOCHS.to_string(), "--batch-size", "16"]);
    }
    cmd.spawn().unwrap()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in [dir.to_owned(), dir.join("ckpt")] {
        if let Ok(rd) = std::fs::read_dir(&d) {
            out.extend(rd.map(|e| e.unwrap().path()));
        }
    }
    out
}

fn has_temporary(dir: &Path) -> bool {
    files(dir)
        .iter()
        .any(|p| p.to_string_lossy().ends_with(".tmp"))
}

/// Every file a reader would use reads back whole; returns the epochs done.
fn check_whole(dir: &Path) -> usize {
    for p in files(dir) {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // the lock and temporaries: never read
        }
        if name.ends_with(".safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            if name.starts_with("adam-") {
                safetensors::SafeTensors::deserialize(&bytes)
                    .unwrap_or_else(|e| panic!("{} is torn: {e}", p.display()));
            } else {
                models::LoadedWeights::from_bytes(&bytes, &Device::Cpu)
                    .and_then(|w| w.validate())
                    .unwrap_or_else(|e| panic!("{} is torn: {e}", p.display()));
            }
        }
    }
    // Killed before config.json was in place: nothing else may be either.
    let Ok(config) = std::fs::read_to_string(dir.join("config.json")) else {
        assert!(!dir.join("state.json").exists() && !dir.join("metrics.jsonl").exists());
        return 0;
    };
    serde_json::from_str::<TrainConfig>(&config).unwrap();
    if let Ok(text) = std::fs::read_to_string(dir.join("metrics.jsonl")) {
        for line in text.lines() {
            serde_json::from_str::<EpochMetrics>(line)
                .unwrap_or_else(|e| panic!("torn metrics line {line:?}: {e}"));
        }
    }
    match std::fs::read_to_string(dir.join("state.json")) {
        Ok(text) => {
            let state: RunState = serde_json::from_str(&text).unwrap();
            if state.epochs_done > 0 {
                // The checkpoint the state points at is there.
                let w = dir.join(format!("ckpt/weights-{}.safetensors", state.epochs_done));
                assert!(w.is_file(), "state points at a missing {}", w.display());
            }
            state.epochs_done
        }
        Err(_) => 0,
    }
}

#[test]
#[ignore = "about a minute: cargo test --workspace --test kill9 -- --ignored"]
fn sigkill_at_any_moment_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("tiny.csv");
    write_fixture(&csv, 96, 32);

    let straight = tmp.path().join("straight");
    let t0 = Instant::now();
    assert!(start(&straight, &csv, false).wait().unwrap().success());
    let run_time = t0.elapsed();

    let rounds: usize = std::env::var("KILL9_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let mut seed: u64 = std::env::var("KILL9_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("KILL9_SEED={seed} rounds={rounds}; uninterrupted run {run_time:?}");
    let mut random = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };

    let killed = tmp.path().join("killed");
    let (mut during_write, mut at_random, mut finished_before) = (0, 0, 0);
    for round in 0..rounds {
        let resume = killed.join("config.json").exists();
        let mut child = start(&killed, &csv, resume);
        let begun = Instant::now();
        let limit = run_time.mul_f64(1.5);
        // Each part lives for a few epochs at most, so the run is killed many times.
        let epoch = run_time.div_f64(EPOCHS as f64);
        if round % 2 == 0 {
            // In the middle of a checkpoint write: the first temporary file
            // after a random moment (mostly an epoch's checkpoint, sometimes
            // the start's config or the resume's repairs).
            std::thread::sleep(epoch.mul_f64(2.0 * random()));
            while !has_temporary(&killed) && begun.elapsed() < limit {
                std::thread::sleep(Duration::from_micros(200));
            }
        } else {
            std::thread::sleep(epoch.mul_f64(3.0 * random()));
        }
        let saw_temporary = has_temporary(&killed);
        if child.try_wait().unwrap().is_some() {
            finished_before += 1;
        } else {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            if saw_temporary {
                during_write += 1;
            } else {
                at_random += 1;
            }
        }
        let done = check_whole(&killed);
        println!(
            "round {round}: killed at {:?}, {done} epochs checkpointed",
            begun.elapsed()
        );
        if done == EPOCHS {
            break;
        }
    }
    // Finish it.
    let resume = killed.join("config.json").exists();
    assert!(start(&killed, &csv, resume).wait().unwrap().success());
    assert_eq!(check_whole(&killed), EPOCHS);
    println!(
        "{during_write} kills during a checkpoint write, {at_random} at random moments, \
         {finished_before} rounds finished first"
    );
    assert!(during_write > 0, "no kill landed in a checkpoint write");

    let (a, b) = (metrics(&straight), metrics(&killed));
    assert_eq!(a.len(), EPOCHS);
    assert_eq!(b.len(), EPOCHS, "metrics lines lost or repeated");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (x.epoch, x.train_loss, x.val_accuracy, x.lr),
            (y.epoch, y.train_loss, y.val_accuracy, y.lr)
        );
    }
    for f in ["last.safetensors", "best.safetensors"] {
        assert!(
            weights(&straight.join(f)) == weights(&killed.join(f)),
            "{f} differs from the uninterrupted run's"
        );
    }
}

//! `training report` on a tiny fake runs folder: the table, every figure, the
//! cross-validation summary and byte-for-byte regeneration.

use std::path::Path;
use std::process::Command;

use models::Arch;
use training::metrics::Confusion;
use training::spec::DataSpec;
use training::train::{EpochMetrics, MachineRecord, Preset, Schedule, TrainConfig};

fn write_run(dir: &Path, arch: Arch, data: &str, fold: usize, val_acc: &[f64]) {
    write_run_with(dir, arch, data, fold, val_acc, |_| {});
}

/// As [`write_run`], with `edit` applied to the configuration last.
fn write_run_with(
    dir: &Path,
    arch: Arch,
    data: &str,
    fold: usize,
    val_acc: &[f64],
    edit: impl FnOnce(&mut TrainConfig),
) {
    std::fs::create_dir_all(dir).unwrap();
    let spec = DataSpec {
        data: data.into(),
        fold,
        folds: 2,
        ..DataSpec::default()
    };
    let mut cfg = TrainConfig::preset(Preset::Default, arch, spec);
    cfg.epochs = val_acc.len();
    edit(&mut cfg);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
    let classes: Vec<String> = (0..7).map(|i| format!("c{i}")).collect();
    let mut lines = String::new();
    for (i, &acc) in val_acc.iter().enumerate() {
        // 10 validation samples per class; `acc` of them right.
        let mut c = Confusion::new(classes.clone());
        for t in 0..7 {
            let right = (acc * 10.0).round() as usize;
            for k in 0..10 {
                c.add(t, if k < right { t } else { (t + 1) % 7 });
            }
        }
        let m = EpochMetrics {
            epoch: i + 1,
            train_loss: 1.9 - 0.1 * i as f64,
            train_accuracy: acc + 0.05,
            val_loss: 2.0 - 0.1 * i as f64,
            val_accuracy: acc,
            lr: 1e-3,
            seconds: 100.0,
            img_per_s: 250.0,
            val_confusion: Some(c),
        };
        lines.push_str(&serde_json::to_string(&m).unwrap());
        lines.push('\n');
    }
    std::fs::write(dir.join("metrics.jsonl"), lines).unwrap();
    let machine = MachineRecord {
        from_epoch: 1,
        device: "cpu".into(),
        cpu: "Test CPU".into(),
        logical_cpus: 2,
        threads: 2,
        commit: "abc".into(),
        written_after: false,
    };
    std::fs::write(
        dir.join("machine.jsonl"),
        serde_json::to_string(&machine).unwrap() + "\n",
    )
    .unwrap();
}

fn report(runs: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_training"))
        .args(["report", "--runs"])
        .arg(runs)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

/// Runs `training report`, which must succeed, and returns its `REPORT.md`.
fn report_md(runs: &Path, out: &Path) -> String {
    let run = report(runs, out);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::read_to_string(out.join("REPORT.md")).unwrap()
}

fn assert_figure(path: &Path) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(
        img.width() >= 400 && colours.len() > 20,
        "{} looks blank ({} colours)",
        path.display(),
        colours.len()
    );
}

#[test]
fn report_on_fake_runs_writes_table_and_figures_reproducibly() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    write_run(
        &runs.join("arch1_fer2013"),
        Arch::Arch1,
        "fer2013.csv.gz",
        0,
        &[0.3, 0.6, 0.5],
    );
    write_run(
        &runs.join("arch2_fer2013"),
        Arch::Arch2,
        "fer2013.csv.gz",
        0,
        &[0.2, 0.4, 0.45],
    );
    write_run(
        &runs.join("arch3_ckplus/fold0"),
        Arch::Arch3,
        "ckplus48",
        0,
        &[0.4, 0.5],
    );
    write_run(
        &runs.join("arch3_ckplus/fold1"),
        Arch::Arch3,
        "ckplus48",
        1,
        &[0.8, 0.7],
    );
    // A cross-validation whose second fold is still running.
    write_run(
        &runs.join("arch1_ckplus/fold0"),
        Arch::Arch1,
        "ckplus48",
        0,
        &[0.9, 1.0],
    );
    std::fs::create_dir_all(runs.join("bench")).unwrap();
    std::fs::write(
        runs.join("bench/arch1.json"),
        r#"{"arch":"arch1","params":295039,"threads":1,"runs":300,"cpu":"Test CPU","logical_cpus":2,"commit":"abc",
            "figures":{"stock":{"b1_median_ms":9.0,"b1_p10_ms":8.0,"b1_p90_ms":10.0,"b64_img_s":100.0},
                       "fast":{"b1_median_ms":1.5,"b1_p10_ms":1.4,"b1_p90_ms":1.6,"b64_img_s":500.0}}}"#,
    )
    .unwrap();

    let out = tmp.path().join("report");
    let md = report_md(&runs, &out);
    // Table 5 rows: fixed split with its best epoch; CV with mean ± std of the
    // last epochs (0.5 and 0.7) beside the best epochs (0.5 and 0.8).
    assert!(
        md.contains(
            "| ARCH-1 | FER2013 | 293951 | default, batch 64 | 3/3 | 0.08 h | 60.0% (2) | 50.0% |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| ARCH-3 | CK+ | 306831 | default, batch 64 | 2 x 2/2 folds | 0.11 h | 65.0 ± 21.2% | 60.0 ± 14.1% |"),
        "{md}"
    );
    assert!(md.contains("| ARCH-1 | CK+ (in progress) |"), "{md}");
    assert!(md.contains("70.3% (test"), "{md}");
    assert!(
        md.contains("- FER2013: ARCH-1 60.0% > ARCH-2 45.0% (2 of 4 architectures finished). ARCH-1 is the most accurate here, as the paper reports.\n"),
        "{md}"
    );
    assert!(md.contains("Test CPU (2 threads)"), "{md}");
    // Per-class scores under the ARCH-1 FER2013 matrix (best epoch: 6 of 10
    // right per class, the rest predicted as the next class).
    assert!(md.contains("| c0 | 0.600 | 0.600 | 0.600 | 10 |"), "{md}");
    assert!(md.contains("Not run yet: ARCH-1 on FER+"), "{md}");
    assert!(
        md.contains("| ARCH-1 | 293951 | 292863 | 1.50 / – / 9.00 | 500 |"),
        "{md}"
    );
    let figures = [
        "accuracy.png",
        "curves/arch1_fer2013.png",
        "curves/arch1_ckplus.png",
        "curves/arch3_ckplus.png",
        "confusion_arch1_fer2013.png",
        "confusion_arch1_ckplus.png",
        "feature_maps_conv2d_4.png",
        "latency.png",
    ];
    for f in figures {
        assert!(
            md.contains(&format!("]({f})")),
            "REPORT.md does not show {f}"
        );
        assert_figure(&out.join(f));
    }

    // Regenerating gives the same bytes.
    let before: Vec<Vec<u8>> = std::iter::once("REPORT.md")
        .chain(figures)
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    let again = report(&runs, &out);
    assert!(again.status.success());
    for (f, old) in std::iter::once("REPORT.md").chain(figures).zip(before) {
        assert_eq!(std::fs::read(out.join(f)).unwrap(), old, "{f} changed");
    }
}

#[test]
fn findings_say_when_training_budgets_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    write_run(
        &runs.join("arch1_fer2013"),
        Arch::Arch1,
        "fer2013.csv",
        0,
        &[0.5, 0.6, 0.7],
    );
    write_run(
        &runs.join("arch3_fer2013"),
        Arch::Arch3,
        "fer2013.csv",
        0,
        &[0.6, 0.8],
    );
    let md = report_md(&runs, &tmp.path().join("out"));
    assert!(
        md.contains("- FER2013: ARCH-3 80.0% > ARCH-1 70.0% (2 of 4 architectures finished). ARCH-1 is not the most accurate here, unlike the paper's report. The training budgets differ (epochs: ARCH-3 2, ARCH-1 3), so this is not a like-for-like comparison.\n"),
        "{md}"
    );
    // A like-for-like ARCH-1 run (2 epochs, as ARCH-3's) is preferred to the
    // longer one, and then there is nothing to flag.
    write_run(
        &runs.join("arch1_fer2013_e2"),
        Arch::Arch1,
        "fer2013.csv",
        0,
        &[0.5, 0.9],
    );
    let md = report_md(&runs, &tmp.path().join("out2"));
    assert!(
        md.contains("- FER2013: ARCH-1 90.0% > ARCH-3 80.0% (2 of 4 architectures finished). ARCH-1 is the most accurate here, as the paper reports.\n"),
        "{md}"
    );
    // The two ARCH-1 experiments' figures are told apart by their budgets;
    // ARCH-3's, which has no twin, keeps the plain name.
    for name in [
        "![ARCH-1 on FER2013 (3 epochs)](curves/arch1_fer2013.png)",
        "![ARCH-1 on FER2013 (2 epochs)](curves/arch1_fer2013_e2.png)",
        "![Confusion of ARCH-1 on FER2013 (2 epochs)](confusion_arch1_fer2013_e2.png)",
        "![ARCH-3 on FER2013](curves/arch3_fer2013.png)",
    ] {
        assert!(md.contains(name), "{name} missing from\n{md}");
    }
}

#[test]
fn the_paper_budget_section_follows_the_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    let budget = |c: &mut TrainConfig| {
        c.epochs = 200;
        c.early_stopping = Some(1);
        c.schedule = Schedule::Plateau {
            factor: 0.1,
            patience: 10,
            min_lr: 1e-5,
        };
    };
    // ARCH-1 stopped early (no better epoch after epoch 2), ARCH-3 is still
    // running, and a run without early stopping is not part of the grid.
    write_run_with(
        &runs.join("arch1_fer2013_p200"),
        Arch::Arch1,
        "fer2013.csv",
        0,
        &[0.5, 0.7, 0.6],
        budget,
    );
    write_run_with(
        &runs.join("arch3_fer2013_p200"),
        Arch::Arch3,
        "fer2013.csv",
        0,
        &[0.6],
        budget,
    );
    write_run(
        &runs.join("arch2_fer2013"),
        Arch::Arch2,
        "fer2013.csv",
        0,
        &[0.9, 0.9],
    );
    let recipe = "- FER2013, up to 200 epochs, default, batch 64, learning rate x0.1 after 10 epochs without a better validation accuracy, early stopping after 1";
    let md = report_md(&runs, &tmp.path().join("out"));
    let want = format!(
        "{recipe}: finished: ARCH-1 70.0% (paper 70.3%, -0.3 pp); in progress: ARCH-3 (epoch 1); not run yet: ARCH-2, ARCH-4.\n"
    );
    assert!(md.contains("### At the paper's budget"), "{md}");
    assert!(md.contains(&want), "{want} missing from\n{md}");
    // Once ARCH-3 stops too, the two are ranked against the paper's claim.
    write_run_with(
        &runs.join("arch3_fer2013_p200"),
        Arch::Arch3,
        "fer2013.csv",
        0,
        &[0.6, 0.8, 0.7],
        budget,
    );
    let md = report_md(&runs, &tmp.path().join("out2"));
    let want = format!(
        "{recipe}: finished: ARCH-3 80.0% > ARCH-1 70.0% (paper 70.3%, -0.3 pp); not run yet: ARCH-2, ARCH-4. ARCH-1 is not the most accurate here, unlike the paper's report.\n"
    );
    assert!(md.contains(&want), "{want} missing from\n{md}");
}

#[test]
fn runs_that_differ_only_in_mixup_or_optimizer_are_an_ablation() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    write_run(
        &runs.join("arch1_fer2013_plain"),
        Arch::Arch1,
        "fer2013.csv",
        0,
        &[0.5, 0.6],
    );
    write_run_with(
        &runs.join("arch1_fer2013_mixup"),
        Arch::Arch1,
        "fer2013.csv",
        0,
        &[0.5, 0.7],
        |c| c.mixup = 0.4,
    );
    let md = report_md(&runs, &tmp.path().join("out"));
    let want = "- ARCH-1 FER2013, 2 epochs, seed 0: `arch1_fer2013_mixup` (mixup 0.4): best 70.0% (epoch 2), last 70.0%; `arch1_fer2013_plain` (no mixup): best 60.0% (epoch 2), last 60.0%.\n";
    assert!(md.contains(want), "{want} missing from\n{md}");
    // An optimizer ablation joins them, and every variant names its optimizer.
    write_run_with(
        &runs.join("arch1_fer2013_sgd"),
        Arch::Arch1,
        "fer2013.csv",
        0,
        &[0.4, 0.8],
        |c| {
            c.adam.sgd_momentum = Some(0.9);
            c.lr = 0.02;
        },
    );
    let md = report_md(&runs, &tmp.path().join("out2"));
    let want = "`arch1_fer2013_plain` (no mixup, Adam at lr 0.002, weight decay 0.05): best 60.0% (epoch 2), last 60.0%; `arch1_fer2013_sgd` (no mixup, SGD with Nesterov momentum 0.9 at lr 0.02, weight decay 0.05): best 80.0% (epoch 2), last 80.0%.\n";
    assert!(md.contains(want), "{want} missing from\n{md}");
}

#[test]
fn a_corrupt_metrics_line_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    write_run(&runs.join("a"), Arch::Arch2, "fer2013.csv", 0, &[0.5]);
    let path = runs.join("a/metrics.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"epoch\": 2, \"train_lo\n");
    std::fs::write(&path, text).unwrap();
    let run = report(&runs, &tmp.path().join("out"));
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("metrics.jsonl line 2 is not valid"), "{err}");
}

#[test]
fn missing_runs_folder_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let run = report(&tmp.path().join("nope"), &tmp.path().join("out"));
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("is not a folder"), "{err}");
}

/// The committed `report/` is what `training report` makes of the committed
/// `runs/`: regenerate it into a temporary folder and compare. (The feature
/// maps depend on float kernels that may differ across CPUs, so only their
/// presence is checked.)
#[test]
fn committed_report_matches_committed_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = tempfile::tempdir().unwrap();
    // The committed pair: `runs/` and `report/` as of HEAD when this is a git
    // checkout (training runs may be changing the working tree), else the
    // files as they are.
    let snapshot = tmp.path().join("head");
    std::fs::create_dir_all(&snapshot).unwrap();
    let archived = Command::new("sh")
        .arg("-c")
        .arg("git archive HEAD runs report | tar -x -C \"$0\"")
        .arg(&snapshot)
        .current_dir(&root)
        .status()
        .is_ok_and(|s| s.success())
        && snapshot.join("runs").is_dir();
    let base = if archived { snapshot } else { root.clone() };
    let committed = base.join("report");
    let out = tmp.path().join("report");
    let run = report(&base.join("runs"), &out);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The regenerate command names the folders it was given; compare the rest.
    let text = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .lines()
            .filter(|l| !l.contains(" report --runs "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (want, got) = (
        text(&committed.join("REPORT.md")),
        text(&out.join("REPORT.md")),
    );
    assert!(
        want == got,
        "report/REPORT.md is not what runs/ gives: regenerate it with `cargo run --release -p training -- report` (while training runs, tools/snapshot_runs.sh commits runs and report together)"
    );
    let mut figures = vec![];
    for dir in [out.clone(), out.join("curves")] {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "png") {
                figures.push(p.strip_prefix(&out).unwrap().to_path_buf());
            }
        }
    }
    figures.sort();
    assert!(figures.len() >= 4, "{figures:?}");
    for f in figures {
        let theirs = committed.join(&f);
        assert!(theirs.is_file(), "report/{} is missing", f.display());
        if f.to_string_lossy().starts_with("feature_maps") {
            continue;
        }
        assert!(
            std::fs::read(&theirs).unwrap() == std::fs::read(out.join(&f)).unwrap(),
            "report/{} is stale",
            f.display()
        );
    }
}

#[test]
fn two_runs_of_one_fold_are_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    write_run(
        &runs.join("arch1_ckplus/fold0"),
        Arch::Arch1,
        "ckplus48",
        0,
        &[0.5],
    );
    write_run(
        &runs.join("arch1_ckplus/fold0_again"),
        Arch::Arch1,
        "ckplus48",
        0,
        &[0.6],
    );
    let run = report(&runs, &tmp.path().join("out"));
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("`arch1_ckplus/fold0` and `arch1_ckplus/fold0_again` are both fold 0"),
        "{err}"
    );
}

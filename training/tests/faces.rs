//! `training predict` and `training preprocess` end to end, on the shared
//! full-frame photos (fails, never skips, without them), with untrained
//! classifier weights made here (the detector is the shipped MTCNN).

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Device;
use models::{Arch, LoadedWeights};

fn shared(relative: &str) -> PathBuf {
    training::data::shared_data(relative).unwrap_or_else(|e| panic!("{e}"))
}

fn untrained_weights(dir: &Path) -> PathBuf {
    let bytes = LoadedWeights::untrained(Arch::Arch1, &Device::Cpu)
        .unwrap()
        .to_bytes()
        .unwrap();
    let path = dir.join("arch1.safetensors");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn training() -> Command {
    Command::new(env!("CARGO_BIN_EXE_training"))
}

#[test]
fn predict_prints_one_json_object_per_face_and_annotates() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = untrained_weights(tmp.path());
    let photo = shared("faces-fullframe/2008_002506.jpg");
    let dogs = shared("faces-fullframe/dogs.jpg");
    let out = training()
        .args(["predict", "--json", "--model"])
        .arg(&weights)
        .arg(&photo)
        .arg(&dogs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["image"].as_str().unwrap(), photo.to_str().unwrap());
        let b: Vec<f64> = v["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(b.len(), 4);
        assert!(b[2] > 50.0 && b[3] > 50.0, "{b:?}");
        assert!(v["score"].as_f64().unwrap() > 0.9);
        assert_eq!(v["landmarks"].as_array().unwrap().len(), 5);
        let probs = v["probs"].as_object().unwrap();
        assert_eq!(probs.len(), 7);
        assert!(probs.contains_key(v["label"].as_str().unwrap()));
        let total: f64 = probs.values().map(|p| p.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-2);
    }
    // Text mode and an annotated copy.
    let png = tmp.path().join("annotated.png");
    let out = training()
        .args(["predict", "--model"])
        .arg(&weights)
        .arg(&photo)
        .arg("--annotate")
        .arg(&png)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.contains(" box [")).count(),
        3,
        "{text}"
    );
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (500, 375));
    // YuNet searching the images finds the same three faces, and none on the dogs.
    let out = training()
        .args(["predict", "--json", "--finder", "yunet", "--model"])
        .arg(&weights)
        .arg(&photo)
        .arg(&dogs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yunet = String::from_utf8(out.stdout).unwrap();
    assert_eq!(yunet.lines().count(), 3, "{yunet}");
    // An unreadable image is reported and the exit status says so.
    let bad = tmp.path().join("bad.jpg");
    std::fs::write(&bad, b"not a jpeg").unwrap();
    let out = training()
        .args(["predict", "--model"])
        .arg(&weights)
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.jpg"));
}

#[test]
fn preprocess_writes_aligned_crops_and_a_report() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    for (class, file) in [
        ("one", "Tom_Cruise_avp_2014_4.jpg"),
        ("many", "2008_002506.jpg"),
        ("none", "dogs.jpg"),
    ] {
        std::fs::create_dir_all(input.join(class)).unwrap();
        std::fs::copy(
            shared(&format!("faces-fullframe/{file}")),
            input.join(class).join(file),
        )
        .unwrap();
    }
    let output = tmp.path().join("out");
    let run = training()
        .args(["preprocess", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let crop = image::open(output.join("one/Tom_Cruise_avp_2014_4.png")).unwrap();
    assert_eq!((crop.width(), crop.height()), (48, 48));
    assert!(output.join("many/2008_002506.png").is_file());
    assert!(!output.join("none").exists());
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(output.join("preprocess_report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["written"], 2);
    assert_eq!(report["no_face"].as_array().unwrap().len(), 1);
    assert_eq!(report["several_faces"][0]["faces"], 3);
}

/// `evaluate --ferplus` scores against the FER+ majority labels of the rows it
/// lines up with: the row whose votes say "not a face" is left out, a label
/// changed by FER+ is scored as FER+ says, and TTA views are accepted.
#[test]
fn evaluate_scores_against_ferplus_majority_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = untrained_weights(tmp.path());
    let px = vec!["128"; 2304].join(" ");
    let fer = tmp.path().join("fer.csv");
    std::fs::write(
        &fer,
        format!("emotion,pixels,Usage\n3,{px},PublicTest\n4,{px},PublicTest\n0,{px},PublicTest\n"),
    )
    .unwrap();
    let plus = tmp.path().join("plus.csv");
    std::fs::write(
        &plus,
        "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n\
         PublicTest,a.png,0,10,0,0,0,0,0,0,0,0\n\
         PublicTest,b.png,9,0,0,1,0,0,0,0,0,0\n\
         PublicTest,,0,0,0,0,0,0,0,0,0,10\n",
    )
    .unwrap();
    let out = training()
        .args(["evaluate", "--json", "--tta", "flip-shift", "--model"])
        .arg(&weights)
        .arg("--data")
        .arg(&fer)
        .arg("--ferplus")
        .arg(&plus)
        .args(["--usage", "PublicTest"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(json["total"], 2, "{stdout}");
    assert_eq!(json["tta"], "flip-shift");
    // Not the FER2013 CSV it lines up with: refused.
    let out = training()
        .args(["evaluate", "--model"])
        .arg(&weights)
        .arg("--data")
        .arg(tmp.path())
        .arg("--ferplus")
        .arg(&plus)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `evaluate` with several `--model`s scores their ensemble: a model
/// averaged with itself scores as itself, two different networks are named
/// together, and models whose classes differ are refused.
#[test]
fn evaluate_scores_an_ensemble_of_models() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = untrained_weights(tmp.path());
    let arch3 = tmp.path().join("arch3.safetensors");
    let w3 = LoadedWeights::untrained(Arch::Arch3, &Device::Cpu).unwrap();
    std::fs::write(&arch3, w3.to_bytes().unwrap()).unwrap();
    let renamed = tmp.path().join("renamed.safetensors");
    let mut w = LoadedWeights::untrained(Arch::Arch1, &Device::Cpu).unwrap();
    w.meta.classes[0] = "rage".into();
    std::fs::write(&renamed, w.to_bytes().unwrap()).unwrap();
    let rows: String = (0..6)
        .map(|i| {
            let px = vec![(40 * i).to_string(); 2304].join(" ");
            format!("{},{px},PublicTest\n", i % 7)
        })
        .collect();
    let fer = tmp.path().join("fer.csv");
    std::fs::write(&fer, format!("emotion,pixels,Usage\n{rows}")).unwrap();
    let run = |models: &[&Path]| {
        let mut c = training();
        c.args(["evaluate", "--json"]);
        for m in models {
            c.arg("--model").arg(m);
        }
        c.arg("--data").arg(&fer).output().unwrap()
    };
    let json = |out: &std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap()
    };
    let one = json(&run(&[&weights]));
    let twice = json(&run(&[&weights, &weights]));
    let a = one["loss"].as_f64().unwrap();
    let b = twice["loss"].as_f64().unwrap();
    assert!((a - b).abs() < 1e-5, "{a} {b}");
    assert_eq!(one["confusion"], twice["confusion"]);
    let mixed = json(&run(&[&weights, &arch3]));
    assert_eq!(mixed["total"], 6);
    // Both members count: the ensemble scores as neither alone.
    let three = json(&run(&[&arch3]))["loss"].as_f64().unwrap();
    let m = mixed["loss"].as_f64().unwrap();
    assert!(
        (m - a).abs() > 1e-6 && (m - three).abs() > 1e-6,
        "{m} {a} {three}"
    );
    let name = mixed["model"].as_str().unwrap();
    assert!(
        name.contains("arch1.safetensors + ") && name.ends_with("arch3.safetensors"),
        "{name}"
    );
    let out = run(&[&weights, &renamed]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("must share"), "{err}");
}

/// Inputs that give nothing to score or write are refused with the reason, never
/// "accuracy 0/0" with exit code 0; a FER2013 file with Training rows needs
/// --usage.
#[test]
fn evaluate_and_preprocess_refuse_inputs_with_nothing_to_use() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = untrained_weights(tmp.path());
    let px = |n: usize| vec!["0"; n].join(" ");
    let bad = tmp.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!(
            "emotion,pixels,Usage\n3,{},PublicTest\n9,{},PublicTest\ngarbage\n",
            px(100),
            px(2304)
        ),
    )
    .unwrap();
    let run = |data: &Path, usage: Option<&str>| {
        let mut c = training();
        c.args(["evaluate", "--model"])
            .arg(&weights)
            .arg("--data")
            .arg(data);
        if let Some(u) = usage {
            c.args(["--usage", u]);
        }
        c.output().unwrap()
    };
    let out = run(&bad, Some("PublicTest"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("nothing to score") && err.contains("3 rejected"),
        "{err}"
    );
    assert!(err.contains("line 2"), "{err}");
    // A split the file does not have.
    let good = tmp.path().join("good.csv");
    std::fs::write(
        &good,
        format!(
            "emotion,pixels,Usage\n3,{p},Training\n4,{p},PublicTest\n",
            p = px(2304)
        ),
    )
    .unwrap();
    let out = run(&good, Some("PrivateTest"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("PrivateTest"),
        "{err}"
    );
    // No --usage on a file with Training rows.
    let out = run(&good, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--usage"), "{err}");
    // A folder of unreadable images.
    let folder = tmp.path().join("faces/happy");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("a.png"), b"not a png").unwrap();
    let out = run(&tmp.path().join("faces"), None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("1 unreadable"),
        "{err}"
    );
    // The good split still works.
    assert!(run(&good, Some("PublicTest")).status.success());
    // preprocess where every image fails: a report, and a failure.
    let out = training()
        .args(["preprocess", "--input"])
        .arg(tmp.path().join("faces"))
        .arg("--output")
        .arg(tmp.path().join("crops"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no crop was written"),
        "{err}"
    );
    assert!(tmp.path().join("crops/preprocess_report.json").is_file());
}

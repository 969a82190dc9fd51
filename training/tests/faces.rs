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

//! MTCNN against facenet-pytorch 2.6.0 (golden values from
//! `tools/mtcnn_reference.py`), recall on dlib's labelled face boxes, and bad
//! input. Needs `../shared/data/faces-fullframe` (fails loudly without it).

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{faces_dir, repo};
use models::mtcnn::Mtcnn;
use perception::{Detection, Detector, DetectorConfig, Frame, PixelFormat};
use serde_json::Value;

fn weights() -> PathBuf {
    repo().join("assets/models/mtcnn.safetensors")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(repo().join("perception/tests/golden/mtcnn.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn detector(min_face_size: f32) -> Detector {
    Detector::from_file(
        weights(),
        DetectorConfig {
            min_face_size,
            ..Default::default()
        },
    )
    .unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn formula_input(shape: &[usize]) -> Tensor {
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let mut v = Vec::with_capacity(n * c * h * w);
    for ni in 0..n {
        for ci in 0..c {
            for hi in 0..h {
                for wi in 0..w {
                    let a =
                        0.37 * ni as f64 + 1.3 * ci as f64 + 0.11 * hi as f64 + 0.07 * wi as f64;
                    v.push((a.sin() * 0.9) as f32);
                }
            }
        }
    }
    Tensor::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap()
}

fn max_diff(t: &Tensor, want: &Value) -> f32 {
    let got = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let want = floats(&want["values"]);
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn nets_match_facenet_pytorch() {
    let g = golden();
    let nets = Mtcnn::from_file(weights(), &Device::Cpu).unwrap();
    let shape = |k: &str| -> Vec<usize> {
        g["nets"][k]["input_shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    };
    let (reg, prob) = nets.pnet.forward(&formula_input(&shape("pnet"))).unwrap();
    assert!(max_diff(&reg, &g["nets"]["pnet"]["reg"]) < 1e-4);
    assert!(max_diff(&prob, &g["nets"]["pnet"]["prob"]) < 1e-4);
    let (reg, prob) = nets.rnet.forward(&formula_input(&shape("rnet"))).unwrap();
    assert!(max_diff(&reg, &g["nets"]["rnet"]["reg"]) < 1e-4);
    assert!(max_diff(&prob, &g["nets"]["rnet"]["prob"]) < 1e-4);
    let (reg, lm, prob) = nets.onet.forward(&formula_input(&shape("onet"))).unwrap();
    assert!(max_diff(&reg, &g["nets"]["onet"]["reg"]) < 1e-4);
    assert!(max_diff(&lm, &g["nets"]["onet"]["landmarks"]) < 1e-4);
    assert!(max_diff(&prob, &g["nets"]["onet"]["prob"]) < 1e-4);
}

struct Want {
    bbox: Vec<f32>,
    score: f32,
    landmarks: Vec<f32>,
}

fn wants(entry: &Value) -> Vec<Want> {
    entry["faces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| Want {
            bbox: floats(&f["box"]),
            score: f["score"].as_f64().unwrap() as f32,
            landmarks: f["landmarks"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(floats)
                .collect(),
        })
        .collect()
}

fn box_error(d: &Detection, w: &Want) -> f32 {
    d.bbox
        .iter()
        .zip(&w.bbox)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn detections_match_facenet_pytorch() {
    let dir = faces_dir();
    let g = golden();
    let mut problems = Vec::new();
    let mut compared = 0;
    for entry in g["detect"].as_array().unwrap() {
        let file = entry["file"].as_str().unwrap();
        let min = entry["min_face_size"].as_f64().unwrap() as f32;
        let frame = Frame::open(dir.join(file)).unwrap();
        let sum: u64 = frame.to_rgb8().iter().map(|&v| u64::from(v)).sum();
        assert_eq!(
            Some(sum),
            entry["pixel_sum"].as_u64(),
            "{file} decodes to other pixels than when the goldens were made (image crate \
             changed?): rerun tools/mtcnn_reference.py"
        );
        let dets = detector(min).detect(&frame).unwrap();
        let want = wants(entry);
        if dets.len() != want.len() {
            problems.push(format!(
                "{file} (min {min}): {} faces, facenet-pytorch {}",
                dets.len(),
                want.len()
            ));
            continue;
        }
        for w in &want {
            // Order by area can swap near-equal faces: match by box.
            let d = dets
                .iter()
                .min_by(|a, b| box_error(a, w).total_cmp(&box_error(b, w)))
                .unwrap();
            let lm_err = d
                .landmarks
                .iter()
                .flatten()
                .zip(&w.landmarks)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            let (be, se) = (box_error(d, w), (d.score - w.score).abs());
            if be > 1.0 || lm_err > 1.0 || se > 1e-3 {
                problems.push(format!(
                    "{file} (min {min}): box {:?} vs {:?} (max error {be:.3} px), landmarks error {lm_err:.3} px, score {} vs {}",
                    d.bbox, w.bbox, d.score, w.score
                ));
            }
            compared += 1;
        }
    }
    assert!(compared > 100, "only {compared} faces compared");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// dlib's boxes: `(file, [x1, y1, x2, y2])`.
fn labelled_boxes(xml: &Path) -> Vec<(String, [f32; 4])> {
    let text = std::fs::read_to_string(xml).unwrap();
    let attr = |tag: &str, name: &str| -> Option<f32> {
        let key = format!("{name}='");
        let start = tag.find(&key)? + key.len();
        tag[start..].split('\'').next()?.parse().ok()
    };
    let mut out = Vec::new();
    let mut file = String::new();
    for tag in text.split('<') {
        if let Some(rest) = tag.strip_prefix("image file='") {
            file = rest.split('\'').next().unwrap().to_owned();
        } else if tag.starts_with("box ") && !tag.contains("ignore='1'") {
            let (t, l) = (attr(tag, "top").unwrap(), attr(tag, "left").unwrap());
            let (w, h) = (attr(tag, "width").unwrap(), attr(tag, "height").unwrap());
            out.push((file.clone(), [l, t, l + w, t + h]));
        }
    }
    out
}

#[test]
fn recall_on_dlib_labelled_faces() {
    let dir = faces_dir();
    let mut labels = labelled_boxes(&dir.join("training.xml"));
    labels.extend(labelled_boxes(&dir.join("testing.xml")));
    let mut files: Vec<String> = labels.iter().map(|(f, _)| f.clone()).collect();
    files.sort();
    files.dedup();
    let det = detector(20.0);
    let (mut found, mut detections, mut true_dets) = (0, 0, 0);
    for file in &files {
        let dets = det.detect(&Frame::open(dir.join(file)).unwrap()).unwrap();
        let boxes: Vec<[f32; 4]> = labels
            .iter()
            .filter(|(f, _)| f == file)
            .map(|(_, b)| *b)
            .collect();
        found += boxes
            .iter()
            .filter(|b| dets.iter().any(|d| d.iou(b) >= 0.5))
            .count();
        detections += dets.len();
        true_dets += dets
            .iter()
            .filter(|d| boxes.iter().any(|b| d.iou(b) >= 0.5))
            .count();
    }
    let recall = found as f32 / labels.len() as f32;
    let precision = true_dets as f32 / detections.max(1) as f32;
    println!(
        "recall {recall:.3} ({found}/{}), precision {precision:.3} ({true_dets}/{detections}) at IoU 0.5, min face 20",
        labels.len()
    );
    assert!(labels.len() >= 40, "{} labelled boxes", labels.len());
    assert!(recall >= 0.95, "recall {recall}");
}

#[test]
fn dogs_are_not_faces() {
    let frame = Frame::open(faces_dir().join("dogs.jpg")).unwrap();
    for min in [20.0, 40.0] {
        assert!(detector(min).detect(&frame).unwrap().is_empty());
    }
}

#[test]
fn bad_input_gives_errors_or_nothing() {
    let det = detector(40.0);
    // Tiny frames: no pyramid level fits, no face, no panic.
    for (w, h) in [(1, 1), (1, 500), (11, 11), (47, 13)] {
        let f = Frame::new(w, h, PixelFormat::Rgb8, vec![90; w * h * 3]).unwrap();
        assert!(det.detect(&f).unwrap().is_empty());
    }
    // Huge and flat: shrunk to max_side first, no face.
    let huge = Frame::new(8000, 8000, PixelFormat::Gray8, vec![128; 8000 * 8000]).unwrap();
    assert!(det.detect(&huge).unwrap().is_empty());
    // Empty frames and wrong byte counts cannot be built.
    assert!(Frame::new(0, 0, PixelFormat::Rgb8, vec![]).is_err());
    assert!(Frame::new(4, 4, PixelFormat::Rgba8, vec![0; 48]).is_err());
    // A truncated JPEG is an error naming the file.
    let bytes = std::fs::read(faces_dir().join("2008_002506.jpg")).unwrap();
    let cut = std::env::temp_dir().join(format!("truncated-{}.jpg", std::process::id()));
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let err = Frame::open(&cut);
    std::fs::remove_file(&cut).unwrap();
    match err {
        Err(e) => assert!(e.to_string().contains("truncated-"), "{e}"),
        // Some decoders fill the missing rows with gray: that is also fine,
        // as long as detection then runs.
        Ok(f) => {
            det.detect(&f).unwrap();
        }
    }
}

#[test]
fn gray_and_rgba_frames_work_like_rgb() {
    let rgb = Frame::open(faces_dir().join("2008_002506.jpg")).unwrap();
    let det = detector(40.0);
    let want = det.detect(&rgb).unwrap();
    assert_eq!(want.len(), 3);
    let rgba: Vec<u8> = rgb
        .data()
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect();
    let rgba = Frame::new(rgb.width(), rgb.height(), PixelFormat::Rgba8, rgba).unwrap();
    assert_eq!(det.detect(&rgba).unwrap(), want);
    let gray: Vec<u8> = rgb
        .data()
        .chunks_exact(3)
        .map(|p| {
            (0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])) as u8
        })
        .collect();
    let gray = Frame::new(rgb.width(), rgb.height(), PixelFormat::Gray8, gray).unwrap();
    let found = det.detect(&gray).unwrap();
    // The same three people, found in gray too.
    assert_eq!(found.len(), 3);
    for d in &found {
        assert!(want.iter().any(|w| w.iou(&d.bbox) > 0.7));
    }
}

/// Refinement alone (O-Net on the last boxes) finds the faces MTCNN finds in
/// every photo of the shared set, on the same frame and on the frame shifted
/// by a few pixels (a face that moved), and the follower runs the detector
/// only when it must.
#[test]
fn refinement_follows_the_faces_the_detector_finds() {
    let dir = faces_dir();
    let det = detector(40.0);
    let (mut faces, mut followed) = (0, 0);
    let (mut ious, mut landmark_err) = (Vec::new(), Vec::new());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    for path in &files {
        let frame = Frame::open(path).unwrap();
        let found = det.detect(&frame).unwrap();
        // Same frame: the same faces (O-Net regresses again from the final
        // boxes, so they move a little, not much).
        let again = det.refine(&frame, &found).unwrap();
        for d in &found {
            faces += 1;
            let Some(r) = again.iter().find(|r| r.iou(&d.bbox) > 0.5) else {
                continue;
            };
            followed += 1;
            ious.push(r.iou(&d.bbox));
            let side = (d.bbox[2] - d.bbox[0]).max(1.0);
            for (a, b) in r.landmarks.iter().zip(&d.landmarks) {
                landmark_err.push((a[0] - b[0]).hypot(a[1] - b[1]) / side);
            }
        }
        // Shifted by (6, 4): refinement from the old boxes still lands on
        // the faces the detector finds in the shifted frame.
        let (w, h) = (frame.width() - 6, frame.height() - 4);
        let shifted = frame.crop(6, 4, w, h).unwrap();
        let want = det.detect(&shifted).unwrap();
        let got = det.refine(&shifted, &found).unwrap();
        for g in &got {
            let best = want.iter().map(|d| d.iou(&g.bbox)).fold(0.0, f32::max);
            assert!(best > 0.6, "{}: {g:?} matches no detection", path.display());
        }
    }
    assert!(faces >= 10, "only {faces} faces in the shared set");
    assert!(
        followed as f32 >= 0.9 * faces as f32,
        "refinement kept {followed} of {faces} faces"
    );
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    assert!(mean(&ious) > 0.85, "mean IoU {}", mean(&ious));
    // Landmarks: within 5% of the face's width on average.
    assert!(mean(&landmark_err) < 0.05, "{}", mean(&landmark_err));
    assert!(
        det.refine(&Frame::open(&files[0]).unwrap(), &[])
            .unwrap()
            .is_empty()
    );
}

#[test]
fn engine_and_candle_graphs_find_the_same_faces() {
    // Every photo of faces-fullframe through the engine (the default) and
    // through the candle graphs it replaced: the same faces, boxes and
    // landmarks to 1e-2 px, scores to 1e-4.
    let mut engine = detector(40.0);
    let mut reference = detector(40.0);
    engine.set_reference_path(false);
    reference.set_reference_path(true);
    let mut files: Vec<_> = std::fs::read_dir(faces_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("png"))
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "too few photos in faces-fullframe");
    let mut faces = 0;
    for file in &files {
        let frame = Frame::open(file).unwrap();
        let (a, b) = (
            engine.detect(&frame).unwrap(),
            reference.detect(&frame).unwrap(),
        );
        assert_eq!(a.len(), b.len(), "{}", file.display());
        for (x, y) in a.iter().zip(&b) {
            let points = x
                .landmarks
                .iter()
                .flatten()
                .zip(y.landmarks.iter().flatten());
            let worst = x
                .bbox
                .iter()
                .zip(&y.bbox)
                .chain(points)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-2, "{}: {worst} px apart", file.display());
            assert!((x.score - y.score).abs() < 1e-4, "{}", file.display());
        }
        faces += a.len();
    }
    eprintln!(
        "{} photos, {faces} faces, engine == candle graphs",
        files.len()
    );
}

/// A copy of `frame` (RGB) with the boxes filled grey, each grown by a fifth.
fn without(frame: &Frame, boxes: &[&Detection]) -> Frame {
    let (w, h) = (frame.width(), frame.height());
    let mut rgb = frame.to_rgb8();
    for d in boxes {
        let [x1, y1, x2, y2] = d.bbox;
        let (gx, gy) = ((x2 - x1) * 0.2, (y2 - y1) * 0.2);
        let clip = |v: f32, max: usize| (v.max(0.0) as usize).min(max);
        for y in clip(y1 - gy, h)..clip(y2 + gy, h) {
            for x in clip(x1 - gx, w)..clip(x2 + gx, w) {
                rgb[(y * w + x) * 3..][..3].fill(127);
            }
        }
    }
    Frame::new(w, h, PixelFormat::Rgb8, rgb).unwrap()
}

/// The follower's periodic detection in the background: a face that enters
/// is found within a period and a few slices, no followed frame runs the
/// whole detector, and a caller that never gives it time still gets the
/// new faces (then on one frame, as without the background).
#[test]
fn the_follower_finds_entering_faces_in_the_background() {
    let frame = Frame::open(faces_dir().join("2008_002506.jpg")).unwrap();
    let pipeline = perception::Pipeline::new(
        detector(40.0),
        perception::Classifier::from_file(repo().join("assets/models/arch1_fer2013.safetensors"))
            .unwrap(),
        8,
    );
    let all = pipeline.detector().detect(&frame).unwrap();
    assert!(all.len() >= 2, "{} faces", all.len());
    let alone = without(&frame, &all.iter().skip(1).collect::<Vec<_>>());
    assert_eq!(pipeline.detector().detect(&alone).unwrap().len(), 1);

    // A detection job stepped to its end is `detect`, in several slices.
    let det = pipeline.detector();
    let mut job = det.start_detection(&frame).unwrap();
    let mut slices = 1;
    while !det.step_detection(&mut job).unwrap() {
        slices += 1;
    }
    assert!(slices >= 2, "{slices} slice");
    assert_eq!(job.take_result().unwrap(), all);

    let every = 5;
    for give_time in [true, false] {
        let mut follower = perception::FaceFollower::new(perception::FollowConfig {
            detect_every: every,
            detect_after: None,
            background_detection: true,
        });
        let mut found_at = None;
        let mut full_detections = Vec::new();
        for i in 0..40 {
            let f = if i < 10 { &alone } else { &frame };
            let (faces, ran) = follower.process(&pipeline, f).unwrap();
            if ran {
                full_detections.push(i);
            }
            if i < 10 {
                assert_eq!(faces.faces.len(), 1, "frame {i}");
            } else if found_at.is_none() && faces.faces.len() == all.len() {
                found_at = Some(i);
                for d in &all {
                    assert!(
                        faces.faces.iter().any(|g| g.detection.iou(&d.bbox) > 0.5),
                        "{d:?} not followed"
                    );
                }
            }
            if give_time {
                while follower.work(&pipeline).unwrap() {}
            }
        }
        let found_at = found_at.expect("the entering faces were never found");
        if give_time {
            assert_eq!(full_detections, [0], "only the first frame detects");
            assert!(
                found_at <= 10 + every as usize + 1,
                "found at frame {found_at}"
            );
        } else {
            assert!(full_detections.len() > 1, "{full_detections:?}");
            assert!(
                found_at <= 10 + 2 * every as usize + 1,
                "found at frame {found_at}"
            );
        }
        assert!(!follower.has_work() || !give_time);
    }
}

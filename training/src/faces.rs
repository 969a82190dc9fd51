//! `training predict` and `training preprocess`: the face pipeline (MTCNN
//! detection, alignment, classification) on image files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use perception::crop::{face_crop, whole_image_crop};
use perception::{
    CalibrationConfig, Classifier, Detector, DetectorConfig, Frame, GrayCrop, NeutralBaseline,
    Pipeline, YuNet, default_classifier_path, default_detector_path, default_yunet_path,
};
use serde_json::{Map, Value, json};

use crate::annotate;
use crate::output::line;

/// Detector options shared by `predict` and `preprocess`.
#[derive(Debug, Clone, Args)]
pub struct DetectArgs {
    /// MTCNN weights [default: assets/models/mtcnn.safetensors, see README for
    /// how assets are found].
    #[arg(long)]
    detector: Option<PathBuf>,
    /// Smallest face side to look for, in pixels.
    #[arg(long, default_value_t = 40.0)]
    min_face: f32,
    /// What searches each image for faces: `mtcnn` (P-Net pyramid and
    /// R-Net, as facenet-pytorch) or `yunet` (YuNet proposals,
    /// `assets/models/yunet.safetensors`, about 4x faster); O-Net gives the
    /// final boxes and landmarks either way.
    #[arg(long, value_enum, default_value_t = FinderArg::Mtcnn)]
    finder: FinderArg,
}

/// `--finder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FinderArg {
    /// YuNet, then O-Net.
    Yunet,
    /// MTCNN's cascade.
    Mtcnn,
}

impl FinderArg {
    /// `detector` with YuNet searching whole frames, or as it is.
    pub fn apply(self, detector: Detector) -> Result<Detector> {
        Ok(match self {
            Self::Mtcnn => detector,
            Self::Yunet => {
                let path = default_yunet_path();
                let net = YuNet::from_file(&path)
                    .with_context(|| format!("loading YuNet {}", path.display()))?;
                detector.with_yunet(net)
            }
        })
    }
}

impl DetectArgs {
    fn load(&self) -> Result<Detector> {
        let path = self.detector.clone().unwrap_or_else(default_detector_path);
        let detector = Detector::from_file(
            &path,
            DetectorConfig {
                min_face_size: self.min_face,
                ..Default::default()
            },
        )
        .with_context(|| format!("loading the face detector {}", path.display()))?;
        self.finder.apply(detector)
    }
}

/// Options of `training predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// The classifier weights [default: assets/models/arch1_fer2013.safetensors].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Images (PNG or JPEG, any size or colour).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    #[command(flatten)]
    detect: DetectArgs,
    /// At most this many faces per image, largest first.
    #[arg(long, default_value_t = 20)]
    max_faces: usize,
    /// Treat each image as one face crop (no detection): resized to 48x48 gray,
    /// aligned to FER2013's framing first if it is already 48x48.
    #[arg(long)]
    crop: bool,
    /// Print one JSON object per face and line, and nothing else on stdout:
    /// `{"image", "box": [x, y, w, h], "score", "landmarks", "label", "probs"}`.
    #[arg(long)]
    json: bool,
    /// Write a copy of the image with boxes, landmarks and labels: a PNG file
    /// for one image, or a folder (`<name>.png` per image) for several.
    #[arg(long, value_name = "OUT")]
    annotate: Option<PathBuf>,
    /// Neutral calibration: photos of the person's resting face (repeat the
    /// option or separate with commas). Their largest faces make one
    /// baseline (`perception::calibrate`) that corrects every face of the
    /// images: `label`/`probs` are then calibrated, with `raw_label`/
    /// `raw_probs` beside them.
    #[arg(long, value_name = "IMG", value_delimiter = ',')]
    neutral: Vec<PathBuf>,
}

fn load_classifier(model: &Option<PathBuf>) -> Result<Classifier> {
    let path = model.clone().unwrap_or_else(default_classifier_path);
    Classifier::from_file(&path).with_context(|| format!("loading weights {}", path.display()))
}

/// `class=p` for every class, to three decimals.
pub(crate) fn probs_text(classes: &[String], probs: &[f32]) -> String {
    classes
        .iter()
        .zip(probs)
        .map(|(n, p)| format!("{n}={p:.3}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn round(v: f32, decimals: i32) -> f64 {
    let k = 10f64.powi(decimals);
    (f64::from(v) * k).round() / k
}

/// Runs `training predict`.
pub fn predict(args: &PredictArgs) -> Result<()> {
    let classifier = load_classifier(&args.model)?;
    if args.annotate.is_some() && args.crop {
        bail!("--annotate draws detected faces: it cannot be used with --crop");
    }
    let annotate_dir = match &args.annotate {
        Some(out) if args.images.len() > 1 => {
            std::fs::create_dir_all(out)
                .with_context(|| format!("creating the folder {}", out.display()))?;
            true
        }
        _ => false,
    };
    let detector = args.detect.load()?;
    let pipeline = Pipeline::new(detector, classifier, args.max_faces);
    let classes = pipeline.classifier().classes().to_vec();
    let baseline = neutral_baseline(args, &pipeline, &classes)?;
    let mut failed = 0;
    for path in &args.images {
        if let Err(e) = predict_one(
            args,
            &pipeline,
            &classes,
            baseline.as_ref(),
            path,
            annotate_dir,
        ) {
            tracing::error!("{}: {e:#}", path.display());
            failed += 1;
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} images could not be processed",
            args.images.len()
        );
    }
    Ok(())
}

/// The probabilities of the largest face of `frame` (or of the whole image
/// with --crop); `None` when there is no face.
fn main_face_probs(
    args: &PredictArgs,
    pipeline: &Pipeline,
    frame: &Frame,
) -> Result<Option<Vec<f32>>> {
    if args.crop {
        let crop = crop_of(pipeline.detector(), frame)?;
        return Ok(Some(pipeline.classifier().classify(&[crop])?.remove(0)));
    }
    Ok(pipeline.process(frame)?.into_iter().next().map(|f| f.probs))
}

/// `--neutral`: one baseline from the largest face of each image; an image
/// without a face is reported and skipped, none at all is an error.
fn neutral_baseline(
    args: &PredictArgs,
    pipeline: &Pipeline,
    classes: &[String],
) -> Result<Option<NeutralBaseline>> {
    if args.neutral.is_empty() {
        return Ok(None);
    }
    let mut samples = Vec::new();
    for path in &args.neutral {
        let frame = Frame::open(path)?;
        match main_face_probs(args, pipeline, &frame)? {
            Some(p) => samples.push(p),
            None => tracing::warn!("--neutral {}: no face found, skipped", path.display()),
        }
    }
    let config = CalibrationConfig {
        min_frames: 1,
        ..CalibrationConfig::default()
    };
    let baseline =
        NeutralBaseline::from_samples(classes, &samples, &config).with_context(|| {
            format!(
                "no neutral baseline from {} --neutral image(s)",
                args.neutral.len()
            )
        })?;
    tracing::info!(
        "neutral baseline from {} face(s): {}",
        baseline.frames,
        probs_text(classes, &baseline.probs)
    );
    Ok(Some(baseline))
}

/// The label and probabilities of one face as JSON fields: calibrated ones
/// as `label`/`probs` with the raw ones beside when there is a baseline.
fn label_fields(
    classes: &[String],
    raw: &[f32],
    baseline: Option<&NeutralBaseline>,
) -> Map<String, Value> {
    let mut m = Map::new();
    let cal = baseline.map(|b| b.calibrate(raw, &CalibrationConfig::default()));
    let probs = cal.as_deref().unwrap_or(raw);
    m.insert("label".into(), json!(classes[perception::argmax(probs)]));
    m.insert("probs".into(), probs_map(classes, probs));
    if cal.is_some() {
        m.insert("raw_label".into(), json!(classes[perception::argmax(raw)]));
        m.insert("raw_probs".into(), probs_map(classes, raw));
    }
    m
}

/// The text form of [`label_fields`].
fn label_text(classes: &[String], raw: &[f32], baseline: Option<&NeutralBaseline>) -> String {
    let show = |p: &[f32]| {
        let b = perception::argmax(p);
        format!("{} ({:.3}) [{}]", classes[b], p[b], probs_text(classes, p))
    };
    match baseline {
        Some(b) => format!(
            "{}, raw {}",
            show(&b.calibrate(raw, &CalibrationConfig::default())),
            show(raw)
        ),
        None => show(raw),
    }
}

fn predict_one(
    args: &PredictArgs,
    pipeline: &Pipeline,
    classes: &[String],
    baseline: Option<&NeutralBaseline>,
    path: &Path,
    annotate_dir: bool,
) -> Result<()> {
    let frame = Frame::open(path)?;
    let shown = path.display();
    if args.crop {
        let Some(probs) = main_face_probs(args, pipeline, &frame)? else {
            bail!("{shown}: no face");
        };
        if args.json {
            let mut m = Map::new();
            m.insert("image".into(), json!(shown.to_string()));
            m.extend(label_fields(classes, &probs, baseline));
            line(Value::Object(m));
        } else {
            line(format!(
                "{shown}: {}",
                label_text(classes, &probs, baseline)
            ));
        }
        return Ok(());
    }
    let faces = pipeline.process(&frame)?;
    if faces.is_empty() {
        if args.json {
            tracing::warn!("{shown}: no face found");
        } else {
            line(format!("{shown}: no face found"));
        }
    }
    for (i, face) in faces.iter().enumerate() {
        let d = &face.detection;
        let [x, y, w, h] = d.xywh();
        if args.json {
            let mut m = Map::new();
            m.insert("image".into(), json!(shown.to_string()));
            m.insert(
                "box".into(),
                json!([round(x, 1), round(y, 1), round(w, 1), round(h, 1)]),
            );
            m.insert("score".into(), json!(round(d.score, 4)));
            m.insert(
                "landmarks".into(),
                json!(
                    d.landmarks
                        .iter()
                        .map(|[lx, ly]| [round(*lx, 1), round(*ly, 1)])
                        .collect::<Vec<_>>()
                ),
            );
            m.extend(label_fields(classes, &face.probs, baseline));
            line(Value::Object(m));
        } else {
            line(format!(
                "{shown}: face {} box [{x:.0}, {y:.0}, {w:.0}, {h:.0}] score {:.3}: {}",
                i + 1,
                d.score,
                label_text(classes, &face.probs, baseline)
            ));
        }
    }
    if let Some(out) = &args.annotate {
        let mut img =
            image::RgbImage::from_raw(frame.width() as u32, frame.height() as u32, frame.to_rgb8())
                .context("image buffer")?;
        for face in &faces {
            let label = format!("{} {:.2}", classes[face.label()], face.confidence());
            annotate::face(
                &mut img,
                face.detection.bbox,
                &face.detection.landmarks,
                &label,
                annotate::class_colour(face.label()),
            );
        }
        let target = if annotate_dir {
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
            out.join(format!("{stem}.png"))
        } else {
            out.clone()
        };
        img.save(&target)
            .with_context(|| format!("writing {}", target.display()))?;
        tracing::info!("annotated copy written to {}", target.display());
    }
    Ok(())
}

fn probs_map(classes: &[String], probs: &[f32]) -> Value {
    let mut m = Map::new();
    for (c, p) in classes.iter().zip(probs) {
        m.insert(c.clone(), json!(round(*p, 4)));
    }
    Value::Object(m)
}

/// A whole image taken as one face ([`whole_image_crop`]): 48x48 crops are
/// aligned (landmarks found on an upscaled copy), anything else is squared
/// and resized.
fn crop_of(detector: &Detector, frame: &Frame) -> Result<GrayCrop> {
    Ok(whole_image_crop(detector, frame)?.0)
}

/// Options of `training preprocess`.
#[derive(Debug, Args)]
pub struct PreprocessArgs {
    /// A folder of class sub-folders of images (CK+, your own photos, ...).
    #[arg(long)]
    input: PathBuf,
    /// Where the 48x48 aligned gray crops go, in the same class sub-folders
    /// (created; existing files with the same names are replaced).
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    detect: DetectArgs,
    /// Images with several faces: keep the largest (default) or skip the image.
    #[arg(long, value_enum, default_value = "largest")]
    several: Several,
}

/// What to do with images where several faces are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Several {
    /// Keep the largest face.
    Largest,
    /// Skip the image.
    Skip,
}

/// Runs `training preprocess`.
pub fn preprocess(args: &PreprocessArgs) -> Result<()> {
    let detector = args.detect.load()?;
    let mut jobs = Vec::new();
    let mut classes: Vec<_> = std::fs::read_dir(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .collect();
    classes.sort_by_key(|e| e.file_name());
    if classes.is_empty() {
        bail!(
            "{} has no class sub-folders (expected INPUT/<class>/<image>)",
            args.input.display()
        );
    }
    for class in &classes {
        let mut files: Vec<PathBuf> = std::fs::read_dir(class.path())?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                    ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str())
                })
            })
            .collect();
        files.sort();
        for f in files {
            jobs.push((class.file_name(), f));
        }
    }
    let bar = indicatif::ProgressBar::new(jobs.len() as u64);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let (mut written, mut none, mut several, mut unreadable) =
        (0, Vec::new(), Vec::new(), Vec::new());
    for (class, path) in &jobs {
        bar.inc(1);
        let frame = match Frame::open(path) {
            Ok(f) => f,
            Err(e) => {
                unreadable
                    .push(json!({"image": path.display().to_string(), "error": e.to_string()}));
                continue;
            }
        };
        let crop = if frame.width() == 48 && frame.height() == 48 {
            let (crop, aligned) = whole_image_crop(&detector, &frame)?;
            if !aligned {
                none.push(path.display().to_string());
            }
            crop
        } else {
            let dets = detector.detect(&frame)?;
            match dets.len() {
                0 => {
                    none.push(path.display().to_string());
                    continue;
                }
                1 => {}
                n => {
                    several.push(json!({"image": path.display().to_string(), "faces": n}));
                    if args.several == Several::Skip {
                        continue;
                    }
                }
            }
            face_crop(&frame, &dets[0].landmarks)?
        };
        let dir = args.output.join(class);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
        let target = dir.join(format!("{stem}.png"));
        image::GrayImage::from_raw(48, 48, crop.pixels().to_vec())
            .context("crop buffer")?
            .save(&target)
            .with_context(|| format!("writing {}", target.display()))?;
        written += 1;
    }
    bar.finish_and_clear();
    let report = json!({
        "input": args.input.display().to_string(),
        "images": jobs.len(),
        "written": written,
        "no_face": none,
        "several_faces": several,
        "several_policy": format!("{:?}", args.several).to_lowercase(),
        "unreadable": unreadable,
        "min_face": args.detect.min_face,
    });
    std::fs::create_dir_all(&args.output)?;
    let report_path = args.output.join("preprocess_report.json");
    std::fs::write(&report_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", report_path.display()))?;
    for p in report["no_face"].as_array().into_iter().flatten() {
        line(format!("no face: {}", p.as_str().unwrap_or_default()));
    }
    for s in report["several_faces"].as_array().into_iter().flatten() {
        line(format!(
            "several faces ({}): {}",
            s["faces"],
            s["image"].as_str().unwrap_or_default()
        ));
    }
    for u in &unreadable {
        line(format!(
            "unreadable: {} ({})",
            u["image"].as_str().unwrap_or_default(),
            u["error"].as_str().unwrap_or_default()
        ));
    }
    line(format!(
        "{written} of {} images written to {} ({} without a face, {} with several, {} unreadable); report: {}",
        jobs.len(),
        args.output.display(),
        report["no_face"].as_array().map_or(0, Vec::len),
        report["several_faces"].as_array().map_or(0, Vec::len),
        unreadable.len(),
        report_path.display()
    ));
    if written == 0 {
        bail!(
            "no crop was written: none of the {} images gave a usable face (see {})",
            jobs.len(),
            report_path.display()
        );
    }
    Ok(())
}

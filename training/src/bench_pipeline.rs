//! `training bench-pipeline`: the whole face pipeline (MTCNN detection,
//! alignment, classification) on one 640x480 frame with one face, stage by
//! stage. The frame is built as `tools/mtcnn_bench.py` builds it for
//! facenet-pytorch (`tools/mtcnn_bench_frame.json`): the Tom Cruise photo of
//! `faces-fullframe`, resized by integer nearest neighbour into 640x480 on gray.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Args;
use perception::crop::face_crop;
use perception::{
    Classifier, Detector, DetectorConfig, Frame, PixelFormat, default_classifier_path,
    default_detector_path,
};

use crate::output::line;

/// Options of `training bench-pipeline`.
#[derive(Debug, Args)]
pub struct BenchPipelineArgs {
    /// The source photo [default: ../shared/data/faces-fullframe/Tom_Cruise_avp_2014_4.jpg].
    #[arg(long)]
    image: Option<PathBuf>,
    /// Classifier weights [default: assets/models/arch1_fer2013.safetensors; random
    /// ARCH-1 weights when that file does not exist yet, which time the same].
    #[arg(long)]
    model: Option<PathBuf>,
    /// CPU threads (`RAYON_NUM_THREADS`).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Smallest face side the detector looks for (facenet-pytorch's default is 20).
    #[arg(long, default_value_t = 20.0)]
    min_face: f32,
    /// Timed runs after the warm-up.
    #[arg(long, default_value_t = 30)]
    runs: usize,
}

/// The 640x480 letterboxed frame of `tools/mtcnn_bench_frame.json`.
fn bench_frame(src: &Frame) -> Result<Frame> {
    const W: usize = 640;
    const H: usize = 480;
    let (sw, sh) = (src.width(), src.height());
    let (nw, nh) = if sw * H > W * sh {
        (W, (sh * W + sw / 2) / sw)
    } else {
        ((sw * H + sh / 2) / sh, H)
    };
    let (x0, y0) = ((W - nw) / 2, (H - nh) / 2);
    let rgb = src.to_rgb8();
    let mut out = vec![127u8; W * H * 3];
    for y in 0..nh {
        let sy = ((2 * y + 1) * sh) / (2 * nh);
        for x in 0..nw {
            let sx = ((2 * x + 1) * sw) / (2 * nw);
            let s = (sy * sw + sx) * 3;
            let d = ((y0 + y) * W + x0 + x) * 3;
            out[d..d + 3].copy_from_slice(&rgb[s..s + 3]);
        }
    }
    Ok(Frame::new(W, H, PixelFormat::Rgb8, out)?)
}

fn median_ms(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

/// Runs `training bench-pipeline`.
#[expect(unsafe_code, reason = "set_var before any thread pool exists")]
pub fn run(args: &BenchPipelineArgs) -> Result<()> {
    ensure!(args.threads > 0, "--threads must be at least 1");
    ensure!(args.runs > 0, "--runs must be at least 1");
    // SAFETY: set before any thread pool exists (nothing has run yet).
    unsafe { std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string()) };
    let image = match &args.image {
        Some(p) => p.clone(),
        None => training::data::shared_data("faces-fullframe/Tom_Cruise_avp_2014_4.jpg")?,
    };
    let frame = bench_frame(&Frame::open(&image)?)?;
    let detector = Detector::from_file(
        default_detector_path(),
        DetectorConfig {
            min_face_size: args.min_face,
            ..Default::default()
        },
    )
    .context("loading the detector")?;
    let model = args.model.clone().unwrap_or_else(default_classifier_path);
    let classifier = if model.is_file() {
        Classifier::from_file(&model)?
    } else {
        tracing::warn!(
            "{} not found: timing random ARCH-1 weights",
            model.display()
        );
        Classifier::untrained(models::Arch::Arch1)?
    };
    let (mut det_t, mut align_t, mut cls_t, mut total_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut faces = 0;
    for i in 0..args.runs + 3 {
        let t0 = Instant::now();
        let dets = detector.detect(&frame)?;
        let t1 = Instant::now();
        let crops = dets
            .iter()
            .map(|d| face_crop(&frame, &d.landmarks))
            .collect::<Result<Vec<_>, _>>()?;
        let t2 = Instant::now();
        let probs = classifier.classify(&crops)?;
        let t3 = Instant::now();
        std::hint::black_box(probs);
        faces = dets.len();
        if i >= 3 {
            det_t.push(t1 - t0);
            align_t.push(t2 - t1);
            cls_t.push(t3 - t2);
            total_t.push(t3 - t0);
        }
    }
    line(format!(
        "frame 640x480 faces: {faces} threads: {} min_face: {}",
        args.threads, args.min_face
    ));
    line(format!("detect median_ms: {:.2}", median_ms(&mut det_t)));
    line(format!("align median_ms: {:.3}", median_ms(&mut align_t)));
    line(format!("classify median_ms: {:.3}", median_ms(&mut cls_t)));
    line(format!(
        "pipeline 640x480 median_ms: {:.2}",
        median_ms(&mut total_t)
    ));
    Ok(())
}

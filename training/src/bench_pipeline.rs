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
    Classifier, Detector, DetectorConfig, FaceFollower, FollowConfig, Frame, Pipeline, PixelFormat,
    Tta, default_classifier_path, default_detector_path,
};

use crate::faces::FinderArg;
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
    /// Video mode: a deterministic sequence made from the frame (the face
    /// pans, scales and rotates a few degrees from frame to frame), run
    /// frame by frame through the full detector (baseline) and through the
    /// face follower (detector only when needed, O-Net refinement between),
    /// alternated in the same process.
    #[arg(long)]
    video: bool,
    /// Video mode: frames in the sequence.
    #[arg(long, default_value_t = 300)]
    frames: usize,
    /// Video mode: the follower runs the full detector at least every this
    /// many frames.
    #[arg(long, default_value_t = 15)]
    detect_every: u32,
    /// Video mode: run the periodic detection on the due frame itself
    /// instead of in slices between frames (`FollowConfig::background_detection`
    /// off), for comparison.
    #[arg(long)]
    sync_detection: bool,
    /// Video mode: what searches whole frames for the follower: `yunet`
    /// (YuNet proposals verified by O-Net) or `mtcnn` (the P-Net pyramid
    /// and R-Net, then O-Net).
    #[arg(long, value_enum, default_value_t = FinderArg::Yunet)]
    finder: FinderArg,
}

/// The benchmark video's motion at frame `i`: a smooth pan (up to 40 x 20
/// px), scale (up to 8%) and rotation (up to 4 degrees) about the centre of
/// a `w` x `h` frame.
#[derive(Debug, Clone, Copy)]
struct Motion {
    centre: [f32; 2],
    shift: [f32; 2],
    scale: f32,
    sin: f32,
    cos: f32,
}

impl Motion {
    fn at(i: usize, w: usize, h: usize) -> Self {
        let t = i as f32;
        let tau = std::f32::consts::TAU;
        let (sin, cos) = (4f32.to_radians() * (tau * t / 120.0).sin()).sin_cos();
        Self {
            centre: [w as f32 / 2.0, h as f32 / 2.0],
            shift: [
                40.0 * (tau * t / 150.0).sin(),
                20.0 * (tau * t / 97.0).sin(),
            ],
            scale: 1.0 + 0.08 * (tau * t / 200.0).sin(),
            sin,
            cos,
        }
    }

    /// Where a point of frame `i` lies in the source photo.
    fn to_source(self, p: [f32; 2]) -> [f32; 2] {
        let [cx, cy] = self.centre;
        let u = (p[0] - cx - self.shift[0]) / self.scale;
        let v = (p[1] - cy - self.shift[1]) / self.scale;
        [
            self.cos * u + self.sin * v + cx,
            -self.sin * u + self.cos * v + cy,
        ]
    }

    /// Where a point of the source photo lies in frame `i` (the inverse of
    /// [`Motion::to_source`]).
    fn to_frame(self, s: [f32; 2]) -> [f32; 2] {
        let [cx, cy] = self.centre;
        let (ds, dt) = (s[0] - cx, s[1] - cy);
        let u = self.cos * ds - self.sin * dt;
        let v = self.sin * ds + self.cos * dt;
        [
            u * self.scale + cx + self.shift[0],
            v * self.scale + cy + self.shift[1],
        ]
    }
}

/// Frame `i` of the benchmark video: `base` moved by [`Motion::at`],
/// bilinear, gray outside.
fn video_frame(base: &Frame, i: usize) -> Result<Frame> {
    let (w, h) = (base.width(), base.height());
    let motion = Motion::at(i, w, h);
    let rgb = base.to_rgb8();
    let mut out = vec![127u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            // Inverse map: output pixel -> source position.
            let [sx, sy] = motion.to_source([x as f32, y as f32]);
            if sx < 0.0 || sy < 0.0 || sx >= (w - 1) as f32 || sy >= (h - 1) as f32 {
                continue;
            }
            let (x0, y0) = (sx as usize, sy as usize);
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            for c in 0..3 {
                let p = |xx: usize, yy: usize| f32::from(rgb[(yy * w + xx) * 3 + c]);
                let top = p(x0, y0) * (1.0 - fx) + p(x0 + 1, y0) * fx;
                let bottom = p(x0, y0 + 1) * (1.0 - fx) + p(x0 + 1, y0 + 1) * fx;
                out[(y * w + x) * 3 + c] = (top * (1.0 - fy) + bottom * fy).round() as u8;
            }
        }
    }
    Ok(Frame::new(w, h, PixelFormat::Rgb8, out)?)
}

/// A less noisy landmark reference than one detection: every frame's
/// per-frame detections mapped back into the source photo through the
/// video's known motion and averaged per face (the detector's noise shrinks
/// with the square root of the frame count; its bias stays), then mapped
/// forward into each frame.
#[derive(Debug, Default)]
struct Consensus {
    /// Per face: the sum of its landmarks in source coordinates, and count.
    faces: Vec<([[f64; 2]; 5], usize)>,
    /// Per matched face and frame: (frame, face, per-frame detection's
    /// landmarks, the follower's).
    pairs: Vec<(usize, usize, [[f32; 2]; 5], [[f32; 2]; 5])>,
}

impl Consensus {
    /// Adds frame `i`'s per-frame detection `full` of a face and the
    /// follower's landmarks for it.
    fn add(&mut self, motion: &Motion, i: usize, full: &[[f32; 2]; 5], followed: &[[f32; 2]; 5]) {
        let source = full.map(|p| motion.to_source(p));
        let centre = |l: &[[f32; 2]; 5]| {
            let n = l.len() as f32;
            l.iter()
                .fold([0.0, 0.0], |a, p| [a[0] + p[0] / n, a[1] + p[1] / n])
        };
        let here = centre(&source);
        // The eye distance sets what counts as the same face.
        let eyes = (source[0][0] - source[1][0]).hypot(source[0][1] - source[1][1]);
        let slot = self.faces.iter().position(|(sum, n)| {
            let mean = sum.map(|p| [(p[0] / *n as f64) as f32, (p[1] / *n as f64) as f32]);
            let c = centre(&mean);
            (c[0] - here[0]).hypot(c[1] - here[1]) < eyes.max(1.0)
        });
        let slot = slot.unwrap_or_else(|| {
            self.faces.push(([[0.0; 2]; 5], 0));
            self.faces.len() - 1
        });
        let (sum, n) = &mut self.faces[slot];
        for (s, p) in sum.iter_mut().zip(&source) {
            s[0] += f64::from(p[0]);
            s[1] += f64::from(p[1]);
        }
        *n += 1;
        self.pairs.push((i, slot, *full, *followed));
    }

    /// Mean distance (px, over the five points of every matched face and
    /// frame) of per-frame detection and of the follower from the
    /// consensus, in that order.
    fn errors(&self, w: usize, h: usize) -> (f32, f32) {
        let (mut full_e, mut followed_e, mut count) = (0f64, 0f64, 0usize);
        for (i, slot, full, followed) in &self.pairs {
            let (sum, n) = &self.faces[*slot];
            let motion = Motion::at(*i, w, h);
            for ((s, a), b) in sum.iter().zip(full).zip(followed) {
                let truth = motion.to_frame([(s[0] / *n as f64) as f32, (s[1] / *n as f64) as f32]);
                full_e += f64::from((a[0] - truth[0]).hypot(a[1] - truth[1]));
                followed_e += f64::from((b[0] - truth[0]).hypot(b[1] - truth[1]));
                count += 1;
            }
        }
        let count = count.max(1) as f64;
        ((full_e / count) as f32, (followed_e / count) as f32)
    }
}

/// `--video`: the follower (on `pipeline`) against per-frame MTCNN
/// detection (on `baseline`), frame by frame.
fn run_video(
    args: &BenchPipelineArgs,
    baseline: &Pipeline,
    pipeline: &Pipeline,
    base: &Frame,
) -> Result<()> {
    ensure!(args.frames >= 10, "--frames must be at least 10");
    let frames = (0..args.frames)
        .map(|i| video_frame(base, i))
        .collect::<Result<Vec<_>>>()?;
    let mut follower = FaceFollower::new(FollowConfig {
        detect_every: args.detect_every,
        // By frames only: the benchmark runs faster or slower than a camera.
        detect_after: None,
        background_detection: !args.sync_detection,
    });
    let (mut full_t, mut tracked_t, mut detector_t) = (Vec::new(), Vec::new(), Vec::new());
    let (mut latency_t, mut slice_t) = (Vec::new(), Vec::new());
    // The tracked path's parts, timed again on their own.
    let (mut refine_t, mut align_t, mut classify_t) = (Vec::new(), Vec::new(), Vec::new());
    let mut previous: Vec<perception::Detection> = Vec::new();
    let (mut ious, mut landmark_px) = (Vec::new(), Vec::new());
    let mut faces = 0;
    let mut consensus = Consensus::default();
    for (i, frame) in frames.iter().enumerate() {
        let motion = Motion::at(i, base.width(), base.height());
        if !previous.is_empty() {
            let r0 = Instant::now();
            let refined = pipeline.detector().refine(frame, &previous)?;
            let r1 = Instant::now();
            let crops = refined
                .iter()
                .map(|d| face_crop(frame, &d.landmarks))
                .collect::<Result<Vec<_>, _>>()?;
            let r2 = Instant::now();
            std::hint::black_box(pipeline.classifier().classify(&crops)?);
            let r3 = Instant::now();
            refine_t.push(r1 - r0);
            align_t.push(r2 - r1);
            classify_t.push(r3 - r2);
        }
        let t0 = Instant::now();
        let full = baseline.process_all(frame)?;
        let t1 = Instant::now();
        let (followed, ran_detector) = follower.process(pipeline, frame)?;
        let t2 = Instant::now();
        // The idle time before the next frame: one slice of a background
        // detection, as the plugin runs it.
        let sliced = follower.has_work();
        follower.work(pipeline)?;
        let t3 = Instant::now();
        full_t.push(t1 - t0);
        latency_t.push(t2 - t1);
        if sliced {
            slice_t.push(t3 - t2);
        }
        if ran_detector {
            detector_t.push(t2 - t1);
        } else {
            tracked_t.push(t2 - t1);
        }
        previous = followed.faces.iter().map(|f| f.detection.clone()).collect();
        faces = faces.max(full.faces.len());
        for f in &full.faces {
            let Some(g) = followed.faces.iter().max_by(|a, b| {
                a.detection
                    .iou(&f.detection.bbox)
                    .total_cmp(&b.detection.iou(&f.detection.bbox))
            }) else {
                ious.push(0.0);
                continue;
            };
            ious.push(g.detection.iou(&f.detection.bbox));
            consensus.add(&motion, i, &f.detection.landmarks, &g.detection.landmarks);
            for (a, b) in g.detection.landmarks.iter().zip(&f.detection.landmarks) {
                landmark_px.push((a[0] - b[0]).hypot(a[1] - b[1]));
            }
        }
    }
    ensure!(
        faces > 0,
        "no face in the video: give --image a photo with a face"
    );
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    let median = |v: &mut Vec<Duration>| if v.is_empty() { f64::NAN } else { median_ms(v) };
    let (full_ms, tracked_ms, detect_ms) = (
        median(&mut full_t),
        median(&mut tracked_t),
        median(&mut detector_t),
    );
    line(format!(
        "video {} frames 640x480, threads: {}, min_face: {}, detector every {} frames at most, finder: {:?}",
        args.frames, args.threads, args.min_face, args.detect_every, args.finder
    ));
    line(format!(
        "per-frame detection (baseline, same run) median_ms: {full_ms:.2}"
    ));
    line(format!(
        "follower: tracked frames {} median_ms {tracked_ms:.2} ({:.1}x faster than the baseline), detector frames {} median_ms {detect_ms:.2}",
        tracked_t.len(),
        full_ms / tracked_ms,
        detector_t.len()
    ));
    line(format!(
        "landmarks against per-frame detection: mean {:.2} px",
        mean(&landmark_px)
    ));
    let (full_e, followed_e) = consensus.errors(base.width(), base.height());
    line(format!(
        "landmarks against the consensus of per-frame detection ({} faces' detections averaged in the photo through the known motion): follower {followed_e:.2} px, per-frame detection {full_e:.2} px",
        consensus.faces.len()
    ));
    line(format!(
        "per-frame detection's own landmark jitter: {:.2} px mean when the frame shifts by 1-3 px (the reference above is this noisy)",
        detector_jitter(baseline, &frames[0])?
    ));
    line(format!(
        "tracked path parts (timed apart) median_ms: refine {:.3}, align {:.3}, classify {:.3}",
        median(&mut refine_t),
        median(&mut align_t),
        median(&mut classify_t)
    ));
    let busy = detector_t.len() + slice_t.len();
    let slice_ms = median(&mut slice_t);
    let slice_max = slice_t
        .iter()
        .max()
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    let p95_ms = percentile_ms(&mut latency_t, 0.95);
    let base_p95 = percentile_ms(&mut full_t, 0.95);
    line(format!(
        "frame latency (faces out) p95_ms: {p95_ms:.2} (baseline {base_p95:.2}); detection {}: {} slices between frames, median_ms {slice_ms:.2} max_ms {slice_max:.2}",
        if args.sync_detection {
            "on the due frame"
        } else {
            "in the background"
        },
        slice_t.len(),
    ));
    line(format!(
        "video 640x480 faces: {faces} tracked median_ms: {tracked_ms:.2} detect median_ms: {detect_ms:.2} detector_share: {:.3} mean_iou: {:.3}",
        busy as f64 / args.frames as f64,
        mean(&ious)
    ));
    Ok(())
}

/// How far per-frame detection's landmarks of the largest face move (mean
/// over the five points, after undoing the shift) when the frame is cropped
/// by every offset of 0-3 pixels in x and y: the detector's own noise.
fn detector_jitter(pipeline: &Pipeline, frame: &Frame) -> Result<f32> {
    let detector = pipeline.detector();
    let base = detector.detect(frame)?;
    let first = base.first().context("no face in the first video frame")?;
    let mut errs = Vec::new();
    for dx in 0..4 {
        for dy in 0..4 {
            if dx + dy == 0 {
                continue;
            }
            let shifted = frame.crop(dx, dy, frame.width() - 3, frame.height() - 3)?;
            let Some(d) = detector
                .detect(&shifted)?
                .into_iter()
                .max_by(|a, b| a.iou(&first.bbox).total_cmp(&b.iou(&first.bbox)))
            else {
                continue;
            };
            let e = d
                .landmarks
                .iter()
                .zip(&first.landmarks)
                .map(|(a, b)| (a[0] + dx as f32 - b[0]).hypot(a[1] + dy as f32 - b[1]))
                .sum::<f32>();
            errs.push(e / 5.0);
        }
    }
    Ok(errs.iter().sum::<f32>() / errs.len().max(1) as f32)
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

/// The `q` quantile (nearest rank) in milliseconds.
fn percentile_ms(v: &mut [Duration], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    let k = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[k].as_secs_f64() * 1e3
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
    let fast = FinderArg::Yunet.apply(detector.clone())?;
    if args.video {
        let follow = args.finder.apply(detector.clone())?;
        let baseline = Pipeline::new(detector, classifier.clone(), 4);
        let pipeline = Pipeline::new(follow, classifier, 4);
        return run_video(args, &baseline, &pipeline, &frame);
    }
    let (mut det_t, mut align_t, mut cls_t, mut total_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // The candle graphs the engine replaced, timed alternately in the same
    // process as the baseline.
    let mut reference = detector.clone();
    reference.set_reference_path(true);
    let (mut ref_t, mut fast_t) = (Vec::new(), Vec::new());
    let (mut faces, mut fast_iou) = (0, 0.0);
    for i in 0..args.runs + 3 {
        let r0 = Instant::now();
        let ref_faces = reference.detect(&frame)?;
        let r1 = Instant::now();
        let f0 = Instant::now();
        let fast_faces = fast.detect(&frame)?;
        let f1 = Instant::now();
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
        ensure!(
            ref_faces.len() == faces && fast_faces.len() == faces,
            "the engine found {faces} faces, the candle graphs {}, YuNet {}",
            ref_faces.len(),
            fast_faces.len()
        );
        fast_iou = dets
            .iter()
            .zip(&fast_faces)
            .map(|(a, b)| a.iou(&b.bbox))
            .fold(1.0f32, f32::min);
        if i >= 3 {
            ref_t.push(r1 - r0);
            fast_t.push(f1 - f0);
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
    let (det_ms, ref_ms) = (median_ms(&mut det_t), median_ms(&mut ref_t));
    line(format!(
        "detect median_ms: {det_ms:.2} (candle graphs {ref_ms:.2}: engine {:.2}x faster)",
        ref_ms / det_ms
    ));
    let fast_ms = median_ms(&mut fast_t);
    line(format!(
        "detect yunet median_ms: {fast_ms:.2} (candle graphs {ref_ms:.2}: {:.2}x faster; \
         engine {det_ms:.2}: {:.2}x; box IoU with the engine's >= {fast_iou:.3})",
        ref_ms / fast_ms,
        det_ms / fast_ms
    ));
    line(format!("align median_ms: {:.3}", median_ms(&mut align_t)));
    line(format!("classify median_ms: {:.3}", median_ms(&mut cls_t)));
    // Test-time augmentation at batch 1: one face's crop, each variant in
    // turn within every round (the same noise for all).
    if let Some(d) = detector.detect(&frame)?.first() {
        let crop = face_crop(&frame, &d.landmarks)?;
        let variants = [Tta::None, Tta::Flip, Tta::FlipShift];
        let nets: Vec<Classifier> = variants
            .iter()
            .map(|&t| classifier.clone().with_tta(t))
            .collect();
        let mut times = vec![Vec::new(); variants.len()];
        for i in 0..args.runs.max(20) + 3 {
            for (net, t) in nets.iter().zip(&mut times) {
                let t0 = Instant::now();
                std::hint::black_box(net.classify(std::slice::from_ref(&crop))?);
                if i >= 3 {
                    t.push(t0.elapsed());
                }
            }
        }
        let base = median_ms(&mut times[0]);
        for (v, t) in variants.iter().zip(&mut times) {
            let m = median_ms(t);
            line(format!(
                "classify batch-1 tta {v:?} median_ms: {m:.3} ({:.2}x none)",
                m / base
            ));
        }
    }
    line(format!(
        "pipeline 640x480 median_ms: {:.2}",
        median_ms(&mut total_t)
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_video_motion_maps_points_both_ways() {
        for i in [0, 17, 60, 149, 299] {
            let m = Motion::at(i, 640, 480);
            for p in [[0.0, 0.0], [320.0, 240.0], [101.5, 407.25]] {
                let back = m.to_frame(m.to_source(p));
                assert!((back[0] - p[0]).abs() < 1e-3 && (back[1] - p[1]).abs() < 1e-3);
            }
        }
        // Frame 0 is the photo itself.
        let m = Motion::at(0, 640, 480);
        assert_eq!(m.to_source([10.0, 20.0]), [10.0, 20.0]);
    }

    #[test]
    fn the_consensus_averages_out_noise_but_not_the_follower_error() {
        let (w, h) = (640, 480);
        let truth = [
            [300.0, 200.0],
            [340.0, 200.0],
            [320.0, 220.0],
            [305.0, 240.0],
            [335.0, 240.0],
        ];
        let mut c = Consensus::default();
        for i in 0..4 {
            let m = Motion::at(i * 7, w, h);
            let here = truth.map(|p| m.to_frame(p));
            // Detection noise of +-1 px that cancels over the frames; the
            // follower 2 px off to the right.
            let d = if i % 2 == 0 { 1.0 } else { -1.0 };
            let full = here.map(|p| [p[0] + d, p[1]]);
            let followed = here.map(|p| [p[0] + 2.0, p[1]]);
            c.add(&m, i * 7, &full, &followed);
        }
        // A second face far away gets its own slot.
        let m = Motion::at(0, w, h);
        let other = truth.map(|p| [p[0] + 200.0, p[1]]);
        c.add(&m, 0, &other, &other);
        assert_eq!(c.faces.len(), 2);
        let (full_e, followed_e) = c.errors(w, h);
        // Four noisy frames at 1 px and the exact second face: 4 / 5.
        assert!((full_e - 0.8).abs() < 0.05, "{full_e}");
        assert!((followed_e - 1.6).abs() < 0.05, "{followed_e}");
    }
}

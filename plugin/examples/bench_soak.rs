//! Soak benchmark: the plugin headless on a pushed source for many frames
//! with 0, 1, 3 and 20 faces a frame, printing resident memory at the start
//! and the end, the main thread's update time and the messages per second.
//!
//! ```text
//! cargo run -p bevy_emotion --example bench_soak -- [--frames 20000] [--faces 0,1,3,20]
//! ```
//!
//! Every update pushes a new frame (as fast as the app updates, not paced:
//! the most frames in the least time) and inference runs back to back on the
//! newest one (`inference_hz` 1000), so queues, tracks and messages are
//! stressed far beyond a 30 fps camera. Memory is read from
//! `/proc/self/statm` after a warm-up (until 20 frames were processed, so
//! every buffer of that face count exists), half-way and at the end; the
//! process exits non-zero when the second half grew it by more than
//! `--max-growth-mib` (steady growth is a leak; the first half still includes
//! the allocator settling).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bevy::prelude::*;
use bevy_emotion::prelude::*;
use clap::Parser;
use perception::{Frame, Pipeline, PipelineConfig, PixelFormat};

#[derive(Parser)]
#[command(about = "Soak test: thousands of frames through the plugin, memory and timing")]
struct Args {
    /// Frames per configuration.
    #[arg(long, default_value_t = 20_000)]
    frames: u64,
    /// Faces per frame, one configuration each.
    #[arg(long, value_delimiter = ',', default_value = "0,1,3,20")]
    faces: Vec<usize>,
    /// The photo the faces are cut from (the default is in ../shared/data).
    #[arg(long)]
    photo: Option<std::path::PathBuf>,
    /// Largest allowed growth of resident memory from warm-up to the end.
    #[arg(long, default_value_t = 16.0)]
    max_growth_mib: f64,
}

/// Resident memory of this process in MiB (Linux), or NaN.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |pages| pages * 4096.0 / (1 << 20) as f64)
}

/// A frame with `n` copies of `face` on a gray canvas: side by side for up
/// to 3, a 5-wide grid beyond (20 faces: 1000x960).
fn canvas(face: &Frame, n: usize) -> Frame {
    let (fw, fh) = (face.width(), face.height());
    let cols = if n > 3 { 5 } else { n.max(1) };
    let rows = n.div_ceil(cols).max(1);
    let (w, h) = ((cols * fw).max(640), (rows * fh).max(480));
    let mut rgb = vec![128u8; w * h * 3];
    let src = face.to_rgb8();
    for k in 0..n {
        let (x0, y0) = ((k % cols) * fw, (k / cols) * fh);
        for y in 0..fh {
            let d = ((y0 + y) * w + x0) * 3;
            rgb[d..d + fw * 3].copy_from_slice(&src[y * fw * 3..(y + 1) * fw * 3]);
        }
    }
    Frame::new(w, h, PixelFormat::Rgb8, rgb).expect("canvas size is valid")
}

/// Messages of every kind the plugin writes, counted.
#[derive(Resource, Default)]
struct Counts(BTreeMap<&'static str, u64>);

fn count(
    mut counts: ResMut<Counts>,
    mut detected: MessageReader<EmotionDetected>,
    mut changed: MessageReader<EmotionChanged>,
    mut appeared: MessageReader<FaceAppeared>,
    mut lost: MessageReader<FaceLost>,
) {
    let c = &mut counts.0;
    *c.entry("detected").or_default() += detected.read().count() as u64;
    *c.entry("changed").or_default() += changed.read().count() as u64;
    *c.entry("appeared").or_default() += appeared.read().count() as u64;
    *c.entry("lost").or_default() += lost.read().count() as u64;
}

struct Row {
    faces: usize,
    found: usize,
    rss_start: f64,
    rss_mid: f64,
    rss_end: f64,
    update_p50: f64,
    update_p99: f64,
    processed: u64,
    messages_per_s: f64,
    seconds: f64,
}

fn soak(pipeline: &Arc<Pipeline>, frame: &Frame, faces: usize, frames: u64) -> Row {
    let mut app = App::new();
    app.add_plugins(MinimalPlugins)
        .add_plugins(EmotionPlugin {
            settings: EmotionSettings {
                source: SourceKind::Pushed,
                inference_hz: 1000.0,
                max_faces: faces.max(1),
                ..default()
            },
            models: ModelSource::Preloaded(pipeline.clone()),
        })
        .insert_resource(EmotionConsent::Granted)
        .init_resource::<Counts>()
        .add_systems(Update, count.after(EmotionSystems::Publish));
    let found = pipeline.process(frame).map_or(0, |f| f.len());
    // Warm-up: until 20 frames went through inference (at most 20,000 updates).
    for _ in 0..20_000 {
        if app.world().resource::<EmotionStats>().frames_processed >= 20 {
            break;
        }
        app.world().resource::<FramePusher>().push(frame.clone());
        app.update();
    }
    app.world_mut().resource_mut::<Counts>().0.clear();
    let processed_before = app.world().resource::<EmotionStats>().frames_processed;
    let rss_start = rss_mib();
    let mut rss_mid = f64::NAN;
    let mut updates = Vec::with_capacity(frames as usize);
    let start = Instant::now();
    for i in 0..frames {
        if i == frames / 2 {
            rss_mid = rss_mib();
        }
        app.world().resource::<FramePusher>().push(frame.clone());
        let t = Instant::now();
        app.update();
        updates.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let seconds = start.elapsed().as_secs_f64();
    let rss_end = rss_mib();
    updates.sort_by(f64::total_cmp);
    let pct = |p: usize| updates[(updates.len() * p / 100).min(updates.len() - 1)];
    let messages: u64 = app.world().resource::<Counts>().0.values().sum();
    Row {
        faces,
        found,
        rss_start,
        rss_mid,
        rss_end,
        update_p50: pct(50),
        update_p99: pct(99),
        processed: app.world().resource::<EmotionStats>().frames_processed - processed_before,
        messages_per_s: messages as f64 / seconds,
        seconds,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if args.frames < 10 {
        return Err("--frames must be at least 10".into());
    }
    let photo = args.photo.clone().unwrap_or_else(|| {
        perception::assets_dir().join("../../shared/data/faces-fullframe/2008_002506.jpg")
    });
    let face = Frame::open(&photo)
        .map_err(|e| format!("{e} (pass --photo, or see ../shared/data)"))?
        .crop(288, 10, 200, 240)?;
    let models = perception::assets_dir().join("models");
    let pipeline = Arc::new(Pipeline::from_files(
        models.join("mtcnn.safetensors"),
        models.join("arch1_fer2013.safetensors"),
        PipelineConfig {
            max_faces: 20,
            ..PipelineConfig::default()
        },
    )?);
    println!(
        "{} frames per row after a warm-up of 20 processed frames, pushed every update, inference back to back",
        args.frames,
    );
    println!(
        "| faces (found) | frames processed | RSS start / mid / end MiB | growth in the second half MiB | update p50 ms | update p99 ms | messages/s | seconds |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut worst = 0f64;
    for &n in &args.faces {
        let frame = canvas(&face, n);
        let r = soak(&pipeline, &frame, n, args.frames);
        let growth = r.rss_end - r.rss_mid;
        worst = worst.max(growth);
        println!(
            "| {} ({}) | {} | {:.1} / {:.1} / {:.1} | {:+.1} | {:.3} | {:.3} | {:.0} | {:.0} |",
            r.faces,
            r.found,
            r.processed,
            r.rss_start,
            r.rss_mid,
            r.rss_end,
            growth,
            r.update_p50,
            r.update_p99,
            r.messages_per_s,
            r.seconds
        );
    }
    if worst > args.max_growth_mib {
        return Err(format!(
            "resident memory grew by {worst:.1} MiB in the second half of a row (limit {} MiB)",
            args.max_growth_mib
        )
        .into());
    }
    println!(
        "largest growth {worst:+.1} MiB (limit {} MiB)",
        args.max_growth_mib
    );
    Ok(())
}

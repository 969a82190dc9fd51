//! Benchmark: what the plugin costs the main thread, how long a frame takes
//! from capture to message, and how many faces per second it reads.
//!
//! ```text
//! cargo bench -p bevy_emotion --bench bench_plugin -- [PHOTO] [SECONDS] [UPDATE_HZ] [CAMERA_FPS] [INFERENCE_HZ]
//! ```
//!
//! `INFERENCE_HZ` is `EmotionSettings::inference_hz` (default: the camera's rate).
//! `--sync-detection` runs the follower's periodic detection on the due
//! frame instead of in slices between frames (`FollowConfig::background_detection`).
//! `--mtcnn-finder` searches whole frames with MTCNN's pyramid instead of
//! YuNet (the plugin's default, `ModelSource::Assets::finder`).
//!
//! A headless app is paced at `UPDATE_HZ` updates per second (default 30) and
//! a photo (default: the shipped astronaut portrait) is pushed as a new frame
//! `CAMERA_FPS` times a second (default 30), like a camera; with the app
//! updating faster than the camera (120 and 30, say), the latency is no
//! longer rounded up to whole camera frames. The same loop runs without the plugin, then with it; the
//! difference of the median `App::update` times is the plugin's main-thread
//! cost (inference itself runs on the async compute pool).

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_emotion::prelude::*;
use perception::{Frame, Pipeline, PipelineConfig};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Update and camera rates.
#[derive(Clone, Copy)]
struct Pace {
    update_hz: f64,
    camera_fps: f64,
}

/// `EmotionDetected` messages read so far: the faces classified.
#[derive(Resource, Default)]
struct FacesDetected(u64);

fn count_faces(mut detected: MessageReader<EmotionDetected>, mut count: ResMut<FacesDetected>) {
    count.0 += detected.read().count() as u64;
}

fn run(app: &mut App, frame: Option<&Frame>, seconds: f64, pace: Pace) -> (Vec<f64>, Vec<f64>) {
    let mut update_ms = Vec::new();
    let mut latency_ms = Vec::new();
    let start = Instant::now();
    let mut last_processed = 0;
    let mut next_frame = 0.0;
    while start.elapsed().as_secs_f64() < seconds {
        let tick = Instant::now();
        let now = start.elapsed().as_secs_f64();
        if now >= next_frame {
            next_frame += 1.0 / pace.camera_fps;
            if let (Some(f), Some(p)) = (frame, app.world().get_resource::<FramePusher>()) {
                p.push(f.clone());
            }
        }
        let t = Instant::now();
        app.update();
        update_ms.push(t.elapsed().as_secs_f64() * 1e3);
        if let Some(s) = app.world().get_resource::<EmotionStats>()
            && s.frames_processed > last_processed
        {
            last_processed = s.frames_processed;
            latency_ms.push(s.last_latency.as_secs_f64() * 1e3);
        }
        let spent = tick.elapsed();
        if let Some(rest) = Duration::from_secs_f64(1.0 / pace.update_hz).checked_sub(spent) {
            std::thread::sleep(rest);
        }
    }
    (update_ms, latency_ms)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` adds `--bench`: flags are skipped.
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with("--"));
    let photo = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| perception::assets_dir().join("images/astronaut.png"));
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let mut rate = || {
        args.next()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|r| *r > 0.0)
    };
    let pace = Pace {
        update_hz: rate().unwrap_or(30.0),
        camera_fps: rate().unwrap_or(30.0),
    };
    let inference_hz = rate().unwrap_or(pace.camera_fps);
    let background_detection = !std::env::args().any(|a| a == "--sync-detection");
    let frame = Frame::open(&photo)?;
    let models = perception::assets_dir().join("models");
    let mut pipeline = Pipeline::from_files(
        models.join("mtcnn.safetensors"),
        models.join("arch1_fer2013.safetensors"),
        PipelineConfig::default(),
    )?;
    let yunet = !std::env::args().any(|a| a == "--mtcnn-finder");
    if yunet {
        let net = perception::YuNet::from_file(models.join("yunet.safetensors"))?;
        pipeline = Pipeline::new(
            pipeline.detector().clone().with_yunet(net),
            pipeline.classifier().clone(),
            PipelineConfig::default().max_faces,
        );
    }
    let faces_per_frame = pipeline.process(&frame)?.len();

    let mut baseline = App::new();
    baseline.add_plugins(MinimalPlugins);
    let (mut base, _) = run(&mut baseline, None, seconds, pace);

    let mut app = App::new();
    app.add_plugins(MinimalPlugins)
        .add_plugins(EmotionPlugin {
            settings: EmotionSettings {
                source: SourceKind::Pushed,
                inference_hz: inference_hz as f32,
                follow: Some(perception::FollowConfig {
                    background_detection,
                    ..default()
                }),
                ..default()
            },
            models: ModelSource::Preloaded(std::sync::Arc::new(pipeline)),
        })
        .insert_resource(EmotionConsent::Granted)
        .init_resource::<FacesDetected>()
        .add_systems(Update, count_faces.after(EmotionSystems::Publish));
    let (mut with, mut latency) = run(&mut app, Some(&frame), seconds, pace);
    let processed = app.world().resource::<EmotionStats>().frames_processed;
    let classified = app.world().resource::<FacesDetected>().0;
    let (b, w) = (median(&mut base), median(&mut with));
    println!(
        "photo {} ({}x{}), {faces_per_frame} face(s) per frame, {seconds} s per run, {} threads, {} updates/s, camera {} fps, inference_hz {inference_hz}, finder {}, periodic detection {}",
        photo.display(),
        frame.width(),
        frame.height(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        pace.update_hz,
        pace.camera_fps,
        if yunet { "YuNet" } else { "MTCNN" },
        if background_detection {
            "in the background"
        } else {
            "on the due frame"
        }
    );
    println!(
        "main thread: update median {b:.3} ms without the plugin, {w:.3} ms with it: +{:.3} ms",
        w - b
    );
    if !latency.is_empty() {
        let n = latency.len();
        let p50 = median(&mut latency);
        let p95 = latency[(n * 95 / 100).min(n - 1)];
        println!("capture to message: p50 {p50:.1} ms, p95 {p95:.1} ms over {n} frames");
    }
    println!(
        "throughput: {:.1} frames/s, {:.1} faces/s (EmotionDetected messages)",
        processed as f64 / seconds,
        classified as f64 / seconds
    );
    Ok(())
}

//! Helpers shared by the headless plugin tests: the shipped networks, the
//! shared photos, an app with `MinimalPlugins` and consent granted, frames
//! pushed until processed, and a log of every message.
#![allow(dead_code, reason = "each test file uses a part of the helpers")]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_emotion::prelude::*;
use perception::{Frame, Pipeline, PipelineConfig};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn pipeline() -> Arc<Pipeline> {
    Arc::new(
        Pipeline::from_files(
            repo().join("assets/models/mtcnn.safetensors"),
            repo().join("assets/models/arch1_fer2013.safetensors"),
            PipelineConfig::default(),
        )
        .unwrap(),
    )
}

pub fn photo() -> Frame {
    let path = repo().join("../shared/data/faces-fullframe/2008_002506.jpg");
    assert!(path.is_file(), "shared data missing: {}", path.display());
    Frame::open(path).unwrap()
}

/// Every message the plugin wrote, by kind, and all of them in order as
/// `kind id emotion` lines (`sequence`, for comparing runs).
#[derive(Resource, Default)]
pub struct Log {
    pub appeared: Vec<FaceAppeared>,
    pub lost: Vec<FaceLost>,
    pub changed: Vec<EmotionChanged>,
    pub detected: Vec<EmotionDetected>,
    pub status: Vec<CameraStatus>,
    pub onsets: Vec<ExpressionOnset>,
    pub apexes: Vec<ExpressionApex>,
    pub offsets: Vec<ExpressionOffset>,
    pub calibrations: Vec<CalibrationFinished>,
    pub sequence: Vec<String>,
}

/// The messages of one kind, as [`Log`] reads them.
#[derive(bevy::ecs::system::SystemParam)]
pub struct Readers<'w, 's> {
    a: MessageReader<'w, 's, FaceAppeared>,
    l: MessageReader<'w, 's, FaceLost>,
    c: MessageReader<'w, 's, EmotionChanged>,
    d: MessageReader<'w, 's, EmotionDetected>,
    s: MessageReader<'w, 's, CameraStatusChanged>,
    on: MessageReader<'w, 's, ExpressionOnset>,
    ap: MessageReader<'w, 's, ExpressionApex>,
    off: MessageReader<'w, 's, ExpressionOffset>,
    cal: MessageReader<'w, 's, CalibrationFinished>,
}

pub fn collect(mut log: ResMut<Log>, mut r: Readers) {
    let log = &mut *log;
    for m in r.a.read() {
        log.sequence
            .push(format!("appeared {} {:?}", m.id, m.emotion));
        log.appeared.push(m.clone());
    }
    for m in r.d.read() {
        log.sequence
            .push(format!("detected {} {} {:?}", m.id, m.emotion, m.unsure));
        log.detected.push(m.clone());
    }
    for m in r.c.read() {
        log.sequence
            .push(format!("changed {} {} {}", m.id, m.from, m.to));
        log.changed.push(m.clone());
    }
    for m in r.on.read() {
        log.sequence.push(format!("onset {} {}", m.id, m.emotion));
        log.onsets.push(m.clone());
    }
    for m in r.ap.read() {
        log.sequence.push(format!("apex {} {}", m.id, m.emotion));
        log.apexes.push(m.clone());
    }
    for m in r.off.read() {
        log.sequence.push(format!("offset {} {}", m.id, m.emotion));
        log.offsets.push(m.clone());
    }
    for m in r.l.read() {
        log.sequence.push(format!("lost {}", m.id));
        log.lost.push(m.clone());
    }
    log.status.extend(r.s.read().map(|m| m.0.clone()));
    log.calibrations.extend(r.cal.read().cloned());
}

/// A headless app on real time (perception's clocks are `Time<Real>`, so a
/// manual clock would age faces by many seconds while a test waits for a
/// result); consent granted.
pub fn app(settings: EmotionSettings, models: ModelSource) -> App {
    let mut app = App::new();
    app.add_plugins(MinimalPlugins)
        .add_plugins(EmotionPlugin { settings, models })
        .insert_resource(EmotionConsent::Granted)
        .init_resource::<Log>()
        .add_systems(Update, collect.after(EmotionSystems::Publish));
    app
}

/// Pushes `frame` and updates until it has been processed.
pub fn feed(app: &mut App, frame: &Frame) {
    app.world().resource::<FramePusher>().push(frame.clone());
    let target = app.world().resource::<EmotionStats>().frames_captured + 1;
    let start = Instant::now();
    loop {
        app.update();
        let stats = app.world().resource::<EmotionStats>();
        if stats.frames_captured >= target && stats.last_processed >= target {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "frame not processed"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// When the last paced frame was pushed.
#[derive(Resource)]
struct LastFeed(Instant);

/// [`feed`], at most 15 frames a second of real time, like a camera (for
/// tests whose outcome depends on how much time passes between frames:
/// smoothing, episodes, calibration, track expiry).
pub fn feed_paced(app: &mut App, frame: &Frame) {
    let period = Duration::from_millis(1000 / 15);
    if let Some(last) = app.world().get_resource::<LastFeed>() {
        let since = last.0.elapsed();
        if since < period {
            std::thread::sleep(period - since);
        }
    }
    app.insert_resource(LastFeed(Instant::now()));
    feed(app, frame);
}

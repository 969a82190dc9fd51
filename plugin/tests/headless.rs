//! The plugin in a headless app (`MinimalPlugins`, manual time, frames pushed
//! by the test): stable face ids, `EmotionChanged` on a real change and not on
//! repeats, `FaceLost` when the face leaves, and a missing camera reported
//! without stopping the app. Uses the shipped weights and the shared photos
//! (fails loudly without them).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_emotion::prelude::*;
use common::{Log, app, feed_paced, photo, pipeline};
use perception::{Frame, Pipeline, PixelFormat, QualityGate};

#[test]
fn faces_are_tracked_and_emotion_changes_are_published() {
    let p = pipeline();
    let photo = photo();
    // Two 200x240 windows of the same photo, each centred on one person:
    // the same place in the frame, two different expressions.
    let a = photo.crop(288, 10, 200, 240).unwrap();
    let b = photo.crop(168, 21, 200, 240).unwrap();
    let label = |f: &Frame| {
        let faces = p.process(f).unwrap();
        assert!(!faces.is_empty(), "no face in a test window");
        faces[0].label()
    };
    let (la, lb) = (label(&a), label(&b));
    assert_ne!(la, lb, "the model gives both windows the same label");

    let settings = EmotionSettings {
        source: SourceKind::Pushed,
        inference_hz: 1000.0,
        // Every frame counts here; the gate has tests of its own.
        quality: QualityGate::open(),
        ..Default::default()
    };
    let mut app = app(settings, ModelSource::Preloaded(p.clone()));
    for _ in 0..8 {
        feed_paced(&mut app, &a);
    }
    {
        let log = app.world().resource::<Log>();
        assert_eq!(log.appeared.len(), 1, "one face, one entity");
        assert!(log.changed.is_empty(), "no change on repeated frames");
        assert_eq!(log.detected.len(), 8);
        assert!(log.detected.iter().all(|d| d.id == log.appeared[0].id));
    }
    let id = app.world().resource::<Log>().appeared[0].id;
    for _ in 0..12 {
        feed_paced(&mut app, &b);
    }
    {
        let log = app.world().resource::<Log>();
        assert_eq!(
            log.appeared.len(),
            1,
            "same place, same face: {:?}",
            log.appeared
        );
        let changes: Vec<_> = log.changed.iter().filter(|c| c.id == id).collect();
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].from, Emotion::FER2013[la]);
        assert_eq!(changes[0].to, Emotion::FER2013[lb]);
    }
    // The face entity carries its state.
    let mut q = app
        .world_mut()
        .query::<(&TrackedFace, &FaceBox, &SmoothedEmotion)>();
    let faces: Vec<_> = q
        .iter(app.world())
        .map(|(t, _, s)| (t.id, s.emotion))
        .collect();
    assert_eq!(faces, vec![(id, Emotion::FER2013[lb])]);
    // The face leaves: gray frames until FaceLost.
    let empty = Frame::new(200, 240, PixelFormat::Rgb8, vec![128; 200 * 240 * 3]).unwrap();
    for _ in 0..40 {
        feed_paced(&mut app, &empty);
        if !app.world().resource::<Log>().lost.is_empty() {
            break;
        }
    }
    let log = app.world().resource::<Log>();
    assert_eq!(log.lost.len(), 1);
    assert_eq!(log.lost[0].id, id);
    assert_eq!(*app.world().resource::<FacePresence>(), FacePresence(0));
    // Every message says which frame it is about and when that frame came.
    let d = &log.detected;
    assert!(d.windows(2).all(|w| w[0].frame < w[1].frame), "{d:?}");
    assert!(d.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));
    assert!(
        d.iter()
            .all(|m| m.frame > 0 && m.latency < Duration::from_secs(5))
    );
    assert_eq!(
        (log.appeared[0].frame, log.appeared[0].timestamp),
        (d[0].frame, d[0].timestamp)
    );
    for c in &log.changed {
        assert!(
            d.iter()
                .any(|m| (m.frame, m.timestamp) == (c.frame, c.timestamp)),
            "{c:?}"
        );
    }
    let seen = d.iter().rfind(|m| m.id == id).unwrap();
    let lost = &log.lost[0];
    assert_eq!(lost.last_frame, seen.frame);
    assert!(
        (lost.last_seen - seen.timestamp).abs() < 1e-9,
        "{lost:?} {seen:?}"
    );
    assert!(lost.timestamp >= seen.timestamp);
}

/// Perception runs on real time: with the game's virtual time paused, faces
/// are still detected, a quiet source is still noticed and its faces still
/// expire.
#[test]
fn perception_keeps_real_time_while_the_game_is_paused() {
    let (a, mut app) = pushed_face();
    app.update();
    app.world_mut().resource_mut::<Time<Virtual>>().pause();
    for _ in 0..4 {
        feed_paced(&mut app, &a);
    }
    assert_eq!(app.world().resource::<Log>().detected.len(), 4);
    let quiet = Instant::now();
    let mut stalled = false;
    while quiet.elapsed() < Duration::from_secs(5)
        && (!stalled || app.world().resource::<Log>().lost.is_empty())
    {
        app.update();
        stalled |= matches!(
            app.world().resource::<CameraStatus>(),
            CameraStatus::Stalled(_)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(stalled, "the quiet source was not noticed");
    assert_eq!(
        app.world().resource::<Log>().lost.len(),
        1,
        "the face never expired"
    );
    assert!(
        quiet.elapsed() < Duration::from_secs(3),
        "{:?}",
        quiet.elapsed()
    );
    let virt = app.world().resource::<Time<Virtual>>();
    assert!(
        virt.is_paused() && virt.elapsed() < Duration::from_millis(200),
        "{:?}",
        virt.elapsed()
    );
}

/// One person's window of the shared photo, and an app with pushed frames
/// that counts every frame (no quality gate).
fn pushed_face() -> (Frame, App) {
    let a = photo().crop(288, 10, 200, 240).unwrap();
    let settings = EmotionSettings {
        source: SourceKind::Pushed,
        inference_hz: 1000.0,
        quality: QualityGate::open(),
        ..Default::default()
    };
    (a, app(settings, ModelSource::Preloaded(pipeline())))
}

#[test]
fn no_camera_is_reported_and_the_app_keeps_running() {
    let settings = EmotionSettings {
        source: SourceKind::Webcam(WebcamConfig {
            // An index no machine has.
            index: 97,
            ..Default::default()
        }),
        ..Default::default()
    };
    let nets = Arc::new(Pipeline::new(
        perception::Detector::zeroed(Default::default()).unwrap(),
        perception::Classifier::untrained(perception::Arch::Arch1).unwrap(),
        4,
    ));
    let mut app = app(settings, ModelSource::Preloaded(nets));
    // Manual time: the back-off is counted in updates of 1/15 s.
    app.insert_resource(TimeUpdateStrategy::ManualDuration(Duration::from_millis(
        1000 / 15,
    )));
    let start = Instant::now();
    let mut updates = 0;
    while start.elapsed() < Duration::from_secs(20) {
        app.update();
        updates += 1;
        if matches!(
            app.world().resource::<CameraStatus>(),
            CameraStatus::Unavailable { .. }
        ) && updates > 100
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = app.world().resource::<CameraStatus>().clone();
    assert!(
        matches!(status, CameraStatus::Unavailable { ref reason, .. } if reason.contains("97")),
        "{status:?}"
    );
    assert!(updates > 100);
    let log = app.world().resource::<Log>();
    assert!(matches!(
        log.status.first(),
        Some(CameraStatus::Starting(_))
    ));
    // Retried with back-off: more than one attempt after 100 updates of 1/15 s.
    let attempts = log
        .status
        .iter()
        .filter(|s| matches!(s, CameraStatus::Starting(_)))
        .count();
    assert!(attempts >= 2, "{:?}", log.status);
    // Switching capture off stops everything.
    app.world_mut().resource_mut::<EmotionSettings>().enabled = false;
    app.update();
    assert_eq!(*app.world().resource::<CameraStatus>(), CameraStatus::Off);
}

/// A source that stops delivering (a hung driver): within a second or two
/// of real time the status leaves `Running`, and the face expires on time
/// although no new result arrives.
#[test]
fn a_source_that_goes_quiet_is_noticed_and_its_faces_expire() {
    let (a, mut app) = pushed_face();
    for _ in 0..3 {
        feed_paced(&mut app, &a);
    }
    assert!(matches!(
        app.world().resource::<CameraStatus>(),
        CameraStatus::Running(_)
    ));
    assert_eq!(app.world().resource::<Log>().appeared.len(), 1);
    let quiet = Instant::now();
    let (mut stalled_after, mut lost_after) = (None, None);
    while quiet.elapsed() < Duration::from_secs(5)
        && (stalled_after.is_none() || lost_after.is_none())
    {
        app.update();
        if stalled_after.is_none()
            && matches!(
                app.world().resource::<CameraStatus>(),
                CameraStatus::Stalled(_)
            )
        {
            stalled_after = Some(quiet.elapsed());
        }
        if lost_after.is_none() && !app.world().resource::<Log>().lost.is_empty() {
            lost_after = Some(quiet.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let stalled = stalled_after.expect("the status never left Running");
    let lost = lost_after.expect("the face never expired");
    assert!(stalled < Duration::from_millis(2000), "{stalled:?}");
    // lost_after is 1 s from the last frame seen.
    assert!(lost < Duration::from_millis(2000), "{lost:?}");
    assert_eq!(*app.world().resource::<FacePresence>(), FacePresence(0));
    // Frames again: running again.
    feed_paced(&mut app, &a);
    assert!(matches!(
        app.world().resource::<CameraStatus>(),
        CameraStatus::Running(_)
    ));
}

/// Video sources are followed (the full detector on the first frame, then
/// only now and then); a still image is detected whole on every frame.
#[test]
fn video_is_followed_and_stills_are_detected_whole() {
    let (a, mut app) = pushed_face();
    // By frames only: a slow machine must not make the period by time due.
    app.world_mut().resource_mut::<EmotionSettings>().follow = Some(perception::FollowConfig {
        detect_after: None,
        ..Default::default()
    });
    for _ in 0..8 {
        feed_paced(&mut app, &a);
    }
    let stats = app.world().resource::<EmotionStats>();
    assert_eq!(stats.frames_processed, 8);
    assert!(stats.full_detections <= 2, "{stats:?}");

    let tmp = tempfile::tempdir().unwrap();
    let still = tmp.path().join("still.png");
    image::RgbImage::from_raw(200, 240, a.to_rgb8())
        .unwrap()
        .save(&still)
        .unwrap();
    let settings = EmotionSettings {
        source: SourceKind::Image(still),
        inference_hz: 1000.0,
        quality: QualityGate::open(),
        ..Default::default()
    };
    let mut app = common::app(settings, ModelSource::Preloaded(pipeline()));
    let start = Instant::now();
    while app.world().resource::<EmotionStats>().frames_processed < 4
        && start.elapsed() < Duration::from_secs(20)
    {
        app.update();
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = app.world().resource::<EmotionStats>();
    assert!(stats.frames_processed >= 4, "{stats:?}");
    assert_eq!(stats.full_detections, stats.frames_processed, "{stats:?}");
    assert_eq!(app.world().resource::<Log>().appeared.len(), 1);
}

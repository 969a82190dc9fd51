//! What an agent can trust, headless (`MinimalPlugins`, manual time, frames
//! pushed or replayed): consent gates capture, unsure faces never change
//! the emotion, neutral calibration, expression episodes, and a recorded
//! run replayed to the same messages. Uses the shipped weights and the
//! shared photos (fails loudly without them).

mod common;

use bevy::prelude::*;
use bevy_emotion::prelude::*;
use common::{Log, app, feed, feed_paced, photo, pipeline};
use perception::{Frame, PixelFormat};

/// Two 200x240 windows of one photo with a face each, at the same place,
/// and their labels (different) and probabilities.
struct Windows {
    a: Frame,
    b: Frame,
    la: usize,
    lb: usize,
    pb: f32,
}

fn windows(p: &perception::Pipeline) -> Windows {
    let photo = photo();
    let a = photo.crop(288, 10, 200, 240).unwrap();
    let b = photo.crop(168, 21, 200, 240).unwrap();
    let fa = p.process(&a).unwrap().remove(0);
    let fb = p.process(&b).unwrap().remove(0);
    assert_ne!(fa.label(), fb.label());
    Windows {
        a,
        b,
        la: fa.label(),
        lb: fb.label(),
        pb: fb.confidence(),
    }
}

fn open_settings() -> EmotionSettings {
    EmotionSettings {
        source: SourceKind::Pushed,
        inference_hz: 1000.0,
        quality: QualityGate::open(),
        ..Default::default()
    }
}

fn faces(app: &mut App) -> Vec<Entity> {
    let mut q = app
        .world_mut()
        .query_filtered::<Entity, With<TrackedFace>>();
    q.iter(app.world()).collect()
}

#[test]
fn consent_gates_capture_and_revoking_it_clears_everything() {
    let p = pipeline();
    let w = windows(&p);
    let mut app = app(open_settings(), ModelSource::Preloaded(p));
    app.insert_resource(EmotionConsent::Denied);
    for _ in 0..10 {
        app.world().resource::<FramePusher>().push(w.a.clone());
        app.update();
    }
    assert_eq!(app.world().resource::<EmotionStats>().frames_captured, 0);
    assert_eq!(*app.world().resource::<CameraStatus>(), CameraStatus::Off);
    assert!(!app.world().resource::<CaptureIndicator>().live);
    // Granted: frames flow, the face appears, the indicator is on.
    app.insert_resource(EmotionConsent::Granted);
    feed(&mut app, &w.a);
    feed(&mut app, &w.a);
    assert_eq!(faces(&mut app).len(), 1);
    assert!(app.world().resource::<CaptureIndicator>().live);
    assert!(app.world().get_resource::<LatestFrame>().is_some());
    // Revoked: within one update, no frame, no face, no source.
    app.insert_resource(EmotionConsent::Denied);
    app.update();
    assert!(faces(&mut app).is_empty());
    assert!(app.world().get_resource::<LatestFrame>().is_none());
    assert!(!app.world().resource::<CaptureIndicator>().live);
    assert_eq!(*app.world().resource::<CameraStatus>(), CameraStatus::Off);
    assert_eq!(app.world().resource::<Log>().lost.len(), 1);
    // A frame pushed while denied is dropped, not captured later.
    app.world().resource::<FramePusher>().push(w.b.clone());
    app.update();
    let captured = app.world().resource::<EmotionStats>().frames_captured;
    app.insert_resource(EmotionConsent::Granted);
    app.update();
    app.update();
    assert_eq!(
        app.world().resource::<EmotionStats>().frames_captured,
        captured
    );
}

#[test]
fn unsure_faces_are_followed_but_never_change_the_emotion() {
    let p = pipeline();
    let w = windows(&p);
    let settings = EmotionSettings {
        // Nothing is confident enough.
        quality: QualityGate {
            min_confidence: 1.01,
            ..QualityGate::open()
        },
        ..open_settings()
    };
    let mut app = app(settings, ModelSource::Preloaded(p));
    for f in [&w.a, &w.a, &w.a, &w.b, &w.b, &w.b, &w.b, &w.b, &w.b] {
        feed(&mut app, f);
    }
    let log = app.world().resource::<Log>();
    assert_eq!(log.appeared.len(), 1);
    assert_eq!(log.appeared[0].emotion, None, "first frame was unsure");
    assert_eq!(log.detected.len(), 9);
    assert!(
        log.detected
            .iter()
            .all(|d| d.unsure == Some(UnsureReason::LowConfidence) && d.quality.is_some())
    );
    assert!(log.changed.is_empty() && log.onsets.is_empty());
    let face = faces(&mut app)[0];
    let state = *app.world().get::<ExpressionState>(face).unwrap();
    assert_eq!(
        state,
        ExpressionState::Unsure {
            reason: UnsureReason::LowConfidence
        }
    );
    assert!(app.world().get::<Quality>(face).is_some());
    assert!(app.world().get::<SmoothedEmotion>(face).is_none());
}

#[test]
fn calibration_turns_the_resting_face_neutral() {
    let p = pipeline();
    let w = windows(&p);
    let neutral = 6;
    // The resting face: whichever window the model does not call neutral.
    let (rest, label) = if w.la != neutral {
        (&w.a, w.la)
    } else {
        (&w.b, w.lb)
    };
    let mut app = app(open_settings(), ModelSource::Preloaded(p));
    for _ in 0..3 {
        feed_paced(&mut app, rest);
    }
    let face = faces(&mut app)[0];
    assert_eq!(
        app.world().get::<SmoothedEmotion>(face).unwrap().emotion,
        Emotion::FER2013[label]
    );
    // Asking for a face that does not exist fails at once.
    let nobody = app.world_mut().spawn_empty().id();
    app.world_mut().write_message(CalibrateNeutral {
        face: nobody,
        seconds: 1.0,
    });
    app.world_mut()
        .write_message(CalibrateNeutral { face, seconds: 0.6 });
    for _ in 0..20 {
        feed_paced(&mut app, rest);
    }
    let log = app.world().resource::<Log>();
    assert_eq!(log.calibrations.len(), 2, "{:?}", log.calibrations);
    assert_eq!(
        log.calibrations[0].result,
        Err(CalibrationError::NoFace),
        "{:?}",
        log.calibrations[0]
    );
    let baseline = log.calibrations[1].result.clone().unwrap();
    assert!(baseline.frames >= 5, "{baseline:?}");
    assert_eq!(baseline.probs.len(), 7);
    // The same face now reads neutral, raw probabilities kept beside.
    let changed: Vec<_> = log.changed.iter().map(|c| (c.from, c.to)).collect();
    assert_eq!(
        changed,
        vec![(Emotion::FER2013[label], Emotion::Neutral)],
        "{changed:?}"
    );
    let raw = app.world().get::<RawEmotion>(face).unwrap();
    assert_eq!(perception::argmax(&raw.probs), label);
    assert_eq!(perception::argmax(&raw.calibrated), neutral);
    assert!(app.world().get::<NeutralCalibration>(face).is_some());
    // A baseline of another model is refused and removed.
    let mut wrong = baseline.clone();
    wrong.classes.push("contempt".into());
    wrong.probs.push(0.1);
    app.world_mut()
        .entity_mut(face)
        .insert(NeutralCalibration(wrong));
    feed(&mut app, rest);
    assert!(app.world().get::<NeutralCalibration>(face).is_none());
    let last = app.world().resource::<Log>().calibrations.last().cloned();
    assert!(matches!(
        last.map(|c| c.result),
        Some(Err(CalibrationError::Classes { .. }))
    ));
}

#[test]
fn an_expression_has_one_onset_apex_and_offset() {
    let p = pipeline();
    let w = windows(&p);
    let mut settings = open_settings();
    // Thresholds below b's probability, so b's expression must start.
    settings.episodes.on_threshold = (w.pb * 0.8).min(0.5);
    settings.episodes.off_threshold = settings.episodes.on_threshold * 0.6;
    let mut app = app(settings, ModelSource::Preloaded(p));
    for _ in 0..6 {
        feed_paced(&mut app, &w.a);
    }
    for _ in 0..15 {
        feed_paced(&mut app, &w.b);
    }
    for _ in 0..15 {
        feed_paced(&mut app, &w.a);
    }
    let log = app.world().resource::<Log>();
    let b = Emotion::FER2013[w.lb];
    let count = |v: Vec<Emotion>| v.into_iter().filter(|e| *e == b).count();
    assert_eq!(count(log.onsets.iter().map(|o| o.emotion).collect()), 1);
    assert_eq!(count(log.apexes.iter().map(|o| o.emotion).collect()), 1);
    assert_eq!(count(log.offsets.iter().map(|o| o.emotion).collect()), 1);
    let on = log.onsets.iter().find(|o| o.emotion == b).unwrap();
    let off = log.offsets.iter().find(|o| o.emotion == b).unwrap();
    assert!(off.at > on.at && off.duration > 0.3, "{on:?} {off:?}");
}

#[test]
fn a_recorded_run_replays_to_the_same_messages() {
    let p = pipeline();
    let w = windows(&p);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.jsonl");
    let empty = Frame::new(200, 240, PixelFormat::Rgb8, vec![128; 200 * 240 * 3]).unwrap();
    let mut rec = app(open_settings(), ModelSource::Preloaded(p.clone()));
    rec.world_mut()
        .resource_mut::<EmotionRecorder>()
        .start(&path)
        .unwrap();
    let mut frames = 0;
    for f in std::iter::repeat_n(&w.a, 5)
        .chain(std::iter::repeat_n(&w.b, 10))
        .chain(std::iter::repeat_n(&empty, 25))
    {
        feed_paced(&mut rec, f);
        frames += 1;
    }
    assert_eq!(
        rec.world_mut().resource_mut::<EmotionRecorder>().stop(),
        frames
    );
    let recorded = rec.world().resource::<Log>().sequence.clone();
    assert!(
        recorded.iter().any(|l| l.starts_with("changed")),
        "{recorded:?}"
    );
    assert!(
        recorded.iter().any(|l| l.starts_with("lost")),
        "{recorded:?}"
    );
    // No pixels in the file: one header and one short line per frame.
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count() as u64, frames + 1);
    assert!(text.len() < 2000 * (frames as usize + 1));

    let settings = EmotionSettings {
        source: SourceKind::Replay {
            path: path.clone(),
            realtime: false,
        },
        ..open_settings()
    };
    let mut play = app(settings, ModelSource::Preloaded(p));
    for _ in 0..frames + 10 {
        play.update();
    }
    assert_eq!(
        play.world().resource::<EmotionStats>().frames_processed,
        frames
    );
    let replayed = &play.world().resource::<Log>().sequence;
    assert_eq!(replayed, &recorded);
    assert!(matches!(
        play.world().resource::<CameraStatus>(),
        CameraStatus::Running(s) if s.contains("replay")
    ));
}

#[test]
fn a_bad_replay_file_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.jsonl");
    std::fs::write(&path, "not a stream\n").unwrap();
    let settings = EmotionSettings {
        source: SourceKind::Replay {
            path,
            realtime: true,
        },
        ..open_settings()
    };
    let mut app = app(settings, ModelSource::Preloaded(pipeline()));
    for _ in 0..5 {
        app.update();
    }
    assert!(matches!(
        app.world().resource::<CameraStatus>(),
        CameraStatus::Unavailable { reason, .. } if reason.contains("line 1")
    ));
}

#[test]
fn the_ferplus_model_speaks_eight_classes_contempt_included() {
    // The shipped FER+ classifier (FER+'s eight classes) behind the same
    // plugin: the probabilities have eight entries, the class names come
    // from the weights, and the smoothed emotion is one of them.
    let p = std::sync::Arc::new(
        perception::Pipeline::from_files(
            common::repo().join("assets/models/mtcnn.safetensors"),
            common::repo().join("assets/models/arch1_ferplus.safetensors"),
            perception::PipelineConfig::default(),
        )
        .unwrap(),
    );
    assert_eq!(p.classifier().classes().len(), 8);
    assert_eq!(p.classifier().classes()[7], "contempt");
    let a = photo().crop(288, 10, 200, 240).unwrap();
    let mut app = app(open_settings(), ModelSource::Preloaded(p));
    feed(&mut app, &a);
    feed(&mut app, &a);
    let log = app.world().resource::<Log>();
    let d = log.detected.last().expect("no EmotionDetected");
    assert_eq!(d.probs.len(), 8);
    assert_eq!(d.raw_probs.len(), 8);
    assert!((d.raw_probs.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    assert_ne!(d.emotion, Emotion::Other);
    assert_eq!(log.appeared.len(), 1);
}

//! Camera faults, driven through the real webcam source (its thread, mailbox,
//! decoding and reconnects) with a scripted [`CameraDevice`] in place of the
//! hardware: a camera that refuses to open, delivers corrupt MJPEG, changes
//! resolution, errors out (unplugged) and hangs. The status must go through
//! the right states, faces must not outlive the loss, the source must come
//! back, and the app must never block or panic.
#![cfg(feature = "webcam")]

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_emotion::nokhwa::Buffer;
use bevy_emotion::nokhwa::utils::{FrameFormat, Resolution};
use bevy_emotion::prelude::*;
use bevy_emotion::{CameraDevice, CustomSource, WebcamSource, decode_camera_frame};
use common::{Log, app, pipeline, repo};

/// One thing the scripted camera does when asked for a frame.
#[derive(Clone)]
enum Step {
    /// Deliver these bytes as a frame of this format and size, after a
    /// camera's frame period.
    Frame(Resolution, FrameFormat, Arc<Vec<u8>>),
    /// Fail the stream (an unplugged camera).
    Fail(&'static str),
    /// Block this long (a hung driver), then fail.
    Hang(Duration),
}

#[derive(Default)]
struct Script {
    /// Opens that fail before one succeeds.
    failing_opens: usize,
    steps: VecDeque<(Step, usize)>,
    opens: usize,
    closes: usize,
}

/// A camera that follows the shared script (each reopen continues it).
struct Scripted(Arc<Mutex<Script>>);

impl CameraDevice for Scripted {
    fn open(&mut self) -> Result<(), String> {
        let mut s = self.0.lock().unwrap();
        s.opens += 1;
        if s.failing_opens > 0 {
            s.failing_opens -= 1;
            return Err("no camera (scripted)".into());
        }
        Ok(())
    }

    fn frame(&mut self) -> Result<Buffer, String> {
        let step = {
            let mut s = self.0.lock().unwrap();
            match s.steps.front_mut() {
                Some((step, left)) => {
                    let step = step.clone();
                    *left -= 1;
                    if *left == 0 {
                        s.steps.pop_front();
                    }
                    Some(step)
                }
                None => None,
            }
        };
        match step {
            Some(Step::Frame(res, format, bytes)) => {
                std::thread::sleep(Duration::from_millis(66));
                Ok(Buffer::new(res, &bytes, format))
            }
            Some(Step::Fail(why)) => Err(why.into()),
            Some(Step::Hang(d)) => {
                std::thread::sleep(d);
                Err("hung driver gave up".into())
            }
            None => {
                std::thread::sleep(Duration::from_millis(66));
                Err("script over".into())
            }
        }
    }

    fn close(&mut self) {
        self.0.lock().unwrap().closes += 1;
    }
}

/// The real webcam source reading the scripted camera (a new device per
/// open, all following the same script).
fn scripted_source(script: &Arc<Mutex<Script>>) -> SourceKind {
    let shared = script.clone();
    SourceKind::Custom(CustomSource::new(move || {
        let shared = shared.clone();
        Box::new(WebcamSource::with_device(
            "scripted camera",
            Arc::new(move || Box::new(Scripted(shared.clone()))),
        ))
    }))
}

fn photo_jpeg() -> Arc<Vec<u8>> {
    let path = repo().join("../shared/data/faces-fullframe/2008_002506.jpg");
    assert!(path.is_file(), "shared data missing: {}", path.display());
    Arc::new(std::fs::read(path).unwrap())
}

/// Updates until `done` holds, at most `limit` of real time; returns how long
/// it took and the longest single update.
fn until(
    app: &mut App,
    limit: Duration,
    mut done: impl FnMut(&App) -> bool,
) -> (Duration, Duration) {
    let start = Instant::now();
    let mut longest = Duration::ZERO;
    while !done(app) {
        assert!(
            start.elapsed() < limit,
            "condition not reached in {limit:?}; status {:?}, faces {}, captured {}, changes {:?}",
            status(app),
            app.world().resource::<FacePresence>().0,
            app.world().resource::<EmotionStats>().frames_captured,
            app.world().resource::<Log>().status
        );
        let t = Instant::now();
        app.update();
        longest = longest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    (start.elapsed(), longest)
}

fn status(app: &App) -> CameraStatus {
    app.world().resource::<CameraStatus>().clone()
}

#[test]
fn camera_faults_are_survived_and_recovered_from() {
    let jpeg = photo_jpeg();
    let mjpeg = Step::Frame(Resolution::new(640, 480), FrameFormat::MJPEG, jpeg.clone());
    // The same face as raw RGB at another resolution (a mode switch).
    let raw = {
        let f = perception::Frame::decode(&jpeg)
            .unwrap()
            .crop(288, 10, 200, 240)
            .unwrap();
        Step::Frame(
            Resolution::new(200, 240),
            FrameFormat::RAWRGB,
            Arc::new(f.to_rgb8()),
        )
    };
    let corrupt = Step::Frame(
        Resolution::new(640, 480),
        FrameFormat::MJPEG,
        Arc::new(jpeg[..jpeg.len() / 3].iter().map(|b| b ^ 0x5a).collect()),
    );
    let script = Arc::new(Mutex::new(Script {
        failing_opens: 1,
        steps: VecDeque::from([
            (mjpeg.clone(), 10),
            (corrupt.clone(), 3),
            (mjpeg.clone(), 5),
            (raw.clone(), 10),
            (Step::Fail("camera unplugged (scripted)"), 1),
            (mjpeg.clone(), 10),
            (Step::Hang(Duration::from_secs(6)), 1),
            (mjpeg.clone(), 1000),
        ]),
        ..Default::default()
    }));
    let settings = EmotionSettings {
        source: scripted_source(&script),
        inference_hz: 1000.0,
        quality: QualityGate::open(),
        reopen_after_stall: 1.0,
        ..Default::default()
    };
    let mut app = app(settings, ModelSource::Preloaded(pipeline()));
    let mut longest = Duration::ZERO;
    let mut step = |app: &mut App, limit: u64, done: &dyn Fn(&App) -> bool| {
        let (_, l) = until(app, Duration::from_secs(limit), done);
        longest = longest.max(l);
    };

    // The first open fails: unavailable, retried after a second.
    step(&mut app, 5, &|a| {
        matches!(status(a), CameraStatus::Unavailable { .. })
    });
    // Then frames: running, and the faces are found (the photo has three).
    step(&mut app, 10, &|a| {
        matches!(status(a), CameraStatus::Running(_)) && a.world().resource::<FacePresence>().0 >= 1
    });
    // Corrupt frames are dropped, the resolution switch is taken in stride:
    // frames keep coming until the camera is unplugged.
    step(&mut app, 10, &|a| {
        matches!(status(a), CameraStatus::Unavailable { .. })
    });
    let unplugged = Instant::now();
    let captured_before = app.world().resource::<EmotionStats>().frames_captured;
    assert!(
        captured_before >= 20,
        "frames lost around the faults: {captured_before}"
    );
    // No face outlives the loss by more than the track expiry (1 s) plus a
    // little, although no frame arrives to age it.
    step(&mut app, 5, &|a| {
        a.world().resource::<FacePresence>().0 == 0
    });
    let expiry = f64::from(app.world().resource::<EmotionSettings>().tracker.lost_after);
    assert!(
        unplugged.elapsed().as_secs_f64() < expiry + 1.0,
        "the face outlived the camera by {:?}",
        unplugged.elapsed()
    );
    // The camera is opened again and frames flow.
    step(&mut app, 10, &|a| {
        matches!(status(a), CameraStatus::Running(_))
            && a.world().resource::<EmotionStats>().frames_captured > captured_before
    });
    // A hung driver: stalled within the watchdog's second or two, then closed
    // and reopened (reopen_after_stall), and running again.
    step(&mut app, 5, &|a| {
        matches!(status(a), CameraStatus::Stalled(_))
    });
    let stalled = Instant::now();
    step(&mut app, 5, &|a| {
        matches!(status(a), CameraStatus::Unavailable { .. })
    });
    step(&mut app, 10, &|a| {
        matches!(status(a), CameraStatus::Running(_))
    });
    // The hung thread's driver call returns (an error) after the reopen: it
    // must land in its own mailbox, not fail the new stream.
    let changes = app.world().resource::<Log>().status.len();
    step(&mut app, 10, &|_| {
        stalled.elapsed() > Duration::from_secs(6)
    });
    assert_eq!(app.world().resource::<Log>().status.len(), changes);
    assert!(matches!(status(&app), CameraStatus::Running(_)));

    let log = app.world().resource::<Log>();
    let kinds: Vec<&str> = log
        .status
        .iter()
        .map(|s| match s {
            CameraStatus::Off => "off",
            CameraStatus::Starting(_) => "starting",
            CameraStatus::Running(_) => "running",
            CameraStatus::Stalled(_) => "stalled",
            CameraStatus::Unavailable { .. } => "unavailable",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "starting",
            "unavailable",
            "starting",
            "running",
            "unavailable",
            "starting",
            "running",
            "stalled",
            "unavailable",
            "starting",
            "running"
        ],
        "{:?}",
        log.status
    );
    let s = script.lock().unwrap();
    assert_eq!(s.opens, 4, "one failed open and three streams");
    // Every stream that ended was closed, the hung one too once its driver
    // call returned.
    assert_eq!(s.closes, 3, "{} closes", s.closes);
    // Liveness, not speed: a blocked update would take as long as the hang.
    assert!(
        longest < Duration::from_secs(3),
        "an update took {longest:?}"
    );
}

#[test]
fn corrupt_and_impossible_camera_frames_are_errors() {
    let jpeg = photo_jpeg();
    let ok = Buffer::new(Resolution::new(1, 1), &jpeg, FrameFormat::MJPEG);
    let f = decode_camera_frame(&ok).unwrap();
    assert!(
        f.width() > 100,
        "the JPEG's own size wins over the reported one"
    );
    let cut = Buffer::new(Resolution::new(640, 480), &jpeg[..200], FrameFormat::MJPEG);
    assert!(
        decode_camera_frame(&cut)
            .unwrap_err()
            .contains("corrupt MJPEG")
    );
    let huge = Buffer::new(
        Resolution::new(100_000, 100_000),
        &[0; 12],
        FrameFormat::RAWRGB,
    );
    assert!(
        decode_camera_frame(&huge)
            .unwrap_err()
            .contains("impossible frame size")
    );
    let short = Buffer::new(Resolution::new(64, 64), &[0; 12], FrameFormat::YUYV);
    assert!(decode_camera_frame(&short).is_err());
}

#[test]
fn frames_inference_will_not_take_are_not_decoded() {
    // A 15 fps camera and inference twice a second: the camera thread
    // decodes only the frames inference takes (about two a second), drops
    // the rest undecoded, and the watchdog still sees a live camera.
    let mjpeg = Step::Frame(Resolution::new(640, 480), FrameFormat::MJPEG, photo_jpeg());
    let script = Arc::new(Mutex::new(Script {
        steps: VecDeque::from([(mjpeg, 1000)]),
        ..Default::default()
    }));
    let settings = EmotionSettings {
        source: scripted_source(&script),
        inference_hz: 2.0,
        quality: QualityGate::open(),
        ..Default::default()
    };
    let mut app = app(settings, ModelSource::Preloaded(pipeline()));
    until(&mut app, Duration::from_secs(10), |a| {
        a.world().resource::<EmotionStats>().frames_processed >= 1
    });
    let remaining = |s: &Arc<Mutex<Script>>| s.lock().unwrap().steps.front().map_or(0, |x| x.1);
    let (before, captured_before) = (
        remaining(&script),
        app.world().resource::<EmotionStats>().frames_captured,
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        app.update();
        assert!(
            matches!(status(&app), CameraStatus::Running(_)),
            "{:?}",
            status(&app)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let produced = before - remaining(&script);
    let decoded = app.world().resource::<EmotionStats>().frames_captured - captured_before;
    let processed = app.world().resource::<EmotionStats>().frames_processed;
    assert!(produced >= 40, "the camera produced only {produced} frames");
    assert!(
        decoded * 3 <= produced as u64,
        "{decoded} of {produced} frames decoded"
    );
    assert!(processed >= 6, "only {processed} frames processed");
    eprintln!("{produced} frames from the camera, {decoded} decoded, {processed} processed");
}

//! Record and replay ([`EmotionRecordPlugin`]): the recorder writes what the
//! pipeline saw (per processed frame: time, faces with box, landmarks,
//! probabilities and quality; never pixels) to a JSON Lines file, only when
//! the game starts it; [`SourceKind::Replay`](crate::SourceKind::Replay)
//! plays such a file back through the same tracker, quality gate,
//! calibration, episodes and messages, at the recorded pace or as fast as
//! the app updates. The format is `perception::record`'s.
//!
//! ```no_run
//! # use bevy::prelude::*;
//! # use bevy_emotion::record::EmotionRecorder;
//! fn start_recording(mut recorder: ResMut<EmotionRecorder>) {
//!     if let Err(e) = recorder.start("session.jsonl") {
//!         error!("cannot record: {e}");
//!     }
//! }
//! ```

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bevy::prelude::*;
use perception::record::{StreamFrame, StreamReader, StreamWriter};

use crate::capture::{FrameSource, SourcePoll};
use crate::inference::InferenceFinished;
use crate::model::{EmotionPipeline, class_names};
use crate::settings::{EmotionSystems, stage_setup};

/// Writes the perception stream while recording. Nothing is written unless
/// the game calls [`EmotionRecorder::start`].
#[derive(Resource, Default)]
pub struct EmotionRecorder {
    out: Option<Recording>,
    /// Set when a write failed; recording stops then.
    pub last_error: Option<String>,
}

struct Recording {
    path: PathBuf,
    writer: Option<StreamWriter<BufWriter<File>>>,
    start: Option<f64>,
    frames: u64,
}

impl EmotionRecorder {
    /// Starts recording to `path` (created or truncated); the header is
    /// written with the first frame, when the classifier's classes are known.
    pub fn start(&mut self, path: impl AsRef<Path>) -> std::io::Result<()> {
        let path = path.as_ref().to_path_buf();
        // Fail now, not at the first frame, if the file cannot be created.
        File::create(&path)?;
        self.out = Some(Recording {
            path,
            writer: None,
            start: None,
            frames: 0,
        });
        self.last_error = None;
        Ok(())
    }

    /// Stops recording (flushing the file). Returns the number of frames
    /// written.
    pub fn stop(&mut self) -> u64 {
        let Some(mut r) = self.out.take() else {
            return 0;
        };
        if let Some(w) = r.writer.as_mut()
            && let Err(e) = w.flush()
        {
            self.last_error = Some(format!("{}: {e}", r.path.display()));
        }
        r.frames
    }

    /// Whether a recording is running.
    pub fn is_recording(&self) -> bool {
        self.out.is_some()
    }

    fn write(&mut self, classes: &[String], result: &InferenceFinished) {
        let Some(r) = self.out.as_mut() else {
            return;
        };
        let Ok(faces) = &result.faces else {
            return;
        };
        let outcome = (|| -> std::io::Result<()> {
            if r.writer.is_none() {
                let file = BufWriter::new(File::create(&r.path)?);
                r.writer = Some(StreamWriter::new(file, classes)?);
            }
            let start = *r.start.get_or_insert(result.time);
            if let Some(w) = r.writer.as_mut() {
                w.write_frame(&StreamFrame {
                    t: result.time - start,
                    seq: result.seq,
                    faces: faces.clone(),
                })?;
            }
            r.frames += 1;
            Ok(())
        })();
        if let Err(e) = outcome {
            let msg = format!("recording to {} stopped: {e}", r.path.display());
            error!("{msg}");
            self.out = None;
            self.last_error = Some(msg);
        }
    }
}

/// Recorded frames the replay source has released, waiting to be handed on
/// as inference results, and the shift from recorded to real time.
#[derive(Resource, Clone, Default)]
pub struct ReplayFeed(Arc<Mutex<Feed>>);

#[derive(Default)]
struct Feed {
    frames: VecDeque<StreamFrame>,
    offset: Option<f64>,
}

impl ReplayFeed {
    fn lock(&self) -> std::sync::MutexGuard<'_, Feed> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, f: StreamFrame) {
        self.lock().frames.push_back(f);
    }

    /// The released frames with their real times: recorded times shifted so
    /// that the replay's first frame is at `now`.
    fn drain(&self, now: f64) -> Vec<(f64, StreamFrame)> {
        let mut feed = self.lock();
        let mut out = Vec::with_capacity(feed.frames.len());
        while let Some(f) = feed.frames.pop_front() {
            let base = *feed.offset.get_or_insert(now - f.t);
            out.push((base + f.t, f));
        }
        out
    }

    /// Drops what was not handed on yet and forgets the time shift.
    pub fn clear(&self) {
        *self.lock() = Feed::default();
    }
}

/// [`SourceKind::Replay`](crate::SourceKind::Replay): reads the stream's
/// header when started, then releases frames as their time comes (or one
/// per poll). A line that is not a frame is logged with its number and
/// skipped; a missing file or a bad header fails the source.
pub struct ReplaySource {
    path: PathBuf,
    realtime: bool,
    feed: ReplayFeed,
    reader: Option<StreamReader<BufReader<File>>>,
    failure: Option<String>,
    start: Option<f64>,
    pending: Option<StreamFrame>,
    done: bool,
}

impl ReplaySource {
    /// A replay of `path` into `feed`.
    pub fn new(path: PathBuf, realtime: bool, feed: ReplayFeed) -> Self {
        Self {
            path,
            realtime,
            feed,
            reader: None,
            failure: None,
            start: None,
            pending: None,
            done: false,
        }
    }

    fn next(&mut self) -> Option<StreamFrame> {
        if let Some(f) = self.pending.take() {
            return Some(f);
        }
        let reader = self.reader.as_mut()?;
        loop {
            match reader.next_frame() {
                None => return None,
                Some(Ok(f)) => return Some(f),
                Some(Err(e)) => warn!("replay {}: skipping {e}", self.path.display()),
            }
        }
    }
}

impl FrameSource for ReplaySource {
    fn start(&mut self) {
        self.feed.clear();
        let opened = File::open(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|f| StreamReader::new(BufReader::new(f)).map_err(|e| e.to_string()));
        match opened {
            Ok(r) => self.reader = Some(r),
            Err(e) => self.failure = Some(format!("cannot replay {}: {e}", self.path.display())),
        }
    }

    fn stop(&mut self) {
        self.reader = None;
        self.pending = None;
        self.feed.clear();
    }

    fn poll(&mut self, now: f64) -> SourcePoll {
        if let Some(e) = self.failure.take() {
            return SourcePoll::Failed(e);
        }
        if self.reader.is_none() || self.done {
            return SourcePoll::Alive;
        }
        let start = *self.start.get_or_insert(now);
        if !self.realtime {
            match self.next() {
                Some(f) => self.feed.push(f),
                None => self.done = true,
            }
            return SourcePoll::Alive;
        }
        while let Some(f) = self.next() {
            if f.t > now - start {
                self.pending = Some(f);
                break;
            }
            self.feed.push(f);
        }
        if self.pending.is_none() {
            self.done = true;
        }
        SourcePoll::Alive
    }

    fn describe(&self) -> String {
        format!("replay of {}", self.path.display())
    }
}

/// The recorder and the replay's hand-over to the face stage.
pub struct EmotionRecordPlugin;

impl Plugin for EmotionRecordPlugin {
    fn build(&self, app: &mut App) {
        stage_setup(app);
        app.init_resource::<EmotionRecorder>()
            .init_resource::<ReplayFeed>()
            .add_message::<InferenceFinished>()
            .add_systems(
                Update,
                (
                    replayed_results.in_set(EmotionSystems::Infer),
                    record_results
                        .in_set(EmotionSystems::Smooth)
                        .run_if(|r: Res<EmotionRecorder>| r.is_recording()),
                ),
            );
    }
}

/// Replayed frames become inference results (times shifted so the first
/// frame is "now"; their spacing is the recording's).
fn replayed_results(
    feed: Res<ReplayFeed>,
    time: Res<Time<Real>>,
    mut out: MessageWriter<InferenceFinished>,
) {
    for (t, f) in feed.drain(time.elapsed_secs_f64()) {
        out.write(InferenceFinished {
            seq: f.seq,
            time: t,
            captured: Instant::now(),
            faces: Ok(f.faces),
            full_detection: true,
        });
    }
}

fn record_results(
    mut recorder: ResMut<EmotionRecorder>,
    mut results: MessageReader<InferenceFinished>,
    pipeline: Option<Res<EmotionPipeline>>,
) {
    if results.is_empty() {
        return;
    }
    let classes = class_names(pipeline.as_deref());
    for r in results.read() {
        recorder.write(&classes, r);
    }
}

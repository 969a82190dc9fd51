//! The inference stage ([`EmotionSystems::Detect`] and
//! [`EmotionSystems::Infer`]): detection, alignment and classification of
//! the newest [`LatestFrame`] on the `AsyncComputeTaskPool`, at most
//! `inference_hz` times a second, one frame at a time. The main thread only
//! starts tasks and polls them; each finished one becomes an
//! [`InferenceFinished`] message for the face stage.

use std::sync::Arc;
use std::time::Instant;

use bevy::prelude::*;
use bevy::tasks::futures::check_ready;
use bevy::tasks::{AsyncComputeTaskPool, Task};
use perception::{FaceFollower, Observation, UnsureReason};

use crate::capture::LatestFrame;
use crate::capture::capture_allowed;
use crate::model::EmotionPipeline;
use crate::settings::{EmotionSettings, EmotionSystems, stage_setup};

/// What one inference produced: the inference stage's output, read by the
/// face stage.
#[derive(Message, Debug, Clone)]
pub struct InferenceFinished {
    /// Sequence number of the frame ([`LatestFrame::seq`]).
    pub seq: u64,
    /// Real time (`Time<Real>`) when the frame was captured, seconds.
    pub time: f64,
    /// Wall-clock capture instant (for latency).
    pub captured: Instant,
    /// The faces found, or why the frame could not be processed.
    pub faces: Result<Vec<Observation>, String>,
    /// Whether the full detector ran on this frame (otherwise the faces were
    /// followed from the previous frame, [`EmotionSettings::follow`]).
    pub full_detection: bool,
}

/// A running inference and the follower it took along.
type Running = Task<(InferenceFinished, Option<FaceFollower>)>;

#[derive(Resource, Default)]
struct InferenceState {
    task: Option<Running>,
    /// The thread budget's pool and its size.
    pool: Option<(usize, Arc<rayon::ThreadPool>)>,
    follower: Option<FaceFollower>,
    last_seq: u64,
    last_start: Option<f64>,
}

/// Runs the pipeline off the main thread.
pub struct EmotionInferencePlugin;

impl Plugin for EmotionInferencePlugin {
    fn build(&self, app: &mut App) {
        stage_setup(app);
        app.init_resource::<InferenceState>()
            .add_message::<InferenceFinished>()
            .add_systems(
                Update,
                (
                    start_inference
                        .in_set(EmotionSystems::Detect)
                        .run_if(capture_allowed),
                    collect_inference.in_set(EmotionSystems::Infer),
                ),
            );
    }
}

/// Collects a finished inference first (so the next one starts in the same
/// update, not one update later), then starts one on the newest frame when
/// it is due.
fn start_inference(
    mut state: ResMut<InferenceState>,
    latest: Option<Res<LatestFrame>>,
    pipeline: Option<Res<EmotionPipeline>>,
    settings: Res<EmotionSettings>,
    time: Res<Time<Real>>,
    mut finished: MessageWriter<InferenceFinished>,
) {
    collect(&mut state, &mut finished);
    let (Some(latest), Some(pipeline)) = (latest, pipeline) else {
        return;
    };
    if state.task.is_some() || latest.seq == state.last_seq {
        return;
    }
    let now = time.elapsed_secs_f64();
    if let Some(last) = state.last_start {
        let period = 1.0 / f64::from(settings.inference_hz.max(0.1));
        if now - last < period - 1e-9 {
            return;
        }
    }
    let (frame, pipeline) = (latest.frame.clone(), pipeline.0.clone());
    let (seq, time_s, captured) = (latest.seq, latest.time, latest.instant);
    state.last_seq = seq;
    state.last_start = Some(now);
    let threads = settings.threads.max(1);
    if state.pool.as_ref().is_none_or(|(n, _)| *n != threads) {
        match rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("emotion-perception-{i}"))
            .build()
        {
            Ok(p) => state.pool = Some((threads, Arc::new(p))),
            Err(e) => {
                warn!("cannot start {threads} perception threads ({e}); using the global pool");
            }
        }
    }
    let pool = state.pool.as_ref().map(|(_, p)| p.clone());
    // Following on: the follower travels with the task and comes back.
    let mut follower = match (&settings.follow, state.follower.take()) {
        (Some(cfg), Some(mut f)) => {
            f.config = cfg.clone();
            Some(f)
        }
        (Some(cfg), None) => Some(FaceFollower::new(cfg.clone())),
        (None, _) => None,
    };
    state.task = Some(AsyncComputeTaskPool::get().spawn(async move {
        let run = move || {
            let out = match follower.as_mut() {
                Some(f) => match f.process(&pipeline, &frame) {
                    Ok((found, ran)) => (Ok(found), ran),
                    Err(e) => {
                        f.reset();
                        (Err(e), true)
                    }
                },
                None => (pipeline.process_all(&frame), true),
            };
            (out, follower)
        };
        // Within the budget: candle and the engines see the pool's size.
        let ((found, full_detection), follower) = match &pool {
            Some(p) => p.install(run),
            None => run(),
        };
        let faces = found
            .map(|found| {
                let classified = found.faces.into_iter().map(|f| Observation {
                    bbox: f.detection.bbox,
                    score: f.detection.score,
                    landmarks: f.detection.landmarks,
                    probs: f.probs,
                    quality: Some(f.quality),
                    unsure: None,
                });
                // A face that cannot be aligned is followed, not classified.
                let failed = found.failed.into_iter().map(|(d, _)| Observation {
                    bbox: d.bbox,
                    score: d.score,
                    landmarks: d.landmarks,
                    probs: Vec::new(),
                    quality: None,
                    unsure: Some(UnsureReason::AlignmentFailed),
                });
                classified.chain(failed).collect()
            })
            .map_err(|e| e.to_string());
        let result = InferenceFinished {
            seq,
            time: time_s,
            captured,
            faces,
            full_detection,
        };
        (result, follower)
    }));
}

/// Polls the running task; a finished one is written as a message. Runs
/// while perception is off too, so a task started before the switch ends
/// cleanly (the face stage ignores its result).
fn collect_inference(
    mut state: ResMut<InferenceState>,
    mut finished: MessageWriter<InferenceFinished>,
) {
    collect(&mut state, &mut finished);
}

/// A finished task's result becomes a message; its follower comes back.
fn collect(state: &mut InferenceState, finished: &mut MessageWriter<InferenceFinished>) {
    let Some(task) = state.task.as_mut() else {
        return;
    };
    if let Some((result, follower)) = check_ready(task) {
        state.task = None;
        state.follower = follower;
        finished.write(result);
    }
}

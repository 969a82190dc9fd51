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
use crate::capture::{FrameDemand, capture_allowed};
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

/// A running task and the follower it took along: an inference (which
/// gives a result) or a slice of background detection (which does not).
type Running = Task<(Option<InferenceFinished>, Option<FaceFollower>)>;

#[derive(Resource, Default)]
struct InferenceState {
    task: Option<Running>,
    /// The thread budget's pool and its size.
    pool: Option<(usize, Arc<rayon::ThreadPool>)>,
    follower: Option<FaceFollower>,
    last_seq: u64,
    /// When the next inference may start: slots `1 / inference_hz` apart on
    /// a fixed schedule (see [`pace`]).
    next_due: Option<f64>,
}

/// How early, as a share of the period, a frame may start an inference
/// before its slot: frames and updates jitter, and a camera at the
/// inference rate would otherwise miss its slot by a fraction of a
/// millisecond and wait a whole update (or be dropped).
const EARLY: f64 = 0.25;

/// Whether an inference may start at `now` given the next slot `due`, and
/// the slot after it if it does. Slots follow a fixed schedule, so starting
/// a little early never raises the long-run rate above `hz`; after an idle
/// spell the schedule restarts from `now`.
fn pace(due: Option<f64>, now: f64, hz: f32) -> Option<f64> {
    let period = period(hz);
    match due {
        Some(d) if now < slot_opens(d, hz) => None,
        Some(d) if now - d <= period => Some(d + period),
        _ => Some(now + period),
    }
}

/// Seconds between inference slots at `hz` (at least 0.1 Hz).
fn period(hz: f32) -> f64 {
    1.0 / f64::from(hz.max(0.1))
}

/// When the slot due at `due` opens: [`EARLY`] of a period before it.
fn slot_opens(due: f64, hz: f32) -> f64 {
    due - EARLY * period(hz)
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
/// it is due, then tells the camera when the next frame will be taken.
fn start_inference(
    mut state: ResMut<InferenceState>,
    latest: Option<Res<LatestFrame>>,
    pipeline: Option<Res<EmotionPipeline>>,
    settings: Res<EmotionSettings>,
    time: Res<Time<Real>>,
    mut finished: MessageWriter<InferenceFinished>,
    demand: Res<FrameDemand>,
) {
    collect(&mut state, &mut finished);
    let now = time.elapsed_secs_f64();
    if let (Some(latest), Some(pipeline)) = (&latest, &pipeline)
        && !start(&mut state, latest, pipeline, &settings, now)
    {
        start_work(&mut state, pipeline);
    }
    // The camera decodes only the frames inference may take: the next one
    // is taken when the next slot opens (a frame that a newer one replaces
    // before then is dropped undecoded). Set after this update's start, so
    // that it already names the slot after it.
    let take = match state.next_due {
        Some(due) if !settings.decode_every_frame && pipeline.is_some() => {
            let wait = slot_opens(due, settings.inference_hz) - now;
            Some(Instant::now() + std::time::Duration::from_secs_f64(wait.max(0.0)))
        }
        _ => None,
    };
    demand.set_next_take(take);
}

/// The perception pool of the thread budget (made or remade when the budget
/// changes); `None` if its threads cannot start (then the global pool runs).
fn perception_pool(state: &mut InferenceState, threads: usize) -> Option<Arc<rayon::ThreadPool>> {
    let threads = threads.max(1);
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
    state.pool.as_ref().map(|(_, p)| p.clone())
}

/// Between frames: one slice of the follower's background detection
/// ([`FaceFollower::work`], a few milliseconds), when nothing else runs.
fn start_work(state: &mut InferenceState, pipeline: &EmotionPipeline) {
    if state.task.is_some() || !state.follower.as_ref().is_some_and(FaceFollower::has_work) {
        return;
    }
    // The pool the inference made: a budget that could not start its
    // threads leaves the work to the follower's own fallback.
    let Some(pool) = state.pool.as_ref().map(|(_, p)| p.clone()) else {
        return;
    };
    let Some(mut follower) = state.follower.take() else {
        return;
    };
    let pipeline = pipeline.0.clone();
    state.task = Some(AsyncComputeTaskPool::get().spawn(async move {
        if let Err(e) = pool.install(|| follower.work(&pipeline)) {
            warn!("background face detection failed: {e}");
        }
        (None, Some(follower))
    }));
}

/// Starts an inference on the newest frame when its slot is open and no
/// task is running; says whether it started one.
fn start(
    state: &mut InferenceState,
    latest: &LatestFrame,
    pipeline: &EmotionPipeline,
    settings: &EmotionSettings,
    now: f64,
) -> bool {
    if state.task.is_some() || latest.seq == state.last_seq {
        return false;
    }
    let Some(next_due) = pace(state.next_due, now, settings.inference_hz) else {
        return false;
    };
    let (frame, pipeline) = (latest.frame.clone(), pipeline.0.clone());
    let (seq, time_s, captured) = (latest.seq, latest.time, latest.instant);
    state.last_seq = seq;
    state.next_due = Some(next_due);
    let pool = perception_pool(state, settings.threads);
    // Following on (video sources; stills and slideshows are detected
    // whole every frame): the follower travels with the task and comes back.
    let follow = settings
        .follow
        .as_ref()
        .filter(|_| settings.source.is_video());
    let mut follower = match (follow, state.follower.take()) {
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
                Some(f) => match f.process_at(&pipeline, &frame, captured) {
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
        (Some(result), follower)
    }));
    true
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
        if let Some(result) = result {
            finished.write(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pace;

    #[test]
    fn pacing_keeps_the_rate_and_forgives_jitter() {
        // A 30 fps camera whose frames come a little early or late, paced
        // at 30 Hz: every frame starts an inference.
        let mut due = None;
        let mut started = 0;
        for i in 0..300 {
            let jitter = if i % 2 == 0 { -0.004 } else { 0.003 };
            let now = f64::from(i) / 30.0 + jitter;
            if let Some(next) = pace(due, now, 30.0) {
                due = Some(next);
                started += 1;
            }
        }
        assert_eq!(started, 300);
        // The same camera at 15 Hz: every other frame, never more.
        let (mut due, mut started) = (None, 0);
        for i in 0..300 {
            let now = f64::from(i) / 30.0 + if i % 3 == 0 { -0.004 } else { 0.0 };
            if let Some(next) = pace(due, now, 15.0) {
                due = Some(next);
                started += 1;
            }
        }
        assert!((148..=151).contains(&started), "{started}");
        // Frames far faster than the rate: the rate holds.
        let (mut due, mut started) = (None, 0);
        for i in 0..1000 {
            if let Some(next) = pace(due, f64::from(i) / 1000.0, 10.0) {
                due = Some(next);
                started += 1;
            }
        }
        assert!((10..=11).contains(&started), "{started}");
        // After an idle spell the schedule restarts instead of bursting.
        let due = pace(Some(1.0), 5.0, 10.0).unwrap();
        assert!((due - 5.1).abs() < 1e-9);
        assert!(pace(Some(due), 5.01, 10.0).is_none());
    }
}

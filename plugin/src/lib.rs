//! `bevy_emotion`: the player's facial expression as ECS data.
//!
//! Add [`EmotionPlugin`] and read messages:
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_emotion::prelude::*;
//!
//! fn react(mut changes: MessageReader<EmotionChanged>) {
//!     for c in changes.read() {
//!         info!("face {} went from {} to {} ({:.0}%)", c.id, c.from, c.to, c.confidence * 100.0);
//!     }
//! }
//!
//! App::new()
//!     .add_plugins((MinimalPlugins, bevy::asset::AssetPlugin::default()))
//!     .add_plugins(EmotionPlugin::default())
//!     .add_systems(Update, react.after(EmotionSystems::Publish))
//!     .run();
//! ```
//!
//! What happens each frame, in the [`EmotionSystems`] sets (chained in
//! `Update`):
//!
//! 1. **Capture**: the newest frame of the source (webcam on its own thread,
//!    images, or frames the app pushes) is taken from a one-slot mailbox;
//!    failures show in [`CameraStatus`] and are retried with back-off.
//! 2. **Detect**: if no inference is running and one is due (at most
//!    `inference_hz` per second), MTCNN detection, alignment and ARCH-1
//!    classification of that frame start on the `AsyncComputeTaskPool`.
//! 3. **Infer**: a finished inference is collected (the main thread only
//!    polls).
//! 4. **Smooth**: faces are matched to tracked face entities (stable ids
//!    across frames and brief occlusions), probabilities smoothed, labels
//!    changed with hysteresis.
//! 5. **Publish**: [`FaceAppeared`], [`EmotionDetected`], [`EmotionChanged`]
//!    and [`FaceLost`] messages are written; lost faces are despawned.
//!
//! Frames stay in memory: nothing is written to disk or sent anywhere. While
//! [`EmotionSettings::enabled`] is false the camera thread is stopped and the
//! device released.
//!
//! Weights are Bevy assets (`models/mtcnn.safetensors` and
//! `models/arch1_fer2013.safetensors` under the asset folder; see
//! [`ModelSource`]); a missing or invalid file shows in [`ModelStatus`].

pub mod model;
pub mod source;
pub mod track;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bevy::app::PluginGroupBuilder;
use bevy::math::{Rect, Vec2};
use bevy::prelude::*;
use bevy::tasks::futures::check_ready;
use bevy::tasks::{AsyncComputeTaskPool, Task};
pub use perception;
use perception::{Frame, Pipeline};

pub use model::{EmotionModel, EmotionModelLoader, EmotionPipeline, ModelSource, ModelStatus};
pub use source::{FramePusher, FrameSource, SourceKind, SourcePoll, WebcamConfig};
pub use track::{Emotion, Observation, Tracker, TrackerConfig};

/// Everything a game needs in one import.
pub mod prelude {
    pub use crate::{
        CameraStatus, Emotion, EmotionChanged, EmotionDetected, EmotionPlugin, EmotionSettings,
        EmotionSystems, FaceAppeared, FaceBox, FaceLost, FacePresence, FramePusher, ModelStatus,
        SmoothedEmotion, SourceKind, TrackedFace,
    };
}

/// Runtime switches (change them at any time through `ResMut<EmotionSettings>`).
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct EmotionSettings {
    /// Capture and inference run only while this is true; switching it off
    /// stops the camera thread, releases the device and forgets all faces.
    pub enabled: bool,
    /// Where frames come from.
    pub source: SourceKind,
    /// Smallest face side looked for, in frame pixels.
    pub min_face_size: f32,
    /// At most this many faces per frame, largest first.
    pub max_faces: usize,
    /// At most this many inferences per second (each on the newest frame).
    pub inference_hz: f32,
    /// Tracking and smoothing.
    pub tracker: TrackerConfig,
}

impl Default for EmotionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            source: SourceKind::default(),
            min_face_size: 40.0,
            max_faces: 4,
            inference_hz: 15.0,
            tracker: TrackerConfig::default(),
        }
    }
}

/// The plugin group: add it once. Build-time options are its fields
/// (defaults: webcam, 40 px minimum face, weights from the asset folder).
#[derive(Debug, Clone, Default)]
pub struct EmotionPlugin {
    /// The initial [`EmotionSettings`].
    pub settings: EmotionSettings,
    /// Where the networks come from (assets by default).
    pub models: ModelSource,
}

impl PluginGroup for EmotionPlugin {
    fn build(self) -> PluginGroupBuilder {
        PluginGroupBuilder::start::<Self>()
            .add(EmotionCorePlugin {
                settings: self.settings,
            })
            .add(EmotionModelPlugin {
                source: self.models,
            })
            .add(EmotionCapturePlugin)
            .add(EmotionInferencePlugin)
            .add(EmotionTrackingPlugin)
    }
}

/// The stages, chained in `Update` in this order. Order your systems
/// `.after(EmotionSystems::Publish)` to see this frame's messages.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmotionSystems {
    /// Takes the newest frame from the source.
    Capture,
    /// Starts detection + alignment + classification on a background task.
    Detect,
    /// Collects finished inferences.
    Infer,
    /// Tracks faces and smooths their emotions.
    Smooth,
    /// Writes the messages and despawns lost faces.
    Publish,
}

/// Settings, sets and messages.
pub struct EmotionCorePlugin {
    /// Initial settings.
    pub settings: EmotionSettings,
}

impl Plugin for EmotionCorePlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(self.settings.clone())
            .init_resource::<FramePusher>()
            .init_resource::<CameraStatus>()
            .init_resource::<EmotionStats>()
            .add_message::<FaceAppeared>()
            .add_message::<FaceLost>()
            .add_message::<EmotionDetected>()
            .add_message::<EmotionChanged>()
            .add_message::<CameraStatusChanged>()
            .configure_sets(
                Update,
                (
                    EmotionSystems::Capture,
                    EmotionSystems::Detect,
                    EmotionSystems::Infer,
                    EmotionSystems::Smooth,
                    EmotionSystems::Publish,
                )
                    .chain(),
            );
    }
}

/// Loads the networks ([`ModelSource`]).
pub struct EmotionModelPlugin {
    /// Where the networks come from.
    pub source: ModelSource,
}

impl Plugin for EmotionModelPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<ModelStatus>();
        match &self.source {
            ModelSource::Preloaded(p) => {
                app.insert_resource(EmotionPipeline(p.clone()))
                    .insert_resource(ModelStatus::Ready);
            }
            ModelSource::Assets { .. } => {
                app.init_asset::<EmotionModel>()
                    .init_asset_loader::<EmotionModelLoader>()
                    .insert_resource(model::ModelSourceRes(self.source.clone()))
                    .add_systems(Startup, model::load_models)
                    .add_systems(
                        Update,
                        model::assemble_pipeline.before(EmotionSystems::Capture),
                    );
            }
        }
        app.add_systems(
            Update,
            apply_pipeline_settings
                .before(EmotionSystems::Detect)
                .run_if(resource_changed::<EmotionSettings>),
        );
    }
}

/// Keeps the pipeline's detector settings in line with [`EmotionSettings`].
fn apply_pipeline_settings(
    settings: Res<EmotionSettings>,
    pipeline: Option<ResMut<EmotionPipeline>>,
) {
    let Some(mut pipeline) = pipeline else {
        return;
    };
    let mut p: Pipeline = (*pipeline.0).clone();
    match p.set_config(model::pipeline_config(&settings)) {
        Ok(()) => pipeline.0 = Arc::new(p),
        Err(e) => warn!("ignoring invalid emotion settings: {e}"),
    }
}

/// The camera (or other source) as the app should show it to the player.
#[derive(Resource, Debug, Clone, PartialEq, Default)]
pub enum CameraStatus {
    /// Capture is switched off ([`EmotionSettings::enabled`]).
    #[default]
    Off,
    /// The source is starting (opening the camera, decoding images).
    Starting(String),
    /// Frames are arriving.
    Running(String),
    /// The source failed (no camera, permission denied, unplugged, no
    /// readable images); it is retried after `retry_in` seconds.
    Unavailable {
        /// What failed.
        reason: String,
        /// Seconds until the next attempt.
        retry_in: f32,
    },
}

/// Sent whenever [`CameraStatus`] changes.
#[derive(Message, Debug, Clone, PartialEq)]
pub struct CameraStatusChanged(pub CameraStatus);

/// Counters, for overlays and tests.
#[derive(Resource, Debug, Clone, Default)]
pub struct EmotionStats {
    /// Frames taken from the source.
    pub frames_captured: u64,
    /// Frames run through detection and classification.
    pub frames_processed: u64,
    /// Sequence number of the newest processed frame.
    pub last_processed: u64,
    /// Time from capture to results of the newest processed frame.
    pub last_latency: Duration,
    /// Inferences that failed (logged).
    pub failures: u64,
}

/// The newest captured frame (kept in memory only).
#[derive(Resource, Clone)]
pub struct LatestFrame {
    /// The frame.
    pub frame: Arc<Frame>,
    /// Sequence number, counting from 1.
    pub seq: u64,
    /// App time when it was captured, seconds.
    pub time: f64,
    /// Wall-clock capture instant (for latency).
    pub instant: Instant,
}

#[derive(Resource, Default)]
struct CaptureState {
    source: Option<Box<dyn FrameSource>>,
    kind: Option<SourceKind>,
    retry_at: f64,
    backoff: f32,
    seq: u64,
}

/// Owns the frame source ([`EmotionSystems::Capture`]).
pub struct EmotionCapturePlugin;

impl Plugin for EmotionCapturePlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<CaptureState>()
            .add_systems(Update, capture.in_set(EmotionSystems::Capture));
    }
}

fn set_status(
    status: &mut CameraStatus,
    new: CameraStatus,
    writer: &mut MessageWriter<CameraStatusChanged>,
) {
    if *status != new {
        match &new {
            CameraStatus::Unavailable { reason, retry_in } => {
                warn!("frame source unavailable: {reason} (retrying in {retry_in:.0} s)");
            }
            other => debug!("frame source: {other:?}"),
        }
        *status = new.clone();
        writer.write(CameraStatusChanged(new));
    }
}

fn capture(
    mut commands: Commands,
    mut state: ResMut<CaptureState>,
    settings: Res<EmotionSettings>,
    time: Res<Time>,
    pusher: Res<FramePusher>,
    mut status: ResMut<CameraStatus>,
    mut stats: ResMut<EmotionStats>,
    mut writer: MessageWriter<CameraStatusChanged>,
) {
    let now = time.elapsed_secs_f64();
    if !settings.enabled {
        if let Some(mut s) = state.source.take() {
            s.stop();
            state.kind = None;
            commands.remove_resource::<LatestFrame>();
        }
        set_status(&mut status, CameraStatus::Off, &mut writer);
        return;
    }
    if state.kind.as_ref() != Some(&settings.source) {
        if let Some(mut s) = state.source.take() {
            s.stop();
        }
        state.kind = Some(settings.source.clone());
        state.retry_at = now;
        state.backoff = 1.0;
    }
    if state.source.is_none() {
        if now < state.retry_at {
            if let CameraStatus::Unavailable { reason, .. } = &*status {
                let new = CameraStatus::Unavailable {
                    reason: reason.clone(),
                    retry_in: (state.retry_at - now).ceil() as f32,
                };
                // Only the countdown changed: update without a message.
                *status = new;
            }
            return;
        }
        let mut s = source::make_source(&settings.source, &pusher);
        s.start();
        set_status(
            &mut status,
            CameraStatus::Starting(s.describe()),
            &mut writer,
        );
        state.source = Some(s);
    }
    let Some(source) = state.source.as_mut() else {
        return;
    };
    match source.poll(now) {
        SourcePoll::Frame(frame) => {
            let what = source.describe();
            state.seq += 1;
            state.backoff = 1.0;
            stats.frames_captured += 1;
            commands.insert_resource(LatestFrame {
                frame: Arc::new(frame),
                seq: state.seq,
                time: now,
                instant: Instant::now(),
            });
            set_status(&mut status, CameraStatus::Running(what), &mut writer);
        }
        SourcePoll::Pending => {}
        SourcePoll::Failed(reason) => {
            source.stop();
            state.source = None;
            let wait = state.backoff;
            state.retry_at = now + f64::from(wait);
            state.backoff = (wait * 2.0).min(30.0);
            set_status(
                &mut status,
                CameraStatus::Unavailable {
                    reason,
                    retry_in: wait,
                },
                &mut writer,
            );
        }
    }
}

/// What one inference produced.
struct InferenceResult {
    seq: u64,
    time: f64,
    captured: Instant,
    faces: Result<Vec<Observation>, String>,
}

#[derive(Resource, Default)]
struct InferenceState {
    task: Option<Task<InferenceResult>>,
    last_seq: u64,
    last_start: Option<f64>,
    ready: Option<InferenceResult>,
}

/// Runs the pipeline off the main thread ([`EmotionSystems::Detect`] and
/// [`EmotionSystems::Infer`]).
pub struct EmotionInferencePlugin;

impl Plugin for EmotionInferencePlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<InferenceState>().add_systems(
            Update,
            (
                start_inference.in_set(EmotionSystems::Detect),
                collect_inference.in_set(EmotionSystems::Infer),
            ),
        );
    }
}

fn start_inference(
    mut state: ResMut<InferenceState>,
    latest: Option<Res<LatestFrame>>,
    pipeline: Option<Res<EmotionPipeline>>,
    settings: Res<EmotionSettings>,
    time: Res<Time>,
) {
    let (Some(latest), Some(pipeline)) = (latest, pipeline) else {
        return;
    };
    if state.task.is_some() || latest.seq == state.last_seq || !settings.enabled {
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
    state.task = Some(AsyncComputeTaskPool::get().spawn(async move {
        let faces = pipeline
            .process(&frame)
            .map(|faces| {
                faces
                    .into_iter()
                    .map(|f| Observation {
                        bbox: f.detection.bbox,
                        score: f.detection.score,
                        landmarks: f.detection.landmarks,
                        probs: f.probs,
                    })
                    .collect()
            })
            .map_err(|e| e.to_string());
        InferenceResult {
            seq,
            time: time_s,
            captured,
            faces,
        }
    }));
}

fn collect_inference(mut state: ResMut<InferenceState>) {
    let Some(task) = state.task.as_mut() else {
        return;
    };
    if let Some(result) = check_ready(task) {
        state.task = None;
        state.ready = Some(result);
    }
}

/// A tracked face. Its id is stable while the face stays in view (brief
/// occlusions included) and never reused.
#[derive(Component, Debug, Clone, PartialEq)]
pub struct TrackedFace {
    /// Stable id.
    pub id: u64,
    /// App time of the frame it was first seen in, seconds.
    pub first_seen: f64,
    /// App time of the frame it was last seen in, seconds.
    pub last_seen: f64,
}

impl TrackedFace {
    /// Seconds since the face was first seen, at app time `now`.
    pub fn age(&self, now: f64) -> f64 {
        now - self.first_seen
    }
}

/// The face's box in frame pixels, and its detector score.
#[derive(Component, Debug, Clone, PartialEq)]
pub struct FaceBox {
    /// The box (`min` top-left, `max` bottom-right).
    pub rect: Rect,
    /// Detector score.
    pub score: f32,
}

/// Five landmarks: left eye, right eye, nose, left and right mouth corner.
#[derive(Component, Debug, Clone, PartialEq)]
pub struct FaceLandmarks(pub [Vec2; 5]);

/// The classifier's probabilities for the newest frame.
#[derive(Component, Debug, Clone, PartialEq)]
pub struct RawEmotion {
    /// Probabilities in class order.
    pub probs: Vec<f32>,
}

/// Smoothed probabilities and the current (hysteresis-stable) emotion.
#[derive(Component, Debug, Clone, PartialEq)]
pub struct SmoothedEmotion {
    /// Smoothed probabilities in class order.
    pub probs: Vec<f32>,
    /// Current emotion.
    pub emotion: Emotion,
    /// Its smoothed probability.
    pub confidence: f32,
}

/// How many faces are tracked now (for games that only care whether a
/// player is there).
#[derive(Resource, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FacePresence(pub usize);

/// A new face entered.
#[derive(Message, Debug, Clone, PartialEq)]
pub struct FaceAppeared {
    /// Its entity.
    pub face: Entity,
    /// Its stable id.
    pub id: u64,
}

/// A face left (or capture stopped). The entity is despawned.
#[derive(Message, Debug, Clone, PartialEq)]
pub struct FaceLost {
    /// Its former entity.
    pub face: Entity,
    /// Its id.
    pub id: u64,
}

/// One inference for one face (every processed frame).
#[derive(Message, Debug, Clone, PartialEq)]
pub struct EmotionDetected {
    /// The face's entity.
    pub face: Entity,
    /// Its id.
    pub id: u64,
    /// The most probable emotion in this frame (unsmoothed).
    pub emotion: Emotion,
    /// Its probability.
    pub confidence: f32,
    /// All probabilities, in the classifier's class order.
    pub probs: Vec<f32>,
    /// App time of the frame, seconds.
    pub timestamp: f64,
    /// Wall-clock time from capture to result.
    pub latency: Duration,
}

/// The smoothed emotion of a face changed.
#[derive(Message, Debug, Clone, PartialEq)]
pub struct EmotionChanged {
    /// The face's entity.
    pub face: Entity,
    /// Its id.
    pub id: u64,
    /// Previous emotion.
    pub from: Emotion,
    /// New emotion.
    pub to: Emotion,
    /// Smoothed probability of the new emotion.
    pub confidence: f32,
    /// App time of the frame, seconds.
    pub timestamp: f64,
}

#[derive(Resource, Default)]
struct TrackingState {
    tracker: Tracker,
    entities: std::collections::HashMap<u64, Entity>,
    appeared: Vec<FaceAppeared>,
    detected: Vec<EmotionDetected>,
    changed: Vec<EmotionChanged>,
    lost: Vec<FaceLost>,
}

/// Face entities, smoothing and messages ([`EmotionSystems::Smooth`] and
/// [`EmotionSystems::Publish`]).
pub struct EmotionTrackingPlugin;

impl Plugin for EmotionTrackingPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<TrackingState>()
            .init_resource::<FacePresence>()
            .add_systems(
                Update,
                (
                    track_faces.in_set(EmotionSystems::Smooth),
                    publish.in_set(EmotionSystems::Publish),
                ),
            );
    }
}

fn classes(pipeline: Option<&EmotionPipeline>) -> Vec<Emotion> {
    pipeline.map_or_else(
        || Emotion::FER2013.to_vec(),
        |p| {
            p.0.classifier()
                .classes()
                .iter()
                .map(|c| Emotion::from_name(c))
                .collect()
        },
    )
}

#[allow(clippy::too_many_arguments)]
fn track_faces(
    mut commands: Commands,
    mut tracking: ResMut<TrackingState>,
    mut inference: ResMut<InferenceState>,
    settings: Res<EmotionSettings>,
    pipeline: Option<Res<EmotionPipeline>>,
    mut stats: ResMut<EmotionStats>,
    mut presence: ResMut<FacePresence>,
) {
    let tracking = &mut *tracking;
    tracking.tracker.config = settings.tracker.clone();
    if !settings.enabled {
        for id in tracking.tracker.clear() {
            if let Some(face) = tracking.entities.remove(&id) {
                tracking.lost.push(FaceLost { face, id });
            }
        }
        presence.0 = 0;
        return;
    }
    let Some(result) = inference.ready.take() else {
        return;
    };
    let faces = match result.faces {
        Ok(f) => f,
        Err(e) => {
            stats.failures += 1;
            warn!("emotion inference failed: {e}");
            return;
        }
    };
    let latency = result.captured.elapsed();
    stats.frames_processed += 1;
    stats.last_processed = result.seq;
    stats.last_latency = latency;
    let names = classes(pipeline.as_deref());
    let name = |i: usize| names.get(i).copied().unwrap_or(Emotion::Other);
    let update = tracking.tracker.update(result.time, &faces);
    for &(id, oi) in &update.observed {
        let Some(track) = tracking.tracker.get(id) else {
            continue;
        };
        let o = &faces[oi];
        let [x1, y1, x2, y2] = o.bbox;
        let components = (
            TrackedFace {
                id,
                first_seen: track.first_seen,
                last_seen: track.last_seen,
            },
            FaceBox {
                rect: Rect::new(x1, y1, x2, y2),
                score: o.score,
            },
            FaceLandmarks(o.landmarks.map(|[x, y]| Vec2::new(x, y))),
            RawEmotion {
                probs: o.probs.clone(),
            },
            SmoothedEmotion {
                probs: track.smoothed.clone(),
                emotion: name(track.label),
                confidence: track.smoothed.get(track.label).copied().unwrap_or(0.0),
            },
        );
        let face = match tracking.entities.get(&id) {
            Some(&e) => {
                commands.entity(e).insert(components);
                e
            }
            None => {
                let e = commands
                    .spawn((Name::new(format!("face {id}")), components))
                    .id();
                tracking.entities.insert(id, e);
                tracking.appeared.push(FaceAppeared { face: e, id });
                e
            }
        };
        let best = perception::argmax(&o.probs);
        tracking.detected.push(EmotionDetected {
            face,
            id,
            emotion: name(best),
            confidence: o.probs.get(best).copied().unwrap_or(0.0),
            probs: o.probs.clone(),
            timestamp: result.time,
            latency,
        });
    }
    for &(id, from, to) in &update.changed {
        if let (Some(&face), Some(track)) = (tracking.entities.get(&id), tracking.tracker.get(id)) {
            tracking.changed.push(EmotionChanged {
                face,
                id,
                from: name(from),
                to: name(to),
                confidence: track.smoothed.get(to).copied().unwrap_or(0.0),
                timestamp: result.time,
            });
        }
    }
    for id in update.lost {
        if let Some(face) = tracking.entities.remove(&id) {
            tracking.lost.push(FaceLost { face, id });
        }
    }
    presence.0 = tracking.tracker.tracks().len();
}

fn publish(
    mut commands: Commands,
    mut tracking: ResMut<TrackingState>,
    mut appeared: MessageWriter<FaceAppeared>,
    mut detected: MessageWriter<EmotionDetected>,
    mut changed: MessageWriter<EmotionChanged>,
    mut lost: MessageWriter<FaceLost>,
) {
    appeared.write_batch(tracking.appeared.drain(..));
    detected.write_batch(tracking.detected.drain(..));
    changed.write_batch(tracking.changed.drain(..));
    for l in tracking.lost.drain(..) {
        if let Ok(mut e) = commands.get_entity(l.face) {
            e.despawn();
        }
        lost.write(l);
    }
}

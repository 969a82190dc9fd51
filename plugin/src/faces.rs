//! The face stage ([`EmotionSystems::Smooth`] and
//! [`EmotionSystems::Publish`]). Each [`InferenceFinished`] goes through:
//!
//! 1. the **quality gate** ([`EmotionSettings::quality`]): a face that fails
//!    it is [`ExpressionState::Unsure`] with the reason; it is still tracked,
//!    but its expression is held, never changed, by that frame;
//! 2. **neutral calibration**, for faces that have a [`NeutralCalibration`]
//!    (made by [`CalibrateNeutral`], or a saved baseline the game inserts)
//!    or when [`PlayerBaseline`] is set: probabilities are corrected by the
//!    player's resting face (`perception::calibrate`), raw ones kept beside;
//! 3. the [`Tracker`]: stable identities across frames and brief
//!    occlusions, smoothed (calibrated) probabilities, hysteresis on the
//!    label;
//! 4. **expression episodes** per face and emotion over the smoothed
//!    intensity: [`ExpressionOnset`], [`ExpressionApex`],
//!    [`ExpressionOffset`] (`perception::episodes`).
//!
//! Every tracked face is an entity carrying [`TrackedFace`], [`FaceBox`],
//! [`FaceLandmarks`], [`RawEmotion`], [`SmoothedEmotion`],
//! [`ExpressionState`] and [`Quality`]; the messages are written as the
//! tracker reports them; tracks expire on time even when no result arrives;
//! lost faces are despawned in `Publish`.
//!
//! ```no_run
//! # use bevy::prelude::*;
//! # use bevy_emotion::prelude::*;
//! // "Relax your face for three seconds": calibrate the main face.
//! fn calibrate(faces: Query<Entity, Added<TrackedFace>>, mut ask: MessageWriter<CalibrateNeutral>) {
//!     for face in &faces {
//!         ask.write(CalibrateNeutral { face, seconds: 3.0 });
//!     }
//! }
//! fn react(mut onsets: MessageReader<ExpressionOnset>) {
//!     for o in onsets.read() {
//!         info!("face {} started looking {} ({:.0}%)", o.id, o.emotion, o.intensity * 100.0);
//!     }
//! }
//! // Say so when a face cannot be read well.
//! fn quality(faces: Query<(&TrackedFace, &ExpressionState), Changed<ExpressionState>>) {
//!     for (face, state) in &faces {
//!         if let ExpressionState::Unsure { reason } = state {
//!             info!("face {}: unsure, {reason}", face.id);
//!         }
//!     }
//! }
//! ```

use std::collections::HashMap;
use std::time::Duration;

use bevy::ecs::system::SystemParam;
use bevy::math::{Rect, Vec2};
use bevy::prelude::*;
use perception::{
    CalibrationError, Emotion, EpisodeEvent, Episodes, FaceQuality, NeutralBaseline, Observation,
    Tracker, UnsureReason, argmax,
};

use crate::capture::{EmotionStats, capture_allowed, capture_stopped};
use crate::inference::InferenceFinished;
use crate::model::{EmotionPipeline, class_names};
use crate::settings::{EmotionSettings, EmotionSystems, stage_setup};

/// A tracked face. The entity is the face's identity; `id` is a stable
/// number for logs and saved data: it stays while the face stays in view
/// (brief occlusions included) and is never reused.
#[derive(Component, Reflect, Debug, Clone, PartialEq)]
#[reflect(Component)]
pub struct TrackedFace {
    /// Stable id.
    pub id: u64,
    /// Real time (`Time<Real>`) of the frame it was first seen in, seconds.
    pub first_seen: f64,
    /// Real time (`Time<Real>`) of the frame it was last seen in, seconds.
    pub last_seen: f64,
    /// Sequence number of the frame it was last seen in
    /// ([`LatestFrame::seq`](crate::LatestFrame::seq)).
    pub last_frame: u64,
}

impl TrackedFace {
    /// Seconds since the face was first seen, at real time `now`.
    pub fn age(&self, now: f64) -> f64 {
        now - self.first_seen
    }
}

/// The face's box in frame pixels, and its detector score.
#[derive(Component, Reflect, Debug, Clone, PartialEq)]
#[reflect(Component)]
pub struct FaceBox {
    /// The box (`min` top-left, `max` bottom-right).
    pub rect: Rect,
    /// Detector score.
    pub score: f32,
}

/// Five landmarks: left eye, right eye, nose, left and right mouth corner.
#[derive(Component, Reflect, Debug, Clone, PartialEq)]
#[reflect(Component)]
pub struct FaceLandmarks(pub [Vec2; 5]);

/// The classifier's probabilities for the newest frame (empty when the face
/// could not be classified).
#[derive(Component, Reflect, Debug, Clone, PartialEq)]
#[reflect(Component)]
pub struct RawEmotion {
    /// Probabilities in class order, as the classifier gave them.
    pub probs: Vec<f32>,
    /// The same, corrected by the face's neutral baseline (equal to `probs`
    /// while the face is not calibrated).
    pub calibrated: Vec<f32>,
}

/// What was measured of the face in the newest frame.
#[derive(Component, Reflect, Debug, Clone, PartialEq)]
#[reflect(Component)]
pub struct Quality(pub FaceQuality);

/// Whether the face's expression can be trusted now.
#[derive(Component, Reflect, Debug, Clone, Copy, PartialEq)]
#[reflect(Component)]
pub enum ExpressionState {
    /// The newest frame passed the quality gate: the smoothed emotion.
    Known {
        /// The smoothed (hysteresis-stable) emotion.
        emotion: Emotion,
        /// Its smoothed probability.
        confidence: f32,
    },
    /// The newest frame failed the gate; the smoothed state is held.
    Unsure {
        /// The first check that failed.
        reason: UnsureReason,
    },
}

/// The face's neutral baseline: its probabilities are corrected by it. Made
/// by [`CalibrateNeutral`]; a game can also insert a saved one (it is
/// checked against the model's classes, and removed with a
/// [`CalibrationFinished`] error if it does not fit).
#[derive(Component, Reflect, Debug, Clone, PartialEq)]
#[reflect(Component)]
pub struct NeutralCalibration(pub NeutralBaseline);

/// A calibration in progress on this face.
#[derive(Component, Reflect, Debug, Clone, PartialEq)]
#[reflect(Component)]
pub struct Calibrating {
    /// Real time (`Time<Real>`) when it ends, seconds.
    pub until: f64,
    /// Raw probabilities gathered so far (frames that passed the image
    /// checks; low confidence is expected of a resting face and kept).
    pub samples: Vec<Vec<f32>>,
}

/// A baseline for every face that has no [`NeutralCalibration`] of its own
/// (a single-player game: the player's saved baseline, still used after the
/// face was lost and found again).
#[derive(Resource, Reflect, Debug, Clone, PartialEq, Default)]
#[reflect(Resource)]
pub struct PlayerBaseline(pub Option<NeutralBaseline>);

/// Smoothed probabilities and the current (hysteresis-stable) emotion.
#[derive(Component, Reflect, Debug, Clone, PartialEq)]
#[reflect(Component)]
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
#[derive(Resource, Reflect, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[reflect(Resource)]
pub struct FacePresence(pub usize);

/// A new face entered.
#[derive(Message, Debug, Clone, PartialEq)]
pub struct FaceAppeared {
    /// Its entity.
    pub face: Entity,
    /// Its stable id.
    pub id: u64,
    /// Its first emotion (`None` when its first frame was unsure).
    pub emotion: Option<Emotion>,
    /// The frame's sequence number ([`LatestFrame::seq`](crate::LatestFrame::seq)).
    pub frame: u64,
    /// Real time (`Time<Real>`) of the frame, seconds.
    pub timestamp: f64,
}

/// A face left (or capture stopped). The entity is despawned in
/// [`EmotionSystems::Publish`].
#[derive(Message, Debug, Clone, PartialEq)]
pub struct FaceLost {
    /// Its former entity.
    pub face: Entity,
    /// Its id.
    pub id: u64,
    /// Real time (`Time<Real>`) when it was declared lost, seconds.
    pub timestamp: f64,
    /// Sequence number of the last frame it was seen in
    /// ([`LatestFrame::seq`](crate::LatestFrame::seq)); 0 for a face lost
    /// before its entity got its first [`TrackedFace`].
    pub last_frame: u64,
    /// Real time (`Time<Real>`) of that frame, seconds (`timestamp` for a
    /// face lost before its entity got its first [`TrackedFace`]).
    pub last_seen: f64,
}

/// One inference for one face (every processed frame).
#[derive(Message, Debug, Clone, PartialEq)]
pub struct EmotionDetected {
    /// The face's entity.
    pub face: Entity,
    /// Its id.
    pub id: u64,
    /// The most probable emotion in this frame (unsmoothed, calibrated).
    pub emotion: Emotion,
    /// Its probability.
    pub confidence: f32,
    /// All probabilities, calibrated, in the classifier's class order.
    pub probs: Vec<f32>,
    /// The classifier's own probabilities.
    pub raw_probs: Vec<f32>,
    /// What was measured of the face.
    pub quality: Option<FaceQuality>,
    /// Set when this frame's expression is not to be trusted.
    pub unsure: Option<UnsureReason>,
    /// The frame's sequence number ([`LatestFrame::seq`](crate::LatestFrame::seq)).
    pub frame: u64,
    /// Real time (`Time<Real>`) of the frame, seconds.
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
    /// The frame's sequence number ([`LatestFrame::seq`](crate::LatestFrame::seq)).
    pub frame: u64,
    /// Real time (`Time<Real>`) of the frame, seconds.
    pub timestamp: f64,
}

/// Asks the face stage to learn `face`'s resting expression over the next
/// `seconds` (the player holds a relaxed face meanwhile).
#[derive(Message, Debug, Clone, PartialEq)]
pub struct CalibrateNeutral {
    /// The face.
    pub face: Entity,
    /// How long to gather, seconds.
    pub seconds: f32,
}

/// A calibration ended: the baseline (now the face's
/// [`NeutralCalibration`]) or why there is none (the face stays
/// uncalibrated).
#[derive(Message, Debug, Clone, PartialEq)]
pub struct CalibrationFinished {
    /// The face.
    pub face: Entity,
    /// The baseline, or the reason.
    pub result: Result<NeutralBaseline, CalibrationError>,
}

/// An expression started (its intensity stayed above the on-threshold for
/// the dwell time).
#[derive(Message, Debug, Clone, PartialEq)]
pub struct ExpressionOnset {
    /// The face.
    pub face: Entity,
    /// Its id.
    pub id: u64,
    /// The expression.
    pub emotion: Emotion,
    /// Its smoothed intensity when confirmed.
    pub intensity: f32,
    /// Real time (`Time<Real>`) it first crossed the threshold, seconds.
    pub at: f64,
}

/// An expression peaked.
#[derive(Message, Debug, Clone, PartialEq)]
pub struct ExpressionApex {
    /// The face.
    pub face: Entity,
    /// Its id.
    pub id: u64,
    /// The expression.
    pub emotion: Emotion,
    /// The peak intensity.
    pub intensity: f32,
    /// Real time (`Time<Real>`) of the peak, seconds.
    pub at: f64,
}

/// An expression ended (or its face was lost).
#[derive(Message, Debug, Clone, PartialEq)]
pub struct ExpressionOffset {
    /// The face.
    pub face: Entity,
    /// Its id.
    pub id: u64,
    /// The expression.
    pub emotion: Emotion,
    /// Seconds from onset to end.
    pub duration: f64,
    /// The episode's peak intensity.
    pub peak: f32,
    /// Real time (`Time<Real>`) it ended, seconds.
    pub at: f64,
}

/// The stage's tracker (Bevy-free, from `perception`).
#[derive(Resource, Default)]
struct FaceTracker(Tracker);

/// Each face's episode machines.
#[derive(Component)]
struct FaceEpisodes(Episodes);

/// Face entities, quality, calibration, smoothing, episodes and messages.
pub struct EmotionFacesPlugin;

impl Plugin for EmotionFacesPlugin {
    fn build(&self, app: &mut App) {
        stage_setup(app);
        app.init_resource::<FaceTracker>()
            .init_resource::<FacePresence>()
            .init_resource::<PlayerBaseline>()
            .init_resource::<EmotionStats>()
            .add_message::<InferenceFinished>()
            .add_message::<FaceAppeared>()
            .add_message::<FaceLost>()
            .add_message::<EmotionDetected>()
            .add_message::<EmotionChanged>()
            .add_message::<CalibrateNeutral>()
            .add_message::<CalibrationFinished>()
            .add_message::<ExpressionOnset>()
            .add_message::<ExpressionApex>()
            .add_message::<ExpressionOffset>()
            .register_type::<TrackedFace>()
            .register_type::<FaceBox>()
            .register_type::<FaceLandmarks>()
            .register_type::<RawEmotion>()
            .register_type::<SmoothedEmotion>()
            .register_type::<Quality>()
            .register_type::<ExpressionState>()
            .register_type::<NeutralCalibration>()
            .register_type::<Calibrating>()
            .register_type::<PlayerBaseline>()
            .register_type::<FacePresence>()
            .add_systems(
                Update,
                (
                    forget_faces
                        .in_set(EmotionSystems::Smooth)
                        .run_if(capture_stopped),
                    (
                        start_calibration,
                        check_baselines,
                        track_faces,
                        expire_faces,
                    )
                        .chain()
                        .in_set(EmotionSystems::Smooth)
                        .run_if(capture_allowed),
                    despawn_lost.in_set(EmotionSystems::Publish),
                ),
            );
    }
}

/// Every message the face stage writes.
#[derive(SystemParam)]
struct FaceMessages<'w> {
    appeared: MessageWriter<'w, FaceAppeared>,
    detected: MessageWriter<'w, EmotionDetected>,
    changed: MessageWriter<'w, EmotionChanged>,
    lost: MessageWriter<'w, FaceLost>,
    onset: MessageWriter<'w, ExpressionOnset>,
    apex: MessageWriter<'w, ExpressionApex>,
    offset: MessageWriter<'w, ExpressionOffset>,
    calibrated: MessageWriter<'w, CalibrationFinished>,
}

impl FaceMessages<'_> {
    fn episodes(&mut self, face: Entity, id: u64, names: &[Emotion], events: Vec<EpisodeEvent>) {
        let name = |i: usize| names.get(i).copied().unwrap_or(Emotion::Other);
        for e in events {
            match e {
                EpisodeEvent::Onset {
                    class,
                    intensity,
                    at,
                } => {
                    self.onset.write(ExpressionOnset {
                        face,
                        id,
                        emotion: name(class),
                        intensity,
                        at,
                    });
                }
                EpisodeEvent::Apex {
                    class,
                    intensity,
                    at,
                } => {
                    self.apex.write(ExpressionApex {
                        face,
                        id,
                        emotion: name(class),
                        intensity,
                        at,
                    });
                }
                EpisodeEvent::Offset {
                    class,
                    duration,
                    peak,
                    at,
                } => {
                    self.offset.write(ExpressionOffset {
                        face,
                        id,
                        emotion: name(class),
                        duration,
                        peak,
                        at,
                    });
                }
            }
        }
    }
}

type FaceItem<'a> = (
    Entity,
    &'a TrackedFace,
    Option<&'a NeutralCalibration>,
    Option<&'a mut Calibrating>,
    Option<&'a mut FaceEpisodes>,
);

/// Capture stopped or consent revoked: every face is lost at once.
fn forget_faces(
    mut tracker: ResMut<FaceTracker>,
    mut faces: Query<FaceItem>,
    mut presence: ResMut<FacePresence>,
    pipeline: Option<Res<EmotionPipeline>>,
    time: Res<Time<Real>>,
    mut out: FaceMessages,
) {
    if tracker.0.tracks().is_empty() && faces.is_empty() {
        return;
    }
    tracker.0.clear();
    let names = emotions(&class_names(pipeline.as_deref()));
    let t = time.elapsed_secs_f64();
    let all: Vec<(Entity, u64)> = faces.iter().map(|(e, f, ..)| (e, f.id)).collect();
    for (entity, id) in all {
        lose(&mut faces, entity, id, t, &names, &mut out);
    }
    presence.0 = 0;
}

/// The emotions the class names stand for.
fn emotions(classes: &[String]) -> Vec<Emotion> {
    classes.iter().map(|c| Emotion::from_name(c)).collect()
}

/// [`CalibrateNeutral`] requests: a face that exists starts gathering, any
/// other gets an error at once.
fn start_calibration(
    mut commands: Commands,
    mut asks: MessageReader<CalibrateNeutral>,
    faces: Query<(), With<TrackedFace>>,
    time: Res<Time<Real>>,
    mut done: MessageWriter<CalibrationFinished>,
) {
    for ask in asks.read() {
        if faces.contains(ask.face) {
            commands.entity(ask.face).insert(Calibrating {
                until: time.elapsed_secs_f64() + f64::from(ask.seconds.max(0.0)),
                samples: Vec::new(),
            });
        } else {
            done.write(CalibrationFinished {
                face: ask.face,
                result: Err(CalibrationError::NoFace),
            });
        }
    }
}

/// Baselines the game inserted are checked against the model's classes.
fn check_baselines(
    mut commands: Commands,
    added: Query<(Entity, &NeutralCalibration), Changed<NeutralCalibration>>,
    pipeline: Option<Res<EmotionPipeline>>,
    mut done: MessageWriter<CalibrationFinished>,
) {
    if added.is_empty() {
        return;
    }
    let classes = class_names(pipeline.as_deref());
    for (face, cal) in &added {
        if let Err(e) = cal.0.check(&classes) {
            warn!("ignoring the neutral baseline of face {face}: {e}");
            commands.entity(face).remove::<NeutralCalibration>();
            done.write(CalibrationFinished {
                face,
                result: Err(e),
            });
        }
    }
}

/// The observations of one result after the quality gate.
fn gated(faces: &[Observation], settings: &EmotionSettings) -> Vec<Observation> {
    faces
        .iter()
        .map(|o| {
            let mut o = o.clone();
            if o.unsure.is_none() {
                o.unsure = match &o.quality {
                    Some(q) => settings.quality.check(q).err().map(|u| u.reason),
                    None => Some(UnsureReason::AlignmentFailed),
                };
            }
            o
        })
        .collect()
}

/// Whether a calibration may use a frame: it passed every image check (a
/// resting face is often of low confidence, which is kept).
fn usable_for_calibration(o: &Observation) -> bool {
    !o.probs.is_empty() && matches!(o.unsure, None | Some(UnsureReason::LowConfidence))
}

fn track_faces(
    mut commands: Commands,
    mut tracker: ResMut<FaceTracker>,
    mut results: MessageReader<InferenceFinished>,
    settings: Res<EmotionSettings>,
    player: Res<PlayerBaseline>,
    pipeline: Option<Res<EmotionPipeline>>,
    mut stats: ResMut<EmotionStats>,
    mut presence: ResMut<FacePresence>,
    mut faces: Query<FaceItem>,
    mut out: FaceMessages,
) {
    if results.is_empty() {
        return;
    }
    let tracker = &mut tracker.0;
    tracker.config = settings.tracker.clone();
    let classes = class_names(pipeline.as_deref());
    let names = emotions(&classes);
    let name = |i: usize| names.get(i).copied().unwrap_or(Emotion::Other);
    // The entity and baseline of each live track id (spawned ones are added
    // below).
    let mut entities: HashMap<u64, Entity> = HashMap::new();
    let mut baselines: HashMap<u64, NeutralBaseline> = HashMap::new();
    for (e, t, cal, _, _) in &faces {
        entities.insert(t.id, e);
        if let Some(c) = cal {
            baselines.insert(t.id, c.0.clone());
        }
    }
    let player = player.0.as_ref().filter(|b| b.check(&classes).is_ok());
    let cal_cfg = settings.calibration.clone();
    let correct = |id: u64, p: &[f32]| match baselines.get(&id).or(player) {
        Some(b) if !p.is_empty() => b.calibrate(p, &cal_cfg),
        _ => p.to_vec(),
    };
    for result in results.read() {
        let observed = match &result.faces {
            Ok(f) => gated(f, &settings),
            Err(e) => {
                stats.failures += 1;
                warn!("emotion inference failed: {e}");
                continue;
            }
        };
        let t = result.time;
        let latency = result.captured.elapsed();
        stats.frames_processed += 1;
        stats.full_detections += u64::from(result.full_detection);
        stats.last_processed = result.seq;
        stats.last_latency = latency;
        let update = tracker.update_with(t, &observed, correct);
        for &(id, oi) in &update.observed {
            let Some(track) = tracker.get(id) else {
                continue;
            };
            let o = &observed[oi];
            let calibrated = track.corrected.clone();
            let [x1, y1, x2, y2] = o.bbox;
            let state = match o.unsure {
                Some(reason) => ExpressionState::Unsure { reason },
                None => ExpressionState::Known {
                    emotion: name(track.label),
                    confidence: track.smoothed.get(track.label).copied().unwrap_or(0.0),
                },
            };
            // Episodes run on sure frames only.
            let sure_frame = o.unsure.is_none() && track.sure;
            let known = entities.get(&id).copied();
            let face = known.unwrap_or_else(|| {
                // A new face: its episode machines start with this frame.
                let mut episodes = Episodes::new(classes.len());
                let ev = if sure_frame {
                    episodes.update(t, &track.smoothed, &settings.episodes)
                } else {
                    Vec::new()
                };
                let e = commands
                    .spawn((Name::new(format!("face {id}")), FaceEpisodes(episodes)))
                    .id();
                entities.insert(id, e);
                out.appeared.write(FaceAppeared {
                    face: e,
                    id,
                    emotion: track.sure.then(|| name(track.label)),
                    frame: result.seq,
                    timestamp: t,
                });
                out.episodes(e, id, &names, ev);
                e
            });
            let mut ec = commands.entity(face);
            ec.insert((
                TrackedFace {
                    id,
                    first_seen: track.first_seen,
                    last_seen: track.last_seen,
                    last_frame: result.seq,
                },
                FaceBox {
                    rect: Rect::new(x1, y1, x2, y2),
                    score: o.score,
                },
                FaceLandmarks(o.landmarks.map(|[x, y]| Vec2::new(x, y))),
                RawEmotion {
                    probs: o.probs.clone(),
                    calibrated: calibrated.clone(),
                },
                state,
            ));
            if track.sure {
                ec.insert(SmoothedEmotion {
                    probs: track.smoothed.clone(),
                    emotion: name(track.label),
                    confidence: track.smoothed.get(track.label).copied().unwrap_or(0.0),
                });
            }
            if let Some(q) = o.quality {
                ec.insert(Quality(q));
            }
            // A known face's episodes and calibration in progress.
            if known.is_some()
                && let Ok((_, _, _, calibrating, episodes)) = faces.get_mut(face)
            {
                if sure_frame && let Some(mut ep) = episodes {
                    let ev = ep.0.update(t, &track.smoothed, &settings.episodes);
                    out.episodes(face, id, &names, ev);
                }
                if let Some(mut c) = calibrating {
                    if usable_for_calibration(o) {
                        c.samples.push(o.probs.clone());
                    }
                    if t >= c.until {
                        let result = NeutralBaseline::from_samples(
                            &classes,
                            &c.samples,
                            &settings.calibration,
                        );
                        let mut ec = commands.entity(face);
                        ec.remove::<Calibrating>();
                        if let Ok(b) = &result {
                            ec.insert(NeutralCalibration(b.clone()));
                        }
                        out.calibrated.write(CalibrationFinished { face, result });
                    }
                }
            }
            let best = argmax(&calibrated);
            out.detected.write(EmotionDetected {
                face,
                id,
                emotion: name(best),
                confidence: calibrated.get(best).copied().unwrap_or(0.0),
                probs: calibrated,
                raw_probs: o.probs.clone(),
                quality: o.quality,
                unsure: o.unsure,
                frame: result.seq,
                timestamp: t,
                latency,
            });
        }
        for &(id, from, to) in &update.changed {
            if let (Some(&face), Some(track)) = (entities.get(&id), tracker.get(id)) {
                out.changed.write(EmotionChanged {
                    face,
                    id,
                    from: name(from),
                    to: name(to),
                    confidence: track.smoothed.get(to).copied().unwrap_or(0.0),
                    frame: result.seq,
                    timestamp: t,
                });
            }
        }
        for id in update.lost {
            if let Some(entity) = entities.remove(&id) {
                lose(&mut faces, entity, id, t, &names, &mut out);
            }
        }
    }
    presence.0 = tracker.tracks().len();
}

/// A face is gone: its open episodes end, a calibration in progress fails,
/// and [`FaceLost`] is written (the entity is despawned in `Publish`).
fn lose(
    faces: &mut Query<FaceItem>,
    face: Entity,
    id: u64,
    t: f64,
    names: &[Emotion],
    out: &mut FaceMessages,
) {
    let (mut last_frame, mut last_seen) = (0, t);
    if let Ok((_, tracked, _, calibrating, episodes)) = faces.get_mut(face) {
        (last_frame, last_seen) = (tracked.last_frame, tracked.last_seen);
        if let Some(mut e) = episodes {
            let closed = e.0.close_all(t);
            out.episodes(face, id, names, closed);
        }
        if calibrating.is_some() {
            out.calibrated.write(CalibrationFinished {
                face,
                result: Err(CalibrationError::NoFace),
            });
        }
    }
    out.lost.write(FaceLost {
        face,
        id,
        timestamp: t,
        last_frame,
        last_seen,
    });
}

/// Tracks not seen for `lost_after` seconds end even when no result
/// arrives (the source stopped, inference keeps failing).
fn expire_faces(
    mut tracker: ResMut<FaceTracker>,
    mut faces: Query<FaceItem>,
    mut presence: ResMut<FacePresence>,
    pipeline: Option<Res<EmotionPipeline>>,
    time: Res<Time<Real>>,
    mut out: FaceMessages,
) {
    let t = time.elapsed_secs_f64();
    let lost = tracker.0.expire(t);
    if lost.is_empty() {
        return;
    }
    let names = emotions(&class_names(pipeline.as_deref()));
    let by_id: HashMap<u64, Entity> = faces.iter().map(|(e, f, ..)| (f.id, e)).collect();
    for id in lost {
        if let Some(&entity) = by_id.get(&id) {
            lose(&mut faces, entity, id, t, &names, &mut out);
        }
    }
    presence.0 = tracker.0.tracks().len();
}

/// Despawns the faces lost this frame (after their [`FaceLost`] was written).
fn despawn_lost(mut commands: Commands, mut lost: MessageReader<FaceLost>) {
    for l in lost.read() {
        if let Ok(mut e) = commands.get_entity(l.face) {
            e.despawn();
        }
    }
}

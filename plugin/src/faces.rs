//! The face stage ([`EmotionSystems::Smooth`] and
//! [`EmotionSystems::Publish`]): each [`InferenceFinished`] goes through the
//! [`Tracker`] (stable identities across frames and brief occlusions,
//! smoothed probabilities, hysteresis on the label); every tracked face is an
//! entity carrying [`TrackedFace`], [`FaceBox`], [`FaceLandmarks`],
//! [`RawEmotion`] and [`SmoothedEmotion`]; the face messages
//! ([`FaceAppeared`], [`EmotionDetected`], [`EmotionChanged`], [`FaceLost`])
//! are written as the tracker reports them, and lost faces are despawned in
//! `Publish`.

use std::collections::HashMap;
use std::time::Duration;

use bevy::math::{Rect, Vec2};
use bevy::prelude::*;
use perception::{Emotion, Tracker, argmax};

use crate::capture::EmotionStats;
use crate::inference::InferenceFinished;
use crate::model::EmotionPipeline;
use crate::settings::{
    EmotionSettings, EmotionSystems, perception_disabled, perception_enabled, stage_setup,
};

/// A tracked face. The entity is the face's identity; `id` is a stable
/// number for logs and saved data: it stays while the face stays in view
/// (brief occlusions included) and is never reused.
#[derive(Component, Reflect, Debug, Clone, PartialEq)]
#[reflect(Component)]
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

/// The classifier's probabilities for the newest frame.
#[derive(Component, Reflect, Debug, Clone, PartialEq)]
#[reflect(Component)]
pub struct RawEmotion {
    /// Probabilities in class order.
    pub probs: Vec<f32>,
}

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
}

/// A face left (or capture stopped). The entity is despawned in
/// [`EmotionSystems::Publish`].
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

/// The stage's tracker (Bevy-free, from `perception`).
#[derive(Resource, Default)]
struct FaceTracker(Tracker);

/// Face entities, smoothing and messages.
pub struct EmotionFacesPlugin;

impl Plugin for EmotionFacesPlugin {
    fn build(&self, app: &mut App) {
        stage_setup(app);
        app.init_resource::<FaceTracker>()
            .init_resource::<FacePresence>()
            .init_resource::<EmotionStats>()
            .add_message::<InferenceFinished>()
            .add_message::<FaceAppeared>()
            .add_message::<FaceLost>()
            .add_message::<EmotionDetected>()
            .add_message::<EmotionChanged>()
            .register_type::<TrackedFace>()
            .register_type::<FaceBox>()
            .register_type::<FaceLandmarks>()
            .register_type::<RawEmotion>()
            .register_type::<SmoothedEmotion>()
            .register_type::<FacePresence>()
            .add_systems(
                Update,
                (
                    (
                        forget_faces.run_if(perception_disabled),
                        track_faces.run_if(perception_enabled),
                    )
                        .in_set(EmotionSystems::Smooth),
                    despawn_lost.in_set(EmotionSystems::Publish),
                ),
            );
    }
}

/// The classifier's class names as emotions (FER2013's seven until the
/// networks are loaded).
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

/// Perception switched off: every face is lost.
fn forget_faces(
    mut tracker: ResMut<FaceTracker>,
    faces: Query<(Entity, &TrackedFace)>,
    mut presence: ResMut<FacePresence>,
    mut lost: MessageWriter<FaceLost>,
) {
    if tracker.0.tracks().is_empty() && faces.is_empty() {
        return;
    }
    tracker.0.clear();
    for (face, t) in &faces {
        lost.write(FaceLost { face, id: t.id });
    }
    presence.0 = 0;
}

fn track_faces(
    mut commands: Commands,
    mut tracker: ResMut<FaceTracker>,
    mut results: MessageReader<InferenceFinished>,
    settings: Res<EmotionSettings>,
    pipeline: Option<Res<EmotionPipeline>>,
    mut stats: ResMut<EmotionStats>,
    mut presence: ResMut<FacePresence>,
    faces: Query<(Entity, &TrackedFace)>,
    mut writers: (
        MessageWriter<FaceAppeared>,
        MessageWriter<EmotionDetected>,
        MessageWriter<EmotionChanged>,
        MessageWriter<FaceLost>,
    ),
) {
    let tracker = &mut tracker.0;
    tracker.config = settings.tracker.clone();
    let names = classes(pipeline.as_deref());
    let name = |i: usize| names.get(i).copied().unwrap_or(Emotion::Other);
    // The entity of each live track id (spawned ones are added below).
    let mut entities: HashMap<u64, Entity> = faces.iter().map(|(e, t)| (t.id, e)).collect();
    for result in results.read() {
        let faces = match &result.faces {
            Ok(f) => f,
            Err(e) => {
                stats.failures += 1;
                warn!("emotion inference failed: {e}");
                continue;
            }
        };
        let latency = result.captured.elapsed();
        stats.frames_processed += 1;
        stats.last_processed = result.seq;
        stats.last_latency = latency;
        let update = tracker.update(result.time, faces);
        for &(id, oi) in &update.observed {
            let Some(track) = tracker.get(id) else {
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
            let face = match entities.get(&id) {
                Some(&e) => {
                    commands.entity(e).insert(components);
                    e
                }
                None => {
                    let e = commands
                        .spawn((Name::new(format!("face {id}")), components))
                        .id();
                    entities.insert(id, e);
                    writers.0.write(FaceAppeared { face: e, id });
                    e
                }
            };
            let best = argmax(&o.probs);
            writers.1.write(EmotionDetected {
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
            if let (Some(&face), Some(track)) = (entities.get(&id), tracker.get(id)) {
                writers.2.write(EmotionChanged {
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
            if let Some(face) = entities.remove(&id) {
                writers.3.write(FaceLost { face, id });
            }
        }
    }
    presence.0 = tracker.tracks().len();
}

/// Despawns the faces lost this frame (after their [`FaceLost`] was written).
fn despawn_lost(mut commands: Commands, mut lost: MessageReader<FaceLost>) {
    for l in lost.read() {
        if let Ok(mut e) = commands.get_entity(l.face) {
            e.despawn();
        }
    }
}

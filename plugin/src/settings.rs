//! Runtime switches ([`EmotionSettings`]), the stage order
//! ([`EmotionSystems`]) and the run conditions every stage shares.

use bevy::prelude::*;
use perception::{CalibrationConfig, EpisodeConfig, FollowConfig, QualityGate, TrackerConfig, Tta};

use crate::capture::SourceKind;

/// Runtime switches (change them at any time through `ResMut<EmotionSettings>`).
#[derive(Resource, Reflect, Debug, Clone, PartialEq)]
#[reflect(Resource)]
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
    /// CPU threads perception may use (a rayon pool of this size, owned by
    /// the plugin, on top of Bevy's own task pools).
    pub threads: usize,
    /// Follow faces from frame to frame (O-Net refinement of the last boxes,
    /// the full detector only on the first frame and when a face is lost;
    /// every `detect_every` frames or `detect_after` (1 s by default),
    /// whichever comes first, a detection for new faces, by default in
    /// slices between frames): about 11x cheaper per frame than detecting
    /// every frame (`docs/PERFORMANCE.md`). Video sources only
    /// ([`SourceKind::is_video`]): a still image or a slideshow runs the full
    /// detector on every frame. `None`: the full detector on every frame.
    pub follow: Option<FollowConfig>,
    /// Test-time augmentation of the classifier: the mirror image (`Flip`,
    /// twice the classifier's cost) or the mirror and four 2-pixel shifts
    /// (`FlipShift`, six times); `docs/PERFORMANCE.md` and the report give
    /// cost and accuracy.
    pub tta: Tta,
    /// Decode every camera frame (for a live preview at the camera's rate,
    /// e.g. the debug overlay's). Off by default: the camera thread then
    /// decodes only the frames inference will use (those arriving within one
    /// inference period of the next slot) and drops the rest undecoded.
    pub decode_every_frame: bool,
    /// Tracking and smoothing.
    pub tracker: TrackerConfig,
    /// What a face must pass for its expression to be reported (otherwise
    /// it is [`ExpressionState::Unsure`](crate::ExpressionState::Unsure)).
    pub quality: QualityGate,
    /// Neutral calibration.
    pub calibration: CalibrationConfig,
    /// Onset, apex and offset detection.
    pub episodes: EpisodeConfig,
    /// Seconds a source may stay [`Stalled`](crate::CameraStatus::Stalled)
    /// before it is closed and opened again (a hung driver or a replugged
    /// camera usually comes back on reopen); `0` waits for it forever.
    pub reopen_after_stall: f32,
}

impl Default for EmotionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            source: SourceKind::default(),
            min_face_size: 40.0,
            max_faces: 4,
            inference_hz: 15.0,
            threads: 1,
            follow: Some(FollowConfig::default()),
            tta: Tta::None,
            decode_every_frame: false,
            tracker: TrackerConfig::default(),
            quality: QualityGate::default(),
            calibration: CalibrationConfig::default(),
            episodes: EpisodeConfig::default(),
            reopen_after_stall: 5.0,
        }
    }
}

/// The stages, chained in `Update` in this order. Order your systems
/// `.after(EmotionSystems::Publish)` to see this frame's messages.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmotionSystems {
    /// Takes the newest frame from the source ([`crate::capture`]).
    Capture,
    /// Starts detection + alignment + classification on a background task
    /// ([`crate::inference`]).
    Detect,
    /// Collects finished inferences as [`InferenceFinished`](crate::inference::InferenceFinished).
    Infer,
    /// Tracks faces, smooths their emotions and writes the face messages
    /// ([`crate::faces`]).
    Smooth,
    /// Despawns lost faces and updates [`FacePresence`](crate::faces::FacePresence).
    Publish,
}

/// Inserts the settings and orders the stages. Each stage plugin also calls
/// [`stage_setup`], so a stage added on its own still finds both.
pub struct EmotionSettingsPlugin {
    /// Initial settings.
    pub settings: EmotionSettings,
}

impl Plugin for EmotionSettingsPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(self.settings.clone());
        stage_setup(app);
    }
}

/// What every stage needs: the settings (defaults unless inserted before),
/// the consent its run conditions read, and the stage order.
pub(crate) fn stage_setup(app: &mut App) {
    app.init_resource::<EmotionSettings>()
        .init_resource::<crate::capture::EmotionConsent>()
        .register_type::<EmotionSettings>()
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

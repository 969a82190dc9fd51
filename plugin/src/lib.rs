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
//!     // Nothing is captured before this (ask the player first).
//!     .insert_resource(EmotionConsent::Granted)
//!     .add_systems(Update, react.after(EmotionSystems::Publish))
//!     .run();
//! ```
//!
//! [`EmotionPlugin`] is a plugin group with one plugin per stage, each in its
//! own module, each registering its own resources and messages (so a test or
//! a game can replace one); stages hand over through public resources and
//! messages. In [`EmotionSystems`] order (chained in `Update`):
//!
//! 1. **Capture** ([`capture`]): the newest frame of the source (webcam on
//!    its own thread, images, or frames the app pushes) is taken from a
//!    one-slot mailbox into [`LatestFrame`]; failures show in
//!    [`CameraStatus`] and are retried with back-off.
//! 2. **Detect** ([`inference`]): if no inference is running and one is due
//!    (at most `inference_hz` per second), face finding, alignment and
//!    ARCH-1 classification of that frame start on the
//!    `AsyncComputeTaskPool`. Faces are followed from frame to frame
//!    (O-Net refinement of the last boxes, [`EmotionSettings::follow`]); the
//!    full MTCNN detector runs on the first frame and when a face is lost,
//!    and every 15 frames a detection for new faces runs in slices between
//!    frames (one slice per idle update), so no frame waits for it.
//! 3. **Infer** ([`inference`]): a finished inference becomes an
//!    [`InferenceFinished`] message (the main thread only polls).
//! 4. **Smooth** ([`faces`]): faces are matched to tracked face entities
//!    (stable ids across frames and brief occlusions), probabilities
//!    smoothed, labels changed with hysteresis; [`FaceAppeared`],
//!    [`EmotionDetected`], [`EmotionChanged`] and [`FaceLost`] are written.
//! 5. **Publish** ([`faces`]): lost faces are despawned.
//!
//! Perception's clocks (capture pacing, inference rate, retries,
//! smoothing, track expiry, calibration) run on `Time<Real>`: pausing or
//! slowing the game's virtual time does not freeze or distort them, and
//! message timestamps are seconds of real time since the app started.
//!
//! The networks come from the model stage ([`model`]). Frames stay in
//! memory: nothing is written to disk or sent anywhere. While
//! [`EmotionSettings::enabled`] is false (a run condition of every stage)
//! the camera thread is stopped, the device released and every face lost.
//!
//! Weights are Bevy assets (`models/mtcnn.safetensors`,
//! `models/yunet.safetensors`, which searches whole frames for new faces, and
//! `models/arch1_fer2013.safetensors` under the asset folder; see
//! [`ModelSource`]); a missing or invalid file shows in [`ModelStatus`].
//!
//! Cargo features: `webcam` (default) builds the nokhwa camera backend;
//! without it [`SourceKind::Webcam`] reports itself unavailable and the
//! other sources work as usual. `egui` adds [`overlay`], the debug overlay
//! the demo and the `debug_overlay` example share.

#![forbid(unsafe_code)]

pub mod capture;
pub mod faces;
pub mod inference;
pub mod model;
#[cfg(feature = "egui")]
pub mod overlay;
pub mod record;
pub mod settings;

use bevy::app::PluginGroupBuilder;
use bevy::prelude::*;
pub use perception;
pub use perception::{
    CalibrationConfig, CalibrationError, Emotion, EpisodeConfig, FaceQuality, NeutralBaseline,
    Observation, QualityGate, Tracker, TrackerConfig, Tta, UnsureReason,
};

#[cfg(feature = "webcam")]
pub use capture::{CameraDevice, CameraFactory, NokhwaCamera, WebcamSource, decode_camera_frame};
pub use capture::{
    CameraStatus, CameraStatusChanged, CaptureIndicator, CustomSource, EmotionCapturePlugin,
    EmotionConsent, EmotionStats, FrameDemand, FramePusher, FrameSource, LatestFrame, SourceKind,
    SourcePoll, WebcamConfig,
};
pub use faces::{
    CalibrateNeutral, Calibrating, CalibrationFinished, EmotionChanged, EmotionDetected,
    EmotionFacesPlugin, ExpressionApex, ExpressionOffset, ExpressionOnset, ExpressionState,
    FaceAppeared, FaceBox, FaceLandmarks, FaceLost, FacePresence, NeutralCalibration,
    PlayerBaseline, Quality, RawEmotion, SmoothedEmotion, TrackedFace,
};
pub use inference::{EmotionInferencePlugin, InferenceFinished};
pub use model::{
    EmotionModel, EmotionModelLoader, EmotionModelPlugin, EmotionPipeline, ModelSource, ModelStatus,
};
/// nokhwa, for [`CameraDevice`] implementations (its `Buffer` and formats).
#[cfg(feature = "webcam")]
pub use nokhwa;
pub use record::{EmotionRecordPlugin, EmotionRecorder};
pub use settings::{EmotionSettings, EmotionSettingsPlugin, EmotionSystems};

/// Everything a game needs in one import.
pub mod prelude {
    pub use crate::{
        CalibrateNeutral, Calibrating, CalibrationError, CalibrationFinished, CameraStatus,
        CameraStatusChanged, CaptureIndicator, Emotion, EmotionChanged, EmotionConsent,
        EmotionDetected, EmotionPlugin, EmotionRecorder, EmotionSettings, EmotionStats,
        EmotionSystems, ExpressionApex, ExpressionOffset, ExpressionOnset, ExpressionState,
        FaceAppeared, FaceBox, FaceLandmarks, FaceLost, FacePresence, FramePusher, FrameSource,
        LatestFrame, ModelSource, ModelStatus, NeutralBaseline, NeutralCalibration, PlayerBaseline,
        Quality, QualityGate, RawEmotion, SmoothedEmotion, SourceKind, SourcePoll, TrackedFace,
        UnsureReason, WebcamConfig,
    };
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
            .add(EmotionSettingsPlugin {
                settings: self.settings,
            })
            .add(EmotionModelPlugin {
                source: self.models,
            })
            .add(EmotionCapturePlugin)
            .add(EmotionInferencePlugin)
            .add(EmotionFacesPlugin)
            .add(EmotionRecordPlugin)
    }
}

//! `bevy_emotion`: the Bevy plugin that gives a game its player's facial
//! expression.
//!
//! This crate will hold `EmotionPlugin`, a plugin group of small stage plugins:
//! webcam capture on its own thread through nokhwa (or a still image, a folder of
//! images, or frames pushed by the app), face detection, alignment and ARCH-1
//! inference on the `AsyncComputeTaskPool`, a tracker that makes each face an
//! entity, per-face smoothing, and the `FaceAppeared`, `FaceLost`,
//! `EmotionDetected` and `EmotionChanged` messages, ordered by the public
//! `EmotionSystems` sets. Frames stay in memory; nothing is written or sent.
//!
//! Today it re-exports the classifier it will run, from [`perception`].

pub use perception;

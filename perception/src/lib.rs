//! Frames to faces to emotions, without Bevy.
//!
//! The face pipeline the plugin and the training CLI share:
//!
//! - [`Frame`]: a gray, RGB or RGBA image in memory (frames never touch disk);
//! - [`Detector`]: MTCNN face detection with five landmarks, as facenet-pytorch,
//!   optionally with [`YuNet`] searching whole frames ([`Finder`]);
//! - [`align`](align::align): a similarity warp of the landmarks onto FER2013's
//!   framing, giving the 48x48 gray crop the networks were trained on;
//! - [`Classifier`]: crops to class probabilities with any `models` weights file;
//! - [`Pipeline`]: all of it, frame in, per-face box, landmarks, crop and
//!   probabilities out.
//!
//! ```no_run
//! use perception::{Frame, Pipeline, PipelineConfig};
//! let pipeline = Pipeline::from_files(
//!     "assets/models/mtcnn.safetensors",
//!     "assets/models/arch1_fer2013.safetensors",
//!     PipelineConfig::default(),
//! )?;
//! for face in pipeline.process(&Frame::open("photo.jpg")?)? {
//!     let label = &pipeline.classifier().classes()[face.label()];
//!     println!("{:?} {label} {:.2}", face.detection.xywh(), face.confidence());
//! }
//! # Ok::<(), perception::PerceptionError>(())
//! ```
//!
//! The classifier alone:
//!
//! ```
//! use perception::{Classifier, GrayCrop};
//! # let w = models::LoadedWeights::untrained(models::Arch::Arch1, &candle_core::Device::Cpu)?;
//! # let path = std::env::temp_dir().join("perception-doc.safetensors");
//! # std::fs::write(&path, w.to_bytes()?)?;
//! let classifier = Classifier::from_file(&path)?;
//! let face = GrayCrop::new(vec![128; 48 * 48])?;
//! let probs = classifier.classify(&[face])?;
//! assert_eq!(probs[0].len(), classifier.classes().len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod align;
pub mod calibrate;
pub mod crop;
pub mod detect;
pub mod emotion;
pub mod episodes;
pub mod frame;
pub mod pipeline;
pub mod quality;
pub mod record;
pub mod track;
pub mod weights;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::ModuleT;
use std::sync::{Mutex, PoisonError};

use models::infer::Arch1Engine;
use models::{EmotionNet, INPUT_SIZE, LoadedWeights, WeightsError, WeightsMeta};

pub use calibrate::{CalibrationConfig, CalibrationError, NeutralBaseline};
pub use crop::GrayCrop;
pub use detect::{
    Detection, DetectionJob, Detector, DetectorConfig, Finder, YUNET_FACE_PX, YUNET_THRESHOLD,
};
pub use emotion::Emotion;
pub use episodes::{EpisodeConfig, EpisodeEvent, Episodes};
pub use frame::{Frame, PixelFormat};
pub use pipeline::{Face, FaceFollower, FollowConfig, FrameFaces, Pipeline, PipelineConfig};
pub use quality::{FaceQuality, QualityGate, Unsure, UnsureReason};
pub use track::{Observation, Track, TrackUpdate, Tracker, TrackerConfig};
pub use weights::Weights;

/// The paper's four architectures (for [`Classifier::untrained`]).
pub use models::Arch;
pub use models::weights::MAX_WEIGHTS_BYTES;
pub use models::yunet::YuNet;

/// Index of the largest value (the most probable class); 0 for an empty slice.
pub fn argmax(probs: &[f32]) -> usize {
    probs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// The folder binaries load weights and other assets from, as an absolute
/// path when it can be: `$EMOTION_ASSETS` when set, else `./assets` when the
/// working directory has one with a `models/` folder, else this repository's
/// `assets/` (the path it was built from). Weights live in its `models/`
/// sub-folder.
pub fn assets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EMOTION_ASSETS") {
        return PathBuf::from(dir);
    }
    if let Ok(cwd) = std::env::current_dir() {
        let local = cwd.join("assets");
        if local.join("models").is_dir() {
            return local;
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets")
}

/// The default detector weights, `assets/models/mtcnn.safetensors`.
pub fn default_detector_path() -> PathBuf {
    assets_dir().join("models/mtcnn.safetensors")
}

/// YuNet's weights, `assets/models/yunet.safetensors` (see [`Finder::YuNet`]).
pub fn default_yunet_path() -> PathBuf {
    assets_dir().join("models/yunet.safetensors")
}

/// The default classifier weights, `assets/models/arch1_fer2013.safetensors`.
pub fn default_classifier_path() -> PathBuf {
    assets_dir().join("models/arch1_fer2013.safetensors")
}

/// What can go wrong in the perception pipeline.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PerceptionError {
    /// The weights could not be loaded.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A crop does not have 48x48 pixels.
    #[error("a face crop must have {expected} pixels (48x48 gray), got {found}")]
    CropSize {
        /// 48 * 48.
        expected: usize,
        /// What was given.
        found: usize,
    },
    /// The network expects another input than 48x48 gray.
    #[error("the weights expect {0}x{1}x{2} input; only 48x48x1 is supported")]
    UnsupportedInput(usize, usize, usize),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A frame with no pixels or sides beyond [`frame::MAX_FRAME_SIDE`].
    #[error("a frame must be between 1x1 and 16384x16384 pixels, got {width}x{height}")]
    FrameSize {
        /// Width given.
        width: usize,
        /// Height given.
        height: usize,
    },
    /// A frame's byte count does not match its size and format.
    #[error("frame data has {found} bytes, its size and format need {expected}")]
    FrameBytes {
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        found: usize,
    },
    /// An image file could not be read or decoded.
    #[error("cannot read image {path}: {reason}")]
    Image {
        /// The file (`<memory>` for in-memory bytes).
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The landmarks are degenerate (all in one point), so no alignment exists.
    #[error("cannot align a face whose landmarks coincide")]
    Align,
}

/// Classifies face crops with one of the paper's networks.
///
/// ARCH-1 runs on [`models::infer::Arch1Engine`], whose buffers sit behind a
/// mutex: calls on one `Classifier` from several threads take turns (a batch
/// still uses every rayon thread). Give each thread its own clone to run them
/// side by side; clones get their own buffers.
#[derive(Debug)]
pub struct Classifier {
    net: EmotionNet,
    meta: WeightsMeta,
    device: Device,
    tta: Tta,
    /// ARCH-1's deployment path (BatchNorm folded, buffers reused across
    /// calls): used for every ARCH-1 file; other networks run the graph.
    engine: Option<Mutex<Arch1Engine>>,
}

impl Clone for Classifier {
    /// A clone gets its own engine buffers, so clones never wait on each other.
    fn clone(&self) -> Self {
        Self {
            net: self.net.clone(),
            meta: self.meta.clone(),
            device: self.device.clone(),
            tta: self.tta,
            engine: self
                .engine
                .as_ref()
                .map(|e| Mutex::new(e.lock().unwrap_or_else(PoisonError::into_inner).clone())),
        }
    }
}

impl Classifier {
    /// Loads a weights file (see `models::weights`) on the CPU.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, PerceptionError> {
        Self::from_weights(LoadedWeights::from_file(path, &Device::Cpu)?)
    }

    /// Loads weights already in memory (e.g. from a Bevy asset).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PerceptionError> {
        Self::from_weights(LoadedWeights::from_bytes(bytes, &Device::Cpu)?)
    }

    /// A classifier of `arch` with freshly initialised, untrained weights: for
    /// benchmarks and tests that need a network of the right shape, never for
    /// predictions.
    pub fn untrained(arch: Arch) -> Result<Self, PerceptionError> {
        Self::from_weights(LoadedWeights::untrained(arch, &Device::Cpu)?)
    }

    fn from_weights(w: LoadedWeights) -> Result<Self, PerceptionError> {
        let i = w.meta.input;
        if (i.height, i.width, i.channels) != (INPUT_SIZE, INPUT_SIZE, 1) {
            return Err(PerceptionError::UnsupportedInput(
                i.height, i.width, i.channels,
            ));
        }
        let device = Device::Cpu;
        let net = w.build(&device)?;
        let engine = if w.meta.arch() == Arch::Arch1 {
            Some(Mutex::new(Arch1Engine::from_weights(&w)?))
        } else {
            None
        };
        Ok(Self {
            net,
            meta: w.meta,
            device,
            tta: Tta::None,
            engine,
        })
    }

    /// Averages every crop's probabilities over the views of `tta`.
    pub fn with_tta(mut self, tta: Tta) -> Self {
        self.tta = tta;
        self
    }

    /// Sets the test-time augmentation.
    pub fn set_tta(&mut self, tta: Tta) {
        self.tta = tta;
    }

    /// The test-time augmentation in use.
    pub fn tta(&self) -> Tta {
        self.tta
    }

    /// Class names in output order.
    pub fn classes(&self) -> &[String] {
        &self.meta.classes
    }

    /// The weights' metadata.
    pub fn meta(&self) -> &WeightsMeta {
        &self.meta
    }

    /// Class probabilities for each crop, in one batch (with test-time
    /// augmentation, every view of every crop in that batch, averaged per
    /// crop).
    pub fn classify(&self, crops: &[GrayCrop]) -> Result<Vec<Vec<f32>>, PerceptionError> {
        if crops.is_empty() {
            return Ok(Vec::new());
        }
        let views = self.tta.views();
        if views == 1 {
            return self.classify_batch(crops);
        }
        let all: Vec<GrayCrop> = crops.iter().flat_map(|c| self.tta.apply(c)).collect();
        let probs = self.classify_batch(&all)?;
        Ok(probs
            .chunks(views)
            .map(|v| {
                let mut mean = vec![0f32; v[0].len()];
                for row in v {
                    for (m, x) in mean.iter_mut().zip(row) {
                        *m += x / views as f32;
                    }
                }
                mean
            })
            .collect())
    }

    /// Class probabilities for each crop as it is, in one batch.
    fn classify_batch(&self, crops: &[GrayCrop]) -> Result<Vec<Vec<f32>>, PerceptionError> {
        let norm = self.meta.normalization;
        let data: Vec<f32> = crops
            .iter()
            .flat_map(|c| c.pixels().iter().map(|&p| norm.apply(p)))
            .collect();
        if let Some(engine) = &self.engine {
            // A panic inside `run` cannot leave the buffers inconsistent for
            // the next call (each call overwrites them), so a poisoned lock is
            // safe to reuse.
            let mut engine = engine.lock().unwrap_or_else(PoisonError::into_inner);
            let k = engine.classes();
            let logits = engine.run(&data, crops.len())?;
            return Ok(logits.chunks_exact(k).map(softmax).collect());
        }
        self.classify_graph(data, crops.len())
    }

    /// Class probabilities through the candle graph (any architecture).
    fn classify_graph(&self, data: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>, PerceptionError> {
        let x = Tensor::from_vec(data, (n, 1, INPUT_SIZE, INPUT_SIZE), &self.device)?;
        let logits = self.net.forward_t(&x, false)?;
        Ok(candle_nn::ops::softmax(&logits, 1)?.to_vec2::<f32>()?)
    }
}

/// Test-time augmentation: [`Classifier::classify`] averages each crop's
/// probabilities over these views of it (all views of all crops run as one
/// batch). The cost at batch 1 is in `training bench-pipeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
#[serde(rename_all = "kebab-case")]
pub enum Tta {
    /// The crop alone.
    #[default]
    None,
    /// The crop and its mirror image (two views).
    Flip,
    /// The crop, its mirror image, and the crop shifted by 2 pixels left,
    /// right, up and down (six views).
    FlipShift,
}

impl Tta {
    /// How many views of each crop.
    pub fn views(self) -> usize {
        match self {
            Self::None => 1,
            Self::Flip => 2,
            Self::FlipShift => 6,
        }
    }

    /// The views of `crop`, the crop itself first.
    pub fn apply(self, crop: &GrayCrop) -> Vec<GrayCrop> {
        let mut views = vec![crop.clone()];
        if self != Self::None {
            views.push(crop.transformed(0, 0, true));
        }
        if self == Self::FlipShift {
            for (dx, dy) in Self::SHIFTS {
                views.push(crop.transformed(dx, dy, false));
            }
        }
        views
    }

    /// The `(dx, dy)` moves of [`Tta::FlipShift`]'s shifted views, in order.
    pub const SHIFTS: [(isize, isize); 4] = [(-2, 0), (2, 0), (0, -2), (0, 2)];
}

/// A numerically stable softmax of one row of logits.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tta_views_and_their_average() {
        let pixels: Vec<u8> = (0..INPUT_SIZE * INPUT_SIZE)
            .map(|i| (i % 251) as u8)
            .collect();
        let crop = GrayCrop::new(pixels.clone()).unwrap();
        let views = Tta::FlipShift.apply(&crop);
        assert_eq!(views.len(), Tta::FlipShift.views());
        assert_eq!(views[0], crop);
        // The mirror: first column of the view is the last of the crop.
        assert_eq!(views[1].pixels()[0], pixels[INPUT_SIZE - 1]);
        // Moved right by 2 (dx = 2): column 5 holds column 3, column 0 the border.
        assert_eq!(views[3].pixels()[5], pixels[3]);
        assert_eq!(views[3].pixels()[1], pixels[0]);
        assert_eq!(Tta::None.apply(&crop).len(), 1);

        let c = Classifier::untrained(Arch::Arch1).unwrap();
        let one = c.classify(std::slice::from_ref(&crop)).unwrap();
        let by_view = c.classify(&views[..2]).unwrap();
        let flip = c.clone().with_tta(Tta::Flip);
        let avg = flip.classify(&[crop.clone(), crop]).unwrap();
        assert_eq!(avg.len(), 2);
        for k in 0..one[0].len() {
            let want = (by_view[0][k] + by_view[1][k]) / 2.0;
            assert!((avg[0][k] - want).abs() < 1e-5 && (avg[1][k] - want).abs() < 1e-5);
        }
        assert!((avg[0].iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn probabilities_sum_to_one_and_batch_matches_singles() {
        let c = Classifier::untrained(Arch::Arch1).unwrap();
        let a = GrayCrop::new((0..2304).map(|i| (i % 251) as u8).collect()).unwrap();
        let b = GrayCrop::new(vec![200; 2304]).unwrap();
        let both = c.classify(&[a.clone(), b]).unwrap();
        let single = c.classify(&[a]).unwrap();
        assert!((both[0].iter().sum::<f32>() - 1.0).abs() < 1e-5);
        for (x, y) in both[0].iter().zip(&single[0]) {
            assert!((x - y).abs() < 1e-5);
        }
        assert!(c.classify(&[]).unwrap().is_empty());
    }

    #[test]
    fn engine_and_graph_give_the_same_probabilities() {
        for arch in [Arch::Arch1, Arch::Arch3] {
            let c = Classifier::untrained(arch).unwrap();
            assert_eq!(c.engine.is_some(), arch == Arch::Arch1);
            let crops: Vec<GrayCrop> = (0..3)
                .map(|k| {
                    GrayCrop::new((0..2304).map(|i| ((i * (k + 3)) % 256) as u8).collect()).unwrap()
                })
                .collect();
            let fast = c.classify(&crops).unwrap();
            let norm = c.meta.normalization;
            let data = crops
                .iter()
                .flat_map(|c| c.pixels().iter().map(|&p| norm.apply(p)))
                .collect();
            let graph = c.classify_graph(data, crops.len()).unwrap();
            for (a, b) in fast.iter().flatten().zip(graph.iter().flatten()) {
                assert!((a - b).abs() < 1e-5, "{arch}: {a} vs {b}");
            }
            let cloned = c.clone().classify(&crops).unwrap();
            assert_eq!(cloned, fast);
        }
    }
}

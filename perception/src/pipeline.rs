//! The whole path from a frame to per-face emotions: detect, align, classify.

use std::path::Path;

use crate::crop::face_crop;
use crate::detect::{Detection, Detector, DetectorConfig};
use crate::frame::Frame;
use crate::{Classifier, GrayCrop, PerceptionError};

/// Pipeline settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Face detector settings (minimum face size, thresholds, ...).
    pub detector: DetectorConfig,
    /// At most this many faces are classified per frame, the largest first.
    pub max_faces: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            detector: DetectorConfig::default(),
            max_faces: 8,
        }
    }
}

/// One face found in a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    /// Box, score and landmarks in the frame's pixels.
    pub detection: Detection,
    /// The aligned 48x48 gray crop the classifier saw.
    pub crop: GrayCrop,
    /// Class probabilities, in the classifier's class order.
    pub probs: Vec<f32>,
}

impl Face {
    /// Index of the most probable class.
    pub fn label(&self) -> usize {
        crate::argmax(&self.probs)
    }

    /// Probability of the most probable class.
    pub fn confidence(&self) -> f32 {
        self.probs.get(self.label()).copied().unwrap_or(0.0)
    }
}

/// Detector + aligner + classifier. `Send + Sync`, no global state: share one
/// behind an `Arc` or clone it (the weights are reference-counted).
#[derive(Debug, Clone)]
pub struct Pipeline {
    detector: Detector,
    classifier: Classifier,
    max_faces: usize,
}

impl Pipeline {
    /// Builds a pipeline from loaded parts.
    pub fn new(detector: Detector, classifier: Classifier, max_faces: usize) -> Self {
        Self {
            detector,
            classifier,
            max_faces,
        }
    }

    /// Loads the detector (`mtcnn.safetensors`) and classifier weights files.
    pub fn from_files(
        detector: impl AsRef<Path>,
        classifier: impl AsRef<Path>,
        config: PipelineConfig,
    ) -> Result<Self, PerceptionError> {
        Ok(Self::new(
            Detector::from_file(detector, config.detector)?,
            Classifier::from_file(classifier)?,
            config.max_faces,
        ))
    }

    /// The detector.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// The classifier.
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Changes the settings.
    pub fn set_config(&mut self, config: PipelineConfig) -> Result<(), PerceptionError> {
        self.detector.set_config(config.detector)?;
        self.max_faces = config.max_faces;
        Ok(())
    }

    /// The faces in `frame`, largest first, at most `max_faces`, each aligned
    /// and classified (all crops in one batch).
    pub fn process(&self, frame: &Frame) -> Result<Vec<Face>, PerceptionError> {
        let mut dets = self.detector.detect(frame)?;
        dets.truncate(self.max_faces);
        let crops = dets
            .iter()
            .map(|d| face_crop(frame, &d.landmarks))
            .collect::<Result<Vec<_>, _>>()?;
        let probs = self.classifier.classify(&crops)?;
        Ok(dets
            .into_iter()
            .zip(crops)
            .zip(probs)
            .map(|((detection, crop), probs)| Face {
                detection,
                crop,
                probs,
            })
            .collect())
    }
}

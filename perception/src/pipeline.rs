//! The whole path from a frame to per-face emotions: detect, align, classify.

use std::path::Path;

use crate::crop::face_crop;
use crate::detect::{Detection, Detector, DetectorConfig};
use crate::frame::Frame;
use crate::quality::FaceQuality;
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
    /// What was measured of the face and of the classifier's answer.
    pub quality: FaceQuality,
}

/// Everything one frame gave: the classified faces, and the faces that were
/// detected but could not be classified (degenerate landmarks), each with
/// its reason. One bad face never costs the others.
#[derive(Debug, Default)]
pub struct FrameFaces {
    /// Classified faces, largest first.
    pub faces: Vec<Face>,
    /// Detected faces that could not be aligned, and why.
    pub failed: Vec<(Detection, PerceptionError)>,
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
    /// and classified (all crops in one batch). Faces that cannot be aligned
    /// are left out ([`Pipeline::process_all`] reports them).
    pub fn process(&self, frame: &Frame) -> Result<Vec<Face>, PerceptionError> {
        Ok(self.process_all(frame)?.faces)
    }

    /// Like [`Pipeline::process`], with the faces that were detected but
    /// could not be aligned listed beside the classified ones. Errors are
    /// only frame-wide failures (detection, classification).
    pub fn process_all(&self, frame: &Frame) -> Result<FrameFaces, PerceptionError> {
        let mut dets = self.detector.detect(frame)?;
        dets.truncate(self.max_faces);
        let mut out = FrameFaces::default();
        let mut kept = Vec::with_capacity(dets.len());
        let mut crops = Vec::with_capacity(dets.len());
        for d in dets {
            match face_crop(frame, &d.landmarks) {
                Ok(c) => {
                    crops.push(c);
                    kept.push(d);
                }
                Err(e) => out.failed.push((d, e)),
            }
        }
        let probs = self.classifier.classify(&crops)?;
        out.faces = kept
            .into_iter()
            .zip(crops)
            .zip(probs)
            .map(|((detection, crop), probs)| Face {
                quality: FaceQuality::measure(&detection, &crop, &probs),
                detection,
                crop,
                probs,
            })
            .collect();
        Ok(out)
    }
}

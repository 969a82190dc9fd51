//! Per-player neutral calibration: a [`NeutralBaseline`] is what the
//! classifier says, on average, about one player's resting face (one number
//! per class, never pixels); [`NeutralBaseline::calibrate`] then corrects
//! that player's probabilities so that their resting face reads neutral and
//! only departures from it read as expressions.
//!
//! How: the baseline `b` is the geometric mean of the probabilities seen
//! while the player held a resting face (renormalised). A frame's
//! probabilities `p` are divided by `b` class by class, which turns "this
//! player's usual look" into a flat distribution, and multiplied by a
//! neutral reference `q` (the resting face's target reading:
//! [`CalibrationConfig::resting_neutral`] on the neutral class, the rest
//! shared equally), then renormalised: `p' ∝ p · q / b`. This is the
//! standard correction of a classifier's outputs for a shift in priors
//! (Saerens et al. 2002) with the player's resting face as the shift. A
//! resting face then gives `p' ≈ q`; a smile multiplies happy's ratio
//! `p/b` many times and wins.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Calibration settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct CalibrationConfig {
    /// The neutral probability a resting face is mapped to (0..1, the other
    /// classes share the rest). Higher: an expression must move further from
    /// the resting face to be reported.
    pub resting_neutral: f32,
    /// Fewest frames a baseline is made from.
    pub min_frames: usize,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        Self {
            resting_neutral: 0.5,
            min_frames: 5,
        }
    }
}

/// Why a baseline cannot be made or used.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum CalibrationError {
    /// Too few frames with a usable face were gathered.
    #[error("calibration needs at least {needed} frames of the face, got {got}")]
    TooFewFrames {
        /// Frames needed.
        needed: usize,
        /// Frames gathered.
        got: usize,
    },
    /// The baseline was made with another model (its classes differ).
    #[error("the baseline is for classes {baseline:?}, the model has {model:?}")]
    Classes {
        /// The baseline's classes.
        baseline: Vec<String>,
        /// The model's classes.
        model: Vec<String>,
    },
    /// The face is not in view (never seen, or lost before the calibration
    /// ended).
    #[error("no face to calibrate: it is not in view, or it was lost during the calibration")]
    NoFace,
    /// The classes have no `neutral`.
    #[error("the model has no neutral class to calibrate against")]
    NoNeutral,
    /// A probability vector of the wrong length, or values that are not
    /// probabilities.
    #[error("invalid baseline: {0}")]
    Invalid(String),
    /// Reading or writing a baseline file failed.
    #[error("baseline file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// One player's resting face as the classifier sees it: one probability per
/// class. Serialisable, so a game can save it and load it next session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct NeutralBaseline {
    /// The model's class names, in output order.
    pub classes: Vec<String>,
    /// Geometric mean of the resting face's probabilities, renormalised.
    pub probs: Vec<f32>,
    /// How many frames it was made from.
    pub frames: usize,
}

/// Smallest probability used in logarithms and divisions.
const FLOOR: f32 = 1e-4;

impl NeutralBaseline {
    /// The baseline of `samples` (probability vectors of one face at rest,
    /// in `classes` order).
    pub fn from_samples(
        classes: &[String],
        samples: &[Vec<f32>],
        config: &CalibrationConfig,
    ) -> Result<Self, CalibrationError> {
        if samples.len() < config.min_frames.max(1) {
            return Err(CalibrationError::TooFewFrames {
                needed: config.min_frames.max(1),
                got: samples.len(),
            });
        }
        let k = classes.len();
        let mut logs = vec![0f64; k];
        for s in samples {
            if s.len() != k {
                return Err(CalibrationError::Invalid(format!(
                    "a sample has {} values for {k} classes",
                    s.len()
                )));
            }
            for (l, &p) in logs.iter_mut().zip(s) {
                *l += f64::from(p.max(FLOOR).ln());
            }
        }
        let n = samples.len() as f64;
        let raw: Vec<f64> = logs.iter().map(|l| (l / n).exp()).collect();
        let sum: f64 = raw.iter().sum();
        let baseline = Self {
            classes: classes.to_vec(),
            probs: raw.iter().map(|v| (v / sum) as f32).collect(),
            frames: samples.len(),
        };
        baseline.check(classes)?;
        Ok(baseline)
    }

    /// Checks the baseline against a model's `classes`: same names in the
    /// same order, a neutral class, finite positive probabilities.
    pub fn check(&self, classes: &[String]) -> Result<(), CalibrationError> {
        if self.classes != classes {
            return Err(CalibrationError::Classes {
                baseline: self.classes.clone(),
                model: classes.to_vec(),
            });
        }
        if self.probs.len() != classes.len() {
            return Err(CalibrationError::Invalid(format!(
                "{} probabilities for {} classes",
                self.probs.len(),
                classes.len()
            )));
        }
        if self.probs.iter().any(|p| !p.is_finite() || *p < 0.0) {
            return Err(CalibrationError::Invalid(
                "probabilities must be finite and non-negative".into(),
            ));
        }
        neutral_index(classes).ok_or(CalibrationError::NoNeutral)?;
        Ok(())
    }

    /// `p' ∝ p · q / b` (module documentation). `probs` must be in the
    /// baseline's class order; a vector of another length is returned
    /// unchanged.
    pub fn calibrate(&self, probs: &[f32], config: &CalibrationConfig) -> Vec<f32> {
        let Some(neutral) = neutral_index(&self.classes) else {
            return probs.to_vec();
        };
        if probs.len() != self.probs.len() || probs.is_empty() {
            return probs.to_vec();
        }
        let k = probs.len();
        let rest_n = config.resting_neutral.clamp(0.01, 0.99);
        let rest_other = if k > 1 {
            (1.0 - rest_n) / (k - 1) as f32
        } else {
            1.0
        };
        let mut out: Vec<f32> = probs
            .iter()
            .zip(&self.probs)
            .enumerate()
            .map(|(i, (&p, &b))| {
                let q = if i == neutral { rest_n } else { rest_other };
                p.max(0.0) * q / b.max(FLOOR)
            })
            .collect();
        let sum: f32 = out.iter().sum();
        if sum > 0.0 && sum.is_finite() {
            for v in &mut out {
                *v /= sum;
            }
            out
        } else {
            probs.to_vec()
        }
    }

    /// Writes the baseline as JSON (only when the caller asks; nothing is
    /// written otherwise).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), CalibrationError> {
        let path = path.as_ref();
        let err = |reason: String| CalibrationError::File {
            path: path.display().to_string(),
            reason,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(e.to_string()))?;
        std::fs::write(path, json).map_err(|e| err(e.to_string()))
    }

    /// Reads a baseline written by [`NeutralBaseline::save`] and checks it
    /// against the model's `classes`. A truncated file, another class count or
    /// another model's classes are errors.
    pub fn load(path: impl AsRef<Path>, classes: &[String]) -> Result<Self, CalibrationError> {
        let path = path.as_ref();
        let err = |reason: String| CalibrationError::File {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let baseline: Self = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
        baseline.check(classes)?;
        Ok(baseline)
    }
}

/// Index of the class named `neutral` (any case).
pub fn neutral_index(classes: &[String]) -> Option<usize> {
    classes
        .iter()
        .position(|c| c.eq_ignore_ascii_case("neutral"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        models::FER2013_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// A player whose resting face reads 55% sad.
    const RESTING: [f32; 7] = [0.08, 0.02, 0.05, 0.02, 0.55, 0.03, 0.25];

    #[test]
    fn a_sad_looking_resting_face_reads_neutral_and_a_smile_reads_happy() {
        let cfg = CalibrationConfig::default();
        let samples: Vec<Vec<f32>> = (0..10).map(|_| RESTING.to_vec()).collect();
        let b = NeutralBaseline::from_samples(&classes(), &samples, &cfg).unwrap();
        assert_eq!(b.frames, 10);
        let rest = b.calibrate(&RESTING, &cfg);
        assert_eq!(crate::argmax(&rest), 6, "{rest:?}");
        assert!((rest[6] - 0.5).abs() < 1e-3);
        let smile = [0.02, 0.01, 0.02, 0.7, 0.15, 0.02, 0.08];
        assert_eq!(crate::argmax(&b.calibrate(&smile, &cfg)), 3);
        // Sadder than usual still reads sad.
        let sadder = [0.03, 0.01, 0.03, 0.01, 0.85, 0.02, 0.05];
        assert_eq!(crate::argmax(&b.calibrate(&sadder, &cfg)), 4);
        // The uncalibrated label of the resting face was sad.
        assert_eq!(crate::argmax(&RESTING), 4);
    }

    #[test]
    fn bad_baselines_are_refused() {
        let cfg = CalibrationConfig::default();
        assert_eq!(
            NeutralBaseline::from_samples(&classes(), &[], &cfg),
            Err(CalibrationError::TooFewFrames { needed: 5, got: 0 })
        );
        let eight: Vec<String> = classes().into_iter().chain(["contempt".into()]).collect();
        let samples: Vec<Vec<f32>> = (0..5).map(|_| RESTING.to_vec()).collect();
        let b = NeutralBaseline::from_samples(&classes(), &samples, &cfg).unwrap();
        assert!(matches!(
            b.check(&eight),
            Err(CalibrationError::Classes { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("me.json");
        b.save(&path).unwrap();
        assert_eq!(NeutralBaseline::load(&path, &classes()).unwrap(), b);
        assert!(NeutralBaseline::load(&path, &eight).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        assert!(matches!(
            NeutralBaseline::load(&path, &classes()),
            Err(CalibrationError::File { .. })
        ));
        let no_neutral: Vec<String> = classes()[..6].to_vec();
        let s6: Vec<Vec<f32>> = (0..5).map(|_| vec![1.0 / 6.0; 6]).collect();
        assert_eq!(
            NeutralBaseline::from_samples(&no_neutral, &s6, &cfg),
            Err(CalibrationError::NoNeutral)
        );
        // A vector of another length passes through unchanged.
        assert_eq!(b.calibrate(&[0.5, 0.5], &cfg), vec![0.5, 0.5]);
    }
}

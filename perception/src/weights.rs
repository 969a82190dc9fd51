//! Weights files of any kind, told apart by their `format` metadata: the
//! MTCNN detector (`mtcnn/1`), the YuNet finder (`yunet-libfacedetection`)
//! or an emotion classifier (`emotion-cnn/1`, ARCH-1..4). What the plugin's
//! asset loader and the CLI read.

use std::path::Path;

use models::yunet::YuNet;

use crate::{Classifier, Detector, DetectorConfig, PerceptionError};

/// A loaded weights file.
#[derive(Debug, Clone)]
pub enum Weights {
    /// MTCNN (`format: mtcnn/1`), with [`DetectorConfig::default`] settings.
    Detector(Box<Detector>),
    /// YuNet (`format: yunet-libfacedetection`): the whole-frame finder a
    /// detector can use ([`Detector::with_yunet`]).
    Finder(Box<YuNet>),
    /// An ARCH-1..4 classifier (`format: emotion-cnn/1`).
    Classifier(Box<Classifier>),
}

impl Weights {
    /// Reads detector, finder or classifier weights from bytes, by their
    /// `format` metadata (anything but `mtcnn/1` and
    /// `yunet-libfacedetection` is read, and checked, as a classifier).
    /// Truncated, foreign or mismatched files are errors.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PerceptionError> {
        match models::weights::format_of(bytes)?.as_deref() {
            Some(models::mtcnn::FORMAT) => {
                let detector = Detector::from_bytes(bytes, DetectorConfig::default())?;
                Ok(Self::Detector(Box::new(detector)))
            }
            Some(models::yunet::FORMAT) => Ok(Self::Finder(Box::new(YuNet::from_bytes(bytes)?))),
            _ => Ok(Self::Classifier(Box::new(Classifier::from_bytes(bytes)?))),
        }
    }

    /// Reads a weights file of either kind.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, PerceptionError> {
        Self::from_bytes(&models::weights::read_file(path.as_ref())?)
    }

    /// `"detector"`, `"finder"` or `"classifier"`, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Detector(_) => "detector",
            Self::Finder(_) => "finder",
            Self::Classifier(_) => "classifier",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_detector_from_classifier_and_rejects_garbage() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/models");
        let mtcnn = std::fs::read(dir.join("mtcnn.safetensors")).unwrap();
        assert!(matches!(
            Weights::from_bytes(&mtcnn),
            Ok(Weights::Detector(_))
        ));
        let yunet = Weights::from_file(dir.join("yunet.safetensors")).unwrap();
        assert_eq!(yunet.kind(), "finder");
        let arch1 = Weights::from_file(dir.join("arch1_fer2013.safetensors")).unwrap();
        assert_eq!(arch1.kind(), "classifier");
        assert!(matches!(
            Weights::from_bytes(b"garbage"),
            Err(PerceptionError::Weights(_))
        ));
        assert!(Weights::from_bytes(&mtcnn[..mtcnn.len() / 2]).is_err());
    }
}

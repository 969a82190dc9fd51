//! The expressions a classifier's class names stand for.

use std::fmt;

/// A facial expression, FER2013's seven plus CK+'s contempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub enum Emotion {
    /// Angry.
    Angry,
    /// Disgust.
    Disgust,
    /// Fear.
    Fear,
    /// Happy.
    Happy,
    /// Sad.
    Sad,
    /// Surprise.
    Surprise,
    /// Neutral.
    Neutral,
    /// Contempt (CK+ models only).
    Contempt,
    /// A class name this crate does not know (custom models).
    Other,
}

impl Emotion {
    /// FER2013's seven, in label order.
    pub const FER2013: [Emotion; 7] = [
        Emotion::Angry,
        Emotion::Disgust,
        Emotion::Fear,
        Emotion::Happy,
        Emotion::Sad,
        Emotion::Surprise,
        Emotion::Neutral,
    ];

    /// The emotion a model's class name stands for.
    pub fn from_name(name: &str) -> Self {
        match name.to_ascii_lowercase().as_str() {
            "angry" | "anger" => Self::Angry,
            "disgust" => Self::Disgust,
            "fear" => Self::Fear,
            "happy" | "happiness" => Self::Happy,
            "sad" | "sadness" => Self::Sad,
            "surprise" => Self::Surprise,
            "neutral" => Self::Neutral,
            "contempt" => Self::Contempt,
            _ => Self::Other,
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Angry => "angry",
            Self::Disgust => "disgust",
            Self::Fear => "fear",
            Self::Happy => "happy",
            Self::Sad => "sad",
            Self::Surprise => "surprise",
            Self::Neutral => "neutral",
            Self::Contempt => "contempt",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for Emotion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emotion_names_round_trip() {
        for e in Emotion::FER2013 {
            assert_eq!(Emotion::from_name(e.name()), e);
        }
        assert_eq!(Emotion::from_name("Happiness"), Emotion::Happy);
        assert_eq!(Emotion::from_name("joy"), Emotion::Other);
    }
}

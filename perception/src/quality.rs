//! How far a classified face can be trusted: [`FaceQuality`] measures the
//! face (its size, the crop's sharpness, brightness and contrast, a head pose
//! estimated from the five landmarks, the detector's score) and the
//! classifier's answer (top-1 probability and its margin over the second);
//! a [`QualityGate`] turns a face that fails any check into an
//! [`Unsure`] verdict with the reason instead of a label.
//!
//! The head pose is a rough geometric estimate from five points, not a 3-D
//! fit: roll is the angle of the eye line; yaw comes from how far the nose
//! sits from the eyes' midpoint (relative to half the eye distance), pitch
//! from where the nose sits between the eye line and the mouth line
//! (relative to FER2013's mean framing). Both read 0 for a frontal face and
//! grow with the turn; treat them as "how far from frontal", in degrees.

use crate::align::FER2013_LANDMARKS;
use crate::crop::GrayCrop;
use crate::detect::Detection;

/// What was measured of one classified face.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
#[derive(serde::Serialize, serde::Deserialize)]
pub struct FaceQuality {
    /// Face size: the square root of the box's area, in frame pixels.
    pub side: f32,
    /// Variance of the 4-neighbour Laplacian of the 48x48 crop (0..255
    /// scale): low for blurred or flat crops.
    pub sharpness: f32,
    /// Mean of the crop, 0..255.
    pub brightness: f32,
    /// Standard deviation of the crop, 0..255.
    pub contrast: f32,
    /// Head turn left/right, degrees from frontal (signed: positive when
    /// the nose is to the right of the eyes' midpoint in the image).
    pub yaw: f32,
    /// Head nod, degrees from FER2013's mean framing (positive: nose lower,
    /// head tilted down).
    pub pitch: f32,
    /// In-plane tilt, degrees (positive: clockwise in the image).
    pub roll: f32,
    /// The detector's score.
    pub detector_score: f32,
    /// The classifier's top-1 probability.
    pub confidence: f32,
    /// Top-1 minus top-2 probability.
    pub margin: f32,
}

/// Why a face's expression is not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
#[derive(serde::Serialize, serde::Deserialize)]
pub enum UnsureReason {
    /// The face is smaller than [`QualityGate::min_side`].
    TooSmall,
    /// The crop is blurred (sharpness below the gate).
    Blurry,
    /// The head is turned or tilted beyond the gate.
    TurnedAway,
    /// Too dark or too bright.
    BadLighting,
    /// Too little contrast to see features.
    LowContrast,
    /// The detector was not sure this is a face.
    WeakDetection,
    /// The classifier's answer is not confident enough.
    LowConfidence,
    /// The face could not be aligned (degenerate landmarks).
    AlignmentFailed,
}

impl UnsureReason {
    /// A short sentence for logs and players.
    pub fn describe(self) -> &'static str {
        match self {
            Self::TooSmall => "the face is too small",
            Self::Blurry => "the image is blurred",
            Self::TurnedAway => "the head is turned away",
            Self::BadLighting => "the lighting is too dark or too bright",
            Self::LowContrast => "the face has too little contrast",
            Self::WeakDetection => "the detector is unsure it is a face",
            Self::LowConfidence => "the expression is ambiguous",
            Self::AlignmentFailed => "the face could not be aligned",
        }
    }
}

impl std::fmt::Display for UnsureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// A face whose expression is withheld, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsure {
    /// The first check that failed.
    pub reason: UnsureReason,
}

/// Thresholds a face must pass for its expression to be reported.
///
/// The defaults, chosen on FER2013 PublicTest with the shipped ARCH-1
/// (`training evaluate --abstain --usage PublicTest`, the curve in
/// `report/REPORT.md`):
///
/// - confidence: 0.45, the threshold that keeps 80% of PublicTest's faces
///   (coverage 0.815); accuracy on the faces answered is 0.735 against
///   0.671 on all of them;
/// - image gates (sharpness 20, brightness 20..235, contrast 8): they only
///   refuse what no classifier can read; on PublicTest they refuse 4 of
///   3,589 crops (the 5th percentiles are 713, 73 and 33);
/// - the face side is the detector's own 40 px minimum, the detector score
///   0.9, and the pose gates are wide (45 degrees of yaw, 30 of pitch and
///   roll): PublicTest's crops carry no pose to choose them from.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
#[derive(serde::Serialize, serde::Deserialize)]
pub struct QualityGate {
    /// Smallest face side, frame pixels.
    pub min_side: f32,
    /// Smallest crop sharpness.
    pub min_sharpness: f32,
    /// Largest |yaw|, degrees.
    pub max_yaw: f32,
    /// Largest |pitch|, degrees.
    pub max_pitch: f32,
    /// Largest |roll|, degrees.
    pub max_roll: f32,
    /// Darkest acceptable crop mean.
    pub min_brightness: f32,
    /// Brightest acceptable crop mean.
    pub max_brightness: f32,
    /// Smallest crop standard deviation.
    pub min_contrast: f32,
    /// Smallest detector score.
    pub min_detector_score: f32,
    /// Smallest top-1 probability.
    pub min_confidence: f32,
    /// Smallest margin of top-1 over top-2.
    pub min_margin: f32,
}

impl Default for QualityGate {
    fn default() -> Self {
        Self {
            min_side: 40.0,
            min_sharpness: 20.0,
            max_yaw: 45.0,
            max_pitch: 30.0,
            max_roll: 30.0,
            min_brightness: 20.0,
            max_brightness: 235.0,
            min_contrast: 8.0,
            min_detector_score: 0.9,
            min_confidence: DEFAULT_MIN_CONFIDENCE,
            min_margin: 0.0,
        }
    }
}

/// The default confidence gate (see [`QualityGate`]).
pub const DEFAULT_MIN_CONFIDENCE: f32 = 0.45;

impl QualityGate {
    /// A gate that lets everything through (every verdict is a label).
    pub fn open() -> Self {
        Self {
            min_side: 0.0,
            min_sharpness: 0.0,
            max_yaw: f32::INFINITY,
            max_pitch: f32::INFINITY,
            max_roll: f32::INFINITY,
            min_brightness: f32::NEG_INFINITY,
            max_brightness: f32::INFINITY,
            min_contrast: 0.0,
            min_detector_score: 0.0,
            min_confidence: 0.0,
            min_margin: 0.0,
        }
    }

    /// `Ok` when `q` passes every check, else the first failed one (image
    /// checks before the classifier's confidence). NaN measurements fail.
    pub fn check(&self, q: &FaceQuality) -> Result<(), Unsure> {
        let fail = |reason| Err(Unsure { reason });
        let at_least = |v: f32, min: f32| v >= min;
        if !at_least(q.side, self.min_side) {
            return fail(UnsureReason::TooSmall);
        }
        if !at_least(q.detector_score, self.min_detector_score) {
            return fail(UnsureReason::WeakDetection);
        }
        if !(at_least(q.brightness, self.min_brightness) && q.brightness <= self.max_brightness) {
            return fail(UnsureReason::BadLighting);
        }
        if !at_least(q.contrast, self.min_contrast) {
            return fail(UnsureReason::LowContrast);
        }
        if !at_least(q.sharpness, self.min_sharpness) {
            return fail(UnsureReason::Blurry);
        }
        let within = |v: f32, max: f32| v.abs() <= max;
        if !(within(q.yaw, self.max_yaw)
            && within(q.pitch, self.max_pitch)
            && within(q.roll, self.max_roll))
        {
            return fail(UnsureReason::TurnedAway);
        }
        if !(at_least(q.confidence, self.min_confidence) && at_least(q.margin, self.min_margin)) {
            return fail(UnsureReason::LowConfidence);
        }
        Ok(())
    }
}

/// The crop's sharpness (variance of the Laplacian), brightness (mean) and
/// contrast (standard deviation).
pub fn crop_stats(crop: &GrayCrop) -> (f32, f32, f32) {
    let px = crop.pixels();
    let n = px.len() as f64;
    let mean = px.iter().map(|&p| f64::from(p)).sum::<f64>() / n;
    let var = px
        .iter()
        .map(|&p| (f64::from(p) - mean).powi(2))
        .sum::<f64>()
        / n;
    let side = (px.len() as f64).sqrt() as usize;
    let at = |x: usize, y: usize| f64::from(px[y * side + x]);
    let mut lap = Vec::with_capacity(side.saturating_sub(2).pow(2));
    for y in 1..side.saturating_sub(1) {
        for x in 1..side - 1 {
            lap.push(at(x - 1, y) + at(x + 1, y) + at(x, y - 1) + at(x, y + 1) - 4.0 * at(x, y));
        }
    }
    let ln = lap.len().max(1) as f64;
    let lm = lap.iter().sum::<f64>() / ln;
    let lvar = lap.iter().map(|v| (v - lm).powi(2)).sum::<f64>() / ln;
    (lvar as f32, mean as f32, var.sqrt() as f32)
}

/// Yaw, pitch and roll in degrees from the five landmarks (left eye, right
/// eye, nose, left and right mouth corner), as the module documentation
/// describes. Degenerate landmarks give NaN, which every gate refuses.
pub fn head_pose(lm: &[[f32; 2]; 5]) -> (f32, f32, f32) {
    let [le, re, nose, lm_, rm] = *lm;
    let (dx, dy) = (re[0] - le[0], re[1] - le[1]);
    let eye_dist = dx.hypot(dy);
    if eye_dist.is_nan() || eye_dist < 1e-3 {
        return (f32::NAN, f32::NAN, f32::NAN);
    }
    let roll = dy.atan2(dx);
    // Undo the roll around the eyes' midpoint.
    let mid = [(le[0] + re[0]) / 2.0, (le[1] + re[1]) / 2.0];
    let (s, c) = (-roll).sin_cos();
    let rot = |p: [f32; 2]| {
        let (x, y) = (p[0] - mid[0], p[1] - mid[1]);
        [c * x - s * y, s * x + c * y]
    };
    let n = rot(nose);
    let mouth = {
        let (a, b) = (rot(lm_), rot(rm));
        [(a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0]
    };
    let half = eye_dist / 2.0;
    let yaw = (n[0] / half).clamp(-1.0, 1.0).asin();
    // Where the nose sits between eyes (0) and mouth (1), against FER2013's
    // mean framing.
    let f = FER2013_LANDMARKS;
    let eye_y = (f[0][1] + f[1][1]) / 2.0;
    let t0 = (f[2][1] - eye_y) / ((f[3][1] + f[4][1]) / 2.0 - eye_y);
    let t = if mouth[1].abs() > 1e-3 {
        n[1] / mouth[1]
    } else {
        f32::NAN
    };
    let pitch = ((t - t0) * 2.0).clamp(-1.0, 1.0).asin();
    (yaw.to_degrees(), pitch.to_degrees(), roll.to_degrees())
}

impl FaceQuality {
    /// Measures a face: its detection, the aligned crop the classifier saw
    /// and the classifier's probabilities.
    pub fn measure(det: &Detection, crop: &GrayCrop, probs: &[f32]) -> Self {
        let [x1, y1, x2, y2] = det.bbox;
        let side = ((x2 - x1).max(0.0) * (y2 - y1).max(0.0)).sqrt();
        let (sharpness, brightness, contrast) = crop_stats(crop);
        let (yaw, pitch, roll) = head_pose(&det.landmarks);
        let (confidence, margin) = top_two(probs);
        Self {
            side,
            sharpness,
            brightness,
            contrast,
            yaw,
            pitch,
            roll,
            detector_score: det.score,
            confidence,
            margin,
        }
    }
}

/// Top-1 probability and its margin over the second (0 and 0 when empty).
pub fn top_two(probs: &[f32]) -> (f32, f32) {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &p in probs {
        if p > a {
            b = a;
            a = p;
        } else if p > b {
            b = p;
        }
    }
    match (a.is_finite(), b.is_finite()) {
        (true, true) => (a, a - b),
        (true, false) => (a, a),
        _ => (0.0, 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(lm: [[f32; 2]; 5]) -> Detection {
        Detection {
            bbox: [0.0, 0.0, 100.0, 100.0],
            score: 0.99,
            landmarks: lm,
        }
    }

    #[test]
    fn frontal_landmarks_have_no_pose_and_turns_are_seen() {
        let (yaw, pitch, roll) = head_pose(&FER2013_LANDMARKS);
        assert!(
            yaw.abs() < 5.0 && pitch.abs() < 1.0 && roll.abs() < 2.0,
            "{yaw} {pitch} {roll}"
        );
        // Rotated 20 degrees in the image plane: roll 20, the rest unchanged.
        let (s, c) = 20f32.to_radians().sin_cos();
        let rot = FER2013_LANDMARKS.map(|[x, y]| [c * x - s * y + 50.0, s * x + c * y]);
        let (y2, p2, r2) = head_pose(&rot);
        assert!((r2 - roll - 20.0).abs() < 0.1, "{r2}");
        assert!((y2 - yaw).abs() < 0.5 && (p2 - pitch).abs() < 0.5);
        // The nose moved towards the right eye: turned.
        let mut turned = FER2013_LANDMARKS;
        turned[2][0] += 6.0;
        assert!(head_pose(&turned).0 > 30.0);
        assert!(head_pose(&[[1.0, 1.0]; 5]).0.is_nan());
    }

    #[test]
    fn flat_and_blank_crops_are_refused_and_a_textured_one_passes() {
        let gate = QualityGate {
            min_confidence: 0.0,
            ..QualityGate::default()
        };
        let probs = [0.1, 0.1, 0.1, 0.4, 0.1, 0.1, 0.1];
        let black = GrayCrop::new(vec![0; 2304]).unwrap();
        let q = FaceQuality::measure(&det(FER2013_LANDMARKS), &black, &probs);
        assert_eq!(
            gate.check(&q).unwrap_err().reason,
            UnsureReason::BadLighting
        );
        let flat = GrayCrop::new(vec![128; 2304]).unwrap();
        let q = FaceQuality::measure(&det(FER2013_LANDMARKS), &flat, &probs);
        assert_eq!(
            gate.check(&q).unwrap_err().reason,
            UnsureReason::LowContrast
        );
        let textured =
            GrayCrop::new((0..2304).map(|i| ((i * 37) % 200 + 20) as u8).collect()).unwrap();
        let q = FaceQuality::measure(&det(FER2013_LANDMARKS), &textured, &probs);
        assert!(q.sharpness > 100.0, "{q:?}");
        assert_eq!(gate.check(&q), Ok(()));
        assert!((q.confidence - 0.4).abs() < 1e-6 && (q.margin - 0.3).abs() < 1e-6);
        // Small face, weak detection, low confidence, in that order of checks.
        let small = FaceQuality { side: 20.0, ..q };
        assert_eq!(
            gate.check(&small).unwrap_err().reason,
            UnsureReason::TooSmall
        );
        let weak = FaceQuality {
            detector_score: 0.5,
            ..q
        };
        assert_eq!(
            gate.check(&weak).unwrap_err().reason,
            UnsureReason::WeakDetection
        );
        let unsure = QualityGate::default().check(&FaceQuality {
            confidence: 0.2,
            ..q
        });
        assert_eq!(unsure.unwrap_err().reason, UnsureReason::LowConfidence);
        let nan = FaceQuality { yaw: f32::NAN, ..q };
        assert_eq!(
            gate.check(&nan).unwrap_err().reason,
            UnsureReason::TurnedAway
        );
        assert_eq!(QualityGate::open().check(&small), Ok(()));
    }

    #[test]
    fn top_two_handles_short_inputs() {
        assert_eq!(top_two(&[]), (0.0, 0.0));
        assert_eq!(top_two(&[0.7]), (0.7, 0.7));
        let (top, margin) = top_two(&[0.2, 0.8]);
        assert!(top == 0.8 && (margin - 0.6).abs() < 1e-6);
    }
}

//! Face tracking and per-face smoothing, as plain data structures (the
//! plugin's face stage drives them): detections are matched to tracks by IoU
//! against each track's motion-predicted box, probabilities are smoothed
//! exponentially in time, and the label changes only with hysteresis.

use crate::argmax;
use crate::detect::box_iou as iou;
use crate::quality::{FaceQuality, UnsureReason};

/// Tracking and smoothing settings.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct TrackerConfig {
    /// A detection continues a track when its IoU with the track's predicted
    /// box is at least this.
    pub min_iou: f32,
    /// A track not matched for this many seconds of frames is lost (covers
    /// brief occlusions and missed detections).
    pub lost_after: f32,
    /// Time constant of the exponential smoothing of probabilities, seconds.
    pub smoothing: f32,
    /// The smoothed label changes only when the new class's smoothed
    /// probability beats the current one's by this margin.
    pub hysteresis: f32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            min_iou: 0.3,
            lost_after: 1.0,
            smoothing: 0.25,
            hysteresis: 0.1,
        }
    }
}

/// One face as the pipeline saw it in one frame.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Observation {
    /// `[x1, y1, x2, y2]` in frame pixels.
    pub bbox: [f32; 4],
    /// Detector score.
    pub score: f32,
    /// Five landmarks.
    pub landmarks: [[f32; 2]; 5],
    /// Class probabilities (empty when the face could not be classified).
    pub probs: Vec<f32>,
    /// What was measured of the face (absent when it could not be aligned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<FaceQuality>,
    /// Set when the expression of this observation must not be used (the
    /// quality gate refused it, or it could not be classified): the tracker
    /// follows the face but holds its smoothed probabilities and label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsure: Option<UnsureReason>,
}

/// A tracked face.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// Stable id, unique within the tracker's life.
    pub id: u64,
    /// Last matched observation.
    pub last: Observation,
    /// Its probabilities as the update's correction made them (calibrated;
    /// equal to `last.probs` without a correction): what is smoothed.
    pub corrected: Vec<f32>,
    /// Box velocity, pixels per second, per coordinate.
    pub velocity: [f32; 4],
    /// Frame time of the first observation, seconds.
    pub first_seen: f64,
    /// Frame time of the last observation, seconds.
    pub last_seen: f64,
    /// Smoothed probabilities.
    pub smoothed: Vec<f32>,
    /// The smoothed label (index into the classes).
    pub label: usize,
    /// Whether any observation so far was sure (until then `smoothed` and
    /// `label` are placeholders).
    pub sure: bool,
}

impl Track {
    fn predicted(&self, t: f64) -> [f32; 4] {
        let dt = (t - self.last_seen) as f32;
        let mut b = self.last.bbox;
        for (v, d) in b.iter_mut().zip(self.velocity) {
            *v += d * dt;
        }
        b
    }
}

/// What one update did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TrackUpdate {
    /// New tracks (ids).
    pub appeared: Vec<u64>,
    /// `(track id, observation index)` for every matched or new track.
    pub observed: Vec<(u64, usize)>,
    /// `(track id, from label, to label)` when a smoothed label changed.
    pub changed: Vec<(u64, usize, usize)>,
    /// Tracks lost at this update.
    pub lost: Vec<u64>,
}

/// Keeps face identities across frames.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// Settings.
    pub config: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    /// An empty tracker.
    pub fn new(config: TrackerConfig) -> Self {
        Self {
            config,
            tracks: Vec::new(),
            next_id: 1,
        }
    }

    /// The live tracks.
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// A live track by id.
    pub fn get(&self, id: u64) -> Option<&Track> {
        self.tracks.iter().find(|t| t.id == id)
    }

    /// Feeds the faces of the frame taken at `t` seconds.
    pub fn update(&mut self, t: f64, observations: &[Observation]) -> TrackUpdate {
        self.update_with(t, observations, |_, p| p.to_vec())
    }

    /// [`Tracker::update`], smoothing `correct(track id, probabilities)`
    /// instead of the observed probabilities (per-face calibration); the
    /// observations themselves are kept as they are in [`Track::last`].
    pub fn update_with(
        &mut self,
        t: f64,
        observations: &[Observation],
        mut correct: impl FnMut(u64, &[f32]) -> Vec<f32>,
    ) -> TrackUpdate {
        let mut out = TrackUpdate::default();
        // Greedy matching, best IoU first.
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (ti, track) in self.tracks.iter().enumerate() {
            let predicted = track.predicted(t);
            for (oi, o) in observations.iter().enumerate() {
                let v = iou(&predicted, &o.bbox).max(iou(&track.last.bbox, &o.bbox));
                if v >= self.config.min_iou {
                    pairs.push((v, ti, oi));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut track_used = vec![false; self.tracks.len()];
        let mut obs_used = vec![false; observations.len()];
        for (_, ti, oi) in pairs {
            if track_used[ti] || obs_used[oi] {
                continue;
            }
            track_used[ti] = true;
            obs_used[oi] = true;
            let cfg = self.config.clone();
            let track = &mut self.tracks[ti];
            let o = &observations[oi];
            let dt = (t - track.last_seen) as f32;
            if dt > 0.0 {
                for k in 0..4 {
                    let v = (o.bbox[k] - track.last.bbox[k]) / dt;
                    // Light smoothing of the velocity estimate.
                    track.velocity[k] = 0.5 * track.velocity[k] + 0.5 * v;
                }
            }
            track.last = o.clone();
            track.corrected = correct(track.id, &o.probs);
            track.last_seen = t;
            out.observed.push((track.id, oi));
            if o.unsure.is_some() || o.probs.is_empty() {
                // Follow the face, hold its expression.
                continue;
            }
            let probs = &track.corrected;
            if !track.sure {
                track.sure = true;
                track.label = argmax(probs);
                track.smoothed = probs.clone();
                continue;
            }
            let alpha = if cfg.smoothing > 0.0 && dt > 0.0 {
                1.0 - (-dt / cfg.smoothing).exp()
            } else {
                1.0
            };
            if track.smoothed.len() == probs.len() {
                for (s, p) in track.smoothed.iter_mut().zip(probs) {
                    *s += alpha * (p - *s);
                }
            } else {
                track.smoothed = probs.clone();
            }
            let best = argmax(&track.smoothed);
            let current = track.smoothed.get(track.label).copied().unwrap_or(0.0);
            if best != track.label && track.smoothed[best] >= current + cfg.hysteresis {
                out.changed.push((track.id, track.label, best));
                track.label = best;
            }
        }
        for (oi, o) in observations.iter().enumerate() {
            if obs_used[oi] {
                continue;
            }
            let id = self.next_id.max(1);
            self.next_id = id + 1;
            let sure = o.unsure.is_none() && !o.probs.is_empty();
            let probs = correct(id, &o.probs);
            self.tracks.push(Track {
                id,
                last: o.clone(),
                corrected: probs.clone(),
                velocity: [0.0; 4],
                first_seen: t,
                last_seen: t,
                label: argmax(&probs),
                smoothed: probs,
                sure,
            });
            out.appeared.push(id);
            out.observed.push((id, oi));
        }
        out.lost = self.expire(t);
        out
    }

    /// Ends the tracks not seen for longer than `lost_after` at time `t`
    /// (called when no result arrives, so tracks expire on time even when
    /// the source stops delivering).
    pub fn expire(&mut self, t: f64) -> Vec<u64> {
        let lost_after = f64::from(self.config.lost_after);
        let mut lost = Vec::new();
        self.tracks.retain(|tr| {
            let keep = t - tr.last_seen <= lost_after;
            if !keep {
                lost.push(tr.id);
            }
            keep
        });
        lost
    }

    /// Drops every track (e.g. when capture is switched off).
    pub fn clear(&mut self) -> Vec<u64> {
        self.tracks.drain(..).map(|t| t.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(x: f32, probs: [f32; 3]) -> Observation {
        Observation {
            bbox: [x, 10.0, x + 50.0, 70.0],
            score: 0.99,
            landmarks: [[0.0; 2]; 5],
            probs: probs.to_vec(),
            quality: None,
            unsure: None,
        }
    }

    const A: [f32; 3] = [0.9, 0.05, 0.05];
    const B: [f32; 3] = [0.05, 0.9, 0.05];

    #[test]
    fn a_moving_face_keeps_its_id() {
        let mut tr = Tracker::new(TrackerConfig::default());
        let first = tr.update(0.0, &[obs(0.0, A)]);
        assert_eq!(first.appeared, vec![1]);
        for i in 1..30 {
            let u = tr.update(f64::from(i) / 15.0, &[obs(i as f32 * 6.0, A)]);
            assert!(u.appeared.is_empty() && u.lost.is_empty() && u.changed.is_empty());
            assert_eq!(u.observed, vec![(1, 0)]);
        }
        // Two faces: the second gets a new id, the first keeps its own.
        let u = tr.update(2.0, &[obs(400.0, A), obs(180.0, A)]);
        assert_eq!(u.appeared, vec![2]);
        assert!(u.observed.contains(&(1, 1)));
    }

    #[test]
    fn label_changes_after_a_few_frames_not_on_a_blip() {
        let mut tr = Tracker::new(TrackerConfig::default());
        let dt = 1.0 / 15.0;
        tr.update(0.0, &[obs(0.0, A)]);
        // One frame of B among A: no change.
        let mut t = 0.0;
        for probs in [A, A, B, A, A] {
            t += dt;
            assert!(tr.update(t, &[obs(0.0, probs)]).changed.is_empty());
        }
        // A lasting change shows within a few frames, once.
        let mut changes = Vec::new();
        let mut frames = 0;
        for _ in 0..20 {
            t += dt;
            frames += 1;
            let u = tr.update(t, &[obs(0.0, B)]);
            if !u.changed.is_empty() && changes.is_empty() {
                assert!(frames <= 6, "changed only after {frames} frames");
            }
            changes.extend(u.changed);
        }
        assert_eq!(changes, vec![(1, 0, 1)]);
    }

    #[test]
    fn unsure_frames_follow_the_face_but_hold_its_expression() {
        let mut tr = Tracker::new(TrackerConfig::default());
        let dt = 1.0 / 15.0;
        // The first frames are unsure: the track exists, without a label.
        let mut u = obs(0.0, B);
        u.unsure = Some(UnsureReason::Blurry);
        assert_eq!(tr.update(0.0, std::slice::from_ref(&u)).appeared, vec![1]);
        assert!(!tr.get(1).unwrap().sure);
        tr.update(dt, &[obs(1.0, A)]);
        assert!(tr.get(1).unwrap().sure);
        assert_eq!(tr.get(1).unwrap().label, 0);
        // Twenty unsure frames of B: no change, smoothed held, box followed.
        for i in 2..22 {
            let mut o = obs(i as f32, B);
            o.unsure = Some(UnsureReason::LowConfidence);
            let up = tr.update(f64::from(i) * dt, &[o]);
            assert!(up.changed.is_empty() && up.observed == vec![(1, 0)]);
        }
        let t = tr.get(1).unwrap();
        assert_eq!((t.label, t.smoothed.clone()), (0, A.to_vec()));
        assert_eq!(t.last.bbox[0], 21.0);
        // Expiry without updates.
        assert!(tr.expire(21.0 * dt + 0.5).is_empty());
        assert_eq!(tr.expire(21.0 * dt + 1.5), vec![1]);
    }

    #[test]
    fn brief_occlusion_keeps_the_track_and_absence_loses_it() {
        let mut tr = Tracker::new(TrackerConfig::default());
        tr.update(0.0, &[obs(0.0, A)]);
        assert!(tr.update(0.5, &[]).lost.is_empty());
        let u = tr.update(0.6, &[obs(2.0, A)]);
        assert!(u.appeared.is_empty());
        assert_eq!(tr.update(1.5, &[]).lost, Vec::<u64>::new());
        assert_eq!(tr.update(1.7, &[]).lost, vec![1]);
        assert!(tr.tracks().is_empty());
        assert_eq!(tr.update(1.8, &[obs(0.0, A)]).appeared, vec![2]);
    }
}

//! Face tracking and per-face smoothing, as plain data structures (the
//! plugin's face stage drives them): detections are matched to tracks by IoU
//! against each track's motion-predicted box, probabilities are smoothed
//! exponentially in time, and the label changes only with hysteresis.

use crate::argmax;
use crate::detect::box_iou as iou;

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

/// One face as the detector saw it in one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// `[x1, y1, x2, y2]` in frame pixels.
    pub bbox: [f32; 4],
    /// Detector score.
    pub score: f32,
    /// Five landmarks.
    pub landmarks: [[f32; 2]; 5],
    /// Class probabilities.
    pub probs: Vec<f32>,
}

/// A tracked face.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// Stable id, unique within the tracker's life.
    pub id: u64,
    /// Last matched observation.
    pub last: Observation,
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
            let alpha = if cfg.smoothing > 0.0 && dt > 0.0 {
                1.0 - (-dt / cfg.smoothing).exp()
            } else {
                1.0
            };
            if track.smoothed.len() == o.probs.len() {
                for (s, p) in track.smoothed.iter_mut().zip(&o.probs) {
                    *s += alpha * (p - *s);
                }
            } else {
                track.smoothed = o.probs.clone();
            }
            let best = argmax(&track.smoothed);
            let current = track.smoothed.get(track.label).copied().unwrap_or(0.0);
            if best != track.label && track.smoothed[best] >= current + cfg.hysteresis {
                out.changed.push((track.id, track.label, best));
                track.label = best;
            }
            track.last = o.clone();
            track.last_seen = t;
            out.observed.push((track.id, oi));
        }
        for (oi, o) in observations.iter().enumerate() {
            if obs_used[oi] {
                continue;
            }
            let id = self.next_id.max(1);
            self.next_id = id + 1;
            self.tracks.push(Track {
                id,
                last: o.clone(),
                velocity: [0.0; 4],
                first_seen: t,
                last_seen: t,
                smoothed: o.probs.clone(),
                label: argmax(&o.probs),
            });
            out.appeared.push(id);
            out.observed.push((id, oi));
        }
        let lost_after = f64::from(self.config.lost_after);
        self.tracks.retain(|tr| {
            let keep = t - tr.last_seen <= lost_after;
            if !keep {
                out.lost.push(tr.id);
            }
            keep
        });
        out
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

//! Expression episodes: per face and per emotion, a small state machine over
//! the smoothed (and calibrated) intensity of that emotion, which reports
//! when an expression starts ([`EpisodeEvent::Onset`]), peaks
//! ([`EpisodeEvent::Apex`]) and ends ([`EpisodeEvent::Offset`]).
//!
//! - **Onset**: the intensity has stayed at or above `on_threshold` for
//!   `dwell` seconds. The event's time is when it first crossed, so a game
//!   can tell how old the expression is; it is reported `dwell` later.
//! - **Apex**: once per episode, when the intensity has fallen `apex_drop`
//!   below the highest value seen since the onset; it reports that highest
//!   value and its time.
//! - **Offset**: the intensity has stayed below `off_threshold` (lower than
//!   `on_threshold`: hysteresis) for `dwell` seconds; it reports the
//!   episode's duration (onset to the first frame below) and peak. An
//!   episode still open at an offset that skipped the apex reports the apex
//!   first.
//!
//! Frames the quality gate refuses are simply not fed: the machine holds its
//! state, so an unsure frame never starts or ends an episode.

/// Episode settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "reflect", derive(bevy_reflect::Reflect))]
pub struct EpisodeConfig {
    /// An episode starts when the intensity reaches this.
    pub on_threshold: f32,
    /// It ends when the intensity drops below this.
    pub off_threshold: f32,
    /// Seconds a crossing must last (both ways).
    pub dwell: f32,
    /// The apex is reported once the intensity fell this far below its peak.
    pub apex_drop: f32,
}

impl Default for EpisodeConfig {
    fn default() -> Self {
        Self {
            on_threshold: 0.5,
            off_threshold: 0.35,
            dwell: 0.2,
            apex_drop: 0.05,
        }
    }
}

/// What happened to one emotion's episode at one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EpisodeEvent {
    /// The expression started.
    Onset {
        /// Class index.
        class: usize,
        /// Intensity when it was confirmed.
        intensity: f32,
        /// When it first crossed the on-threshold, seconds.
        at: f64,
    },
    /// The expression peaked.
    Apex {
        /// Class index.
        class: usize,
        /// The peak intensity.
        intensity: f32,
        /// When the peak was, seconds.
        at: f64,
    },
    /// The expression ended.
    Offset {
        /// Class index.
        class: usize,
        /// Seconds from onset to the first frame below the off-threshold.
        duration: f64,
        /// The episode's peak intensity.
        peak: f32,
        /// When it first fell below the off-threshold, seconds.
        at: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Idle,
    Rising { since: f64 },
    Active(Active),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Active {
    onset: f64,
    peak: f32,
    peak_at: f64,
    apex_sent: bool,
    below_since: Option<f64>,
}

/// The episode machines of one face, one per class.
#[derive(Debug, Clone, PartialEq)]
pub struct Episodes {
    states: Vec<State>,
}

impl Episodes {
    /// Machines for `classes` emotions, all idle.
    pub fn new(classes: usize) -> Self {
        Self {
            states: vec![State::Idle; classes],
        }
    }

    /// Whether class `i` is in an episode now.
    pub fn active(&self, i: usize) -> bool {
        matches!(self.states.get(i), Some(State::Active(_)))
    }

    /// Feeds the intensities (one per class) of the frame at `t` seconds
    /// and returns the events, onsets after offsets. A vector of another
    /// length resets the machines.
    pub fn update(&mut self, t: f64, intensity: &[f32], cfg: &EpisodeConfig) -> Vec<EpisodeEvent> {
        if intensity.len() != self.states.len() {
            *self = Self::new(intensity.len());
        }
        // A microsecond of slack, so that "3 frames at 15 fps" is 3 frames
        // whatever the rounding of the frame times.
        let dwell = f64::from(cfg.dwell.max(0.0)) - 1e-6;
        let mut ends = Vec::new();
        let mut starts = Vec::new();
        for (class, (state, &v)) in self.states.iter_mut().zip(intensity).enumerate() {
            let v = if v.is_finite() { v } else { 0.0 };
            *state = match *state {
                State::Idle | State::Rising { .. } if v < cfg.on_threshold => State::Idle,
                State::Idle => rising_or_onset(class, t, t, v, dwell, &mut starts),
                State::Rising { since } => rising_or_onset(class, since, t, v, dwell, &mut starts),
                State::Active(mut a) => {
                    if v > a.peak {
                        a.peak = v;
                        a.peak_at = t;
                    } else if !a.apex_sent && a.peak - v >= cfg.apex_drop {
                        a.apex_sent = true;
                        ends.push(EpisodeEvent::Apex {
                            class,
                            intensity: a.peak,
                            at: a.peak_at,
                        });
                    }
                    if v < cfg.off_threshold {
                        let since = *a.below_since.get_or_insert(t);
                        if t - since >= dwell {
                            a.end(class, since, &mut ends);
                            State::Idle
                        } else {
                            State::Active(a)
                        }
                    } else {
                        a.below_since = None;
                        State::Active(a)
                    }
                }
            };
        }
        ends.extend(starts);
        ends
    }

    /// Ends every open episode at `t` (the face was lost or calibration
    /// changed the scale): apex (if not yet sent) and offset for each.
    pub fn close_all(&mut self, t: f64) -> Vec<EpisodeEvent> {
        let mut out = Vec::new();
        for (class, state) in self.states.iter_mut().enumerate() {
            if let State::Active(a) = *state {
                a.end(class, t, &mut out);
            }
            *state = State::Idle;
        }
        out
    }
}

impl Active {
    /// The episode of `class` ends at `at`: its apex (if not sent yet),
    /// then its offset.
    fn end(&self, class: usize, at: f64, out: &mut Vec<EpisodeEvent>) {
        if !self.apex_sent {
            out.push(EpisodeEvent::Apex {
                class,
                intensity: self.peak,
                at: self.peak_at,
            });
        }
        out.push(EpisodeEvent::Offset {
            class,
            duration: at - self.onset,
            peak: self.peak,
            at,
        });
    }
}

fn rising_or_onset(
    class: usize,
    since: f64,
    t: f64,
    v: f32,
    dwell: f64,
    starts: &mut Vec<EpisodeEvent>,
) -> State {
    if t - since >= dwell {
        starts.push(EpisodeEvent::Onset {
            class,
            intensity: v,
            at: since,
        });
        State::Active(Active {
            onset: since,
            peak: v,
            peak_at: t,
            apex_sent: false,
            below_since: None,
        })
    } else {
        State::Rising { since }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DT: f64 = 1.0 / 15.0;

    /// Feeds one class's stream at 15 frames a second; returns
    /// `(frame index, event)` pairs.
    fn run(stream: &[f32], cfg: &EpisodeConfig) -> Vec<(usize, EpisodeEvent)> {
        let mut e = Episodes::new(1);
        let mut out = Vec::new();
        for (i, &v) in stream.iter().enumerate() {
            for ev in e.update(i as f64 * DT, &[v], cfg) {
                out.push((i, ev));
            }
        }
        out
    }

    /// A smile: 10 frames at rest, a ramp up to 0.9 over 6 frames, a hold,
    /// a ramp down, rest.
    fn smile() -> Vec<f32> {
        let mut s = vec![0.1; 10];
        s.extend((1..=6).map(|k| 0.12 + 0.8 * k as f32 / 6.0));
        s.extend([0.9; 10]);
        s.extend([0.88, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1]);
        s.extend([0.1; 10]);
        s
    }

    #[test]
    fn onset_apex_offset_at_the_right_frames() {
        let cfg = EpisodeConfig::default();
        let ev = run(&smile(), &cfg);
        let frames: Vec<usize> = ev.iter().map(|(i, _)| *i).collect();
        // Crosses 0.5 at frame 12 (0.52); dwell 0.2 s = 3 frames.
        let EpisodeEvent::Onset { at, .. } = ev[0].1 else {
            panic!("{ev:?}")
        };
        assert_eq!(frames[0], 15, "onset lag: {} frames", frames[0] - 12);
        assert!((at - 12.0 * DT).abs() < 1e-9);
        // Peak 0.92 at frame 15; the apex is sent when 0.8 (0.12 below)
        // arrives at frame 27 (the 0.9s and 0.88 are within 0.05).
        assert!(matches!(ev[1].1, EpisodeEvent::Apex { intensity, at, .. }
            if (intensity - 0.92).abs() < 1e-6 && (at - 15.0 * DT).abs() < 1e-9));
        assert_eq!(frames[1], 27);
        // Below 0.35 first at frame 30 (0.3); offset after the dwell.
        let EpisodeEvent::Offset {
            duration, peak, at, ..
        } = ev[2].1
        else {
            panic!("{ev:?}")
        };
        assert_eq!(frames[2], 33);
        assert!((at - 30.0 * DT).abs() < 1e-9);
        assert!((duration - 18.0 * DT).abs() < 1e-9);
        assert!((peak - 0.92).abs() < 1e-6);
        assert_eq!(ev.len(), 3);
    }

    #[test]
    fn a_noisy_plateau_does_not_chatter() {
        let cfg = EpisodeConfig::default();
        // Around the on-threshold for a long time: 0.45..0.55 alternating.
        let noisy: Vec<f32> = (0..200)
            .map(|i| if i % 2 == 0 { 0.55 } else { 0.45 })
            .collect();
        assert!(run(&noisy, &cfg).is_empty(), "never 3 frames above 0.5");
        // An active expression whose intensity wobbles between 0.3 and 0.6
        // for single frames: one episode, no offset until it really ends.
        let mut s = vec![0.8; 10];
        s.extend((0..100).map(|i| if i % 3 == 0 { 0.3 } else { 0.6 }));
        s.extend([0.1; 10]);
        let ev = run(&s, &cfg);
        let onsets = ev
            .iter()
            .filter(|(_, e)| matches!(e, EpisodeEvent::Onset { .. }));
        let offsets = ev
            .iter()
            .filter(|(_, e)| matches!(e, EpisodeEvent::Offset { .. }));
        assert_eq!((onsets.count(), offsets.count()), (1, 1), "{ev:?}");
    }

    #[test]
    fn losing_the_face_closes_open_episodes() {
        let cfg = EpisodeConfig::default();
        let mut e = Episodes::new(2);
        for i in 0..10 {
            e.update(f64::from(i) * DT, &[0.9, 0.1], &cfg);
        }
        assert!(e.active(0) && !e.active(1));
        let closed = e.close_all(1.0);
        assert!(matches!(closed[0], EpisodeEvent::Apex { class: 0, .. }));
        assert!(matches!(closed[1], EpisodeEvent::Offset { class: 0, .. }));
        assert!(!e.active(0));
        // A different class count resets.
        assert!(e.update(2.0, &[0.9; 3], &cfg).is_empty());
    }
}

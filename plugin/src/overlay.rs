//! An egui debug overlay (Cargo feature `egui`): the camera image with each
//! face's box, id and emotion, per-face probability bars (raw and
//! calibrated), a timeline of every face's expression with onset, apex and
//! offset markers, the inference rate and latency, and the capture status
//! with its consent indicator. [`EmotionOverlayPlugin`] shows it in a window
//! of its own; the pieces ([`FramePreview`], [`EmotionTimeline`] and
//! [`timeline`], [`face_probabilities`], [`probability_bars`],
//! [`perf_line`], [`capture_line`], [`emotion_colour`], [`status_line`]) are
//! public for apps that lay out their own panel, as the demo does.

use std::collections::BTreeMap;

use bevy::prelude::*;
use bevy_egui::{EguiContexts, EguiPrimaryContextPass, egui};
use perception::Emotion;

use crate::capture::{CameraStatus, CaptureIndicator, EmotionStats, LatestFrame};
use crate::faces::{
    EmotionDetected, ExpressionApex, ExpressionOffset, ExpressionOnset, FaceBox, RawEmotion,
    SmoothedEmotion, TrackedFace,
};
use crate::model::ModelStatus;
use crate::settings::EmotionSystems;

/// A colour per emotion, shared by boxes, bars and timelines.
pub fn emotion_colour(e: Emotion) -> egui::Color32 {
    match e {
        Emotion::Angry => egui::Color32::from_rgb(230, 60, 60),
        Emotion::Disgust => egui::Color32::from_rgb(120, 170, 40),
        Emotion::Fear => egui::Color32::from_rgb(160, 80, 210),
        Emotion::Happy => egui::Color32::from_rgb(250, 200, 30),
        Emotion::Sad => egui::Color32::from_rgb(60, 120, 230),
        Emotion::Surprise => egui::Color32::from_rgb(250, 130, 30),
        Emotion::Contempt => egui::Color32::from_rgb(150, 110, 80),
        Emotion::Neutral | Emotion::Other => egui::Color32::from_rgb(190, 190, 190),
    }
}

/// One line saying what the capture stage is doing.
pub fn status_line(status: &CameraStatus) -> String {
    match status {
        CameraStatus::Off => "Capture: off".to_string(),
        CameraStatus::Starting(s) => format!("Capture: starting {s}"),
        CameraStatus::Running(s) => format!("Capture: {s}"),
        CameraStatus::Stalled(s) => format!("Capture stalled: {s}"),
        CameraStatus::Unavailable { reason, retry_in } => {
            format!("Capture unavailable: {reason} (retry in {retry_in:.0} s)")
        }
    }
}

/// One bar per class: `probs[i]` for `classes[i]`, in the emotion's colour.
pub fn probability_bars(ui: &mut egui::Ui, classes: &[Emotion], probs: &[f32], width: f32) {
    for (e, p) in classes.iter().zip(probs) {
        ui.horizontal(|ui| {
            ui.add_sized([60.0, 14.0], egui::Label::new(e.name()));
            ui.add(
                egui::ProgressBar::new(*p)
                    .desired_width(width)
                    .fill(emotion_colour(*e))
                    .text(format!("{:.0}%", p * 100.0)),
            );
        });
    }
}

/// A face's raw probabilities beside the calibrated ones (when the face has
/// a neutral baseline, else the raw ones only).
pub fn face_probabilities(ui: &mut egui::Ui, classes: &[Emotion], raw: &RawEmotion, width: f32) {
    if raw.calibrated.is_empty() || raw.calibrated == raw.probs {
        probability_bars(ui, classes, &raw.probs, width);
        return;
    }
    ui.columns(2, |cols| {
        cols[0].label("raw");
        probability_bars(&mut cols[0], classes, &raw.probs, width / 2.0);
        cols[1].label("calibrated");
        probability_bars(&mut cols[1], classes, &raw.calibrated, width / 2.0);
    });
}

/// Inference rate and capture-to-message latency, one line.
pub fn perf_line(timeline: &EmotionTimeline, stats: &EmotionStats) -> String {
    format!(
        "Inference {:.1} frames/s, latency {:.0} ms (capture to message), {} failures",
        timeline.rate,
        stats.last_latency.as_secs_f64() * 1e3,
        stats.failures
    )
}

/// Whether a source is open (the player is being watched), in red when so.
pub fn capture_line(ui: &mut egui::Ui, indicator: &CaptureIndicator) {
    if indicator.live {
        ui.colored_label(
            egui::Color32::from_rgb(230, 60, 60),
            format!("[REC] capturing: {}", indicator.source),
        );
    } else {
        ui.label("not capturing");
    }
}

/// What happened to one face's expression, for [`timeline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkKind {
    /// An expression started.
    Onset,
    /// It peaked.
    Apex,
    /// It ended.
    Offset,
}

/// The last [`EmotionTimeline::window`] seconds of every face: its smoothed
/// emotion at each result and its expression events. Filled by
/// [`EmotionOverlayPlugin`] (or [`EmotionTimelinePlugin`] alone).
#[derive(Resource, Debug, Clone)]
pub struct EmotionTimeline {
    /// Seconds kept and shown.
    pub window: f64,
    /// `(time, emotion, confidence)` per face id, oldest first.
    pub rows: BTreeMap<u64, Vec<(f64, Emotion, f32)>>,
    /// `(time, face id, kind, emotion)`, oldest first.
    pub marks: Vec<(f64, u64, MarkKind, Emotion)>,
    /// Results per second (smoothed).
    pub rate: f32,
    /// The clock (`Time<Real>`, seconds) at the last update.
    pub now: f64,
    last_frame: Option<(f64, u64)>,
}

impl Default for EmotionTimeline {
    fn default() -> Self {
        Self {
            window: 30.0,
            rows: BTreeMap::new(),
            marks: Vec::new(),
            rate: 0.0,
            now: 0.0,
            last_frame: None,
        }
    }
}

impl EmotionTimeline {
    /// Adds one result.
    pub fn sample(&mut self, t: f64, id: u64, e: Emotion, confidence: f32, frame: u64) {
        self.rows.entry(id).or_default().push((t, e, confidence));
        match self.last_frame {
            Some((t0, f0)) if frame > f0 && t > t0 => {
                let r = 1.0 / (t - t0) as f32;
                self.rate = if self.rate == 0.0 {
                    r
                } else {
                    self.rate * 0.9 + r * 0.1
                };
                self.last_frame = Some((t, frame));
            }
            Some(_) => {}
            None => self.last_frame = Some((t, frame)),
        }
    }

    /// Drops what is older than the window at `now`.
    pub fn prune(&mut self, now: f64) {
        self.now = now;
        let since = now - self.window;
        for row in self.rows.values_mut() {
            row.retain(|(t, ..)| *t >= since);
        }
        self.rows.retain(|_, row| !row.is_empty());
        self.marks.retain(|(t, ..)| *t >= since);
    }
}

/// Records [`EmotionTimeline`] (part of [`EmotionOverlayPlugin`]).
pub struct EmotionTimelinePlugin;

impl Plugin for EmotionTimelinePlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<EmotionTimeline>()
            .add_systems(Update, record_timeline.after(EmotionSystems::Publish));
    }
}

fn record_timeline(
    time: Res<Time<Real>>,
    mut detected: MessageReader<EmotionDetected>,
    mut onsets: MessageReader<ExpressionOnset>,
    mut apexes: MessageReader<ExpressionApex>,
    mut offsets: MessageReader<ExpressionOffset>,
    mut timeline: ResMut<EmotionTimeline>,
) {
    for d in detected.read() {
        timeline.sample(d.timestamp, d.id, d.emotion, d.confidence, d.frame);
    }
    for o in onsets.read() {
        timeline
            .marks
            .push((o.at, o.id, MarkKind::Onset, o.emotion));
    }
    for a in apexes.read() {
        timeline.marks.push((a.at, a.id, MarkKind::Apex, a.emotion));
    }
    for o in offsets.read() {
        timeline
            .marks
            .push((o.at, o.id, MarkKind::Offset, o.emotion));
    }
    timeline.prune(time.elapsed_secs_f64());
}

/// The timeline: a time axis (seconds before now), one row per face (the
/// `MAX_ROWS` most recently seen) with its emotion as coloured segments, and
/// markers: a triangle pointing up at an onset, a dot at the apex, a
/// triangle pointing down at the offset.
pub fn timeline(ui: &mut egui::Ui, data: &EmotionTimeline, width: f32) {
    const MAX_ROWS: usize = 5;
    let row_h = 16.0;
    let mut recent: Vec<(&u64, &Vec<(f64, Emotion, f32)>)> = data.rows.iter().collect();
    recent.sort_by(|a, b| {
        let last = |r: &Vec<(f64, Emotion, f32)>| r.last().map_or(f64::MIN, |s| s.0);
        last(b.1).total_cmp(&last(a.1))
    });
    recent.truncate(MAX_ROWS);
    recent.sort_by_key(|(id, _)| **id);
    let rows = recent.len().max(1);
    let label_w = 34.0;
    let (rect, _) = ui.allocate_exact_size(
        egui::vec2(width, rows as f32 * (row_h + 4.0) + 18.0),
        egui::Sense::hover(),
    );
    let painter = ui.painter_at(rect);
    let plot = egui::Rect::from_min_max(
        rect.min + egui::vec2(label_w, 0.0),
        egui::pos2(rect.max.x, rect.max.y - 16.0),
    );
    let x_of = |t: f64| {
        let f = ((t - (data.now - data.window)) / data.window).clamp(0.0, 1.0) as f32;
        plot.left() + f * plot.width()
    };
    let text = ui.visuals().text_color();
    // Axis: a tick every 5 s.
    let mut s = 0.0;
    while s <= data.window {
        let x = x_of(data.now - s);
        painter.line_segment(
            [
                egui::pos2(x, plot.bottom()),
                egui::pos2(x, plot.bottom() + 4.0),
            ],
            egui::Stroke::new(1.0, text),
        );
        painter.text(
            egui::pos2(x, plot.bottom() + 4.0),
            egui::Align2::CENTER_TOP,
            if s == 0.0 {
                "now".to_string()
            } else {
                format!("-{s:.0}s")
            },
            egui::FontId::proportional(10.0),
            text,
        );
        s += 5.0;
    }
    if data.rows.is_empty() {
        painter.text(
            plot.center(),
            egui::Align2::CENTER_CENTER,
            "no faces yet",
            egui::FontId::proportional(12.0),
            text,
        );
    }
    for (i, (id, row)) in recent.into_iter().enumerate() {
        let top = plot.top() + i as f32 * (row_h + 4.0);
        painter.text(
            egui::pos2(rect.left(), top + row_h / 2.0),
            egui::Align2::LEFT_CENTER,
            format!("#{id}"),
            egui::FontId::proportional(11.0),
            text,
        );
        for (k, &(t, e, _)) in row.iter().enumerate() {
            // Each sample lasts until the next one (at most a second).
            let end = row.get(k + 1).map_or(t + 0.1, |n| n.0.min(t + 1.0));
            painter.rect_filled(
                egui::Rect::from_min_max(
                    egui::pos2(x_of(t), top),
                    egui::pos2(x_of(end).max(x_of(t) + 1.0), top + row_h),
                ),
                0.0,
                emotion_colour(e),
            );
        }
        for &(t, _, kind, _) in data.marks.iter().filter(|m| m.1 == *id) {
            let (x, y, r) = (x_of(t), top + row_h / 2.0, 5.0);
            let ink = egui::Stroke::new(1.0, egui::Color32::WHITE);
            let triangle = |dir: f32| {
                egui::Shape::convex_polygon(
                    vec![
                        egui::pos2(x, y - dir * r),
                        egui::pos2(x + r, y + dir * r),
                        egui::pos2(x - r, y + dir * r),
                    ],
                    egui::Color32::BLACK,
                    ink,
                )
            };
            match kind {
                MarkKind::Onset => painter.add(triangle(1.0)),
                MarkKind::Offset => painter.add(triangle(-1.0)),
                MarkKind::Apex => painter.add(egui::Shape::circle_filled(
                    egui::pos2(x, y),
                    r * 0.8,
                    egui::Color32::BLACK,
                )),
            };
        }
    }
}

/// The newest frame as an egui texture, uploaded again only when a new
/// frame arrived.
#[derive(Resource, Default)]
pub struct FramePreview {
    texture: Option<egui::TextureHandle>,
    seq: u64,
    size: [usize; 2],
}

impl FramePreview {
    /// Draws the newest frame, scaled to fit `max` (points), with each face's
    /// box and `#id emotion confidence` label. Shows a placeholder line until
    /// a frame arrives.
    pub fn show<'a>(
        &mut self,
        ui: &mut egui::Ui,
        latest: Option<&LatestFrame>,
        faces: impl IntoIterator<Item = (&'a TrackedFace, &'a FaceBox, &'a SmoothedEmotion)>,
        max: egui::Vec2,
    ) {
        let Some(l) = latest else {
            ui.label("waiting for frames...");
            return;
        };
        if l.seq != self.seq || self.texture.is_none() {
            let size = [l.frame.width(), l.frame.height()];
            let img = egui::ColorImage::from_rgb(size, &l.frame.to_rgb8());
            match &mut self.texture {
                Some(t) => t.set(img, egui::TextureOptions::LINEAR),
                None => {
                    self.texture = Some(ui.ctx().load_texture(
                        "emotion-frame",
                        img,
                        egui::TextureOptions::LINEAR,
                    ));
                }
            }
            self.seq = l.seq;
            self.size = size;
        }
        let Some(t) = &self.texture else {
            return;
        };
        let (fw, fh) = (self.size[0].max(1) as f32, self.size[1].max(1) as f32);
        let scale = (max.x / fw).min(max.y / fh);
        let resp = ui.add(egui::Image::new((
            t.id(),
            egui::vec2(fw * scale, fh * scale),
        )));
        let o = resp.rect.min;
        for (face, bx, s) in faces {
            let r = egui::Rect::from_min_max(
                o + egui::vec2(bx.rect.min.x, bx.rect.min.y) * scale,
                o + egui::vec2(bx.rect.max.x, bx.rect.max.y) * scale,
            );
            let colour = emotion_colour(s.emotion);
            ui.painter().rect_stroke(
                r,
                0.0,
                egui::Stroke::new(2.0, colour),
                egui::StrokeKind::Outside,
            );
            ui.painter().text(
                r.left_top() - egui::vec2(0.0, 2.0),
                egui::Align2::LEFT_BOTTOM,
                format!("#{} {} {:.0}%", face.id, s.emotion, s.confidence * 100.0),
                egui::FontId::proportional(13.0),
                colour,
            );
        }
    }
}

/// Shows the overlay in an egui window: status, frame with boxes, and the
/// smoothed probabilities of every face. Needs `bevy_egui::EguiPlugin`.
pub struct EmotionOverlayPlugin;

impl Plugin for EmotionOverlayPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<FramePreview>()
            .add_plugins(EmotionTimelinePlugin)
            .add_systems(EguiPrimaryContextPass, overlay_window);
    }
}

fn overlay_window(
    mut contexts: EguiContexts,
    latest: Option<Res<LatestFrame>>,
    faces: Query<(&TrackedFace, &FaceBox, &SmoothedEmotion)>,
    raw: Query<(&TrackedFace, &RawEmotion)>,
    (status, indicator, stats): (Res<CameraStatus>, Res<CaptureIndicator>, Res<EmotionStats>),
    model: Res<ModelStatus>,
    data: Res<EmotionTimeline>,
    mut preview: ResMut<FramePreview>,
) -> Result {
    let ctx = contexts.ctx_mut()?;
    egui::Window::new("bevy_emotion")
        .default_size([660.0, 600.0])
        .show(ctx, |ui| {
            ui.label(status_line(&status));
            capture_line(ui, &indicator);
            ui.label(perf_line(&data, &stats));
            if let ModelStatus::Failed(e) = &*model {
                ui.colored_label(egui::Color32::LIGHT_RED, format!("Model: {e}"));
            }
            preview.show(
                ui,
                latest.as_deref(),
                faces.iter(),
                egui::vec2(640.0, 480.0),
            );
            timeline(ui, &data, 640.0);
            for (face, r) in &raw {
                ui.separator();
                ui.label(format!("face #{}", face.id));
                face_probabilities(ui, &Emotion::FER2013, r, 400.0);
            }
        });
    Ok(())
}

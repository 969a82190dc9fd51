//! An egui debug overlay (Cargo feature `egui`): the camera image with each
//! face's box, id and emotion, per-face probability bars and the camera
//! status. [`EmotionOverlayPlugin`] shows it in a window of its own; the
//! pieces ([`FramePreview`], [`probability_bars`], [`emotion_colour`],
//! [`status_line`]) are public for apps that lay out their own panel, as the
//! demo does.

use bevy::prelude::*;
use bevy_egui::{EguiContexts, EguiPrimaryContextPass, egui};
use perception::Emotion;

use crate::capture::{CameraStatus, LatestFrame};
use crate::faces::{FaceBox, SmoothedEmotion, TrackedFace};
use crate::model::ModelStatus;

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
            .add_systems(EguiPrimaryContextPass, overlay_window);
    }
}

fn overlay_window(
    mut contexts: EguiContexts,
    latest: Option<Res<LatestFrame>>,
    faces: Query<(&TrackedFace, &FaceBox, &SmoothedEmotion)>,
    status: Res<CameraStatus>,
    model: Res<ModelStatus>,
    mut preview: ResMut<FramePreview>,
) -> Result {
    let ctx = contexts.ctx_mut()?;
    egui::Window::new("bevy_emotion")
        .default_size([660.0, 600.0])
        .show(ctx, |ui| {
            ui.label(status_line(&status));
            if let ModelStatus::Failed(e) = &*model {
                ui.colored_label(egui::Color32::LIGHT_RED, format!("Model: {e}"));
            }
            preview.show(
                ui,
                latest.as_deref(),
                faces.iter(),
                egui::vec2(640.0, 480.0),
            );
            for (face, _, s) in &faces {
                ui.separator();
                ui.label(format!("face #{}: {}", face.id, s.emotion));
                probability_bars(ui, &Emotion::FER2013, &s.probs, 200.0);
            }
        });
    Ok(())
}

//! The demo's screens: the consent window while [`Consent::Asking`], the
//! perception panel (camera image with boxes from `bevy_emotion`'s overlay,
//! the main face's probabilities, the timeline) and the dialogue bar.

use bevy::prelude::*;
use bevy_egui::{EguiContexts, EguiPrimaryContextPass, egui};
use bevy_emotion::overlay::{FramePreview, emotion_colour, probability_bars, status_line};
use bevy_emotion::prelude::*;

use crate::dialogue::{self, Talk};
use crate::{Args, Calibration, Consent, Notice, Player, Run};

/// Consent window, side panel and dialogue bar.
pub struct UiPlugin;

impl Plugin for UiPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<FramePreview>().add_systems(
            EguiPrimaryContextPass,
            (consent_window.run_if(in_state(Consent::Asking)), panels).chain(),
        );
    }
}

/// Asks before the camera is used; either answer moves the flow on.
fn consent_window(
    mut contexts: EguiContexts,
    mut next: ResMut<NextState<Consent>>,
    mut notice: ResMut<Notice>,
) -> Result {
    let ctx = contexts.ctx_mut()?;
    egui::Window::new("Camera")
        .collapsible(false)
        .resizable(false)
        .anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0])
        .show(ctx, |ui| {
            ui.label(
                "Ada can read your facial expression from your webcam.\n\
                 Frames stay in this computer's memory: nothing is recorded or sent.\n\
                 You can switch the camera off at any time.",
            );
            ui.horizontal(|ui| {
                if ui.button("Allow camera").clicked() {
                    next.set(Consent::Camera);
                }
                if ui.button("No camera: use a sample photo").clicked() {
                    notice.0 = Some("showing a sample photo (no camera)".into());
                    next.set(Consent::Replay);
                }
            });
        });
    Ok(())
}

fn panels(
    mut contexts: EguiContexts,
    mut commands: Commands,
    mut settings: ResMut<EmotionSettings>,
    (mut consent, indicator): (ResMut<EmotionConsent>, Res<CaptureIndicator>),
    (calibration, mut next_calibration, mut next_consent): (
        Res<State<Calibration>>,
        ResMut<NextState<Calibration>>,
        ResMut<NextState<Consent>>,
    ),
    states: Query<&ExpressionState>,
    notice: Res<Notice>,
    status: Res<CameraStatus>,
    model: Res<ModelStatus>,
    latest: Option<Res<LatestFrame>>,
    faces: Query<(&TrackedFace, &FaceBox, &SmoothedEmotion)>,
    player: Res<Player>,
    mut talk: ResMut<Talk>,
    mut preview: ResMut<FramePreview>,
    run: Res<Run>,
    args: Res<Args>,
) -> Result {
    let ctx = contexts.ctx_mut()?;
    let mut root = egui::Ui::new(
        ctx.clone(),
        "root".into(),
        egui::UiBuilder::new()
            .layer_id(egui::LayerId::background())
            .max_rect(ctx.viewport_rect()),
    );
    egui::Panel::left("perception")
        .default_size(340.0)
        .show(&mut root, |ui| {
            ui.heading("What Ada sees");
            let mut on = settings.enabled;
            if ui
                .checkbox(&mut on, "Perception on (camera or photos)")
                .changed()
            {
                settings.enabled = on && !args.no_perception;
            }
            ui.label(status_line(&status));
            if indicator.live {
                ui.horizontal(|ui| {
                    ui.colored_label(egui::Color32::RED, "● capturing");
                    if *consent == EmotionConsent::Granted && ui.button("Stop and forget").clicked()
                    {
                        // Revoking consent stops capture and drops every frame and face.
                        *consent = EmotionConsent::Denied;
                        next_consent.set(Consent::Asking);
                    }
                });
            }
            match calibration.get() {
                Calibration::Waiting => {
                    ui.label("Calibration: waiting for your face");
                }
                Calibration::Running => {
                    ui.horizontal(|ui| {
                        ui.label("Calibration: relax your face...");
                        if ui.button("Skip").clicked() {
                            if let Some(face) = player.main_face {
                                commands.entity(face).remove::<Calibrating>();
                            }
                            next_calibration.set(Calibration::Done);
                        }
                    });
                }
                Calibration::Done | Calibration::Off => {}
            }
            if let Some(ExpressionState::Unsure { reason }) =
                player.main_face.and_then(|f| states.get(f).ok())
            {
                ui.colored_label(egui::Color32::LIGHT_YELLOW, format!("Unsure: {reason}"));
            }
            if let Some(msg) = &notice.0 {
                ui.colored_label(egui::Color32::LIGHT_YELLOW, msg);
            }
            if let ModelStatus::Failed(e) = &*model {
                ui.colored_label(egui::Color32::LIGHT_RED, format!("Model: {e}"));
            }
            if latest.is_some() {
                preview.show(
                    ui,
                    latest.as_deref(),
                    faces.iter(),
                    egui::vec2(320.0, 240.0),
                );
            }
            ui.separator();
            ui.label("Main face, smoothed probabilities:");
            let probs = player
                .main_face
                .and_then(|f| faces.get(f).ok())
                .map(|(_, _, s)| s.probs.clone())
                .unwrap_or_default();
            probability_bars(ui, &Emotion::FER2013, &probs, 200.0);
            ui.label("Timeline (oldest left):");
            let (rect, _) = ui.allocate_exact_size(egui::vec2(300.0, 14.0), egui::Sense::hover());
            let n = player.timeline.len().max(1) as f32;
            for (i, e) in player.timeline.iter().enumerate() {
                let x0 = rect.left() + rect.width() * i as f32 / n;
                let x1 = rect.left() + rect.width() * (i + 1) as f32 / n;
                ui.painter().rect_filled(
                    egui::Rect::from_min_max(
                        egui::pos2(x0, rect.top()),
                        egui::pos2(x1, rect.bottom()),
                    ),
                    0.0,
                    emotion_colour(*e),
                );
            }
            ui.separator();
            match player.manual {
                Some(e) => ui.label(format!("Manual mode: you are {e} (0 = back to camera)")),
                None => ui.label("Keys 1-7 set your emotion by hand."),
            };
            ui.label(format!("{:.0} FPS", run.fps));
        });
    egui::Panel::bottom("dialogue")
        .min_size(120.0)
        .show(&mut root, |ui| {
            let line = dialogue::line(talk.0.node);
            ui.add_space(6.0);
            ui.label(egui::RichText::new(format!("Ada: {}", line.text)).size(20.0));
            ui.horizontal(|ui| {
                for (i, (reply, _)) in line.replies.iter().enumerate() {
                    if ui.button(*reply).clicked() {
                        talk.0.reply(i);
                    }
                }
            });
            if let Some(e) = player.emotion() {
                ui.label(format!("Ada sees: {e}"));
            }
        });
    Ok(())
}

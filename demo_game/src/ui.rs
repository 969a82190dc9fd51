//! The demo's screens: the consent window while [`Consent::Asking`], the
//! perception panel (camera image with boxes from `bevy_emotion`'s overlay,
//! the main face's probabilities, the timeline) and the dialogue bar.

use bevy::prelude::*;
use bevy_egui::{EguiContexts, EguiPrimaryContextPass, egui};
use bevy_emotion::overlay::{
    EmotionTimeline, EmotionTimelinePlugin, FramePreview, capture_line, face_probabilities,
    perf_line, status_line, timeline,
};
use bevy_emotion::prelude::*;

use crate::dialogue::Talk;
use crate::{Args, Calibration, Consent, Notice, Player, Run};

/// Consent window, side panel and dialogue bar.
pub struct UiPlugin;

impl Plugin for UiPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<FramePreview>()
            .add_plugins(EmotionTimelinePlugin)
            .add_systems(
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
    (notice, status, model): (Res<Notice>, Res<CameraStatus>, Res<ModelStatus>),
    latest: Option<Res<LatestFrame>>,
    faces: Query<(&TrackedFace, &FaceBox, &SmoothedEmotion)>,
    raw: Query<&RawEmotion>,
    (data, stats): (Res<EmotionTimeline>, Res<EmotionStats>),
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
            ui.horizontal(|ui| {
                capture_line(ui, &indicator);
                if indicator.live
                    && *consent == EmotionConsent::Granted
                    && ui.button("Stop and forget").clicked()
                {
                    // Revoking consent stops capture and drops every frame and face.
                    *consent = EmotionConsent::Denied;
                    next_consent.set(Consent::Asking);
                }
            });
            ui.label(perf_line(&data, &stats));
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
            ui.label("Main face: probabilities");
            if let Some(r) = player.main_face.and_then(|f| raw.get(f).ok()) {
                face_probabilities(ui, &Emotion::FER2013, r, 260.0);
            }
            ui.label("Timeline, one row per face (triangle up: onset, dot: apex, down: offset):");
            timeline(ui, &data, 320.0);
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
            ui.add_space(6.0);
            ui.label(egui::RichText::new(format!("Ada: {}", talk.dialogue.text())).size(20.0));
            let mut picked = None;
            ui.horizontal(|ui| {
                for (i, (reply, _)) in talk.dialogue.current().replies.iter().enumerate() {
                    if ui.button(reply).clicked() {
                        picked = Some(i);
                    }
                }
            });
            if let Some(i) = picked {
                talk.dialogue.reply(i);
            }
            if let Some(e) = &talk.error {
                ui.colored_label(egui::Color32::LIGHT_RED, format!("Dialogue file: {e}"));
            }
            if let Some(e) = player.emotion() {
                ui.label(format!("Ada sees: {e}"));
            }
        });
    Ok(())
}

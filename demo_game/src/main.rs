//! The demo game: Ada, an animated conversational agent that reacts to the
//! player's facial expression, built on `bevy_emotion`.
//!
//! ```text
//! cargo run -p demo_game                          # webcam after you agree; sample photo without one
//! cargo run -p demo_game -- --images DIR          # replay a folder of face photos
//! cargo run -p demo_game -- --screenshot shot.png --frames 300
//! ```
//!
//! Keys 1-7 set your emotion by hand (angry, disgust, fear, happy, sad,
//! surprise, neutral); 0 gives control back to the camera.

mod agent;
mod dialogue;

use std::path::PathBuf;

use bevy::asset::AssetPlugin;
use bevy::prelude::*;
use bevy::render::view::screenshot::{Screenshot, save_to_disk};
use bevy_egui::{EguiContexts, EguiPlugin, EguiPrimaryContextPass, egui};
use bevy_emotion::prelude::*;
use bevy_emotion::{EmotionStats, LatestFrame};
use clap::Parser;

use agent::AgentState;
use dialogue::Dialogue;

/// Ada, an animated agent that talks with you and reacts to your facial
/// expression (webcam, a folder of photos, or keys 1-7).
#[derive(Debug, Clone, Parser, Resource)]
#[command(version, about)]
struct Args {
    /// Replay the face photos of this folder instead of the webcam (no
    /// consent screen: nothing is captured).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Photos per second with --images.
    #[arg(long, default_value_t = 0.5)]
    fps: f32,
    /// Skip the consent screen and use the webcam at once.
    #[arg(long)]
    consent: bool,
    /// Save a screenshot to this PNG after --frames frames, then exit.
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// Frames to render before the screenshot.
    #[arg(long, default_value_t = 300)]
    frames: u32,
    /// Do not run perception at all (to measure the plugin's cost).
    #[arg(long)]
    no_perception: bool,
}

/// Where the demo is in its flow.
#[derive(Resource, Debug, Clone, PartialEq)]
enum Consent {
    /// The first screen asks.
    Asking,
    /// The player allowed the camera.
    Camera,
    /// Replaying photos (no camera).
    Replay(String),
}

/// The player's emotion as the demo uses it.
#[derive(Resource, Debug, Clone, Default)]
struct Player {
    /// Set by keys 1-7 (overrides perception).
    manual: Option<Emotion>,
    /// The newest perceived (smoothed) emotion and its confidence.
    perceived: Option<(Emotion, f32)>,
    /// Smoothed emotion over time, newest last (for the timeline).
    timeline: Vec<Emotion>,
    /// Smoothed probabilities of the main face.
    probs: Vec<f32>,
    /// `EmotionChanged` messages read.
    changes_seen: u32,
}

impl Player {
    fn emotion(&self) -> Option<Emotion> {
        self.manual.or(self.perceived.map(|(e, _)| e))
    }
}

#[derive(Resource, Default)]
struct Run {
    frames: u32,
    fps: f32,
    frame_ms_sum: f64,
    frame_ms_n: u32,
    shot_at: Option<u32>,
}

#[derive(Resource, Default)]
struct Preview {
    texture: Option<egui::TextureHandle>,
    seq: u64,
    size: [usize; 2],
}

#[derive(Resource)]
struct Talk(Dialogue);

fn main() -> AppExit {
    let args = Args::parse();
    let sample = perception::assets_dir().join("images/astronaut.png");
    let (source, consent, enabled) = match (&args.images, args.consent) {
        (Some(dir), _) => (
            SourceKind::Folder {
                dir: dir.clone(),
                fps: args.fps,
            },
            Consent::Replay(format!("replaying photos from {}", dir.display())),
            true,
        ),
        (None, true) => (SourceKind::Webcam(default()), Consent::Camera, true),
        (None, false) => (SourceKind::Image(sample), Consent::Asking, false),
    };
    let mut app = App::new();
    app.add_plugins(
        DefaultPlugins
            .set(WindowPlugin {
                primary_window: Some(Window {
                    title: "bevy_emotion demo: talk with Ada".into(),
                    resolution: (1280u32, 720u32).into(),
                    ..default()
                }),
                ..default()
            })
            .set(AssetPlugin {
                file_path: perception::assets_dir().to_string_lossy().into_owned(),
                ..default()
            }),
    )
    .add_plugins(EguiPlugin::default())
    .add_plugins(EmotionPlugin {
        settings: EmotionSettings {
            enabled: enabled && !args.no_perception,
            source,
            ..default()
        },
        ..default()
    })
    .insert_resource(ClearColor(Color::srgb(0.12, 0.14, 0.18)))
    .insert_resource(consent)
    .insert_resource(args)
    .init_resource::<Player>()
    .init_resource::<AgentState>()
    .init_resource::<Run>()
    .init_resource::<Preview>()
    .insert_resource(Talk(Dialogue::default()))
    .add_systems(Startup, agent::spawn)
    .add_systems(
        Update,
        (
            (perceive, manual_keys, fall_back_without_camera, converse)
                .chain()
                .after(EmotionSystems::Publish),
            agent::animate,
            frame_counter,
        ),
    )
    .add_systems(EguiPrimaryContextPass, ui);
    app.run()
}

/// Reads the main face (largest box) and the emotion messages.
fn perceive(
    faces: Query<(&FaceBox, &SmoothedEmotion)>,
    latest: Option<Res<LatestFrame>>,
    mut changes: MessageReader<EmotionChanged>,
    mut player: ResMut<Player>,
    mut agent: ResMut<AgentState>,
) {
    player.changes_seen += changes.read().count() as u32;
    let main = faces.iter().max_by(|a, b| {
        a.0.rect
            .size()
            .length()
            .total_cmp(&b.0.rect.size().length())
    });
    match main {
        Some((bx, s)) => {
            player.perceived = Some((s.emotion, s.confidence));
            player.probs = s.probs.clone();
            if let Some(l) = latest {
                let (w, h) = (l.frame.width() as f32, l.frame.height() as f32);
                let c = bx.rect.center();
                // Mirror x: the player sees Ada the way a mirror would.
                agent.gaze = Vec2::new(-(c.x / w * 2.0 - 1.0), c.y / h * 2.0 - 1.0);
            }
        }
        None => {
            player.perceived = None;
            agent.gaze *= 0.95;
        }
    }
    if let Some(e) = player.emotion()
        && player.timeline.last() != Some(&e)
    {
        player.timeline.push(e);
        if player.timeline.len() > 40 {
            player.timeline.remove(0);
        }
    }
}

fn manual_keys(keys: Res<ButtonInput<KeyCode>>, mut player: ResMut<Player>) {
    const KEYS: [KeyCode; 7] = [
        KeyCode::Digit1,
        KeyCode::Digit2,
        KeyCode::Digit3,
        KeyCode::Digit4,
        KeyCode::Digit5,
        KeyCode::Digit6,
        KeyCode::Digit7,
    ];
    for (k, e) in KEYS.iter().zip(Emotion::FER2013) {
        if keys.just_pressed(*k) {
            player.manual = Some(e);
        }
    }
    if keys.just_pressed(KeyCode::Digit0) {
        player.manual = None;
    }
}

/// No camera: say so and replay the sample portrait instead.
fn fall_back_without_camera(
    status: Res<CameraStatus>,
    mut settings: ResMut<EmotionSettings>,
    mut consent: ResMut<Consent>,
) {
    if let (CameraStatus::Unavailable { reason, .. }, SourceKind::Webcam(_)) =
        (&*status, &settings.source)
    {
        let reason = reason.clone();
        settings.source = SourceKind::Image(perception::assets_dir().join("images/astronaut.png"));
        *consent = Consent::Replay(format!(
            "No camera ({reason}): showing a sample photo. Keys 1-7 set your emotion."
        ));
    }
}

fn converse(player: Res<Player>, mut talk: ResMut<Talk>, mut agent: ResMut<AgentState>) {
    if let Some(e) = player.emotion() {
        talk.0.perceive(e);
        agent.expression = dialogue::agent_expression(e);
    }
}

fn frame_counter(
    time: Res<Time<Real>>,
    mut run: ResMut<Run>,
    args: Res<Args>,
    player: Res<Player>,
    talk: Res<Talk>,
    stats: Res<EmotionStats>,
    mut commands: Commands,
    mut exit: MessageWriter<AppExit>,
) {
    run.frames += 1;
    let dt = time.delta_secs();
    if dt > 0.0 {
        run.fps = if run.fps == 0.0 {
            1.0 / dt
        } else {
            run.fps * 0.95 + 0.05 / dt
        };
        // Frame time after the first 60 frames (shader compilation).
        if run.frames > 60 {
            run.frame_ms_sum += f64::from(dt) * 1e3;
            run.frame_ms_n += 1;
        }
    }
    let Some(path) = &args.screenshot else {
        return;
    };
    if run.frames == args.frames {
        commands
            .spawn(Screenshot::primary_window())
            .observe(save_to_disk(path.clone()));
        run.shot_at = Some(run.frames);
    }
    if run.shot_at.is_some_and(|f| run.frames >= f + 30) || run.frames > args.frames + 600 {
        let mean = run.frame_ms_sum / f64::from(run.frame_ms_n.max(1));
        println!(
            "demo: frames {} mean_frame_ms {mean:.2} perception_frames {} emotion_changes_seen {} dialogue_steps {} reactions {} player {}",
            run.frames,
            stats.frames_processed,
            player.changes_seen,
            talk.0.steps,
            talk.0.reactions,
            player.emotion().map_or("none", Emotion::name),
        );
        exit.write(AppExit::Success);
    }
}

fn colour(e: Emotion) -> egui::Color32 {
    match e {
        Emotion::Angry => egui::Color32::from_rgb(230, 60, 60),
        Emotion::Disgust => egui::Color32::from_rgb(120, 170, 40),
        Emotion::Fear => egui::Color32::from_rgb(160, 80, 210),
        Emotion::Happy => egui::Color32::from_rgb(250, 200, 30),
        Emotion::Sad => egui::Color32::from_rgb(60, 120, 230),
        Emotion::Surprise => egui::Color32::from_rgb(250, 130, 30),
        _ => egui::Color32::from_rgb(190, 190, 190),
    }
}

#[allow(clippy::too_many_arguments)]
fn ui(
    mut contexts: EguiContexts,
    mut settings: ResMut<EmotionSettings>,
    mut consent: ResMut<Consent>,
    status: Res<CameraStatus>,
    model: Res<ModelStatus>,
    latest: Option<Res<LatestFrame>>,
    faces: Query<(&TrackedFace, &FaceBox, &SmoothedEmotion)>,
    mut player: ResMut<Player>,
    mut talk: ResMut<Talk>,
    mut preview: ResMut<Preview>,
    run: Res<Run>,
    args: Res<Args>,
) -> Result {
    let ctx = contexts.ctx_mut()?;
    if *consent == Consent::Asking {
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
                        settings.source = SourceKind::Webcam(default());
                        settings.enabled = !args.no_perception;
                        *consent = Consent::Camera;
                    }
                    if ui.button("No camera: use a sample photo").clicked() {
                        settings.enabled = !args.no_perception;
                        *consent = Consent::Replay("showing a sample photo (no camera)".into());
                    }
                });
            });
    }
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
            ui.label(match &*status {
                CameraStatus::Off => "Capture: off".to_string(),
                CameraStatus::Starting(s) => format!("Capture: starting {s}"),
                CameraStatus::Running(s) => format!("Capture: {s}"),
                CameraStatus::Unavailable { reason, retry_in } => {
                    format!("Capture unavailable: {reason} (retry in {retry_in:.0} s)")
                }
            });
            if let Consent::Replay(msg) = &*consent {
                ui.colored_label(egui::Color32::LIGHT_YELLOW, msg);
            }
            if let ModelStatus::Failed(e) = &*model {
                ui.colored_label(egui::Color32::LIGHT_RED, format!("Model: {e}"));
            }
            if let Some(l) = &latest {
                if l.seq != preview.seq {
                    let rgb = l.frame.to_rgb8();
                    let size = [l.frame.width(), l.frame.height()];
                    let img = egui::ColorImage::from_rgb(size, &rgb);
                    match &mut preview.texture {
                        Some(t) => t.set(img, egui::TextureOptions::LINEAR),
                        None => {
                            preview.texture = Some(ui.ctx().load_texture(
                                "camera",
                                img,
                                egui::TextureOptions::LINEAR,
                            ));
                        }
                    }
                    preview.seq = l.seq;
                    preview.size = size;
                }
                if let Some(t) = &preview.texture {
                    let w = ui.available_width().min(320.0);
                    let scale = w / preview.size[0].max(1) as f32;
                    let h = preview.size[1] as f32 * scale;
                    let resp = ui.add(egui::Image::new((t.id(), egui::vec2(w, h))));
                    let o = resp.rect.min;
                    for (face, bx, s) in &faces {
                        let r = egui::Rect::from_min_max(
                            o + egui::vec2(bx.rect.min.x * scale, bx.rect.min.y * scale),
                            o + egui::vec2(bx.rect.max.x * scale, bx.rect.max.y * scale),
                        );
                        ui.painter().rect_stroke(
                            r,
                            0.0,
                            egui::Stroke::new(2.0, colour(s.emotion)),
                            egui::StrokeKind::Outside,
                        );
                        ui.painter().text(
                            r.left_top() - egui::vec2(0.0, 2.0),
                            egui::Align2::LEFT_BOTTOM,
                            format!("#{} {}", face.id, s.emotion),
                            egui::FontId::proportional(12.0),
                            colour(s.emotion),
                        );
                    }
                }
            }
            ui.separator();
            ui.label("Main face, smoothed probabilities:");
            for (i, e) in Emotion::FER2013.iter().enumerate() {
                let p = player.probs.get(i).copied().unwrap_or(0.0);
                ui.horizontal(|ui| {
                    ui.add_sized([60.0, 14.0], egui::Label::new(e.name()));
                    ui.add(
                        egui::ProgressBar::new(p)
                            .desired_width(200.0)
                            .fill(colour(*e))
                            .text(format!("{:.0}%", p * 100.0)),
                    );
                });
            }
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
                    colour(*e),
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
    // Manual mode keys also work while egui has focus.
    if ctx.input(|i| i.key_pressed(egui::Key::Num0)) {
        player.manual = None;
    }
    Ok(())
}

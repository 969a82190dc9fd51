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
//!
//! Feature plugins: [`agent::AgentPlugin`] (Ada's face), [`dialogue::DialoguePlugin`]
//! (the conversation), [`ui::UiPlugin`] (consent screen and panels). This
//! file holds the flow ([`Consent`], a Bevy state) and turns the plugin's
//! messages about the main face into [`PlayerEmotionChanged`], which Ada and
//! the dialogue react to.

#![forbid(unsafe_code)]

mod agent;
mod dialogue;
mod ui;

use std::path::PathBuf;

use bevy::asset::AssetPlugin;
use bevy::prelude::*;
use bevy::render::view::screenshot::{Screenshot, save_to_disk};
use bevy_egui::EguiPlugin;
use bevy_emotion::prelude::*;
use clap::Parser;

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

/// Where the demo is in its flow: whether the player let Ada use the camera.
#[derive(States, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
enum Consent {
    /// The first screen asks.
    #[default]
    Asking,
    /// The player allowed the camera.
    Camera,
    /// Photos instead of the camera (`--images`, the player's choice, or no
    /// camera found); [`Notice`] says which.
    Replay,
}

/// A line for the player about where frames come from.
#[derive(Resource, Debug, Clone, Default)]
struct Notice(Option<String>);

/// The player's emotion changed: from the main face's messages or from the
/// keys. Ada and the dialogue react to it.
#[derive(Message, Debug, Clone, Copy, PartialEq)]
struct PlayerEmotionChanged(Emotion);

/// The player as the demo sees them.
#[derive(Resource, Debug, Clone, Default)]
struct Player {
    /// Set by keys 1-7 (overrides perception).
    manual: Option<Emotion>,
    /// The main face's smoothed emotion, as its messages last said.
    perceived: Option<Emotion>,
    /// The main face (the largest box).
    main_face: Option<Entity>,
    /// The face `perceived` belongs to.
    perceived_face: Option<Entity>,
    /// Where the main face is, as a fraction of the frame (0..1, 0..1).
    face_at: Option<Vec2>,
    /// The player's emotion over time, newest last (for the timeline).
    timeline: Vec<Emotion>,
    /// `EmotionChanged` messages read.
    changes_seen: u32,
}

impl Player {
    fn emotion(&self) -> Option<Emotion> {
        self.manual.or(self.perceived)
    }

    /// After a change of `manual` or `perceived`: a different emotion goes on
    /// the timeline and out as a [`PlayerEmotionChanged`].
    fn set(&mut self, before: Option<Emotion>, out: &mut MessageWriter<PlayerEmotionChanged>) {
        let now = self.emotion();
        if now != before
            && let Some(e) = now
        {
            self.timeline.push(e);
            if self.timeline.len() > 40 {
                self.timeline.remove(0);
            }
            out.write(PlayerEmotionChanged(e));
        }
    }
}

/// The demo's own order: read perception, then react.
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Perceive;

fn main() -> AppExit {
    let args = Args::parse();
    let sample = perception::assets_dir().join("images/astronaut.png");
    let (source, consent, notice, enabled) = match (&args.images, args.consent) {
        (Some(dir), _) => (
            SourceKind::Folder {
                dir: dir.clone(),
                fps: args.fps,
            },
            Consent::Replay,
            Some(format!("replaying photos from {}", dir.display())),
            true,
        ),
        (None, true) => (SourceKind::Webcam(default()), Consent::Camera, None, true),
        (None, false) => (SourceKind::Image(sample), Consent::Asking, None, false),
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
    .add_plugins((agent::AgentPlugin, dialogue::DialoguePlugin, ui::UiPlugin))
    .insert_state(consent)
    .insert_resource(Notice(notice))
    .insert_resource(ClearColor(Color::srgb(0.12, 0.14, 0.18)))
    .insert_resource(args)
    .init_resource::<Player>()
    .init_resource::<Run>()
    .add_message::<PlayerEmotionChanged>()
    .configure_sets(Update, Perceive.after(EmotionSystems::Publish))
    .add_systems(OnEnter(Consent::Camera), start_camera)
    .add_systems(OnEnter(Consent::Replay), start_replay)
    .add_systems(
        Update,
        (
            (follow_main_face, perceive, manual_keys)
                .chain()
                .in_set(Perceive),
            fall_back_without_camera.run_if(in_state(Consent::Camera)),
            frame_counter,
        ),
    );
    app.run()
}

fn start_camera(mut settings: ResMut<EmotionSettings>, args: Res<Args>) {
    if !matches!(settings.source, SourceKind::Webcam(_)) {
        settings.source = SourceKind::Webcam(default());
    }
    settings.enabled = !args.no_perception;
}

fn start_replay(mut settings: ResMut<EmotionSettings>, args: Res<Args>) {
    settings.enabled = !args.no_perception;
}

/// Which face is the player's (the largest) and where it is.
fn follow_main_face(
    faces: Query<(Entity, &FaceBox)>,
    latest: Option<Res<LatestFrame>>,
    mut player: ResMut<Player>,
) {
    let main = faces.iter().max_by(|a, b| {
        a.1.rect
            .size()
            .length()
            .total_cmp(&b.1.rect.size().length())
    });
    player.main_face = main.map(|(e, _)| e);
    player.face_at = match (main, latest) {
        (Some((_, bx)), Some(l)) => {
            let size = Vec2::new(l.frame.width() as f32, l.frame.height() as f32);
            Some(bx.rect.center() / size.max(Vec2::ONE))
        }
        _ => None,
    };
}

/// The main face's emotion from the plugin: its smoothed emotion when it
/// becomes the main face (it appeared, or the previous one left), then each
/// [`EmotionChanged`] for it.
fn perceive(
    mut changed: MessageReader<EmotionChanged>,
    smoothed: Query<&SmoothedEmotion>,
    mut player: ResMut<Player>,
    mut out: MessageWriter<PlayerEmotionChanged>,
) {
    let before = player.emotion();
    let main = player.main_face;
    if main != player.perceived_face {
        player.perceived_face = main;
        player.perceived = main.and_then(|f| smoothed.get(f).ok()).map(|s| s.emotion);
    }
    for c in changed.read() {
        player.changes_seen += 1;
        if Some(c.face) == main {
            player.perceived = Some(c.to);
        }
    }
    player.set(before, &mut out);
}

fn manual_keys(
    keys: Res<ButtonInput<KeyCode>>,
    mut player: ResMut<Player>,
    mut out: MessageWriter<PlayerEmotionChanged>,
) {
    const KEYS: [KeyCode; 7] = [
        KeyCode::Digit1,
        KeyCode::Digit2,
        KeyCode::Digit3,
        KeyCode::Digit4,
        KeyCode::Digit5,
        KeyCode::Digit6,
        KeyCode::Digit7,
    ];
    let before = player.emotion();
    for (k, e) in KEYS.iter().zip(Emotion::FER2013) {
        if keys.just_pressed(*k) {
            player.manual = Some(e);
        }
    }
    if keys.just_pressed(KeyCode::Digit0) {
        player.manual = None;
    }
    player.set(before, &mut out);
}

/// No camera: say so and replay the sample portrait instead.
fn fall_back_without_camera(
    status: Res<CameraStatus>,
    mut settings: ResMut<EmotionSettings>,
    mut notice: ResMut<Notice>,
    mut next: ResMut<NextState<Consent>>,
) {
    if let (CameraStatus::Unavailable { reason, .. }, SourceKind::Webcam(_)) =
        (&*status, &settings.source)
    {
        notice.0 = Some(format!(
            "No camera ({reason}): showing a sample photo. Keys 1-7 set your emotion."
        ));
        settings.source = SourceKind::Image(perception::assets_dir().join("images/astronaut.png"));
        next.set(Consent::Replay);
    }
}

/// Frame rate, the screenshot and the summary line the screenshot test reads.
#[derive(Resource, Default)]
struct Run {
    frames: u32,
    fps: f32,
    frame_ms_sum: f64,
    frame_ms_n: u32,
    shot_at: Option<u32>,
}

fn frame_counter(
    time: Res<Time<Real>>,
    mut run: ResMut<Run>,
    args: Res<Args>,
    player: Res<Player>,
    talk: Res<dialogue::Talk>,
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

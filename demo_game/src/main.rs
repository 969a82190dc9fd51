//! The demo game: Ada, an animated conversational agent that reacts to the
//! player's facial expression, built on `bevy_emotion`.
//!
//! ```text
//! cargo run -p demo_game                          # webcam after you agree; sample photo without one
//! cargo run -p demo_game -- --images DIR          # replay a folder of face photos
//! cargo run -p demo_game -- --screenshot shot.png --frames 300
//! cargo run -p demo_game -- --express sad --screenshot sad.png --frames 120
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
mod data;
mod dialogue;
mod face;
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
    /// Record what perception sees (faces, probabilities, quality; no
    /// pixels) to this JSON Lines file.
    #[arg(long)]
    record: Option<PathBuf>,
    /// Play back a file written by --record instead of using a camera.
    #[arg(long, conflicts_with = "images")]
    replay: Option<PathBuf>,
    /// Skip the "relax your face" calibration at the start.
    #[arg(long)]
    no_calibration: bool,
    /// Show Ada alone (no panel, no perception) holding this expression at
    /// full intensity: angry, disgust, fear, happy, sad, surprise, neutral,
    /// or `all` for each in turn (with --screenshot FILE.png, one
    /// FILE-<expression>.png each, --frames frames apart).
    #[arg(long, value_parser = parse_express)]
    express: Option<Express>,
    /// Ada speaks her lines aloud through espeak-ng (when it is installed).
    #[arg(long)]
    voice: bool,
    /// The expression classifier, as a path under `assets/`: the FER2013
    /// model (seven classes) or `models/arch1_ferplus.safetensors` (FER+'s
    /// eight, contempt included); class names come from the weights.
    #[arg(long, default_value = "models/arch1_fer2013.safetensors")]
    classifier: String,
}

/// What `--express` shows.
#[derive(Debug, Clone, PartialEq)]
enum Express {
    One(Emotion),
    All,
}

fn parse_express(s: &str) -> Result<Express, String> {
    if s == "all" {
        return Ok(Express::All);
    }
    Emotion::FER2013
        .into_iter()
        .find(|e| e.name() == s)
        .map(Express::One)
        .ok_or_else(|| {
            format!("`{s}` is not one of angry, disgust, fear, happy, sad, surprise, neutral, all")
        })
}

impl Express {
    fn emotions(&self) -> Vec<Emotion> {
        match self {
            Self::One(e) => vec![*e],
            Self::All => Emotion::FER2013.to_vec(),
        }
    }
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

/// The "relax your face" step: the player's resting face becomes their
/// neutral baseline (`bevy_emotion`'s calibration).
#[derive(States, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
enum Calibration {
    /// Not started (no consent yet, or photos that are not the player).
    #[default]
    Off,
    /// Waiting for the player's face.
    Waiting,
    /// Gathering the resting face.
    Running,
    /// Done, failed or skipped.
    Done,
}

/// How long the player holds a resting face.
const CALIBRATION_SECONDS: f32 = 3.0;

/// A line for the player about where frames come from.
#[derive(Resource, Debug, Clone, Default)]
struct Notice(Option<String>);

/// The player's emotion changed: an expression's onset on the main face,
/// its end, or the keys. Ada and the dialogue react to it.
#[derive(Message, Debug, Clone, Copy, PartialEq)]
struct PlayerEmotionChanged(Emotion);

/// The player's face left (`false`) or came back (`true`).
#[derive(Message, Debug, Clone, Copy, PartialEq)]
struct PlayerPresence(bool);

/// The main face has been unreadable for a while (the quality gate's
/// reason): Ada says she cannot see the player well.
#[derive(Message, Debug, Clone, Copy, PartialEq)]
struct PlayerUnsure(UnsureReason);

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
    /// `EmotionChanged` messages read.
    changes_seen: u32,
    /// The main face has left at least once.
    left_once: bool,
}

impl Player {
    fn emotion(&self) -> Option<Emotion> {
        self.manual.or(self.perceived)
    }

    /// After a change of `manual` or `perceived`: a different emotion goes
    /// out as a [`PlayerEmotionChanged`].
    fn set(&mut self, before: Option<Emotion>, out: &mut MessageWriter<PlayerEmotionChanged>) {
        let now = self.emotion();
        if now != before
            && let Some(e) = now
        {
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
    let (source, consent, notice) = match (&args.images, &args.replay, args.consent) {
        (Some(dir), _, _) => (
            SourceKind::Folder {
                dir: dir.clone(),
                fps: args.fps,
            },
            Consent::Replay,
            Some(format!("replaying photos from {}", dir.display())),
        ),
        (None, Some(file), _) => (
            SourceKind::Replay {
                path: file.clone(),
                realtime: true,
            },
            Consent::Replay,
            Some(format!("replaying the recording {}", file.display())),
        ),
        (None, None, true) => (SourceKind::Webcam(default()), Consent::Camera, None),
        (None, None, false) => (SourceKind::Image(sample), Consent::Asking, None),
    };
    let express = args.express.as_ref().map(|x| x.emotions());
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
                // Ada's expressions and dialogue reload when their files change.
                watch_for_changes_override: Some(true),
                ..default()
            }),
    )
    .add_plugins(EmotionPlugin {
        settings: EmotionSettings {
            enabled: !args.no_perception && express.is_none(),
            source,
            ..default()
        },
        models: ModelSource::Assets {
            detector: "models/mtcnn.safetensors".into(),
            finder: Some("models/yunet.safetensors".into()),
            classifier: args.classifier.clone(),
        },
    })
    .add_plugins((
        agent::AgentPlugin {
            hold: express.as_ref().and_then(|l| l.first().copied()),
        },
        dialogue::DialoguePlugin,
    ));
    // Ada alone (`--express`) has no panel.
    if express.is_none() {
        app.add_plugins((EguiPlugin::default(), ui::UiPlugin));
    }
    app.insert_state(consent)
        .init_state::<Calibration>()
        .insert_resource(Notice(notice))
        .insert_resource(agent::Voice(args.voice))
        .insert_resource(ClearColor(Color::srgb(0.12, 0.14, 0.18)))
        .insert_resource(args)
        .init_resource::<Player>()
        .init_resource::<Run>()
        .add_message::<PlayerEmotionChanged>()
        .add_message::<PlayerUnsure>()
        .add_message::<PlayerPresence>()
        .configure_sets(Update, Perceive.after(EmotionSystems::Publish))
        .add_systems(Startup, start_recording)
        .add_systems(OnEnter(Consent::Camera), (start_camera, grant))
        .add_systems(OnEnter(Consent::Replay), grant)
        .add_systems(
            Update,
            (
                (follow_main_face, perceive, watch_quality, manual_keys)
                    .chain()
                    .in_set(Perceive),
                calibrate_when_seen
                    .in_set(Perceive)
                    .run_if(in_state(Calibration::Waiting)),
                calibration_finished
                    .in_set(Perceive)
                    .run_if(in_state(Calibration::Running)),
                fall_back_without_camera.run_if(in_state(Consent::Camera)),
                frame_counter,
            ),
        );
    app.run()
}

/// `--record`: what perception sees goes to a file (only then).
fn start_recording(args: Res<Args>, mut recorder: ResMut<EmotionRecorder>) {
    if let Some(path) = &args.record
        && let Err(e) = recorder.start(path)
    {
        error!("cannot record to {}: {e}", path.display());
    }
}

/// The player chose: capture may start (the plugin captures nothing before).
fn grant(
    mut consent: ResMut<EmotionConsent>,
    state: Res<State<Consent>>,
    args: Res<Args>,
    mut next: ResMut<NextState<Calibration>>,
) {
    *consent = EmotionConsent::Granted;
    // Calibrate on the player's own face: the camera, not photos of others.
    if *state.get() == Consent::Camera && !args.no_calibration && !args.no_perception {
        next.set(Calibration::Waiting);
    }
}

fn start_camera(mut settings: ResMut<EmotionSettings>) {
    if !matches!(settings.source, SourceKind::Webcam(_)) {
        settings.source = SourceKind::Webcam(default());
    }
}

/// The first face seen is asked to relax; Ada explains.
fn calibrate_when_seen(
    player: Res<Player>,
    mut ask: MessageWriter<CalibrateNeutral>,
    mut talk: ResMut<dialogue::Talk>,
    mut next: ResMut<NextState<Calibration>>,
) {
    if let Some(face) = player.main_face {
        ask.write(CalibrateNeutral {
            face,
            seconds: CALIBRATION_SECONDS,
        });
        talk.dialogue.calibration(true);
        next.set(Calibration::Running);
    }
}

/// The baseline becomes the player's (kept when the face is lost and found
/// again); a failure leaves perception uncalibrated and says why.
fn calibration_finished(
    mut done: MessageReader<CalibrationFinished>,
    mut baseline: ResMut<PlayerBaseline>,
    mut notice: ResMut<Notice>,
    mut talk: ResMut<dialogue::Talk>,
    mut next: ResMut<NextState<Calibration>>,
) {
    if let Some(d) = done.read().last() {
        match &d.result {
            Ok(b) => baseline.0 = Some(b.clone()),
            Err(e) => notice.0 = Some(format!("Calibration failed ({e}); not calibrated.")),
        }
        talk.dialogue.calibration(false);
        next.set(Calibration::Done);
    }
}

/// Which face is the player's (the largest) and where it is; the player
/// leaving and coming back goes out as [`PlayerPresence`].
fn follow_main_face(
    faces: Query<(Entity, &FaceBox)>,
    latest: Option<Res<LatestFrame>>,
    mut player: ResMut<Player>,
    mut presence: MessageWriter<PlayerPresence>,
) {
    let was_there = player.main_face.is_some();
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
    // Gone, and back after being gone (not the first appearance).
    if player.main_face.is_some() != was_there {
        if was_there {
            player.left_once = true;
            presence.write(PlayerPresence(false));
        } else if player.left_once {
            presence.write(PlayerPresence(true));
        }
    }
}

/// The main face's emotion from the plugin's expression events: its
/// smoothed emotion when it becomes the main face, then the emotion of each
/// onset, and back to its smoothed emotion when that expression ends. Ada
/// reacts to expressions that start, not to every flicker of the label.
fn perceive(
    mut changed: MessageReader<EmotionChanged>,
    mut onsets: MessageReader<ExpressionOnset>,
    mut offsets: MessageReader<ExpressionOffset>,
    smoothed: Query<&SmoothedEmotion>,
    mut player: ResMut<Player>,
    mut out: MessageWriter<PlayerEmotionChanged>,
) {
    let before = player.emotion();
    let main = player.main_face;
    let resting = main.and_then(|f| smoothed.get(f).ok()).map(|s| s.emotion);
    if main != player.perceived_face {
        player.perceived_face = main;
        player.perceived = resting;
    }
    player.changes_seen += changed.read().count() as u32;
    for o in onsets.read() {
        if Some(o.face) == main {
            player.perceived = Some(o.emotion);
        }
    }
    for o in offsets.read() {
        if Some(o.face) == main && player.perceived == Some(o.emotion) {
            player.perceived = resting
                .filter(|e| *e != o.emotion)
                .or(Some(Emotion::Neutral));
        }
    }
    player.set(before, &mut out);
}

/// The main face unreadable for 1.5 s in a row: say so, once.
fn watch_quality(
    player: Res<Player>,
    states: Query<&ExpressionState>,
    time: Res<Time<Real>>,
    mut unsure_for: Local<f32>,
    mut out: MessageWriter<PlayerUnsure>,
) {
    let state = player.main_face.and_then(|f| states.get(f).ok());
    match state {
        Some(ExpressionState::Unsure { reason }) => {
            let before = *unsure_for;
            *unsure_for += time.delta_secs();
            if before < 1.5 && *unsure_for >= 1.5 {
                out.write(PlayerUnsure(*reason));
            }
        }
        _ => *unsure_for = 0.0,
    }
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
    mut calibration: ResMut<NextState<Calibration>>,
) {
    if let (CameraStatus::Unavailable { reason, .. }, SourceKind::Webcam(_)) =
        (&*status, &settings.source)
    {
        notice.0 = Some(format!(
            "No camera ({reason}): showing a sample photo. Keys 1-7 set your emotion."
        ));
        settings.source = SourceKind::Image(perception::assets_dir().join("images/astronaut.png"));
        next.set(Consent::Replay);
        // The sample is not the player: no calibration on it.
        calibration.set(Calibration::Off);
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
    mut agent: ResMut<agent::AgentState>,
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
    if let Some(express) = &args.express {
        express_frames(
            &mut run,
            &args,
            express,
            &mut agent,
            &mut commands,
            &mut exit,
        );
        return;
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
            talk.dialogue.steps,
            talk.dialogue.reactions,
            player.emotion().map_or("none", Emotion::name),
        );
        exit.write(AppExit::Success);
    }
}

/// `--express`: each expression held for `--frames` frames, a screenshot of
/// each when asked (`FILE-<expression>.png` for `all`), then exit.
fn express_frames(
    run: &mut Run,
    args: &Args,
    express: &Express,
    agent: &mut agent::AgentState,
    commands: &mut Commands,
    exit: &mut MessageWriter<AppExit>,
) {
    let list = express.emotions();
    // Thirty frames after each screenshot (saving it) before the next expression.
    let span = args.frames + 30;
    let (i, within) = ((run.frames / span) as usize, run.frames % span);
    let Some(&e) = list.get(i) else {
        if let Some(path) = &args.screenshot {
            println!(
                "demo: expressions {} screenshots {}",
                list.len(),
                path.display()
            );
        }
        exit.write(AppExit::Success);
        return;
    };
    if agent.hold != Some(e) {
        agent.hold = Some(e);
        agent.expression = e;
        agent.current = agent.target();
    }
    if within == args.frames
        && let Some(path) = &args.screenshot
    {
        let path = match express {
            Express::One(_) => path.clone(),
            Express::All => {
                let stem = path
                    .file_stem()
                    .map_or("ada".into(), |s| s.to_string_lossy());
                path.with_file_name(format!("{stem}-{}.png", e.name()))
            }
        };
        commands
            .spawn(Screenshot::primary_window())
            .observe(save_to_disk(path));
    }
}

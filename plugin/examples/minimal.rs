//! Headless: prints one line per emotion message (face id, emotion,
//! confidence), from the webcam or, with `--images DIR`, a folder of photos.
//!
//! ```text
//! cargo run -p bevy_emotion --example minimal -- --images ../shared/data/faces-fullframe
//! cargo run -p bevy_emotion --example minimal              # webcam, until Ctrl-C
//! ```
//!
//! Options: `--fps N` (images per second, default 2), `--seconds S` (stop
//! after S seconds; default: one pass over the images, or never for the webcam).

use std::path::PathBuf;
use std::time::Duration;

use bevy::app::ScheduleRunnerPlugin;
use bevy::asset::AssetPlugin;
use bevy::prelude::*;
use bevy_emotion::prelude::*;
use bevy_emotion::{CameraStatusChanged, ModelStatus};

#[derive(Resource)]
struct StopAfter(Option<f64>);

fn main() -> AppExit {
    let mut images: Option<PathBuf> = None;
    let mut fps = 2.0f32;
    let mut seconds: Option<f64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--images" => images = args.next().map(PathBuf::from),
            "--fps" => fps = args.next().and_then(|v| v.parse().ok()).unwrap_or(fps),
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()),
            "-h" | "--help" => {
                println!(
                    "usage: minimal [--images DIR] [--fps N] [--seconds S]\n\
                     Prints face and emotion messages from a folder of images or the webcam."
                );
                return AppExit::Success;
            }
            other => {
                eprintln!("unknown argument `{other}` (try --help)");
                return AppExit::error();
            }
        }
    }
    let source = match &images {
        Some(dir) => {
            if seconds.is_none() {
                let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
                seconds = Some(n as f64 / f64::from(fps) + 3.0);
            }
            SourceKind::Folder {
                dir: dir.clone(),
                fps,
            }
        }
        None => SourceKind::Webcam(Default::default()),
    };
    App::new()
        .add_plugins(
            MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(
                1.0 / 30.0,
            ))),
        )
        .add_plugins(bevy::log::LogPlugin::default())
        .add_plugins(AssetPlugin {
            file_path: perception::assets_dir().to_string_lossy().into_owned(),
            ..Default::default()
        })
        .add_plugins(EmotionPlugin {
            settings: EmotionSettings {
                source,
                ..Default::default()
            },
            ..Default::default()
        })
        .insert_resource(StopAfter(seconds))
        .add_systems(
            Update,
            (
                print_messages.after(EmotionSystems::Publish),
                stop_when_done,
            ),
        )
        .run()
}

fn print_messages(
    mut appeared: MessageReader<FaceAppeared>,
    mut detected: MessageReader<EmotionDetected>,
    mut changed: MessageReader<EmotionChanged>,
    mut lost: MessageReader<FaceLost>,
    mut status: MessageReader<CameraStatusChanged>,
    model: Res<ModelStatus>,
    mut model_reported: Local<bool>,
) {
    if let (ModelStatus::Failed(e), false) = (&*model, *model_reported) {
        eprintln!("model error: {e}");
        *model_reported = true;
    }
    for s in status.read() {
        eprintln!("camera: {:?}", s.0);
    }
    for m in appeared.read() {
        println!("face {} appeared", m.id);
    }
    for m in detected.read() {
        println!("face {} {} {:.2}", m.id, m.emotion, m.confidence);
    }
    for m in changed.read() {
        println!(
            "face {} changed {} -> {} {:.2}",
            m.id, m.from, m.to, m.confidence
        );
    }
    for m in lost.read() {
        println!("face {} lost", m.id);
    }
}

fn stop_when_done(time: Res<Time>, stop: Res<StopAfter>, mut exit: MessageWriter<AppExit>) {
    if stop.0.is_some_and(|s| time.elapsed_secs_f64() > s) {
        exit.write(AppExit::Success);
    }
}

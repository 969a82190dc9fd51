//! Headless: prints one line per face per processed frame, from photos or
//! the webcam. `cargo run -p bevy_emotion --example minimal -- --images DIR`
use bevy::{app::ScheduleRunnerPlugin, asset::AssetPlugin, prelude::*};
use bevy_emotion::prelude::*;
use clap::Parser;

/// Prints face and emotion messages (webcam unless --images is given).
#[derive(Parser)]
struct Args {
    /// Replay this folder of photos (two per second) instead of the webcam.
    #[arg(long)]
    images: Option<std::path::PathBuf>,
}

fn main() -> AppExit {
    let source = Args::parse()
        .images
        .map_or(SourceKind::Webcam(default()), |dir| SourceKind::Folder {
            dir,
            fps: 2.0,
        });
    let settings = EmotionSettings {
        source,
        ..default()
    };
    // Starting this example is the user's consent to capture.
    let file_path = perception::assets_dir().to_string_lossy().into_owned();
    let tick = ScheduleRunnerPlugin::run_loop(std::time::Duration::from_millis(33));
    App::new()
        .add_plugins((MinimalPlugins.set(tick), bevy::log::LogPlugin::default()))
        .add_plugins(AssetPlugin {
            file_path,
            ..default()
        })
        .add_plugins(EmotionPlugin {
            settings,
            ..default()
        })
        .insert_resource(EmotionConsent::Granted)
        .add_systems(Update, print.after(EmotionSystems::Publish))
        .run()
}

fn print(mut seen: MessageReader<EmotionDetected>) {
    for m in seen.read() {
        println!("face {} {} {:.2}", m.id, m.emotion, m.confidence);
    }
}

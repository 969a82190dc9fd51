//! A window with the camera image, each face's box, id, emotion and
//! probabilities, and the camera status: what the plugin sees (the `egui`
//! feature's [`EmotionOverlayPlugin`](bevy_emotion::overlay::EmotionOverlayPlugin)).
//!
//! ```text
//! cargo run -p bevy_emotion --features egui --example debug_overlay                 # webcam
//! cargo run -p bevy_emotion --features egui --example debug_overlay -- --images DIR # photos
//! ```

use std::path::PathBuf;

use bevy::asset::AssetPlugin;
use bevy::prelude::*;
use bevy_egui::EguiPlugin;
use bevy_emotion::overlay::EmotionOverlayPlugin;
use bevy_emotion::prelude::*;
use clap::Parser;

/// Shows what the plugin sees (webcam unless --images is given).
#[derive(Parser)]
struct Args {
    /// Replay this folder of photos, one per second, instead of the webcam.
    #[arg(long)]
    images: Option<PathBuf>,
}

fn main() -> AppExit {
    let args = Args::parse();
    let source = args
        .images
        .map_or(SourceKind::Webcam(default()), |dir| SourceKind::Folder {
            dir,
            fps: 1.0,
        });
    App::new()
        .add_plugins(DefaultPlugins.set(AssetPlugin {
            file_path: perception::assets_dir().to_string_lossy().into_owned(),
            ..default()
        }))
        .add_plugins((EguiPlugin::default(), EmotionOverlayPlugin))
        .add_plugins(EmotionPlugin {
            settings: EmotionSettings {
                source,
                ..default()
            },
            ..default()
        })
        // Starting this example is the user's consent to capture.
        .insert_resource(EmotionConsent::Granted)
        .add_systems(Startup, |mut commands: Commands| {
            commands.spawn(Camera2d);
        })
        .run()
}

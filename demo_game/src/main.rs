//! The demo game: an animated conversational agent that reacts to the player's
//! face, built on `bevy_emotion`.
//!
//! This is the application shell (window, renderer, egui) that the agent, the
//! dialogue and the perception panel will live in; today it opens a window
//! with a panel that says so.

use bevy::prelude::*;
use bevy_egui::{EguiContexts, EguiPlugin, EguiPrimaryContextPass, egui};

fn main() {
    App::new()
        .add_plugins(DefaultPlugins.set(WindowPlugin {
            primary_window: Some(Window {
                title: "bevy_emotion demo".into(),
                ..default()
            }),
            ..default()
        }))
        .add_plugins(EguiPlugin::default())
        .add_systems(Startup, |mut commands: Commands| {
            commands.spawn(Camera2d);
        })
        .add_systems(EguiPrimaryContextPass, panel)
        .run();
}

fn panel(mut contexts: EguiContexts) -> Result {
    egui::Window::new("bevy_emotion").show(contexts.ctx_mut()?, |ui| {
        ui.label("Application shell: the conversational agent is not built yet.");
    });
    Ok(())
}

//! A window with the camera image, each face's box, id, emotion and
//! confidence, and the camera status: what the plugin sees.
//!
//! ```text
//! cargo run -p bevy_emotion --example debug_overlay                 # webcam
//! cargo run -p bevy_emotion --example debug_overlay -- --images DIR # photos, one per second
//! ```

use std::path::PathBuf;

use bevy::asset::AssetPlugin;
use bevy::prelude::*;
use bevy_egui::{EguiContexts, EguiPlugin, EguiPrimaryContextPass, egui};
use bevy_emotion::LatestFrame;
use bevy_emotion::prelude::*;

#[derive(Resource, Default)]
struct Preview {
    texture: Option<egui::TextureHandle>,
    seq: u64,
}

fn main() -> AppExit {
    let mut args = std::env::args().skip(1);
    let mut source = SourceKind::Webcam(Default::default());
    while let Some(a) = args.next() {
        if a == "--images"
            && let Some(dir) = args.next()
        {
            source = SourceKind::Folder {
                dir: PathBuf::from(dir),
                fps: 1.0,
            };
        }
    }
    App::new()
        .add_plugins(DefaultPlugins.set(AssetPlugin {
            file_path: perception::assets_dir().to_string_lossy().into_owned(),
            ..default()
        }))
        .add_plugins(EguiPlugin::default())
        .add_plugins(EmotionPlugin {
            settings: EmotionSettings {
                source,
                ..default()
            },
            ..default()
        })
        .init_resource::<Preview>()
        .add_systems(Startup, |mut commands: Commands| {
            commands.spawn(Camera2d);
        })
        .add_systems(EguiPrimaryContextPass, overlay)
        .run()
}

fn overlay(
    mut contexts: EguiContexts,
    latest: Option<Res<LatestFrame>>,
    faces: Query<(&TrackedFace, &FaceBox, &SmoothedEmotion)>,
    status: Res<CameraStatus>,
    mut preview: ResMut<Preview>,
) -> Result {
    let ctx = contexts.ctx_mut()?;
    let mut root = egui::Ui::new(
        ctx.clone(),
        "root".into(),
        egui::UiBuilder::new()
            .layer_id(egui::LayerId::background())
            .max_rect(ctx.viewport_rect()),
    );
    egui::CentralPanel::default().show(&mut root, |ui| {
        ui.label(format!("{:?}", *status));
        let Some(l) = latest else {
            ui.label("waiting for frames...");
            return;
        };
        if l.seq != preview.seq {
            let img =
                egui::ColorImage::from_rgb([l.frame.width(), l.frame.height()], &l.frame.to_rgb8());
            match &mut preview.texture {
                Some(t) => t.set(img, egui::TextureOptions::LINEAR),
                None => {
                    preview.texture = Some(ui.ctx().load_texture(
                        "frame",
                        img,
                        egui::TextureOptions::LINEAR,
                    ));
                }
            }
            preview.seq = l.seq;
        }
        let Some(t) = &preview.texture else {
            return;
        };
        let avail = ui.available_size();
        let (fw, fh) = (l.frame.width() as f32, l.frame.height() as f32);
        let scale = (avail.x / fw).min(avail.y / fh);
        let resp = ui.add(egui::Image::new((
            t.id(),
            egui::vec2(fw * scale, fh * scale),
        )));
        let o = resp.rect.min;
        for (face, bx, s) in &faces {
            let r = egui::Rect::from_min_max(
                o + egui::vec2(bx.rect.min.x, bx.rect.min.y) * scale,
                o + egui::vec2(bx.rect.max.x, bx.rect.max.y) * scale,
            );
            ui.painter().rect_stroke(
                r,
                0.0,
                egui::Stroke::new(2.0, egui::Color32::YELLOW),
                egui::StrokeKind::Outside,
            );
            ui.painter().text(
                r.left_top(),
                egui::Align2::LEFT_BOTTOM,
                format!("#{} {} {:.0}%", face.id, s.emotion, s.confidence * 100.0),
                egui::FontId::proportional(16.0),
                egui::Color32::YELLOW,
            );
        }
    });
    Ok(())
}

//! Weights as Bevy assets: the default [`ModelSource`] loads MTCNN, YuNet and
//! ARCH-1 from the asset folder and assembles a pipeline that searches whole
//! frames with YuNet; without a finder it uses MTCNN's pyramid; a finder path
//! that holds other weights is a clear failure, not a panic.

use std::time::{Duration, Instant};

use bevy::asset::AssetPlugin;
use bevy::prelude::*;
use bevy_emotion::prelude::*;
use bevy_emotion::{EmotionPipeline, ModelSource, ModelStatus};
use perception::Finder;

/// Updates a headless app with `models` until the networks are ready or
/// failed.
fn load(models: ModelSource) -> App {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        AssetPlugin {
            file_path: perception::assets_dir().to_string_lossy().into_owned(),
            ..default()
        },
    ))
    .add_plugins(EmotionPlugin {
        settings: EmotionSettings {
            source: SourceKind::Pushed,
            ..default()
        },
        models,
    });
    let start = Instant::now();
    while *app.world().resource::<ModelStatus>() == ModelStatus::Loading {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "weights not loaded in 60 s"
        );
        app.update();
        std::thread::sleep(Duration::from_millis(5));
    }
    app
}

fn finder(app: &App) -> Finder {
    app.world()
        .resource::<EmotionPipeline>()
        .0
        .detector()
        .finder()
}

#[test]
fn the_default_source_searches_frames_with_yunet() {
    let app = load(ModelSource::default());
    assert_eq!(*app.world().resource::<ModelStatus>(), ModelStatus::Ready);
    assert_eq!(finder(&app), Finder::YuNet);
}

#[test]
fn no_finder_means_mtcnn_and_a_wrong_file_is_refused() {
    let ModelSource::Assets {
        detector,
        classifier,
        ..
    } = ModelSource::default()
    else {
        unreachable!("the default source is assets")
    };
    let app = load(ModelSource::Assets {
        detector: detector.clone(),
        finder: None,
        classifier: classifier.clone(),
    });
    assert_eq!(*app.world().resource::<ModelStatus>(), ModelStatus::Ready);
    assert_eq!(finder(&app), Finder::Mtcnn);

    let app = load(ModelSource::Assets {
        detector,
        finder: Some(classifier.clone()),
        classifier,
    });
    let ModelStatus::Failed(msg) = app.world().resource::<ModelStatus>() else {
        panic!("a classifier given as the finder was accepted");
    };
    assert!(msg.contains("must be YuNet weights"), "{msg}");
    assert!(app.world().get_resource::<EmotionPipeline>().is_none());
}

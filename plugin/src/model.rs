//! The model stage: weights as Bevy assets (one loader for `.safetensors`
//! files that reads the MTCNN detector, the YuNet finder or an emotion
//! classifier, told apart by `perception::Weights`), and the system that
//! assembles the [`Pipeline`] once all are loaded, again whenever one changes
//! (hot reload with Bevy's `file_watcher` feature), or a pipeline the app
//! built itself ([`ModelSource::Preloaded`]).

use std::sync::Arc;

use bevy::asset::io::Reader;
use bevy::asset::{AssetLoader, AsyncReadExt, LoadContext, LoadState};
use bevy::prelude::*;
use perception::{DetectorConfig, Pipeline, PipelineConfig, Weights};

use crate::settings::{EmotionSettings, EmotionSystems, stage_setup};

/// A loaded weights file: the detector, the finder or a classifier.
#[derive(Asset, TypePath, Debug, Clone)]
pub struct EmotionModel(pub Weights);

/// Why a weights file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelLoadError {
    /// Reading the file failed.
    #[error("cannot read weights: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not valid weights (truncated, foreign, mismatched).
    #[error("invalid weights: {0}")]
    Weights(#[from] perception::PerceptionError),
}

/// Loads [`EmotionModel`]s from `.safetensors` files.
#[derive(Default, TypePath)]
pub struct EmotionModelLoader;

impl AssetLoader for EmotionModelLoader {
    type Asset = EmotionModel;
    type Settings = ();
    type Error = ModelLoadError;

    async fn load(
        &self,
        reader: &mut dyn Reader,
        _settings: &(),
        _load_context: &mut LoadContext<'_>,
    ) -> Result<EmotionModel, ModelLoadError> {
        // At most one byte past the size limit: a huge file is refused by
        // `parse_model` without being read whole.
        let mut bytes = Vec::new();
        AsyncReadExt::take(reader, perception::MAX_WEIGHTS_BYTES + 1)
            .read_to_end(&mut bytes)
            .await?;
        parse_model(&bytes)
    }

    fn extensions(&self) -> &[&str] {
        &["safetensors"]
    }
}

/// Reads detector, finder or classifier weights from bytes ([`Weights::from_bytes`]).
pub fn parse_model(bytes: &[u8]) -> Result<EmotionModel, ModelLoadError> {
    Ok(EmotionModel(Weights::from_bytes(bytes)?))
}

/// Where the plugin's networks come from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// Bevy assets (paths relative to the asset folder), hot-reloadable.
    Assets {
        /// MTCNN weights, default `models/mtcnn.safetensors`.
        detector: String,
        /// YuNet weights that search whole frames for new faces (O-Net, from
        /// `detector`, then verifies each): default
        /// `models/yunet.safetensors`, 3.7x faster than MTCNN's own pyramid
        /// (`docs/PERFORMANCE.md`). `None`: MTCNN's pyramid.
        finder: Option<String>,
        /// Classifier weights, default `models/arch1_fer2013.safetensors`.
        classifier: String,
    },
    /// A pipeline the app built itself (tests, custom loading).
    Preloaded(Arc<Pipeline>),
}

impl Default for ModelSource {
    fn default() -> Self {
        Self::Assets {
            detector: "models/mtcnn.safetensors".into(),
            finder: Some("models/yunet.safetensors".into()),
            classifier: "models/arch1_fer2013.safetensors".into(),
        }
    }
}

/// The pipeline in use (absent until the weights are loaded).
#[derive(Resource, Clone)]
pub struct EmotionPipeline(pub Arc<Pipeline>);

/// The classifier's class names (FER2013's until the networks are loaded).
pub(crate) fn class_names(pipeline: Option<&EmotionPipeline>) -> Vec<String> {
    pipeline.map_or_else(
        || {
            perception::Emotion::FER2013
                .iter()
                .map(|e| e.name().to_string())
                .collect()
        },
        |p| p.0.classifier().classes().to_vec(),
    )
}

/// Whether the networks are ready.
#[derive(Resource, Reflect, Debug, Clone, PartialEq, Default)]
#[reflect(Resource)]
pub enum ModelStatus {
    /// Waiting for the weights.
    #[default]
    Loading,
    /// Loaded; inference runs.
    Ready,
    /// A file is missing or invalid; the message says which and why.
    Failed(String),
}

#[derive(Resource)]
pub(crate) struct ModelHandles {
    pub detector: Handle<EmotionModel>,
    pub classifier: Handle<EmotionModel>,
    pub finder: Option<(Handle<EmotionModel>, String)>,
    pub detector_path: String,
    pub classifier_path: String,
}

pub(crate) fn load_models(
    mut commands: Commands,
    server: Res<AssetServer>,
    source: Res<ModelSourceRes>,
) {
    if let ModelSource::Assets {
        detector,
        finder,
        classifier,
    } = &source.0
    {
        commands.insert_resource(ModelHandles {
            detector: server.load(detector.clone()),
            classifier: server.load(classifier.clone()),
            finder: finder.as_ref().map(|f| (server.load(f.clone()), f.clone())),
            detector_path: detector.clone(),
            classifier_path: classifier.clone(),
        });
    }
}

/// The configured model source, kept for the loading systems.
#[derive(Resource)]
pub(crate) struct ModelSourceRes(pub ModelSource);

pub(crate) fn assemble_pipeline(
    mut commands: Commands,
    handles: Option<Res<ModelHandles>>,
    models: Res<Assets<EmotionModel>>,
    server: Res<AssetServer>,
    mut events: MessageReader<AssetEvent<EmotionModel>>,
    mut status: ResMut<ModelStatus>,
    settings: Res<EmotionSettings>,
) {
    let Some(handles) = handles else {
        return;
    };
    let changed = events.read().any(|e| {
        matches!(
            e,
            AssetEvent::LoadedWithDependencies { .. } | AssetEvent::Modified { .. }
        )
    });
    let finder = handles.finder.as_ref().map(|(h, p)| (h, p));
    for (handle, path) in [
        (&handles.detector, &handles.detector_path),
        (&handles.classifier, &handles.classifier_path),
    ]
    .into_iter()
    .chain(finder)
    {
        if let LoadState::Failed(err) = server.load_state(handle) {
            let msg = format!("cannot load {path}: {err}");
            if *status != ModelStatus::Failed(msg.clone()) {
                error!("{msg}");
                *status = ModelStatus::Failed(msg);
            }
            return;
        }
    }
    if !changed {
        return;
    }
    let (Some(det), Some(cls)) = (
        models.get(&handles.detector),
        models.get(&handles.classifier),
    ) else {
        return;
    };
    let yunet = match &handles.finder {
        None => None,
        Some((handle, path)) => match models.get(handle).map(|m| &m.0) {
            None => return,
            Some(Weights::Finder(net)) => Some((**net).clone()),
            Some(other) => {
                let msg = format!("{path} must be YuNet weights, not {}", other.kind());
                error!("{msg}");
                *status = ModelStatus::Failed(msg);
                return;
            }
        },
    };
    let (Weights::Detector(detector), Weights::Classifier(classifier)) = (&det.0, &cls.0) else {
        let msg = format!(
            "{} must be MTCNN weights and {} classifier weights",
            handles.detector_path, handles.classifier_path
        );
        error!("{msg}");
        *status = ModelStatus::Failed(msg);
        return;
    };
    let config = pipeline_config(&settings);
    let mut detector = (**detector).clone();
    if let Some(net) = yunet {
        detector = detector.with_yunet(net);
    }
    match detector.set_config(config.detector) {
        Ok(()) => {
            commands.insert_resource(EmotionPipeline(Arc::new(Pipeline::new(
                detector,
                (**classifier).clone().with_tta(config.tta),
                config.max_faces,
            ))));
            info!("emotion networks ready");
            *status = ModelStatus::Ready;
        }
        Err(e) => {
            error!("invalid detector settings: {e}");
            *status = ModelStatus::Failed(e.to_string());
        }
    }
}

/// The perception settings `settings` asks for.
pub(crate) fn pipeline_config(settings: &EmotionSettings) -> PipelineConfig {
    PipelineConfig {
        detector: DetectorConfig {
            min_face_size: settings.min_face_size,
            ..Default::default()
        },
        max_faces: settings.max_faces,
        tta: settings.tta,
    }
}

/// Loads the networks ([`ModelSource`]) and keeps the pipeline's settings in
/// line with [`EmotionSettings`].
pub struct EmotionModelPlugin {
    /// Where the networks come from.
    pub source: ModelSource,
}

impl Plugin for EmotionModelPlugin {
    fn build(&self, app: &mut App) {
        stage_setup(app);
        app.init_resource::<ModelStatus>()
            .register_type::<ModelStatus>();
        match &self.source {
            ModelSource::Preloaded(p) => {
                app.insert_resource(EmotionPipeline(p.clone()))
                    .insert_resource(ModelStatus::Ready);
            }
            ModelSource::Assets { .. } => {
                app.init_asset::<EmotionModel>()
                    .init_asset_loader::<EmotionModelLoader>()
                    .insert_resource(ModelSourceRes(self.source.clone()))
                    .add_systems(Startup, load_models)
                    .add_systems(Update, assemble_pipeline.before(EmotionSystems::Capture));
            }
        }
        app.add_systems(
            Update,
            apply_pipeline_settings
                .before(EmotionSystems::Detect)
                .run_if(resource_changed::<EmotionSettings>),
        );
    }
}

/// Keeps the pipeline's detector settings in line with [`EmotionSettings`].
fn apply_pipeline_settings(
    settings: Res<EmotionSettings>,
    pipeline: Option<ResMut<EmotionPipeline>>,
) {
    let Some(mut pipeline) = pipeline else {
        return;
    };
    let mut p: Pipeline = (*pipeline.0).clone();
    match p.set_config(pipeline_config(&settings)) {
        Ok(()) => pipeline.0 = Arc::new(p),
        Err(e) => warn!("ignoring invalid emotion settings: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_tells_detector_from_classifier_and_rejects_garbage() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/models");
        let mtcnn = std::fs::read(dir.join("mtcnn.safetensors")).unwrap();
        assert!(matches!(
            parse_model(&mtcnn),
            Ok(EmotionModel(Weights::Detector(_)))
        ));
        assert!(matches!(
            parse_model(b"garbage"),
            Err(ModelLoadError::Weights(_))
        ));
        assert!(parse_model(&mtcnn[..mtcnn.len() / 2]).is_err());
    }
}

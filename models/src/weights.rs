//! The weights format: a safetensors file whose `__metadata__` records what the
//! tensors are and how they were made.
//!
//! | key | value |
//! | --- | --- |
//! | `format` | `emotion-cnn/1` |
//! | `arch` | `arch1` .. `arch4` |
//! | `config` | the [`ModelConfig`] as JSON |
//! | `classes` | JSON array of class names in output order |
//! | `input` | JSON [`InputSpec`] (`{"height":48,"width":48,"channels":1}`) |
//! | `normalization` | JSON [`Normalization`] |
//! | `provenance` | JSON [`Provenance`]: dataset, recipe, commit, metrics |
//!
//! Tensors are `f32`, named `<keras layer>.<param>` (`conv2d_4.weight`,
//! `batch_normalization_7.moving_variance`, `separable_conv2d.depthwise.weight`).
//! Loading checks the architecture, every tensor's presence, dtype and shape, and
//! reports the first problem by name; nothing here panics on a bad file.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Arch, EmotionNet, FER2013_CLASSES, INPUT_SIZE, ModelConfig};

/// The value of the `format` metadata key this version writes and reads.
pub const FORMAT: &str = "emotion-cnn/1";

/// The largest weights file read (64 MiB). The project's networks are under
/// 5 MB; a larger file is refused before it is read into memory.
pub const MAX_WEIGHTS_BYTES: u64 = 64 << 20;

/// What can go wrong reading or writing a weights file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightsError {
    /// The file could not be read or written.
    #[error("cannot access weights file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_WEIGHTS_BYTES`].
    #[error(
        "weights file of {bytes} bytes is larger than the {max}-byte limit: not a weights file"
    )]
    TooLarge {
        /// The file's size.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The bytes are not a complete safetensors file (truncated, corrupt, empty).
    #[error("not a valid safetensors file (truncated or corrupt?): {0}")]
    Corrupt(String),
    /// A required metadata key is absent (e.g. a safetensors file from elsewhere).
    #[error("weights metadata has no `{0}` entry: not an emotion-cnn weights file")]
    MissingMetadata(&'static str),
    /// A metadata value could not be understood.
    #[error("weights metadata `{key}` is invalid: {reason}")]
    BadMetadata {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
    /// The file is for another architecture than the one asked for.
    #[error("weights are for {found}, but {expected} was requested")]
    WrongArch {
        /// Requested.
        expected: Arch,
        /// In the file.
        found: Arch,
    },
    /// A tensor the network needs is not in the file.
    #[error("tensor `{name}` (shape {expected:?}) is missing from the weights")]
    MissingTensor {
        /// Tensor name.
        name: String,
        /// The shape the network needs.
        expected: Vec<usize>,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}` has shape {found:?}, the network needs {expected:?}")]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// The shape the network needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor has another element type than `f32`.
    #[error("tensor `{name}` is {found:?}, expected F32")]
    WrongDType {
        /// Tensor name.
        name: String,
        /// The dtype in the file.
        found: DType,
    },
    /// The file holds a tensor the network does not have.
    #[error("tensor `{0}` in the weights is not a parameter of this network")]
    UnexpectedTensor(String),
    /// Weights that cannot be averaged: no files, or files of different
    /// networks or classes.
    #[error("cannot average these weights: {0}")]
    Incompatible(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, WeightsError>;

/// The input a network expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpec {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// 1 for gray.
    pub channels: usize,
}

impl Default for InputSpec {
    fn default() -> Self {
        Self {
            height: INPUT_SIZE,
            width: INPUT_SIZE,
            channels: 1,
        }
    }
}

/// How 8-bit pixels become network inputs: `x = (p / 255 - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Subtracted after scaling to `[0, 1]`.
    pub mean: f32,
    /// Divided by after subtracting the mean.
    pub std: f32,
}

impl Default for Normalization {
    /// The project's one normalisation: pixels scaled to `[0, 1]`.
    fn default() -> Self {
        Self {
            mean: 0.0,
            std: 1.0,
        }
    }
}

impl Normalization {
    /// Normalises one 8-bit pixel.
    pub fn apply(&self, p: u8) -> f32 {
        (f32::from(p) / 255.0 - self.mean) / self.std
    }
}

/// How a weights file was made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Provenance {
    /// Training data, e.g. `fer2013:Training`.
    pub dataset: String,
    /// Training recipe (preset and overrides), free text or JSON.
    pub recipe: String,
    /// Source commit of the code that trained it.
    pub commit: String,
    /// Named results, e.g. `publictest_accuracy`.
    pub metrics: BTreeMap<String, f64>,
    /// Free-form notes (`untrained`, `parity fixture`, ...).
    pub notes: String,
}

/// Everything the metadata of a weights file records.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightsMeta {
    /// The network's configuration (its architecture included).
    pub config: ModelConfig,
    /// Class names in output order.
    pub classes: Vec<String>,
    /// Input size.
    pub input: InputSpec,
    /// Pixel normalisation.
    pub normalization: Normalization,
    /// How the weights were made.
    pub provenance: Provenance,
}

impl WeightsMeta {
    /// Metadata for `config` with FER2013's classes and the default input and
    /// normalisation.
    pub fn new(config: ModelConfig, provenance: Provenance) -> Self {
        Self {
            input: InputSpec {
                channels: config.in_channels(),
                ..InputSpec::default()
            },
            classes: FER2013_CLASSES.iter().map(|s| (*s).to_owned()).collect(),
            config,
            normalization: Normalization::default(),
            provenance,
        }
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.config.arch()
    }

    fn to_map(&self) -> Result<HashMap<String, String>> {
        fn json<T: Serialize>(key: &'static str, v: &T) -> Result<String> {
            serde_json::to_string(v).map_err(|e| WeightsError::BadMetadata {
                key,
                reason: e.to_string(),
            })
        }
        Ok(HashMap::from([
            ("format".to_owned(), FORMAT.to_owned()),
            ("arch".to_owned(), self.arch().name().to_owned()),
            ("config".to_owned(), json("config", &self.config)?),
            ("classes".to_owned(), json("classes", &self.classes)?),
            ("input".to_owned(), json("input", &self.input)?),
            (
                "normalization".to_owned(),
                json("normalization", &self.normalization)?,
            ),
            (
                "provenance".to_owned(),
                json("provenance", &self.provenance)?,
            ),
        ]))
    }

    fn from_map(map: &HashMap<String, String>) -> Result<Self> {
        let get = |key: &'static str| map.get(key).ok_or(WeightsError::MissingMetadata(key));
        let format = get("format")?;
        if format != FORMAT {
            return Err(WeightsError::BadMetadata {
                key: "format",
                reason: format!("`{format}` is not `{FORMAT}`"),
            });
        }
        fn parse<T: DeserializeOwned>(key: &'static str, s: &str) -> Result<T> {
            serde_json::from_str(s).map_err(|e| WeightsError::BadMetadata {
                key,
                reason: e.to_string(),
            })
        }
        let config: ModelConfig = parse("config", get("config")?)?;
        config
            .check_ranges()
            .map_err(|reason| WeightsError::BadMetadata {
                key: "config",
                reason,
            })?;
        let arch: Arch = get("arch")?
            .parse()
            .map_err(|reason| WeightsError::BadMetadata {
                key: "arch",
                reason,
            })?;
        if arch != config.arch() {
            return Err(WeightsError::BadMetadata {
                key: "arch",
                reason: format!(
                    "`arch` says {arch} but `config` describes {}",
                    config.arch()
                ),
            });
        }
        let classes: Vec<String> = parse("classes", get("classes")?)?;
        if classes.len() != config.num_classes() {
            return Err(WeightsError::BadMetadata {
                key: "classes",
                reason: format!(
                    "{} class names for a network with {} outputs",
                    classes.len(),
                    config.num_classes()
                ),
            });
        }
        let normalization: Normalization = parse("normalization", get("normalization")?)?;
        if !(normalization.mean.is_finite()
            && normalization.std.is_finite()
            && normalization.std > 0.0)
        {
            return Err(WeightsError::BadMetadata {
                key: "normalization",
                reason: format!(
                    "mean {} and std {} must be finite, std positive",
                    normalization.mean, normalization.std
                ),
            });
        }
        Ok(Self {
            config,
            classes,
            input: parse("input", get("input")?)?,
            normalization,
            provenance: match map.get("provenance") {
                Some(s) => parse("provenance", s)?,
                None => Provenance::default(),
            },
        })
    }
}

/// A parsed weights file: metadata and tensors (not yet checked against a network).
#[derive(Debug, Clone)]
pub struct LoadedWeights {
    /// The file's metadata.
    pub meta: WeightsMeta,
    /// Tensors by name, on the device they were loaded to.
    pub tensors: HashMap<String, Tensor>,
}

/// The parameter names and shapes of the network `cfg` describes.
pub fn expected_shapes(cfg: &ModelConfig) -> Result<BTreeMap<String, Vec<usize>>> {
    let varmap = VarMap::new();
    EmotionNet::new(
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
    Ok(vars
        .iter()
        .map(|(n, v)| (n.clone(), v.dims().to_vec()))
        .collect())
}

impl LoadedWeights {
    /// Freshly initialised, untrained weights of `arch` (its preset
    /// configuration), noted as `untrained`: for tests, benchmarks and trying
    /// the pipeline before training.
    pub fn untrained(arch: Arch, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let config = ModelConfig::preset(arch);
        EmotionNet::new(
            &config,
            VarBuilder::from_varmap(&varmap, DType::F32, device),
        )?;
        let meta = WeightsMeta::new(
            config,
            Provenance {
                notes: "untrained".into(),
                ..Default::default()
            },
        );
        // Plain tensors, not the variables themselves, so that forward passes
        // on them record no backprop graph (as for weights read from a file).
        let tensors = varmap_tensors(&varmap)?
            .into_iter()
            .map(|(name, t)| (name, t.detach()))
            .collect();
        Ok(Self { meta, tensors })
    }

    /// The weights as a safetensors file's bytes, metadata included.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        to_bytes(&self.tensors, &self.meta)
    }

    /// Reads and parses a weights file.
    pub fn from_file(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::from_bytes(&read_file(path.as_ref())?, device)
    }

    /// Parses a weights file already in memory (e.g. a Bevy asset).
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        check_size(bytes.len() as u64)?;
        let (map, tensors) = read_f32_safetensors(bytes, device)?;
        let map = map.ok_or(WeightsError::MissingMetadata("format"))?;
        let meta = WeightsMeta::from_map(&map)?;
        Ok(Self { meta, tensors })
    }

    /// Fails unless the file is for `arch`.
    pub fn expect_arch(&self, arch: Arch) -> Result<&Self> {
        match self.meta.arch() {
            found if found == arch => Ok(self),
            found => Err(WeightsError::WrongArch {
                expected: arch,
                found,
            }),
        }
    }

    /// Checks that the tensors are exactly the network's parameters, with their
    /// shapes.
    pub fn validate(&self) -> Result<()> {
        let expected = expected_shapes(&self.meta.config)?;
        for (name, shape) in &expected {
            checked_tensor(&self.tensors, name, shape)?;
        }
        let mut extra: Vec<&String> = self
            .tensors
            .keys()
            .filter(|n| !expected.contains_key(*n))
            .collect();
        extra.sort();
        match extra.first() {
            Some(name) => Err(WeightsError::UnexpectedTensor((*name).clone())),
            None => Ok(()),
        }
    }

    /// Validates and builds the network for inference (or fine-tuning without
    /// an optimiser).
    pub fn build(&self, device: &Device) -> Result<EmotionNet> {
        self.validate()?;
        let vb = VarBuilder::from_tensors(self.tensors.clone(), DType::F32, device);
        Ok(EmotionNet::new(&self.meta.config, vb)?)
    }

    /// Validates and copies the tensors into the variables of a `VarMap` that a
    /// network with the same configuration was built on (to resume training).
    pub fn load_into(&self, varmap: &VarMap) -> Result<()> {
        self.validate()?;
        let vars = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
        for (name, var) in vars.iter() {
            let t = self
                .tensors
                .get(name)
                .ok_or_else(|| WeightsError::MissingTensor {
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                })?;
            var.set(&t.to_device(var.device())?)?;
        }
        Ok(())
    }
}

impl LoadedWeights {
    /// The element-wise mean of several weights files of one network (same
    /// configuration and classes, every file valid): a "model soup" of runs
    /// fine-tuned from a common start, BatchNorm's moving statistics averaged
    /// like the rest. The metadata is the first file's, its provenance noting
    /// the average.
    pub fn average(all: &[LoadedWeights]) -> Result<Self> {
        let Some((first, rest)) = all.split_first() else {
            return Err(WeightsError::Incompatible("no weights given".into()));
        };
        first.validate()?;
        for (i, w) in rest.iter().enumerate() {
            if w.meta.config != first.meta.config || w.meta.classes != first.meta.classes {
                return Err(WeightsError::Incompatible(format!(
                    "file {} is another network or has other classes than file 1",
                    i + 2
                )));
            }
            w.validate()?;
        }
        let n = all.len() as f64;
        let mut tensors = HashMap::new();
        for (name, t) in &first.tensors {
            let mut sum = t.clone();
            for w in rest {
                sum = (sum + &w.tensors[name])?;
            }
            tensors.insert(name.clone(), (sum / n)?);
        }
        let mut meta = first.meta.clone();
        meta.provenance.metrics.clear();
        meta.provenance.notes = format!(
            "element-wise mean of {} weights files{}{}",
            all.len(),
            if meta.provenance.notes.is_empty() {
                ""
            } else {
                "; the first: "
            },
            meta.provenance.notes
        );
        Ok(Self { meta, tensors })
    }
}

/// Loads a weights file and builds its network in one step.
pub fn load_network(path: impl AsRef<Path>, device: &Device) -> Result<(EmotionNet, WeightsMeta)> {
    let w = LoadedWeights::from_file(path, device)?;
    let net = w.build(device)?;
    Ok((net, w.meta))
}

/// Reads a whole weights file, naming it in the error. A file larger than
/// [`MAX_WEIGHTS_BYTES`] is refused before it is read (also one that grows while
/// it is read).
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |source| WeightsError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    check_size(len)?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_WEIGHTS_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    check_size(bytes.len() as u64)?;
    Ok(bytes)
}

/// Refuses a weights file of `bytes` bytes when it exceeds [`MAX_WEIGHTS_BYTES`].
pub fn check_size(bytes: u64) -> Result<()> {
    if bytes > MAX_WEIGHTS_BYTES {
        return Err(WeightsError::TooLarge {
            bytes,
            max: MAX_WEIGHTS_BYTES,
        });
    }
    Ok(())
}

/// The tensor `name` of `tensors`, which must have `shape`: a missing tensor
/// or another shape is an error naming it.
pub(crate) fn checked_tensor<'a>(
    tensors: &'a HashMap<String, Tensor>,
    name: &str,
    shape: &[usize],
) -> Result<&'a Tensor> {
    let t = tensors
        .get(name)
        .ok_or_else(|| WeightsError::MissingTensor {
            name: name.to_owned(),
            expected: shape.to_vec(),
        })?;
    if t.dims() != shape {
        return Err(WeightsError::ShapeMismatch {
            name: name.to_owned(),
            expected: shape.to_vec(),
            found: t.dims().to_vec(),
        });
    }
    Ok(t)
}

/// The `format` metadata value of a safetensors file (`emotion-cnn/1`,
/// `mtcnn/1`, ...), read from the header alone; `None` when it has none.
pub fn format_of(bytes: &[u8]) -> Result<Option<String>> {
    check_size(bytes.len() as u64)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| WeightsError::Corrupt(e.to_string()))?;
    Ok(header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("format").cloned()))
}

/// A safetensors file's `__metadata__` (if any) and its tensors, all of which
/// must be `f32`. Truncated or corrupt bytes are [`WeightsError::Corrupt`].
pub(crate) fn read_f32_safetensors(
    bytes: &[u8],
    device: &Device,
) -> Result<(Option<HashMap<String, String>>, HashMap<String, Tensor>)> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| WeightsError::Corrupt(e.to_string()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| WeightsError::Corrupt(e.to_string()))?;
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        use candle_core::safetensors::Load;
        let t = view.load(device)?;
        if t.dtype() != DType::F32 {
            return Err(WeightsError::WrongDType {
                name,
                found: t.dtype(),
            });
        }
        tensors.insert(name, t);
    }
    Ok((header.metadata().clone(), tensors))
}

/// Serialises tensors and metadata to safetensors bytes.
pub fn to_bytes<'a>(
    tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>,
    meta: &WeightsMeta,
) -> Result<Vec<u8>> {
    let data: Vec<(&str, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| Ok((n.as_str(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<candle_core::Result<_>>()?;
    safetensors::serialize(data, Some(meta.to_map()?))
        .map_err(|e| WeightsError::Corrupt(e.to_string()))
}

/// The current values of a `VarMap`'s variables, by name.
pub fn varmap_tensors(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    Ok(varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect())
}

/// Writes the variables of `varmap` with `meta` to `path` atomically (a
/// temporary file in the same folder, synced, then renamed over `path`).
pub fn save_varmap(varmap: &VarMap, meta: &WeightsMeta, path: impl AsRef<Path>) -> Result<()> {
    write_atomic(path.as_ref(), &to_bytes(&varmap_tensors(varmap)?, meta)?)
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash
/// leaves either the old file or the new one, never a torn one.
///
/// The temporary file is `.<name>.<pid>-<n>.tmp` beside `path` (unique per
/// process and call, so two writers never share one), synced before the
/// rename; the folder is synced after it, so the rename itself survives a
/// power loss.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io = |source| WeightsError::Io {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io(std::io::Error::other("the path has no file name")))?;
    let tmp = path.with_file_name(format!(
        ".{name}.{}-{}{TMP_SUFFIX}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    sync_dir(path.parent()).map_err(io)
}

/// How [`write_atomic`]'s temporary files end; [`remove_stale_temporaries`]
/// clears the ones a killed process left.
pub const TMP_SUFFIX: &str = ".tmp";

/// Syncs a folder, so renames and new files in it are durable. `None` or an
/// empty path means the current folder.
pub fn sync_dir(dir: Option<&Path>) -> std::io::Result<()> {
    let dir = match dir {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Removes the temporary files of [`write_atomic`] that a killed process left
/// in `dir` (not recursive); returns how many. Call it only while no other
/// process writes there.
pub fn remove_stale_temporaries(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(TMP_SUFFIX) && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::ModuleT;

    fn arch1_bytes() -> (VarMap, Vec<u8>) {
        let varmap = VarMap::new();
        let cfg = ModelConfig::preset(Arch::Arch1);
        EmotionNet::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let tensors = varmap_tensors(&varmap).unwrap();
        let meta = WeightsMeta::new(
            cfg,
            Provenance {
                notes: "untrained".into(),
                ..Default::default()
            },
        );
        let bytes = to_bytes(&tensors, &meta).unwrap();
        (varmap, bytes)
    }

    fn with_tensors(edit: impl FnOnce(&mut BTreeMap<String, Tensor>)) -> Vec<u8> {
        let (_, bytes) = arch1_bytes();
        let w = LoadedWeights::from_bytes(&bytes, &Device::Cpu).unwrap();
        let mut tensors: BTreeMap<String, Tensor> = w.tensors.into_iter().collect();
        edit(&mut tensors);
        to_bytes(&tensors, &w.meta).unwrap()
    }

    #[test]
    fn oversized_files_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.safetensors");
        // Sparse: no disk space, but the size says 65 MiB.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(MAX_WEIGHTS_BYTES + 1)
            .unwrap();
        let err = LoadedWeights::from_file(&path, &Device::Cpu).unwrap_err();
        assert!(matches!(err, WeightsError::TooLarge { .. }), "{err}");
        assert!(crate::mtcnn::Mtcnn::from_file(&path, &Device::Cpu).is_err());
    }

    #[test]
    fn concurrent_atomic_writes_never_tear_or_collide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let payloads: Vec<Vec<u8>> = (0..4u8).map(|k| vec![b'a' + k; 200_000]).collect();
        std::thread::scope(|s| {
            for p in &payloads {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_atomic(path, p).unwrap();
                    }
                });
            }
        });
        let got = std::fs::read(&path).unwrap();
        assert!(payloads.contains(&got), "a torn or mixed file");
        // No temporary is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
        std::fs::write(dir.path().join(".state.json.1-2.tmp"), b"x").unwrap();
        assert_eq!(remove_stale_temporaries(dir.path()).unwrap(), 1);
        assert!(path.is_file());
    }

    #[test]
    fn untrained_weights_are_plain_tensors_that_build() {
        let w = LoadedWeights::untrained(Arch::Arch2, &Device::Cpu).unwrap();
        assert_eq!(w.meta.provenance.notes, "untrained");
        assert!(w.tensors.values().all(|t| !t.track_op()), "no variables");
        w.build(&Device::Cpu).unwrap();
        let back = LoadedWeights::from_bytes(&w.to_bytes().unwrap(), &Device::Cpu).unwrap();
        assert_eq!(back.meta.arch(), Arch::Arch2);
        assert_eq!(back.tensors.len(), w.tensors.len());
    }

    #[test]
    fn averages_are_element_wise_and_refuse_other_networks() {
        let a = LoadedWeights::untrained(Arch::Arch1, &Device::Cpu).unwrap();
        let b = LoadedWeights::untrained(Arch::Arch1, &Device::Cpu).unwrap();
        let mean = LoadedWeights::average(&[a.clone(), b.clone()]).unwrap();
        mean.validate().unwrap();
        assert!(
            mean.meta
                .provenance
                .notes
                .starts_with("element-wise mean of 2")
        );
        let flat = |w: &LoadedWeights, n: &str| {
            w.tensors[n]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let name = a
            .tensors
            .keys()
            .find(|n| n.ends_with(".weight") && !n.contains("batch_norm"))
            .unwrap()
            .clone();
        let (x, y, m) = (flat(&a, &name), flat(&b, &name), flat(&mean, &name));
        assert_ne!(x, y, "two random initialisations");
        for ((x, y), m) in x.iter().zip(&y).zip(&m) {
            assert!((m - (x + y) / 2.0).abs() < 1e-6);
        }
        let other = LoadedWeights::untrained(Arch::Arch3, &Device::Cpu).unwrap();
        let err = LoadedWeights::average(&[a, other]).unwrap_err().to_string();
        assert!(err.contains("another network"), "{err}");
        assert!(LoadedWeights::average(&[]).is_err());
    }

    #[test]
    fn round_trip_keeps_metadata_and_outputs() {
        let (varmap, bytes) = arch1_bytes();
        let w = LoadedWeights::from_bytes(&bytes, &Device::Cpu).unwrap();
        assert_eq!(w.meta.arch(), Arch::Arch1);
        assert_eq!(w.meta.classes[3], "happy");
        assert_eq!(w.meta.provenance.notes, "untrained");
        let net = w.build(&Device::Cpu).unwrap();
        let orig = EmotionNet::new(
            &ModelConfig::preset(Arch::Arch1),
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let x = Tensor::rand(0f32, 1f32, (2, 1, 48, 48), &Device::Cpu).unwrap();
        let a = net.forward_t(&x, false).unwrap();
        let b = orig.forward_t(&x, false).unwrap();
        let diff: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn out_of_range_metadata_is_refused_before_any_allocation() {
        let w = LoadedWeights::untrained(Arch::Arch2, &Device::Cpu).unwrap();
        let bad = |edit: &dyn Fn(&mut WeightsMeta)| {
            let mut meta = w.meta.clone();
            edit(&mut meta);
            let bytes = to_bytes(&w.tensors, &meta).unwrap();
            match LoadedWeights::from_bytes(&bytes, &Device::Cpu) {
                Err(WeightsError::BadMetadata { key, reason }) => format!("{key}: {reason}"),
                other => panic!("accepted: {:?}", other.map(|w| w.meta)),
            }
        };
        let dense = |f: &dyn Fn(&mut crate::DenseNetConfig)| {
            bad(&|m: &mut WeightsMeta| {
                if let ModelConfig::Arch2(c) = &mut m.config {
                    f(c);
                }
            })
        };
        let e = dense(&|c| c.num_classes = 0);
        assert!(e.contains("num_classes 0"), "{e}");
        let e = dense(&|c| c.in_channels = 100_000);
        assert!(e.contains("in_channels"), "{e}");
        let e = dense(&|c| c.dense_units = usize::MAX / 4);
        assert!(e.contains("dense_units"), "{e}");
        let e = dense(&|c| c.dropout = 1.5);
        assert!(e.contains("dropout"), "{e}");
        let e = bad(&|m: &mut WeightsMeta| m.normalization.std = 0.0);
        assert!(e.starts_with("normalization"), "{e}");
        let e = bad(&|m: &mut WeightsMeta| m.normalization.mean = f32::NAN);
        assert!(e.starts_with("normalization"), "{e}");
    }

    #[test]
    fn truncated_file_is_a_clear_error() {
        let (_, bytes) = arch1_bytes();
        for cut in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
            let err = LoadedWeights::from_bytes(&bytes[..cut], &Device::Cpu).unwrap_err();
            assert!(matches!(err, WeightsError::Corrupt(_)), "cut {cut}: {err}");
        }
    }

    #[test]
    fn wrong_architecture_is_named() {
        let (_, bytes) = arch1_bytes();
        let w = LoadedWeights::from_bytes(&bytes, &Device::Cpu).unwrap();
        let err = w.expect_arch(Arch::Arch3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "weights are for arch1, but arch3 was requested"
        );
    }

    #[test]
    fn missing_tensor_is_named_with_its_shape() {
        let bytes = with_tensors(|t| {
            t.remove("conv2d_6.bias");
        });
        let err = LoadedWeights::from_bytes(&bytes, &Device::Cpu)
            .unwrap()
            .build(&Device::Cpu)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor `conv2d_6.bias` (shape [64]) is missing from the weights"
        );
    }

    #[test]
    fn misshaped_tensor_is_named_with_both_shapes() {
        let bytes = with_tensors(|t| {
            t.insert(
                "conv2d_4.weight".into(),
                Tensor::zeros((16, 16, 3, 3), DType::F32, &Device::Cpu).unwrap(),
            );
        });
        let err = LoadedWeights::from_bytes(&bytes, &Device::Cpu)
            .unwrap()
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor `conv2d_4.weight` has shape [16, 16, 3, 3], the network needs [16, 16, 1, 1]"
        );
    }

    #[test]
    fn weights_of_another_network_do_not_build() {
        // A file claiming ARCH-3 but holding ARCH-1's tensors.
        let (_, bytes) = arch1_bytes();
        let mut w = LoadedWeights::from_bytes(&bytes, &Device::Cpu).unwrap();
        w.meta.config = ModelConfig::preset(Arch::Arch3);
        let err = w.build(&Device::Cpu).unwrap_err();
        assert!(
            matches!(
                err,
                WeightsError::MissingTensor { .. } | WeightsError::ShapeMismatch { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn wrong_dtype_and_foreign_files_are_rejected() {
        let bytes = with_tensors(|t| {
            let f16 = t["conv2d.weight"].to_dtype(DType::F16).unwrap();
            t.insert("conv2d.weight".into(), f16);
        });
        let err = LoadedWeights::from_bytes(&bytes, &Device::Cpu).unwrap_err();
        assert!(matches!(err, WeightsError::WrongDType { .. }), "{err}");

        let plain = safetensors::serialize(
            [("x", Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap())],
            None,
        )
        .unwrap();
        let err = LoadedWeights::from_bytes(&plain, &Device::Cpu).unwrap_err();
        assert!(
            matches!(err, WeightsError::MissingMetadata("format")),
            "{err}"
        );
    }

    #[test]
    fn atomic_save_then_load_into_varmap() {
        let (varmap, _) = arch1_bytes();
        let dir = std::env::temp_dir().join(format!("models-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.safetensors");
        let meta = WeightsMeta::new(ModelConfig::preset(Arch::Arch1), Provenance::default());
        save_varmap(&varmap, &meta, &path).unwrap();
        let fresh = VarMap::new();
        EmotionNet::new(
            &meta.config,
            VarBuilder::from_varmap(&fresh, DType::F32, &Device::Cpu),
        )
        .unwrap();
        LoadedWeights::from_file(&path, &Device::Cpu)
            .unwrap()
            .load_into(&fresh)
            .unwrap();
        let a = varmap.data().lock().unwrap()["conv2d_9.weight"]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let b = fresh.data().lock().unwrap()["conv2d_9.weight"]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, b);
        let err =
            LoadedWeights::from_file(dir.join("absent.safetensors"), &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("absent.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! What `--data` (and friends) name: a FER2013 CSV or an image folder, turned
//! into one dataset with a training and a validation index list.
//!
//! | `--data` | training samples | validation samples |
//! | --- | --- | --- |
//! | FER2013 CSV (`.csv`, `.csv.gz`) | `Usage == Training` | `Usage == PublicTest` |
//! | + `--ferplus FILE` | same rows, FER+ majority labels (and soft targets) | same |
//! | image folder of class sub-folders | every subject not in `--fold K` | subjects of fold K (CK+'s `folds.csv`, else 10 seeded subject folds) |
//!
//! `PrivateTest` rows are never used for training or selection.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::data::{
    Dataset, ErrorPolicy, Fer2013Options, FerPlusOptions, FolderOptions, LoadReport, Usage,
    ckplus_folds, load_fer2013, load_ferplus, load_image_folder,
};

/// Where the data comes from (CLI arguments, also stored in `config.json`).
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSpec {
    /// A FER2013 CSV (`emotion,pixels,Usage`, optionally gzipped) or a folder of
    /// class sub-folders of face images (CK+, your own data).
    #[arg(long)]
    pub data: PathBuf,
    /// FER+ votes (`fer2013new.csv[.gz]`), joined to the FER2013 CSV by line:
    /// train on its majority labels (rows without a clear majority or marked
    /// not-a-face are dropped).
    #[arg(long)]
    pub ferplus: Option<PathBuf>,
    /// With --ferplus: keep FER+'s `contempt` as an eighth class (FER+'s own
    /// label set) instead of dropping the rows where it has the most votes.
    #[arg(long, requires = "ferplus")]
    pub contempt: bool,
    /// Image folders: which subject fold (0-based) is the validation set.
    #[arg(long, default_value_t = 0)]
    pub fold: usize,
    /// Image folders: number of subject folds when the folder has no `folds.csv`.
    #[arg(long, default_value_t = 10)]
    pub folds: usize,
    /// Skip bad CSV rows and unreadable images (and count them) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Use only the first N training samples (smoke tests).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Use only the first N validation samples (smoke tests).
    #[arg(long)]
    pub val_limit: Option<usize>,
}

impl Default for DataSpec {
    /// The command line's defaults (10 subject folds, validation fold 0).
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            ferplus: None,
            contempt: false,
            fold: 0,
            folds: 10,
            skip_bad: false,
            limit: None,
            val_limit: None,
        }
    }
}

/// A loaded dataset with its split.
pub struct Loaded {
    /// Every sample.
    pub dataset: Dataset,
    /// Indices of the training samples.
    pub train: Vec<usize>,
    /// Indices of the validation samples.
    pub val: Vec<usize>,
    /// A short description for logs and metadata, e.g. `fer2013:Training`.
    pub name: String,
    /// What the loader skipped or dropped.
    pub report: LoadReport,
}

/// Whether `path` names a FER2013-style CSV (`.csv` or `.csv.gz`).
pub fn is_csv(path: &Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".csv") || name.ends_with(".csv.gz")
}

impl DataSpec {
    fn policy(&self) -> ErrorPolicy {
        if self.skip_bad {
            ErrorPolicy::Skip
        } else {
            ErrorPolicy::Fail
        }
    }

    /// How many classes the data has: FER+ with `--contempt` has eight, the
    /// rest FER2013's seven (image folders map their sub-folders onto them).
    pub fn num_classes(&self) -> usize {
        if self.ferplus.is_some() && self.contempt {
            crate::data::FERPLUS8_CLASSES.len()
        } else {
            models::FER2013_CLASSES.len()
        }
    }

    /// Loads the data and splits it.
    pub fn load(&self, seed: u64) -> Result<Loaded> {
        let path = &self.data;
        if self.contempt && self.ferplus.is_none() {
            bail!("--contempt is a FER+ class: it needs --ferplus");
        }
        if !path.exists() {
            bail!("--data {} does not exist", path.display());
        }
        let mut loaded = if is_csv(path) {
            let opts = Fer2013Options {
                usage: None,
                on_error: self.policy(),
            };
            let (dataset, report, name) = match &self.ferplus {
                Some(plus) => {
                    let plus_opts = FerPlusOptions {
                        on_error: self.policy(),
                        contempt: self.contempt,
                        ..FerPlusOptions::default()
                    };
                    let (ds, report, _) = load_ferplus(path, plus, &opts, &plus_opts)
                        .with_context(|| format!("loading FER+ labels from {}", plus.display()))?;
                    (ds, report, "ferplus")
                }
                None => {
                    let (ds, report) = load_fer2013(path, &opts)
                        .with_context(|| format!("loading {}", path.display()))?;
                    (ds, report, "fer2013")
                }
            };
            let train = dataset.indices_with_usage(Usage::Training);
            let val = dataset.indices_with_usage(Usage::PublicTest);
            if train.is_empty() {
                bail!("{} has no `Training` rows", path.display());
            }
            Loaded {
                dataset,
                train,
                val,
                name: format!("{name}:Training (selection on PublicTest)"),
                report,
            }
        } else if path.is_dir() {
            let opts = FolderOptions {
                on_error: self.policy(),
                ..FolderOptions::default()
            };
            let (dataset, report) = load_image_folder(path, &opts)
                .with_context(|| format!("loading image folder {}", path.display()))?;
            let folds = ckplus_folds(path, &dataset, self.folds, seed)?;
            if self.fold >= folds.k() {
                bail!(
                    "--fold {} but there are only {} folds",
                    self.fold,
                    folds.k()
                );
            }
            let split = folds.split(&dataset, self.fold)?;
            let dir = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "folder".into());
            Loaded {
                dataset,
                train: split.train,
                val: split.test,
                name: format!(
                    "{dir}: subject fold {} of {} held out",
                    self.fold,
                    folds.k()
                ),
                report,
            }
        } else {
            bail!(
                "--data {} is neither a .csv/.csv.gz file nor a folder",
                path.display()
            );
        };
        if let Some(n) = self.limit {
            loaded.train.truncate(n);
        }
        if let Some(n) = self.val_limit {
            loaded.val.truncate(n);
        }
        if loaded.train.is_empty() {
            bail!(
                "no training samples left in {}{}",
                path.display(),
                if self.limit == Some(0) {
                    " (--limit 0)"
                } else {
                    ""
                }
            );
        }
        if loaded.val.is_empty() {
            bail!("no validation samples in {}", path.display());
        }
        Ok(loaded)
    }
}

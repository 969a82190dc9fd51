//! Datasets: FER2013 CSV files, FER+ crowd labels and folders of class
//! sub-folders (CK+, IMED-like sets, a user's own photos), all turned into one
//! compact in-memory [`Dataset`] of 48x48 gray faces.
//!
//! ```no_run
//! use training::data::{self, Fer2013Options, Usage};
//!
//! let csv = data::shared_data("fer2013/fer2013.csv.gz")?;
//! let (train, report) = data::load_fer2013(&csv, &Fer2013Options::only(Usage::Training))?;
//! assert_eq!(train.len() + report.skipped_rows.len(), 28_709);
//! let face: &[u8] = train.image(0).expect("one image");
//! assert_eq!(face.len(), 48 * 48);
//! # Ok::<(), training::data::DataError>(())
//! ```
//!
//! # Storage and normalisation
//!
//! A [`Dataset`] stores every image as 2304 bytes (48x48, row-major, 0 = black),
//! its label as one byte (for FER2013-mapped sets the index into
//! [`models::FER2013_CLASSES`]: 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad,
//! 5 surprise, 6 neutral) and, optionally, a soft target (a probability
//! distribution over the classes, `f32`). Pixels stay `u8` until a batch is made;
//! they then become network inputs through the project's one normalisation,
//! [`normalization()`] (= [`models::Normalization::default()`], `x = p / 255`),
//! see [`crate::augment::make_batch`].
//!
//! # Bad input
//!
//! Every loader takes an [`ErrorPolicy`]: [`ErrorPolicy::Fail`] (the default)
//! stops at the first bad CSV row or unreadable image with a [`DataError`] that
//! names the file (and, for CSV files, the 1-based line number);
//! [`ErrorPolicy::Skip`] leaves the bad item out and records it, with its reason,
//! in the [`LoadReport`].
//!
//! # Where the data lives
//!
//! [`data_dir()`]: the environment variable `EMOTION_DATA_DIR`, else
//! `<workspace>/../shared/data` (as compiled in). [`shared_data`] resolves a path
//! under it and fails with a message saying how to point it elsewhere.

mod fer2013;
mod ferplus;
mod folder;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use models::Normalization;

pub use fer2013::{Fer2013Options, Usage, load_fer2013, read_fer2013};
pub use ferplus::{
    FERPLUS_COLUMNS, FERPLUS8_CLASSES, FerPlusOptions, FerPlusOutcome, FerPlusReport, FerPlusRow,
    FerPlusVotes, TiePolicy, apply_ferplus, ferplus_outcome, load_ferplus, load_ferplus_votes,
    read_ferplus_votes,
};
pub use folder::{
    ClassPolicy, FoldSplit, FolderOptions, SubjectFolds, ckplus_folds, ckplus_subject,
    fer2013_class_index, load_image_folder,
};
/// The crop recipe datasets share with inference (`perception::crop`).
pub use perception::crop::{ResizeMode, rgb_to_gray, to_gray48};

/// Side length of a stored face, in pixels (= [`models::INPUT_SIZE`]).
pub const IMAGE_SIDE: usize = models::INPUT_SIZE;

/// Bytes per stored face: 48 x 48.
pub const IMAGE_PIXELS: usize = IMAGE_SIDE * IMAGE_SIDE;

/// Number of FER2013 classes (the networks' outputs).
pub const NUM_CLASSES: usize = models::FER2013_CLASSES.len();

/// The environment variable that overrides where the shared data lives.
pub const DATA_DIR_ENV: &str = "EMOTION_DATA_DIR";

/// The data directory compiled in: `<workspace root>/../shared/data`.
pub const DEFAULT_DATA_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data");

/// The project's one input normalisation, `x = p / 255` (pixels in `[0, 1]`):
/// [`models::Normalization::default()`]. Batches are made with it and weights
/// files record it.
pub fn normalization() -> Normalization {
    Normalization::default()
}

/// Where the datasets are: `$EMOTION_DATA_DIR` if set (and not empty), else
/// [`DEFAULT_DATA_DIR`].
pub fn data_dir() -> PathBuf {
    match std::env::var_os(DATA_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_DATA_DIR),
    }
}

/// `relative` under [`data_dir()`], or [`DataError::DataMissing`] (with a hint
/// about `EMOTION_DATA_DIR`) if nothing is there.
pub fn shared_data(relative: impl AsRef<Path>) -> Result<PathBuf, DataError> {
    let path = data_dir().join(relative);
    if path.exists() {
        Ok(path)
    } else {
        Err(DataError::DataMissing { path })
    }
}

/// What a loader does with a bad CSV row or an unreadable image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorPolicy {
    /// Stop with a [`DataError`] naming the file (and line).
    #[default]
    Fail,
    /// Leave the item out; record it and its reason in the [`LoadReport`].
    Skip,
}

/// Why one CSV row was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RowProblem {
    /// The line is empty.
    #[error("empty line")]
    EmptyLine,
    /// The row has fewer fields than the header; the first absent column is named.
    #[error("missing field `{0}`")]
    MissingField(String),
    /// The row has more fields than the header.
    #[error("expected {expected} fields, found {found}")]
    ExtraFields {
        /// Columns in the header.
        expected: usize,
        /// Fields in the row.
        found: usize,
    },
    /// The `emotion` field is not a non-negative integer.
    #[error("label `{0}` is not a number")]
    BadLabel(String),
    /// The `emotion` field is a number outside 0..=6.
    #[error("label {0} is out of range 0..=6")]
    LabelOutOfRange(u64),
    /// The `pixels` field does not hold 48x48 values.
    #[error("expected 2304 pixels, found {0}")]
    PixelCount(usize),
    /// A pixel is not a number.
    #[error("pixel {index} (0-based) `{token}` is not a number")]
    BadPixel {
        /// Position in the row, 0-based.
        index: usize,
        /// The offending text.
        token: String,
    },
    /// A pixel is a number above 255.
    #[error("pixel {index} (0-based) = {value} is above 255")]
    PixelOutOfRange {
        /// Position in the row, 0-based.
        index: usize,
        /// The value (saturated at `u32::MAX`).
        value: u32,
    },
    /// The `Usage` field is not `Training`, `PublicTest` or `PrivateTest`.
    #[error("unknown Usage `{0}` (expected Training, PublicTest or PrivateTest)")]
    UnknownUsage(String),
    /// A FER+ vote is not a number in 0..=255.
    #[error("vote column `{column}` holds `{token}`, not a count")]
    BadVote {
        /// The column.
        column: &'static str,
        /// The offending text.
        token: String,
    },
}

/// What can go wrong loading a dataset.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file or directory could not be opened or listed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reading failed part-way through a text file (truncated or corrupt gzip?).
    #[error("{}:{line}: read error (truncated or corrupt file?): {source}", path.display())]
    ReadLine {
        /// The file.
        path: PathBuf,
        /// The 1-based line being read.
        line: usize,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A CSV file is empty (no header).
    #[error("{}: empty file, expected a CSV header", path.display())]
    EmptyFile {
        /// The file.
        path: PathBuf,
    },
    /// A CSV header lacks a required column or is not the expected one.
    #[error("{}:1: unexpected header `{found}` (expected {expected})", path.display())]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What was expected.
        expected: &'static str,
        /// The header line as found.
        found: String,
    },
    /// A CSV row is malformed (under [`ErrorPolicy::Fail`]).
    #[error("{}:{line}: {problem}", path.display())]
    BadRow {
        /// The file.
        path: PathBuf,
        /// The 1-based line number (the header is line 1).
        line: usize,
        /// What is wrong.
        problem: RowProblem,
    },
    /// A split was requested from a CSV file that has no `Usage` column.
    #[error("{}: no `Usage` column, cannot select {usage} rows", path.display())]
    NoUsageColumn {
        /// The file.
        path: PathBuf,
        /// The requested split.
        usage: Usage,
    },
    /// An image could not be decoded (under [`ErrorPolicy::Fail`]).
    #[error("cannot decode image {}: {source}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's error.
        source: image::ImageError,
    },
    /// An image folder has no usable class sub-folders.
    #[error("{}: no class sub-folders with images", path.display())]
    NoClasses {
        /// The folder.
        path: PathBuf,
    },
    /// A class sub-folder's name matches no FER2013 class ([`ClassPolicy::Fer2013Strict`]).
    #[error("{}: class folder `{name}` is not a FER2013 class", path.display())]
    UnknownClass {
        /// The class folder.
        path: PathBuf,
        /// Its name.
        name: String,
    },
    /// More class sub-folders than labels fit in a byte.
    #[error("{}: {count} class folders, at most 256 are supported", path.display())]
    TooManyClasses {
        /// The folder.
        path: PathBuf,
        /// How many class folders it has.
        count: usize,
    },
    /// A FER2013 row and its FER+ row disagree on `Usage`: the files are not aligned.
    #[error(
        "{}:{line}: FER+ row says {ferplus}, FER2013 line {line} says {fer2013}: the files are not aligned by line",
        path.display()
    )]
    FerPlusMisaligned {
        /// The FER+ file.
        path: PathBuf,
        /// The 1-based line (the same in both files).
        line: usize,
        /// `Usage` in the FER+ file.
        ferplus: Usage,
        /// `Usage` in the FER2013 file.
        fer2013: Usage,
    },
    /// A FER2013 row has no FER+ row (the FER+ file is shorter).
    #[error("{}: no FER+ row for FER2013 line {line} (file has {rows} rows)", path.display())]
    FerPlusMissingRow {
        /// The FER+ file.
        path: PathBuf,
        /// The 1-based FER2013 line.
        line: usize,
        /// Data rows in the FER+ file.
        rows: usize,
    },
    /// FER+ labels can only be joined to samples read from a FER2013 CSV.
    #[error("sample {index} does not come from a FER2013 CSV row, cannot join FER+ labels")]
    NotACsvSample {
        /// The sample's index in the dataset.
        index: usize,
    },
    /// A folds file is malformed.
    #[error("{}:{line}: {problem}", path.display())]
    BadFolds {
        /// The folds file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// A sample has no subject id (its file name does not start with `S<digits>_`).
    #[error("sample {index} has no subject id, cannot split by subject")]
    NoSubject {
        /// The sample's index in the dataset.
        index: usize,
    },
    /// A sample's subject is not assigned to any fold.
    #[error("subject {subject} (sample {index}) is in no fold")]
    SubjectNotInFolds {
        /// The subject id, e.g. `S005`.
        subject: String,
        /// The sample's index in the dataset.
        index: usize,
    },
    /// A fold count or fold index is impossible.
    #[error("invalid folds: {0}")]
    InvalidFolds(String),
    /// A dataset's parts are inconsistent (lengths, labels out of range, bad index).
    #[error("invalid dataset: {0}")]
    InvalidDataset(String),
    /// The shared data is not where it is looked for.
    #[error(
        "shared data not found at {} (set EMOTION_DATA_DIR to the folder holding fer2013/, ferplus/, ckplus48/; see shared/data/README.md)",
        path.display()
    )]
    DataMissing {
        /// The path looked for.
        path: PathBuf,
    },
}

/// A CSV row that was left out under [`ErrorPolicy::Skip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// 1-based line number in the file (the header is line 1).
    pub line: usize,
    /// Why it was left out.
    pub problem: RowProblem,
}

/// An image that was left out under [`ErrorPolicy::Skip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFile {
    /// The file.
    pub path: PathBuf,
    /// Why it was left out (the decoder's message).
    pub reason: String,
}

/// What a loader read, and what it left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Data rows (CSV) or image files seen, whether kept or not.
    pub seen: usize,
    /// Samples in the returned dataset.
    pub kept: usize,
    /// Rows not in the requested split (not checked beyond their `Usage` field).
    pub other_split: usize,
    /// Bad CSV rows left out ([`ErrorPolicy::Skip`]).
    pub skipped_rows: Vec<SkippedRow>,
    /// Unreadable images left out ([`ErrorPolicy::Skip`]).
    pub skipped_files: Vec<SkippedFile>,
    /// Class folders left out because their class is not a FER2013 class
    /// ([`ClassPolicy::Fer2013`]): folder name and number of images.
    pub dropped_classes: Vec<(String, usize)>,
}

/// Where a sample came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A row of a FER2013-format CSV file.
    Row {
        /// 0-based data row (line `row + 2` of the file; the header is line 1).
        /// FER+ labels join on it.
        row: usize,
        /// The row's `Usage`, if the file has that column.
        usage: Option<Usage>,
    },
    /// An image file.
    File {
        /// The file.
        path: PathBuf,
        /// Subject id parsed from the file name (CK+ `S005_001_00000011.png` ->
        /// `S005`), if it has one.
        subject: Option<String>,
    },
}

impl Origin {
    /// The 0-based CSV data row, for CSV samples.
    pub fn row(&self) -> Option<usize> {
        match self {
            Origin::Row { row, .. } => Some(*row),
            Origin::File { .. } => None,
        }
    }

    /// The 1-based CSV line (`row + 2`), for CSV samples.
    pub fn line(&self) -> Option<usize> {
        self.row().map(|r| r + 2)
    }

    /// The CSV row's `Usage`, if known.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            Origin::Row { usage, .. } => *usage,
            Origin::File { .. } => None,
        }
    }

    /// The subject id, for image files named after one.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Origin::File { subject, .. } => subject.as_deref(),
            Origin::Row { .. } => None,
        }
    }
}

/// Faces in memory: `N` 48x48 gray images as `u8` (`N * 2304` bytes), a `u8`
/// label each, optional soft targets (`N * classes` `f32`, each row summing to 1)
/// and where each sample came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    classes: Vec<String>,
    pixels: Vec<u8>,
    labels: Vec<u8>,
    soft_targets: Option<Vec<f32>>,
    origins: Vec<Origin>,
}

impl Dataset {
    /// Builds a dataset from its parts, checking that the lengths agree, that
    /// every label names a class and that soft targets have one row per sample.
    pub fn new(
        classes: Vec<String>,
        pixels: Vec<u8>,
        labels: Vec<u8>,
        soft_targets: Option<Vec<f32>>,
        origins: Vec<Origin>,
    ) -> Result<Self, DataError> {
        let n = labels.len();
        if classes.is_empty() || classes.len() > 256 {
            return Err(DataError::InvalidDataset(format!(
                "{} classes (need 1..=256)",
                classes.len()
            )));
        }
        if pixels.len() != n * IMAGE_PIXELS {
            return Err(DataError::InvalidDataset(format!(
                "{} pixel bytes for {n} labels (need {})",
                pixels.len(),
                n * IMAGE_PIXELS
            )));
        }
        if origins.len() != n {
            return Err(DataError::InvalidDataset(format!(
                "{} origins for {n} labels",
                origins.len()
            )));
        }
        if let Some(i) = labels.iter().position(|&l| usize::from(l) >= classes.len()) {
            return Err(DataError::InvalidDataset(format!(
                "label {} of sample {i} is not below the {} classes",
                labels[i],
                classes.len()
            )));
        }
        if let Some(soft) = &soft_targets {
            if soft.len() != n * classes.len() {
                return Err(DataError::InvalidDataset(format!(
                    "{} soft-target values for {n} samples x {} classes",
                    soft.len(),
                    classes.len()
                )));
            }
            if soft.iter().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(DataError::InvalidDataset(
                    "soft targets must be finite and non-negative".into(),
                ));
            }
        }
        Ok(Self {
            classes,
            pixels,
            labels,
            soft_targets,
            origins,
        })
    }

    /// An empty dataset over `classes`.
    pub fn empty(classes: Vec<String>) -> Self {
        Self {
            classes,
            pixels: Vec::new(),
            labels: Vec::new(),
            soft_targets: None,
            origins: Vec::new(),
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Class names in label order ([`models::FER2013_CLASSES`] for FER2013-mapped data).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Sample `i`'s 2304 pixels (row-major), or `None` past the end.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        self.pixels.get(i * IMAGE_PIXELS..(i + 1) * IMAGE_PIXELS)
    }

    /// Sample `i`'s label, or `None` past the end.
    pub fn label(&self, i: usize) -> Option<u8> {
        self.labels.get(i).copied()
    }

    /// Sample `i`'s soft target (one probability per class), if the dataset has them.
    pub fn soft_target(&self, i: usize) -> Option<&[f32]> {
        let c = self.classes.len();
        self.soft_targets.as_ref()?.get(i * c..(i + 1) * c)
    }

    /// Sample `i`'s origin, or `None` past the end.
    pub fn origin(&self, i: usize) -> Option<&Origin> {
        self.origins.get(i)
    }

    /// All pixels, `len() * 2304` bytes.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// All labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// All soft targets, `len() * classes().len()` values, if present.
    pub fn soft_targets(&self) -> Option<&[f32]> {
        self.soft_targets.as_deref()
    }

    /// All origins.
    pub fn origins(&self) -> &[Origin] {
        &self.origins
    }

    /// Samples per class, in label order.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            counts[usize::from(l)] += 1;
        }
        counts
    }

    /// Indices of the samples from CSV rows with this `Usage`.
    pub fn indices_with_usage(&self, usage: Usage) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.origins[i].usage() == Some(usage))
            .collect()
    }

    /// The distinct subject ids, sorted.
    pub fn subjects(&self) -> Vec<&str> {
        let mut s: Vec<&str> = self.origins.iter().filter_map(Origin::subject).collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// A new dataset of the samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset, DataError> {
        let c = self.classes.len();
        let mut out = Dataset {
            classes: self.classes.clone(),
            pixels: Vec::with_capacity(indices.len() * IMAGE_PIXELS),
            labels: Vec::with_capacity(indices.len()),
            soft_targets: self
                .soft_targets
                .as_ref()
                .map(|_| Vec::with_capacity(indices.len() * c)),
            origins: Vec::with_capacity(indices.len()),
        };
        for &i in indices {
            let (Some(img), Some(label)) = (self.image(i), self.label(i)) else {
                return Err(DataError::InvalidDataset(format!(
                    "index {i} is out of range for {} samples",
                    self.len()
                )));
            };
            out.pixels.extend_from_slice(img);
            out.labels.push(label);
            out.origins.push(self.origins[i].clone());
            if let (Some(dst), Some(src)) = (out.soft_targets.as_mut(), self.soft_target(i)) {
                dst.extend_from_slice(src);
            }
        }
        Ok(out)
    }

    /// Appends one sample (crate-internal: loaders check their inputs).
    pub(crate) fn push(&mut self, pixels: &[u8], label: u8, soft: Option<&[f32]>, origin: Origin) {
        self.pixels.extend_from_slice(pixels);
        self.labels.push(label);
        if let Some(soft) = soft {
            self.soft_targets
                .get_or_insert_with(Vec::new)
                .extend_from_slice(soft);
        }
        self.origins.push(origin);
    }

    /// Gives the pixel buffer to a loader that parses straight into it.
    pub(crate) fn pixels_mut(&mut self) -> &mut Vec<u8> {
        &mut self.pixels
    }

    /// Adds the label and origin for pixels already appended with [`Self::pixels_mut`].
    pub(crate) fn push_meta(&mut self, label: u8, origin: Origin) {
        self.labels.push(label);
        self.origins.push(origin);
    }
}

/// Opens a text file for line-by-line reading; gzip (recognised by its magic
/// bytes, whatever the file's name) is decompressed on the fly.
pub(crate) fn open_text(path: &Path) -> Result<Box<dyn BufRead + Send>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let is_gzip = reader.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
    Ok(if is_gzip {
        let gz: Box<dyn Read + Send> = Box::new(flate2::bufread::MultiGzDecoder::new(reader));
        Box::new(BufReader::with_capacity(1 << 16, gz))
    } else {
        Box::new(reader)
    })
}

/// Longest line a CSV reader accepts: a FER2013 row is under 10 KB, so a
/// longer line is a corrupt or foreign file, refused before it fills memory.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Reads one line into `buf` (without its `\n` / `\r\n`); `Ok(false)` at the
/// end. A line longer than [`MAX_LINE_BYTES`] is an error.
pub(crate) fn next_line(
    reader: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    path: &Path,
    line: usize,
) -> Result<bool, DataError> {
    buf.clear();
    let err = |source| DataError::ReadLine {
        path: path.to_path_buf(),
        line,
        source,
    };
    let n = reader
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', buf)
        .map_err(err)?;
    if n == 0 {
        return Ok(false);
    }
    if n > MAX_LINE_BYTES {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("line longer than {MAX_LINE_BYTES} bytes"),
        )));
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(true)
}

/// Splits a header line into trimmed column names (a UTF-8 BOM is dropped).
pub(crate) fn header_columns(line: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(line);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    text.split(',').map(|c| c.trim().to_owned()).collect()
}

/// Lossy, shortened text of a field for error messages.
pub(crate) fn show(bytes: &[u8]) -> String {
    const MAX: usize = 40;
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() > MAX {
        let short: String = text.chars().take(MAX).collect();
        format!("{short}...")
    } else {
        text.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_line_is_refused_not_read_whole() {
        let mut text = b"emotion,pixels,Usage\n".to_vec();
        text.extend(std::iter::repeat_n(b'1', MAX_LINE_BYTES + 10));
        let mut reader = std::io::Cursor::new(text);
        let mut buf = Vec::new();
        let path = Path::new("long.csv");
        assert!(next_line(&mut reader, &mut buf, path, 1).unwrap());
        let e = next_line(&mut reader, &mut buf, path, 2).unwrap_err();
        assert!(
            e.to_string().contains("long.csv:2:") && e.to_string().contains("longer than"),
            "{e}"
        );
        assert!(buf.len() <= MAX_LINE_BYTES + 1);
    }

    fn origin(row: usize) -> Origin {
        Origin::Row { row, usage: None }
    }

    #[test]
    fn dataset_checks_its_parts() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let ok = Dataset::new(
            classes.clone(),
            vec![0; 2 * IMAGE_PIXELS],
            vec![0, 1],
            Some(vec![1.0, 0.0, 0.5, 0.5]),
            vec![origin(0), origin(1)],
        );
        assert!(ok.is_ok());
        let bad_label = Dataset::new(
            classes.clone(),
            vec![0; IMAGE_PIXELS],
            vec![2],
            None,
            vec![origin(0)],
        );
        assert!(matches!(bad_label, Err(DataError::InvalidDataset(_))));
        let bad_len = Dataset::new(classes.clone(), vec![0; 5], vec![0], None, vec![origin(0)]);
        assert!(matches!(bad_len, Err(DataError::InvalidDataset(_))));
        let bad_soft = Dataset::new(
            classes,
            vec![0; IMAGE_PIXELS],
            vec![0],
            Some(vec![1.0]),
            vec![origin(0)],
        );
        assert!(matches!(bad_soft, Err(DataError::InvalidDataset(_))));
    }

    #[test]
    fn subset_and_accessors() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let mut pixels = vec![0; 3 * IMAGE_PIXELS];
        pixels[IMAGE_PIXELS..2 * IMAGE_PIXELS].fill(7);
        pixels[2 * IMAGE_PIXELS..].fill(9);
        let ds = Dataset::new(
            classes,
            pixels,
            vec![0, 1, 1],
            Some(vec![1.0, 0.0, 0.0, 1.0, 0.25, 0.75]),
            vec![origin(0), origin(1), origin(2)],
        )
        .unwrap();
        assert_eq!(ds.class_counts(), vec![1, 2]);
        let sub = ds.subset(&[2, 0]).unwrap();
        assert_eq!(sub.len(), 2);
        assert_eq!(sub.image(0).unwrap()[0], 9);
        assert_eq!(sub.labels(), &[1, 0]);
        assert_eq!(sub.soft_target(0).unwrap(), &[0.25, 0.75]);
        assert_eq!(sub.origin(0).unwrap().line(), Some(4));
        assert!(ds.subset(&[3]).is_err());
        assert!(ds.image(3).is_none());
    }

    #[test]
    fn missing_shared_data_is_a_clear_error() {
        let err = shared_data("surely/not/here.csv").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("EMOTION_DATA_DIR"), "{msg}");
        assert!(msg.contains("surely/not/here.csv"), "{msg}");
    }

    #[test]
    fn normalization_is_the_models_default() {
        assert_eq!(normalization(), Normalization::default());
        assert_eq!(normalization().apply(255), 1.0);
        assert_eq!(normalization().apply(0), 0.0);
    }
}

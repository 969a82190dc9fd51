//! Folders of class sub-folders (`<dir>/<class>/<image>`): CK+, IMED-like sets,
//! a user's own photos. Any size and colour type of PNG or JPEG; every image
//! becomes a 48x48 gray face ([`perception::crop::to_gray48`]).
//!
//! # Classes
//!
//! Sub-folder names are matched case-insensitively against FER2013's classes
//! and common spellings ([`fer2013_class_index`]: `anger` -> angry, `sadness`
//! -> sad, `happiness` -> happy, `surprised` -> surprise, ...). What happens
//! to a folder that matches none, such as CK+'s `contempt`, is the
//! [`ClassPolicy`]: by default ([`ClassPolicy::Fer2013`]) it is left out and
//! counted in [`LoadReport::dropped_classes`], so labels stay the networks'
//! seven outputs; [`ClassPolicy::OwnClasses`] instead keeps every folder as its
//! own class (sorted names, like Keras' `flow_from_directory`).
//!
//! # Files
//!
//! Files directly inside a class folder whose names end in `.png`, `.jpg` or
//! `.jpeg` (any case) are read, in sorted order; hidden files, other files and
//! deeper folders are ignored. The format is recognised from the content, not
//! the extension. An image that cannot be decoded is an error naming the file
//! ([`ErrorPolicy::Fail`]) or is skipped and listed ([`ErrorPolicy::Skip`]).
//!
//! # Subjects and folds
//!
//! A file name starting `S<digits>_` (CK+: `S005_001_00000011.png`) gives the
//! sample's subject ([`ckplus_subject`]). [`SubjectFolds`] splits by subject, so
//! that the near-identical frames of one person never straddle train and test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rayon::prelude::*;

use perception::crop::{ResizeMode, to_gray48};

use super::{DataError, Dataset, ErrorPolicy, IMAGE_PIXELS, LoadReport, Origin, SkippedFile};

/// How class sub-folders become labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassPolicy {
    /// Labels are [`models::FER2013_CLASSES`]; folders whose name matches no
    /// FER2013 class (e.g. `contempt`) are left out and reported.
    #[default]
    Fer2013,
    /// Like [`ClassPolicy::Fer2013`], but a folder that matches no FER2013
    /// class is an error.
    Fer2013Strict,
    /// Every sub-folder is a class of its own, labelled in sorted name order;
    /// the dataset's class names are the folder names.
    OwnClasses,
}

/// How to read an image folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FolderOptions {
    /// Sub-folder names to labels.
    pub classes: ClassPolicy,
    /// Undecodable images: fail (default) or skip and report.
    pub on_error: ErrorPolicy,
    /// Non-square images.
    pub resize: ResizeMode,
}

/// The FER2013 label for a class-folder name, case-insensitively: the
/// FER2013 name itself or a common variant (`anger`, `sadness`, `happiness`,
/// `disgusted`, `fearful`, `surprised`, ...). `None` for anything else,
/// including `contempt`.
pub fn fer2013_class_index(name: &str) -> Option<u8> {
    let name = name.trim().to_ascii_lowercase();
    let label = match name.as_str() {
        "angry" | "anger" => 0,
        "disgust" | "disgusted" => 1,
        "fear" | "fearful" | "afraid" | "scared" => 2,
        "happy" | "happiness" | "joy" => 3,
        "sad" | "sadness" => 4,
        "surprise" | "surprised" => 5,
        "neutral" => 6,
        _ => return None,
    };
    Some(label)
}

/// The subject id at the start of a CK+-style file name: `S005` for
/// `S005_001_00000011.png`; `None` unless the name starts with `S`, digits and `_`.
pub fn ckplus_subject(file_name: &str) -> Option<&str> {
    let rest = file_name.strip_prefix('S')?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    (digits > 0 && rest.as_bytes().get(digits) == Some(&b'_')).then(|| &file_name[..=digits])
}

fn is_image_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.starts_with('.')
        && (lower.ends_with(".png") || lower.ends_with(".jpg") || lower.ends_with(".jpeg"))
}

fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf, bool)>, DataError> {
    let io = |source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        let is_dir = path.is_dir();
        let name = entry.file_name().to_string_lossy().into_owned();
        out.push((name, path, is_dir));
    }
    out.sort();
    Ok(out)
}

/// Reads `<dir>/<class>/<image>` into a [`Dataset`] of 48x48 gray faces; see
/// the module documentation for classes, files and subjects. Decoding runs in
/// parallel; the result's order (classes sorted, files sorted) does not depend
/// on it.
pub fn load_image_folder(
    dir: impl AsRef<Path>,
    opts: &FolderOptions,
) -> Result<(Dataset, LoadReport), DataError> {
    let dir = dir.as_ref();
    let class_dirs: Vec<(String, PathBuf)> = list_dir(dir)?
        .into_iter()
        .filter(|(name, _, is_dir)| *is_dir && !name.starts_with('.'))
        .map(|(name, path, _)| (name, path))
        .collect();

    let mut report = LoadReport::default();
    let classes: Vec<String> = match opts.classes {
        ClassPolicy::OwnClasses => {
            if class_dirs.len() > 256 {
                return Err(DataError::TooManyClasses {
                    path: dir.to_path_buf(),
                    count: class_dirs.len(),
                });
            }
            class_dirs.iter().map(|(name, _)| name.clone()).collect()
        }
        ClassPolicy::Fer2013 | ClassPolicy::Fer2013Strict => models::FER2013_CLASSES
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    };

    // (path, label, subject) for every image file, in load order.
    let mut files: Vec<(PathBuf, u8, Option<String>)> = Vec::new();
    for (k, (name, path)) in class_dirs.iter().enumerate() {
        let images: Vec<(String, PathBuf)> = list_dir(path)?
            .into_iter()
            .filter(|(n, _, is_dir)| !is_dir && is_image_name(n))
            .map(|(n, p, _)| (n, p))
            .collect();
        let label = match opts.classes {
            ClassPolicy::OwnClasses => u8::try_from(k).ok(),
            ClassPolicy::Fer2013 | ClassPolicy::Fer2013Strict => fer2013_class_index(name),
        };
        let Some(label) = label else {
            if opts.classes == ClassPolicy::Fer2013Strict {
                return Err(DataError::UnknownClass {
                    path: path.clone(),
                    name: name.clone(),
                });
            }
            report.dropped_classes.push((name.clone(), images.len()));
            continue;
        };
        for (file_name, file) in images {
            let subject = ckplus_subject(&file_name).map(str::to_owned);
            files.push((file, label, subject));
        }
    }
    if files.is_empty() {
        return Err(DataError::NoClasses {
            path: dir.to_path_buf(),
        });
    }

    let decoded: Vec<Result<Vec<u8>, DataError>> = files
        .par_iter()
        .map(|(path, _, _)| decode_gray48(path, opts.resize))
        .collect();

    let mut ds = Dataset::empty(classes);
    for ((path, label, subject), pixels) in files.into_iter().zip(decoded) {
        report.seen += 1;
        match pixels {
            Ok(pixels) => ds.push(&pixels, label, None, Origin::File { path, subject }),
            Err(err) => match opts.on_error {
                ErrorPolicy::Fail => return Err(err),
                ErrorPolicy::Skip => {
                    let reason = match err {
                        DataError::Image { source, .. } => source.to_string(),
                        other => other.to_string(),
                    };
                    report.skipped_files.push(SkippedFile { path, reason });
                }
            },
        }
    }
    report.kept = ds.len();
    Ok((ds, report))
}

fn decode_gray48(path: &Path, mode: ResizeMode) -> Result<Vec<u8>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let img = perception::frame::decode_image(&bytes).map_err(|source| DataError::Image {
        path: path.to_path_buf(),
        source,
    })?;
    let pixels = to_gray48(&img, mode);
    debug_assert_eq!(pixels.len(), IMAGE_PIXELS);
    Ok(pixels)
}

/// Train and test sample indices for one fold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldSplit {
    /// Samples of the other folds' subjects.
    pub train: Vec<usize>,
    /// Samples of this fold's subjects.
    pub test: Vec<usize>,
}

/// An assignment of subjects to `k` folds, for subject-disjoint
/// cross-validation: every sample of a subject is in that subject's fold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectFolds {
    k: usize,
    fold_of: BTreeMap<String, usize>,
}

impl SubjectFolds {
    /// Reads a `subject,fold` CSV (as `ckplus48/folds.csv`): a header line,
    /// then one subject per line with its fold, 0-based. `k` is the largest
    /// fold + 1; every fold below it must have a subject.
    pub fn from_csv(path: impl AsRef<Path>) -> Result<Self, DataError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |line: usize, problem: String| DataError::BadFolds {
            path: path.to_path_buf(),
            line,
            problem,
        };
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, h)) if h.trim().eq_ignore_ascii_case("subject,fold") => {}
            Some((_, h)) => return Err(bad(1, format!("header `{h}`, expected `subject,fold`"))),
            None => return Err(bad(1, "empty file".into())),
        }
        let mut fold_of = BTreeMap::new();
        for (i, line) in lines {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split(',');
            let (Some(subject), Some(fold), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(line_no, format!("`{line}` is not `subject,fold`")));
            };
            let subject = subject.trim();
            let fold: usize = fold
                .trim()
                .parse()
                .map_err(|_| bad(line_no, format!("fold `{}` is not a number", fold.trim())))?;
            if subject.is_empty() {
                return Err(bad(line_no, "empty subject".into()));
            }
            if fold_of.insert(subject.to_owned(), fold).is_some() {
                return Err(bad(line_no, format!("subject {subject} listed twice")));
            }
        }
        let k = fold_of.values().max().map_or(0, |m| m + 1);
        Self::checked(k, fold_of).map_err(|e| bad(1, e.to_string()))
    }

    /// Deals subjects to `k` folds: the sorted distinct ids are shuffled with
    /// a seeded `ChaCha8` Fisher-Yates shuffle, then dealt round-robin (the same
    /// recipe as `ckplus48/folds.csv`, though not the same random numbers).
    pub fn shuffled<'a>(
        subjects: impl IntoIterator<Item = &'a str>,
        k: usize,
        seed: u64,
    ) -> Result<Self, DataError> {
        let mut ids: Vec<&str> = subjects.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for i in (1..ids.len()).rev() {
            let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
            ids.swap(i, j);
        }
        let fold_of = ids
            .iter()
            .enumerate()
            .map(|(i, s)| ((*s).to_owned(), i % k.max(1)))
            .collect();
        Self::checked(k, fold_of)
    }

    fn checked(k: usize, fold_of: BTreeMap<String, usize>) -> Result<Self, DataError> {
        if k < 2 {
            return Err(DataError::InvalidFolds(format!("k = {k}, need at least 2")));
        }
        if fold_of.len() < k {
            return Err(DataError::InvalidFolds(format!(
                "{} subjects cannot fill {k} folds",
                fold_of.len()
            )));
        }
        let mut used = vec![false; k];
        for (subject, &f) in &fold_of {
            let Some(slot) = used.get_mut(f) else {
                return Err(DataError::InvalidFolds(format!(
                    "subject {subject} is in fold {f}, but k = {k}"
                )));
            };
            *slot = true;
        }
        if let Some(empty) = used.iter().position(|u| !u) {
            return Err(DataError::InvalidFolds(format!(
                "fold {empty} has no subject"
            )));
        }
        Ok(Self { k, fold_of })
    }

    /// Number of folds.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The fold of a subject.
    pub fn fold_of(&self, subject: &str) -> Option<usize> {
        self.fold_of.get(subject).copied()
    }

    /// The subjects of one fold, sorted.
    pub fn subjects_in(&self, fold: usize) -> Vec<&str> {
        self.fold_of
            .iter()
            .filter(|(_, f)| **f == fold)
            .map(|(s, _)| s.as_str())
            .collect()
    }

    /// Samples of `ds` whose subject is in fold `test_fold` (test) and the rest
    /// (train). Every sample must have a subject that has a fold.
    pub fn split(&self, ds: &Dataset, test_fold: usize) -> Result<FoldSplit, DataError> {
        if test_fold >= self.k {
            return Err(DataError::InvalidFolds(format!(
                "fold {test_fold} asked for, there are {}",
                self.k
            )));
        }
        let mut split = FoldSplit {
            train: Vec::new(),
            test: Vec::new(),
        };
        for (index, origin) in ds.origins().iter().enumerate() {
            let subject = origin.subject().ok_or(DataError::NoSubject { index })?;
            let fold = self
                .fold_of(subject)
                .ok_or_else(|| DataError::SubjectNotInFolds {
                    subject: subject.to_owned(),
                    index,
                })?;
            if fold == test_fold {
                split.test.push(index);
            } else {
                split.train.push(index);
            }
        }
        Ok(split)
    }
}

/// The folds for a CK+-style folder: `<dir>/folds.csv` if it exists (checked to
/// cover every subject of `ds`), else [`SubjectFolds::shuffled`] over `ds`'s
/// subjects with `k` and `seed`.
pub fn ckplus_folds(
    dir: impl AsRef<Path>,
    ds: &Dataset,
    k: usize,
    seed: u64,
) -> Result<SubjectFolds, DataError> {
    let csv = dir.as_ref().join("folds.csv");
    let folds = if csv.exists() {
        SubjectFolds::from_csv(&csv)?
    } else {
        SubjectFolds::shuffled(ds.subjects(), k, seed)?
    };
    // Fails on a sample without a subject or a subject without a fold.
    folds.split(ds, 0)?;
    Ok(folds)
}

#[cfg(test)]
mod tests {
    use image::{GrayImage, ImageBuffer, Luma, Rgb, Rgba};
    use perception::crop::rgb_to_gray;

    use super::*;

    #[test]
    fn class_names_map_onto_fer2013() {
        assert_eq!(fer2013_class_index("anger"), Some(0));
        assert_eq!(fer2013_class_index("Sadness"), Some(4));
        assert_eq!(fer2013_class_index("happy"), Some(3));
        assert_eq!(fer2013_class_index("surprise"), Some(5));
        assert_eq!(fer2013_class_index("neutral"), Some(6));
        assert_eq!(fer2013_class_index("contempt"), None);
        for (i, name) in models::FER2013_CLASSES.iter().enumerate() {
            assert_eq!(fer2013_class_index(name), Some(i as u8));
        }
    }

    #[test]
    fn subject_ids() {
        assert_eq!(ckplus_subject("S005_001_00000011.png"), Some("S005"));
        assert_eq!(ckplus_subject("S1_x.jpg"), Some("S1"));
        assert_eq!(ckplus_subject("S_001.png"), None);
        assert_eq!(ckplus_subject("S005.png"), None);
        assert_eq!(ckplus_subject("im12.png"), None);
    }

    /// `root/happy/a.png` (gray 48x48), `root/Sadness/S010_002_3.jpg` (colour
    /// 64x80), `root/contempt/S011_001_1.png`, `root/anger/broken.png`
    /// (corrupt), plus files that are not images.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for class in ["happy", "Sadness", "contempt", "anger", ".hidden"] {
            std::fs::create_dir(root.join(class)).unwrap();
        }
        GrayImage::from_fn(48, 48, |x, y| Luma([((x + y) * 2) as u8]))
            .save(root.join("happy/a.png"))
            .unwrap();
        ImageBuffer::from_pixel(64, 80, Rgb([10u8, 200, 30]))
            .save(root.join("Sadness/S010_002_3.jpg"))
            .unwrap();
        ImageBuffer::from_pixel(30, 30, Rgba([0u8, 0, 255, 128]))
            .save(root.join("contempt/S011_001_1.png"))
            .unwrap();
        std::fs::write(
            root.join("anger/broken.png"),
            b"\x89PNG\r\n\x1a\nnot really",
        )
        .unwrap();
        std::fs::write(root.join("happy/notes.txt"), b"not an image").unwrap();
        std::fs::write(root.join("README.md"), b"root file").unwrap();
        dir
    }

    #[test]
    fn corrupt_image_fails_naming_the_file() {
        let dir = fixture();
        let err = load_image_folder(dir.path(), &FolderOptions::default()).unwrap_err();
        assert!(matches!(err, DataError::Image { .. }), "{err}");
        assert!(err.to_string().contains("anger/broken.png"), "{err}");
    }

    #[test]
    fn skip_policy_and_fer2013_classes() {
        let dir = fixture();
        let opts = FolderOptions {
            on_error: ErrorPolicy::Skip,
            ..Default::default()
        };
        let (ds, report) = load_image_folder(dir.path(), &opts).unwrap();
        assert_eq!(ds.classes().len(), 7);
        // Sorted folders: Sadness, anger (broken), contempt (dropped), happy.
        assert_eq!(ds.labels(), &[4, 3]);
        assert_eq!(report.seen, 3);
        assert_eq!(report.kept, 2);
        assert_eq!(report.dropped_classes, vec![("contempt".to_string(), 1)]);
        assert_eq!(report.skipped_files.len(), 1);
        assert!(report.skipped_files[0].path.ends_with("anger/broken.png"));
        // The colour JPEG became uniform gray (JPEG is lossy: allow a little).
        let g = i16::from(rgb_to_gray(10, 200, 30));
        assert!(
            ds.image(0)
                .unwrap()
                .iter()
                .all(|&p| (i16::from(p) - g).abs() <= 3)
        );
        assert_eq!(ds.origin(0).unwrap().subject(), Some("S010"));
        // The gray PNG is unchanged.
        assert_eq!(ds.image(1).unwrap()[49], 4);
        assert_eq!(ds.origin(1).unwrap().subject(), None);
    }

    #[test]
    fn own_classes_and_strict_policies() {
        let dir = fixture();
        std::fs::remove_file(dir.path().join("anger/broken.png")).unwrap();
        let strict = FolderOptions {
            classes: ClassPolicy::Fer2013Strict,
            ..Default::default()
        };
        let err = load_image_folder(dir.path(), &strict).unwrap_err();
        assert!(matches!(err, DataError::UnknownClass { ref name, .. } if name == "contempt"));
        let own = FolderOptions {
            classes: ClassPolicy::OwnClasses,
            ..Default::default()
        };
        let (ds, _) = load_image_folder(dir.path(), &own).unwrap();
        assert_eq!(ds.classes(), &["Sadness", "anger", "contempt", "happy"]);
        assert_eq!(ds.labels(), &[0, 2, 3]);
        // The RGBA PNG: alpha ignored, pure blue -> 29, upscaled to 48x48.
        assert!(ds.image(1).unwrap().iter().all(|&p| p == 29));
        assert_eq!(ds.subjects(), vec!["S010", "S011"]);
    }

    #[test]
    fn empty_or_missing_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_image_folder(dir.path(), &FolderOptions::default()).unwrap_err();
        assert!(matches!(err, DataError::NoClasses { .. }));
        let err =
            load_image_folder(dir.path().join("nope"), &FolderOptions::default()).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
    }

    fn subject_dataset(subjects: &[&str]) -> Dataset {
        let mut ds = Dataset::empty(vec!["x".into()]);
        for s in subjects {
            ds.push(
                &[0; IMAGE_PIXELS],
                0,
                None,
                Origin::File {
                    path: PathBuf::from(format!("{s}_001_1.png")),
                    subject: Some((*s).to_owned()),
                },
            );
        }
        ds
    }

    #[test]
    fn shuffled_folds_are_subject_disjoint_and_seeded() {
        let ids: Vec<String> = (0..23).map(|i| format!("S{i:03}")).collect();
        let mut per_sample: Vec<&str> = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            for _ in 0..(1 + i % 4) {
                per_sample.push(id);
            }
        }
        let ds = subject_dataset(&per_sample);
        let folds = SubjectFolds::shuffled(ds.subjects(), 5, 7).unwrap();
        assert_eq!(folds, SubjectFolds::shuffled(ds.subjects(), 5, 7).unwrap());
        assert_ne!(folds, SubjectFolds::shuffled(ds.subjects(), 5, 8).unwrap());
        let mut seen_test = vec![0; ds.len()];
        for f in 0..5 {
            let n = folds.subjects_in(f).len();
            assert!(n == 4 || n == 5, "fold sizes dealt round-robin");
            let split = folds.split(&ds, f).unwrap();
            assert_eq!(split.train.len() + split.test.len(), ds.len());
            let test_subjects: Vec<_> = split
                .test
                .iter()
                .map(|&i| ds.origin(i).unwrap().subject().unwrap())
                .collect();
            for &i in &split.train {
                let s = ds.origin(i).unwrap().subject().unwrap();
                assert!(!test_subjects.contains(&s), "subject {s} in train and test");
            }
            for &i in &split.test {
                seen_test[i] += 1;
            }
        }
        assert!(seen_test.iter().all(|&c| c == 1), "each sample tested once");
        assert!(SubjectFolds::shuffled(ds.subjects(), 1, 0).is_err());
        assert!(SubjectFolds::shuffled(["S1", "S2"], 3, 0).is_err());
        assert!(folds.split(&ds, 5).is_err());
    }

    #[test]
    fn folds_csv() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("folds.csv");
        std::fs::write(&path, "subject,fold\nS001,0\nS002,1\nS003,0\n").unwrap();
        let folds = SubjectFolds::from_csv(&path).unwrap();
        assert_eq!(folds.k(), 2);
        assert_eq!(folds.subjects_in(0), vec!["S001", "S003"]);
        let ds = subject_dataset(&["S001", "S002", "S003", "S002"]);
        let split = folds.split(&ds, 1).unwrap();
        assert_eq!(split.test, vec![1, 3]);
        // ckplus_folds prefers the file; checks coverage.
        assert_eq!(ckplus_folds(dir.path(), &ds, 10, 0).unwrap(), folds);
        let other = subject_dataset(&["S001", "S009"]);
        let err = ckplus_folds(dir.path(), &other, 10, 0).unwrap_err();
        assert!(matches!(err, DataError::SubjectNotInFolds { .. }), "{err}");
        // Without the file it deals its own.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(ckplus_folds(empty.path(), &ds, 2, 0).unwrap().k(), 2);
        // Malformed files.
        for (text, line) in [
            ("subj,f\nS1,0\n", 1),
            ("subject,fold\nS1,x\n", 2),
            ("subject,fold\nS1,0\nS1,1\n", 3),
            ("subject,fold\nS1,0,2\n", 2),
            ("subject,fold\nS1,0\nS2,2\n", 1),
        ] {
            std::fs::write(&path, text).unwrap();
            match SubjectFolds::from_csv(&path) {
                Err(DataError::BadFolds { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}

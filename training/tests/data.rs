//! The dataset loaders on the shared data (`$EMOTION_DATA_DIR`, default
//! `<workspace>/../shared/data`): counts from each folder's `SOURCES.md`.
//! These tests fail, never skip, when the data is missing.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use training::data::{
    self, ClassPolicy, Dataset, Fer2013Options, FerPlusOptions, FerPlusReport, FolderOptions,
    LoadReport, SubjectFolds, Usage,
};

/// A path under the shared data, or a test failure saying where it was looked for.
fn shared(relative: &str) -> std::path::PathBuf {
    data::shared_data(relative).unwrap_or_else(|e| panic!("{e}"))
}

/// FER2013, all rows, loaded once for every test in this file.
fn fer2013() -> &'static (Dataset, LoadReport) {
    static FER: OnceLock<(Dataset, LoadReport)> = OnceLock::new();
    FER.get_or_init(|| {
        data::load_fer2013(shared("fer2013/fer2013.csv.gz"), &Fer2013Options::default())
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

#[test]
fn fer2013_has_training_and_publictest_only() {
    let (ds, report) = fer2013();
    assert_eq!(ds.len(), 32_298);
    assert_eq!(report.seen, 32_298);
    assert!(report.skipped_rows.is_empty());
    // Rows keep their line positions, in order.
    assert!(
        ds.origins()
            .iter()
            .enumerate()
            .all(|(i, o)| o.row() == Some(i))
    );

    let train = ds.subset(&ds.indices_with_usage(Usage::Training)).unwrap();
    let public = ds
        .subset(&ds.indices_with_usage(Usage::PublicTest))
        .unwrap();
    assert_eq!(train.len(), 28_709);
    assert_eq!(public.len(), 3_589);
    assert!(ds.indices_with_usage(Usage::PrivateTest).is_empty());
    // Class counts from fer2013/SOURCES.md (angry..neutral).
    assert_eq!(
        train.class_counts(),
        vec![3995, 436, 4097, 7215, 4830, 3171, 4965]
    );
    assert_eq!(
        public.class_counts(),
        vec![467, 56, 496, 895, 653, 415, 607]
    );
    // The 12 all-black images: 11 Training, 1 PublicTest.
    let black = |d: &Dataset| {
        (0..d.len())
            .filter(|&i| d.image(i).unwrap().iter().all(|&p| p == 0))
            .count()
    };
    assert_eq!((black(&train), black(&public)), (11, 1));
}

#[test]
fn fer2013_usage_filter_on_the_file() {
    let path = shared("fer2013/fer2013.csv.gz");
    let (public, report) =
        data::load_fer2013(&path, &Fer2013Options::only(Usage::PublicTest)).unwrap();
    assert_eq!(public.len(), 3_589);
    assert_eq!(report.other_split, 28_709);
    assert_eq!(public.origin(0).unwrap().row(), Some(28_709));
    let (private, report) =
        data::load_fer2013(&path, &Fer2013Options::only(Usage::PrivateTest)).unwrap();
    assert!(private.is_empty());
    assert_eq!(report.other_split, 32_298);
}

#[test]
fn ferplus_labels_join_by_line() {
    let (votes, report) =
        data::load_ferplus_votes(shared("ferplus/fer2013new.csv.gz"), data::ErrorPolicy::Fail)
            .unwrap();
    assert_eq!(votes.rows.len(), 32_298);
    assert_eq!(report.kept, 32_298);
    let empty_names = votes
        .rows
        .iter()
        .flatten()
        .filter(|r| r.image_name.is_none())
        .count();
    assert_eq!(empty_names, 158);

    let (fer, _) = fer2013();
    let opts = FerPlusOptions::default();
    let train = fer
        .subset(&fer.indices_with_usage(Usage::Training))
        .unwrap();
    let (plus_train, rep) = data::apply_ferplus(&train, &votes, &opts).unwrap();
    assert_eq!(
        rep,
        FerPlusReport {
            kept: 26_778,
            not_face: 150,
            contempt: 162,
            unknown: 170,
            ties: 1_449,
            bad_row: 0,
        }
    );
    // Plurality counts from ferplus/SOURCES.md, in FER2013 order.
    assert_eq!(
        plus_train.class_counts(),
        vec![2399, 175, 648, 7410, 3403, 3378, 9365]
    );
    let public = fer
        .subset(&fer.indices_with_usage(Usage::PublicTest))
        .unwrap();
    let (plus_public, rep) = data::apply_ferplus(&public, &votes, &opts).unwrap();
    assert_eq!(
        rep,
        FerPlusReport {
            kept: 3_372,
            not_face: 11,
            contempt: 24,
            unknown: 25,
            ties: 157,
            bad_row: 0,
        }
    );
    assert_eq!(
        plus_public.class_counts(),
        vec![310, 31, 73, 880, 395, 441, 1242]
    );
    // Soft targets: distributions whose largest entry is the hard label.
    for i in 0..plus_train.len() {
        let soft = plus_train.soft_target(i).unwrap();
        assert!((soft.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let label = usize::from(plus_train.label(i).unwrap());
        assert!(soft.iter().all(|&p| p <= soft[label]));
    }
    // Pixels come from the same FER2013 row.
    let o = plus_train.origin(0).unwrap().row().unwrap();
    assert_eq!(plus_train.image(0), fer.image(o));
}

#[test]
fn ckplus_folder_all_classes() {
    let dir = shared("ckplus48");
    let opts = FolderOptions {
        classes: ClassPolicy::OwnClasses,
        ..Default::default()
    };
    let (ds, report) = data::load_image_folder(&dir, &opts).unwrap();
    assert_eq!(ds.len(), 981);
    assert!(report.skipped_files.is_empty());
    assert_eq!(
        ds.classes(),
        &[
            "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"
        ]
    );
    assert_eq!(ds.class_counts(), vec![135, 54, 177, 75, 207, 84, 249]);
    assert_eq!(ds.subjects().len(), 118);
    assert!(ds.origins().iter().all(|o| o.subject().is_some()));
}

#[test]
fn ckplus_folder_mapped_to_fer2013() {
    let (ds, report) =
        data::load_image_folder(shared("ckplus48"), &FolderOptions::default()).unwrap();
    assert_eq!(ds.len(), 927);
    assert_eq!(report.dropped_classes, vec![("contempt".to_string(), 54)]);
    assert_eq!(ds.classes().len(), 7);
    // angry, disgust, fear, happy, sad, surprise, no neutral.
    assert_eq!(ds.class_counts(), vec![135, 177, 75, 207, 84, 249, 0]);
    assert_eq!(ds.subjects().len(), 106);
}

#[test]
fn ckplus_folds_are_subject_disjoint() {
    let dir = shared("ckplus48");
    let opts = FolderOptions {
        classes: ClassPolicy::OwnClasses,
        ..Default::default()
    };
    let (ds, _) = data::load_image_folder(&dir, &opts).unwrap();
    let folds = data::ckplus_folds(&dir, &ds, 10, 0).unwrap();
    assert_eq!(
        folds,
        SubjectFolds::from_csv(dir.join("folds.csv")).unwrap()
    );
    assert_eq!(folds.k(), 10);
    let mut tested = vec![0; ds.len()];
    for f in 0..folds.k() {
        let split = folds.split(&ds, f).unwrap();
        assert!(!split.test.is_empty());
        let subjects = |idx: &[usize]| -> BTreeSet<&str> {
            idx.iter()
                .map(|&i| ds.origin(i).unwrap().subject().unwrap())
                .collect()
        };
        let test = subjects(&split.test);
        assert!(test.is_disjoint(&subjects(&split.train)), "fold {f}");
        assert_eq!(test.len(), folds.subjects_in(f).len());
        for &i in &split.test {
            tested[i] += 1;
        }
    }
    assert!(tested.iter().all(|&t| t == 1));
}

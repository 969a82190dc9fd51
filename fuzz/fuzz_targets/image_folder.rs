//! The image-folder loader (CK+, your own data): the input is written as one
//! image of a class folder, or (first byte odd) as the folder's `folds.csv`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use training::data::{ErrorPolicy, FolderOptions, SubjectFolds, load_image_folder};

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(d.path().join("happy")).expect("class folder");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let d = dir().path();
    if first & 1 == 1 {
        let path = d.join("folds.csv");
        std::fs::write(&path, rest).expect("write folds");
        let _ = SubjectFolds::from_csv(&path);
    } else {
        std::fs::write(d.join("happy/S005_001_00000001.png"), rest).expect("write image");
        for on_error in [ErrorPolicy::Fail, ErrorPolicy::Skip] {
            let opts = FolderOptions {
                on_error,
                ..FolderOptions::default()
            };
            let _ = load_image_folder(d, &opts);
        }
    }
});

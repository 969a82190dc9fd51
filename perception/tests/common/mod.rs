//! Paths the integration tests share.

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `../shared/data/faces-fullframe`; fails loudly when the shared data is missing.
pub fn faces_dir() -> PathBuf {
    let dir = repo().join("../shared/data/faces-fullframe");
    assert!(
        dir.join("testing.xml").is_file(),
        "shared data missing: {} (see ../shared/data/README.md); this test needs it",
        dir.display()
    );
    dir
}

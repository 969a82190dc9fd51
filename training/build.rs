//! Records the commit the `training` binary is built from, so weights and run
//! records name the source that made them (`train::build_commit`).

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(head) => {
            // Tracked files that differ from HEAD (untracked files do not count:
            // run folders and notes live beside the code).
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_none_or(|s| !s.is_empty());
            if dirty { format!("{head}-dirty") } else { head }
        }
        None => "unknown".to_owned(),
    };
    println!("cargo:rustc-env=TRAINING_BUILD_COMMIT={commit}");

    // Rerun when the commit or the source that goes into the binary changes.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let git_dir = Path::new(&git_dir);
        for f in ["HEAD", "index", "packed-refs", "refs"] {
            println!("cargo:rerun-if-changed={}", git_dir.join(f).display());
        }
    }
    for dir in [
        "src",
        "Cargo.toml",
        "../models/src",
        "../kernels/src",
        "../perception/src",
        "../Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={dir}");
    }
}

//! Shared by the demo's rendering tests: the demo run under Xvfb.

use std::ffi::OsStr;
use std::process::Command;

/// Runs the demo with `args` under `xvfb-run` (a 1280x720 screen, Mesa's
/// software Vulkan) and returns its standard output; fails the test with
/// both outputs' tails when the demo fails.
pub fn run_demo<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new("xvfb-run")
        .args(["-a", "-s", "-screen 0 1280x720x24"])
        .arg(env!("CARGO_BIN_EXE_demo_game"))
        .args(args)
        .env("WGPU_BACKEND", "vulkan")
        .output()
        .expect("xvfb-run not found: install it (.ci/setup does)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr (tail):\n{}",
        stderr.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );
    stdout
}

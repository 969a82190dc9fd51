//! Renders the demo under Xvfb (Mesa's software Vulkan) on the shared face
//! photos, saves a screenshot and checks that the image is not blank and that
//! Ada reacted to the faces. Needs `xvfb-run` (installed by `.ci/setup`) and
//! `../shared/data/faces-fullframe`; fails loudly without them.

mod common;

use std::path::PathBuf;

#[test]
fn demo_renders_and_reacts_under_xvfb() {
    let faces = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/faces-fullframe");
    assert!(faces.is_dir(), "shared data missing: {}", faces.display());
    let tmp = std::env::temp_dir().join(format!("demo-shot-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let shot = tmp.join("shot.png");
    let stdout = common::run_demo([
        "--images".as_ref(),
        faces.as_os_str(),
        "--fps".as_ref(),
        "1".as_ref(),
        "--frames".as_ref(),
        "300".as_ref(),
        "--screenshot".as_ref(),
        shot.as_os_str(),
    ]);
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("demo: "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    let field = |name: &str| -> u64 {
        let mut it = summary.split_whitespace();
        while let Some(w) = it.next() {
            if w == name {
                return it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
        }
        panic!("no `{name}` in `{summary}`")
    };
    assert!(field("perception_frames") >= 3, "{summary}");
    assert!(field("reactions") >= 1, "Ada did not react: {summary}");
    assert!(field("dialogue_steps") >= 1, "{summary}");
    // The screenshot: right size, and far from one flat colour.
    let img = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (1280, 720));
    let n = f64::from(img.width() * img.height());
    let mean: f64 = img
        .pixels()
        .map(|p| f64::from(p[0]) + f64::from(p[1]) + f64::from(p[2]))
        .sum::<f64>()
        / n;
    let var: f64 = img
        .pixels()
        .map(|p| {
            let v = f64::from(p[0]) + f64::from(p[1]) + f64::from(p[2]) - mean;
            v * v
        })
        .sum::<f64>()
        / n;
    assert!(
        var.sqrt() > 20.0,
        "screenshot looks blank (std {})",
        var.sqrt()
    );
    let mut colours = std::collections::HashSet::new();
    for p in img.pixels().step_by(97) {
        colours.insert([p[0] / 16, p[1] / 16, p[2] / 16]);
    }
    assert!(colours.len() > 40, "only {} colours", colours.len());
    let keep = std::env::var_os("DEMO_SHOT_KEEP").map(PathBuf::from);
    if let Some(dst) = keep {
        std::fs::copy(&shot, dst).unwrap();
    }
    std::fs::remove_dir_all(&tmp).ok();
}

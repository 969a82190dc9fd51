//! Decodes images exactly as `perception::Frame::open` does and writes their
//! pixels as raw RGB24 (`<stem>.rgb`, plus `<stem>.json` with the size), so the
//! facenet-pytorch reference (`tools/mtcnn_reference.py`) sees the same pixels
//! as our detector: JPEG decoders differ by a few levels per pixel, and a
//! detector cascade amplifies that. The raw files are scratch, never committed.
//!
//! `cargo run --release -p perception --example decode -- OUT_DIR IMAGE...`

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((out, images)) = args.split_first() else {
        return Err("usage: decode OUT_DIR IMAGE...".into());
    };
    std::fs::create_dir_all(out)?;
    for image in images {
        let frame = perception::Frame::open(image)?;
        let stem = Path::new(image)
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or("image path has no file name")?;
        let out = Path::new(out);
        std::fs::write(out.join(format!("{stem}.rgb")), frame.to_rgb8())?;
        std::fs::write(
            out.join(format!("{stem}.json")),
            format!(
                "{{\"width\": {}, \"height\": {}}}\n",
                frame.width(),
                frame.height()
            ),
        )?;
        println!(
            "{image} -> {stem}.rgb ({}x{})",
            frame.width(),
            frame.height()
        );
    }
    Ok(())
}

//! `training features`: the activations of one named layer (Keras names of the
//! paper's tables, e.g. `conv2d_4`) for one face, drawn as a grid of maps like
//! the paper's Figure 4.

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use models::{INPUT_SIZE, LoadedWeights};
use perception::crop::main_face_crop;
use perception::{Detector, DetectorConfig, Frame, GrayCrop};
use plotters::prelude::*;

use super::plot;

/// One layer's output for one face: `channels` maps of `height x width`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureMaps {
    /// The layer's name.
    pub layer: String,
    /// Number of maps.
    pub channels: usize,
    /// Rows of each map.
    pub height: usize,
    /// Columns of each map.
    pub width: usize,
    /// `channels * height * width` values, channel-major.
    pub values: Vec<f32>,
}

/// The 48x48 face of an image ([`perception::crop::main_face_crop`]): a
/// 48x48 crop aligned to FER2013's framing, otherwise the largest face MTCNN
/// finds, aligned. An image without a face is an error.
pub fn face_of(image: &Path, detector: &Path) -> Result<GrayCrop> {
    let frame = Frame::open(image).with_context(|| format!("reading {}", image.display()))?;
    let detector = Detector::from_file(detector, DetectorConfig::default())
        .with_context(|| format!("loading the face detector {}", detector.display()))?;
    main_face_crop(&detector, &frame)?.with_context(|| {
        format!(
            "no face found in {} (give a photo with a face, or a 48x48 face crop)",
            image.display()
        )
    })
}

/// The output of `layer` when the network of `weights` classifies `face`.
/// An unknown layer name is an error that lists the network's layers.
pub fn feature_maps(weights: &LoadedWeights, face: &GrayCrop, layer: &str) -> Result<FeatureMaps> {
    let device = Device::Cpu;
    let net = weights.build(&device)?;
    let norm = weights.meta.normalization;
    let pixels: Vec<f32> = face.pixels().iter().map(|&p| norm.apply(p)).collect();
    let x = Tensor::from_vec(pixels, (1, 1, INPUT_SIZE, INPUT_SIZE), &device)?;
    let mut names = Vec::new();
    let mut found: Option<Tensor> = None;
    {
        let mut record = |name: &str, t: &Tensor| {
            if name == layer && found.is_none() {
                found = Some(t.clone());
            }
            names.push(name.to_owned());
        };
        let mut tap: models::Tap = Some(&mut record);
        net.forward_traced(&x, false, &mut tap)?;
    }
    let Some(t) = found else {
        bail!(
            "{} has no layer `{layer}`; its layers are: {}",
            weights.meta.arch(),
            names.join(", ")
        );
    };
    let dims = t.dims().to_vec();
    let (channels, height, width) = match dims.as_slice() {
        [1, c, h, w] => (*c, *h, *w),
        [1, n] => (*n, 1, 1),
        _ => bail!("layer `{layer}` has an unexpected shape {dims:?}"),
    };
    Ok(FeatureMaps {
        layer: layer.to_owned(),
        channels,
        height,
        width,
        values: t.flatten_all()?.to_vec1::<f32>()?,
    })
}

/// Loads `model`, finds the face in `image` (with the MTCNN weights
/// `detector`), computes `layer`'s maps and draws them to `out`, titled with
/// the layer, architecture and file names. Returns the maps and architecture.
pub fn draw(
    model: &Path,
    image: &Path,
    detector: &Path,
    layer: &str,
    out: &Path,
) -> Result<(FeatureMaps, models::Arch)> {
    let weights = LoadedWeights::from_file(model, &Device::Cpu)
        .with_context(|| format!("loading {}", model.display()))?;
    let face = face_of(image, detector)?;
    let maps = feature_maps(&weights, &face, layer)?;
    let file = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let arch = weights.meta.arch();
    let title = format!("{layer} of {arch} ({}) for {}", file(model), file(image));
    render(&maps, &face, &title, out)?;
    Ok((maps, arch))
}

/// Draws the input face and every map (each scaled to its own min..max,
/// viridis) in a grid, with a title, and writes a PNG.
pub fn render(maps: &FeatureMaps, face: &GrayCrop, title: &str, out: &Path) -> Result<()> {
    let c = maps.channels;
    let cols = (((c + 1) as f64).sqrt().ceil() as usize).max(1);
    let rows = (c + 1).div_ceil(cols);
    let cell = 128u32;
    let gap = 8u32;
    let head = 40u32;
    let label = 18u32;
    let width = cols as u32 * (cell + gap) + gap;
    let height = head + rows as u32 * (cell + label + gap) + gap;
    plot::png(out, (width, height), |root| {
        root.draw(&Text::new(
            title.to_owned(),
            (gap as i32, 10),
            plot::text(18),
        ))
        .map_err(plot::err)?;
        for panel in 0..=c {
            let (r, col) = (panel / cols, panel % cols);
            let x0 = (gap + col as u32 * (cell + gap)) as i32;
            let y0 = (head + r as u32 * (cell + label + gap)) as i32;
            let (caption, h, w, values): (String, usize, usize, Vec<f32>) = if panel == 0 {
                let v = face
                    .pixels()
                    .iter()
                    .map(|&p| f32::from(p) / 255.0)
                    .collect();
                ("input".into(), INPUT_SIZE, INPUT_SIZE, v)
            } else {
                let i = panel - 1;
                let n = maps.height * maps.width;
                let map = &maps.values[i * n..(i + 1) * n];
                let (lo, hi) = map
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                        (a.min(v), b.max(v))
                    });
                let span = if hi > lo { hi - lo } else { 1.0 };
                let v = map.iter().map(|&x| (x - lo) / span).collect();
                (format!("{i}"), maps.height, maps.width, v)
            };
            root.draw(&Text::new(caption, (x0, y0), plot::text(14)))
                .map_err(plot::err)?;
            let top = y0 + label as i32;
            for yy in 0..cell as i32 {
                for xx in 0..cell as i32 {
                    let sy = (yy as usize * h / cell as usize).min(h - 1);
                    let sx = (xx as usize * w / cell as usize).min(w - 1);
                    let v = values[sy * w + sx];
                    let color = if panel == 0 {
                        let g = (v * 255.0).round() as u8;
                        RGBColor(g, g, g)
                    } else {
                        plot::viridis(v)
                    };
                    root.draw_pixel((x0 + xx, top + yy), &color)
                        .map_err(plot::err)?;
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn untrained(arch: models::Arch) -> LoadedWeights {
        LoadedWeights::untrained(arch, &Device::Cpu).unwrap()
    }

    #[test]
    fn conv2d_4_of_arch1_is_16_maps_of_24x24() {
        let w = untrained(models::Arch::Arch1);
        let face = GrayCrop::new((0..2304).map(|i| (i % 256) as u8).collect()).unwrap();
        let m = feature_maps(&w, &face, "conv2d_4").unwrap();
        assert_eq!((m.channels, m.height, m.width), (16, 24, 24));
        assert_eq!(m.values.len(), 16 * 24 * 24);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("maps.png");
        render(&m, &face, "conv2d_4", &out).unwrap();
        let img = image::open(&out).unwrap().to_rgb8();
        // 17 panels (input + 16) in a 5x4 grid.
        assert_eq!(img.width(), 5 * 136 + 8);
    }

    #[test]
    fn unknown_layer_lists_the_layers() {
        let w = untrained(models::Arch::Arch3);
        let face = GrayCrop::new(vec![128; 2304]).unwrap();
        let e = feature_maps(&w, &face, "conv2d_99")
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no layer `conv2d_99`"), "{e}");
        assert!(e.contains("conv2d_3"), "{e}");
    }
}

//! Chart drawing for `training report` and `training features`: plotters on an
//! in-memory RGB buffer, text in the Ubuntu font that egui ships (embedded, so
//! figures look the same on every machine), PNG written by the `image` crate.
//!
//! Everything here is deterministic: the same numbers give the same bytes.

use std::ops::Range;
use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

/// The font family every chart uses.
pub const FONT: &str = "sans-serif";

/// Colours of series 0, 1, 2, ... (colour-blind-safe Okabe-Ito order).
pub const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
];

static FONT_ONCE: Once = Once::new();

/// Registers the embedded font with plotters (once per process).
fn register_font() {
    FONT_ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The bytes are a valid TrueType font shipped by a crates.io
            // crate; a failure would leave text undrawn, not crash.
            let _ = plotters::style::register_font(FONT, style, epaint_default_fonts::UBUNTU_LIGHT);
        }
    });
}

/// Maps a plotters drawing error into `anyhow`.
pub fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// Draws into a fresh white `width x height` canvas with `draw`, then writes it
/// to `out` as PNG.
pub fn png(
    out: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    register_font();
    let mut buf = vec![255u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    let img = image::RgbImage::from_raw(width, height, buf).context("image buffer")?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    img.save_with_format(out, image::ImageFormat::Png)
        .with_context(|| format!("writing {}", out.display()))
}

/// A text style of the chart font.
pub fn text(size: u32) -> TextStyle<'static> {
    (FONT, size).into_font().into()
}

/// The viridis colour map at `t` in `[0, 1]` (clamped).
pub fn viridis(t: f32) -> RGBColor {
    // Eleven control points of matplotlib's viridis, linearly interpolated.
    const STOPS: [[u8; 3]; 11] = [
        [68, 1, 84],
        [72, 36, 117],
        [65, 68, 135],
        [53, 95, 141],
        [42, 120, 142],
        [33, 145, 140],
        [34, 168, 132],
        [68, 191, 112],
        [122, 209, 81],
        [189, 223, 38],
        [253, 231, 37],
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    let mix = |a: u8, b: u8| (f32::from(a) + (f32::from(b) - f32::from(a)) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(mix(a[0], b[0]), mix(a[1], b[1]), mix(a[2], b[2]))
}

/// One series of a line chart.
pub struct Series<'a> {
    /// Legend label.
    pub label: &'a str,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
    /// Colour index into [`PALETTE`].
    pub color: usize,
    /// Dashed (validation) or solid (training).
    pub dashed: bool,
}

/// Where a line chart's legend goes (away from where its lines usually are).
#[derive(Debug, Clone, Copy)]
pub enum Legend {
    /// Top right: for falling curves (losses).
    UpperRight,
    /// Bottom right: for rising curves (accuracies).
    LowerRight,
}

/// A line chart with a legend in `area`.
pub fn line_chart(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    (x_label, y_label): (&str, &str),
    series: &[Series<'_>],
    legend: Legend,
) -> Result<()> {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x_max, mut y_min, mut y_max) = (1f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x_max = x_max.max(x);
        if y.is_finite() {
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.08).max(1e-3);
    let y_range: Range<f64> = (y_min - pad).max(0.0)..y_max + pad;
    let mut chart = ChartBuilder::on(area)
        .caption(title, text(20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max.max(1.0), y_range)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if y.abs() >= 10.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .x_desc(x_label)
        .y_desc(y_label)
        .label_style(text(13))
        .axis_desc_style(text(15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    for s in series {
        let color = PALETTE[s.color % PALETTE.len()];
        let style = color.stroke_width(2);
        let points = s.points.iter().copied().filter(|(_, y)| y.is_finite());
        let drawn = if s.dashed {
            chart.draw_series(DashedLineSeries::new(points, 6, 4, style))
        } else {
            chart.draw_series(LineSeries::new(points, style))
        };
        drawn
            .map_err(err)?
            .label(s.label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font(text(13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .position(match legend {
            Legend::UpperRight => SeriesLabelPosition::UpperRight,
            Legend::LowerRight => SeriesLabelPosition::LowerRight,
        })
        .draw()
        .map_err(err)?;
    Ok(())
}

/// One bar of a grouped bar chart.
pub struct Bar {
    /// Group (x position) index.
    pub group: usize,
    /// Series index within the group (colour).
    pub series: usize,
    /// Height.
    pub value: f64,
    /// Half-length of an error bar, if any.
    pub error: Option<f64>,
    /// Text printed above the bar.
    pub label: String,
}

/// A grouped bar chart: `groups` along x, `series` bars per group, optional
/// reference markers (`(group, series, value)`, drawn as black diamonds).
pub fn grouped_bars(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[String],
    bars: &[Bar],
    markers: &[(usize, usize, f64)],
    y_max: f64,
) -> Result<()> {
    let n_series = series.len().max(1) as f64;
    let width = 0.8 / n_series;
    let x_of = |group: usize, s: usize| group as f64 + 0.1 + width * (s as f64 + 0.5);
    let mut chart = ChartBuilder::on(area)
        .caption(title, text(20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..groups.len().max(1) as f64, 0.0..y_max)
        .map_err(err)?;
    let names = groups.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len().max(1) * 2 + 1)
        .x_label_formatter(&move |x| {
            let centre = x - x.floor();
            if (centre - 0.5).abs() < 1e-6 {
                names.get(x.floor() as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc(y_label)
        .label_style(text(14))
        .axis_desc_style(text(15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(err)?;
    for b in bars {
        let color = PALETTE[b.series % PALETTE.len()];
        let x = x_of(b.group, b.series);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [
                    (x - width / 2.0 + 0.005, 0.0),
                    (x + width / 2.0 - 0.005, b.value),
                ],
                color.filled(),
            )))
            .map_err(err)?;
        let mut top = b.value;
        if let Some(e) = b.error {
            top += e;
            chart
                .draw_series(std::iter::once(ErrorBar::new_vertical(
                    x,
                    (b.value - e).max(0.0),
                    b.value,
                    b.value + e,
                    BLACK.stroke_width(1),
                    8,
                )))
                .map_err(err)?;
        }
        // The value inside the bar's top when it fits and no marker sits
        // there (it would hide the text), else above the bar.
        let marker_inside = markers.iter().any(|&(g, s, v)| {
            g == b.group && s == b.series && v <= b.value && v > b.value - y_max * 0.06
        });
        let (pos, ink) = if b.value > y_max * 0.08 && b.error.is_none() && !marker_inside {
            (b.value - y_max * 0.01, WHITE)
        } else {
            (top + y_max * 0.035, BLACK)
        };
        chart
            .draw_series(std::iter::once(Text::new(
                b.label.clone(),
                (x - width / 2.0 + width * 0.08, pos),
                text(11).color(&ink),
            )))
            .map_err(err)?;
    }
    for &(group, s, value) in markers {
        let x = x_of(group, s);
        chart
            .draw_series(std::iter::once(Polygon::new(
                vec![
                    (x, value + y_max * 0.012),
                    (x + width * 0.22, value),
                    (x, value - y_max * 0.012),
                    (x - width * 0.22, value),
                ],
                BLACK.filled(),
            )))
            .map_err(err)?;
    }
    // Legend: one swatch per series, plus the marker when there are markers.
    for (i, name) in series.iter().enumerate() {
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, 0.0), (0.0, 0.0)],
                PALETTE[i % PALETTE.len()].filled(),
            )))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                Rectangle::new(
                    [(x, y - 6), (x + 14, y + 6)],
                    PALETTE[i % PALETTE.len()].filled(),
                )
            });
    }
    if !markers.is_empty() {
        chart
            .draw_series(std::iter::once(Circle::new((0.0, 0.0), 0, BLACK.filled())))
            .map_err(err)?
            .label("paper")
            .legend(|(x, y)| {
                Polygon::new(
                    vec![(x + 7, y - 6), (x + 13, y), (x + 7, y + 6), (x + 1, y)],
                    BLACK.filled(),
                )
            });
    }
    chart
        .configure_series_labels()
        .label_font(text(13))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(200, 200, 200))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// A heat map of `rows x cols` values in `[0, 1]` with a text per cell, row
/// and column labels: a confusion matrix.
pub fn heat_map(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    (row_label, col_label): (&str, &str),
    labels: &[String],
    values: &[f64],
    cell_text: &[String],
) -> Result<()> {
    let k = labels.len();
    let mut chart = ChartBuilder::on(area)
        .caption(title, text(18))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..k as f64, 0.0..k as f64)
        .map_err(err)?;
    let (xl, yl) = (labels.to_vec(), labels.to_vec());
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(2 * k + 1)
        .y_labels(2 * k + 1)
        .x_label_formatter(&move |x| centred_label(&xl, *x, false))
        .y_label_formatter(&move |y| centred_label(&yl, *y, true))
        .x_desc(col_label)
        .y_desc(row_label)
        .label_style(text(12))
        .axis_desc_style(text(14))
        .draw()
        .map_err(err)?;
    for r in 0..k {
        for c in 0..k {
            let v = values.get(r * k + c).copied().unwrap_or(0.0);
            // Row 0 at the top.
            let y0 = (k - 1 - r) as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(c as f64, y0), (c as f64 + 1.0, y0 + 1.0)],
                    viridis(v as f32).filled(),
                )))
                .map_err(err)?;
            let ink = if v > 0.6 { BLACK } else { WHITE };
            let label = cell_text.get(r * k + c).cloned().unwrap_or_default();
            chart
                .draw_series(std::iter::once(Text::new(
                    label,
                    (c as f64 + 0.12, y0 + 0.62),
                    text(12).color(&ink),
                )))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// The label of the cell whose centre is at `x`, for axes with a tick every
/// half cell; `flip` counts from the top.
fn centred_label(labels: &[String], x: f64, flip: bool) -> String {
    let k = labels.len();
    if (x - x.floor() - 0.5).abs() > 1e-6 {
        return String::new();
    }
    let i = x.floor() as usize;
    let i = if flip {
        k.wrapping_sub(1).wrapping_sub(i)
    } else {
        i
    };
    labels.get(i).cloned().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viridis_ends_and_clamps() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(7.0), viridis(1.0));
        assert_eq!(viridis(f32::NAN), viridis(0.0));
    }

    #[test]
    fn charts_are_deterministic_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let draw = |name: &str| {
            let path = dir.path().join(name);
            png(&path, (400, 300), |root| {
                line_chart(
                    root,
                    "t",
                    ("epoch", "accuracy"),
                    &[Series {
                        label: "train",
                        points: vec![(1.0, 0.2), (2.0, 0.5), (3.0, f64::NAN)],
                        color: 0,
                        dashed: false,
                    }],
                    Legend::LowerRight,
                )
            })
            .unwrap();
            std::fs::read(path).unwrap()
        };
        let (a, b) = (draw("a.png"), draw("b.png"));
        assert_eq!(a, b);
        let img = image::load_from_memory(&a).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (400, 300));
        assert!(img.pixels().any(|p| p.0 != [255, 255, 255]));
    }
}

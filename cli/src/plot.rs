//! Pictures, as SVG or PNG by the file's extension, drawn with plotters in a font carried in
//! the binary (DejaVu Sans, cli/assets), so no system font is needed.
//!
//! - [`sparsity_per_layer`]: the sparsity of every layer, one line per matrix type.
//! - [`perplexity_vs_sparsity`]: perplexity (log scale) against sparsity, one series per method.
//! - [`sparsity_by_layer`]: the sparsity of every layer, one line per allocation.
//! - [`perplexity_over_steps`]: perplexity (log scale) during fine-tuning, one line per variant.

use std::{collections::BTreeMap, path::Path, sync::Once};

use anyhow::{anyhow, Context};
use birdbone_host::{role_of, PassReport};
use plotters::{coord::Shift, prelude::*};

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // A font that was carried in the binary and parsed before cannot fail to parse.
            let _ = plotters::style::register_font("sans-serif", style, bytes);
        }
    });
}

/// Line colours, in series order.
pub const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// One named series of points.
pub struct Series {
    /// The legend's name.
    pub name: String,
    /// (x, y) points, drawn joined when `line`.
    pub points: Vec<(f64, f64)>,
    /// Joined by a line, or markers only.
    pub line: bool,
}

/// A chart: title, axis descriptions, log-scale y or not.
struct Chart<'a> {
    title: &'a str,
    x_desc: &'a str,
    y_desc: &'a str,
    log_y: bool,
    /// A fixed y range (a percentage: 0 to 100), else fitted to the points.
    y_range: Option<(f64, f64)>,
    /// Where the legend goes: where the points rarely are.
    legend_at: SeriesLabelPosition,
    series: &'a [Series],
}

/// Per layer and matrix type: weights and pruned weights.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerRow {
    /// The block index (none for parameters outside the blocks).
    pub layer: Option<u32>,
    /// The matrix type (q_proj, down_proj, ...).
    pub kind: String,
    /// Weights.
    pub numel: u64,
    /// Pruned weights.
    pub pruned: u64,
    /// pruned / numel.
    pub sparsity: f64,
}

/// The report's parameters by layer and matrix type.
pub fn layer_rows(r: &PassReport) -> Vec<LayerRow> {
    let mut acc: BTreeMap<(Option<u32>, String), (u64, u64)> = BTreeMap::new();
    for p in &r.params {
        let role = role_of(&p.name);
        let e = acc
            .entry((role.layer.into_option(), role.kind.to_string()))
            .or_default();
        e.0 += p.numel;
        e.1 += p.pruned;
    }
    acc.into_iter()
        .map(|((layer, kind), (numel, pruned))| LayerRow {
            layer,
            kind,
            numel,
            pruned,
            sparsity: pruned as f64 / numel.max(1) as f64,
        })
        .collect()
}

/// The sparsity of every layer by matrix type, as a picture at `path` (.svg or .png).
pub fn sparsity_per_layer(r: &PassReport, title: &str, path: &Path) -> anyhow::Result<()> {
    let mut by_kind: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for row in layer_rows(r) {
        if let Some(layer) = row.layer {
            by_kind
                .entry(row.kind)
                .or_default()
                .push((layer as f64, 100.0 * row.sparsity));
        }
    }
    anyhow::ensure!(
        !by_kind.is_empty(),
        "no pruned parameter belongs to a numbered layer: nothing to plot"
    );
    let series: Vec<Series> = by_kind
        .into_iter()
        .map(|(name, points)| Series {
            name,
            points,
            line: true,
        })
        .collect();
    draw(
        path,
        &Chart {
            title,
            x_desc: "layer (block index)",
            y_desc: "sparsity (% of weights pruned)",
            log_y: false,
            y_range: Some((0.0, 100.0)),
            legend_at: SeriesLabelPosition::LowerLeft,
            series: &series,
        },
    )
}

/// Sparsity (%) against layer, one series per allocation, at `path` (.svg or .png).
pub fn sparsity_by_layer(series: &[Series], title: &str, path: &Path) -> anyhow::Result<()> {
    draw(
        path,
        &Chart {
            title,
            x_desc: "layer",
            y_desc: "sparsity (% of the layer's Linear weights)",
            log_y: false,
            y_range: None,
            legend_at: SeriesLabelPosition::UpperRight,
            series,
        },
    )
}

/// Perplexity against sparsity, one series per method, at `path` (.svg or .png).
pub fn perplexity_vs_sparsity(series: &[Series], title: &str, path: &Path) -> anyhow::Result<()> {
    draw(
        path,
        &Chart {
            title,
            x_desc: "sparsity (% of Linear weights pruned)",
            y_desc: "perplexity (log scale)",
            log_y: true,
            y_range: None,
            legend_at: SeriesLabelPosition::UpperLeft,
            series,
        },
    )
}

/// Perplexity against the fine-tuning step, one series per variant, at `path` (.svg or .png).
pub fn perplexity_over_steps(series: &[Series], title: &str, path: &Path) -> anyhow::Result<()> {
    draw(
        path,
        &Chart {
            title,
            x_desc: "fine-tuning step",
            y_desc: "perplexity (log scale)",
            log_y: true,
            y_range: None,
            legend_at: SeriesLabelPosition::UpperRight,
            series,
        },
    )
}

fn draw(path: &Path, c: &Chart) -> anyhow::Result<()> {
    register_font();
    let size = (960, 600);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let result = match ext {
        "svg" => render(SVGBackend::new(path, size).into_drawing_area(), c),
        "png" => render(BitMapBackend::new(path, size).into_drawing_area(), c),
        _ => anyhow::bail!("{}: a picture is .svg or .png", path.display()),
    };
    result.with_context(|| format!("drawing {}", path.display()))
}

fn render<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &Chart) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e}");
    root.fill(&WHITE).map_err(e)?;
    let pts = c.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    anyhow::ensure!(x0 <= x1, "no points to plot");
    let xpad = ((x1 - x0) * 0.04).max(0.5);
    let mut chart = ChartBuilder::on(&root);
    chart
        .caption(c.title, ("sans-serif", 22))
        .margin(18)
        .x_label_area_size(52)
        .y_label_area_size(72);
    // The two y axes have different coordinate types; the rest of the chart is the same.
    macro_rules! finish {
        ($ch:expr) => {{
            let mut ch = $ch.map_err(e)?;
            ch.configure_mesh()
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| {
                    if *y >= 10.0 || !c.log_y {
                        format!("{y:.0}")
                    } else {
                        format!("{y:.1}")
                    }
                })
                .x_desc(c.x_desc)
                .y_desc(c.y_desc)
                .label_style(("sans-serif", 14))
                .axis_desc_style(("sans-serif", 16))
                .draw()
                .map_err(e)?;
            for (i, s) in c.series.iter().enumerate() {
                draw_series(&mut ch, s, COLOURS[i % COLOURS.len()]).map_err(e)?;
            }
            legend(&mut ch, c).map_err(e)?;
        }};
    }
    let xs = x0 - xpad..x1 + xpad;
    if c.log_y {
        // Labels at 1, 2, 3 and 5 of every decade (plotters' own skip most of a short span).
        let (lo, hi) = (y0 / 1.25, y1 * 1.25);
        let mut keys = Vec::new();
        let mut decade = 10f64.powf(lo.log10().floor());
        while decade <= hi {
            keys.extend(
                [1.0, 2.0, 3.0, 5.0]
                    .iter()
                    .map(|m| m * decade)
                    .filter(|k| (lo..=hi).contains(k)),
            );
            decade *= 10.0;
        }
        finish!(chart.build_cartesian_2d(xs, (lo..hi).log_scale().with_key_points(keys)));
    } else {
        let span = (y1 - y0).max(1.0);
        let (lo, hi) = c
            .y_range
            .unwrap_or(((y0 - 0.1 * span).max(0.0), y1 + 0.35 * span));
        finish!(chart.build_cartesian_2d(xs, lo..hi));
    }
    root.present().map_err(e)?;
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    ch: &mut ChartContext<'a, DB, CT>,
    c: &Chart,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    ch.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(c.legend_at.clone())
        .draw()
}

fn draw_series<'a, DB: DrawingBackend + 'a, CT>(
    ch: &mut ChartContext<'a, DB, CT>,
    s: &Series,
    colour: RGBColor,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    CT: CoordTranslate<From = (f64, f64)>,
{
    if s.line {
        ch.draw_series(LineSeries::new(s.points.clone(), colour.stroke_width(2)))?;
    }
    ch.draw_series(
        s.points
            .iter()
            .map(move |&p| Circle::new(p, 4, colour.filled())),
    )?
    .label(s.name.clone())
    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], colour.stroke_width(3)));
    Ok(())
}

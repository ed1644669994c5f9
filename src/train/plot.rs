//! PNG line charts with plotters' bitmap backend.
//!
//! Text is drawn with an embedded DejaVu Sans (assets/, Bitstream Vera / DejaVu licence)
//! through plotters' `ab_glyph` feature, registered on first use: no system fonts, fontconfig
//! or font-kit are needed, so plots render the same on a bare CI machine.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::log::io_error;
use crate::error::{Error, Result};

/// The family name the embedded font is registered under.
const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register() -> Result<()> {
    let mut ok = true;
    REGISTER.call_once(|| ok = register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Io { context: "assets/DejaVuSans.ttf".into(), msg: "not a usable font".into() })
    }
}

/// Colours by series index: distinguishable, also in greyscale order.
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// One line.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub name: String,
    /// (x, y) points in drawing order; non-finite points are dropped.
    pub points: Vec<(f64, f64)>,
    /// Colour index (cycles through eight colours).
    pub color: usize,
    /// Dashed instead of solid.
    pub dashed: bool,
}

/// One panel: axes, labels and lines. Axes are linear: a quantity spanning decades is plotted
/// as its log10 by the caller (plotters' log axes label only powers of ten, so a curve within one
/// decade got no labels at all).
#[derive(Debug, Clone, Default)]
pub struct Chart {
    /// Title above the panel.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
    /// Legend in the lower right instead of the upper right.
    pub legend_low: bool,
}

/// Draws `charts` as a grid of `cols` columns into a PNG of `panel` pixels per chart.
pub fn save(path: &Path, charts: &[Chart], cols: usize, panel: (u32, u32)) -> Result<()> {
    register()?;
    let cols = cols.clamp(1, charts.len().max(1));
    let rows = charts.len().div_ceil(cols).max(1);
    let size = (panel.0 * cols as u32, panel.1 * rows as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| io_error(path, e))?;
    for (area, chart) in root.split_evenly((rows, cols)).iter().zip(charts) {
        draw(area, chart).map_err(|e| io_error(path, e))?;
    }
    root.present().map_err(|e| io_error(path, e))
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// Axis range with a 5% margin; a degenerate range is widened so the axis can be drawn.
fn bounds(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let span = if hi - lo > 1e-12 { hi - lo } else { lo.abs().max(1.0) };
    (lo - 0.05 * span)..(hi + 0.05 * span)
}

fn draw(area: &Area, chart: &Chart) -> DrawResult {
    let finite = |s: &Series| -> Vec<(f64, f64)> {
        s.points.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect()
    };
    let series: Vec<Series> = chart.series.iter().map(|s| Series { points: finite(s), ..s.clone() }).collect();
    let x = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let y = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let mut ctx = ChartBuilder::on(area)
        .caption(&chart.title, (FONT, 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?;
    ctx.configure_mesh()
        .x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .label_style((FONT, 13))
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .axis_desc_style((FONT, 14))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let color = COLORS[s.color % COLORS.len()];
        let style = color.stroke_width(2);
        let anno = if s.dashed {
            ctx.draw_series(DashedLineSeries::new(s.points.iter().copied(), 6, 4, style))?
        } else {
            ctx.draw_series(LineSeries::new(s.points.iter().copied(), style))?
        };
        // Two segments either way (one type for both closures): with a gap when dashed, so the
        // legend tells dashed lines from solid ones.
        let gap = if s.dashed { 4 } else { 0 };
        let legend = move |(x, y): (i32, i32)| {
            EmptyElement::at((x, y))
                + PathElement::new(vec![(0, 0), (9 - gap / 2, 0)], color.stroke_width(2))
                + PathElement::new(vec![(9 + gap / 2, 0), (18, 0)], color.stroke_width(2))
        };
        anno.label(s.name.as_str()).legend(legend);
    }
    let position = if chart.legend_low { SeriesLabelPosition::LowerRight } else { SeriesLabelPosition::UpperRight };
    ctx.configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .position(position)
        .draw()?;
    Ok(())
}

/// An axis label: at most 4 significant decimals, no trailing zeros ("10", "0.25", "-2.4"),
/// scientific notation for very small or very large magnitudes.
fn tick(v: &f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        return format!("{v:.1e}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// Trailing moving average over `window` points (fewer at the start), for noisy per-step curves.
pub fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let w = window.max(1);
    (0..points.len())
        .map(|i| {
            let from = (i + 1).saturating_sub(w);
            let ys = &points[from..=i];
            (points[i].0, ys.iter().map(|p| p.1).sum::<f64>() / ys.len() as f64)
        })
        .collect()
}

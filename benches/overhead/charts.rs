//! One SVG chart per table (throughput × raw per variant, the ceiling marked),
//! drawn with plotters' SVG backend only (no system fonts: text stays SVG text),
//! kept in `benchmarks/` beside `BENCHMARKS.md`.

use std::sync::Mutex;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::report::Row;

/// Where the charts go, relative to the crate root (where the bench runs).
pub(crate) const DIR: &str = "benchmarks";

/// The last chart drawn, so the ceiling computed after its table can be marked.
struct Drawn {
    path: String,
    title: String,
    bars: Vec<(String, f64)>,
}

static LAST: Mutex<Option<Drawn>> = Mutex::new(None);

/// Whether charts are written: full runs only (a partial run would replace
/// committed charts with a subset), unless `BENCH_CHARTS` is set.
fn enabled() -> bool {
    std::env::var_os("BENCH_CHARTS").is_some()
        || (std::env::var_os("BENCH_ONLY").is_none()
            && std::env::var_os("BENCH_VARIANTS").is_none())
}

/// A file name from a table title.
fn slug(title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
        if slug.len() >= 60 {
            break;
        }
    }
    slug.trim_matches('-').to_owned()
}

/// Draws the chart of `rows` (the median throughput of each variant over the
/// first row's) and returns the Markdown that shows it, or nothing when charts
/// are off or the file could not be written.
pub(crate) fn draw(title: &str, rows: &[Row]) -> String {
    let bars: Vec<(String, f64)> = rows
        .iter()
        // The "SDK alone" rows measure no NATS traffic: not a throughput bar.
        .filter(|row| !row.samples.is_empty() && row.name != crate::Tracing::SdkSpans.name())
        .map(|row| (row.name.clone(), row.median(|s| s.per_second)))
        .collect();
    let Some(&(_, raw)) = bars.first() else {
        return String::new();
    };
    if !enabled() || raw <= 0.0 {
        return String::new();
    }
    let bars: Vec<(String, f64)> = bars.into_iter().map(|(n, v)| (n, v / raw)).collect();
    let path = format!("{DIR}/{}.svg", slug(title));
    let drawn = Drawn {
        path: path.clone(),
        title: title.to_owned(),
        bars,
    };
    if let Err(err) = render(&drawn, None) {
        eprintln!("chart {path}: {err}");
        return String::new();
    }
    *LAST.lock().unwrap_or_else(|p| p.into_inner()) = Some(drawn);
    format!("\n![chart: throughput × raw per variant]({path})\n")
}

/// Marks `ceiling` (× raw) on the last chart drawn.
pub(crate) fn mark_ceiling(ceiling: f64) {
    if !enabled() || !ceiling.is_finite() {
        return;
    }
    if let Some(drawn) = LAST.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        if let Err(err) = render(drawn, Some(ceiling)) {
            eprintln!("chart {}: {err}", drawn.path);
        }
    }
}

fn render(drawn: &Drawn, ceiling: Option<f64>) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(DIR)?;
    let n = drawn.bars.len();
    let height = 90 + 34 * n as u32;
    let root = SVGBackend::new(&drawn.path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = drawn
        .bars
        .iter()
        .map(|(_, v)| *v)
        .chain(ceiling)
        .fold(1.0_f64, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(&drawn.title, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(330)
        .build_cartesian_2d(0.0..top, (0..n).into_segmented())?;
    let names: Vec<String> = drawn.bars.iter().map(|(name, _)| name.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc("throughput × raw (median of the rounds)")
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            // The first row at the top.
            SegmentValue::CenterOf(i) if *i < n => names[n - 1 - i].clone(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 12))
        .draw()?;
    let row = |i: usize| n - 1 - i;
    chart.draw_series(drawn.bars.iter().enumerate().map(|(i, (_, v))| {
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(row(i))),
                (*v, SegmentValue::Exact(row(i) + 1)),
            ],
            RGBColor(70, 120, 190).filled(),
        );
        bar.set_margin(5, 5, 0, 0);
        bar
    }))?;
    chart.draw_series(drawn.bars.iter().enumerate().map(|(i, (_, v))| {
        Text::new(
            format!("{v:.2}×"),
            (*v + top * 0.01, SegmentValue::CenterOf(row(i))),
            ("sans-serif", 12)
                .into_font()
                .into_text_style(&root)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        )
    }))?;
    if let Some(ceiling) = ceiling {
        let red = RGBColor(200, 40, 40);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![
                (ceiling, SegmentValue::Exact(0)),
                (ceiling, SegmentValue::Exact(n)),
            ],
            red.stroke_width(2),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("ceiling {ceiling:.2}×"),
            (ceiling + top * 0.01, SegmentValue::Exact(n)),
            ("sans-serif", 12)
                .into_font()
                .color(&red)
                .pos(Pos::new(HPos::Left, VPos::Top)),
        )))?;
    }
    root.present()?;
    Ok(())
}

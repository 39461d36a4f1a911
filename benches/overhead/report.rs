//! The report: sections run interleaved over rounds, and their tables.

use std::fmt::Write as _;

use crate::*;

pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) samples: Vec<Sample>,
}

impl Row {
    /// The median over this row's rounds of `value`.
    pub(crate) fn median(&self, value: impl Fn(&Sample) -> f64) -> f64 {
        median(&mut self.samples.iter().map(value).collect::<Vec<_>>())
    }
}

pub(crate) fn table(out: &mut String, title: &str, rows: &[Row]) {
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| variant | msg/s median (min–max) | × raw | client CPU µs/msg | server CPU µs/msg | spans dropped |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let mut raw_median = None;
    for row in rows {
        let rates: Vec<f64> = row.samples.iter().map(|s| s.per_second).collect();
        let min = rates.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = rates.iter().cloned().fold(0.0, f64::max);
        let m = row.median(|s| s.per_second);
        let raw = *raw_median.get_or_insert(m);
        let dropped: u64 = row.samples.iter().map(|s| s.dropped).sum();
        let _ = writeln!(
            out,
            "| {} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.2} | {:.2} | {} |",
            row.name,
            m,
            min,
            max,
            m / raw,
            row.median(|s| s.cpu_us.client),
            row.median(|s| s.cpu_us.server),
            dropped
        );
    }
}

/// Runs `measure` for every variant, interleaved, `ROUNDS` times, and appends the
/// table.
pub(crate) async fn section<F, Fut>(
    out: &mut String,
    title: &str,
    variants: &[(String, Tracing)],
    measure: F,
) -> Vec<Row>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Sample>,
{
    if !selected(title) {
        return Vec::new();
    }
    let mut rows: Vec<Row> = variants
        .iter()
        .map(|(name, _)| Row {
            name: name.clone(),
            samples: Vec::new(),
        })
        .collect();
    for _ in 0..ROUNDS {
        for (i, row) in rows.iter_mut().enumerate() {
            row.samples.push(measure(i).await);
        }
    }
    let before = out.len();
    table(out, title, &rows);
    eprint!("{}", &out[before..]);
    rows
}

/// Whether `BENCH_ONLY` (substrings of section titles separated by `|`, for
/// partial runs while developing) selects the section `title`.
pub(crate) fn selected(title: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| {
        only.split('|').any(|part| title.contains(part))
    })
}

/// Appends a line under the last table (and shows it).
pub(crate) fn note(out: &mut String, line: String) {
    eprint!("{line}");
    out.push_str(&line);
}

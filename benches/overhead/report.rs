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

    /// A sample of this row's medians (rate, client and server CPU).
    fn median_sample(&self) -> Sample {
        Sample {
            per_second: self.median(|s| s.per_second),
            cpu_us: Cpu {
                client: self.median(|s| s.cpu_us.client),
                server: self.median(|s| s.cpu_us.server),
            },
            dropped: 0,
        }
    }
}

/// `f` of the rows' samples round by round, then the median over rounds. Every
/// round runs each variant once, one after another, so what drifts from one
/// round to the next (the machine's other load, which CPU a thread lands on)
/// moves a round's rows together and cancels in a comparison within the round.
/// Rows that did not run the same rounds: `f` of their medians.
pub(crate) fn per_round(rows: &[&Row], f: impl Fn(&[Sample]) -> f64) -> f64 {
    let n = rows.first().map_or(0, |r| r.samples.len());
    if n > 0 && rows.iter().all(|r| r.samples.len() == n) {
        let mut values: Vec<f64> = (0..n)
            .map(|i| f(&rows.iter().map(|r| r.samples[i]).collect::<Vec<_>>()))
            .collect();
        return median(&mut values);
    }
    f(&rows.iter().map(|r| r.median_sample()).collect::<Vec<_>>())
}

/// How much more client CPU per message `row` spends than `other`: the median
/// of the rounds' differences (see [`per_round`]).
pub(crate) fn client_over(row: &Row, other: &Row) -> f64 {
    per_round(&[row, other], |s| s[0].cpu_us.client - s[1].cpu_us.client)
}

pub(crate) fn table(out: &mut String, title: &str, rows: &[Row]) {
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| variant | msg/s median (min–max) | × raw | client CPU µs/msg | server CPU µs/msg | spans dropped |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let mut raw_median = None;
    for row in rows.iter().filter(|row| !row.samples.is_empty()) {
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
            if variant_selected(&row.name) {
                row.samples.push(measure(i).await);
            }
        }
    }
    let before = out.len();
    table(out, title, &rows);
    out.push_str(&crate::charts::draw(title, &rows));
    eprint!("{}", &out[before..]);
    // Each round's client CPU per message, to the log only: how far rounds drift.
    for row in rows.iter().filter(|row| !row.samples.is_empty()) {
        let rounds: Vec<String> = row
            .samples
            .iter()
            .map(|s| format!("{:.2}", s.cpu_us.client))
            .collect();
        eprintln!(
            "rounds, client CPU µs/msg: {}: {}",
            row.name,
            rounds.join(" ")
        );
    }
    rows
}

/// Whether `BENCH_ONLY` (substrings of section titles separated by `|`, for
/// partial runs while developing) selects the section `title`.
pub(crate) fn selected(title: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| {
        only.split('|').any(|part| title.contains(part))
    })
}

/// Whether `BENCH_VARIANTS` (substrings of variant names separated by `|`, for
/// profiling one variant while developing) selects the variant `name`.
pub(crate) fn variant_selected(name: &str) -> bool {
    std::env::var("BENCH_VARIANTS")
        .map_or(true, |only| only.split('|').any(|part| name.contains(part)))
}

/// Appends a line under the last table (and shows it).
pub(crate) fn note(out: &mut String, line: String) {
    eprint!("{line}");
    out.push_str(&line);
}

/// What span filters cost in `rows`: the include-all filter against no filter
/// (target: within noise), and a filtered-out message against tracing off
/// (target: within 0.3 µs), in client CPU per message.
pub(crate) fn filter_cost(rows: &[Row]) -> String {
    let row = |tracing: Tracing| rows.iter().find(|r| r.name == tracing.name());
    let (Some(off), Some(sampled), Some(all), Some(out)) = (
        row(Tracing::Off),
        row(Tracing::Sampled),
        row(Tracing::IncludeAll),
        row(Tracing::FilteredOut),
    ) else {
        return String::new();
    };
    let cpu = |r: &Row| r.median(|s| s.cpu_us.client);
    let filtered = client_over(out, off);
    format!(
        "\nSpan filters: \"{}\" spends {:.2} µs client CPU per message against {:.2} µs without a \
         filter ({:+.2} µs); \"{}\" spends {:+.2} µs over \"{}\" (target ≤ 0.3 µs: {}).\n",
        all.name,
        cpu(all),
        cpu(sampled),
        client_over(all, sampled),
        out.name,
        filtered,
        off.name,
        if filtered <= 0.3 { "met" } else { "not met" },
    )
}

/// What idle opt-ins cost in `rows`: "all sampled" with header capture and a
/// baggage allow-list set but nothing to act on, against "all sampled" (target:
/// within noise, taken as 0.3 µs client CPU per message).
pub(crate) fn idle_opt_in_cost(rows: &[Row]) -> String {
    let row = |tracing: Tracing| rows.iter().find(|r| r.name == tracing.name());
    let (Some(sampled), Some(idle)) = (row(Tracing::Sampled), row(Tracing::IdleOptIns)) else {
        return String::new();
    };
    let cpu = |r: &Row| r.median(|s| s.cpu_us.client);
    let added = client_over(idle, sampled);
    let node = row(Tracing::ServerNode).map_or(String::new(), |node| {
        format!(
            "\nServer node attributes (opt-in): \"{}\" adds {:+.2} µs client CPU per message \
             (two recording spans) over \"{}\".\n",
            node.name,
            client_over(node, sampled),
            sampled.name
        )
    });
    node + &format!(
        "\nIdle opt-ins: \"{}\" spends {:.2} µs client CPU per message against {:.2} µs for \"{}\" \
         ({:+.2} µs; target within noise, ≤ 0.3 µs: {}).\n",
        idle.name,
        cpu(idle),
        cpu(sampled),
        sampled.name,
        added,
        if added <= 0.3 { "met" } else { "not met" },
    )
}

/// What metrics cost in `rows`: the "metrics only" row's client CPU per message
/// over "tracing off" (against `target_us`, if a number), and "all sampled +
/// metrics" throughput as a share of "all sampled" (target ≥ 0.90), with
/// `profile` when a target is not met.
pub(crate) fn metrics_cost(rows: &[Row], target_us: f64, profile: &str) -> String {
    let row = |tracing: Tracing| rows.iter().find(|r| r.name == tracing.name());
    let (Some(off), Some(metrics), Some(sampled), Some(both)) = (
        row(Tracing::Off),
        row(Tracing::MetricsOnly),
        row(Tracing::Sampled),
        row(Tracing::SampledMetrics),
    ) else {
        return String::new();
    };
    let added = client_over(metrics, off);
    let share = per_round(&[both, sampled], |s| s[0].per_second / s[1].per_second);
    let verdict = |met: bool| if met { "met" } else { "not met" };
    let cpu_target = if target_us.is_nan() {
        String::new()
    } else {
        format!(
            " (target ≤ {target_us:.1} µs: {})",
            verdict(added <= target_us)
        )
    };
    format!(
        "\nMetrics: \"{}\" adds {added:+.2} µs client CPU per message over \"{}\"{cpu_target}; \
         \"{}\" runs at {share:.2}× of \"{}\" (target ≥ 0.90: {}).{}\n",
        metrics.name,
        off.name,
        both.name,
        sampled.name,
        verdict(share >= 0.90),
        if added > target_us || share < 0.90 {
            profile
        } else {
            ""
        },
    )
}

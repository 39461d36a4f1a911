//! The OpenTelemetry SDK alone, and the ceilings and unsampled targets it sets.

use std::fmt::Write as _;
use std::time::Instant;

use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};

use crate::*;

/// What one span costs in the OpenTelemetry SDK alone, with no NATS and no
/// nats-otel: `n` spans with nine messaging attributes (and one link when `link`)
/// started and ended through a `BoxedTracer`, with the benchmark's batch processor
/// and discarding exporter. Client CPU µs per span (the export thread included).
pub(crate) fn sdk_span_cost(tracing: Tracing, link: bool, n: u64) -> Sample {
    sdk_spans(tracing, u32::from(!link), u32::from(link), n)
}

/// The SDK's own cost of one message's spans in a traced table: `plain` spans
/// and `linked` spans with one link per message, `n` messages, as the table's
/// own row (same rounds, same processor and exporter as its sampled rows).
/// Client CPU µs per message.
pub(crate) fn sdk_message_cost(plain: u32, linked: u32, n: u64) -> Sample {
    sdk_spans(Tracing::SdkSpans, plain, linked, n)
}

fn sdk_spans(tracing: Tracing, plain: u32, linked: u32, n: u64) -> Sample {
    let telemetry = telemetry(tracing);
    let provider = &telemetry.as_ref().expect("sdk telemetry").provider;
    let tracer = opentelemetry::global::BoxedTracer::new(Box::new(provider.tracer("sdk-floor")));
    let per_message = u64::from(plain + linked);
    let linked = opentelemetry::trace::SpanContext::new(
        opentelemetry::trace::TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128),
        opentelemetry::trace::SpanId::from(0x00f0_67aa_0ba9_02b7_u64),
        opentelemetry::trace::TraceFlags::SAMPLED,
        true,
        Default::default(),
    );
    let start_cpu = cpu_seconds();
    let started = Instant::now();
    for i in 0..n * per_message {
        let link = i % per_message >= u64::from(plain);
        let mut builder = opentelemetry::trace::SpanBuilder::from_name("publish bench.core")
            .with_kind(SpanKind::Producer)
            .with_attributes(sdk_attributes());
        if link {
            builder = builder.with_links(vec![opentelemetry::trace::Link::with_context(
                linked.clone(),
            )]);
        }
        let parent = opentelemetry::Context::new();
        let span = tracer.build_with_context(builder, &parent);
        let cx = parent.with_span(span);
        cx.span().end();
    }
    measured(n, started, start_cpu, telemetry)
}

/// The index of `tracing`'s row in `rows`.
pub(crate) fn row_of(rows: &[Row], tracing: Tracing) -> Option<usize> {
    rows.iter()
        .position(|r| r.name == tracing.name() && !r.samples.is_empty())
}

/// The SDK cost per message from the table's own "SDK alone" row, else
/// `fallback` (the SDK table's).
pub(crate) fn sdk_cost_in(rows: &[Row], fallback: f64) -> f64 {
    row_of(rows, Tracing::SdkSpans)
        .map(|i| rows[i].median(|s| s.cpu_us.client))
        .unwrap_or(fallback)
}

/// "nats-otel's own CPU per message": the sampled row's client CPU minus the
/// `baseline` row's (the same traffic without spans) minus the SDK's cost of
/// the message's spans measured in the same rounds. A sentence.
pub(crate) fn own_cpu(rows: &[Row], sampled: usize, baseline: usize, sdk: f64) -> String {
    let (Some(s), Some(b)) = (rows.get(sampled), rows.get(baseline)) else {
        return String::new();
    };
    let sampled_cpu = s.median(|x| x.cpu_us.client);
    let baseline_cpu = b.median(|x| x.cpu_us.client);
    let own = match row_of(rows, Tracing::SdkSpans) {
        Some(i) => per_round(&[s, b, &rows[i]], |x| {
            x[0].cpu_us.client - x[1].cpu_us.client - x[2].cpu_us.client
        }),
        None => client_over(s, b) - sdk,
    };
    format!(
        "\nnats-otel's own CPU per message: \"{}\" {sampled_cpu:.2} µs client − \"{}\" \
         {baseline_cpu:.2} µs − the SDK's own spans {sdk:.2} µs (measured in this table's rounds) \
         = {:+.2} µs.\n",
        s.name, b.name, own,
    )
}

/// The SDK's own cost per span (client CPU µs), measured by `sdk_span_cost`.
#[derive(Clone, Copy)]
pub(crate) struct SdkCost {
    /// A recorded span without links.
    pub(crate) plain: f64,
    /// A recorded span with one link (a process span of a traced message).
    pub(crate) linked: f64,
    /// A span a parent-based sampler drops.
    pub(crate) dropped: f64,
}

/// The unsampled target: with a sampler that drops, the "sampler drops" row's
/// client CPU per message stays within propagation alone (row `propagation`) plus
/// the SDK's cost of `spans` dropped spans plus 0.3 µs. With `hand` (the same
/// propagation plus the same number of SDK spans, made by hand on raw async-nats,
/// the same sampler), also what the SDK's dropped spans cost where they are made
/// and what remains for nats-otel. Returns a sentence.
pub(crate) fn unsampled(
    rows: &[Row],
    dropped: usize,
    propagation: usize,
    hand: Option<usize>,
    spans: f64,
    sdk: f64,
) -> String {
    let (Some(dropped), Some(propagation)) = (rows.get(dropped), rows.get(propagation)) else {
        return String::new();
    };
    let ours = dropped.median(|s| s.cpu_us.client);
    let alone = propagation.median(|s| s.cpu_us.client);
    let budget = alone + spans * sdk + 0.3;
    let over = client_over(dropped, propagation) - spans * sdk - 0.3;
    let mut sentence = format!(
        "\nUnsampled: \"{}\" spends {ours:.2} µs client CPU per message; propagation alone \
         {alone:.2} µs, plus the SDK's {spans:.0} dropped span(s) at {sdk:.2} µs and 0.3 µs, \
         allows {budget:.2} µs: {} ({:+.2} µs).",
        dropped.name,
        if over <= 0.0 { "met" } else { "NOT met" },
        over,
    );
    if let Some(hand) = hand
        .and_then(|i| rows.get(i))
        .filter(|r| !r.samples.is_empty())
    {
        let by_hand = client_over(hand, propagation);
        let _ = write!(
            sentence,
            " The same {spans:.0} dropped span(s) made by hand on raw async-nats with the same \
             propagation (\"{}\") cost {:.2} µs where they are made ({:.2} µs per span vs \
             {sdk:.2} µs in the SDK table's loop), which leaves nats-otel's own unsampled cost \
             at {:+.2} µs per message.",
            hand.name,
            by_hand,
            by_hand / spans,
            client_over(dropped, hand),
        );
    }
    sentence.push('\n');
    sentence
}

/// A target from the issue: `ratio`× the median of row `of` (`label` names it).
pub(crate) struct Target {
    pub(crate) ratio: f64,
    pub(crate) of: usize,
    pub(crate) label: &'static str,
    /// The sampled row, whose share of the ceiling is reported (target ≥ 0.85).
    pub(crate) sampled: usize,
}

/// The best any instrumentation built on the SDK could do on this box, from a
/// measured baseline row: while the box's CPUs are saturated, throughput is
/// inversely proportional to the CPU (client + server) spent per message, and
/// instrumentation adds at least the SDK's own cost of its spans. Also states
/// how much CPU per message `target` leaves for instrumentation, how a
/// hand-written instrumentation's row compares, and `profile` when the target
/// is not met. Returns sentences for the report.
pub(crate) fn ceiling(
    rows: &[Row],
    baseline: usize,
    spans_us: f64,
    spans: &str,
    target: Target,
    profile: &str,
) -> String {
    let (Some(row), Some(reference)) = (rows.get(baseline), rows.get(target.of)) else {
        return String::new();
    };
    let rate = row.median(|s| s.per_second);
    let client = row.median(|s| s.cpu_us.client);
    let server = row.median(|s| s.cpu_us.server);
    let raw = rows.first().map_or(rate, |r| r.median(|s| s.per_second));
    let total = client + server;
    let best = rate * total / (total + spans_us);
    crate::charts::mark_ceiling(best / raw);
    let wanted = target.ratio * reference.median(|s| s.per_second);
    // CPU per message the box can spend at the target rate, minus the baseline's.
    let budget = rate * total / wanted - total;
    let sdk_row = row_of(rows, Tracing::SdkSpans).map(|i| &rows[i]);
    // Round by round: a row's rate over that round's ceiling.
    let share_of = |traced: &Row| match sdk_row {
        Some(sdk) => per_round(&[traced, row, sdk], |x| {
            let total = x[1].cpu_us.client + x[1].cpu_us.server;
            x[0].per_second * (total + x[2].cpu_us.client) / (x[1].per_second * total)
        }),
        None => per_round(&[traced, row], |x| {
            let total = x[1].cpu_us.client + x[1].cpu_us.server;
            x[0].per_second * (total + spans_us) / (x[1].per_second * total)
        }),
    };
    let sampled_share = rows.get(target.sampled).map(share_of);
    let met = sampled_share.is_none_or(|share| share >= 0.85);
    let mut share = match (rows.get(target.sampled), sampled_share) {
        (Some(sampled), Some(share)) => format!(
            " \"{}\" runs at {share:.3}× of this ceiling (target ≥ 0.85: {}).",
            sampled.name,
            if met { "met" } else { "not met" }
        ),
        _ => String::new(),
    };
    // The same spans made by hand on raw async-nats: what the SDK costs where
    // the spans are made, which the "SDK alone" loop does not show.
    if let (Some(hand), Some(sampled), Some(current)) = (
        row_of(rows, Tracing::HandWritten).map(|i| &rows[i]),
        rows.get(target.sampled),
        sampled_share,
    ) {
        let _ = write!(
            share,
            " \"{}\" runs at {:.3}× of it; \"{}\" spends {:+.2} µs client CPU per message \
             over it.",
            hand.name,
            share_of(hand),
            sampled.name,
            client_over(sampled, hand),
        );
        let in_situ = client_over(hand, row);
        let excess = in_situ - spans_us;
        let total = sampled.median(|x| x.cpu_us.client + x.cpu_us.server);
        if !met && excess > 0.0 && excess < total {
            let _ = write!(
                share,
                " Where they are made, the hand-written row's spans cost {in_situ:.2} µs client \
                 CPU per message over \"{}\", against {spans_us:.2} µs in the \"SDK alone\" loop: \
                 were they to cost there what they cost in the loop, \"{}\" would run at about \
                 {:.2}× of this ceiling (throughput taken as inversely proportional to client + \
                 server CPU per message).",
                row.name,
                sampled.name,
                current * total / (total - excess),
            );
        }
    }
    if let (false, Some(sampled), Some(current)) = (met, rows.get(target.sampled), sampled_share) {
        let total = sampled.median(|x| x.cpu_us.client + x.cpu_us.server);
        let _ = write!(
            share,
            " Meeting the target needs about {:.2} µs less client + server CPU per message \
             on \"{}\" ({:.1} % more throughput, taken as inversely proportional to CPU per \
             message).",
            total * (1.0 - current / 0.85),
            sampled.name,
            (0.85 / current - 1.0) * 100.0,
        );
        share.push_str(profile);
    }
    let verdict = if budget <= 0.0 {
        "nothing: the baseline row alone is slower than the target".to_owned()
    } else {
        format!(
            "{budget:.2} µs per message for all instrumentation work, spans included, \
             against the SDK's own {spans_us:.2} µs"
        )
    };
    format!(
        "\nCeiling for any SDK-based instrumentation: the \"{}\" row uses {:.2} CPUs \
         ({:.2} µs client + {:.2} µs server per message at {:.0} msg/s). Adding only the SDK's \
         own cost of {spans} ({:.2} µs, the \"SDK alone\" row, measured in this table's rounds) \
         gives at most {:.0} msg/s: {:.2}× raw, {:.2}× of that row. The target, {}× {} \
         ({:.0} msg/s), leaves {verdict}.{share}\n",
        row.name,
        rate * total / 1e6,
        client,
        server,
        rate,
        spans_us,
        best,
        best / raw,
        best / rate,
        target.ratio,
        target.label,
        wanted,
    )
}

/// The SDK table; its costs, when measured, bound the other tables.
pub(crate) async fn run(out: &mut String) -> Option<SdkCost> {
    let sdk_variants = vec![
        ("recorded span".to_owned(), Tracing::Sampled),
        ("recorded span with one link".to_owned(), Tracing::Sampled),
        (
            "span a parent-based sampler drops".to_owned(),
            Tracing::Dropped,
        ),
    ];
    let sdk_rows = section(
        out,
        &format!(
            "OpenTelemetry SDK alone (no NATS, no nats-otel): one span per \"message\", \
             9 attributes, {SDK_SPANS} spans × {ROUNDS} rounds"
        ),
        &sdk_variants,
        |i| {
            let tracing = sdk_variants[i].1;
            async move { sdk_span_cost(tracing, i == 1, SDK_SPANS) }
        },
    )
    .await;
    let sdk_cpu = |i: usize| sdk_rows.get(i).map(|r| r.median(|s| s.cpu_us.client));
    match (sdk_cpu(0), sdk_cpu(1), sdk_cpu(2)) {
        (Some(plain), Some(linked), Some(dropped)) => Some(SdkCost {
            plain,
            linked,
            dropped,
        }),
        _ => None,
    }
}

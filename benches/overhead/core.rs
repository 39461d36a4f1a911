//! Core NATS: publish only, pub→sub, request/reply and a connection pool.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::*;

/// Publishes `n` messages of `size` bytes and waits until a subscriber on the same
/// connection has received them all.
pub(crate) async fn pub_sub(
    url: &str,
    tracing: Tracing,
    n: u64,
    size: usize,
    pace: Option<u64>,
) -> Sample {
    let payload = Bytes::from(vec![b'x'; size]);
    let telemetry = telemetry(tracing);
    let raw = async_nats::connect(url).await.expect("connect");
    let start_cpu;
    let started;
    match tracing {
        Tracing::Raw | Tracing::HeaderOnly | Tracing::Propagation => {
            let mut sub = raw.subscribe("bench.core").await.expect("subscribe");
            sync(&raw).await;
            start_cpu = cpu_seconds();
            started = Instant::now();
            let publisher = {
                let raw = raw.clone();
                tokio::spawn(async move {
                    let mut propagation = Propagation::new();
                    let mut pace = Pace::new(pace);
                    for _ in 0..n {
                        pace.next().await;
                        if let Tracing::Propagation = tracing {
                            let headers = propagation.headers();
                            let _ = raw
                                .publish_with_headers("bench.core", headers, payload.clone())
                                .await;
                        } else if let Tracing::HeaderOnly = tracing {
                            let mut headers = async_nats::HeaderMap::new();
                            headers.insert(
                                "traceparent",
                                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                            );
                            let _ = raw
                                .publish_with_headers("bench.core", headers, payload.clone())
                                .await;
                        } else {
                            let _ = raw.publish("bench.core", payload.clone()).await;
                        }
                    }
                })
            };
            let propagation = Propagation::new();
            for _ in 0..n {
                let Some(message) = sub.next().await else {
                    break;
                };
                if let Tracing::Propagation = tracing {
                    std::hint::black_box(propagation.extract(&message));
                }
            }
            let _ = publisher.await;
        }
        Tracing::HandWrittenDropped => {
            let provider = &telemetry.as_ref().expect("telemetry").provider;
            let tracer = Arc::new(opentelemetry::global::BoxedTracer::new(Box::new(
                provider.tracer("hand-written"),
            )));
            let mut sub = raw.subscribe("bench.core").await.expect("subscribe");
            sync(&raw).await;
            start_cpu = cpu_seconds();
            started = Instant::now();
            let publisher = {
                let raw = raw.clone();
                let tracer = tracer.clone();
                tokio::spawn(async move {
                    let propagation = Propagation::new();
                    let mut pace = Pace::new(pace);
                    for _ in 0..n {
                        pace.next().await;
                        let cx = hand_span(
                            &tracer,
                            "publish bench.core",
                            SpanKind::Producer,
                            &opentelemetry::Context::current(),
                        );
                        let headers = propagation.headers_of(&cx);
                        let _ = raw
                            .publish_with_headers("bench.core", headers, payload.clone())
                            .await;
                        cx.span().end();
                    }
                })
            };
            let propagation = Propagation::new();
            for _ in 0..n {
                let Some(message) = sub.next().await else {
                    break;
                };
                let parent = match &message.headers {
                    Some(headers) => propagation
                        .propagator
                        .extract(&nats_otel::HeaderExtractor(headers)),
                    None => opentelemetry::Context::new(),
                };
                let cx = hand_span(&tracer, "process bench.core", SpanKind::Consumer, &parent);
                drop(message);
                cx.span().end();
            }
            let _ = publisher.await;
        }
        Tracing::HandWritten => {
            let provider = &telemetry.as_ref().expect("sampled telemetry").provider;
            let tracer = Arc::new(provider.tracer("hand-written"));
            let mut sub = raw.subscribe("bench.core").await.expect("subscribe");
            sync(&raw).await;
            start_cpu = cpu_seconds();
            started = Instant::now();
            let publisher = {
                let raw = raw.clone();
                let tracer = tracer.clone();
                tokio::spawn(async move {
                    let propagator = TraceContextPropagator::new();
                    let mut pace = Pace::new(pace);
                    for _ in 0..n {
                        pace.next().await;
                        let span = tracer
                            .span_builder("publish bench.core")
                            .with_kind(SpanKind::Producer)
                            .with_attributes([
                                KeyValue::new("messaging.system", "nats"),
                                KeyValue::new("messaging.operation.type", "send"),
                                KeyValue::new("messaging.destination.name", "bench.core"),
                                KeyValue::new("messaging.message.body.size", size as i64),
                            ])
                            .start(&*tracer);
                        let cx = opentelemetry::Context::current_with_span(span);
                        let mut headers = async_nats::HeaderMap::new();
                        propagator.inject_context(&cx, &mut HandInjector(&mut headers));
                        let _ = raw
                            .publish_with_headers("bench.core", headers, payload.clone())
                            .await;
                        cx.span().end();
                    }
                })
            };
            let propagator = TraceContextPropagator::new();
            for _ in 0..n {
                let Some(message) = sub.next().await else {
                    break;
                };
                let parent = match &message.headers {
                    Some(headers) => propagator.extract(&HandExtractor(headers)),
                    None => opentelemetry::Context::new(),
                };
                let mut span = tracer
                    .span_builder("process bench.core")
                    .with_kind(SpanKind::Consumer)
                    .with_attributes([
                        KeyValue::new("messaging.system", "nats"),
                        KeyValue::new("messaging.operation.type", "process"),
                        KeyValue::new("messaging.destination.name", "bench.core"),
                        KeyValue::new("messaging.message.body.size", message.payload.len() as i64),
                    ])
                    .start_with_context(&*tracer, &parent);
                drop(message);
                span.end();
            }
            let _ = publisher.await;
        }
        _ => {
            let client = Client(nats_otel::Client::new(
                raw.clone(),
                instrumentation(tracing, &telemetry),
            ));
            let mut sub = client.0.subscribe("bench.core").await.expect("subscribe");
            sync(&raw).await;
            start_cpu = cpu_seconds();
            started = Instant::now();
            let publisher = {
                let client = client.0.clone();
                tokio::spawn(async move {
                    let mut pace = Pace::new(pace);
                    for _ in 0..n {
                        pace.next().await;
                        let _ = client.publish("bench.core", payload.clone()).await;
                    }
                })
            };
            for _ in 0..n {
                match sub.next().await {
                    Some(delivery) => drop(delivery),
                    None => break,
                }
            }
            let _ = publisher.await;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - start_cpu;
    let dropped = finish(telemetry);
    Sample {
        per_second: n as f64 / elapsed,
        cpu_us: cpu * 1e6 / n as f64,
        dropped,
    }
}

/// One variant's requests in one request/reply round.
#[derive(Default)]
pub(crate) struct RequestRound {
    /// Latencies in µs, sorted.
    pub(crate) latencies: Vec<f64>,
    /// CPU (client and server) spent on these requests, in seconds.
    pub(crate) cpu: Cpu,
}

/// One round of sequential request/reply, per variant.
///
/// Every variant shares one connection, one responder and this stretch of the
/// machine's time: the requests run in blocks of [`RR_BLOCK`], block `b` going
/// to variant `(b + b / n) % n` of `variants` (each cycle starts one variant
/// later, so none always follows the same one), with the CPU read between
/// blocks. A round trip here is mostly wake-ups (client, server, responder on
/// 2 cores): rounds run one variant after another drifted by more than the cost
/// measured.
pub(crate) async fn request_reply(url: &str, variants: &[Tracing]) -> Vec<RequestRound> {
    let raw = async_nats::connect(url).await.expect("connect");
    let responder_conn = async_nats::connect(url).await.expect("connect");
    let mut service = responder_conn
        .subscribe("bench.rr")
        .await
        .expect("subscribe");
    sync(&responder_conn).await;
    let responder = tokio::spawn(async move {
        while let Some(message) = service.next().await {
            if let Some(reply) = message.reply {
                let _ = responder_conn.publish(reply, message.payload).await;
            }
        }
    });
    let telemetries: Vec<Option<Telemetry>> = variants.iter().map(|v| telemetry(*v)).collect();
    let clients: Vec<nats_otel::Client> = variants
        .iter()
        .zip(&telemetries)
        .map(|(v, t)| nats_otel::Client::new(raw.clone(), instrumentation(*v, t)))
        .collect();
    let tracers: Vec<_> = telemetries
        .iter()
        .map(|t| t.as_ref().map(|t| t.provider.tracer("hand-written")))
        .collect();
    let propagator = TraceContextPropagator::new();
    let request = |i: usize| {
        let (raw, client, tracer, propagator) = (&raw, &clients[i], &tracers[i], &propagator);
        async move {
            match variants[i] {
                Tracing::Raw => raw.request("bench.rr", "ping".into()).await.is_ok(),
                Tracing::HandWritten => {
                    let tracer = tracer.as_ref().expect("sampled telemetry");
                    let span = tracer
                        .span_builder("request bench.rr")
                        .with_kind(SpanKind::Client)
                        .with_attributes([
                            KeyValue::new("messaging.system", "nats"),
                            KeyValue::new("messaging.operation.type", "send"),
                            KeyValue::new("messaging.destination.name", "bench.rr"),
                        ])
                        .start(tracer);
                    let cx = opentelemetry::Context::current_with_span(span);
                    let mut headers = async_nats::HeaderMap::new();
                    propagator.inject_context(&cx, &mut HandInjector(&mut headers));
                    let ok = raw
                        .request_with_headers("bench.rr", headers, "ping".into())
                        .await
                        .is_ok();
                    cx.span().end();
                    ok
                }
                Tracing::HeaderOnly => {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(
                        "traceparent",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    );
                    raw.request_with_headers("bench.rr", headers, "ping".into())
                        .await
                        .is_ok()
                }
                _ => client.request("bench.rr", "ping".into()).await.is_ok(),
            }
        }
    };
    let n = variants.len();
    // Untimed warm-up: connections, inbox subscription, first spans.
    for j in 0..RR_BLOCK * n {
        request(j % n).await;
    }
    // What reading the CPU costs this process, taken off every block.
    let first = cpu_seconds();
    for _ in 0..9 {
        cpu_seconds();
    }
    let reading = (cpu_seconds() - first) / 10.0;
    let mut rounds: Vec<RequestRound> = variants.iter().map(|_| RequestRound::default()).collect();
    let mut before = cpu_seconds();
    for b in 0..REQUESTS.div_ceil(RR_BLOCK) * n {
        let i = (b + b / n) % n;
        let round = &mut rounds[i];
        for _ in 0..RR_BLOCK {
            let started = Instant::now();
            if request(i).await {
                round.latencies.push(started.elapsed().as_secs_f64() * 1e6);
            }
        }
        let after = cpu_seconds();
        round.cpu = round.cpu + (after - before) - reading;
        before = after;
    }
    responder.abort();
    drop(clients);
    for t in telemetries {
        finish(t);
    }
    for round in &mut rounds {
        round.latencies.sort_by(|a, b| a.total_cmp(b));
    }
    rounds
}

/// Publishes `n` messages of `size` bytes with no subscriber, then waits for a
/// server round trip so every message has left the client.
pub(crate) async fn publish_only(
    url: &str,
    tracing: Tracing,
    n: u64,
    size: usize,
    pace: Option<u64>,
) -> Sample {
    let payload = Bytes::from(vec![b'x'; size]);
    let telemetry = telemetry(tracing);
    let raw = async_nats::connect(url).await.expect("connect");
    let client = nats_otel::Client::new(raw.clone(), instrumentation(tracing, &telemetry));
    let mut propagation = Propagation::new();
    let hand_tracer = telemetry.as_ref().map(|t| {
        opentelemetry::global::BoxedTracer::new(Box::new(t.provider.tracer("hand-written")))
    });
    let mut pace = Pace::new(pace);
    let start_cpu = cpu_seconds();
    let started = Instant::now();
    for _ in 0..n {
        pace.next().await;
        match tracing {
            Tracing::Raw => {
                let _ = raw.publish("bench.only", payload.clone()).await;
            }
            Tracing::HandWrittenDropped => {
                let tracer = hand_tracer.as_ref().expect("telemetry");
                let cx = hand_span(
                    tracer,
                    "publish bench.only",
                    SpanKind::Producer,
                    &opentelemetry::Context::current(),
                );
                let headers = propagation.headers_of(&cx);
                let _ = raw
                    .publish_with_headers("bench.only", headers, payload.clone())
                    .await;
                cx.span().end();
            }
            Tracing::Propagation => {
                let headers = propagation.headers();
                let _ = raw
                    .publish_with_headers("bench.only", headers, payload.clone())
                    .await;
            }
            Tracing::HeaderOnly => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                );
                let _ = raw
                    .publish_with_headers("bench.only", headers, payload.clone())
                    .await;
            }
            _ => {
                let _ = client.publish("bench.only", payload.clone()).await;
            }
        }
    }
    sync(&raw).await;
    measured(n, started, start_cpu, telemetry)
}

/// `POOL_PUBLISHERS` tasks publishing 16 B messages, through one shared
/// connection or one connection each.
pub(crate) async fn pool(url: &str, tracing: Tracing, connections: usize) -> Sample {
    let telemetry = telemetry(tracing);
    let mut clients = Vec::new();
    for _ in 0..connections {
        let raw = async_nats::connect(url).await.expect("connect");
        let traced = nats_otel::Client::new(raw.clone(), instrumentation(tracing, &telemetry));
        clients.push((raw, traced));
    }
    let per_task = POOL_MESSAGES / POOL_PUBLISHERS as u64;
    let start_cpu = cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..POOL_PUBLISHERS {
        let (raw, traced) = clients[i % connections].clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let payload = Bytes::from_static(b"xxxxxxxxxxxxxxxx");
                if let Tracing::Raw = tracing {
                    let _ = raw.publish("bench.pool", payload).await;
                } else {
                    let _ = traced.publish("bench.pool", payload).await;
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    for (raw, _) in &clients {
        sync(raw).await;
    }
    let n = per_task * POOL_PUBLISHERS as u64;
    measured(n, started, start_cpu, telemetry)
}

/// Core NATS tables: publish only, pub→sub, fixed-rate, request/reply, pool.
pub(crate) async fn run(out: &mut String, url: &str, sdk: Option<SdkCost>) {
    // Row indices below: raw 0, header-only 1, propagation 2, off 3, sampled 4, drops 5,
    // hand-written drops 6.
    let core = [
        Tracing::Raw,
        Tracing::HeaderOnly,
        Tracing::Propagation,
        Tracing::Off,
        Tracing::Sampled,
        Tracing::Dropped,
        Tracing::HandWrittenDropped,
    ];
    for size in [16usize, 1024] {
        let mut variants = named(&core);
        if size == 16 {
            variants.extend(named(&[Tracing::IncludeAll, Tracing::FilteredOut]));
        }
        let rows = section(
            out,
            &format!("Core publish only, {size} B, {PUBLISH_MESSAGES} messages × {ROUNDS} rounds"),
            &variants,
            |i| publish_only(url, variants[i].1, PUBLISH_MESSAGES, size, None),
        )
        .await;
        if let Some(sdk) = sdk {
            note(out, unsampled(&rows, 5, 2, Some(6), 1.0, sdk.dropped));
        }
        if size == 16 {
            note(out, filter_cost(&rows));
        }
    }
    for size in [16usize, 1024] {
        let mut variants = named(&core);
        variants.push((Tracing::HandWritten.name().to_owned(), Tracing::HandWritten));
        if size == 16 {
            variants.extend(named(&[
                Tracing::SampledDefaultQueue,
                Tracing::MetricsOnly,
                Tracing::SampledMetrics,
                Tracing::IdleOptIns,
                Tracing::ServerNode,
            ]));
        }
        variants.push((Tracing::SdkSpans.name().to_owned(), Tracing::SdkSpans));
        let rows = section(
            out,
            &format!("Core pub→sub, {size} B, {CORE_MESSAGES} messages × {ROUNDS} rounds"),
            &variants,
            |i| {
                let tracing = variants[i].1;
                async move {
                    match tracing {
                        // A producer span and a linked process span.
                        Tracing::SdkSpans => sdk_message_cost(1, 1, CORE_MESSAGES),
                        _ => pub_sub(url, tracing, CORE_MESSAGES, size, None).await,
                    }
                }
            },
        )
        .await;
        if let Some(sdk) = sdk {
            note(out, unsampled(&rows, 5, 2, Some(6), 2.0, sdk.dropped));
            let spans = sdk_cost_in(&rows, sdk.plain + sdk.linked);
            note(
                out,
                ceiling(
                    &rows,
                    1,
                    spans,
                    "a producer span and a linked process span",
                    Target {
                        ratio: 0.70,
                        of: 1,
                        label: "the header-only row",
                        sampled: 4,
                    },
                    CORE_PROFILE,
                ),
            );
            note(out, own_cpu(&rows, 4, 1, spans));
        }
        if size == 16 {
            note(out, metrics_cost(&rows, 0.6, CORE_METRICS_PROFILE));
            note(out, idle_opt_in_cost(&rows));
        }
    }

    // The unsampled target at one fixed rate, where batching is alike for every
    // variant. Row indices: raw 0, propagation 1, drops 2, sampled 3, hand-written
    // drops 4.
    let paced = named(&[
        Tracing::Raw,
        Tracing::Propagation,
        Tracing::Dropped,
        Tracing::Sampled,
        Tracing::HandWrittenDropped,
    ]);
    for size in [16usize, 1024] {
        for subscribed in [false, true] {
            let what = if subscribed {
                "pub→sub"
            } else {
                "publish only"
            };
            let rows = section(
                out,
                &format!(
                    "Unsampled cost at a fixed rate: core {what}, {size} B, \
                     {PACED_RATE} msg/s, {PACED_MESSAGES} messages × {ROUNDS} rounds"
                ),
                &paced,
                |i| {
                    let tracing = paced[i].1;
                    let per_ms = Some(PACED_RATE / 1000);
                    async move {
                        if subscribed {
                            pub_sub(url, tracing, PACED_MESSAGES, size, per_ms).await
                        } else {
                            publish_only(url, tracing, PACED_MESSAGES, size, per_ms).await
                        }
                    }
                },
            )
            .await;
            if let Some(sdk) = sdk {
                let spans = if subscribed { 2.0 } else { 1.0 };
                note(out, unsampled(&rows, 2, 1, Some(4), spans, sdk.dropped));
            }
        }
    }

    let rr_variants = [
        Tracing::Raw,
        Tracing::HeaderOnly,
        Tracing::Off,
        Tracing::Sampled,
        Tracing::HandWritten,
    ];
    // Per variant: every latency, and each round's p50.
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); rr_variants.len()];
    let mut round_p50s: Vec<Vec<f64>> = vec![Vec::new(); rr_variants.len()];
    let rounds = if selected("Request/reply") { ROUNDS } else { 0 };
    if rounds > 0 {
        // What runs while nothing is sent (left over from the tables before).
        let idle = cpu_seconds();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let idle = cpu_seconds() - idle;
        eprintln!(
            "idle before request/reply: client {:.3} CPUs, server {:.3} CPUs",
            idle.client, idle.server
        );
    }
    let mut cpus: Vec<Vec<Cpu>> = vec![Vec::new(); rr_variants.len()];
    for _ in 0..rounds {
        let round = request_reply(url, &rr_variants).await;
        for (i, variant) in round.into_iter().enumerate() {
            round_p50s[i].push(percentile(&variant.latencies, 0.5));
            cpus[i].push(variant.cpu / variant.latencies.len().max(1) as f64 * 1e6);
            latencies[i].extend(variant.latencies);
        }
    }
    if rounds > 0 {
        let _ = writeln!(
            out,
            "\n### Request/reply latency, {REQUESTS} sequential requests per variant × {ROUNDS} rounds, variants interleaved in blocks of {RR_BLOCK}\n"
        );
        let _ = writeln!(
            out,
            "| variant | p50 µs (median of the rounds' p50s; min–max) | p99 µs | p99.9 µs | p50 overhead µs | client CPU µs/request | server CPU µs/request |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        let p50s: Vec<f64> = round_p50s.iter().map(|p| median(&mut p.clone())).collect();
        let cpu: Vec<Cpu> = cpus
            .iter_mut()
            .map(|c| Cpu {
                client: median(&mut c.iter().map(|c| c.client).collect::<Vec<_>>()),
                server: median(&mut c.iter().map(|c| c.server).collect::<Vec<_>>()),
            })
            .collect();
        for (i, (variant, samples)) in rr_variants.iter().zip(latencies.iter_mut()).enumerate() {
            samples.sort_by(|a, b| a.total_cmp(b));
            let rounds = &round_p50s[i];
            let _ = writeln!(
                out,
                "| {} | {:.1} ({:.0}–{:.0}) | {:.0} | {:.0} | {:+.1} | {:.2} | {:.2} |",
                variant.name(),
                p50s[i],
                rounds.iter().cloned().fold(f64::INFINITY, f64::min),
                rounds.iter().cloned().fold(0.0, f64::max),
                percentile(samples, 0.99),
                percentile(samples, 0.999),
                p50s[i] - p50s[0],
                cpu[i].client,
                cpu[i].server,
            );
        }
        // Rows: raw 0, header-only 1, off 2, sampled 3, hand-written 4.
        let own = p50s[3] - p50s[1];
        // The same within each round (the variants shared it), then the median.
        let paired = |a: usize, b: usize| {
            median(
                &mut round_p50s[a]
                    .iter()
                    .zip(&round_p50s[b])
                    .map(|(a, b)| a - b)
                    .collect::<Vec<_>>(),
            )
        };
        note(
            out,
            format!(
                "\nnats-otel's own cost at p50: \"{}\" p50 minus \"{}\" p50 = {own:+.1} µs \
                 (target ≤ 4 µs: {}). The median of each round's own difference of p50s \
                 (noisier: one round's p50 moves by several µs): ours minus header-only \
                 {:+.1} µs, hand-written minus header-only {:+.1} µs, ours minus hand-written \
                 {:+.1} µs. Client CPU per request (this process, all threads), ours minus \
                 header-only: {:+.2} µs; hand-written minus header-only: {:+.2} µs.{}\n",
                rr_variants[3].name(),
                rr_variants[1].name(),
                if own <= 4.0 { "met" } else { "not met" },
                paired(3, 1),
                paired(4, 1),
                paired(3, 4),
                cpu[3].client - cpu[1].client,
                cpu[4].client - cpu[1].client,
                if own <= 4.0 { "" } else { RR_PROFILE },
            ),
        );
    }
    eprintln!("done: request/reply");

    let pool_variants = [
        ("raw, 1 connection".to_owned(), (Tracing::Raw, 1)),
        (
            format!("raw, {POOL_PUBLISHERS} connections"),
            (Tracing::Raw, POOL_PUBLISHERS),
        ),
        (
            "nats-otel all sampled, 1 connection".to_owned(),
            (Tracing::Sampled, 1),
        ),
        (
            format!("nats-otel all sampled, {POOL_PUBLISHERS} connections"),
            (Tracing::Sampled, POOL_PUBLISHERS),
        ),
    ];
    let names: Vec<(String, Tracing)> = pool_variants
        .iter()
        .map(|(name, (t, _))| (name.clone(), *t))
        .collect();
    section(
        out,
        &format!("One connection vs a pool: {POOL_PUBLISHERS} publisher tasks, 16 B, {POOL_MESSAGES} messages × {ROUNDS} rounds"),
        &names,
        |i| {
            let (tracing, connections) = pool_variants[i].1;
            pool(url, tracing, connections)
        },
    )
    .await;
}

//! Shared test helpers: a real nats-server per test and in-memory telemetry.

use std::time::Duration;

use nats_otel::{Client, Instrumentation, InstrumentationBuilder};

use nats_otel::W3cPropagator as TraceContextPropagator;
pub use nats_otel_testkit::NatsServer;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

/// An SDK tracer provider exporting synchronously to memory.
pub struct Telemetry {
    pub exporter: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
}

/// What the suite puts in its passwords, tokens and secret payloads: no exported
/// span, in any test, may carry it.
pub const SECRET_MARKER: &str = "s3cr3t";

/// Fails if any name, attribute, event, link or status of `spans` contains one of
/// `secrets` or an NKey seed, or if a body attribute is anything but a size.
pub fn assert_no_secrets_in(spans: &[SpanData], secrets: &[&str]) {
    let check = |span: &str, what: &str, text: &str| {
        for secret in secrets {
            assert!(
                !text.contains(secret),
                "span {span:?}: {what} carries a secret ({secret:?})"
            );
        }
        // NKey seeds: 58 base32 characters starting with 'S'.
        for word in text.split(|c: char| !c.is_ascii_alphanumeric()) {
            let seed_like = word.len() == 58
                && word.starts_with('S')
                && word
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
            assert!(!seed_like, "span {span:?}: {what} carries an NKey seed");
        }
    };
    for span in spans {
        let name = span.name.as_ref();
        check(name, "name", name);
        let kvs = span
            .attributes
            .iter()
            .chain(span.events.events.iter().flat_map(|e| e.attributes.iter()))
            .chain(span.links.links.iter().flat_map(|l| l.attributes.iter()));
        for kv in kvs {
            check(name, kv.key.as_str(), &kv.value.as_str());
            if kv.key.as_str().contains("body") {
                assert!(
                    matches!(kv.value, opentelemetry::Value::I64(_)),
                    "span {name:?}: {} must be a size, is {:?}",
                    kv.key,
                    kv.value
                );
            }
        }
        if let opentelemetry::trace::Status::Error { description } = &span.status {
            check(name, "status", description);
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // Every test's spans are scanned, not only the secure ones'.
        if std::thread::panicking() {
            return;
        }
        if let Ok(spans) = self.exporter.get_finished_spans() {
            assert_no_secrets_in(&spans, &[SECRET_MARKER]);
        }
    }
}

impl Telemetry {
    /// Fails if any exported span carries one of `secrets` (see [`assert_no_secrets_in`]).
    pub fn assert_no_secrets(&self, secrets: &[&str]) {
        assert_no_secrets_in(&self.spans(), secrets);
    }

    pub fn new() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        Self { exporter, provider }
    }

    /// Instrumentation using this provider and the W3C trace-context propagator.
    pub fn builder(&self) -> InstrumentationBuilder {
        Instrumentation::builder()
            .with_tracer_provider(&self.provider)
            .with_propagator(TraceContextPropagator::new())
    }

    pub async fn client(&self, server: &NatsServer) -> Client {
        self.connect(server, self.builder().build()).await
    }

    pub async fn connect(&self, server: &NatsServer, inst: Instrumentation) -> Client {
        inst.connect(server.url(), nats_otel::ConnectOptions::new())
            .await
            .expect("instrumented connect")
    }

    pub fn spans(&self) -> Vec<SpanData> {
        self.exporter.get_finished_spans().expect("finished spans")
    }

    /// The one finished span called `name`.
    pub fn span(&self, name: &str) -> SpanData {
        let mut found: Vec<_> = self
            .spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one span named {name:?}, have: {:?}",
            self.spans()
                .iter()
                .map(|s| s.name.to_string())
                .collect::<Vec<_>>()
        );
        found.remove(0)
    }
}

pub fn attr(span: &SpanData, key: &str) -> Option<opentelemetry::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

pub fn attr_str(span: &SpanData, key: &str) -> Option<String> {
    attr(span, key).map(|v| v.as_str().into_owned())
}

/// `traceparent` for a sampled remote parent.
pub fn traceparent(trace: TraceId, span: SpanId, sampled: bool) -> String {
    format!("00-{trace}-{span}-{}", if sampled { "01" } else { "00" })
}

/// The stream's next item; fails the test (instead of hanging it) if nothing
/// arrives within 10 s.
#[track_caller]
pub fn next<S>(stream: &mut S) -> impl std::future::Future<Output = S::Item> + '_
where
    S: futures_util::Stream + Unpin,
{
    let caller = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::StreamExt::next(stream),
        )
        .await
        {
            Ok(Some(item)) => item,
            Ok(None) => panic!("stream ended early (awaited at {caller})"),
            Err(_) => panic!("nothing arrived within 10 s (awaited at {caller})"),
        }
    }
}

/// Waits until the server has processed everything `client` sent so far
/// (subscriptions included). `flush()` only empties the local write buffer; a
/// request the server answers with "no responders" is a true round trip.
pub async fn sync(client: &async_nats::Client) {
    let err = client
        .request(format!("sync.{}", client.new_inbox()), "".into())
        .await
        .expect_err("nobody answers on the sync subject");
    assert_eq!(
        err.kind(),
        async_nats::client::RequestErrorKind::NoResponders
    );
}

/// An SDK meter provider exporting to memory on demand.
pub struct Metrics {
    pub exporter: opentelemetry_sdk::metrics::InMemoryMetricExporter,
    pub provider: opentelemetry_sdk::metrics::SdkMeterProvider,
}

/// One exported data point, flattened for assertions.
#[derive(Debug, Clone)]
pub struct Point {
    pub name: String,
    pub attributes: Vec<opentelemetry::KeyValue>,
    /// Sum or gauge value; for histograms the number of observations.
    pub value: f64,
}

impl Point {
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.as_str().into_owned())
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .attributes
            .iter()
            .map(|kv| kv.key.as_str().to_owned())
            .collect();
        keys.sort();
        keys
    }
}

impl Metrics {
    pub fn new() -> Self {
        let exporter = opentelemetry_sdk::metrics::InMemoryMetricExporter::default();
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .build();
        Self { exporter, provider }
    }

    /// Every data point as of now (cumulative).
    pub fn collect(&self) -> Vec<Point> {
        use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
        self.exporter.reset();
        self.provider.force_flush().expect("metrics flush");
        let exported = self.exporter.get_finished_metrics().expect("metrics");
        let mut points = Vec::new();
        let Some(last) = exported.last() else {
            return points;
        };
        for scope in last.scope_metrics() {
            for metric in scope.metrics() {
                let name = metric.name().to_owned();
                let mut push = |attributes: Vec<opentelemetry::KeyValue>, value: f64| {
                    points.push(Point {
                        name: name.clone(),
                        attributes,
                        value,
                    })
                };
                macro_rules! flatten {
                    ($data:expr) => {
                        match $data {
                            MetricData::Sum(sum) => {
                                for p in sum.data_points() {
                                    push(p.attributes().cloned().collect(), p.value() as f64);
                                }
                            }
                            MetricData::Gauge(gauge) => {
                                for p in gauge.data_points() {
                                    push(p.attributes().cloned().collect(), p.value() as f64);
                                }
                            }
                            MetricData::Histogram(hist) => {
                                for p in hist.data_points() {
                                    push(p.attributes().cloned().collect(), p.count() as f64);
                                }
                            }
                            MetricData::ExponentialHistogram(_) => {}
                        }
                    };
                }
                match metric.data() {
                    AggregatedMetrics::F64(data) => flatten!(data),
                    AggregatedMetrics::U64(data) => flatten!(data),
                    AggregatedMetrics::I64(data) => flatten!(data),
                }
            }
        }
        points
    }

    /// The schema URLs of the scopes that exported metrics.
    pub fn schema_urls(&self) -> std::collections::BTreeSet<String> {
        self.exporter.reset();
        self.provider.force_flush().expect("metrics flush");
        let exported = self.exporter.get_finished_metrics().expect("metrics");
        exported
            .last()
            .into_iter()
            .flat_map(|m| m.scope_metrics())
            .filter_map(|scope| scope.scope().schema_url().map(str::to_owned))
            .collect()
    }

    /// The points of instrument `name`.
    pub fn points(&self, name: &str) -> Vec<Point> {
        self.collect()
            .into_iter()
            .filter(|p| p.name == name)
            .collect()
    }
}

/// Fetches up to `n` messages already available, the async-nats way
/// (`fetch().max_messages(n).messages()`), and collects them.
pub async fn fetch(
    consumer: &nats_otel::jetstream::PullConsumer,
    n: usize,
) -> Vec<nats_otel::jetstream::Delivery> {
    use futures_util::StreamExt;
    let batch = consumer.fetch().max_messages(n).messages().await.unwrap();
    batch.map(|d| d.expect("delivered")).collect().await
}

/// Waits up to `expires` for `n` messages (`batch().max_messages(n).expires(..)`)
/// and collects them.
pub async fn batch(
    consumer: &nats_otel::jetstream::PullConsumer,
    n: usize,
    expires: Duration,
) -> Vec<nats_otel::jetstream::Delivery> {
    use futures_util::StreamExt;
    let batch = consumer
        .batch()
        .max_messages(n)
        .expires(expires)
        .messages()
        .await
        .unwrap();
    batch.map(|d| d.expect("delivered")).collect().await
}

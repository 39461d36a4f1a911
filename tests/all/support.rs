//! Shared test helpers: a real nats-server per test and in-memory telemetry.

use std::time::Duration;

use nats_otel::{Client, Instrumentation, InstrumentationBuilder};

pub use crate::server::NatsServer;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

/// An SDK tracer provider exporting synchronously to memory.
pub struct Telemetry {
    pub exporter: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
}

impl Telemetry {
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
        inst.connect(server.url(), async_nats::ConnectOptions::new())
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

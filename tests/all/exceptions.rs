//! Exceptions as log records (`OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN`), exported
//! through the SDK's in-memory log exporter and correlated to their spans.

use nats_otel::exceptions::{ExceptionSignal, OPT_IN_VAR};
use nats_otel::semconv;
use nats_otel::InstrumentationBuilder;
use nats_otel_testkit::NatsServer;
use opentelemetry::logs::{AnyValue, Severity};
use opentelemetry_sdk::logs::{InMemoryLogExporter, SdkLogRecord, SdkLoggerProvider};
use opentelemetry_sdk::trace::SpanData;

use crate::support::{next, Telemetry};

struct Logs {
    exporter: InMemoryLogExporter,
    provider: SdkLoggerProvider,
}

impl Logs {
    fn new() -> Self {
        let exporter = InMemoryLogExporter::default();
        let provider = SdkLoggerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        Self { exporter, provider }
    }

    fn records(&self) -> Vec<SdkLogRecord> {
        self.exporter
            .get_emitted_logs()
            .expect("emitted logs")
            .into_iter()
            .map(|log| log.record)
            .collect()
    }
}

fn attribute(record: &SdkLogRecord, key: &str) -> Option<String> {
    record
        .attributes_iter()
        .find(|(k, _)| k.as_str() == key)
        .map(|(_, v)| match v {
            AnyValue::String(s) => s.to_string(),
            other => format!("{other:?}"),
        })
}

fn exception_events(span: &SpanData) -> usize {
    span.events
        .iter()
        .filter(|e| e.name == semconv::EXCEPTION_EVENT)
        .count()
}

/// A handler that fails and a request nobody answers, with a logger provider
/// and `OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN=opt_in`, after `configure`; returns
/// the log records and the spans.
async fn fail_twice(
    opt_in: &str,
    configure: impl FnOnce(InstrumentationBuilder) -> InstrumentationBuilder,
) -> (Vec<SdkLogRecord>, Vec<SpanData>) {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let logs = Logs::new();
    let opt_in = opt_in.to_owned();
    let inst = configure(telemetry.builder().with_logger_provider(&logs.provider))
        .from_vars(|name| (name == OPT_IN_VAR).then(|| opt_in.clone()))
        .unwrap()
        .build();
    let client = telemetry.connect(&server, inst).await;
    let mut orders = client.subscribe("orders.created").await.unwrap();
    client.ping().await.unwrap();
    client.publish("orders.created", "x".into()).await.unwrap();
    let failed = next(&mut orders)
        .await
        .process(|_| async { Err::<(), _>("out of stock") })
        .await;
    assert_eq!(failed, Err("out of stock"));
    let refused = client.request("prices.get", "y".into()).await;
    assert_eq!(
        refused.map_err(|e| e.kind()).err(),
        Some(async_nats::client::RequestErrorKind::NoResponders)
    );
    (logs.records(), telemetry.spans())
}

fn check_records(records: &[SdkLogRecord], spans: &[SpanData]) {
    assert_eq!(records.len(), 2, "one record per failure: {records:?}");
    let process = telemetry_span(spans, "process orders.created");
    let request = telemetry_span(spans, "request prices.get");

    let failed = &records[0];
    assert_eq!(failed.event_name(), Some("messaging.process.exception"));
    assert_eq!(failed.severity_number(), Some(Severity::Error));
    assert_eq!(failed.severity_text(), Some("ERROR"));
    assert_eq!(
        attribute(failed, semconv::EXCEPTION_TYPE).as_deref(),
        Some("_OTHER")
    );
    assert_eq!(
        attribute(failed, semconv::EXCEPTION_MESSAGE).as_deref(),
        Some("out of stock")
    );
    let cx = failed
        .trace_context()
        .expect("correlated to the process span");
    assert_eq!(cx.trace_id, process.span_context.trace_id());
    assert_eq!(cx.span_id, process.span_context.span_id());

    let refused = &records[1];
    assert_eq!(refused.event_name(), Some("messaging.send.exception"));
    assert_eq!(refused.severity_number(), Some(Severity::Warn));
    assert_eq!(
        attribute(refused, semconv::EXCEPTION_TYPE).as_deref(),
        Some("no_responders")
    );
    let cx = refused
        .trace_context()
        .expect("correlated to the request span");
    assert_eq!(cx.trace_id, request.span_context.trace_id());
    assert_eq!(cx.span_id, request.span_context.span_id());
}

fn telemetry_span<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} span"))
}

#[tokio::test]
async fn opt_in_logs_emits_exception_records_instead_of_span_events() {
    let (records, spans) = fail_twice("logs", |b| b).await;
    check_records(&records, &spans);
    let process = telemetry_span(&spans, "process orders.created");
    assert_eq!(exception_events(process), 0, "logs only");
    assert_eq!(
        crate::support::attr_str(process, semconv::ERROR_TYPE).as_deref(),
        Some("_OTHER"),
        "error.type stays on the span"
    );
}

#[tokio::test]
async fn opt_in_logs_dup_emits_records_and_keeps_span_events() {
    let (records, spans) = fail_twice("logs/dup", |b| b).await;
    check_records(&records, &spans);
    let process = telemetry_span(&spans, "process orders.created");
    assert_eq!(exception_events(process), 1, "logs and span events");
}

#[tokio::test]
async fn without_an_opt_in_a_logger_provider_means_logs_and_span_events() {
    let (records, spans) = fail_twice("", |b| b).await;
    check_records(&records, &spans);
    assert_eq!(
        exception_events(telemetry_span(&spans, "process orders.created")),
        1
    );
}

#[tokio::test]
async fn span_events_setting_in_code_wins_over_the_variable_and_logs_nothing() {
    let (records, spans) = fail_twice("logs", |builder| {
        builder.with_exception_signal(ExceptionSignal::SpanEvents)
    })
    .await;
    assert_eq!(records.len(), 0);
    assert_eq!(
        exception_events(telemetry_span(&spans, "process orders.created")),
        1
    );
}

//! `tracing` interop through tracing-opentelemetry's context activation.

use std::sync::{Arc, Mutex};

use opentelemetry::trace::{TraceContextExt, TraceId, TracerProvider};
use tracing::Instrument;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::Layer;

use crate::support::{next, NatsServer, Telemetry};

/// Records, for each `tracing` event, the trace id a log formatter would print.
#[derive(Clone, Default)]
struct TraceIdsOfEvents(Arc<Mutex<Vec<TraceId>>>);

impl<S: tracing::Subscriber> Layer<S> for TraceIdsOfEvents {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: LayerContext<'_, S>) {
        // Only this test's own log lines, not async-nats's internal ones.
        if !event.metadata().target().starts_with(module_path!()) {
            return;
        }
        let sc = nats_otel::tracing_interop::current_span_context();
        self.0.lock().unwrap().push(sc.trace_id());
    }
}

#[tracing::instrument(skip(client))]
async fn place_order(client: &nats_otel::Client) {
    client.publish("orders.placed", "1".into()).await.unwrap();
}

#[tokio::test]
async fn publish_in_instrumented_fn_is_its_child_and_handler_logs_carry_the_trace_id() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let events = TraceIdsOfEvents::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(telemetry.provider.tracer("app")))
        .with(events.clone());
    let _default = tracing::subscriber::set_default(subscriber);

    let client = telemetry.client(&server).await;
    let mut sub = client.subscribe("orders.placed").await.unwrap();
    client.ping().await.expect("ping");

    place_order(&client).await;

    let delivery = next(&mut sub).await;
    let process_trace = delivery.context().span().span_context().trace_id();
    delivery
        .process(|_| {
            async {
                // A bare event, outside any tracing span of the handler's own...
                tracing::info!("handling order");
                // ...and a tracing span opened inside the handler.
                async { tracing::info!("inside step") }
                    .instrument(tracing::info_span!("reserve_stock"))
                    .await;
                Ok::<_, String>(())
            }
        })
        .await
        .unwrap();

    let instrumented = telemetry.span("place_order");
    let publish = telemetry.span("publish orders.placed");
    let process = telemetry.span("process orders.placed");
    let step = telemetry.span("reserve_stock");
    assert_eq!(publish.parent_span_id, instrumented.span_context.span_id());
    assert_eq!(
        publish.span_context.trace_id(),
        instrumented.span_context.trace_id()
    );
    assert_eq!(process.span_context.trace_id(), process_trace);
    assert_eq!(step.parent_span_id, process.span_context.span_id());

    let seen = events.0.lock().unwrap().clone();
    assert_eq!(seen, vec![process_trace, process_trace]);
}

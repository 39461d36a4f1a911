//! Publisher and subscriber in two "services" (two connections, two tracer
//! configurations): the subscriber's `process` span continues the publisher's
//! trace through the `traceparent` header.
//!
//! Run: `cargo run --example pubsub` (starts its own nats-server unless `NATS_URL`
//! is set).

mod shared;

use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let setup = shared::Setup::new();
    let options = || nats_otel::ConnectOptions::new().name("example");
    let publisher = setup
        .instrumentation()
        .connect(&setup.url, options())
        .await?;
    let subscriber = setup
        .instrumentation()
        .connect(&setup.url, options())
        .await?;

    let mut orders = subscriber.subscribe("orders.>").await?;
    // `flush` only empties the local buffer; `ping` is a round trip, so the server
    // has registered the subscription before the publisher sends.
    subscriber.ping().await?;

    for user in [8812, 1337, 42] {
        publisher
            .publish(
                format!("orders.{user}.created"),
                format!("order for {user}").into(),
            )
            .await?;
    }

    for _ in 0..3 {
        let Some(delivery) = orders.next().await else {
            break;
        };
        delivery
            .process(|message| async move {
                println!(
                    "processed {} on {}",
                    String::from_utf8_lossy(&message.payload),
                    message.subject
                );
                Ok::<_, std::io::Error>(())
            })
            .await?;
    }

    setup.print_traces();
    Ok(())
}

//! Request/reply across two services: `request users.get` on the caller, and on
//! the responder `process users.get` with the reply's `publish (temporary)` inside,
//! all in one trace.
//!
//! Run: `cargo run --example request_reply` (starts its own nats-server unless
//! `NATS_URL` is set).

mod shared;

use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let setup = shared::Setup::new();
    let caller = setup
        .instrumentation()
        .connect(&setup.url, nats_otel::ConnectOptions::new())
        .await?;
    let users = setup
        .instrumentation()
        .connect(&setup.url, nats_otel::ConnectOptions::new())
        .await?;

    let mut requests = users
        .queue_subscribe("users.get", "users".to_owned())
        .await?;
    let responder = users.clone();
    let service = tokio::spawn(async move {
        while let Some(delivery) = requests.next().await {
            let responder = responder.clone();
            let result = delivery
                .process(|message| async move {
                    let reply = message.reply.ok_or("request without a reply subject")?;
                    let name = match &message.payload[..] {
                        b"1" => "alice",
                        b"2" => "bob",
                        _ => return Err("unknown user".into()),
                    };
                    responder.publish(reply, name.into()).await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                })
                .await;
            if let Err(err) = result {
                eprintln!("users.get failed: {err}");
            }
        }
    });
    // A round trip: the server has registered the responder before the first request.
    users.ping().await?;

    for id in ["1", "2"] {
        let reply = caller.request("users.get", id.into()).await?;
        println!("user {id} is {}", String::from_utf8_lossy(&reply.payload));
    }
    // Unknown user: the responder records the failure and never replies.
    let timeout = async_nats::Request::new()
        .payload("3".into())
        .timeout(Some(std::time::Duration::from_millis(300)));
    if let Err(err) = caller.send_request("users.get", timeout).await {
        println!("user 3: {err} (see error.type on the request span)");
    }

    service.abort();
    setup.print_traces();
    Ok(())
}

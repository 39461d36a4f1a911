//! The service processes. Each runs with its own `service.name`, talks only
//! through NATS, and stops on `demo.control.shutdown` or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::UpdateErrorKind;
use futures_util::StreamExt;
use nats_otel::jetstream::{self, Backoff, HandlerError, PublishRetry, Worker};
use nats_otel::otlp::{Settings, TelemetryGuard};

use crate::flows::{self, Event, OrderCreated, Outcome, Task};

/// Errors a service reports before exiting with code 2.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// A connected, instrumented service process.
struct Service {
    name: &'static str,
    client: nats_otel::Client,
    js: jetstream::Context,
    run: String,
    // Flushes and shuts telemetry down when the service returns.
    _telemetry: TelemetryGuard,
}

impl Service {
    async fn start(name: &'static str) -> Result<Self, Error> {
        let url = std::env::var("NATS_URL").map_err(|_| "NATS_URL is not set")?;
        let run = std::env::var("DEMO_RUN").unwrap_or_else(|_| "manual".to_owned());
        let telemetry =
            nats_otel::otlp::init_with(Settings::from_env().with_default_service_name(name))?;
        let options = nats_otel::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect();
        let client = nats_otel::connect_with_options(url, options).await?;
        let js = jetstream::new(&client);
        Ok(Self {
            name,
            client,
            js,
            run,
            _telemetry: telemetry,
        })
    }

    /// Tells the parent this service is ready (after its subscriptions exist).
    async fn ready(&self) -> Result<(), Error> {
        // A request, not a publish: the parent's reply proves it saw us.
        self.client
            .inner()
            .request(flows::READY_SUBJECT, self.name.as_bytes().to_vec().into())
            .await?;
        Ok(())
    }

    /// Completes on the parent's shutdown message, Ctrl-C, or, when started by the
    /// demo's parent (`DEMO_WATCH_STDIN`), the parent going away: its end of our
    /// stdin closes even if it was killed.
    async fn shutdown_signal(&self) -> Result<impl std::future::Future<Output = ()>, Error> {
        let mut stop = self
            .client
            .inner()
            .subscribe(flows::SHUTDOWN_SUBJECT)
            .await?;
        self.client.ping().await?;
        let (gone, parent_gone) = tokio::sync::oneshot::channel::<()>();
        if std::env::var_os("DEMO_WATCH_STDIN").is_some() {
            std::thread::spawn(move || {
                let mut sink = [0u8; 64];
                let mut stdin = std::io::stdin();
                while let Ok(n) = std::io::Read::read(&mut stdin, &mut sink) {
                    if n == 0 {
                        break;
                    }
                }
                let _ = gone.send(());
            });
        } else {
            // Never completes: keep the sender alive for the life of the process.
            std::mem::forget(gone);
        }
        Ok(async move {
            tokio::select! {
                _ = stop.next() => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = parent_gone => {}
            }
        })
    }

    async fn emit(js: &jetstream::Context, event: &Event) -> Result<(), Error> {
        let payload = serde_json::to_vec(event)?;
        js.inner()
            .publish(flows::event_subject(event), payload.into())
            .await?
            .await?;
        Ok(())
    }

    async fn consumer(&self, stream: &str, name: &str) -> Result<jetstream::PullConsumer, Error> {
        self.js.get_stream(stream).await?.get_consumer(name).await
    }
}

/// order-service: publishes `--orders` OrderCreated events, then exits.
pub async fn order_service(orders: u32, serve: bool) -> Result<i32, Error> {
    let service = Service::start("order-service").await?;
    let retry = PublishRetry::default();
    let mut stop = std::pin::pin!(service.shutdown_signal().await?);
    // Ready before the scripted orders, so a placed order is never refused. The
    // service lives as long as its endpoint is served.
    let (_orders, mut place) = match serve {
        true => {
            let orders = service
                .client
                .service_builder()
                .description("places orders (the web view's form)")
                .start("orders", "1.0.0")
                .await?;
            let place = orders.group("orders").endpoint("place").await?;
            (Some(orders), Some(place))
        }
        false => (None, None),
    };
    for i in 0..orders {
        let order = OrderCreated {
            order_id: format!("o-{}-{i:04}", service.run),
            user_id: 1 + i % 5,
            amount: 10.0 + f64::from(i % 7) * 2.5,
            timestamp: unix_seconds(),
        };
        let payload = serde_json::to_vec(&order)?;
        let publish = service.js.publish_with_retry(
            flows::ORDER_CREATED,
            &order.order_id,
            None,
            payload.into(),
            &retry,
        );
        tokio::select! {
            biased;
            () = &mut stop => break,
            published = publish => { published?; }
        }
    }
    let Some(place) = &mut place else {
        return Ok(0);
    };
    let mut placed = 0u32;
    loop {
        let request = tokio::select! {
            () = &mut stop => break,
            request = place.next() => match request {
                Some(request) => request,
                None => break,
            },
        };
        let response = match PlaceOrder::parse(&request.message().payload) {
            Ok(wanted) => {
                let order = OrderCreated {
                    order_id: format!("w-{}-{placed:04}", service.run),
                    user_id: wanted.user_id,
                    amount: wanted.amount,
                    timestamp: unix_seconds(),
                };
                placed += 1;
                // Published inside the request's process span: the order's trace
                // is the caller's.
                let published = request
                    .in_span(service.js.publish_with_retry(
                        flows::ORDER_CREATED,
                        &order.order_id,
                        None,
                        serde_json::to_vec(&order)?.into(),
                        &retry,
                    ))
                    .await;
                match published {
                    Ok(_) => Ok(serde_json::json!({ "order_id": order.order_id })
                        .to_string()
                        .into()),
                    Err(err) => Err(async_nats::service::error::Error {
                        status: format!("order not stored: {err}"),
                        code: 503,
                    }),
                }
            }
            Err(why) => Err(async_nats::service::error::Error {
                status: why,
                code: 400,
            }),
        };
        let _ = request.respond(response).await;
    }
    Ok(0)
}

/// What the order form sends: `{"user_id": 1..=1000, "amount": 0.01..=100000}`.
#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceOrder {
    user_id: u32,
    amount: f64,
}

impl PlaceOrder {
    /// The order in `payload`, or why it is refused.
    fn parse(payload: &[u8]) -> Result<Self, String> {
        let order: Self = serde_json::from_slice(payload).map_err(|e| {
            format!("expected {{\"user_id\": 1-1000, \"amount\": 0.01-100000}}: {e}")
        })?;
        if !(1..=1000).contains(&order.user_id) {
            return Err(format!(
                "user_id {} is not between 1 and 1000",
                order.user_id
            ));
        }
        if !(order.amount.is_finite() && (0.01..=100_000.0).contains(&order.amount)) {
            return Err(format!(
                "amount {} is not between 0.01 and 100000",
                order.amount
            ));
        }
        Ok(order)
    }
}

/// users-service: the `users` Service API with a `users.get` endpoint.
pub async fn users_service() -> Result<i32, Error> {
    let service = Service::start("users-service").await?;
    let users = service
        .client
        .service_builder()
        .description("customer directory")
        .start("users", "1.0.0")
        .await?;
    let mut get = users.group("users").endpoint("get").await?;
    let stop = service.shutdown_signal().await?;
    service.ready().await?;
    let mut stop = std::pin::pin!(stop);
    loop {
        let request = tokio::select! {
            () = &mut stop => break,
            request = get.next() => match request {
                Some(request) => request,
                None => break,
            },
        };
        let reply = std::str::from_utf8(&request.message().payload)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|id| (1..=flows::CUSTOMERS_ON_FILE).contains(id))
            .map(|id| serde_json::json!({ "user_id": id, "name": format!("customer-{id}") }));
        let response = match reply {
            Some(user) => Ok(user.to_string().into()),
            None => Err(async_nats::service::error::Error {
                status: "no such user".to_owned(),
                code: 404,
            }),
        };
        // A caller that gave up leaves nobody to answer; nothing to do then.
        let _ = request.respond(response).await;
    }
    Ok(0)
}

/// inventory-service: reserves stock per order with compare-and-set, after
/// looking the customer up in users-service.
pub async fn inventory_service() -> Result<i32, Error> {
    let service = Service::start("inventory-service").await?;
    let consumer = service
        .consumer(flows::ORDERS_STREAM, flows::INVENTORY_CONSUMER)
        .await?;
    let stock = service.js.key_value(
        service
            .js
            .inner()
            .get_key_value(flows::STOCK_BUCKET)
            .await?,
    );
    let client = service.client.clone();
    let js = service.js.clone();
    let stop = service.shutdown_signal().await?;
    service.ready().await?;
    let worker = Worker::new(&service.js, consumer)
        .concurrency(8)
        .backoff(Backoff::List(vec![Duration::from_millis(200)]));
    let deps = Arc::new((client, stock, js));
    worker
        .run(
            move |message| {
                let deps = deps.clone();
                async move {
                    let (client, stock, js) = &*deps;
                    let order: OrderCreated = serde_json::from_slice(&message.payload)
                        .map_err(|e| HandlerError::fatal(format!("malformed order: {e}")))?;
                    let user = client
                        .request("users.get", order.user_id.to_string().into())
                        .await
                        .map_err(HandlerError::transient)?;
                    if user
                        .headers
                        .as_ref()
                        .is_some_and(|h| h.get("Nats-Service-Error-Code").is_some())
                    {
                        return Err(HandlerError::fatal(format!(
                            "unknown customer {}",
                            order.user_id
                        )));
                    }
                    reserve(stock, &format!("sku.{}", order.user_id % 3)).await?;
                    Service::emit(
                        js,
                        &Event::Reserved {
                            order_id: order.order_id,
                        },
                    )
                    .await
                    .map_err(HandlerError::transient)?;
                    Ok(())
                }
            },
            stop,
        )
        .await;
    Ok(0)
}

/// Takes one unit of stock with compare-and-set, retrying on conflicts.
async fn reserve(stock: &jetstream::kv::Store, key: &str) -> Result<(), HandlerError> {
    for _ in 0..10 {
        let current = stock.entry(key).await.map_err(HandlerError::transient)?;
        let result = match current {
            Some(entry) if entry.operation == async_nats::jetstream::kv::Operation::Put => {
                let level: i64 = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                stock
                    .update(key, (level - 1).to_string().into(), entry.revision)
                    .await
                    .map(|_| ())
            }
            _ => {
                // First use of this key (or another replica just created it):
                // either way the next round reads it.
                let _ = stock.create(key, "1000000".into()).await;
                continue;
            }
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(HandlerError::transient(e)),
        }
    }
    Err(HandlerError::transient(
        "stock contention: too many conflicts",
    ))
}

/// notification-service: stores a receipt and publishes `orders.notified`.
pub async fn notification_service() -> Result<i32, Error> {
    let service = Service::start("notification-service").await?;
    let consumer = service
        .consumer(flows::ORDERS_STREAM, flows::NOTIFICATION_CONSUMER)
        .await?;
    let receipts = service.js.get_object_store(flows::RECEIPTS_BUCKET).await?;
    let js = service.js.clone();
    let stop = service.shutdown_signal().await?;
    service.ready().await?;
    let worker = Worker::new(&service.js, consumer)
        .concurrency(8)
        .backoff(Backoff::List(vec![Duration::from_millis(200)]));
    let deps = Arc::new((receipts, js));
    worker
        .run(
            move |message| {
                let deps = deps.clone();
                async move {
                    let (receipts, js) = &*deps;
                    let order: OrderCreated = serde_json::from_slice(&message.payload)
                        .map_err(|e| HandlerError::fatal(format!("malformed order: {e}")))?;
                    let receipt = serde_json::json!({
                        "order_id": order.order_id,
                        "amount": order.amount,
                        "user_id": order.user_id,
                    })
                    .to_string();
                    receipts
                        .put(
                            format!("receipt-{}", order.order_id).as_str(),
                            &mut receipt.as_bytes(),
                        )
                        .await
                        .map_err(HandlerError::transient)?;
                    js.publish_with_id(
                        flows::ORDER_NOTIFIED,
                        &format!("notified-{}", order.order_id),
                        order.order_id.clone().into(),
                    )
                    .await
                    .map_err(HandlerError::transient)?
                    .await
                    .map_err(HandlerError::transient)?;
                    Service::emit(
                        js,
                        &Event::Notified {
                            order_id: order.order_id,
                        },
                    )
                    .await
                    .map_err(HandlerError::transient)?;
                    Ok(())
                }
            },
            stop,
        )
        .await;
    Ok(0)
}

/// task-producer: enqueues the planned tasks, then exits.
pub async fn task_producer(
    tasks: u32,
    fail_rate: f64,
    poison_rate: f64,
    seed: u64,
) -> Result<i32, Error> {
    let service = Service::start("task-producer").await?;
    let retry = PublishRetry::default();
    let mut stop = std::pin::pin!(service.shutdown_signal().await?);
    for mut task in flows::plan_tasks(tasks, fail_rate, poison_rate, seed) {
        task.task_id = format!("{}-{}", service.run, task.task_id);
        let payload = serde_json::to_vec(&task)?;
        let publish = service.js.publish_with_retry(
            format!("tasks.{}", task.kind),
            &task.task_id,
            None,
            payload.into(),
            &retry,
        );
        tokio::select! {
            biased;
            () = &mut stop => break,
            published = publish => { published?; }
        }
    }
    Ok(0)
}

/// task-worker: one of N processes sharing the `task-workers` consumer.
pub async fn task_worker(id: u32) -> Result<i32, Error> {
    let service = Service::start("task-worker").await?;
    let consumer = service
        .consumer(flows::TASKS_STREAM, flows::TASK_CONSUMER)
        .await?;
    let js = service.js.clone();
    let stop = service.shutdown_signal().await?;
    service.ready().await?;
    let worker = Worker::new(&service.js, consumer)
        .concurrency(4)
        .max_deliver(flows::TASK_MAX_DELIVER)
        .backoff(Backoff::List(vec![
            Duration::from_millis(100),
            Duration::from_millis(300),
        ]));
    worker
        .run(
            move |message| {
                let js = js.clone();
                async move {
                    let task: Task = serde_json::from_slice(&message.payload)
                        .map_err(|e| HandlerError::fatal(format!("malformed task: {e}")))?;
                    let attempt = message.info().map(|i| i.delivered).unwrap_or(1);
                    // Simulated work.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let outcome = if task.poison {
                        Outcome::Poison
                    } else if attempt <= task.fail_times {
                        Outcome::Transient
                    } else {
                        Outcome::Done
                    };
                    Service::emit(
                        &js,
                        &Event::TaskAttempt {
                            task_id: task.task_id.clone(),
                            attempt,
                            outcome,
                        },
                    )
                    .await
                    .map_err(HandlerError::transient)?;
                    match outcome {
                        Outcome::Done => Ok(()),
                        Outcome::Transient => Err(HandlerError::transient(format!(
                            "{} backend busy (attempt {attempt})",
                            task.kind
                        ))),
                        Outcome::Poison => Err(HandlerError::transient(format!(
                            "{} cannot be processed",
                            task.kind
                        ))),
                    }
                }
            },
            stop,
        )
        .await;
    let _ = id;
    Ok(0)
}

fn unix_seconds() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs().to_string())
        .unwrap_or_default()
}

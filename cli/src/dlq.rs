//! `nats-otel dlq`: list, show, replay and purge dead letters.

use std::io::IsTerminal;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use nats_otel::jetstream::dead_letter::{
    DeadLetterErrorKind, DeadLetterQueue, Filter, Letter, OnFailure, ReplayOptions,
};
use serde_json::json;

use crate::connection::{self, ConnectArgs};
use crate::format;
use crate::{Fatal, Outcome};

/// Letters read per page when a command works through a whole selection.
const PAGE: usize = 500;

/// Largest payload decoded for `show`.
const MAX_DECODED: usize = 1 << 20;

#[derive(Args)]
pub(crate) struct DlqArgs {
    /// The dead-letter stream.
    #[arg(long, default_value = "DLQ", global = true)]
    stream: String,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// A table of dead letters: sequence, age, original subject, source
    /// stream/sequence, consumer, deliveries, reason, trace id.
    Ls {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many letters.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// JSON (one array) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter: provenance, headers, payload preview, trace id.
    Show {
        /// Its sequence in the dead-letter stream.
        sequence: u64,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Republish dead letters to their source subject (or --to), deleting each
    /// once the server acknowledged its replay.
    Replay {
        #[command(flatten)]
        selection: Selection,
        /// Publish to this subject instead of each letter's source subject.
        #[arg(long)]
        to: Option<String>,
        /// Show what would be replayed; publish and delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// At most this many replays per second.
        #[arg(long)]
        rate: Option<f64>,
        /// Go on after a failed replay (default: stop at the first).
        #[arg(long)]
        continue_on_error: bool,
    },
    /// Delete dead letters.
    Purge {
        #[command(flatten)]
        selection: Selection,
        /// Delete without asking (required unless --dry-run).
        #[arg(long)]
        yes: bool,
        /// Show what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Which letters: named sequences, or everything a filter passes.
#[derive(Args)]
struct Selection {
    /// Dead-letter stream sequences.
    sequences: Vec<u64>,
    /// Every letter (narrowed by the filters, if any).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    filter: FilterArgs,
}

#[derive(Args, Default)]
struct FilterArgs {
    /// Original subject matches this NATS pattern (orders.*, orders.>).
    #[arg(long)]
    subject: Option<String>,
    /// Came from this stream.
    #[arg(long)]
    source_stream: Option<String>,
    /// Given up on by this consumer.
    #[arg(long)]
    consumer: Option<String>,
    /// Reason contains this text (case-insensitive).
    #[arg(long)]
    reason: Option<String>,
    /// Stored at least this long ago (90s, 15m, 2h, 7d).
    #[arg(long, value_parser = format::parse_duration)]
    older_than: Option<std::time::Duration>,
    /// Stored less than this long ago.
    #[arg(long, value_parser = format::parse_duration)]
    newer_than: Option<std::time::Duration>,
}

impl FilterArgs {
    fn any(&self) -> bool {
        self.subject.is_some()
            || self.source_stream.is_some()
            || self.consumer.is_some()
            || self.reason.is_some()
            || self.older_than.is_some()
            || self.newer_than.is_some()
    }

    fn build(&self) -> Result<Filter, Fatal> {
        let mut filter = Filter::new();
        if let Some(pattern) = &self.subject {
            filter = filter
                .source_subject(pattern)
                .map_err(|e| Fatal(format!("--subject: {e}")))?;
        }
        if let Some(stream) = &self.source_stream {
            filter = filter.source_stream(stream);
        }
        if let Some(consumer) = &self.consumer {
            filter = filter.consumer(consumer);
        }
        if let Some(reason) = &self.reason {
            filter = filter.reason_contains(reason);
        }
        if let Some(age) = self.older_than {
            filter = filter.older_than(age);
        }
        if let Some(age) = self.newer_than {
            filter = filter.newer_than(age);
        }
        Ok(filter)
    }
}

pub(crate) async fn run(
    client: &nats_otel::Client,
    connection: &ConnectArgs,
    args: DlqArgs,
) -> Result<Outcome, Fatal> {
    let js = connection::jetstream(client, connection)?;
    let queue = DeadLetterQueue::open(&js, &args.stream)
        .await
        .map_err(|e| match e.kind() {
            DeadLetterErrorKind::StreamNotFound => Fatal(format!(
                "no dead-letter stream `{}` (name another with --stream)",
                args.stream
            )),
            _ => Fatal(e.to_string()),
        })?;
    match args.command {
        DlqCommand::Ls {
            filter,
            limit,
            json,
        } => list(&queue, &filter.build()?, limit, json).await,
        DlqCommand::Show { sequence, json } => show(&queue, sequence, json).await,
        DlqCommand::Replay {
            selection,
            to,
            dry_run,
            rate,
            continue_on_error,
        } => {
            let mut options =
                ReplayOptions::new()
                    .dry_run(dry_run)
                    .on_failure(if continue_on_error {
                        OnFailure::Continue
                    } else {
                        OnFailure::Stop
                    });
            if let Some(to) = to {
                options = options.to(to);
            }
            if let Some(rate) = rate {
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(Fatal(format!("--rate {rate}: expected a positive number")));
                }
                options = options.rate(rate);
            }
            replay(&queue, &selection, &options, dry_run, !continue_on_error).await
        }
        DlqCommand::Purge {
            selection,
            yes,
            dry_run,
        } => {
            if !yes && !dry_run {
                return Err(Fatal(
                    "purge deletes dead letters for good: add --yes (or --dry-run to see what it would delete)"
                        .into(),
                ));
            }
            purge(&queue, &selection, dry_run).await
        }
    }
}

fn row(letter: &Letter) -> Vec<String> {
    let info = letter.info.as_ref();
    let text = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    let reason = match (info, letter.problems().is_empty()) {
        (None, _) => "(not a dead letter)".to_owned(),
        (Some(info), true) => format::cell(&info.reason, 60),
        (Some(info), false) => format!("! {}", format::cell(&info.reason, 58)),
    };
    vec![
        letter.sequence.to_string(),
        format::age(letter.age()),
        text(info.and_then(|i| i.subject.clone())),
        match info {
            Some(i) => format!(
                "{}/{}",
                i.stream.as_deref().unwrap_or("-"),
                i.sequence.map_or("-".into(), |s| s.to_string())
            ),
            None => "-".into(),
        },
        text(info.and_then(|i| i.consumer.clone())),
        text(info.and_then(|i| i.delivery_count.map(|d| d.to_string()))),
        reason,
        text(letter.trace_id()),
    ]
}

fn letter_json(letter: &Letter) -> serde_json::Value {
    let info = letter.info.as_ref();
    json!({
        "sequence": letter.sequence,
        "dlq_subject": letter.subject,
        "stored": format::utc(letter.stored),
        "age_seconds": letter.age().as_secs(),
        "subject": info.and_then(|i| i.subject.clone()),
        "source_stream": info.and_then(|i| i.stream.clone()),
        "source_sequence": info.and_then(|i| i.sequence),
        "consumer": info.and_then(|i| i.consumer.clone()),
        "deliveries": info.and_then(|i| i.delivery_count),
        "reason": info.map(|i| i.reason.clone()),
        "original_message_id": info.and_then(|i| i.original_message_id.clone()),
        "trace_id": letter.trace_id(),
        "problems": letter.problems(),
    })
}

async fn list(
    queue: &DeadLetterQueue,
    filter: &Filter,
    limit: usize,
    json: bool,
) -> Result<Outcome, Fatal> {
    let letters = queue.list(filter, limit).await?;
    if json {
        let all: Vec<_> = letters.iter().map(letter_json).collect();
        println!("{}", serde_json::Value::Array(all));
        return Ok(Outcome::Done);
    }
    let rows: Vec<Vec<String>> = letters.iter().map(row).collect();
    print!(
        "{}",
        format::table(
            &[
                "SEQ",
                "AGE",
                "SUBJECT",
                "SOURCE",
                "CONSUMER",
                "DELIVERIES",
                "REASON",
                "TRACE"
            ],
            &rows
        )
    );
    let malformed = letters.iter().filter(|l| !l.problems().is_empty()).count();
    eprintln!(
        "{} dead letter(s) in {}{}",
        letters.len(),
        queue.name(),
        if malformed > 0 {
            format!("; {malformed} with malformed Dlq-* headers (marked !, see `dlq show`)")
        } else {
            String::new()
        }
    );
    Ok(Outcome::Done)
}

async fn show(queue: &DeadLetterQueue, sequence: u64, json: bool) -> Result<Outcome, Fatal> {
    let letter = queue.get(sequence).await?;
    let decoded =
        nats_otel::compression::decode(Some(&letter.headers), &letter.payload, MAX_DECODED);
    let (payload, encoding) = match &decoded {
        Ok(Some(bytes)) => (&bytes[..], "decoded from its Content-Encoding"),
        Ok(None) => (&letter.payload[..], "as stored"),
        Err(_) => (
            &letter.payload[..],
            "as stored: its Content-Encoding does not decode",
        ),
    };
    let headers: Vec<(String, String)> = letter
        .headers
        .iter()
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(move |v| (name.to_owned(), v.as_str().to_owned()))
        })
        .collect();
    if json {
        let mut value = letter_json(&letter);
        value["headers"] = json!(headers);
        value["payload_preview"] = json!(format::preview(payload, 1024));
        value["payload_bytes"] = json!(letter.payload.len());
        println!("{value}");
        return Ok(Outcome::Done);
    }
    let info = letter.info.as_ref();
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!(
        "dead letter {} in {} (stored {}, {} ago)",
        letter.sequence,
        queue.name(),
        format::utc(letter.stored),
        format::age(letter.age())
    );
    println!("  stored under:  {}", letter.subject);
    println!(
        "  reason:        {}",
        or_dash(info.map(|i| format::cell(&i.reason, 200)))
    );
    println!(
        "  subject:       {}",
        or_dash(info.and_then(|i| i.subject.clone()))
    );
    println!(
        "  source:        stream {} sequence {}",
        or_dash(info.and_then(|i| i.stream.clone())),
        or_dash(info.and_then(|i| i.sequence.map(|s| s.to_string())))
    );
    println!(
        "  consumer:      {} (delivered {}×)",
        or_dash(info.and_then(|i| i.consumer.clone())),
        or_dash(info.and_then(|i| i.delivery_count.map(|d| d.to_string())))
    );
    println!(
        "  message id:    {}",
        or_dash(info.and_then(|i| i.original_message_id.clone()))
    );
    println!("  trace id:      {}", or_dash(letter.trace_id()));
    for problem in letter.problems() {
        println!("  malformed:     {problem}");
    }
    println!("headers:");
    for (name, value) in &headers {
        println!("  {name}: {}", format::cell(value, 200));
    }
    println!("payload ({} bytes, {encoding}):", letter.payload.len());
    println!("  {}", format::preview(payload, 1024));
    Ok(Outcome::Done)
}

/// The letters a selection names, a page at a time: the sequences (each must
/// exist), or every letter the filter passes.
struct Pages<'a> {
    queue: &'a DeadLetterQueue,
    /// The named sequences, taken on the first call.
    named: Option<Vec<u64>>,
    /// The filter, moved past each page; `None` once done.
    filter: Option<Filter>,
}

impl<'a> Pages<'a> {
    fn new(queue: &'a DeadLetterQueue, selection: &Selection) -> Result<Self, Fatal> {
        if !selection.sequences.is_empty() {
            if selection.all || selection.filter.any() {
                return Err(Fatal("name sequences, or --all / filters, not both".into()));
            }
            return Ok(Self {
                queue,
                named: Some(selection.sequences.clone()),
                filter: None,
            });
        }
        if !selection.all && !selection.filter.any() {
            return Err(Fatal(
                "name sequences, --all, or a filter (see --help)".into(),
            ));
        }
        Ok(Self {
            queue,
            named: None,
            filter: Some(selection.filter.build()?),
        })
    }

    async fn next(&mut self) -> Result<Option<Vec<Letter>>, Fatal> {
        if let Some(sequences) = self.named.take() {
            let mut letters = Vec::with_capacity(sequences.len());
            for sequence in sequences {
                letters.push(self.queue.get(sequence).await.map_err(|e| match e.kind() {
                    DeadLetterErrorKind::SequenceNotFound => Fatal(format!(
                        "no dead letter at sequence {sequence} in {}",
                        self.queue.name()
                    )),
                    _ => Fatal(e.to_string()),
                })?);
            }
            return Ok(Some(letters));
        }
        let Some(filter) = self.filter.take() else {
            return Ok(None);
        };
        let page = self.queue.list(&filter, PAGE).await?;
        let Some(last) = page.last().map(|l| l.sequence) else {
            return Ok(None);
        };
        self.filter = Some(filter.from_sequence(last + 1));
        Ok(Some(page))
    }
}

fn progress(total: u64, what: &str) -> ProgressBar {
    if total < 50 || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} ({per_sec}, {eta})")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

async fn replay(
    queue: &DeadLetterQueue,
    selection: &Selection,
    options: &ReplayOptions,
    dry_run: bool,
    stop_on_failure: bool,
) -> Result<Outcome, Fatal> {
    let bar = progress(queue.len().await?, "replaying");
    let (mut replayed, mut duplicates, mut failed, mut not_tried) =
        (0usize, 0usize, Vec::new(), 0usize);
    let mut pages = Pages::new(queue, selection)?;
    while let Some(letters) = pages.next().await? {
        let report = queue.replay(&letters, options).await;
        bar.inc((report.replayed.len() + report.failed.len()) as u64);
        if dry_run {
            for done in &report.replayed {
                println!("would replay {} to {}", done.sequence, done.subject);
            }
        }
        replayed += report.replayed.len();
        duplicates += report.replayed.iter().filter(|r| r.duplicate).count();
        not_tried += report.not_tried;
        let stop = stop_on_failure && !report.failed.is_empty();
        failed.extend(report.failed);
        if stop {
            break;
        }
    }
    bar.finish_and_clear();
    for (sequence, why) in &failed {
        eprintln!("sequence {sequence}: {why}");
    }
    let verb = if dry_run { "would replay" } else { "replayed" };
    println!(
        "{verb} {replayed} dead letter(s) from {}{}{}{}",
        queue.name(),
        if duplicates > 0 {
            format!(" ({duplicates} already stored by an earlier run)")
        } else {
            String::new()
        },
        if failed.is_empty() {
            String::new()
        } else {
            format!("; {} failed", failed.len())
        },
        if stop_on_failure && !failed.is_empty() {
            format!(
                "; stopped at the first failure, {not_tried} more in this page not tried \
                 (--continue-on-error goes on)"
            )
        } else {
            String::new()
        },
    );
    Ok(if failed.is_empty() && not_tried == 0 {
        Outcome::Done
    } else {
        Outcome::Partial
    })
}

async fn purge(
    queue: &DeadLetterQueue,
    selection: &Selection,
    dry_run: bool,
) -> Result<Outcome, Fatal> {
    let bar = progress(queue.len().await?, "purging");
    let (mut purged, mut failed) = (0usize, Vec::new());
    let mut pages = Pages::new(queue, selection)?;
    while let Some(letters) = pages.next().await? {
        let report = queue.purge(&letters, dry_run).await;
        bar.inc(letters.len() as u64);
        if dry_run {
            for sequence in &report.purged {
                println!("would purge {sequence}");
            }
        }
        purged += report.purged.len();
        failed.extend(report.failed);
    }
    bar.finish_and_clear();
    for (sequence, why) in &failed {
        eprintln!("sequence {sequence}: {why}");
    }
    println!(
        "{} {purged} dead letter(s) from {}{}",
        if dry_run { "would purge" } else { "purged" },
        queue.name(),
        if failed.is_empty() {
            String::new()
        } else {
            format!("; {} failed", failed.len())
        }
    );
    Ok(if failed.is_empty() {
        Outcome::Done
    } else {
        Outcome::Partial
    })
}

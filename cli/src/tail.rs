//! `nats-otel tail SUBJECT`: one line per message with its trace context.

use clap::Args;
use futures_util::StreamExt;
use nats_otel::jetstream::dead_letter::DeadLetterInfo;
use serde_json::json;

use crate::format;
use crate::{Fatal, Outcome};

#[derive(Args)]
pub(crate) struct TailArgs {
    /// The subject (wildcards allowed).
    subject: String,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Stop after this many messages (default: run until Ctrl-C).
    #[arg(long)]
    count: Option<u64>,
}

/// The trace id and sampled flag of a `traceparent`, if well formed.
fn trace_context(traceparent: &str) -> Option<(String, bool)> {
    let mut parts = traceparent.trim().split('-');
    let (_, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !(hex(trace, 32) && hex(span, 16) && hex(flags, 2)) {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some((trace.to_ascii_lowercase(), sampled))
}

pub(crate) async fn run(client: &nats_otel::Client, args: TailArgs) -> Result<Outcome, Fatal> {
    // The untraced client: watching must not add spans to the traces it shows.
    let mut messages = client
        .inner()
        .subscribe(args.subject.clone())
        .await
        .map_err(|e| Fatal(format!("cannot subscribe to `{}`: {e}", args.subject)))?;
    client
        .ping()
        .await
        .map_err(|e| Fatal(format!("cannot subscribe to `{}`: {e}", args.subject)))?;
    eprintln!("listening on {} (Ctrl-C stops)", args.subject);
    let mut seen = 0u64;
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    while args.count.is_none_or(|count| seen < count) {
        let message = tokio::select! {
            _ = &mut interrupted => break,
            message = messages.next() => match message {
                Some(message) => message,
                None => return Err(Fatal("the connection closed".into())),
            },
        };
        seen += 1;
        let headers = message.headers.as_ref();
        let get = |name: &str| {
            headers
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let trace = get("traceparent").and_then(|t| trace_context(&t));
        let id = get("Nats-Msg-Id");
        let reason = headers
            .and_then(DeadLetterInfo::from_headers)
            .map(|info| info.reason);
        let now = std::time::SystemTime::now();
        if args.json {
            println!(
                "{}",
                json!({
                    "time": format::utc(now),
                    "subject": message.subject.as_str(),
                    "size": message.payload.len(),
                    "trace_id": trace.as_ref().map(|t| t.0.clone()),
                    "sampled": trace.as_ref().map(|t| t.1),
                    "message_id": id,
                    "dead_letter_reason": reason,
                })
            );
        } else {
            println!(
                "{} {} {}B trace={} sampled={} id={}{}",
                format::clock(now),
                message.subject,
                message.payload.len(),
                trace.as_ref().map_or("-".into(), |t| t.0.clone()),
                trace
                    .as_ref()
                    .map_or("-", |t| if t.1 { "yes" } else { "no" }),
                id.as_deref().map_or("-".into(), |id| format::cell(id, 80)),
                reason.map_or(String::new(), |r| format!(
                    " dead-letter: {}",
                    format::cell(&r, 120)
                )),
            );
        }
    }
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_reads_the_id_and_the_sampled_flag() {
        assert_eq!(
            trace_context("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some(("0af7651916cd43dd8448eb211c80319c".to_owned(), true))
        );
        assert_eq!(
            trace_context("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            Some(("0af7651916cd43dd8448eb211c80319c".to_owned(), false))
        );
        assert_eq!(trace_context("garbage"), None);
        assert_eq!(trace_context("00-xyz-b7ad6b7169203331-01"), None);
    }
}

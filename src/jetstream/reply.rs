//! The `$JS.ACK.…` reply subject of a JetStream delivery, read once per message
//! for what the telemetry and the `Worker` need: sequences, the delivery count,
//! the pending count and when the stream stored the message.
//!
//! async-nats's `Message::info` reads the same subject into an `Info` with a
//! `time::OffsetDateTime` (about 1,500 instructions, half of what metrics cost a
//! consumed message); this reads only the numbers, with no 128-bit parse or date
//! conversion (about 550).

/// Where a delivered message sits, read from its reply subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AckInfo {
    pub(crate) stream_sequence: u64,
    pub(crate) consumer_sequence: u64,
    pub(crate) delivered: i64,
    pub(crate) pending: u64,
    /// When the stream stored the message, in Unix nanoseconds.
    pub(crate) published: i128,
}

/// Reads `reply` the way async-nats's `Message::info` does (ADR-15: 7 tokens
/// after `$JS.ACK.`, or 9 and more with the domain and account hash first;
/// tokens past the 10th are ignored); `None` when it is not such a subject.
pub(crate) fn parse(reply: &str) -> Option<AckInfo> {
    let rest = reply.strip_prefix("$JS.ACK.")?.as_bytes();
    // One pass for where each of the first 10 tokens ends (its dot, or the end),
    // eight bytes at a time.
    let mut ends = [0usize; 10];
    let mut tokens = 0;
    let mut at = 0;
    while tokens < ends.len() {
        let Some(Ok(word)) = rest.get(at..at + 8).map(<[u8; 8]>::try_from) else {
            break;
        };
        let mut dots = dots_in(u64::from_le_bytes(word));
        while dots != 0 && tokens < ends.len() {
            ends[tokens] = at + (dots.trailing_zeros() / 8) as usize;
            tokens += 1;
            dots &= dots - 1;
        }
        at += 8;
    }
    for (i, &byte) in rest.iter().enumerate().skip(at) {
        if tokens == ends.len() {
            break;
        }
        if byte == b'.' {
            ends[tokens] = i;
            tokens += 1;
        }
    }
    if tokens < ends.len() {
        ends[tokens] = rest.len();
        tokens += 1;
    }
    // delivered, stream sequence, consumer sequence, timestamp, pending.
    let first = match tokens {
        7 => 2,
        9.. => 4,
        _ => return None,
    };
    let token = |k: usize| {
        let start = match k {
            0 => 0,
            _ => ends[k - 1] + 1,
        };
        &rest[start..ends[k]]
    };
    let stamp = token(first + 3);
    let published = match number(stamp) {
        Some(nanos) => i128::from(nanos),
        // Before 1970 (a clock gone wrong): async-nats reads it too.
        None => std::str::from_utf8(stamp).ok()?.parse().ok()?,
    };
    Some(AckInfo {
        delivered: i64::try_from(number(token(first))?).ok()?,
        stream_sequence: number(token(first + 1))?,
        consumer_sequence: number(token(first + 2))?,
        published,
        pending: number(token(first + 4))?,
    })
}

/// The high bit of each byte of `word` that is a `.`, exactly (no carries
/// between bytes).
fn dots_in(word: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let x = word ^ 0x2e2e_2e2e_2e2e_2e2e;
    !(((x & LOW7) + LOW7) | x | LOW7)
}

/// A decimal `u64` of digits only (what the server writes).
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    if digits.len() < 20 {
        // At most 19 digits cannot overflow: no checks per digit.
        for &byte in digits {
            let digit = byte.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            value = value * 10 + u64::from(digit);
        }
        return Some(value);
    }
    for &byte in digits {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What async-nats's own parser reads from `reply`, in our terms.
    fn theirs(context: &async_nats::jetstream::Context, reply: &str) -> Option<AckInfo> {
        let message = async_nats::Message {
            subject: "s".into(),
            reply: Some(reply.into()),
            payload: bytes::Bytes::new(),
            headers: None,
            status: None,
            description: None,
            length: 0,
        };
        let message = async_nats::jetstream::Message {
            message,
            context: context.clone(),
        };
        let info = message.info().ok()?;
        Some(AckInfo {
            stream_sequence: info.stream_sequence,
            consumer_sequence: info.consumer_sequence,
            delivered: info.delivered,
            pending: info.pending,
            published: info.published.unix_timestamp_nanos(),
        })
    }

    /// A JetStream context for async-nats's parser (no server is needed: it
    /// only parses).
    async fn context() -> async_nats::jetstream::Context {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:9")
            .await
            .expect("connect with retry returns at once");
        async_nats::jetstream::new(client)
    }

    #[tokio::test]
    async fn reads_what_async_nats_reads_from_generated_subjects_of_every_form() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let context = context().await;
        let name = "[a-zA-Z_]{1,6}";
        let unsigned = || {
            prop_oneof![
                4 => "[0-9]{1,3}",
                2 => "[0-9]{19}",
                1 => "[0-9]{20,40}",
                1 => "[a-z]{0,2}",
            ]
        };
        // Servers write no sign; only a timestamp before 1970 has one.
        let numbers = (
            unsigned(),
            unsigned(),
            unsigned(),
            prop_oneof![3 => unsigned(), 1 => "-[0-9]{1,4}"],
            unsigned(),
        )
            .prop_map(|(a, b, c, d, e)| vec![a, b, c, d, e]);
        // Each ADR-15 form (7, 9, 10 and more tokens) and two that are neither
        // (8 tokens, and 5 names then the numbers).
        let subjects = (
            0..5usize,
            proptest::collection::vec(name, 5),
            numbers,
            proptest::collection::vec(name, 0..4),
        )
            .prop_map(|(form, names, numbers, extra)| {
                let names = match form {
                    0 => &names[..2],
                    4 => &names[..],
                    2 if names[0].len() > 3 => &names[..3],
                    _ => &names[..4],
                };
                let mut tokens: Vec<String> = names.to_vec();
                tokens.extend(numbers);
                if form == 1 || form == 3 {
                    tokens.extend(extra);
                }
                tokens
            });
        let mut runner = TestRunner::new(Config {
            cases: 2000,
            ..Config::default()
        });
        let read = std::cell::Cell::new(0);
        let result = runner.run(&subjects, |tokens| {
            let subject = format!("$JS.ACK.{}", tokens.join("."));
            let ours = parse(&subject);
            // Whatever async-nats reads, we read the same.
            if let Some(theirs) = theirs(&context, &subject) {
                prop_assert_eq!(ours, Some(theirs), "{}", subject);
                read.set(read.get() + 1);
            }
            Ok(())
        });
        result.expect("same readings");
        // Enough generated subjects must be readable for the comparison to mean
        // something.
        assert!(read.get() >= 200, "only {} readable subjects", read.get());
    }

    #[tokio::test]
    async fn reads_what_async_nats_reads_from_every_subject_form() {
        let context = context().await;
        let now = "1764672000123456789";
        let subjects = [
            // 7 tokens (servers before 2.9).
            format!("$JS.ACK.ORDERS.worker.3.1042.77.{now}.12"),
            // 9, 10 and more tokens (domain, account hash, random token, future ones).
            format!("$JS.ACK._.ACCHASH.ORDERS.worker.1.5.5.{now}.0"),
            format!("$JS.ACK.hub.ACCHASH.ORDERS.worker.2.18446744073709551615.9.{now}.4.tok"),
            format!("$JS.ACK.hub.ACCHASH.ORDERS.worker.2.6.9.{now}.4.tok.more.and.more"),
        ];
        for subject in &subjects {
            let Some(ours) = parse(subject) else {
                panic!("{subject} not read");
            };
            assert_eq!(Some(ours), theirs(&context, subject), "{subject}");
        }
        assert_eq!(
            parse(&subjects[0]),
            Some(AckInfo {
                stream_sequence: 1042,
                consumer_sequence: 77,
                delivered: 3,
                pending: 12,
                published: 1_764_672_000_123_456_789,
            })
        );
    }

    #[test]
    fn dots_are_found_in_every_byte_and_nowhere_else() {
        for byte in 0..=255u8 {
            for position in 0..8 {
                let mut word = [b'a'; 8];
                word[position] = byte;
                let expected = if byte == b'.' {
                    0x80 << (8 * position)
                } else {
                    0
                };
                assert_eq!(
                    dots_in(u64::from_le_bytes(word)),
                    expected,
                    "{byte} at {position}"
                );
            }
        }
        assert_eq!(
            dots_in(u64::from_le_bytes(*b"./..//./")),
            0x0080_0000_8080_0080
        );
    }

    #[test]
    fn anything_else_is_none_never_a_panic() {
        for bad in [
            "",
            "$JS.ACK.",
            "$JS.ACK.ORDERS.worker.3.1042.77",
            "$JS.ACK.A.B.C.D.E.F.G.H",
            "$JS.ACK.ORDERS.worker.x.1042.77.5.12",
            "$JS.ACK.ORDERS.worker.3.-1.77.5.12",
            "$JS.ACK.ORDERS.worker.3.1042.77.5.",
            "_INBOX.abc.def",
            "$JS.ACK.ORDERS.worker.3.1042.77.99999999999999999999999999999999999999999.12",
            "$JS.ACK.é.ü.3.1042.77.5.12.x.y.z",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        // Negative timestamps parse (async-nats reads them too); the age
        // computation decides what they mean.
        assert_eq!(
            parse("$JS.ACK.S.C.1.2.3.-5.0").map(|i| i.published),
            Some(-5)
        );
    }
}

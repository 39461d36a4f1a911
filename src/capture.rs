//! Header capture: listed NATS headers recorded on `publish`, `request` and
//! `process` spans as `messaging.nats.message.header.<lowercase name>` (string
//! arrays, one entry per value), matched without regard to case. Nothing is
//! captured unless listed, and values are cut to a length: headers can carry
//! personal data, so list only what is safe to keep in traces.

use async_nats::HeaderMap;
use opentelemetry::{Array, Key, KeyValue, StringValue, Value};

use crate::filter::{FilterError, FilterErrorKind};
use crate::semconv;

/// Values are cut to this many bytes unless [`HeaderCapture::max_value_len`] says
/// otherwise.
pub const DEFAULT_MAX_VALUE_LEN: usize = 256;

/// Which headers are recorded on spans, and how much of each value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderCapture {
    /// Lowercase name and its attribute key.
    names: Vec<(String, Key)>,
    max_len: usize,
}

impl HeaderCapture {
    /// Captures the headers called `names` (exact names, any case; no wildcards).
    /// A name that cannot be a NATS header (empty, whitespace, `:`, a wildcard)
    /// is an error.
    pub fn new<I, S>(names: I) -> Result<Self, FilterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut captured: Vec<(String, Key)> = Vec::new();
        for name in names {
            let name = name.as_ref();
            let bad = name.is_empty()
                || name
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '*');
            if bad {
                return Err(FilterError::with_source(
                    FilterErrorKind::InvalidValue,
                    format!("`{name}` is not a header name (exact names only, no wildcards)"),
                ));
            }
            let lower = name.to_ascii_lowercase();
            if captured.iter().all(|(n, _)| *n != lower) {
                let key = Key::from(format!(
                    "{}{lower}",
                    semconv::MESSAGING_NATS_MESSAGE_HEADER_PREFIX
                ));
                captured.push((lower, key));
            }
        }
        Ok(Self {
            names: captured,
            max_len: DEFAULT_MAX_VALUE_LEN,
        })
    }

    /// Cuts each captured value to at most `bytes` (on a character boundary).
    pub fn max_value_len(mut self, bytes: usize) -> Self {
        self.max_len = bytes;
        self
    }

    /// Pushes the listed headers of `headers` as span attributes.
    pub(crate) fn push(&self, headers: &HeaderMap, attributes: &mut Vec<KeyValue>) {
        for (name, key) in &self.names {
            let values: Vec<StringValue> = headers
                .iter()
                .filter(|(header, _)| AsRef::<str>::as_ref(*header).eq_ignore_ascii_case(name))
                .flat_map(|(_, values)| values.iter())
                .map(|value| StringValue::from(cut(value.as_str(), self.max_len).to_owned()))
                .collect();
            if !values.is_empty() {
                attributes.push(KeyValue::new(
                    key.clone(),
                    Value::Array(Array::String(values)),
                ));
            }
        }
    }
}

/// `value` cut to at most `max` bytes on a character boundary.
fn cut(value: &str, max: usize) -> &str {
    if value.len() <= max {
        return value;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_headers_are_rejected() {
        for name in ["", "X Tenant", "X-*", "X:Y"] {
            let err = HeaderCapture::new([name]).unwrap_err();
            assert_eq!(err.kind(), FilterErrorKind::InvalidValue, "{name:?}");
        }
    }

    #[test]
    fn values_are_cut_on_a_character_boundary() {
        assert_eq!(cut("abcdef", 4), "abcd");
        assert_eq!(cut("ééé", 3), "é");
        assert_eq!(cut("ab", 4), "ab");
    }
}

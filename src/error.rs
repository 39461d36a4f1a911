//! `error.type` values: derived from async-nats error kinds, the crate's own
//! (see [`semconv::error_type`](crate::semconv::error_type)), and handler errors
//! classified by a hook or named after their type.

use std::borrow::Cow;
use std::fmt::{Debug, Display};
use std::sync::Arc;

use crate::semconv;

/// The `error.type` value for an async-nats error kind: the variant's name in
/// `snake_case` (`NoResponders` → `no_responders`, `TimedOut` → `timed_out`,
/// `MaxPayloadExceeded` → `max_payload_exceeded`).
///
/// Derived from the kind's `Debug` name (fields dropped), so variants added in
/// later async-nats releases get a sensible value without a code change.
pub fn error_type<K: Debug>(kind: &K) -> String {
    let debug = format!("{kind:?}");
    let name = debug
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .next()
        .unwrap_or_default();
    if name.is_empty() {
        return "_OTHER".to_owned();
    }
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The server refused to let this connection publish to a subject (NATS reports
/// this after the fact, as a connection-level error). Returned, as the source of
/// a [`RequestError`](async_nats::client::RequestError) of kind `Other`, by a
/// request whose subject was refused, instead of waiting for its timeout; its
/// span gets `error.type = permissions_violation`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PermissionViolation {
    /// The refused subject.
    pub subject: String,
}

impl std::fmt::Display for PermissionViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "permissions violation: the server refused this connection's publish to {:?}",
            self.subject
        )
    }
}

impl std::error::Error for PermissionViolation {}

/// `error.type` for a [`PermissionViolation`].
pub(crate) const PERMISSIONS_VIOLATION: &str = semconv::error_type::PERMISSIONS_VIOLATION;

/// The `error.type` of a failed request or JetStream publish:
/// `permissions_violation` when the server refused its subject, else from the kind.
pub(crate) fn refusal_or_kind<K>(error: &async_nats::error::Error<K>) -> String
where
    K: Clone + Debug + std::fmt::Display + PartialEq,
{
    let refused = std::error::Error::source(error)
        .is_some_and(|source| source.downcast_ref::<PermissionViolation>().is_some());
    if refused {
        PERMISSIONS_VIOLATION.to_owned()
    } else {
        error_type(&error.kind())
    }
}

/// The `error.type` of a boxed async-nats error (`async_nats::Error`, as settle
/// calls and pulls return): the kind of the async-nats error inside when it is one
/// this crate knows, else `_OTHER`.
pub(crate) fn boxed_error_type(error: &(dyn std::error::Error + 'static)) -> String {
    macro_rules! kinds {
        ($($error:ty),* $(,)?) => {
            $(if let Some(error) = error.downcast_ref::<$error>() {
                return error_type(&error.kind());
            })*
        };
    }
    kinds!(
        async_nats::client::PublishError,
        async_nats::client::RequestError,
        async_nats::client::SubscribeError,
        async_nats::jetstream::context::PublishError,
        async_nats::jetstream::context::RequestError,
        async_nats::jetstream::consumer::pull::BatchError,
        async_nats::jetstream::consumer::pull::MessagesError,
        async_nats::jetstream::consumer::StreamError,
    );
    if error.downcast_ref::<PermissionViolation>().is_some() {
        return PERMISSIONS_VIOLATION.to_owned();
    }
    semconv::error_type::OTHER.to_owned()
}

/// What a handler's error looks like to the hook set with
/// [`InstrumentationBuilder::with_error_type_hook`](crate::InstrumentationBuilder::with_error_type_hook):
/// its type's name and its message.
pub struct HandlerFailure<'a> {
    type_name: &'static str,
    error: &'a dyn Display,
}

impl HandlerFailure<'_> {
    /// The error type's full name (`std::io::error::Error`,
    /// `alloc::string::String`, …).
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
}

impl Display for HandlerFailure<'_> {
    /// The error's own message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl Debug for HandlerFailure<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerFailure")
            .field("type_name", &self.type_name)
            .field("error", &self.error.to_string())
            .finish()
    }
}

/// Classifies handler errors into `error.type` (`None`: the default).
pub(crate) type ErrorTypeHook =
    Arc<dyn Fn(&HandlerFailure<'_>) -> Option<Cow<'static, str>> + Send + Sync>;

/// The `error.type` of a handler error `error`: the hook's answer, else
/// [`handler_error_type`].
pub(crate) fn classify<E: Display + ?Sized>(hook: Option<&ErrorTypeHook>, error: &E) -> String {
    if let Some(hook) = hook {
        let failure = HandlerFailure {
            type_name: std::any::type_name::<E>(),
            error: &DisplayRef(error),
        };
        if let Some(error_type) = hook(&failure) {
            return error_type.into_owned();
        }
    }
    handler_error_type::<E>()
}

/// Lets an unsized `Display` stand behind `&dyn Display`.
struct DisplayRef<'a, E: ?Sized>(&'a E);

impl<E: Display + ?Sized> Display for DisplayRef<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The default `error.type` of a handler error of type `E`: its type's name
/// (`std::io::error::Error`; generic types with module paths dropped, as in
/// `Vec<String>`), or `_OTHER` for types that say nothing about the failure:
/// strings (`String`, `&str`, `Cow<str>`), type-erased errors (`Box<dyn Error>`,
/// `Arc<dyn Error>`, `anyhow::Error`, `eyre::Report`) and `()`.
pub fn handler_error_type<E: ?Sized>() -> String {
    let full = std::any::type_name::<E>();
    if says_nothing(full) {
        return semconv::error_type::OTHER.to_owned();
    }
    if !full.contains('<') {
        return full.to_owned();
    }
    let mut out = String::with_capacity(full.len());
    let mut word = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            out.push_str(word.rsplit("::").next().unwrap_or_default());
            word.clear();
            out.push(c);
        }
    }
    out.push_str(word.rsplit("::").next().unwrap_or_default());
    out
}

/// Whether a type name says nothing about what failed.
fn says_nothing(type_name: &str) -> bool {
    let mut name = type_name;
    loop {
        let stripped = name
            .trim_start_matches('&')
            .trim_start_matches("mut ")
            .trim_start();
        if stripped == name {
            break;
        }
        name = stripped;
    }
    const ERASED: [&str; 4] = [
        "dyn ",
        "alloc::boxed::Box<dyn ",
        "alloc::sync::Arc<dyn ",
        "alloc::rc::Rc<dyn ",
    ];
    matches!(
        name,
        "str"
            | "()"
            | "alloc::string::String"
            | "alloc::borrow::Cow<str>"
            | "alloc::borrow::Cow<'_, str>"
            | "anyhow::Error"
            | "eyre::Report"
    ) || ERASED.iter().any(|prefix| name.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::client::{PublishErrorKind, RequestErrorKind};

    #[test]
    fn handler_error_types_name_the_type_or_say_other() {
        assert_eq!(
            handler_error_type::<std::io::Error>(),
            "std::io::error::Error"
        );
        assert_eq!(handler_error_type::<Vec<u8>>(), "Vec<u8>");
        for other in [
            handler_error_type::<String>(),
            handler_error_type::<&str>(),
            handler_error_type::<str>(),
            handler_error_type::<&&String>(),
            handler_error_type::<std::borrow::Cow<'static, str>>(),
            handler_error_type::<Box<dyn std::error::Error + Send + Sync>>(),
            handler_error_type::<std::sync::Arc<dyn std::error::Error>>(),
            handler_error_type::<dyn std::error::Error>(),
            handler_error_type::<()>(),
        ] {
            assert_eq!(other, "_OTHER");
        }
    }

    #[test]
    fn the_hook_classifies_first_and_falls_back_to_the_type() {
        let hook: ErrorTypeHook = Arc::new(|failure: &HandlerFailure<'_>| {
            let timeout = failure.to_string().starts_with("timeout");
            if timeout {
                assert_eq!(failure.type_name(), "str");
            }
            timeout.then_some(Cow::Borrowed("timeout"))
        });
        assert_eq!(classify(Some(&hook), "timeout after 3 s"), "timeout");
        assert_eq!(classify(Some(&hook), "bad input"), "_OTHER");
        let io = std::io::Error::other("disk");
        assert_eq!(classify(Some(&hook), &io), "std::io::error::Error");
        assert_eq!(classify(None, &io), "std::io::error::Error");
    }

    #[test]
    fn boxed_async_nats_errors_keep_their_kind() {
        let boxed: async_nats::Error = Box::new(async_nats::client::PublishError::new(
            PublishErrorKind::MaxPayloadExceeded,
        ));
        assert_eq!(boxed_error_type(boxed.as_ref()), "max_payload_exceeded");
        let io: async_nats::Error = Box::new(std::io::Error::other("x"));
        assert_eq!(boxed_error_type(io.as_ref()), "_OTHER");
    }

    #[test]
    fn kinds_become_snake_case_names() {
        assert_eq!(error_type(&RequestErrorKind::NoResponders), "no_responders");
        assert_eq!(error_type(&RequestErrorKind::TimedOut), "timed_out");
        assert_eq!(
            error_type(&PublishErrorKind::MaxPayloadExceeded),
            "max_payload_exceeded"
        );
        assert_eq!(
            error_type(&PublishErrorKind::InvalidSubject),
            "invalid_subject"
        );
    }

    #[derive(Debug)]
    #[allow(dead_code)]
    enum WithFields {
        Other(u8),
        Named { x: u8 },
    }

    #[test]
    fn fields_are_dropped() {
        assert_eq!(error_type(&WithFields::Other(3)), "other");
        assert_eq!(error_type(&WithFields::Named { x: 1 }), "named");
        assert_eq!(error_type(&""), "_OTHER");
    }
}

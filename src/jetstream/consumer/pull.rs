//! Pull consumers, traced: async-nats's `consumer::pull` module, whose consumer's
//! `messages()`, `stream()`, `fetch()`, `batch()` and `sequence()` yield traced
//! deliveries and `receive` spans.
//!
//! Everything of async-nats's module is re-exported here (`Config`,
//! `OrderedConfig`, `BatchConfig`, the error types …); the items this crate
//! traces replace theirs under the same names.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

pub use async_nats::jetstream::consumer::pull::*;
pub use stall::{PullStream, DEFAULT_STALL_CHECK};

mod stall;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::consumer::StreamError;
use async_nats::Subject;
use opentelemetry::trace::{SpanContext, TraceContextExt};

use super::Consumer;
use crate::jetstream::consume::Delivery;
use crate::jetstream::shared::{ConsumerShared, Failure};
use crate::jetstream::Messages;

/// The traced continuous pull stream: each message a [`Delivery`] with its
/// `process` span, over a [`PullStream`] that restarts a stalled pull.
pub type Stream = Messages<PullStream>;

/// The traced ordered pull stream: each message a [`Delivery`] with its
/// `process` span.
pub type Ordered = Messages<pull::Ordered>;

impl Consumer<Config> {
    /// A continuous stream of messages, each with its `process` span.
    ///
    /// A stalled pull is restarted after about a second: see [`PullStream`].
    pub async fn messages(&self) -> Result<Stream, StreamError> {
        self.stream().messages().await
    }

    /// A continuous stream with settings: [`StreamBuilder`].
    pub fn stream(&self) -> StreamBuilder<'_> {
        StreamBuilder {
            consumer: &self.inner,
            settings: Settings::default(),
            shared: &self.shared,
        }
    }

    /// Asks for `batch` messages to be delivered to `inbox` (the raw pull request;
    /// nothing is traced until messages are read through this crate).
    pub async fn request_batch<I: Into<BatchConfig>>(
        &self,
        batch: I,
        inbox: Subject,
    ) -> Result<(), BatchRequestError> {
        self.inner.request_batch(batch, inbox).await
    }

    /// One pull returning only messages already available: [`FetchBuilder`]. Its
    /// [`Batch`] is one `receive` span linking every message's producer.
    pub fn fetch(&self) -> FetchBuilder<'_> {
        FetchBuilder {
            inner: self.inner.fetch(),
            shared: &self.shared,
        }
    }

    /// One pull waiting up to its expiry for messages: [`BatchBuilder`]. Its
    /// [`Batch`] is one `receive` span linking every message's producer.
    pub fn batch(&self) -> BatchBuilder<'_> {
        BatchBuilder {
            inner: self.inner.batch(),
            shared: &self.shared,
        }
    }

    /// Pulls of `batch` messages one after the other, as a stream of [`Batch`]es.
    pub fn sequence(&self, batch: usize) -> Result<Sequence, BatchError> {
        Ok(Sequence {
            inner: self.inner.sequence(batch)?,
            shared: self.shared.clone(),
            start: None,
        })
    }
}

impl Consumer<OrderedConfig> {
    /// The ordered consumer's messages, each with its `process` span; the consumer
    /// is recreated on a gap, as async-nats does.
    pub async fn messages(self) -> Result<Ordered, StreamError> {
        let shared = self.shared;
        let stream = self.inner.messages().await?;
        Ok(Messages::new(stream, shared))
    }
}

/// Setters that take `self` and plain arguments, passed to async-nats's builder.
macro_rules! settings {
    ($($(#[$doc:meta])* fn $name:ident($arg:ident: $ty:ty);)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, $arg: $ty) -> Self {
                self.inner = self.inner.$name($arg);
                self
            }
        )*
    };
}

/// Settings of a continuous pull stream (async-nats's `StreamBuilder`), kept so
/// that a stalled stream can be restarted with the same ones.
pub struct StreamBuilder<'a> {
    consumer: &'a async_nats::jetstream::consumer::PullConsumer,
    settings: Settings,
    shared: &'a Arc<ConsumerShared>,
}

impl fmt::Debug for StreamBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamBuilder").finish_non_exhaustive()
    }
}

/// Records each setting, applied to async-nats's builder when the stream starts
/// (and again when it restarts).
macro_rules! recorded {
    ($($(#[$doc:meta])* fn $name:ident($arg:ident: $ty:ty);)*) => {
        /// What a [`StreamBuilder`] was given (`None`: async-nats's default).
        #[derive(Clone, Debug, Default)]
        struct Settings {
            $($name: Option<$ty>,)*
            group: Option<String>,
            stall_check: Option<Option<Duration>>,
        }

        impl Settings {
            fn apply<'a>(&self, mut builder: pull::StreamBuilder<'a>) -> pull::StreamBuilder<'a> {
                $(
                    if let Some(value) = self.$name.clone() {
                        builder = builder.$name(value);
                    }
                )*
                if let Some(group) = self.group.clone() {
                    builder = builder.group(group);
                }
                builder
            }
        }

        impl StreamBuilder<'_> {
            $(
                $(#[$doc])*
                pub fn $name(mut self, $arg: $ty) -> Self {
                    self.settings.$name = Some($arg);
                    self
                }
            )*
        }
    };
}

recorded! {
    /// Bytes asked for per pull.
    fn max_bytes_per_batch(max_bytes: usize);
    /// Messages asked for per pull.
    fn max_messages_per_batch(batch: usize);
    /// The server's idle heartbeat interval.
    fn heartbeat(heartbeat: Duration);
    /// How long each pull stays open.
    fn expires(expires: Duration);
    /// Only deliver when at least this many messages are pending (priority groups).
    fn min_pending(min_pending: usize);
    /// This pull's priority (priority groups).
    fn priority(priority: usize);
    /// Only deliver when at least this many acks are pending (priority groups).
    fn min_ack_pending(min_ack_pending: usize);
}

impl StreamBuilder<'_> {
    /// The priority group to pull in.
    pub fn group<T: Into<String>>(mut self, group: T) -> Self {
        self.settings.group = Some(group.into());
        self
    }

    /// How long the stream may wait for a message, while the last one said more
    /// were pending, before it asks the server whether a pull is still open
    /// (and restarts the stream if none is): [`PullStream`]. `None` turns the
    /// check off. Default: [`DEFAULT_STALL_CHECK`]; at least 100 ms.
    pub fn stall_check(mut self, after: Option<Duration>) -> Self {
        self.settings.stall_check = Some(after.map(|d| d.max(Duration::from_millis(100))));
        self
    }

    /// Starts the stream; each message comes with its `process` span.
    pub async fn messages(self) -> Result<Stream, StreamError> {
        let stream = PullStream::start(self.consumer.clone(), self.settings).await?;
        Ok(Messages::new(stream, self.shared.clone()))
    }
}

/// A builder of one pull (async-nats's `FetchBuilder` or `BatchBuilder`): the
/// settings given, then `group` and `messages`, which sends the pull.
macro_rules! pull_builder {
    ($(#[$doc:meta])* $name:ident, $settings:tt) => {
        $(#[$doc])*
        pub struct $name<'a> {
            inner: pull::$name<'a>,
            shared: &'a Arc<ConsumerShared>,
        }

        impl fmt::Debug for $name<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).finish_non_exhaustive()
            }
        }

        impl $name<'_> {
            settings! $settings

            /// The priority group to pull in.
            pub fn group<T: Into<String>>(mut self, group: T) -> Self {
                self.inner = self.inner.group(group);
                self
            }

            /// Sends the pull; the [`Batch`] yields what arrives.
            pub async fn messages(self) -> Result<Batch, BatchError> {
                let start = SystemTime::now();
                Batch::start(self.shared, start, self.inner.messages().await)
            }
        }
    };
}

pull_builder!(
    /// Settings of a fetch: messages already available (async-nats's `FetchBuilder`).
    FetchBuilder,
    {
        /// At most this many bytes.
        fn max_bytes(max_bytes: usize);
        /// At most this many messages.
        fn max_messages(batch: usize);
        /// The server's idle heartbeat interval.
        fn heartbeat(heartbeat: Duration);
        /// How long the pull stays open.
        fn expires(expires: Duration);
        /// Only deliver when at least this many messages are pending (priority groups).
        fn min_pending(min_pending: usize);
        /// This pull's priority (priority groups).
        fn priority(priority: usize);
        /// Only deliver when at least this many acks are pending (priority groups).
        fn min_ack_pending(min_ack_pending: usize);
    }
);

pull_builder!(
    /// Settings of a batch: waits up to its expiry (async-nats's `BatchBuilder`).
    BatchBuilder,
    {
        /// At most this many bytes.
        fn max_bytes(max_bytes: usize);
        /// At most this many messages.
        fn max_messages(batch: usize);
        /// The server's idle heartbeat interval.
        fn heartbeat(heartbeat: Duration);
        /// Only deliver when at least this many messages are pending (priority groups).
        fn min_pending(min_pending: usize);
        /// Only deliver when at least this many acks are pending (priority groups).
        fn min_ack_pending(min_ack_pending: usize);
        /// How long the pull waits for messages.
        fn expires(expires: Duration);
    }
);

/// The messages of one pull, each a [`Delivery`] with its `process` span, as
/// async-nats's `Batch` yields them.
///
/// The pull is one `receive` span, from the request to the last message (or to the
/// end of the pull when it ended waiting), linking every message's producer and
/// carrying `messaging.batch.message_count`. It is recorded when the batch ends or
/// is dropped; an empty pull that worked records nothing.
pub struct Batch {
    inner: pull::Batch,
    shared: Arc<ConsumerShared>,
    start: SystemTime,
    producers: Vec<SpanContext>,
    failure: Option<Failure>,
    /// When the last message was handed over.
    last: Option<SystemTime>,
    /// Whether the stream waited since the last message was handed over.
    waited: bool,
    recorded: bool,
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("template", &self.shared.template())
            .field("received", &self.producers.len())
            .finish_non_exhaustive()
    }
}

impl Batch {
    fn start(
        shared: &Arc<ConsumerShared>,
        start: SystemTime,
        batch: Result<pull::Batch, BatchError>,
    ) -> Result<Self, BatchError> {
        match batch {
            Ok(inner) => Ok(Self::new(inner, shared.clone(), start)),
            Err(err) => {
                shared.record_receive_of(start, Vec::new(), Some(Failure::of(&err)), None);
                Err(err)
            }
        }
    }

    fn new(inner: pull::Batch, shared: Arc<ConsumerShared>, start: SystemTime) -> Self {
        Self {
            inner,
            shared,
            start,
            producers: Vec::new(),
            failure: None,
            last: None,
            waited: false,
            recorded: false,
        }
    }

    /// Records the `receive` span once. It ends at the last message unless the
    /// pull waited after it (then: now), so time the caller spent on the messages
    /// in between is not counted.
    fn record(&mut self) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let ended = if self.waited { None } else { self.last };
        self.shared.record_receive_of(
            self.start,
            std::mem::take(&mut self.producers),
            self.failure.take(),
            ended,
        );
    }
}

impl futures_util::Stream for Batch {
    type Item = Result<Delivery, async_nats::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(message))) => {
                let delivery = this.shared.deliver(message);
                this.producers
                    .push(delivery.producer_context().span().span_context().clone());
                this.last = Some(SystemTime::now());
                this.waited = false;
                Poll::Ready(Some(Ok(delivery)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.failure
                    .get_or_insert_with(|| Failure::of(err.as_ref()));
                this.waited = true;
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                this.record();
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.waited = true;
                Poll::Pending
            }
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.record();
    }
}

/// Pulls one after the other, each a traced [`Batch`] (async-nats's `Sequence`).
pub struct Sequence {
    inner: pull::Sequence,
    shared: Arc<ConsumerShared>,
    /// When the pull being made now was asked for (pulls are made when polled).
    start: Option<SystemTime>,
}

impl fmt::Debug for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sequence")
            .field("template", &self.shared.template())
            .finish_non_exhaustive()
    }
}

impl futures_util::Stream for Sequence {
    type Item = Result<Batch, MessagesError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.start.get_or_insert_with(SystemTime::now);
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        let Poll::Ready(item) = polled else {
            return Poll::Pending;
        };
        let start = this.start.take().unwrap_or_else(SystemTime::now);
        Poll::Ready(item.map(|result| match result {
            Ok(batch) => Ok(Batch::new(batch, this.shared.clone(), start)),
            Err(err) => {
                this.shared
                    .record_receive_of(start, Vec::new(), Some(Failure::of(&err)), None);
                Err(err)
            }
        }))
    }
}

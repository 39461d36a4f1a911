//! Traced JetStream consumption shared by every consumer: what one consumer's spans
//! share, the `process` span of each delivered message (a traced
//! [`Message`](super::Message)), the `receive` span of a pull, and [`Messages`], the
//! stream over any pull, push or ordered consumer's messages.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer;
use futures_util::Stream;
use opentelemetry::trace::{Link, SpanContext};
use opentelemetry::{KeyValue, Value};

use crate::error::boxed_error_type;
use crate::instrumentation::decode_in_place;
use crate::names::SpanName;
use crate::operation::{self, Body, Processing, Start, Target};
use crate::semconv;
use crate::telemetry::Telemetry;

/// A JetStream message with its `process` span; dereferences to [`Message`].
pub type Delivery = crate::Delivery<Message>;

use super::message::Message;

/// Why a pull failed: its `error.type` and message.
pub(crate) struct Failure {
    pub(crate) error_type: String,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        Self {
            error_type: boxed_error_type(error),
            message: error.to_string(),
        }
    }

    pub(crate) fn other(message: String) -> Self {
        Self {
            error_type: semconv::error_type::OTHER.to_owned(),
            message,
        }
    }
}

/// What every span of one consumer shares: names, template, attributes.
pub(crate) struct ConsumerShared {
    pub(crate) telemetry: Telemetry,
    /// `process {template}` in the consumer's group; its metric attributes are
    /// the worker's counters' too.
    pub(crate) processing: Processing,
    /// Attributes of this consumer's health gauges.
    pub(crate) health_attributes: Arc<[KeyValue]>,
    /// `receive`, then the settle operations on the same template, built once.
    receive: SpanName,
    pub(crate) settle: [(&'static str, SpanName); 5],
    /// What the consumer reads: its one filter subject, or its stream.
    source: String,
    pub(crate) stream: String,
    pub(crate) consumer: String,
    /// `stream` and `consumer` as attribute values shared by every span.
    pub(crate) stream_value: Value,
    pub(crate) consumer_value: Value,
}

impl ConsumerShared {
    pub(crate) fn new(telemetry: Telemetry, info: &consumer::Info) -> Arc<Self> {
        let config = &info.config;
        // The template is what the consumer selects: its single filter subject, or
        // the stream name when it takes several subjects or all of them.
        let filter = if !config.filter_subject.is_empty() {
            Some(config.filter_subject.as_str())
        } else if config.filter_subjects.len() == 1 {
            config.filter_subjects.first().map(String::as_str)
        } else {
            None
        };
        let template = match filter {
            Some(subject) => telemetry.inst().template(subject),
            None => Cow::Borrowed(info.stream_name.as_str()),
        };
        let consumer_value = Value::from(Arc::<str>::from(info.name.as_str()));
        let processing = telemetry.processing(&template, Some(consumer_value.clone()));
        let mut health: Vec<KeyValue> = telemetry.connection().to_vec();
        health.push(KeyValue::new(
            semconv::MESSAGING_NATS_STREAM,
            info.stream_name.clone(),
        ));
        health.push(KeyValue::new(
            semconv::MESSAGING_CONSUMER_GROUP_NAME,
            info.name.clone(),
        ));
        let template = processing.template();
        let settle = [
            semconv::settle::ACK,
            semconv::settle::DOUBLE_ACK,
            semconv::settle::NAK,
            semconv::settle::TERM,
            semconv::settle::PROGRESS,
        ]
        .map(|operation| (operation, SpanName::new(operation, template)));
        Arc::new(Self {
            receive: SpanName::new(operation::RECEIVE.name, template),
            settle,
            source: filter.unwrap_or(&info.stream_name).to_owned(),
            processing,
            telemetry,
            health_attributes: health.into(),
            stream: info.stream_name.clone(),
            consumer: info.name.clone(),
            stream_value: Arc::<str>::from(info.stream_name.as_str()).into(),
            consumer_value,
        })
    }

    /// The consumer's destination template.
    pub(crate) fn template(&self) -> &str {
        self.processing.template()
    }

    pub(crate) fn deliver(
        self: &Arc<Self>,
        mut message: async_nats::jetstream::Message,
    ) -> Delivery {
        let telemetry = &self.telemetry;
        let inst = telemetry.inst();
        let (compressed, decode_error) = decode_in_place(inst, &mut message.message);
        let info = if inst.tracing_enabled() || inst.metrics_enabled() {
            message.info().ok().map(|info| Sequence {
                stream: info.stream_sequence,
                consumer: info.consumer_sequence,
                delivered: info.delivered,
                pending: info.pending,
                published: info.published.unix_timestamp_nanos(),
                age: crate::metrics::age_of(info.published.unix_timestamp_nanos()),
            })
        } else {
            None
        };
        let mut published = None;
        if let Some(info) = &info {
            published = Some(info.published);
            if let Some(instruments) = inst.instruments() {
                if let Some(age) = info.age {
                    let age = age.as_secs_f64();
                    instruments
                        .queue_wait
                        .record(age, &self.processing.metric_attributes);
                    instruments
                        .consumer_lag
                        .record(age, &self.health_attributes);
                }
                instruments
                    .consumer_pending
                    .record(info.pending, &self.health_attributes);
            }
        }
        let body = Body {
            size: message.payload.len(),
            compressed,
        };
        let span = telemetry
            .start_process(
                &self.processing,
                Some(message.subject.as_str()),
                message.headers.as_ref(),
                Some(&message.message),
                published,
                13,
                |a| self.push_process_attributes(a, &message, info.as_ref(), body),
            )
            .with_decode_failure(decode_error);
        let message = Message {
            process: span.context().clone(),
            inner: message,
            shared: self.clone(),
            sequence: info.map(|i| (i.stream, i.delivered)),
        };
        crate::Delivery::new(message, span)
    }

    /// Pushes what a recording `process` span adds: the consumer's and the
    /// message's attributes.
    fn push_process_attributes(
        &self,
        attributes: &mut Vec<KeyValue>,
        message: &async_nats::jetstream::Message,
        info: Option<&Sequence>,
        body: Body,
    ) {
        attributes.push(KeyValue::new(
            semconv::MESSAGING_NATS_STREAM,
            self.stream_value.clone(),
        ));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_NATS_CONSUMER,
            self.consumer_value.clone(),
        ));
        let headers = message.headers.as_ref();
        if let Some(info) = info {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_STREAM_SEQUENCE,
                clamp(info.stream),
            ));
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_CONSUMER_SEQUENCE,
                clamp(info.consumer),
            ));
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_DELIVERED,
                info.delivered,
            ));
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_PENDING,
                clamp(info.pending),
            ));
            if let Some(wait) = info.age {
                attributes.push(KeyValue::new(
                    semconv::MESSAGING_NATS_QUEUE_WAIT,
                    wait.as_secs_f64(),
                ));
            }
            let has_msg_id =
                headers.is_some_and(|h| h.get(async_nats::header::NATS_MESSAGE_ID).is_some());
            if !has_msg_id {
                attributes.push(KeyValue::new(
                    semconv::MESSAGING_MESSAGE_ID,
                    info.stream.to_string(),
                ));
            }
        }
        self.telemetry
            .push_message_attributes(attributes, headers, body);
    }

    /// Records one `receive` span that started at `start`, delivered messages whose
    /// producers are `producers`, and ended at `ended` (`None`: now).
    pub(crate) fn record_receive_of(
        &self,
        start: SystemTime,
        producers: Vec<SpanContext>,
        failure: Option<Failure>,
        ended: Option<SystemTime>,
    ) {
        // An empty pull that worked is not worth a span or a duration sample: idle
        // workers would emit one every pull timeout, all of them long polls.
        if producers.is_empty() && failure.is_none() {
            return;
        }
        let count = producers.len();
        let links: Vec<Link> = if self.telemetry.tracing() {
            producers
                .into_iter()
                .filter(SpanContext::is_valid)
                .map(Link::with_context)
                .collect()
        } else {
            Vec::new()
        };
        let target = Target {
            name: &self.receive,
            destination: Some(&self.source),
            temporary: false,
            group: Some(self.consumer_value.clone()),
        };
        let op = self.telemetry.start(
            operation::RECEIVE,
            &target,
            Start::default().with_links(links).at(start).with_room(3),
            |a| {
                a.push(KeyValue::new(
                    semconv::MESSAGING_NATS_STREAM,
                    self.stream_value.clone(),
                ));
                a.push(KeyValue::new(
                    semconv::MESSAGING_BATCH_MESSAGE_COUNT,
                    count as i64,
                ));
            },
        );
        let failure = failure.as_ref();
        let failure = failure.map(|f| (f.error_type.as_str(), &f.message as &dyn fmt::Display));
        match ended {
            Some(ended) => op.end_at(ended, failure),
            None => match failure {
                Some((error_type, message)) => op.fail(error_type, message),
                None => op.succeed(),
            },
        }
    }
}

/// Where a delivered message sits in its stream and consumer.
#[derive(Clone, Copy)]
struct Sequence {
    stream: u64,
    consumer: u64,
    delivered: i64,
    pending: u64,
    published: i128,
    /// Time since the stream stored it (`None` if the clocks disagree).
    age: Option<Duration>,
}

pub(crate) fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stream of traced deliveries over any JetStream message stream (pull, push or
/// ordered consumer).
pub struct Messages<S> {
    inner: S,
    shared: Arc<ConsumerShared>,
}

impl<S> fmt::Debug for Messages<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Messages")
            .field("template", &self.shared.template())
            .finish_non_exhaustive()
    }
}

impl<S> Messages<S> {
    pub(crate) fn new(inner: S, shared: Arc<ConsumerShared>) -> Self {
        Self { inner, shared }
    }
}

impl<S, E> Stream for Messages<S>
where
    S: Stream<Item = Result<async_nats::jetstream::Message, E>> + Unpin,
{
    type Item = Result<Delivery, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Some(Ok(self.shared.deliver(message)))),
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

//! Traced JetStream consumption: pull consumers (`messages`, `fetch`, `batch`) and
//! any push or ordered consumer stream through [`Messages`].

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::pull::Stream as PullStream;
use async_nats::jetstream::consumer::{self, StreamError};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::Message;
use futures_util::{Stream, StreamExt};
use opentelemetry::trace::{FutureExt, Link, SpanBuilder, SpanContext, SpanKind, TraceContextExt};
use opentelemetry::{ContextGuard, KeyValue};

use crate::instrumentation::{
    decode_in_place, record_decode_failure, record_exception, record_failure, DecodeFailure,
    Instrumentation,
};
use crate::metrics::ProcessTimer;
use crate::names::SpanName;
use crate::semconv;
use crate::subscriber::{handler_error_type, SpanEnd};

/// What every span of one consumer shares: names, template, attributes.
pub(crate) struct ConsumerShared {
    pub(crate) inst: Instrumentation,
    pub(crate) common: Arc<[KeyValue]>,
    pub(crate) metric_common: Arc<[KeyValue]>,
    /// Attributes of this consumer's process metrics (and the worker's counters).
    pub(crate) metric_attributes: Arc<[KeyValue]>,
    /// Attributes of this consumer's health gauges.
    pub(crate) health_attributes: Arc<[KeyValue]>,
    /// `process {template}`; its template is the consumer's.
    pub(crate) process: SpanName,
    /// `receive`, then the settle operations on the same template, built once.
    receive: SpanName,
    settle: [(&'static str, SpanName); 5],
    pub(crate) stream: String,
    pub(crate) consumer: String,
    /// `stream` and `consumer` as attribute values shared by every span.
    stream_value: opentelemetry::Value,
    consumer_value: opentelemetry::Value,
}

impl ConsumerShared {
    pub(crate) fn new(
        inst: Instrumentation,
        common: Arc<[KeyValue]>,
        metric_common: Arc<[KeyValue]>,
        info: &consumer::Info,
    ) -> Arc<Self> {
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
        let process = match filter {
            Some(subject) => SpanName::new(semconv::operation::PROCESS, &inst.template(subject)),
            None => SpanName::new(semconv::operation::PROCESS, &info.stream_name),
        };
        let metric_attributes = crate::metrics::attributes(
            &metric_common,
            semconv::operation::PROCESS,
            semconv::operation_type::PROCESS,
            process.template_value(),
            Some(&info.name),
        )
        .into();
        let mut health: Vec<KeyValue> = metric_common.to_vec();
        health.push(KeyValue::new(
            semconv::MESSAGING_NATS_STREAM,
            info.stream_name.clone(),
        ));
        health.push(KeyValue::new(
            semconv::MESSAGING_CONSUMER_GROUP_NAME,
            info.name.clone(),
        ));
        let template = process.template();
        let settle = [
            semconv::settle::ACK,
            semconv::settle::DOUBLE_ACK,
            semconv::settle::NAK,
            semconv::settle::TERM,
            semconv::settle::PROGRESS,
        ]
        .map(|operation| (operation, SpanName::new(operation, template)));
        Arc::new(Self {
            receive: SpanName::new(semconv::operation::RECEIVE, template),
            settle,
            process,
            inst,
            common,
            metric_common,
            metric_attributes,
            health_attributes: health.into(),
            stream: info.stream_name.clone(),
            consumer: info.name.clone(),
            stream_value: Arc::<str>::from(info.stream_name.as_str()).into(),
            consumer_value: Arc::<str>::from(info.name.as_str()).into(),
        })
    }

    /// The consumer's destination template.
    pub(crate) fn template(&self) -> &str {
        self.process.template()
    }

    pub(crate) fn deliver(self: &Arc<Self>, mut message: Message) -> Delivery {
        let (compressed, decode_error) = decode_in_place(&self.inst, &mut message.message);
        let tracing = self.inst.tracing_enabled();
        if !tracing && !self.inst.metrics_enabled() {
            // Nothing to record: only hand the producer's context to the handler.
            let (context, producer) = self.inst.start_process(
                &message.message,
                self.process.name(),
                &self.process,
                None,
                &[],
                Vec::new(),
            );
            return Delivery {
                message,
                producer,
                span: SpanEnd {
                    owns_span: false,
                    context,
                },
                timer: None,
                shared: self.clone(),
                decode_error,
                sequence: None,
            };
        }
        // Sized for everything the process span carries (see `start_process`).
        let mut extra = Vec::with_capacity(self.common.len() + 18);
        if let Some(compressed) = compressed {
            compressed.push_attributes(&mut extra);
        }
        extra.push(KeyValue::new(
            semconv::MESSAGING_NATS_STREAM,
            self.stream_value.clone(),
        ));
        extra.push(KeyValue::new(
            semconv::MESSAGING_NATS_CONSUMER,
            self.consumer_value.clone(),
        ));
        let has_msg_id = message
            .headers
            .as_ref()
            .is_some_and(|h| h.get(async_nats::header::NATS_MESSAGE_ID).is_some());
        let mut published = None;
        let mut sequence = None;
        if let Ok(info) = message.info() {
            sequence = Some((info.stream_sequence, info.delivered));
            let stored = info.published.unix_timestamp_nanos();
            published = Some(stored);
            if let Some(instruments) = self.inst.instruments() {
                if let Some(age) = crate::metrics::age_of(stored) {
                    let age = age.as_secs_f64();
                    instruments.queue_wait.record(age, &self.metric_attributes);
                    instruments
                        .consumer_lag
                        .record(age, &self.health_attributes);
                }
                instruments
                    .consumer_pending
                    .record(info.pending, &self.health_attributes);
            }
            extra.push(KeyValue::new(
                semconv::MESSAGING_NATS_STREAM_SEQUENCE,
                clamp(info.stream_sequence),
            ));
            extra.push(KeyValue::new(
                semconv::MESSAGING_NATS_CONSUMER_SEQUENCE,
                clamp(info.consumer_sequence),
            ));
            extra.push(KeyValue::new(
                semconv::MESSAGING_NATS_DELIVERED,
                info.delivered,
            ));
            extra.push(KeyValue::new(
                semconv::MESSAGING_NATS_PENDING,
                clamp(info.pending),
            ));
            if let Some(wait) = queue_wait(info.published.unix_timestamp_nanos()) {
                extra.push(KeyValue::new(
                    semconv::MESSAGING_NATS_QUEUE_WAIT,
                    wait.as_secs_f64(),
                ));
            }
            if !has_msg_id {
                extra.push(KeyValue::new(
                    semconv::MESSAGING_MESSAGE_ID,
                    info.stream_sequence.to_string(),
                ));
            }
        }
        let (context, producer) = self.inst.start_process(
            &message.message,
            self.process.name(),
            &self.process,
            Some(&self.consumer),
            &self.common,
            if tracing { extra } else { Vec::new() },
        );
        record_decode_failure(&context, decode_error.as_ref());
        Delivery {
            message,
            producer,
            span: SpanEnd {
                owns_span: tracing,
                context,
            },
            timer: ProcessTimer::start(self.inst.instruments(), &self.metric_attributes, published),
            shared: self.clone(),
            decode_error,
            sequence,
        }
    }

    /// Records one `receive` span covering a fetch or batch that started at `start`
    /// and returned `deliveries`.
    fn record_receive(&self, start: SystemTime, deliveries: &[Delivery], error: Option<String>) {
        let producers: Vec<SpanContext> = deliveries
            .iter()
            .map(|d| d.producer.span().span_context().clone())
            .collect();
        self.record_receive_of(start, producers, error);
    }

    /// Records one `receive` span that started at `start`, delivered messages whose
    /// producers are `producers`, and ended now.
    pub(crate) fn record_receive_of(
        &self,
        start: SystemTime,
        producers: Vec<SpanContext>,
        error: Option<String>,
    ) {
        // An empty pull that worked is not worth a span or a duration sample: idle
        // workers would emit one every pull timeout, all of them long polls.
        if producers.is_empty() && error.is_none() {
            return;
        }
        if let Some(instruments) = self.inst.instruments() {
            let attributes = crate::metrics::attributes(
                &self.metric_common,
                semconv::operation::RECEIVE,
                semconv::operation_type::RECEIVE,
                self.process.template_value(),
                Some(&self.consumer),
            );
            let seconds = start.elapsed().map(|d| d.as_secs_f64()).unwrap_or(0.0);
            match &error {
                Some(_) => instruments
                    .operation_duration
                    .record(seconds, &crate::metrics::with_error(&attributes, "_OTHER")),
                None => instruments.operation_duration.record(seconds, &attributes),
            }
        }
        if !self.inst.tracing_enabled() {
            return;
        }
        let count = producers.len();
        let links: Vec<Link> = producers
            .into_iter()
            .filter(SpanContext::is_valid)
            .map(Link::with_context)
            .collect();
        let mut attributes = Vec::with_capacity(self.common.len() + 6);
        attributes.extend_from_slice(&self.common);
        attributes.push(KeyValue::new(
            semconv::MESSAGING_OPERATION_NAME,
            semconv::operation::RECEIVE,
        ));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_OPERATION_TYPE,
            semconv::operation_type::RECEIVE,
        ));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_DESTINATION_TEMPLATE,
            self.process.template_value(),
        ));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_CONSUMER_GROUP_NAME,
            self.consumer_value.clone(),
        ));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_NATS_STREAM,
            self.stream_value.clone(),
        ));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_BATCH_MESSAGE_COUNT,
            count as i64,
        ));
        let builder = SpanBuilder::from_name(self.receive.name())
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(attributes)
            .with_links(links);
        let cx = self
            .inst
            .start_span(builder, &opentelemetry::Context::current());
        if let Some(error) = error {
            record_failure(&cx, "_OTHER", error);
        }
        cx.span().end();
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Time since the stream stored the message (`None` if the clocks disagree).
fn queue_wait(published_unix_nanos: i128) -> Option<Duration> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let now = i128::try_from(now).ok()?;
    let wait = u64::try_from(now.checked_sub(published_unix_nanos)?).ok()?;
    Some(Duration::from_nanos(wait))
}

/// A traced pull consumer.
#[derive(Clone)]
pub struct PullConsumer {
    inner: consumer::PullConsumer,
    shared: Arc<ConsumerShared>,
}

impl fmt::Debug for PullConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PullConsumer")
            .field("stream", &self.shared.stream)
            .field("consumer", &self.shared.consumer)
            .field("template", &self.shared.template())
            .finish_non_exhaustive()
    }
}

impl PullConsumer {
    pub(crate) fn new(inner: consumer::PullConsumer, shared: Arc<ConsumerShared>) -> Self {
        Self { inner, shared }
    }

    pub(crate) fn shared(&self) -> &Arc<ConsumerShared> {
        &self.shared
    }

    /// The untraced async-nats consumer.
    pub fn inner(&self) -> &consumer::PullConsumer {
        &self.inner
    }

    /// The destination template of this consumer's spans.
    pub fn template(&self) -> &str {
        self.shared.template()
    }

    /// Reads the consumer's info from the server and records the health gauges
    /// (`messaging.nats.consumer.pending`, `.ack_pending`, `.redelivered`).
    pub async fn record_health(&self) -> Result<consumer::Info, async_nats::Error> {
        let mut inner = self.inner.clone();
        let info = inner.info().await?.clone();
        if let Some(instruments) = self.shared.inst.instruments() {
            let attributes = &self.shared.health_attributes;
            instruments
                .consumer_pending
                .record(info.num_pending, attributes);
            instruments
                .consumer_ack_pending
                .record(info.num_ack_pending as u64, attributes);
            instruments
                .consumer_redelivered
                .record(info.num_redelivered as u64, attributes);
        }
        Ok(info)
    }

    /// A continuous stream of messages, each with its `process` span.
    pub async fn messages(&self) -> Result<Messages<PullStream>, StreamError> {
        let stream = self.inner.messages().await?;
        Ok(Messages {
            inner: stream,
            shared: self.shared.clone(),
        })
    }

    /// Fetches up to `max_messages` already available messages without waiting,
    /// inside one `receive` span that links every message's producer.
    pub async fn fetch(&self, max_messages: usize) -> Result<Vec<Delivery>, async_nats::Error> {
        let start = SystemTime::now();
        let batch = self
            .inner
            .fetch()
            .max_messages(max_messages)
            .messages()
            .await;
        self.collect(start, batch.map_err(Into::into)).await
    }

    /// Waits up to `expires` for `max_messages` messages, inside one `receive` span
    /// that links every message's producer.
    pub async fn batch(
        &self,
        max_messages: usize,
        expires: Duration,
    ) -> Result<Vec<Delivery>, async_nats::Error> {
        let start = SystemTime::now();
        let batch = self
            .inner
            .batch()
            .max_messages(max_messages)
            .expires(expires)
            .messages()
            .await;
        self.collect(start, batch.map_err(Into::into)).await
    }

    async fn collect(
        &self,
        start: SystemTime,
        batch: Result<consumer::pull::Batch, async_nats::Error>,
    ) -> Result<Vec<Delivery>, async_nats::Error> {
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(err) => {
                self.shared
                    .record_receive(start, &[], Some(err.to_string()));
                return Err(err);
            }
        };
        let mut messages = Vec::new();
        let mut failure = None;
        while let Some(item) = batch.next().await {
            match item {
                Ok(message) => messages.push(message),
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        let deliveries: Vec<Delivery> = messages
            .into_iter()
            .map(|m| self.shared.deliver(m))
            .collect();
        self.shared.record_receive(
            start,
            &deliveries,
            failure.as_ref().map(ToString::to_string),
        );
        match failure {
            // Messages already received are handed over (they are not lost); the
            // error is on the receive span and returns on the next call if it lasts.
            Some(err) if deliveries.is_empty() => Err(err),
            _ => Ok(deliveries),
        }
    }
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
    S: Stream<Item = Result<Message, E>> + Unpin,
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

/// A JetStream message with its `process` span, and traced settlement.
///
/// `ack`, `double_ack`, `nak`, `term` and `progress` each get a CLIENT span named
/// `{operation} {template}` (never after the `$JS.ACK…` reply subject), child of
/// the process span. Dropping the delivery ends the process span; settle first.
pub struct Delivery {
    message: Message,
    producer: opentelemetry::Context,
    span: SpanEnd,
    timer: Option<ProcessTimer>,
    shared: Arc<ConsumerShared>,
    #[cfg_attr(not(feature = "compression"), allow(dead_code))]
    decode_error: Option<DecodeFailure>,
    /// Stream sequence and delivery count, read from the reply subject once on
    /// delivery (when something records them) for the settle span.
    sequence: Option<(u64, i64)>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.message.subject)
            .finish_non_exhaustive()
    }
}

impl Deref for Delivery {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}

impl Delivery {
    /// The JetStream message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Why the message's compressed payload could not be decoded: the message is
    /// then delivered as it arrived (still encoded) and its `process` span carries
    /// the error; the [`Worker`](super::Worker) dead-letters such messages.
    #[cfg(feature = "compression")]
    pub fn decode_error(&self) -> Option<&crate::compression::DecodeError> {
        self.decode_error.as_ref()
    }

    /// The name of the consumer that delivered the message.
    pub fn consumer_name(&self) -> &str {
        &self.shared.consumer
    }

    /// The name of the stream the message is stored in.
    pub fn stream_name(&self) -> &str {
        &self.shared.stream
    }

    /// The process span's context (the producer's context when tracing is off).
    pub fn context(&self) -> &opentelemetry::Context {
        &self.span.context
    }

    /// The producer's context extracted from the message headers.
    pub fn producer_context(&self) -> &opentelemetry::Context {
        &self.producer
    }

    /// Makes the process span current until the guard is dropped.
    pub fn attach(&self) -> ContextGuard {
        self.span.context.clone().attach()
    }

    /// Runs `future` with the process span as its current context.
    pub async fn in_span<F: Future>(&self, future: F) -> F::Output {
        future.with_context(self.span.context.clone()).await
    }

    /// Records a handler failure on the process span.
    pub fn record_error<E: fmt::Display + ?Sized>(&self, error: &E) {
        let error_type = handler_error_type::<E>();
        if let Some(timer) = &self.timer {
            timer.fail(&error_type);
        }
        record_exception(&self.span.context, &error_type, error.to_string());
    }

    /// Attributes of this message's consumer metrics.
    pub(crate) fn metric_attributes(&self) -> &[KeyValue] {
        &self.shared.metric_attributes
    }

    /// The instruments, when metrics are on.
    pub(crate) fn instruments(&self) -> Option<&std::sync::Arc<crate::metrics::Instruments>> {
        self.shared.inst.instruments()
    }

    /// Acknowledges the message (`ack {template}` span).
    pub async fn ack(&self) -> Result<(), async_nats::Error> {
        self.settle(semconv::settle::ACK, AckKind::Ack, false).await
    }

    /// Acknowledges and waits for the server to confirm (`double_ack {template}`).
    pub async fn double_ack(&self) -> Result<(), async_nats::Error> {
        self.settle(semconv::settle::DOUBLE_ACK, AckKind::Ack, true)
            .await
    }

    /// Asks for redelivery, after `delay` if given (`nak {template}` span).
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), async_nats::Error> {
        self.settle(semconv::settle::NAK, AckKind::Nak(delay), false)
            .await
    }

    /// Stops redelivery for good (`term {template}` span).
    pub async fn term(&self) -> Result<(), async_nats::Error> {
        self.settle(semconv::settle::TERM, AckKind::Term, false)
            .await
    }

    /// Tells the server work is ongoing, resetting `ack_wait` (`progress {template}`).
    pub async fn progress(&self) -> Result<(), async_nats::Error> {
        self.settle(semconv::settle::PROGRESS, AckKind::Progress, false)
            .await
    }

    async fn settle(
        &self,
        operation: &'static str,
        kind: AckKind,
        double: bool,
    ) -> Result<(), async_nats::Error> {
        let cx = self
            .shared
            .inst
            .tracing_enabled()
            .then(|| self.start_settle(operation, kind));
        let timer = crate::metrics::OpTimer::start(self.shared.inst.instruments(), || {
            crate::metrics::attributes(
                &self.shared.metric_common,
                operation,
                semconv::operation_type::SETTLE,
                self.shared.process.template_value(),
                Some(&self.shared.consumer),
            )
        });
        let result = if double {
            self.message.double_ack_with(kind).await
        } else {
            self.message.ack_with(kind).await
        };
        if let Some(timer) = timer {
            timer.finish(result.as_ref().err().map(|_| "_OTHER"));
        }
        if let Some(cx) = cx {
            if let Err(err) = &result {
                record_failure(&cx, "_OTHER", err.to_string());
            }
            cx.span().end();
        }
        result
    }

    fn start_settle(&self, operation: &'static str, kind: AckKind) -> opentelemetry::Context {
        let shared = &self.shared;
        let mut attributes = Vec::with_capacity(shared.common.len() + 9);
        attributes.extend_from_slice(&shared.common);
        attributes.push(KeyValue::new(semconv::MESSAGING_OPERATION_NAME, operation));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_OPERATION_TYPE,
            semconv::operation_type::SETTLE,
        ));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_DESTINATION_NAME,
            shared.process.subject_value(self.message.subject.as_str()),
        ));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_DESTINATION_TEMPLATE,
            shared.process.template_value(),
        ));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_CONSUMER_GROUP_NAME,
            shared.consumer_value.clone(),
        ));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_NATS_STREAM,
            shared.stream_value.clone(),
        ));
        let sequence = self.sequence.or_else(|| {
            let info = self.message.info().ok()?;
            Some((info.stream_sequence, info.delivered))
        });
        if let Some((stream_sequence, delivered)) = sequence {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_STREAM_SEQUENCE,
                clamp(stream_sequence),
            ));
            attributes.push(KeyValue::new(semconv::MESSAGING_NATS_DELIVERED, delivered));
        }
        if let AckKind::Nak(Some(delay)) = kind {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_NAK_DELAY,
                delay.as_secs_f64(),
            ));
        }
        let name = match shared.settle.iter().find(|(op, _)| *op == operation) {
            Some((_, name)) => name.name(),
            None => SpanName::new(operation, shared.template()).name(),
        };
        let builder = SpanBuilder::from_name(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes);
        shared.inst.start_span(builder, &self.span.context)
    }
}

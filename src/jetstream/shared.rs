//! What every span of one consumer shares (names, template, attributes, health
//! attributes), and the `receive` span of a pull.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use async_nats::jetstream::consumer;
use opentelemetry::trace::{Link, SpanContext};
use opentelemetry::{KeyValue, Value};

use crate::error::boxed_error_type;
use crate::metrics::{HealthSeries, OpSeries};
use crate::names::SpanName;
use crate::operation::{self, Processing, Start, Target};
use crate::semconv;
use crate::telemetry::Telemetry;

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
    /// This consumer's health gauges (when metering).
    pub(crate) health: Option<HealthSeries>,
    /// `receive`, then the settle operations on the same template, built once.
    receive: SpanName,
    pub(crate) settle: [(&'static str, SpanName); 5],
    /// The settle operations' metric series, bound on first use.
    pub(crate) settle_series: [OnceLock<Arc<OpSeries>>; 5],
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
        let consumer_value = crate::names::attribute_value(&info.name);
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
        let health = telemetry
            .inst()
            .instruments()
            .map(|instruments| HealthSeries::new(instruments, health.into()));
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
            settle_series: Default::default(),
            source: filter.unwrap_or(&info.stream_name).to_owned(),
            processing,
            telemetry,
            health,
            stream: info.stream_name.clone(),
            consumer: info.name.clone(),
            stream_value: crate::names::attribute_value(&info.stream_name),
            consumer_value,
        })
    }

    /// The consumer's destination template.
    pub(crate) fn template(&self) -> &str {
        self.processing.template()
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

/// `v` as an attribute integer, saturating.
pub(crate) fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

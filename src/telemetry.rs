//! The telemetry of one connection: where every span and duration metric of the
//! contract in [`operation`](crate::operation) starts, with the attributes
//! samplers see built first and the rest only for spans that record.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, Message};
use opentelemetry::trace::{Link, SpanBuilder, TraceContextExt};
use opentelemetry::{Context, KeyValue, Value};

use crate::client::node::{ServerNode, NODE_ATTRIBUTES};
use crate::delivery::{Exceptions, ProcessSpan};
use crate::instrumentation::{Instrumentation, ProcessParenting};
use crate::metrics::{Instruments, OpSeries, OpSeriesCache, OpTimer, ProcessSeries, ProcessTimer};
use crate::names::SpanName;
use crate::operation::{
    set_attributes, Body, Op, OpType, Operation, Processing, Start, Target, PROCESS,
};
use crate::semconv;

/// The telemetry of one connection: settings plus the attributes every span and
/// metric point of the connection carries. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Telemetry {
    inst: Instrumentation,
    /// `messaging.system`, `server.address`, `server.port`: spans (where samplers
    /// see them) and metrics.
    connection: Arc<[KeyValue]>,
    /// `messaging.client.id` and the node the connection is on: recording spans
    /// only (per-connection metric series otherwise).
    node: Option<Arc<ServerNode>>,
    /// `server.address` and `server.port`, built into each span's attributes
    /// directly (cheaper than cloning `connection`'s entries).
    server: Option<(Host, i64)>,
    /// The connection's operation metric series.
    series: Arc<OpSeriesCache>,
}

/// A server address as an attribute value: interned, or shared.
#[derive(Clone, Debug)]
pub(crate) enum Host {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Host {
    fn value(&self) -> Value {
        match self {
            Host::Static(host) => Value::from(*host),
            Host::Shared(host) => Value::from(host.clone()),
        }
    }
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("inst", &self.inst)
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// The telemetry of a connection to `server` (host, port), currently on
    /// `node`.
    pub(crate) fn new(
        inst: Instrumentation,
        server: Option<(Host, i64)>,
        node: Option<Arc<ServerNode>>,
    ) -> Self {
        let mut connection = vec![KeyValue::new(
            semconv::MESSAGING_SYSTEM,
            semconv::MESSAGING_SYSTEM_NATS,
        )];
        if let Some((host, port)) = &server {
            connection.push(KeyValue::new(semconv::SERVER_ADDRESS, host.value()));
            connection.push(KeyValue::new(semconv::SERVER_PORT, *port));
        }
        Self {
            inst,
            connection: connection.into(),
            node,
            server,
            series: Arc::default(),
        }
    }

    /// The client id attribute of the current connection, if the server
    /// assigned one.
    pub(crate) fn client_id(&self) -> Option<KeyValue> {
        let node = self.node.as_ref()?.attributes();
        node.iter()
            .find(|kv| kv.key.as_str() == semconv::MESSAGING_CLIENT_ID)
            .cloned()
    }

    pub(crate) fn inst(&self) -> &Instrumentation {
        &self.inst
    }

    /// The connection's attributes (`messaging.system`, `server.*`).
    pub(crate) fn connection(&self) -> &Arc<[KeyValue]> {
        &self.connection
    }

    /// Whether spans are made.
    pub(crate) fn tracing(&self) -> bool {
        self.inst.tracing_enabled()
    }

    /// The span name of `op` on `subject`, computed only when a span or a metric
    /// will use it.
    pub(crate) fn name_if_needed(&self, op: Op, subject: &str) -> Option<SpanName> {
        self.inst.name_if_needed(op.name, subject)
    }

    /// Where messages with destination template `template` are processed, in
    /// consumer group `group`.
    pub(crate) fn processing(&self, template: &str, group: Option<Value>) -> Processing {
        let name = SpanName::new(PROCESS.name, template);
        let metered = self.inst.meters(template);
        let metrics = self
            .inst
            .instruments()
            .filter(|_| metered)
            .map(|instruments| {
                let attributes = self
                    .metric_attributes(PROCESS, &Target::named(&name).with_group(group.clone()));
                ProcessSeries::new(instruments, attributes.into())
            });
        Processing {
            name,
            group,
            metrics,
        }
    }

    /// The metric series of `op` on `target` (bound once per connection).
    pub(crate) fn op_series(
        &self,
        instruments: &Arc<Instruments>,
        op: Op,
        target: &Target<'_>,
    ) -> Arc<OpSeries> {
        let group = target.group.as_ref().map(Value::as_str);
        self.series.get(
            instruments,
            op.name,
            op.ty.map(OpType::as_str),
            target.name.template(),
            group.as_deref(),
            || self.metric_attributes(op, target),
        )
    }

    /// The attributes of `op`'s metric points on `target`.
    pub(crate) fn metric_attributes(&self, op: Op, target: &Target<'_>) -> Vec<KeyValue> {
        let mut attributes = Vec::with_capacity(self.connection.len() + 4);
        attributes.extend_from_slice(&self.connection);
        self.push_operation(&mut attributes, op);
        attributes.push(KeyValue::new(
            semconv::MESSAGING_DESTINATION_TEMPLATE,
            target.name.template_value(),
        ));
        if let Some(group) = &target.group {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_CONSUMER_GROUP_NAME,
                group.clone(),
            ));
        }
        attributes
    }

    fn push_operation(&self, attributes: &mut Vec<KeyValue>, op: Op) {
        attributes.push(KeyValue::new(semconv::MESSAGING_OPERATION_NAME, op.name));
        if let Some(ty) = op.ty {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_OPERATION_TYPE,
                ty.as_str(),
            ));
        }
    }

    /// What the span builder gets: the attributes samplers conventionally read,
    /// with `room` to spare.
    fn sampler_attributes(&self, op: Op, target: &Target<'_>, room: usize) -> Vec<KeyValue> {
        let exact = self.connection.len()
            + 4
            + 2 * usize::from(target.temporary)
            + usize::from(target.group.is_some());
        // Room for what a recording span adds: `room` (which counts
        // `messaging.client.id`) and the node's other attributes.
        let node = if self.node.is_some() && self.inst.server_node_enabled() {
            NODE_ATTRIBUTES - 1
        } else {
            0
        };
        let mut attributes = Vec::with_capacity(exact + node + room);
        attributes.push(KeyValue::new(
            semconv::MESSAGING_SYSTEM,
            semconv::MESSAGING_SYSTEM_NATS,
        ));
        if let Some((host, port)) = &self.server {
            attributes.push(KeyValue::new(semconv::SERVER_ADDRESS, host.value()));
            attributes.push(KeyValue::new(semconv::SERVER_PORT, *port));
        }
        self.push_operation(&mut attributes, op);
        attributes.push(KeyValue::new(
            semconv::MESSAGING_DESTINATION_NAME,
            match target.destination {
                Some(subject) => target.name.subject_value(subject),
                None => target.name.template_value(),
            },
        ));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_DESTINATION_TEMPLATE,
            target.name.template_value(),
        ));
        if target.temporary {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_DESTINATION_TEMPORARY,
                true,
            ));
            attributes.push(KeyValue::new(
                semconv::MESSAGING_DESTINATION_ANONYMOUS,
                true,
            ));
        }
        if let Some(group) = &target.group {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_CONSUMER_GROUP_NAME,
                group.clone(),
            ));
        }
        attributes
    }

    /// Builds the span and, if it records, adds `messaging.client.id` and
    /// `recording`'s attributes under one lock. Returns its context and whether it
    /// records.
    fn span(
        &self,
        op: Op,
        target: &Target<'_>,
        start: Start<'_>,
        recording: impl FnOnce(&mut Vec<KeyValue>),
    ) -> (Context, bool) {
        // Built in place: each `with_*` moves the whole builder, and
        // `with_attributes` collects the vector again.
        let links = match start.links.is_empty() {
            true => None,
            false => {
                let mut links = start.links;
                links.retain(|l| l.span_context.is_valid());
                Some(links)
            }
        };
        let builder = SpanBuilder {
            name: target.name.name(),
            span_kind: Some(op.kind()),
            attributes: Some(self.sampler_attributes(op, target, start.room)),
            links,
            start_time: start.time,
            ..SpanBuilder::default()
        };
        let (cx, records) = match start.parent {
            Some(parent) => self.inst.start_span(builder, parent),
            None => Context::map_current(|parent| self.inst.start_span(builder, parent)),
        };
        if records {
            let span = cx.span();
            if let Some(link) = start.late_link {
                span.add_link(link, Vec::new());
            }
            set_attributes(&span, |attributes| {
                if let Some(node) = &self.node {
                    let node = node.attributes();
                    // The client id comes first; the rest only when asked for.
                    let shown = match self.inst.server_node_enabled() {
                        true => node.len(),
                        false => node
                            .iter()
                            .take(1)
                            .filter(|kv| kv.key.as_str() == semconv::MESSAGING_CLIENT_ID)
                            .count(),
                    };
                    attributes.extend(node[..shown].iter().cloned());
                }
                self.inst.push_baggage_attributes(&cx, attributes);
                recording(attributes);
            });
        }
        (cx, records)
    }

    /// Starts `op` on `target`: its span (when tracing) and its duration metric
    /// (when metering). `recording` is called only if the span records.
    pub(crate) fn start(
        &self,
        op: Op,
        target: &Target<'_>,
        mut start: Start<'_>,
        recording: impl FnOnce(&mut Vec<KeyValue>),
    ) -> Operation {
        let series = start.series.take();
        let template = target.name.template();
        let instruments = self
            .inst
            .instruments()
            .filter(|_| self.inst.meters(template));
        let timer = OpTimer::start(instruments, start.time, |instruments| {
            series.unwrap_or_else(|| self.op_series(instruments, op, target))
        });
        let subject = target.destination.unwrap_or(template);
        let (cx, records) = match self.inst.traces(op, subject, template, start.headers) {
            true => {
                let (cx, records) = self.span(op, target, start, recording);
                (Some(cx), records)
            }
            false => (None, false),
        };
        Operation::new(cx, records, timer, op.ty == Some(OpType::Send))
            .with_exception_logs(self.inst.exception_logs(), op.ty)
    }

    /// Pushes the attributes a message adds to a recording `publish`, `request` or
    /// `process` span: its id, its encoding, and the opt-in body sizes.
    pub(crate) fn push_message_attributes(
        &self,
        attributes: &mut Vec<KeyValue>,
        headers: Option<&HeaderMap>,
        body: Body,
    ) {
        if let (Some(capture), Some(headers)) = (self.inst.header_capture(), headers) {
            capture.push(headers, attributes);
        }
        if let Some(id) = headers.and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID)) {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_MESSAGE_ID,
                id.as_str().to_owned(),
            ));
        }
        if self.inst.body_size_enabled() {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_MESSAGE_BODY_SIZE,
                body.size as i64,
            ));
            if let Some(compressed) = body.compressed {
                attributes.push(KeyValue::new(
                    semconv::MESSAGING_NATS_BODY_COMPRESSED_SIZE,
                    compressed.size as i64,
                ));
            }
        }
        if let Some(compressed) = body.compressed {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_CONTENT_ENCODING,
                compressed.encoding,
            ));
        }
    }

    /// Starts sending a message (`publish`, `request`: `op`) to `subject` with
    /// `headers` and `body`; nothing when neither spans nor metrics are on. A
    /// recording span gets the message's attributes and the publish hook's, with
    /// `room` for them.
    pub(crate) fn start_send(
        &self,
        op: Op,
        subject: &str,
        headers: Option<&HeaderMap>,
        body: Body,
        room: usize,
    ) -> Operation {
        self.start_send_linked(op, subject, headers, body, room, Vec::new())
    }

    /// [`start_send`](Self::start_send) with `links` on the span.
    pub(crate) fn start_send_linked(
        &self,
        op: Op,
        subject: &str,
        headers: Option<&HeaderMap>,
        body: Body,
        room: usize,
        links: Vec<Link>,
    ) -> Operation {
        let Some(name) = self.name_if_needed(op, subject) else {
            return Operation::none();
        };
        let target = Target::subject(&self.inst, &name, subject);
        let start = Start::default()
            .with_room(room)
            .with_headers(headers)
            .with_links(links);
        self.start(op, &target, start, |a| {
            self.push_message_attributes(a, headers, body);
            self.inst.push_publish_hook(subject, headers, a);
        })
    }

    /// Starts processing a delivered message on `subject` (the template's own
    /// destination when `None`) whose headers are `headers`: its CONSUMER `process`
    /// span, parented and linked as [`ProcessParenting`] says, counted in
    /// `messaging.client.consumed.messages` and timed for
    /// `messaging.process.duration` (and end-to-end latency from `age`, the
    /// message's age as it is delivered). `recording` is called only if the span records (`room`
    /// attributes, see [`Start::with_room`]); the process hook sees `message`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_process(
        &self,
        processing: &Processing,
        subject: Option<&str>,
        headers: Option<&HeaderMap>,
        message: Option<&Message>,
        age: Option<Duration>,
        room: usize,
        recording: impl FnOnce(&mut Vec<KeyValue>),
    ) -> ProcessSpan {
        let timer = ProcessTimer::start(processing.metrics.as_ref(), age);
        let (context, producer, records, traced) = self.process_span(
            &processing.target(&self.inst, subject),
            headers,
            message,
            room,
            recording,
        );
        let exceptions = Exceptions {
            logs: self.inst.exception_logs().filter(|_| traced).cloned(),
            span_events: self.inst.exception_span_events(),
        };
        ProcessSpan::new(
            (context, producer, records),
            timer,
            self.inst.error_type_hook(),
            exceptions,
        )
    }

    /// The process span itself: its context, the producer's, whether it
    /// records, and whether it is ours (traced, sampled or not).
    fn process_span(
        &self,
        target: &Target<'_>,
        headers: Option<&HeaderMap>,
        message: Option<&Message>,
        room: usize,
        recording: impl FnOnce(&mut Vec<KeyValue>),
    ) -> (Context, Context, bool, bool) {
        let producer = match headers {
            Some(headers) => self.inst.extract(headers),
            None => Context::new(),
        };
        let template = target.name.template();
        let subject = target.destination.unwrap_or(template);
        if !self.inst.traces(PROCESS, subject, template, headers) {
            // Not traced: the producer's context is handed on as it came.
            return (producer.clone(), producer, false, false);
        }
        let producer_span = producer.span().span_context().clone();
        let mut links = Vec::new();
        let mut late_link = None;
        let root;
        let parent = match self.inst.parenting() {
            ProcessParenting::ChildAndLink => {
                if producer_span.is_valid() {
                    // Parented on the creation context: the span current where
                    // processing starts (a caller's loop span) becomes a link.
                    let surrounding = Context::map_current(|cx| {
                        let span = cx.span();
                        let sc = span.span_context();
                        (sc.is_valid() && sc.span_id() != producer_span.span_id())
                            .then(|| sc.clone())
                    });
                    match surrounding {
                        Some(surrounding) => {
                            links.reserve_exact(2);
                            links.push(Link::with_context(producer_span));
                            links.push(Link::with_context(surrounding));
                        }
                        // The link repeats the parent, which the sampler sees:
                        // added only if the span records (no allocation for an
                        // unsampled message).
                        None => late_link = Some(producer_span),
                    }
                }
                &producer
            }
            ProcessParenting::LinkOnly => {
                if producer_span.is_valid() {
                    links.push(Link::with_context(producer_span));
                }
                // A new root: the producer is only linked, its baggage kept.
                root = {
                    use opentelemetry::baggage::BaggageExt;
                    let baggage = producer.baggage();
                    if baggage.is_empty() {
                        Context::new()
                    } else {
                        let kept: opentelemetry::baggage::Baggage = baggage
                            .iter()
                            .map(|(k, (v, m))| (k.clone(), (v.clone(), m.clone())))
                            .collect();
                        Context::new().with_baggage(kept)
                    }
                };
                &root
            }
        };
        let start = Start::under(parent)
            .with_links(links)
            .with_late_link(late_link)
            .with_room(room);
        let (cx, records) = self.span(PROCESS, target, start, |attributes| {
            recording(attributes);
            if let Some(message) = message {
                self.inst.push_process_hook(message, attributes);
            }
        });
        (cx, producer, records, true)
    }
}

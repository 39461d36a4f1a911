//! The telemetry contract in one place: every instrumented operation starts here.
//!
//! Core NATS, JetStream, KV, Object Store, the Service API and the Worker all
//! describe what they do as an [`Op`] on a [`Target`] and start it through
//! [`Telemetry`]. From those two this module derives, identically for spans and
//! metrics, the name (`{operation} {template}`), the span kind that matches the
//! operation type, and the attributes. Only what samplers conventionally read goes
//! into the span builder; everything else is computed once the sampler decided to
//! record, so an unsampled message costs little more than its `traceparent`.
//! Outcomes are recorded by [`Operation::fail`] / [`Operation::succeed`] (client
//! operations) and by the processing type ([`crate::Delivery`]).

use std::fmt::{self, Display};
use std::sync::Arc;
use std::time::SystemTime;

use async_nats::{HeaderMap, Message};
use opentelemetry::trace::{
    Link, SpanBuilder, SpanContext, SpanKind, SpanRef, Status, TraceContextExt,
};
use opentelemetry::{Context, KeyValue, Value};

use crate::delivery::ProcessSpan;
use crate::instrumentation::{Compressed, Instrumentation, ProcessParenting};
use crate::metrics::{OpTimer, ProcessTimer};
use crate::names::SpanName;
use crate::semconv;

/// `messaging.operation.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpType {
    Send,
    Receive,
    Process,
    Settle,
}

impl OpType {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            OpType::Send => semconv::operation_type::SEND,
            OpType::Receive => semconv::operation_type::RECEIVE,
            OpType::Process => semconv::operation_type::PROCESS,
            OpType::Settle => semconv::operation_type::SETTLE,
        }
    }
}

/// One kind of messaging operation: `messaging.operation.name`, its
/// `messaging.operation.type` where the conventions define one, and so its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Op {
    pub(crate) name: &'static str,
    pub(crate) ty: Option<OpType>,
    /// A send whose context goes into the message (PRODUCER, else CLIENT).
    injects: bool,
}

impl Op {
    /// Sends a message carrying this operation's context (PRODUCER).
    pub(crate) const fn send(name: &'static str) -> Self {
        Self {
            name,
            ty: Some(OpType::Send),
            injects: true,
        }
    }

    /// Sends a message that carries no context of ours (CLIENT).
    pub(crate) const fn send_without_context(name: &'static str) -> Self {
        Self {
            name,
            ty: Some(OpType::Send),
            injects: false,
        }
    }

    /// Reads from the server (CLIENT).
    pub(crate) const fn receive(name: &'static str) -> Self {
        Self {
            name,
            ty: Some(OpType::Receive),
            injects: false,
        }
    }

    /// Settles a delivered message (CLIENT).
    pub(crate) const fn settle(name: &'static str) -> Self {
        Self {
            name,
            ty: Some(OpType::Settle),
            injects: false,
        }
    }

    /// A client call the conventions give no operation type (CLIENT).
    pub(crate) const fn call(name: &'static str) -> Self {
        Self {
            name,
            ty: None,
            injects: false,
        }
    }

    /// The span kind the conventions pair with this operation type.
    pub(crate) fn kind(self) -> SpanKind {
        match self.ty {
            Some(OpType::Send) if self.injects => SpanKind::Producer,
            Some(OpType::Process) => SpanKind::Consumer,
            _ => SpanKind::Client,
        }
    }
}

/// Handling one delivered message (CONSUMER).
pub(crate) const PROCESS: Op = Op {
    name: semconv::operation::PROCESS,
    ty: Some(OpType::Process),
    injects: false,
};
/// A core or JetStream publish.
pub(crate) const PUBLISH: Op = Op::send(semconv::operation::PUBLISH);
/// A request whose reply is awaited.
pub(crate) const REQUEST: Op = Op::send(semconv::operation::REQUEST);
/// Pulling messages from a JetStream consumer.
pub(crate) const RECEIVE: Op = Op::receive(semconv::operation::RECEIVE);

/// What an operation acts on.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    /// `{operation} {template}`: the span name and the destination template.
    pub(crate) name: &'a SpanName,
    /// `messaging.destination.name`, the real destination, when it is not the
    /// template itself.
    pub(crate) destination: Option<&'a str>,
    /// An inbox: temporary and anonymous.
    pub(crate) temporary: bool,
    /// `messaging.consumer.group.name`.
    pub(crate) group: Option<Value>,
}

impl<'a> Target<'a> {
    /// A subject named `name` (whose template ends it).
    pub(crate) fn subject(inst: &Instrumentation, name: &'a SpanName, subject: &'a str) -> Self {
        Self {
            name,
            destination: Some(subject),
            temporary: inst.is_temporary(subject),
            group: None,
        }
    }

    /// A destination whose name is its template (a bucket, a stream).
    pub(crate) fn named(name: &'a SpanName) -> Self {
        Self {
            name,
            destination: None,
            temporary: false,
            group: None,
        }
    }

    /// With `messaging.consumer.group.name`.
    pub(crate) fn with_group(mut self, group: Option<Value>) -> Self {
        self.group = group;
        self
    }
}

/// Where a source's messages are processed: the `process {template}` name, the
/// consumer group, and the attributes of the process metrics, built once per
/// subscription, consumer, endpoint or watch.
#[derive(Debug, Clone)]
pub(crate) struct Processing {
    pub(crate) name: SpanName,
    pub(crate) group: Option<Value>,
    pub(crate) metric_attributes: Arc<[KeyValue]>,
}

impl Processing {
    /// The destination template.
    pub(crate) fn template(&self) -> &str {
        self.name.template()
    }

    /// The target of a message on `subject` (the template itself when `None`).
    fn target<'a>(&'a self, inst: &Instrumentation, subject: Option<&'a str>) -> Target<'a> {
        Target {
            name: &self.name,
            destination: subject,
            temporary: subject.is_some_and(|s| inst.is_temporary(s)),
            group: self.group.clone(),
        }
    }
}

/// Where a span starts, what it links to, and how many attributes it may add once
/// it records.
pub(crate) struct Start<'a> {
    parent: Option<&'a Context>,
    links: Vec<Link>,
    time: Option<SystemTime>,
    room: usize,
}

impl Default for Start<'_> {
    fn default() -> Self {
        Self {
            parent: None,
            links: Vec::new(),
            time: None,
            room: 4,
        }
    }
}

impl<'a> Start<'a> {
    /// Under `parent` instead of the current context.
    pub(crate) fn under(parent: &'a Context) -> Self {
        Self {
            parent: Some(parent),
            ..Self::default()
        }
    }

    /// Room for `n` attributes added once the span records (`messaging.client.id`
    /// included), so a recording span does not grow its attribute buffer. An
    /// unsampled span allocates the room too: keep it tight (the buffer should stay
    /// under the allocator's 1 KiB per-thread cache).
    pub(crate) fn with_room(mut self, n: usize) -> Self {
        self.room = n;
        self
    }

    /// Linking `links`.
    pub(crate) fn with_links(mut self, links: Vec<Link>) -> Self {
        self.links = links;
        self
    }

    /// Started at `time` (an operation recorded after it happened).
    pub(crate) fn at(mut self, time: SystemTime) -> Self {
        self.time = Some(time);
        self
    }
}

/// A message's payload as the conventions' opt-in size attributes see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Body {
    /// Uncompressed size.
    pub(crate) size: usize,
    /// Encoding and size on the wire, when it travelled compressed.
    pub(crate) compressed: Option<Compressed>,
}

impl Body {
    pub(crate) fn plain(size: usize) -> Self {
        Self {
            size,
            compressed: None,
        }
    }

    /// A payload of `size` bytes on the wire, or of the original size when it
    /// was compressed.
    pub(crate) fn sent(size: usize, compressed: Option<(usize, Compressed)>) -> Self {
        match compressed {
            Some((original, compressed)) => Self {
                size: original,
                compressed: Some(compressed),
            },
            None => Self::plain(size),
        }
    }
}

/// The telemetry of one connection: settings plus the attributes every span and
/// metric point of the connection carries. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Telemetry {
    inst: Instrumentation,
    /// `messaging.system`, `server.address`, `server.port`: spans (where samplers
    /// see them) and metrics.
    connection: Arc<[KeyValue]>,
    /// `messaging.client.id`: spans only (per-connection metric series otherwise).
    client_id: Option<KeyValue>,
    /// `server.address` and `server.port`, built into each span's attributes
    /// directly (cheaper than cloning `connection`'s entries).
    server: Option<(Host, i64)>,
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
    /// The telemetry of a connection to `server` (host, port), whose id is
    /// `client_id`.
    pub(crate) fn new(
        inst: Instrumentation,
        server: Option<(Host, i64)>,
        client_id: Option<KeyValue>,
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
            client_id,
            server,
        }
    }

    /// The client id attribute, if the server assigned one.
    pub(crate) fn client_id(&self) -> Option<&KeyValue> {
        self.client_id.as_ref()
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
        let metric_attributes = self
            .metric_attributes(PROCESS, &Target::named(&name).with_group(group.clone()))
            .into();
        Processing {
            name,
            group,
            metric_attributes,
        }
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
        let mut attributes = Vec::with_capacity(exact + room);
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
        let mut builder = SpanBuilder::from_name(target.name.name())
            .with_kind(op.kind())
            .with_attributes(self.sampler_attributes(op, target, start.room));
        if !start.links.is_empty() {
            builder = builder.with_links(start.links);
        }
        if let Some(time) = start.time {
            builder = builder.with_start_time(time);
        }
        let cx = match start.parent {
            Some(parent) => self.inst.start_span(builder, parent),
            None => Context::map_current(|parent| self.inst.start_span(builder, parent)),
        };
        let span = cx.span();
        let records = span.is_recording();
        if records {
            set_attributes(&span, |attributes| {
                attributes.extend(self.client_id.clone());
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
        start: Start<'_>,
        recording: impl FnOnce(&mut Vec<KeyValue>),
    ) -> Operation {
        let timer = OpTimer::start(self.inst.instruments(), start.time, || {
            self.metric_attributes(op, target)
        });
        let (cx, records) = match self.tracing() {
            true => {
                let (cx, records) = self.span(op, target, start, recording);
                (Some(cx), records)
            }
            false => (None, false),
        };
        Operation {
            cx,
            records,
            timer,
            sends: op.ty == Some(OpType::Send),
        }
    }

    /// Pushes the attributes a message adds to a recording `publish`, `request` or
    /// `process` span: its id, its encoding, and the opt-in body sizes.
    pub(crate) fn push_message_attributes(
        &self,
        attributes: &mut Vec<KeyValue>,
        headers: Option<&HeaderMap>,
        body: Body,
    ) {
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
        let Some(name) = self.name_if_needed(op, subject) else {
            return Operation::none();
        };
        let target = Target::subject(&self.inst, &name, subject);
        self.start(op, &target, Start::default().with_room(room), |a| {
            self.push_message_attributes(a, headers, body);
            self.inst.push_publish_hook(subject, headers, a);
        })
    }

    /// Starts processing a delivered message on `subject` (the template's own
    /// destination when `None`) whose headers are `headers`: its CONSUMER `process`
    /// span, parented and linked as [`ProcessParenting`] says, counted in
    /// `messaging.client.consumed.messages` and timed for
    /// `messaging.process.duration` (and end-to-end latency from `published`, Unix
    /// nanoseconds). `recording` is called only if the span records (`room`
    /// attributes, see [`Start::with_room`]); the process hook sees `message`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_process(
        &self,
        processing: &Processing,
        subject: Option<&str>,
        headers: Option<&HeaderMap>,
        message: Option<&Message>,
        published: Option<i128>,
        room: usize,
        recording: impl FnOnce(&mut Vec<KeyValue>),
    ) -> ProcessSpan {
        let timer = ProcessTimer::start(
            self.inst.instruments(),
            &processing.metric_attributes,
            published,
        );
        let contexts = self.process_span(
            &processing.target(&self.inst, subject),
            headers,
            message,
            room,
            recording,
        );
        ProcessSpan::new(contexts, timer, self.inst.error_type_hook())
    }

    /// The process span itself: its context, the producer's, and whether it
    /// records.
    fn process_span(
        &self,
        target: &Target<'_>,
        headers: Option<&HeaderMap>,
        message: Option<&Message>,
        room: usize,
        recording: impl FnOnce(&mut Vec<KeyValue>),
    ) -> (Context, Context, bool) {
        let producer = match headers {
            Some(headers) => self.inst.extract(headers),
            None => Context::new(),
        };
        if !self.tracing() {
            return (producer.clone(), producer, false);
        }
        let producer_span = producer.span().span_context().clone();
        let mut links = Vec::new();
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
                    links.reserve_exact(1 + usize::from(surrounding.is_some()));
                    links.push(Link::with_context(producer_span));
                    links.extend(surrounding.map(Link::with_context));
                }
                &producer
            }
            ProcessParenting::LinkOnly => {
                if producer_span.is_valid() {
                    links.push(Link::with_context(producer_span));
                }
                // A new root: the producer is only linked.
                root = Context::new();
                &root
            }
        };
        let start = Start::under(parent).with_links(links).with_room(room);
        let (cx, records) = self.span(PROCESS, target, start, |attributes| {
            recording(attributes);
            if let Some(message) = message {
                self.inst.push_process_hook(message, attributes);
            }
        });
        (cx, producer, records)
    }
}

/// One client operation in flight: its span (when tracing) and duration timer
/// (when metering). Ends exactly once: through [`succeed`](Self::succeed) or
/// [`fail`](Self::fail), or, when dropped unfinished, with the span ended, a send
/// counted, and no duration recorded (the outcome is unknown).
pub(crate) struct Operation {
    cx: Option<Context>,
    /// Whether the span records: a span that does not needs no explicit end
    /// (dropping its context is enough, and saves a clock read and a lock).
    records: bool,
    timer: Option<OpTimer>,
    sends: bool,
}

impl fmt::Debug for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operation")
            .field("traced", &self.cx.is_some())
            .field("metered", &self.timer.is_some())
            .finish()
    }
}

impl Operation {
    /// An operation that records nothing.
    pub(crate) fn none() -> Self {
        Self {
            cx: None,
            records: false,
            timer: None,
            sends: false,
        }
    }

    /// The span's context, when tracing.
    pub(crate) fn context(&self) -> Option<&Context> {
        self.cx.as_ref()
    }

    /// The span, if it records.
    pub(crate) fn recording(&self) -> Option<SpanRef<'_>> {
        self.cx
            .as_ref()
            .filter(|_| self.records)
            .map(TraceContextExt::span)
    }

    /// Adds the attributes `push` pushes to the span if it records (computed
    /// only then).
    pub(crate) fn record(&self, push: impl FnOnce(&mut Vec<KeyValue>)) {
        if let Some(span) = self.recording() {
            set_attributes(&span, push);
        }
    }

    /// Links `span_context` (valid ones only) to the span if it records.
    pub(crate) fn link(&self, span_context: SpanContext) {
        if span_context.is_valid() {
            if let Some(span) = self.recording() {
                span.add_link(span_context, Vec::new());
            }
        }
    }

    /// Ends the operation as a success.
    pub(crate) fn succeed(mut self) {
        self.end(None);
    }

    /// Ends the operation as failed with `error_type` (from the documented
    /// vocabulary) and `message` as the status description.
    pub(crate) fn fail(mut self, error_type: &str, message: &dyn Display) {
        self.end(Some((error_type, message)));
    }

    /// Ends the operation with `result`, failed with `error_type(err)` on `Err`.
    pub(crate) fn finish<T, E: Display>(
        self,
        result: &Result<T, E>,
        error_type: impl FnOnce(&E) -> String,
    ) {
        match result {
            Ok(_) => self.succeed(),
            Err(err) => self.fail(&error_type(err), err),
        }
    }

    fn end(&mut self, failure: Option<(&str, &dyn Display)>) {
        let error_type = failure.map(|(error_type, _)| error_type);
        if let Some(timer) = self.timer.take() {
            if self.sends {
                timer.count_sent(error_type);
            }
            timer.finish(error_type);
        }
        if let Some(cx) = self.cx.take() {
            if self.records {
                if let Some((error_type, message)) = failure {
                    record_failure(&cx, error_type, message);
                }
                cx.span().end();
            }
        }
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            // Abandoned before its outcome: the message went out, how it fared is unknown.
            if self.sends {
                timer.count_sent(None);
            }
        }
        if let Some(cx) = self.cx.take() {
            if self.records {
                cx.span().end();
            }
        }
    }
}

thread_local! {
    /// The buffer recording attributes are gathered in before they go to a span
    /// under one lock (kept per thread: no allocation per span).
    static SCRATCH: std::cell::Cell<Vec<KeyValue>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Sets the attributes `push` pushes on `span`, through the per-thread buffer.
fn set_attributes(span: &SpanRef<'_>, push: impl FnOnce(&mut Vec<KeyValue>)) {
    // Taken, not borrowed: `push` may run hooks that start spans themselves.
    let mut attributes = SCRATCH.try_with(std::cell::Cell::take).unwrap_or_default();
    push(&mut attributes);
    span.set_attributes(attributes.drain(..));
    let _ = SCRATCH.try_with(|scratch| scratch.set(attributes));
}

/// Records a failure on the span in `cx`: `error.type` and an error status.
pub(crate) fn record_failure(cx: &Context, error_type: &str, message: &dyn Display) {
    let span = cx.span();
    if !span.is_recording() {
        return;
    }
    span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type.to_owned()));
    span.set_status(Status::error(message.to_string()));
}

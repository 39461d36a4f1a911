//! Attribute keys and values emitted by this crate, and the table of what every
//! span carries.
//!
//! Names follow the OpenTelemetry messaging semantic conventions
//! ([`SCHEMA_URL`]); NATS-specific attributes live under `messaging.nats.*`.
//! Every key this crate writes is a constant here, so dashboards and tests can
//! refer to them without string typos.
//!
#![doc = include_str!("conventions.md")]

/// Schema URL of the semantic-conventions version these names follow.
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.44.0";

/// `messaging.system`: always [`MESSAGING_SYSTEM_NATS`].
pub const MESSAGING_SYSTEM: &str = "messaging.system";
/// The value of `messaging.system` for NATS.
pub const MESSAGING_SYSTEM_NATS: &str = "nats";
/// `messaging.operation.name`: `publish`, `request`, `process`, ….
pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
/// `messaging.operation.type`: `send`, `receive`, `process`, `settle`, `create`.
pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
/// `messaging.destination.name`: the real subject. Attributes only, never span names.
pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
/// `messaging.destination.template`: the low-cardinality subject template.
pub const MESSAGING_DESTINATION_TEMPLATE: &str = "messaging.destination.template";
/// `messaging.destination.temporary`: `true` for inbox (reply) subjects.
pub const MESSAGING_DESTINATION_TEMPORARY: &str = "messaging.destination.temporary";
/// `messaging.destination.anonymous`: `true` for inbox (reply) subjects, whose
/// names are generated.
pub const MESSAGING_DESTINATION_ANONYMOUS: &str = "messaging.destination.anonymous";
/// `messaging.consumer.group.name`: the queue group (or durable consumer).
pub const MESSAGING_CONSUMER_GROUP_NAME: &str = "messaging.consumer.group.name";
/// `messaging.message.id`: `Nats-Msg-Id` when present.
pub const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
/// `messaging.message.body.size`: payload size in bytes (headers excluded); for a
/// compressed payload, its uncompressed size (as the conventions ask). Opt-in:
/// recorded only with
/// [`InstrumentationBuilder::with_message_body_size`](crate::InstrumentationBuilder::with_message_body_size).
pub const MESSAGING_MESSAGE_BODY_SIZE: &str = "messaging.message.body.size";
/// `messaging.nats.message.body.compressed_size`: the payload's size on the wire
/// when it was compressed (`Content-Encoding` zstd or gzip). Opt-in, with
/// [`MESSAGING_MESSAGE_BODY_SIZE`].
pub const MESSAGING_NATS_BODY_COMPRESSED_SIZE: &str = "messaging.nats.message.body.compressed_size";
/// `messaging.nats.content_encoding`: the payload's `Content-Encoding` when it was
/// compressed.
pub const MESSAGING_NATS_CONTENT_ENCODING: &str = "messaging.nats.content_encoding";
/// `messaging.nats.message.header.<lowercase name>`: a captured header's values
/// (string array), only for headers listed with
/// [`with_header_capture`](crate::InstrumentationBuilder::with_header_capture).
pub const MESSAGING_NATS_MESSAGE_HEADER_PREFIX: &str = "messaging.nats.message.header.";
/// `messaging.batch.message_count`: number of messages in a batch operation.
pub const MESSAGING_BATCH_MESSAGE_COUNT: &str = "messaging.batch.message_count";
/// `messaging.client.id`: the client id the server assigned to this connection.
pub const MESSAGING_CLIENT_ID: &str = "messaging.client.id";
/// `messaging.nats.server.name`: the name of the node the connection is on (from
/// its INFO; changes when the client reconnects to another node).
pub const MESSAGING_NATS_SERVER_NAME: &str = "messaging.nats.server.name";
/// `messaging.nats.server.id`: the id of the node the connection is on (from its
/// INFO).
pub const MESSAGING_NATS_SERVER_ID: &str = "messaging.nats.server.id";
/// `network.peer.address`: the listen address of the node the connection is on,
/// from its INFO, when that is a concrete IP address.
pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
/// `network.peer.port`: the listen port of that node, set with
/// [`NETWORK_PEER_ADDRESS`].
pub const NETWORK_PEER_PORT: &str = "network.peer.port";
/// `server.address`: host name of the NATS server the client was pointed at.
pub const SERVER_ADDRESS: &str = "server.address";
/// `server.port`: port of the NATS server the client was pointed at.
pub const SERVER_PORT: &str = "server.port";
/// `error.type`: the error kind, in `snake_case` (`no_responders`, `timed_out`, …);
/// the values are listed in [`error_type`](mod@error_type).
pub const ERROR_TYPE: &str = "error.type";

/// `error.type` values this crate writes itself (besides async-nats error kinds in
/// `snake_case`, Service API error codes, and handler error types; see the table in
/// the [module docs](self)).
pub mod error_type {
    /// Nothing more specific is known (the conventions' fallback).
    pub const OTHER: &str = "_OTHER";
    /// The server refused this connection's publish to the subject.
    pub const PERMISSIONS_VIOLATION: &str = "permissions_violation";
    /// A [`Worker`](crate::jetstream::Worker) handler failed transiently.
    pub const TRANSIENT: &str = "transient";
    /// A [`Worker`](crate::jetstream::Worker) handler failed for good.
    pub const FATAL: &str = "fatal";
    /// A [`Worker`](crate::jetstream::Worker) handler panicked.
    pub const PANIC: &str = "panic";
    /// A compressed payload with an unknown `Content-Encoding`.
    pub const UNKNOWN_CONTENT_ENCODING: &str = "unknown_content_encoding";
    /// A compressed payload that does not decode.
    pub const CORRUPT_PAYLOAD: &str = "corrupt_payload";
    /// A compressed payload that decodes past the configured limit.
    pub const DECODED_PAYLOAD_TOO_LARGE: &str = "decoded_payload_too_large";
    /// An object read whose content did not match its digest.
    pub const DIGEST_MISMATCH: &str = "digest_mismatch";
    /// An object read that failed for another reason.
    pub const READ: &str = "read";
    /// A dead-letter replay of a message without `Dlq-Reason`.
    pub const NOT_A_DEAD_LETTER: &str = "not_a_dead_letter";
    /// A dead-letter replay with no `Dlq-Source-Subject` and no target given.
    pub const NO_SOURCE_SUBJECT: &str = "no_source_subject";
    /// A dead letter replayed whose deletion from the dead-letter stream failed.
    pub const DELETE_FAILED: &str = "delete_failed";
}

/// Span events and their attribute keys.
pub mod event {
    /// The [`Worker`](crate::jetstream::Worker) sent the message back for a retry.
    pub const RETRY: &str = "retry";
    /// The message was dead-lettered (copied, then terminated).
    pub const DEAD_LETTER: &str = "dead_letter";
    /// The dead-letter copy could not be published; the message is redelivered.
    pub const DEAD_LETTER_FAILED: &str = "dead_letter_failed";
    /// The message's id was already processed: acknowledged without the handler.
    pub const DUPLICATE_SKIPPED: &str = "duplicate_skipped";
    /// `messaging.nats.retry.delay`: seconds until the redelivery.
    pub const RETRY_DELAY: &str = "messaging.nats.retry.delay";
    /// `messaging.nats.retry.reason`: why the handler failed.
    pub const RETRY_REASON: &str = "messaging.nats.retry.reason";
    /// `messaging.nats.dlq.subject`: where the dead-letter copy went.
    pub const DLQ_SUBJECT: &str = "messaging.nats.dlq.subject";
    /// `messaging.nats.dlq.stream`: the stream that stored the copy.
    pub const DLQ_STREAM: &str = "messaging.nats.dlq.stream";
    /// `messaging.nats.dlq.reason`: why the message was dead-lettered.
    pub const DLQ_REASON: &str = "messaging.nats.dlq.reason";
}

/// `messaging.nats.reply.body.size`: size of the reply payload a `request` received.
/// Opt-in, with [`MESSAGING_MESSAGE_BODY_SIZE`].
pub const MESSAGING_NATS_REPLY_BODY_SIZE: &str = "messaging.nats.reply.body.size";

/// Span event name and attribute keys for a recorded exception.
pub const EXCEPTION_EVENT: &str = "exception";
/// `exception.message` on an [`EXCEPTION_EVENT`].
pub const EXCEPTION_MESSAGE: &str = "exception.message";
/// `exception.type` on an [`EXCEPTION_EVENT`].
pub const EXCEPTION_TYPE: &str = "exception.type";

/// `messaging.operation.name` values.
pub mod operation {
    /// A core or JetStream publish.
    pub const PUBLISH: &str = "publish";
    /// A request whose reply is awaited.
    pub const REQUEST: &str = "request";
    /// Handling one delivered message.
    pub const PROCESS: &str = "process";
    /// Pulling a batch of messages from a consumer.
    pub const RECEIVE: &str = "receive";
}

/// `messaging.operation.type` values.
pub mod operation_type {
    /// A message is sent to a destination.
    pub const SEND: &str = "send";
    /// A delivered message is processed.
    pub const PROCESS: &str = "process";
    /// Messages are pulled from the broker.
    pub const RECEIVE: &str = "receive";
    /// A delivered message is acknowledged or rejected.
    pub const SETTLE: &str = "settle";
}

/// `messaging.nats.stream`: the JetStream stream that stored the message.
pub const MESSAGING_NATS_STREAM: &str = "messaging.nats.stream";
/// `messaging.nats.stream.sequence`: the message's sequence in its stream.
pub const MESSAGING_NATS_STREAM_SEQUENCE: &str = "messaging.nats.stream.sequence";
/// `messaging.nats.duplicate`: the server dropped the publish as a duplicate
/// (same `Nats-Msg-Id` within the stream's duplicate window).
pub const MESSAGING_NATS_DUPLICATE: &str = "messaging.nats.duplicate";
/// `messaging.nats.consumer`: the JetStream consumer's name.
pub const MESSAGING_NATS_CONSUMER: &str = "messaging.nats.consumer";
/// `messaging.nats.consumer.sequence`: the message's sequence in its consumer.
pub const MESSAGING_NATS_CONSUMER_SEQUENCE: &str = "messaging.nats.consumer.sequence";
/// `messaging.nats.delivered`: how many times this message has been delivered.
pub const MESSAGING_NATS_DELIVERED: &str = "messaging.nats.delivered";
/// `messaging.nats.pending`: messages left for the consumer after this one.
pub const MESSAGING_NATS_PENDING: &str = "messaging.nats.pending";
/// `messaging.nats.queue_wait`: seconds from the stream storing the message to its
/// delivery (subject to clock skew between client and server).
pub const MESSAGING_NATS_QUEUE_WAIT: &str = "messaging.nats.queue_wait";
/// `messaging.nats.nak.delay`: redelivery delay requested by a `nak`, in seconds.
pub const MESSAGING_NATS_NAK_DELAY: &str = "messaging.nats.nak.delay";

/// `messaging.operation.name` values of settle spans.
pub mod settle {
    /// Acknowledge.
    pub const ACK: &str = "ack";
    /// Acknowledge and wait for the server's confirmation.
    pub const DOUBLE_ACK: &str = "double_ack";
    /// Negative acknowledgement: redeliver (maybe after a delay).
    pub const NAK: &str = "nak";
    /// Terminate: never redeliver.
    pub const TERM: &str = "term";
    /// Work in progress: extend the ack deadline.
    pub const PROGRESS: &str = "progress";
}

/// `messaging.nats.kv.bucket`: the KV bucket.
pub const MESSAGING_NATS_KV_BUCKET: &str = "messaging.nats.kv.bucket";
/// `messaging.nats.kv.key`: the key (opt-in; see `Store::with_key_attribute`).
pub const MESSAGING_NATS_KV_KEY: &str = "messaging.nats.kv.key";
/// `messaging.nats.kv.revision`: the entry's revision.
pub const MESSAGING_NATS_KV_REVISION: &str = "messaging.nats.kv.revision";
/// `messaging.nats.kv.operation`: `PUT`, `DEL` or `PURGE` of a watched change.
pub const MESSAGING_NATS_KV_OPERATION: &str = "messaging.nats.kv.operation";

/// Operation names of KV spans (`{operation} {bucket}`).
pub mod kv {
    /// Store a value.
    pub const PUT: &str = "put";
    /// Store a value for a new key.
    pub const CREATE: &str = "create";
    /// Compare-and-set.
    pub const UPDATE: &str = "update";
    /// Read a value.
    pub const GET: &str = "get";
    /// Read an entry.
    pub const ENTRY: &str = "entry";
    /// Delete a key.
    pub const DELETE: &str = "delete";
    /// Purge a key.
    pub const PURGE: &str = "purge";
    /// List keys.
    pub const KEYS: &str = "keys";
    /// List a key's history.
    pub const HISTORY: &str = "history";
    /// Start watching.
    pub const WATCH: &str = "watch";
}

/// `messaging.nats.service.name`: the Service API service.
pub const MESSAGING_NATS_SERVICE_NAME: &str = "messaging.nats.service.name";
/// `messaging.nats.service.version`: its version.
pub const MESSAGING_NATS_SERVICE_VERSION: &str = "messaging.nats.service.version";
/// `messaging.nats.service.endpoint`: the endpoint's name.
pub const MESSAGING_NATS_SERVICE_ENDPOINT: &str = "messaging.nats.service.endpoint";
/// `messaging.nats.service.group`: the endpoint's group prefix.
pub const MESSAGING_NATS_SERVICE_GROUP: &str = "messaging.nats.service.group";
/// `messaging.nats.service.error.code`: the code of an error response.
pub const MESSAGING_NATS_SERVICE_ERROR_CODE: &str = "messaging.nats.service.error.code";

/// `messaging.nats.object.bucket`: the object store bucket.
pub const MESSAGING_NATS_OBJECT_BUCKET: &str = "messaging.nats.object.bucket";
/// `messaging.nats.object.name`: the object name (opt-in).
pub const MESSAGING_NATS_OBJECT_NAME: &str = "messaging.nats.object.name";
/// `messaging.nats.object.size`: object size in bytes.
pub const MESSAGING_NATS_OBJECT_SIZE: &str = "messaging.nats.object.size";
/// `messaging.nats.object.chunks`: number of chunks.
pub const MESSAGING_NATS_OBJECT_CHUNKS: &str = "messaging.nats.object.chunks";
/// `messaging.nats.object.digest`: `SHA-256=<base64url>` of the content.
pub const MESSAGING_NATS_OBJECT_DIGEST: &str = "messaging.nats.object.digest";
/// `messaging.nats.object.digest_ok`: whether a read's content matched the digest.
pub const MESSAGING_NATS_OBJECT_DIGEST_OK: &str = "messaging.nats.object.digest_ok";

/// Operation names of object store spans (`{operation} {bucket}`).
pub mod object {
    /// Upload an object.
    pub const PUT: &str = "put";
    /// Download an object.
    pub const GET: &str = "get";
    /// Read an object's info.
    pub const INFO: &str = "info";
    /// Delete an object.
    pub const DELETE: &str = "delete";
    /// List objects.
    pub const LIST: &str = "list";
    /// Start watching.
    pub const WATCH: &str = "watch";
}

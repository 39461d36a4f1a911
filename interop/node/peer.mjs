// The Node.js interop peer: the official NATS client (`nats`) plus OpenTelemetry JS,
// driven by nats-otel's integration tests (tests/all/peers.rs) against a real
// nats-server. Same commands and output as interop/python/peer.py: each command
// makes the spans an instrumented Node service would make (W3C trace context in
// NATS headers through `W3CTraceContextPropagator`), prints "ready" once it listens,
// and writes its spans as JSON lines to --out.
//
//   node peer.mjs publish|consume|request|respond|js-publish \
//     --server URL --subject S [--count N] --out F [--header-name H | --header-value V]
//     [--transport ws]   (over WebSocket with nats.ws: a ws:// server URL; Node < 22
//                         needs --experimental-websocket)
//   node peer.mjs vectors --file interop/vectors.json --out F
//
// `vectors` runs the contract's test vectors through this peer's reader (the
// propagator with a plain-object getter, and a `Dlq-*` parser written to
// CONTRACT.md) and writes one JSON line per case: its name and what was extracted.

import { readFileSync, writeFileSync } from "node:fs";
import { gunzipSync } from "node:zlib";
import { parseArgs } from "node:util";

import {
  ROOT_CONTEXT,
  SpanKind,
  TraceFlags,
  isSpanContextValid,
  trace,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { decompress as zstdDecompress } from "fzstd";
import * as tcp from "nats";

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({
  spanProcessors: [new SimpleSpanProcessor(exporter)],
});
const tracer = provider.getTracer("nats-otel-interop-node");
const propagator = new W3CTraceContextPropagator();
const setter = { set: (carrier, key, value) => { carrier[key] = value; } };
const getter = {
  get: (carrier, key) => carrier[key],
  keys: (carrier) => Object.keys(carrier),
};
/** The client library: `nats` over TCP, or `nats.ws` over WebSocket. */
let nats = tcp;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function attributes(operation, type, subject) {
  return {
    "messaging.system": "nats",
    "messaging.operation.name": operation,
    "messaging.operation.type": type,
    "messaging.destination.name": subject,
  };
}

/** NATS headers carrying `span`'s context (or the test's override). */
function inject(span, args) {
  const carrier = {};
  propagator.inject(trace.setSpan(ROOT_CONTEXT, span), carrier, setter);
  if (args["header-value"] !== undefined) carrier.traceparent = args["header-value"];
  if (args["header-name"] !== undefined && carrier.traceparent !== undefined) {
    carrier[args["header-name"]] = carrier.traceparent;
    delete carrier.traceparent;
  }
  const h = nats.headers();
  for (const [key, value] of Object.entries(carrier)) h.set(key, value);
  return h;
}

/** The producer's context from a message's headers. */
function extract(msg) {
  const carrier = {};
  if (msg.headers) {
    for (const key of msg.headers.keys()) carrier[key] = msg.headers.get(key);
  }
  return propagator.extract(ROOT_CONTEXT, carrier, getter);
}

/** The message's payload, decoded by its Content-Encoding (zstd: pure-JS fzstd, as
 * Node 20 has no zstd; gzip: node:zlib). */
function payload(msg) {
  const encoding = msg.headers?.get("Content-Encoding");
  if (encoding === "zstd") return zstdDecompress(msg.data);
  if (encoding === "gzip") return gunzipSync(msg.data);
  return msg.data;
}

const ready = () => process.stdout.write("ready\n");

async function publish(nc, args) {
  ready();
  for (let i = 0; i < args.count; i++) {
    const span = tracer.startSpan(`publish ${args.subject}`, {
      kind: SpanKind.PRODUCER,
      attributes: attributes("publish", "send", args.subject),
    });
    nc.publish(args.subject, encoder.encode(`${i}`), { headers: inject(span, args) });
    span.end();
  }
  await nc.flush();
}

async function consume(nc, args, respond) {
  const sub = nc.subscribe(args.subject, { max: args.count });
  await nc.flush();
  ready();
  for await (const msg of sub) {
    const span = tracer.startSpan(
      `process ${args.subject}`,
      { kind: SpanKind.CONSUMER, attributes: attributes("process", "process", args.subject) },
      extract(msg),
    );
    span.setAttribute("nats_otel.interop.payload", decoder.decode(payload(msg)));
    const encoding = msg.headers?.get("Content-Encoding");
    if (encoding) span.setAttribute("nats_otel.interop.content_encoding", encoding);
    const traceparent = msg.headers?.get("traceparent");
    if (traceparent) span.setAttribute("nats_otel.interop.traceparent", traceparent);
    if (respond) msg.respond(encoder.encode("pong from node"));
    span.end();
  }
}

async function request(nc, args) {
  ready();
  const span = tracer.startSpan(`request ${args.subject}`, {
    kind: SpanKind.CLIENT,
    attributes: attributes("request", "send", args.subject),
  });
  const reply = await nc.request(args.subject, encoder.encode("ping"), {
    timeout: 10000,
    headers: inject(span, args),
  });
  span.setAttribute("nats_otel.interop.reply", decoder.decode(reply.data));
  span.end();
}

async function jsPublish(nc, args) {
  const js = nc.jetstream();
  ready();
  for (let i = 0; i < args.count; i++) {
    const span = tracer.startSpan(`publish ${args.subject}`, {
      kind: SpanKind.PRODUCER,
      attributes: attributes("publish", "send", args.subject),
    });
    const ack = await js.publish(args.subject, encoder.encode(`${i}`), {
      headers: inject(span, args),
    });
    span.setAttribute("messaging.nats.stream.sequence", ack.seq);
    span.end();
  }
}

function dump(path) {
  const kinds = ["INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"];
  const lines = exporter.getFinishedSpans().map((span) => {
    const ctx = span.spanContext();
    const parent = span.parentSpanContext?.spanId ?? span.parentSpanId ?? null;
    return JSON.stringify({
      trace_id: ctx.traceId,
      span_id: ctx.spanId,
      parent_span_id: parent,
      name: span.name,
      kind: kinds[span.kind],
      attributes: span.attributes,
    });
  });
  writeFileSync(path, lines.map((line) => `${line}\n`).join(""));
}

const DLQ_FIELDS = {
  reason: "Dlq-Reason",
  source_stream: "Dlq-Source-Stream",
  source_sequence: "Dlq-Source-Sequence",
  source_subject: "Dlq-Source-Subject",
  consumer: "Dlq-Consumer",
  delivery_count: "Dlq-Delivery-Count",
  original_traceparent: "Dlq-Original-Traceparent",
};

/** A dead letter's provenance as CONTRACT.md describes it (exact header names). */
function readDeadLetter(headers) {
  if (headers["Dlq-Reason"] === undefined) return null;
  const info = {};
  for (const [field, name] of Object.entries(DLQ_FIELDS)) {
    let value = headers[name]?.trim() ?? null;
    if (field === "source_sequence" || field === "delivery_count") {
      value = value !== null && /^[0-9]+$/.test(value) ? Number(value) : null;
    }
    info[field] = value;
  }
  return info;
}

function readTraceparent(headers) {
  const span = trace.getSpanContext(propagator.extract(ROOT_CONTEXT, headers, getter));
  if (!span || !isSpanContextValid(span)) return null;
  return {
    trace_id: span.traceId,
    span_id: span.spanId,
    sampled: (span.traceFlags & TraceFlags.SAMPLED) === TraceFlags.SAMPLED,
    trace_state: span.traceState?.serialize() ?? "",
  };
}

function vectors(args) {
  const cases = JSON.parse(readFileSync(args.file, "utf8"));
  const lines = [];
  for (const [group, read] of [["traceparent", readTraceparent], ["dead_letter", readDeadLetter]]) {
    for (const c of cases[group]) {
      lines.push(JSON.stringify({ group, name: c.name, got: read({ ...c.headers }) }));
    }
  }
  writeFileSync(args.out, lines.map((line) => `${line}\n`).join(""));
}

const commands = {
  publish,
  consume: (nc, args) => consume(nc, args, false),
  respond: (nc, args) => consume(nc, args, true),
  request,
  "js-publish": jsPublish,
};

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      server: { type: "string" },
      subject: { type: "string" },
      count: { type: "string", default: "1" },
      out: { type: "string" },
      "header-name": { type: "string" },
      "header-value": { type: "string" },
      file: { type: "string" },
      transport: { type: "string", default: "tcp" },
    },
  });
  if (positionals[0] === "vectors") {
    if (!values.file || !values.out) throw new Error("usage: peer.mjs vectors --file F --out F");
    vectors(values);
    return;
  }
  const command = commands[positionals[0]];
  if (!command || !values.server || !values.subject || !values.out) {
    throw new Error(`usage: peer.mjs ${Object.keys(commands).join("|")} --server URL --subject S --out F`);
  }
  const args = { ...values, count: Number(values.count) };
  if (values.transport === "ws") {
    if (typeof globalThis.WebSocket !== "function") {
      throw new Error("no WebSocket in this Node: run Node 22+, or node --experimental-websocket");
    }
    nats = await import("nats.ws");
  } else if (values.transport !== "tcp") {
    throw new Error(`unknown transport ${values.transport} (tcp or ws)`);
  }
  const nc = await nats.connect({ servers: values.server });
  try {
    await command(nc, args);
  } finally {
    await nc.drain();
    dump(values.out);
  }
}

main().catch((error) => {
  process.stderr.write(`peer failed: ${error?.stack ?? error}\n`);
  process.exit(1);
});

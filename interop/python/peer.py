"""The Python interop peer: nats-py plus the official OpenTelemetry SDK, driven by
nats-otel's integration tests (tests/all/peers.rs) against a real nats-server.

Every command makes the spans an instrumented Python service would make (W3C trace
context in NATS headers, through the SDK's TraceContext propagator over a dict),
prints "ready" on stdout once it listens, and writes the spans it made as JSON lines
(trace id, span id, parent, name, kind, attributes) to --out.

    peer.py publish    --server URL --subject S --count N --out F [--header-name H | --header-value V]
    peer.py consume    --server URL --subject S --count N --out F
    peer.py request    --server URL --subject S --out F
    peer.py respond    --server URL --subject S --count N --out F
    peer.py js-publish --server URL --subject S --count N --out F
    peer.py vectors    --file interop/vectors.json --out F

`vectors` runs the contract's test vectors through this peer's reader (the SDK's
propagator with its default getter, and a `Dlq-*` parser written to CONTRACT.md) and
writes one JSON line per case: its name and what was extracted (or null).
"""

import argparse
import asyncio
import gzip
import json
import sys

import zstandard

import nats
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
TRACER = PROVIDER.get_tracer("nats-otel-interop-python")
PROPAGATOR = TraceContextTextMapPropagator()


def attributes(operation, kind, subject):
    return {
        "messaging.system": "nats",
        "messaging.operation.name": operation,
        "messaging.operation.type": kind,
        "messaging.destination.name": subject,
    }


def inject(args):
    """Trace context of the current span as NATS headers (or the test's override)."""
    carrier = {}
    PROPAGATOR.inject(carrier)
    if args.header_value is not None:
        carrier["traceparent"] = args.header_value
    if args.header_name is not None and "traceparent" in carrier:
        carrier[args.header_name] = carrier.pop("traceparent")
    return carrier


def extract(msg):
    return PROPAGATOR.extract(dict(msg.headers or {}))


def payload(msg):
    """The message's payload, decoded by its Content-Encoding (zstd or gzip)."""
    encoding = (msg.headers or {}).get("Content-Encoding")
    if encoding == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(msg.data)
    if encoding == "gzip":
        return gzip.decompress(msg.data)
    return msg.data


def ready():
    print("ready", flush=True)


async def publish(nc, args):
    ready()
    for i in range(args.count):
        with TRACER.start_as_current_span(
            f"publish {args.subject}",
            kind=SpanKind.PRODUCER,
            attributes=attributes("publish", "send", args.subject),
        ):
            await nc.publish(args.subject, f"{i}".encode(), headers=inject(args))
    await nc.flush()


async def consume(nc, args, reply=None):
    """Processes `--count` messages; answers each with `reply` when given."""
    done = asyncio.Event()
    seen = 0

    async def handle(msg):
        nonlocal seen
        with TRACER.start_as_current_span(
            f"process {args.subject}",
            context=extract(msg),
            kind=SpanKind.CONSUMER,
            attributes=attributes("process", "process", args.subject),
        ) as span:
            span.set_attribute("nats_otel.interop.payload", payload(msg).decode(errors="replace"))
            headers = msg.headers or {}
            if "Content-Encoding" in headers:
                span.set_attribute("nats_otel.interop.content_encoding", headers["Content-Encoding"])
            traceparent = headers.get("traceparent")
            if traceparent is not None:
                span.set_attribute("nats_otel.interop.traceparent", traceparent)
            # A dead letter's provenance, parsed as any consumer of the DLQ would.
            for name, value in headers.items():
                if name.startswith("Dlq-"):
                    span.set_attribute(f"nats_otel.interop.header.{name}", value)
            if reply is not None:
                await msg.respond(reply)
        seen += 1
        if seen >= args.count:
            done.set()

    await nc.subscribe(args.subject, cb=handle)
    await nc.flush()
    ready()
    await asyncio.wait_for(done.wait(), timeout=30)


async def request(nc, args):
    ready()
    with TRACER.start_as_current_span(
        f"request {args.subject}",
        kind=SpanKind.CLIENT,
        attributes=attributes("request", "send", args.subject),
    ) as span:
        reply = await nc.request(args.subject, b"ping", timeout=10, headers=inject(args))
        span.set_attribute("nats_otel.interop.reply", reply.data.decode(errors="replace"))


async def respond(nc, args):
    await consume(nc, args, reply=b"pong from python")


async def js_publish(nc, args):
    js = nc.jetstream()
    ready()
    for i in range(args.count):
        with TRACER.start_as_current_span(
            f"publish {args.subject}",
            kind=SpanKind.PRODUCER,
            attributes=attributes("publish", "send", args.subject),
        ) as span:
            ack = await js.publish(args.subject, f"{i}".encode(), headers=inject(args))
            span.set_attribute("messaging.nats.stream.sequence", ack.seq)


def dump(path):
    with open(path, "w", encoding="utf-8") as out:
        for span in EXPORTER.get_finished_spans():
            ctx = span.get_span_context()
            parent = span.parent
            out.write(
                json.dumps(
                    {
                        "trace_id": f"{ctx.trace_id:032x}",
                        "span_id": f"{ctx.span_id:016x}",
                        "parent_span_id": f"{parent.span_id:016x}" if parent else None,
                        "name": span.name,
                        "kind": span.kind.name,
                        "attributes": {k: v for k, v in (span.attributes or {}).items()},
                    }
                )
                + "\n"
            )


DLQ_FIELDS = {
    "reason": "Dlq-Reason",
    "source_stream": "Dlq-Source-Stream",
    "source_sequence": "Dlq-Source-Sequence",
    "source_subject": "Dlq-Source-Subject",
    "consumer": "Dlq-Consumer",
    "delivery_count": "Dlq-Delivery-Count",
    "original_traceparent": "Dlq-Original-Traceparent",
}
DLQ_NUMBERS = {"source_sequence", "delivery_count"}


def read_dead_letter(headers):
    """A dead letter's provenance as CONTRACT.md describes it (exact header names)."""
    if "Dlq-Reason" not in headers:
        return None
    info = {}
    for field, name in DLQ_FIELDS.items():
        value = headers.get(name)
        if value is not None:
            value = value.strip()
        if field in DLQ_NUMBERS:
            value = int(value) if value is not None and value.isdigit() else None
        info[field] = value
    return info


def read_traceparent(headers):
    span = trace.get_current_span(PROPAGATOR.extract(headers)).get_span_context()
    if not span.is_valid:
        return None
    return {
        "trace_id": f"{span.trace_id:032x}",
        "span_id": f"{span.span_id:016x}",
        "sampled": bool(span.trace_flags & 0x01),
        "trace_state": span.trace_state.to_header(),
    }


def vectors(args):
    with open(args.file, encoding="utf-8") as f:
        cases = json.load(f)
    with open(args.out, "w", encoding="utf-8") as out:
        for group, read in (("traceparent", read_traceparent), ("dead_letter", read_dead_letter)):
            for case in cases[group]:
                got = read(dict(case["headers"]))
                out.write(json.dumps({"group": group, "name": case["name"], "got": got}) + "\n")


COMMANDS = {
    "publish": publish,
    "consume": consume,
    "request": request,
    "respond": respond,
    "js-publish": js_publish,
    "vectors": None,
}


async def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--server")
    parser.add_argument("--subject")
    parser.add_argument("--file", help="the test vectors (command vectors)")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--header-name", help="write traceparent under this header name")
    parser.add_argument("--header-value", help="send this traceparent value instead")
    args = parser.parse_args()
    if args.command == "vectors":
        vectors(args)
        return
    if args.server is None or args.subject is None:
        parser.error("--server and --subject are required")
    nc = await nats.connect(args.server)
    try:
        await COMMANDS[args.command](nc, args)
    finally:
        await nc.drain()
        dump(args.out)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as error:  # the Rust test shows stderr
        print(f"peer failed: {error!r}", file=sys.stderr)
        sys.exit(1)

// The web view's order form: a request `orders.place` over NATS WebSocket with the
// official NATS JavaScript client, inside a browser span made with OpenTelemetry
// JS whose `traceparent` travels in the message headers. The span is exported
// over OTLP/HTTP (protobuf) to this page's own server, which hands it to the
// demo's embedded receiver. Bundled into ../order.js by scripts/build-web.sh.

import { headers, wsconnect } from "@nats-io/nats-core";
import { context, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { BasicTracerProvider, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";

/** The browser's `service.name`. */
export const SERVICE = "web-shop";
/** The subject the order-service answers. */
export const SUBJECT = "orders.place";

const provider = new BasicTracerProvider({
  resource: resourceFromAttributes({ "service.name": SERVICE }),
  spanProcessors: [
    new SimpleSpanProcessor(
      new OTLPTraceExporter({ url: new URL("/v1/traces", window.location.href).href })
    ),
  ],
});
const tracer = provider.getTracer("nats-otel-demo-web");
const propagator = new W3CTraceContextPropagator();

/**
 * The order in the form's fields, or why it is refused: the same rules as the
 * order-service's (`user_id` 1-1000, `amount` 0.01-100000).
 */
export function parseOrder(userText, amountText) {
  const user = String(userText).trim();
  const amount = String(amountText).trim();
  if (user === "") return { error: "Enter a customer id (1-1000)." };
  if (!/^[0-9]{1,4}$/.test(user) || Number(user) < 1 || Number(user) > 1000) {
    return { error: `Customer id "${user}" is not a whole number between 1 and 1000.` };
  }
  if (amount === "") return { error: "Enter an amount (0.01-100000)." };
  if (!/^[0-9]{1,6}(\.[0-9]{1,2})?$/.test(amount)) {
    return { error: `Amount "${amount}" is not a number with at most two decimals.` };
  }
  const value = Number(amount);
  if (!(value >= 0.01 && value <= 100000)) {
    return { error: `Amount ${amount} is not between 0.01 and 100000.` };
  }
  return { order: { user_id: Number(user), amount: value } };
}

/** The NATS WebSocket address: this page's own host, path `/nats`. */
export function natsAddress(location) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/nats`;
}

let connection = null;

async function connection_() {
  if (connection === null || connection.isClosed()) {
    connection = await wsconnect({
      servers: natsAddress(window.location),
      name: SERVICE,
      maxReconnectAttempts: -1,
    });
  }
  return connection;
}

/**
 * Places `order`: resolves to `{ orderId, traceId }`, or rejects with an Error
 * naming what went wrong (the service's refusal, a timeout, no connection).
 */
export async function placeOrder(order) {
  // Connected first: the span is the request, not the WebSocket's set-up.
  let nc;
  try {
    nc = await connection_();
  } catch (error) {
    throw new Error(`cannot reach NATS at ${natsAddress(window.location)}: ${error.message}`);
  }
  const span = tracer.startSpan(`request ${SUBJECT}`, {
    kind: SpanKind.PRODUCER,
    attributes: {
      "messaging.system": "nats",
      "messaging.operation.name": "request",
      "messaging.operation.type": "send",
      "messaging.destination.name": SUBJECT,
      "server.address": window.location.hostname,
    },
  });
  const traceId = span.spanContext().traceId;
  try {
    const h = headers();
    propagator.inject(trace.setSpan(context.active(), span), h, {
      set: (carrier, key, value) => carrier.set(key, value),
    });
    const body = JSON.stringify(order);
    span.setAttribute("messaging.message.body.size", body.length);
    const reply = await nc.request(SUBJECT, body, { timeout: 5000, headers: h });
    const code = reply.headers?.get("Nats-Service-Error-Code");
    if (code) {
      const why = reply.headers.get("Nats-Service-Error") || `error ${code}`;
      throw Object.assign(new Error(`order refused (${code}): ${why}`), { type: code });
    }
    const answer = reply.json();
    return { orderId: answer.order_id, traceId };
  } catch (error) {
    const type = error.type ?? error.code ?? error.name ?? "Error";
    span.setAttribute("error.type", String(type));
    span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
    throw Object.assign(error, { traceId });
  } finally {
    span.end();
  }
}

/** Wires the form `#order-form` to `placeOrder`; results go to `#order-result`. */
function wire() {
  const form = document.getElementById("order-form");
  const result = document.getElementById("order-result");
  if (!form || !result) return;
  const show = (message, failed) => {
    result.textContent = message;
    result.className = failed ? "error" : "ok";
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const parsed = parseOrder(form.elements.user_id.value, form.elements.amount.value);
    if (parsed.error) {
      show(parsed.error, true);
      return;
    }
    const button = form.querySelector("button");
    button.disabled = true;
    show("placing…", false);
    try {
      const placed = await placeOrder(parsed.order);
      show(`order ${placed.orderId} placed · trace ${placed.traceId}`, false);
      result.dataset.trace = placed.traceId;
      window.dispatchEvent(new CustomEvent("order-placed", { detail: placed }));
    } catch (error) {
      show(`${error.message}${error.traceId ? ` · trace ${error.traceId}` : ""}`, true);
      result.dataset.trace = error.traceId ?? "";
    } finally {
      button.disabled = false;
    }
  });
}

wire();

// The demo's web view: live trace list, waterfall, service map, latency
// histograms and dead letters, all read from this page's own server.
"use strict";

const $ = (id) => document.getElementById(id);
let selected = null;
let shownSpans = 0;

function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "-";
  return ms < 10 ? ms.toFixed(2) : ms.toFixed(1);
}

function renderTraces(traces) {
  const list = $("traces");
  list.replaceChildren();
  for (const t of traces) {
    const item = document.createElement("li");
    item.dataset.trace = t.trace_id;
    if (t.trace_id === selected) item.classList.add("selected");
    const title = text("div", t.root + (t.error ? " ✗" : ""), t.error ? "error" : "");
    const meta = text(
      "div",
      `${t.services.length} services · ${t.spans} spans · ${fmtMs(t.duration_ms)} ms · ${t.services.join(", ")}`,
      "meta"
    );
    item.append(title, meta);
    item.addEventListener("click", () => openTrace(t.trace_id));
    list.append(item);
  }
}

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

async function openTrace(id) {
  const fresh = selected !== id;
  selected = id;
  document.querySelectorAll("#traces li").forEach((li) =>
    li.classList.toggle("selected", li.dataset.trace === id)
  );
  let trace;
  try {
    trace = await getJson(`/api/traces/${id}`);
  } catch (error) {
    $("trace-title").textContent = `Trace ${id}: ${error.message}`;
    return;
  }
  if (selected !== id) return;
  shownSpans = trace.rows.length;
  $("trace-title").textContent = `Trace ${trace.trace_id} (${fmtMs(trace.duration_ms)} ms)`;
  const box = $("waterfall");
  box.replaceChildren();
  const total = Math.max(trace.duration_ms, 0.001);
  for (const row of trace.rows) {
    const line = document.createElement("div");
    line.className = "row" + (row.error ? " failed" : "");
    line.dataset.span = row.span_id;
    const name = text("div", "\u00a0\u00a0".repeat(row.depth) + row.name + (row.error ? " ✗" : ""));
    if (row.links.length) {
      name.append(text("span", ` ⇢ ${row.links.length} link${row.links.length > 1 ? "s" : ""}`, "links"));
    }
    const track = document.createElement("div");
    track.className = "bar-track";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.left = `${(row.offset_ms / total) * 100}%`;
    bar.style.width = `${Math.max((row.duration_ms / total) * 100, 0.3)}%`;
    track.append(bar);
    line.append(text("div", row.service), name, track, text("div", `${fmtMs(row.duration_ms)} ms`, "dur"));
    line.addEventListener("click", () => {
      const links = row.links.map((l) => `  ${l.trace_id}/${l.span_id}${l.in_trace ? " (this trace)" : ""}`);
      const attributes = Object.entries(row.attributes).map(([k, v]) => `  ${k} = ${v}`);
      $("attributes").textContent =
        `${row.name} (${row.service})\nspan ${row.span_id}, parent ${row.parent_span_id || "-"}\n` +
        `attributes:\n${attributes.join("\n")}\n` +
        (links.length ? `links:\n${links.join("\n")}\n` : "");
    });
    box.append(line);
  }
  if (fresh) $("attributes").textContent = "Click a span for its attributes.";
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, content) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (content !== undefined) el.textContent = content;
  return el;
}

// Services in columns by how far down the message flow they sit (sources on
// the left), each edge labelled with its flow, count and latency.
function renderMap(map) {
  const root = $("map");
  root.replaceChildren();
  const depth = Object.fromEntries(map.nodes.map((n) => [n, 0]));
  for (let round = 0; round < map.nodes.length; round++) {
    for (const edge of map.edges) {
      if (edge.from !== edge.to && depth[edge.to] < depth[edge.from] + 1) {
        depth[edge.to] = depth[edge.from] + 1;
      }
    }
  }
  const columns = [];
  for (const node of map.nodes) (columns[depth[node]] ||= []).push(node);
  // Fewer crossings: order each column by the mean position of its neighbours
  // in the column before (then after), a few sweeps.
  const position = {};
  const place = () => columns.forEach((nodes) => nodes.forEach((n, i) => { position[n] = i / nodes.length; }));
  const mean = (node, neighbours) => {
    const at = neighbours(node).map((n) => position[n]).filter((p) => p !== undefined);
    return at.length ? at.reduce((a, b) => a + b, 0) / at.length : position[node];
  };
  const from = (node) => map.edges.filter((e) => e.to === node).map((e) => e.from);
  const to = (node) => map.edges.filter((e) => e.from === node).map((e) => e.to);
  columns.forEach((nodes) => nodes?.sort());
  place();
  for (let sweep = 0; sweep < 4; sweep++) {
    const neighbours = sweep % 2 === 0 ? from : to;
    const order = sweep % 2 === 0 ? columns : [...columns].reverse();
    for (const nodes of order) {
      if (!nodes) continue;
      nodes.sort((a, b) => mean(a, neighbours) - mean(b, neighbours));
      place();
    }
  }
  const width = 900, height = 420;
  const at = {};
  columns.forEach((nodes, column) => {
    (nodes || []).forEach((node, row) => {
      at[node] = [
        90 + (column * (width - 180)) / Math.max(columns.length - 1, 1),
        40 + ((row + 0.5) * (height - 60)) / nodes.length,
      ];
    });
  });
  const labels = [];
  map.edges.forEach((edge, i) => {
    const [x1, y1] = at[edge.from];
    const [x2, y2] = at[edge.to];
    const color = edge.dead_letter ? "#c62828" : "#4a78c2";
    root.append(svg("line", {
      x1, y1, x2, y2, stroke: color, "stroke-width": 1.5,
      "stroke-dasharray": edge.dead_letter ? "5,4" : "", "data-flow": edge.flow,
    }));
    const lines = [`${edge.flow} ×${edge.messages}`];
    if (edge.p50_ms !== null) lines.push(`p50 ${fmtMs(edge.p50_ms)} · p99 ${fmtMs(edge.p99_ms)} ms`);
    // Labels on the edge's middle, moved down while they would overlap another.
    let [x, y] = [(x1 + x2) / 2, (y1 + y2) / 2 - 4];
    while (labels.some(([lx, ly]) => Math.abs(lx - x) < 120 && Math.abs(ly - y) < 22)) y += 12;
    labels.push([x, y]);
    lines.forEach((line, n) => {
      root.append(svg("text", {
        x, y: y + n * 11, "font-size": 10, fill: color, "text-anchor": "middle",
        class: "edge-label",
      }, line));
    });
  });
  for (const node of map.nodes) {
    const [x, y] = at[node];
    root.append(svg("circle", { cx: x, cy: y, r: 7, fill: node === "dead letters" ? "#c62828" : "#22304a" }));
    root.append(svg("text", { x, y: y - 12, "font-size": 12, "text-anchor": "middle", class: "node-label" }, node));
  }
}

function renderHistograms(h) {
  const box = $("histograms");
  box.replaceChildren();
  const labels = h.bucket_bounds_ms.map((b) => `≤${b}`).concat(["more"]);
  for (const [name, d] of [["queue wait", h.queue_wait], ["processing", h.processing], ["end-to-end", h.end_to_end]]) {
    const panel = document.createElement("div");
    panel.className = "hist";
    panel.append(text("h3", `${name}: ${d.count} · p50 ${fmtMs(d.p50_ms)} · p99 ${fmtMs(d.p99_ms)}`));
    const chart = svg("svg", { width: 340, height: 110, role: "img", "aria-label": name });
    const max = Math.max(...d.buckets, 1);
    d.buckets.forEach((count, i) => {
      const height = (count / max) * 80;
      chart.append(svg("rect", { x: i * 26 + 2, y: 85 - height, width: 21, height, fill: "#4a78c2" }));
      chart.append(svg("text", { x: i * 26 + 12, y: 100, "font-size": 8, "text-anchor": "middle" }, labels[i]));
    });
    panel.append(chart);
    box.append(panel);
  }
}

function renderDeadLetters(rows) {
  const body = document.querySelector("#dead-letters tbody");
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    const trace = document.createElement("td");
    if (row.trace_id) {
      const link = text("a", row.trace_id.slice(0, 12) + "…");
      link.href = "#";
      link.addEventListener("click", (e) => { e.preventDefault(); openTrace(row.trace_id); });
      trace.append(link);
    }
    tr.append(text("td", row.source_subject || row.subject), text("td", row.reason), trace);
    body.append(tr);
  }
}

async function refreshPanels() {
  try {
    const [map, histograms, dead] = await Promise.all([
      getJson("/api/map"), getJson("/api/histograms"), getJson("/api/dead-letters"),
    ]);
    renderMap(map);
    renderHistograms(histograms);
    renderDeadLetters(dead);
  } catch (error) {
    $("status").textContent = `refresh failed: ${error.message}`;
  }
}

// The trace of the order placed last from the form: opened once it is listed
// with the order-service's spans in it (it completes a moment after the reply).
let awaited = null;
window.addEventListener("order-placed", (event) => { awaited = event.detail.traceId; });

async function configureOrderForm() {
  try {
    const config = await getJson("/api/config");
    if (!config.orders) {
      const form = $("order-form");
      for (const field of form.elements) field.disabled = true;
      $("order-result").textContent = `The order form is off: ${config.why}`;
    }
  } catch (error) {
    $("order-result").textContent = `The order form is off: ${error.message}`;
  }
}
configureOrderForm();

const events = new EventSource("/events");
events.addEventListener("update", (event) => {
  const update = JSON.parse(event.data);
  $("status").textContent = `${update.spans} spans received`;
  renderTraces(update.traces);
  refreshPanels();
  // Open the placed order's trace once listed; keep the open trace current
  // while its spans arrive.
  if (awaited && update.traces.some((t) => t.trace_id === awaited)) {
    openTrace(awaited);
    awaited = null;
  } else if (selected) {
    const listed = update.traces.find((t) => t.trace_id === selected);
    if (listed && listed.spans !== shownSpans) openTrace(selected);
  }
});
events.addEventListener("error", () => { $("status").textContent = "disconnected (retrying)…"; });

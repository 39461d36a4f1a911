// The demo's web view: live trace list, waterfall, service map, latency
// histograms and dead letters, all read from this page's own server.
"use strict";

const $ = (id) => document.getElementById(id);
let selected = null;

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
  $("attributes").textContent = "Click a span for its attributes.";
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, content) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (content !== undefined) el.textContent = content;
  return el;
}

function renderMap(map) {
  const root = $("map");
  root.replaceChildren();
  const cx = 450, cy = 210, r = 160;
  const at = {};
  map.nodes.forEach((node, i) => {
    const angle = (2 * Math.PI * i) / Math.max(map.nodes.length, 1) - Math.PI / 2;
    at[node] = [cx + r * 1.6 * Math.cos(angle), cy + r * Math.sin(angle)];
  });
  map.edges.forEach((edge, i) => {
    const [x1, y1] = at[edge.from];
    const [x2, y2] = at[edge.to];
    const color = edge.dead_letter ? "#c62828" : "#4a78c2";
    root.append(svg("line", {
      x1, y1, x2, y2, stroke: color, "stroke-width": 1.5,
      "stroke-dasharray": edge.dead_letter ? "5,4" : "", "data-flow": edge.flow,
    }));
    const label = edge.p50_ms === null
      ? `${edge.flow} ×${edge.messages}`
      : `${edge.flow} ×${edge.messages} p50 ${fmtMs(edge.p50_ms)} p99 ${fmtMs(edge.p99_ms)} ms`;
    const offset = (i % 3) * 12 - 12;
    root.append(svg("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 + offset, "font-size": 10, fill: color, "text-anchor": "middle" }, label));
  });
  for (const node of map.nodes) {
    const [x, y] = at[node];
    root.append(svg("circle", { cx: x, cy: y, r: 7, fill: node === "dead letters" ? "#c62828" : "#22304a" }));
    root.append(svg("text", { x, y: y - 12, "font-size": 12, "text-anchor": "middle" }, node));
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
    const chart = svg("svg", { width: 260, height: 110, role: "img", "aria-label": name });
    const max = Math.max(...d.buckets, 1);
    d.buckets.forEach((count, i) => {
      const height = (count / max) * 80;
      chart.append(svg("rect", { x: i * 20 + 2, y: 85 - height, width: 16, height, fill: "#4a78c2" }));
      chart.append(svg("text", { x: i * 20 + 10, y: 100, "font-size": 7, "text-anchor": "middle" }, labels[i]));
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

const events = new EventSource("/events");
events.addEventListener("update", (event) => {
  const update = JSON.parse(event.data);
  $("status").textContent = `${update.spans} spans received`;
  renderTraces(update.traces);
  refreshPanels();
});
events.addEventListener("error", () => { $("status").textContent = "disconnected (retrying)…"; });

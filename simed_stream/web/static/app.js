// simED-stream live page: follows /api/events (server-sent events) and draws what the pipeline
// published. Read-only; text from the pipeline is always set as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const KEEP = { rate: 3600, resolution: 20000, messages: 200 };
const COLOURS = ["#5aa9f0", "#f2b233", "#3fb66b", "#c678dd", "#e0524d", "#56b6c2", "#d19a66", "#98c379"];
const page = {
  status: null, series: [], selected: null, shown: null, detailVersion: null, fetching: false,
  rate: [], resolution: [], messages: [], figures: new Map(),
};

const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const fixed = (x, digits) => (x === null || x === undefined || !isFinite(x) ? "–" : Number(x).toFixed(digits));

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function setText(id, value) { const node = $(id); if (node.textContent !== value) node.textContent = value; }

// ------------------------------------------------------------------ the feed
function connect() {
  const source = new EventSource("/api/events");
  source.addEventListener("hello", () => { reset(); setText("feed", "feed: live"); });
  source.addEventListener("status", (e) => showStatus(JSON.parse(e.data)));
  source.addEventListener("series", (e) => showSeries(JSON.parse(e.data).series));
  source.addEventListener("particles", (e) => showParticles(JSON.parse(e.data).particles));
  for (const name of Object.keys(KEEP)) {
    source.addEventListener(name, (e) => addRecords(name, JSON.parse(e.data).items));
  }
  source.onerror = () => setText("feed", source.readyState === EventSource.CLOSED ? "feed: closed"
                                                                                  : "feed: reconnecting…");
}

function reset() {
  page.rate = []; page.resolution = []; page.messages = []; page.detailVersion = null;
}

function addRecords(name, items) {
  const kept = page[name].concat(items);
  page[name] = kept.slice(Math.max(0, kept.length - KEEP[name]));
  if (name === "rate") drawRate();
  else if (name === "resolution") drawResolution();
  else showMessages();
}

// ------------------------------------------------------------------ ingest and totals
function showStatus(status) {
  page.status = status;
  const ingest = status.ingest, pipeline = status.pipeline;
  const badge = $("state");
  badge.textContent = status.state || "running";
  badge.className = "badge " + (status.state || "running");
  setText("uptime", `up ${fixed(status.uptime_s, 0)} s`);
  document.title = `${status.state === "stopped" ? "stopped" : fmt(Math.round(ingest.frames_per_s)) + " frames/s"}`
                   + ` · ${fmt(pipeline.particles_phased)} phased · simED-stream`;
  setText("fps", fmt(Math.round(ingest.frames_per_s)));
  setText("frames-received", fmt(ingest.frames_received));
  setText("frames-rejected", fmt(ingest.frames_rejected));
  setText("frames-dropped", fmt(ingest.frames_dropped_at_source));
  setText("frames-missing", fmt(ingest.frames_missing));
  setText("queue", `${fmt(ingest.queue_depth)} / ${fmt(ingest.queue_capacity)}`);
  setText("lag", `${fixed(ingest.lag_s, 2)} s`);
  for (const key of ["particles_found", "particles_phased", "particles_flagged", "series_open", "series_done",
                     "phasing_queue"]) {
    setText(key.replace("_", "-"), fmt(pipeline[key]));
  }
  showProgress();
}

// ------------------------------------------------------------------ series: table, progress, coverage, overview
function showSeries(series) {
  page.series = series;
  const body = $("series-table").tBodies[0];
  body.replaceChildren(...series.slice().reverse().map(seriesRow));
  const current = currentSeries();
  $("follow").hidden = page.selected === null;
  if (stale(current)) loadDetail(current.key);
  showProgress();
}

function currentSeries() {
  const chosen = page.series.find((s) => s.key === page.selected);
  return chosen || page.series[page.series.length - 1] || null;
}

function seriesRow(s) {
  const a = s.accounting || {};
  const state = s.status || s.state;
  const files = el("td", { class: "files" });
  for (const f of s.files) {
    if (/^particles_\d+\.mrcs$/.test(f.name)) continue;
    files.append(el("a", { href: f.url, text: f.name.replace("particles.", "") }));
  }
  const stacks = s.files.filter((f) => f.name.endsWith(".mrcs"));
  if (stacks.length) files.append(el("a", { href: stacks[stacks.length - 1].url, title: stacks.map((f) => f.name).join(" "),
                                             text: `stack (${stacks.length} .mrcs)` }));
  const row = el("tr", { "data-key": String(s.key), class: s.key === currentSeries()?.key ? "selected" : "" },
    el("td", { text: s.series_id + (s.folder && s.folder !== s.series_id ? ` (${s.folder})` : "") }),
    el("td", { text: state }),
    el("td", { text: `${fmt(s.positions.valid)} / ${fmt(s.positions.total)}` }),
    el("td", { text: `${fmt(a.received)} / ${fmt(s.frames_expected)}` }),
    el("td", { class: "n-picks", text: fmt(s.picks) }), el("td", { class: "n-phased", text: fmt(s.phased) }),
    el("td", { class: "n-flagged", text: fmt(s.flagged) }),
    el("td", { text: fixed(s.resolution_A?.median, 2) }), el("td", { text: fixed(s.resolution_A?.best, 2) }), files);
  row.addEventListener("click", (e) => { if (e.target.tagName !== "A") select(s.key); });
  return row;
}

// versions only grow: the detail shown is stale if the list knows a newer one (or another series)
function stale(current) {
  return current && (current.key !== page.shown || page.detailVersion === null
                     || current.version > page.detailVersion);
}

function select(key) {
  page.selected = key;
  page.detailVersion = null;
  showSeries(page.series);
}

function showProgress() {
  const s = currentSeries();
  if (!s) return;
  const open = page.status?.open_series?.[s.series_id];
  const received = (open || s.accounting || {}).received;
  const done = s.positions.valid + s.positions.incomplete;
  setText("current-name", s.series_id);
  setText("current-state", s.status || s.state);
  $("scan-bar").style.width = `${(100 * done / Math.max(1, s.positions.total)).toFixed(1)}%`;
  setText("scan-progress", `positions ${fmt(done)} / ${fmt(s.positions.total)} (${fmt(s.positions.valid)} valid, `
          + `${fmt(s.positions.incomplete)} incomplete) · frames ${fmt(received)} / ${fmt(s.frames_expected)}`);
}

async function loadDetail(key) {
  if (page.fetching) return;
  page.fetching = true;
  try {
    const answer = await fetch(`/api/series/${key}`, { cache: "no-store" });
    if (answer.ok) showDetail(await answer.json());
  } catch (error) {
    setText("feed", "feed: " + error);
  } finally {
    page.fetching = false;
  }
  const current = currentSeries();  // something newer came while fetching
  if (stale(current)) loadDetail(current.key);
}

function showDetail(detail) {
  page.shown = detail.key;
  page.detailVersion = detail.version;
  drawCoverage(detail.nav_shape, detail.coverage);
  showOverview(detail);
}

function drawCoverage([ny, nx], coverage) {
  const canvas = $("coverage");
  if (canvas.width !== nx || canvas.height !== ny) { canvas.width = nx; canvas.height = ny; }
  canvas.style.width = `${Math.min(canvas.parentElement.clientWidth - 28, 260 * nx / ny)}px`;
  const ctx = canvas.getContext("2d");
  const pixels = ctx.createImageData(nx, ny);
  const colours = { 0: [58, 66, 79], 1: [63, 182, 107], 2: [224, 82, 77] };
  for (let i = 0; i < coverage.length; i++) pixels.data.set([...colours[coverage[i]], 255], 4 * i);
  ctx.putImageData(pixels, 0, 0);
}

function showOverview(detail) {
  const box = $("overview-box"), image = $("overview-img"), svg = $("picks");
  const overview = detail.overview;
  box.hidden = !overview;
  $("overview-none").hidden = !!overview;
  const counts = { phased: 0, pending: 0, flagged: 0 };
  for (const p of detail.picks_list) counts[p.state] += 1;
  for (const state of Object.keys(counts)) setText(`n-${state}`, fmt(counts[state]));
  $("flag-reasons").replaceChildren(...Object.entries(detail.flag_reasons)
    .map(([why, n]) => el("li", { text: `${n} × ${why}` })));
  if (!overview) return;
  if (image.dataset.src !== overview.url) { image.src = overview.url; image.dataset.src = overview.url; }
  const [height, width] = overview.shape;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren(...detail.picks_list.map((p) => {
    const circle = document.createElementNS(ns, "circle");
    circle.setAttribute("cx", p.x); circle.setAttribute("cy", p.y);
    circle.setAttribute("r", Math.max(4, overview.pick_diameter_px / 2));
    circle.setAttribute("class", p.state);
    const title = document.createElementNS(ns, "title");
    title.textContent = `pick ${p.index}: ${p.state}` + (p.reason ? ` (${p.reason})` : "");
    circle.append(title);
    return circle;
  }));
}

// ------------------------------------------------------------------ particles
function showParticles(particles) {
  const gallery = $("gallery");
  const wanted = particles.map((p) => page.figures.get(p.key) || particleFigure(p));
  page.figures = new Map(particles.map((p, i) => [p.key, wanted[i]]));
  gallery.replaceChildren(...(wanted.length ? wanted : [el("p", { class: "muted", text: "none yet" })]));
}

function particleFigure(p) {
  return el("figure", { class: "particle", "data-key": String(p.key) },
    el("div", { class: "pair" },
      el("img", { src: p.images.lowres, alt: "low-res crop", title: "low-resolution crop of the overview" }),
      el("a", { href: p.images.phased, target: "_blank" },
        el("img", { src: p.images.phased, alt: "phased image", title: "phased image (σV)" }))),
    el("figcaption", {},
      el("span", { class: "res", text: `${fixed(p.resolution_A, 1)} Å` }), el("br"),
      `R ${fixed(p.fourier_r, 3)} · R free ${fixed(p.r_free, 3)}`, el("br"),
      el("span", { class: "muted", text: `${p.series_id} · pick ${p.index} · scan ${p.scan_yx.join(",")}`
                                         + ` · spread ${fixed(p.uncertainty, 2)}` })));
}

// ------------------------------------------------------------------ plots
function plotArea(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio)) { canvas.width = Math.round(width * ratio); }
  if (canvas.height !== Math.round(height * ratio)) { canvas.height = Math.round(height * ratio); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  return { ctx, left: 46, right: width - 8, top: 20, bottom: height - 22 };
}

function axes(area, [x0, x1], [y0, y1], yUnit) {
  const { ctx, left, right, top, bottom } = area;
  ctx.strokeStyle = "#2c333e"; ctx.fillStyle = "#8b95a5"; ctx.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = bottom - (i / 4) * (bottom - top), value = y0 + (i / 4) * (y1 - y0);
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(right, y); ctx.stroke();
    ctx.fillText(value >= 100 ? value.toFixed(0) : value.toPrecision(2), 4, y + 4);
  }
  const end = `${x1.toFixed(0)} s since start`;
  ctx.fillText(`${x0.toFixed(0)} s`, left, bottom + 16);
  ctx.fillText(end, right - ctx.measureText(end).width, bottom + 16);
  ctx.fillText(yUnit, left, top - 8);
  return {
    x: (v) => left + (x1 > x0 ? (v - x0) / (x1 - x0) : 0.5) * (right - left),
    y: (v) => bottom - (y1 > y0 ? (v - y0) / (y1 - y0) : 0.5) * (bottom - top),
  };
}

function drawRate() {
  const area = plotArea($("rate-plot")), points = page.rate.slice(-600);
  if (!points.length) return;
  const top = Math.max(10, ...points.map((p) => p.frames_per_s)) * 1.1;
  const scale = axes(area, [points[0].t_s, points[points.length - 1].t_s], [0, top], "frames/s");
  const ctx = area.ctx;
  ctx.strokeStyle = "#5aa9f0"; ctx.lineWidth = 1.5; ctx.beginPath();
  points.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, scale.x(p.t_s), scale.y(p.frames_per_s)));
  ctx.stroke();
}

function drawResolution() {
  const area = plotArea($("resolution-plot"));
  const points = page.resolution.filter((p) => p.resolution_A !== null && isFinite(p.resolution_A));
  if (!points.length) return;
  const values = points.map((p) => p.resolution_A);
  const scale = axes(area, [points[0].t_s, points[points.length - 1].t_s],
                     [0, Math.max(...values) * 1.1], "Å (lower is better)");
  const ctx = area.ctx;
  for (const p of points) {
    ctx.fillStyle = COLOURS[(p.series_key - 1) % COLOURS.length];
    ctx.beginPath(); ctx.arc(scale.x(p.t_s), scale.y(p.resolution_A), 2.5, 0, 2 * Math.PI); ctx.fill();
  }
  const sorted = values.slice().sort((a, b) => a - b), middle = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
  setText("resolution-summary", `${fmt(values.length)} particles · median ${fixed(median, 2)} Å`
          + ` · best ${fixed(sorted[0], 2)} Å`);
}

// ------------------------------------------------------------------ messages
function showMessages() {
  const items = page.messages.slice().reverse();
  setText("n-messages", items.length ? `(${items.length})` : "");
  $("messages").replaceChildren(...(items.length ? items.map((m) => el("li", { class: m.level },
    el("time", { text: new Date(m.time_unix_s * 1000).toLocaleTimeString() }),
    el("span", { class: "lvl", text: m.level + " " }), `${m.logger}: ${m.text}`))
    : [el("li", { class: "muted", text: "none" })]));
}

$("follow").addEventListener("click", () => select(null));
window.addEventListener("resize", () => { drawRate(); drawResolution(); });
connect();

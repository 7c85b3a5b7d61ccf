// The live dashboard served at `/`. It receives the stream through sse-batcher.js
// (the same client applications use) and polls /stats and /workers for totals.
import { subscribe } from "./sse-batcher.js";

const FEED_LIMIT = 200;
const CHART_SECONDS = 60;
const POLL_MS = 1000;
const ACTIVE_WITHIN_S = 5;

// The app root, wherever the app is mounted: this module lives at <root>/static/.
const ROOT = new URL("..", import.meta.url);
const TOKEN = new URLSearchParams(location.search).get("token");

const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat();
const fmt1 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

function api(path, init = {}) {
  const url = new URL(path, ROOT);
  const headers = { Accept: "application/json", ...(init.headers ?? {}) };
  if (TOKEN) {
    url.searchParams.set("token", TOKEN);
    headers.Authorization = `Bearer ${TOKEN}`;
  }
  return fetch(url, { cache: "no-store", ...init, headers });
}

let toastTimer = null;
function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 4000);
}

// ------------------------------------------------------------------ connection

const STATUS_TEXT = {
  connecting: "Connecting…",
  open: "Live",
  reconnecting: "Reconnecting…",
  closed: "Disconnected",
};

let reconnects = 0;
let members = 0;

function showStatus(status, detail) {
  if (status === "reconnecting") reconnects += 1;
  $("fact-reconnects").textContent = fmt.format(reconnects);
  const conn = $("conn");
  conn.dataset.status = status;
  let text = STATUS_TEXT[status] ?? status;
  if (status === "reconnecting" && detail?.delay) {
    text = `Reconnecting in ${fmt1.format(detail.delay / 1000)} s`;
  } else if (status === "closed" && detail?.error?.status) {
    text = `Disconnected (HTTP ${detail.error.status})`;
  }
  $("conn-text").textContent = text;
}

function showReset(info) {
  const reason = {
    trimmed: "the events after your last one were removed by retention",
    epoch: "the server's journal was replaced",
    future: "the server does not know the last event this page saw",
    invalid: "the last event id this page saw is not valid here",
  }[info.reason] ?? `reason: ${info.reason}`;
  $("reset-text").textContent =
    `Could not resume (${reason}); some events may be missing from the feed. Live updates continue.`;
  $("reset-notice").hidden = false;
}
$("reset-dismiss").addEventListener("click", () => ($("reset-notice").hidden = true));

// ------------------------------------------------------------------------ feed

const feed = $("feed");
let pending = [];
let received = 0;
let paused = false;
let frame = 0;

function typeClass(type) {
  if (type.startsWith("LOG_")) return /ERROR|CRITICAL/.test(type) ? "failed" : "log";
  if (/FAILED|ERROR/.test(type)) return "failed";
  if (/COMPLETED|DONE|FINISHED|SUCCEEDED/.test(type)) return "completed";
  if (/STARTED|CREATED|QUEUED/.test(type)) return "started";
  if (/PROGRESS/.test(type)) return "progress";
  return "";
}

function clock(ts) {
  const d = new Date(ts * 1000);
  const p = (n, w = 2) => String(n).padStart(w, "0");
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function scalar(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

// One line a human reads at a glance: the ids a batch collected, else the fields
// that identify or describe a single event.
function summarise(envelope, batched) {
  const data = envelope.data ?? {};
  if (batched) {
    const idLists = Object.entries(data).filter(([k, v]) => k.endsWith("_ids") && Array.isArray(v));
    if (idLists.length) {
      return idLists
        .map(([k, v]) => `${k}: ${v.slice(0, 6).map(scalar).join(", ")}${v.length > 6 ? ` +${v.length - 6}` : ""}`)
        .join("  ");
    }
    return `${data.items.length} members`;
  }
  return describe(data);
}

function describe(data) {
  if (data === null || typeof data !== "object") return scalar(data);
  if (typeof data.message === "string") return data.message;
  const parts = [];
  for (const [k, v] of Object.entries(data)) {
    if (v === null || typeof v === "object") continue;
    parts.push(`${k}=${scalar(v)}`);
    if (parts.length === 5) break;
  }
  return parts.join("  ") || JSON.stringify(data);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function rowCells(envelope, batched, count) {
  const cells = [el("span", "t", clock(envelope.ts))];
  const type = el("span", `type ${typeClass(envelope.type)}`, envelope.type);
  type.title = envelope.type;
  cells.push(type);
  cells.push(batched ? el("span", "badge", `×${count}`) : el("span"));
  // Source, then the channel underneath (every message carries one).
  const src = el("span", "src", envelope.source);
  const channel = envelope.channel ?? "default";
  src.append(el("span", "chan", channel));
  src.title = `${envelope.source} on ${channel}`;
  cells.push(src);
  cells.push(el("span", "summary", summarise(envelope, batched)));
  cells.push(el("span", "chev", batched ? "▶" : ""));
  return cells;
}

function renderRow(envelope, info) {
  const { batched, memberType, count } = info;
  let row;
  if (batched) {
    row = el("details", "feed-row batch fresh");
    const summary = el("summary");
    summary.append(...rowCells(envelope, true, count));
    row.append(summary);
    // Members are rendered on first expand only: most batches are never opened.
    row.addEventListener("toggle", () => {
      if (!row.open || row.querySelector(".members")) return;
      const list = el("ol", "members");
      envelope.data.items.forEach((item, i) => {
        // {ts, uid, data}: each member's own time and data (older batches: data only)
        const member = item && typeof item === "object" && "data" in item && "ts" in item;
        const data = member ? item.data : item;
        const li = el("li");
        li.append(
          el("span", "idx", String(i + 1)),
          `${member ? `${clock(item.ts)}  ` : ""}${memberType}  ${JSON.stringify(data)}`,
        );
        li.title = JSON.stringify(item, null, 2);
        list.append(li);
      });
      row.append(list);
    });
  } else {
    row = el("div", "feed-row single fresh");
    row.append(...rowCells(envelope, false, 1));
    row.title = JSON.stringify(envelope.data, null, 2);
  }
  row.dataset.type = envelope.type;
  row.dataset.source = envelope.source;
  row.dataset.channel = envelope.channel ?? "default";
  row.dataset.count = String(count);
  if (envelope.id) row.dataset.id = envelope.id;
  setTimeout(() => row.classList.remove("fresh"), 1300);
  return row;
}

function flushFeed() {
  frame = 0;
  if (paused || !pending.length) return;
  const batch = pending.slice(-FEED_LIMIT);
  pending = [];
  $("feed-empty")?.remove();
  const fragment = document.createDocumentFragment();
  for (let i = batch.length - 1; i >= 0; i--) fragment.append(renderRow(...batch[i]));
  feed.prepend(fragment);
  while (feed.childElementCount > FEED_LIMIT) feed.lastElementChild.remove();
  updateFeedCount();
}

function updateFeedCount() {
  $("fact-id").textContent = sub.lastEventId ?? "–";
  $("fact-messages").textContent = fmt.format(received);
  $("fact-events").textContent = fmt.format(members);
  const queued = paused && pending.length ? ` · ${fmt.format(pending.length)} waiting` : "";
  $("feed-count").textContent = `${fmt.format(received)} messages${queued}`;
}

$("pause").addEventListener("click", (event) => {
  paused = !paused;
  event.currentTarget.setAttribute("aria-pressed", String(paused));
  event.currentTarget.textContent = paused ? "Resume" : "Pause";
  if (!paused) flushFeed();
  updateFeedCount();
});

// The channel filter is the server's: the stream is reopened with `?channel=`
// patterns (space or comma separated; empty: every channel the token allows).
function channelPatterns(text) {
  return text.split(/[\s,]+/).filter(Boolean);
}

function onMessage(envelope, info) {
  received += 1;
  members += info.count;
  pending.push([envelope, info]);
  if (pending.length > FEED_LIMIT * 2) pending = pending.slice(-FEED_LIMIT);
  if (paused) updateFeedCount();
  else if (!frame) frame = requestAnimationFrame(flushFeed);
}

function connect(channels) {
  const next = subscribe(new URL("events", ROOT).href, {
    token: TOKEN ?? undefined,
    channels,
    onStatus: showStatus,
    onReset: showReset,
  });
  next.onAny(onMessage);
  return next;
}

const channelInput = $("channel-filter");
channelInput.value = new URLSearchParams(location.search).getAll("channel").join(" ");
let sub = connect(channelPatterns(channelInput.value));
$("channel-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sub.close();
  feed.replaceChildren();
  pending = [];
  sub = connect(channelPatterns(channelInput.value));
});
// Hidden tabs get no animation frames; flush anyway so the feed is current on return.
document.addEventListener("visibilitychange", () => document.hidden || flushFeed());

// ------------------------------------------------------------------ totals + chart

const series = { events: [], messages: [] };
let previous = null;

function pushRate(list, value) {
  list.push(value);
  if (list.length > CHART_SECONDS) list.shift();
}

function recentMean(values, n = 5) {
  const recent = values.slice(-n);
  return recent.length ? recent.reduce((a, b) => a + b, 0) / recent.length : 0;
}

function showStats(stats) {
  const b = stats.batcher ?? stats;
  const eventsIn = b.events_in ?? 0;
  const messagesOut = b.messages_out ?? 0;
  const saved = b.messages_saved ?? Math.max(0, eventsIn - messagesOut);
  const now = performance.now();
  if (previous) {
    const dt = (now - previous.at) / 1000;
    if (dt > 0.2) {
      pushRate(series.events, Math.max(0, (eventsIn - previous.eventsIn) / dt));
      pushRate(series.messages, Math.max(0, (messagesOut - previous.messagesOut) / dt));
    }
  }
  previous = { at: now, eventsIn, messagesOut };

  $("kpi-in").textContent = fmt.format(eventsIn);
  $("kpi-out").textContent = fmt.format(messagesOut);
  // Rates under the totals: the mean of the last 5 s, steadier than one sample.
  $("kpi-in-rate").textContent = fmt1.format(recentMean(series.events));
  $("kpi-out-rate").textContent = fmt1.format(recentMean(series.messages));
  $("kpi-saved").textContent = eventsIn ? `${fmt1.format((100 * saved) / eventsIn)}%` : "–";
  $("kpi-saved-sub").textContent = `${fmt.format(saved)} fewer messages than events`;
  $("kpi-batches").textContent = fmt.format(b.batches_created ?? 0);
  const parts = [];
  if (typeof b.mean_batch_size === "number" && b.mean_batch_size > 0) {
    parts.push(`mean size ${fmt1.format(b.mean_batch_size)}`);
  }
  if (b.coalesced) parts.push(`${fmt.format(b.coalesced)} coalesced`);
  $("kpi-batches-sub").textContent = parts.join(" · ") || "–";
  drawChart();
}

const canvas = $("chart");

// Four gridline steps of 1, 2 or 5 x 10^k, so every label is a round number.
function niceMax(value) {
  const raw = Math.max(value, 4) / 4;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].find((s) => s * magnitude >= raw) * magnitude;
  return step * 4;
}

function drawChart() {
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const left = 40;
  const right = width - 6;
  const top = 8;
  const bottom = height - 20;
  const max = niceMax(Math.max(...series.events, ...series.messages, 0));
  const x = (i) => left + ((right - left) * i) / (CHART_SECONDS - 1);
  const y = (v) => bottom - ((bottom - top) * v) / max;

  ctx.font = `11px ${color("--sans")}`;
  ctx.fillStyle = color("--faint");
  ctx.strokeStyle = color("--grid");
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let g = 0; g <= 4; g++) {
    const value = (max * g) / 4;
    const gy = Math.round(y(value)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(left, gy);
    ctx.lineTo(right, gy);
    ctx.stroke();
    ctx.fillText(fmt.format(Math.round(value)), left - 8, gy);
  }
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  ctx.fillText(`${CHART_SECONDS} s ago`, left, height - 4);
  ctx.textAlign = "right";
  ctx.fillText("now", right, height - 4);

  const plot = (values, stroke, fill) => {
    if (values.length < 2) return;
    const offset = CHART_SECONDS - values.length;
    ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(x(offset + i), y(v)) : ctx.moveTo(x(offset + i), y(v))));
    if (fill) {
      ctx.save();
      ctx.lineTo(x(offset + values.length - 1), bottom);
      ctx.lineTo(x(offset), bottom);
      ctx.closePath();
      ctx.fillStyle = fill;
      ctx.fill();
      ctx.restore();
      ctx.beginPath();
      values.forEach((v, i) => (i ? ctx.lineTo(x(offset + i), y(v)) : ctx.moveTo(x(offset + i), y(v))));
    }
    ctx.strokeStyle = stroke;
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    ctx.stroke();
  };
  plot(series.events, color("--events"), color("--events-fill"));
  plot(series.messages, color("--messages"), null);
}
new ResizeObserver(() => drawChart()).observe(canvas);

// ---------------------------------------------------------------------- workers

const workerRows = new Map(); // name -> {row, cells, input}
const busy = new Set(); // worker names with a PATCH in flight
const switchedAt = new Map(); // name -> when its PATCH succeeded (performance.now())

function workerRow(name) {
  let entry = workerRows.get(name);
  if (entry) return entry;
  const row = el("tr");
  row.dataset.worker = name;
  const nameCell = el("td");
  const label = el("div", "wname");
  const dot = el("span", "dot");
  const text = el("span", "", name);
  const mode = el("span", "wmode");
  label.append(dot, text, mode);
  nameCell.append(label);
  const inCell = el("td", "num");
  const outCell = el("td", "num");
  const savedCell = el("td", "num");
  const toggleCell = el("td", "center");
  const sw = el("label", "switch");
  const input = el("input");
  input.type = "checkbox";
  input.dataset.worker = name;
  input.setAttribute("aria-label", `Batching for ${name}`);
  sw.append(input, el("span", "track"));
  toggleCell.append(sw);
  input.addEventListener("change", () => setBatching(name, input));
  row.append(nameCell, inCell, outCell, savedCell, toggleCell);
  entry = { row, dot, mode, inCell, outCell, savedCell, input };
  workerRows.set(name, entry);
  return entry;
}

async function setBatching(name, input) {
  const wanted = input.checked;
  busy.add(name);
  input.disabled = true;
  try {
    const response = await api(`workers/${encodeURIComponent(name)}`, {
      method: "PATCH",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ batching: wanted }),
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    switchedAt.set(name, performance.now());
    workerRow(name).mode.textContent = wanted ? "" : "one by one";
  } catch (error) {
    input.checked = !wanted;
    toast(`Could not switch batching for ${name}: ${error.message}`);
  } finally {
    busy.delete(name);
    input.disabled = false;
  }
}

function showWorkers(workers, askedAt) {
  const body = $("workers-body");
  const now = Date.now() / 1000;
  if (workers.length) body.querySelector(".empty")?.remove();
  const names = new Set();
  for (const w of workers) {
    names.add(w.name);
    const entry = workerRow(w.name);
    if (!entry.row.isConnected) body.append(entry.row);
    entry.inCell.textContent = fmt.format(w.events_in);
    entry.outCell.textContent = fmt.format(w.messages_out);
    entry.savedCell.textContent = w.events_in
      ? `${fmt1.format((100 * Math.max(0, w.events_in - w.messages_out)) / w.events_in)}%`
      : "–";
    const active = typeof w.last_seen === "number" && now - w.last_seen < ACTIVE_WITHIN_S;
    entry.dot.classList.toggle("active", active);
    entry.dot.title = active ? "active" : "idle";
    // A poll that was asked before the switch answered may carry the old setting.
    if (!busy.has(w.name) && !(switchedAt.get(w.name) > askedAt)) {
      entry.input.checked = Boolean(w.batching);
      entry.mode.textContent = w.batching ? "" : "one by one";
    }
  }
  for (const [name, entry] of workerRows) {
    if (!names.has(name)) {
      entry.row.remove();
      workerRows.delete(name);
    }
  }
  const active = workers.filter((w) => typeof w.last_seen === "number" && now - w.last_seen < ACTIVE_WITHIN_S);
  $("workers-note").textContent = workers.length ? `${active.length} of ${workers.length} active` : "";
}

// ----------------------------------------------------------------------- polling

async function poll() {
  try {
    const askedAt = performance.now();
    const [stats, workers] = await Promise.all([api("stats"), api("workers")]);
    if (stats.ok) showStats(await stats.json());
    if (workers.ok) showWorkers((await workers.json()).workers ?? [], askedAt);
  } catch {
    // The stream's status pill already says when the server is away.
  }
  setTimeout(poll, POLL_MS);
}
poll();

// For tests and the curious: the dashboard's subscription.
window.sseBatcherDashboard = { subscription: sub };

// The analytics page (/admin/analytics, admins): the figures of GET /api/v1/admin/analytics/* (docs/analytics.md)
// as SVG bar charts drawn here and two tables. It uses the session the main page keeps in sessionStorage.

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const HOUR = 3600_000, DAY = 24 * HOUR;
const PALETTE = ["#4cc2a4", "#e5a84c", "#7aa2f7", "#e5707a", "#b48ead", "#8fbcbb", "#ebcb8b", "#a3be8c"];
let session = JSON.parse(sessionStorage.getItem("veza.session") || "null");

// -- HTTP (as the main page: a 401 refreshes the tokens once) ------------------------------------
async function api(path) {
  const call = () => fetch(`/api/v1${path}`, { headers: { Authorization: `Bearer ${session.access_token}` } });
  let res = await call();
  if (res.status === 401 && session.refresh_token && await refresh()) res = await call();
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const err = new Error(data?.error?.message || `${res.status} ${res.statusText}`);
    err.status = res.status;
    throw err;
  }
  return data;
}

async function refresh() {
  const res = await fetch("/api/v1/auth/refresh", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token: session.refresh_token }) });
  if (!res.ok) return false;
  session = { ...session, ...(await res.json()) };
  sessionStorage.setItem("veza.session", JSON.stringify(session));
  return true;
}

// -- drawing -----------------------------------------------------------------------------------
function node(tag, attrs = {}, text) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}

function el(tag, attrs = {}, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  n.append(...children);
  return n;
}

const pad2 = (n) => String(n).padStart(2, "0");
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const dayText = (d) => `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}`;
const timeText = (t, step) => {
  const d = new Date(t);
  return step >= DAY ? `${d.toISOString().slice(0, 10)}` : `${d.toISOString().slice(0, 10)} ${pad2(d.getUTCHours())}:00`;
};
const number = (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1));

// Stacked bars: one slot of `step` ms per bar from `start` to `end`, a segment per key (room, channel...).
// points: [{t (ms), key, value}]. Returns the total per key (for the legend) and the colour of each key.
function barChart(svgEl, { start, end, step, points, unit }) {
  svgEl.replaceChildren();
  const width = svgEl.viewBox.baseVal.width, height = svgEl.viewBox.baseVal.height;
  const left = 44, right = 8, top = 10, bottom = 24;
  const plotW = width - left - right, plotH = height - top - bottom;
  const slots = Math.max(1, Math.ceil((end - start) / step));
  const keys = [...new Set(points.map((p) => p.key))].sort();
  const colour = new Map(keys.map((k, i) => [k, PALETTE[i % PALETTE.length]]));
  const cells = new Map(); // slot -> Map key -> value
  const totals = new Map(keys.map((k) => [k, 0]));
  for (const p of points) {
    const slot = Math.floor((p.t - start) / step);
    if (slot < 0 || slot >= slots) continue;
    if (!cells.has(slot)) cells.set(slot, new Map());
    const cell = cells.get(slot);
    cell.set(p.key, (cell.get(p.key) || 0) + p.value);
    totals.set(p.key, totals.get(p.key) + p.value);
  }
  const sums = [...cells.values()].map((c) => [...c.values()].reduce((a, b) => a + b, 0));
  const max = Math.max(0, ...sums);
  svgEl.append(node("line", { x1: left, y1: top + plotH, x2: width - right, y2: top + plotH, class: "axis" }));
  svgEl.append(node("text", { x: left - 6, y: top + 8, "text-anchor": "end", class: "tick y-max" }, number(max)));
  svgEl.append(node("text", { x: left - 6, y: top + plotH, "text-anchor": "end", class: "tick" }, "0"));
  // Day ticks (or every 6 hours within a day), in UTC.
  const tick = end - start <= 2 * DAY ? 6 * HOUR : DAY;
  const every = Math.max(1, Math.ceil((end - start) / tick / 10)); // at most ~10 labels
  for (let t = Math.ceil(start / tick) * tick, i = 0; t < end; t += tick, i++) {
    if (i % every) continue;
    const x = left + ((t - start) / (end - start)) * plotW;
    const d = new Date(t);
    svgEl.append(node("line", { x1: x, y1: top + plotH, x2: x, y2: top + plotH + 4, class: "axis" }));
    svgEl.append(node("text", { x, y: height - 6, "text-anchor": "middle", class: "tick" },
      tick < DAY ? `${pad2(d.getUTCHours())}:00` : dayText(d)));
  }
  if (!max) {
    svgEl.append(node("text", { x: left + plotW / 2, y: top + plotH / 2, "text-anchor": "middle", class: "empty" },
      "No data in this range"));
    return { totals, colour };
  }
  const bw = plotW / slots;
  for (const [slot, cell] of cells) {
    let y = top + plotH;
    for (const key of keys) {
      const value = cell.get(key);
      if (!value) continue;
      const h = (value / max) * plotH;
      y -= h;
      const t = start + slot * step;
      const bar = node("rect", { x: left + slot * bw + bw * 0.1, y, width: Math.max(bw * 0.8, 0.8), height: h,
        fill: colour.get(key), class: "bar", "data-key": key, "data-time": new Date(t).toISOString(),
        "data-value": value });
      bar.append(node("title", {}, `${key} · ${timeText(t, step)} UTC: ${number(value)} ${unit}`));
      svgEl.append(bar);
    }
  }
  return { totals, colour };
}

function legend(list, { totals, colour }, unit) {
  list.replaceChildren(...[...totals].map(([key, total]) => {
    const swatch = node("svg", { width: 10, height: 10, "aria-hidden": "true" });
    swatch.append(node("rect", { width: 10, height: 10, rx: 2, fill: colour.get(key) }));
    return el("li", { "data-key": key }, swatch, ` ${key}: ${number(total)} ${unit}`);
  }));
}

function rows(table, items, cells) {
  const body = table.querySelector("tbody");
  body.replaceChildren(...items.map((item) => el("tr", {}, ...cells(item).map((c) => el("td", {}, String(c))))));
  if (!items.length) body.append(el("tr", {}, el("td", { colspan: table.querySelectorAll("th").length }, "None")));
}

const when = (iso) => `${iso.slice(0, 10)} ${iso.slice(11, 16)}`;

// -- the page ----------------------------------------------------------------------------------
let loads = 0; // only the newest load draws (the range may change while one is under way)

async function load() {
  const mine = ++loads;
  const days = Number($("range").value);
  const end = Date.now();
  const step = days > 7 ? DAY : HOUR;
  const start = Math.floor((end - days * DAY) / step) * step; // whole hours (days): the API's buckets
  const q = `?from=${new Date(start).toISOString()}&to=${new Date(end).toISOString()}`;
  $("analytics-status").textContent = "Loading…";
  try {
    const [messages, listening, users, peaks, tracks] = await Promise.all([
      api(`/admin/analytics/messages${q}`), api(`/admin/analytics/listening${q}`),
      api(`/admin/analytics/active-users${q}`), api(`/admin/analytics/peaks${q}`),
      api(`/admin/analytics/top-tracks${q}&limit=10`)]);
    if (mine !== loads) return;
    $("range-text").textContent = `From ${when(new Date(start).toISOString())} to ${when(new Date(end).toISOString())}.`;
    legend($("messages-legend"), barChart($("messages-chart"), { start, end, step, unit: "messages",
      points: messages.series.map((s) => ({ t: Date.parse(s.hour), key: s.room, value: s.messages })) }), "messages");
    legend($("listening-legend"), barChart($("listening-chart"), { start, end, step, unit: "min",
      points: listening.series.map((s) => ({ t: Date.parse(s.hour), key: `${s.channel} ${s.rendition}`,
        value: s.minutes })) }), "min");
    const dayStart = Math.floor(start / DAY) * DAY;
    barChart($("users-chart"), { start: dayStart, end: Math.ceil(end / DAY) * DAY, step: DAY, unit: "users",
      points: users.days.map((d) => ({ t: Date.parse(`${d.day}T00:00:00Z`), key: "active users", value: d.users })) });
    rows($("peaks"), [...peaks.peaks].reverse(), (p) => [p.day, p.kind, p.scope, p.peak, when(p.at)]);
    rows($("top-tracks"), tracks.tracks, (t) => [t.channel, t.title, t.plays, when(t.last_played)]);
    $("figures").hidden = false;
    $("analytics-error").hidden = true;
    $("analytics-status").textContent = "";
  } catch (err) {
    if (mine !== loads) return;
    $("figures").hidden = true;
    $("analytics-status").textContent = "";
    $("analytics-error").hidden = false;
    $("analytics-error").textContent = err.status === 403 ? `Not allowed: ${err.message}.`
      : err.status === 401 ? "Your session has ended: log in again on the main page."
        : `The figures could not be loaded: ${err.message}`;
  }
}

$("range-form").addEventListener("submit", (e) => { e.preventDefault(); load(); });
$("range").addEventListener("change", load);

if (!session) {
  $("analytics-status").replaceChildren("Log in first: ", el("a", { href: "/" }, "open Veza"), ", then come back.");
} else {
  load();
}

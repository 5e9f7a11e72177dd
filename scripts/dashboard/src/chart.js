// Small SVG charts for the analytics endpoint's per-minute series.
import { formatMs, formatNumber, h } from "./dom.js";

// The last `minutes` minutes ending now, oldest first, filled with zeros where a series has no point.
export function buckets(series, minutes = 60, now = Date.now()) {
  const end = Math.floor(now / 60000) * 60000;
  const slots = [];
  const byMinute = new Map();
  for (const point of series ?? []) {
    const t = Math.floor(Date.parse(point.minute) / 60000) * 60000;
    const prev = byMinute.get(t) ?? { requests: 0, errors: 0, cpu_ms: 0 };
    byMinute.set(t, { requests: prev.requests + (point.requests ?? 0), errors: prev.errors + (point.errors ?? 0), cpu_ms: prev.cpu_ms + (point.cpu_ms ?? 0) });
  }
  for (let i = minutes - 1; i >= 0; i--) {
    const t = end - i * 60000;
    slots.push({ t, ...(byMinute.get(t) ?? { requests: 0, errors: 0, cpu_ms: 0 }) });
  }
  return slots;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function clock(t) {
  const d = new Date(t);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

// Bars of one field per minute; `alert` (optional) overlays a second field (errors) in red.
export function barChart(slots, { field, alert, label, format = formatNumber, height = 120 }) {
  const width = 600;
  const top = 8, bottom = 20, left = 0;
  const max = niceMax(Math.max(...slots.map((s) => s[field])));
  const step = width / slots.length;
  const bar = Math.max(1, step - 2);
  const y = (v) => top + (height - top - bottom) * (1 - v / max);
  const bars = slots.map((s, i) => {
    const x = left + i * step + (step - bar) / 2;
    const tip = `${clock(s.t)}  ${label}: ${format(s[field])}` + (alert ? `, errors: ${formatNumber(s[alert])}` : "");
    return h("g", null,
      h("title", null, tip),
      h("rect", { x: x.toFixed(1), y: 0, width: bar.toFixed(1), height: height - bottom, class: "hit" }),
      s[field] > 0 ? h("rect", { x: x.toFixed(1), y: y(s[field]).toFixed(1), width: bar.toFixed(1), height: (height - bottom - y(s[field])).toFixed(1), rx: 1.5, class: "bar" }) : null,
      alert && s[alert] > 0 ? h("rect", { x: x.toFixed(1), y: y(s[alert]).toFixed(1), width: bar.toFixed(1), height: (height - bottom - y(s[alert])).toFixed(1), rx: 1.5, class: "bar-alert" }) : null);
  });
  const grid = [0.5, 1].map((f) => h("line", { x1: 0, x2: width, y1: y(max * f), y2: y(max * f), class: "grid" }));
  return h("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img", "aria-label": `${label} per minute, last hour` },
    grid,
    h("line", { x1: 0, x2: width, y1: height - bottom, y2: height - bottom, class: "axis" }),
    bars);
}

export function chartCard(title, total, slots, options) {
  const max = niceMax(Math.max(...slots.map((s) => s[options.field])));
  const format = options.format ?? formatNumber;
  return h("div", { class: "chart-card" },
    h("div", { class: "chart-head" },
      h("span", { class: "chart-title" }, title),
      h("span", { class: "chart-total" }, total)),
    h("div", { class: "chart-body" },
      h("div", { class: "chart-scale" }, h("span", null, format(max)), h("span", null, format(max / 2)), h("span", null, "0")),
      barChart(slots, options)),
    h("div", { class: "chart-foot" }, h("span", null, clock(slots[0].t)), h("span", null, "now")));
}

export function sparkline(slots, field = "requests") {
  const width = 120, height = 28;
  const max = Math.max(1, ...slots.map((s) => s[field]));
  const points = slots.map((s, i) => `${((i / (slots.length - 1)) * width).toFixed(1)},${(height - 2 - (s[field] / max) * (height - 4)).toFixed(1)}`);
  return h("svg", { class: "spark", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", "aria-hidden": "true" },
    h("polygon", { points: `0,${height} ${points.join(" ")} ${width},${height}`, class: "spark-fill" }),
    h("polyline", { points: points.join(" "), class: "spark-line" }));
}

export { formatMs };

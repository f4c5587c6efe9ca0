// Small SVG time-series charts: lines (optionally filled), a budget line, time and value axes.
// No framework; redraws are cheap (a few paths), so callers just call draw() again with new data.

const NS = "http://www.w3.org/2000/svg";

function el(name, attrs = {}, parent) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.append(node);
  return node;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmtTick(v) {
  if (v === 0) return "0";
  if (Math.abs(v) >= 10) return v.toFixed(0);
  if (Math.abs(v) >= 1) return v.toFixed(1).replace(/\.0$/, "");
  if (Math.abs(v) >= 0.01) return v.toFixed(2);
  return v.toExponential(0);
}

function fmtTime(t, span) {
  const d = new Date(t * 1000);
  if (span > 2 * 86400) return d.toLocaleDateString([], { month: "short", day: "numeric" });
  const opts = span < 600 ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" };
  return d.toLocaleTimeString([], opts);
}

/**
 * Draw into `svg`: series = [{name, color, points: [[unixSeconds, value|null], ...], fill}].
 * from/to bound the time axis; budget (optional) draws a dashed limit line; unit labels the value axis.
 */
export function drawChart(svg, { series, from, to, budget, unit = "W", height = 200, minMax = 0 }) {
  const width = Math.max(280, Math.round(svg.getBoundingClientRect().width || svg.parentElement?.clientWidth || 600));
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.replaceChildren();
  let top = minMax;
  for (const s of series) for (const [, v] of s.points) if (v != null && v > top) top = v;
  if (budget != null && budget > top * 0.6) top = Math.max(top, budget);
  // Small figures (an agent's milliwatts) read better in milli-units than as 2e-3; the choice follows the
  // rounded top, so an axis reads 1.5 W rather than 1500 mW.
  top = niceMax(top * 1.08);
  const milli = top < 1 && unit.length <= 2;
  const shown = milli ? "m" + unit : unit;
  const k = milli ? 1000 : 1;
  const labels = [0, 1, 2, 3, 4].map((i) => fmtTick((top * i * k) / 4) + (i === 4 ? " " + shown : ""));
  const longest = Math.max(...labels.map((l) => l.length));
  const pad = { l: Math.max(30, Math.round(longest * 7.4) + 10), r: 10, t: 10, b: 22 };
  const w = width - pad.l - pad.r;
  const h = height - pad.t - pad.b;
  const span = Math.max(1, to - from);
  const x = (t) => pad.l + ((t - from) / span) * w;
  const y = (v) => pad.t + h - (v / top) * h;

  const grid = el("g", {}, svg);
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    el("line", { class: "grid", x1: pad.l, x2: pad.l + w, y1: y(v), y2: y(v) }, grid);
    const label = el("text", { class: "axis-label", x: pad.l - 6, y: y(v) + 4, "text-anchor": "end" }, grid);
    label.textContent = labels[i];
  }
  const ticks = Math.max(2, Math.min(6, Math.floor(w / 110)));
  for (let i = 0; i <= ticks; i++) {
    const t = from + (span * i) / ticks;
    const anchor = i === 0 ? "start" : i === ticks ? "end" : "middle";
    const label = el("text", { class: "axis-label", x: x(t), y: height - 6, "text-anchor": anchor }, grid);
    label.textContent = fmtTime(t, span);
  }

  for (const s of series) {
    const runs = [];
    let run = [];
    for (const [t, v] of s.points) {
      if (v == null || t < from - 1 || t > to + 1) {
        if (run.length) runs.push(run);
        run = [];
      } else {
        run.push([x(t), y(v)]);
      }
    }
    if (run.length) runs.push(run);
    for (const r of runs) {
      const d = r.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join("");
      if (s.fill && r.length > 1) {
        el("path", { class: "area", d: `${d}L${r[r.length - 1][0].toFixed(1)},${y(0)}L${r[0][0].toFixed(1)},${y(0)}Z`,
          fill: s.color }, svg);
      }
      if (r.length === 1) el("circle", { cx: r[0][0], cy: r[0][1], r: 2, fill: s.color }, svg);
      else el("path", { class: "line", d, stroke: s.color }, svg);
    }
  }
  if (budget != null) {
    el("line", { class: "budget", x1: pad.l, x2: pad.l + w, y1: y(budget), y2: y(budget) }, svg);
    const label = el("text", { class: "budget-label", x: pad.l + w - 2, y: y(budget) - 4, "text-anchor": "end" }, svg);
    label.textContent = `budget ${fmtTick(budget * k)} ${shown}`;
  }
}

/** The n-th series colour from the stylesheet's palette (--c1 … --c10), so dark mode gets its own. */
export function palette(i) {
  return getComputedStyle(document.documentElement).getPropertyValue(`--c${(i % 10) + 1}`).trim() || "#888";
}

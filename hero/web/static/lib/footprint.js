// The agent's power footprint card (GET /api/me/power): its watts and energy today beside the node's average.

import { fmtEnergyWh, fmtWatts } from "./api.js";

const $ = (id) => document.getElementById(id);

export function showFootprint(p) {
  $("fp-watts").textContent = fmtWatts(p.watts);
  $("fp-today").textContent = fmtEnergyWh(p.wh_today);
  const avg = p.node_average?.watts;
  $("fp-avg").textContent = fmtWatts(avg);
  const cmp = $("fp-cmp");
  if (avg > 0) {
    const ratio = p.watts / avg;
    cmp.dataset.level = ratio > 1.25 ? "high" : ratio < 0.8 ? "low" : "even";
    cmp.textContent = ratio > 1.25 ? `${ratio.toFixed(1)}× the average`
      : ratio < 0.8 ? "below the average" : "about the average";
  } else {
    cmp.textContent = "";
  }
  $("footprint").hidden = false;
}

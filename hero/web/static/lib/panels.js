// The dashboard's cards for the optional parts (storage, the overlay network, the cluster): each is filled
// from its API's JSON (/api/node/storage, /api/node/net, /api/node/cluster), hidden on a node without that part.

import { fmtWatts } from "./api.js";

const $ = (id) => document.getElementById(id);

export function short(id) {
  return id.length > 16 ? id.slice(0, 12) + "…" : id;
}

export function cell(row, content, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  row.append(td);
  return td;
}

function kpis(dl, pairs) {
  dl.replaceChildren(...pairs.map(([k, v]) => {
    const div = document.createElement("div");
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.textContent = v;
    div.append(dt, dd);
    return div;
  }));
}

function fillTable(table, headers, rows) {
  const tr = document.createElement("tr");
  for (const h of headers) {
    const th = document.createElement("th");
    th.scope = "col";
    th.className = "left";
    th.textContent = h;
    tr.append(th);
  }
  table.tHead.replaceChildren(tr);
  table.tBodies[0].replaceChildren(...rows.map((r) => {
    const row = document.createElement("tr");
    for (const v of r) cell(row, v == null ? "–" : String(v), "left");
    return row;
  }));
}

export function ago(unix) {
  if (!unix) return "never";
  const s = Math.max(0, Date.now() / 1000 - unix);
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

/** The storage card: backends up or down (and why), repairs, the last scrub and the objects it found damaged. */
export function showStorage(s) {
  const backends = s?.backends || [];
  if (!backends.length) { $("storage-card").hidden = true; return; } // a store that reports no health (not QSS)
  const up = s.up ?? backends.filter((b) => b.state === "up").length;
  const down = backends.length - up;
  const damaged = s.damaged_objects ?? 0;
  const health = $("storage-health");
  const purging = (s.purges_pending || []).length; // a user's deletion a down backend has not taken yet
  const problems = [down && `${down} down`, damaged && `${damaged} damaged`, purging && `${purging} deletion pending`]
    .filter(Boolean);
  health.textContent = problems.length ? problems.join(" · ") : "healthy";
  health.className = "badge " + (problems.length ? "bad" : "ok");
  kpis($("storage-kpis"), [
    ["Backends up", `${up} / ${backends.length}`],
    ["To repair", s.repairs?.queued ?? 0],
    ["Repaired", s.repairs?.repaired_total ?? 0],
    ["Damaged", damaged],
    ["Deletions pending", purging],
    ["Last scrub", ago(s.scrub?.last_finished)],
    ["Coding", s.k ? `${s.k} + ${s.m}` : "–"],
  ]);
  // Objects the last scrub could not read or rebuild, by name (by id when no manifest names it any more).
  $("storage-damaged").replaceChildren(...(s.damaged || []).map((d) => {
    const li = document.createElement("li");
    const name = document.createElement("strong");
    name.textContent = (d.key ?? `object ${d.oid.slice(0, 16)}…`) + (d.version == null ? "" : ` v${d.version}`);
    const why = document.createElement("span");
    why.className = "note";
    why.textContent = ` ${d.error}`;
    li.append(name, why);
    return li;
  }));
  $("storage-damaged").hidden = $("storage-damaged-title").hidden = !damaged;
  $("storage-backends").replaceChildren(...backends.map((b) => {
    const li = document.createElement("li");
    li.dataset.state = b.state;
    const name = document.createElement("strong");
    name.textContent = b.name;
    const st = document.createElement("span");
    st.className = "state " + b.state;
    st.textContent = b.state;
    const detail = document.createElement("span");
    detail.className = "note";
    // A backend that is not up says why (its directory is a file, a disk is missing, …).
    detail.textContent = b.state !== "up" && b.error ? b.error : `${b.location} · ${b.fragments ?? "–"} fragments`;
    if (b.error) detail.title = b.error;
    li.append(name, st, detail);
    return li;
  }));
  $("storage-card").hidden = false;
}

/** The overlay card: the node's address, its peers and their traffic, its routes. */
export function showNetwork(net) {
  if (!net || !Array.isArray(net.peers)) { $("net-card").hidden = true; return; }
  const alive = net.peers.filter((p) => p.connectionState === "alive").length;
  const kib = (n) => (n == null ? "–" : `${(n / 1024).toFixed(1)} KiB`);
  kpis($("net-kpis"), [
    ["Address", net.nodeIp], ["Peers", `${alive} / ${net.peers.length} up`], ["Routes", net.routes.length],
    ["TUN", net.tun && net.tun.name ? net.tun.name : "off"],
  ]);
  fillTable($("net-table"), ["Peer", "Type", "State", "Sent", "Received"], net.peers.map((p) => [
    `${p.endpoint.proto}://${p.endpoint.addr.socket}`, p.type, p.connectionState, kib(p.txBytes), kib(p.rxBytes),
  ]));
  $("net-card").hidden = false;
}

/** The cluster card: each live node of the cluster (shown only when there are several). */
export function showCluster(c) {
  const nodes = c?.nodes || [];
  if (nodes.length < 2) { $("cluster-card").hidden = true; return; } // a lone node: nothing to show
  fillTable($("cluster-table"), ["Node", "Address", "Agents", "Watts", "Headroom"], nodes.map((n) => [
    `${short(n.node_id)}${n.node_id === c.node_id ? " (this node)" : ""}`, n.url, (n.agents || []).length,
    fmtWatts(n.watts), n.over_budget ? "over budget" : fmtWatts(n.headroom_w),
  ]));
  $("cluster-card").hidden = false;
}

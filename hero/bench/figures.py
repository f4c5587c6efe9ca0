"""The run's figures, invariants and targets, computed from what the node reported and the client saw.

Energy figures are differences of the node's own cumulative counters (`/api/node/power`
`energy_joules` and each agent's `joules`) between two snapshots around the load, divided by
the wall time between them; the 5 s maximum comes from the node's 1 s DuckDB rows (and the power
windows sampled during the run, whichever is higher). Latencies are measured by the client.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from hero.bench.client import ANSWERED, FAILED, REFUSED, UNFINISHED
from hero.bench.run import RunRecord
from hero.bench.workload import CHAT
from hero.power.profiles import load_profile

CONSERVATION_TOLERANCE = 0.05
TARGETS = {"watts_per_agent": 0.25, "ttft_p99_s": 2.0}  # plus: node under budget, nothing lost


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def rolling_max(rows: list[dict[str, Any]], key: str, window_s: float = 5.0) -> float | None:
    """Max over the run of the mean of `key` across the 1 s rows in each trailing `window_s` (full windows only)."""
    best: float | None = None
    first = 0
    total = 0.0
    for i, row in enumerate(rows):
        total += row[key]
        while rows[first]["ts"] <= row["ts"] - window_s:
            total -= rows[first][key]
            first += 1
        count = i - first + 1
        if count >= window_s - 1:
            avg = total / count
            best = avg if best is None else max(best, avg)
    return best


def _hero_w(row: dict[str, Any]) -> float:
    return float(row["watts"] - row["other_w"])


def span_s(rec: RunRecord) -> float:
    return max(1e-9, rec.end.unix - rec.start.unix)


def agent_dynamic_watts(rec: RunRecord) -> list[float]:
    """Each active agent's own (dynamic) watts over the run: its joules counter's rise / the run's span."""
    span = span_s(rec)
    j0 = {a["agent_id"]: a["joules"] for a in rec.start.power["agents"]}
    j1 = {a["agent_id"]: a["joules"] for a in rec.end.power["agents"]}
    return [(j1.get(u.agent_id, 0.0) - j0.get(u.agent_id, 0.0)) / span for u in rec.users[: rec.config.agents]]


def compute(rec: RunRecord) -> dict[str, Any]:
    cfg, start, end, load = rec.config, rec.start, rec.end, rec.load
    n = cfg.agents
    span = span_s(rec)
    e0, e1 = start.power["energy_joules"], end.power["energy_joules"]
    d_e = {k: e1[k] - e0[k] for k in ("node", "idle", "agents", "runtime", "other")}
    dyn = agent_dynamic_watts(rec)
    idle_share = d_e["idle"] / span / n if n else 0.0
    hero_j = d_e["node"] - d_e["other"]

    results = load.results
    answered = [r for r in results if r.status == ANSWERED]
    n_answered = len(answered)
    per_msg = 1 / n_answered if n_answered else 0.0
    llm = [r for r in answered if r.kind == CHAT]
    ttft = [r.ttft_s for r in llm if r.ttft_s is not None]
    ttft_all = [r.ttft_s for r in answered if r.ttft_s is not None]
    total = [r.total_s for r in llm if r.total_s is not None]
    wake = [r.accept_s for r in answered if r.woke and r.accept_s is not None]
    accept_awake = [r.accept_s for r in answered if not r.woke and r.accept_s is not None]
    decode = [r.completion_tokens / (r.total_s - r.ttft_s) for r in llm
              if r.completion_tokens > 1 and r.total_s and r.ttft_s is not None and r.total_s > r.ttft_s]

    rows = rec.power_history.get("node", [])
    hist_max = rolling_max(rows, "watts")
    sampled = [s["node_watts"] for s in load.samples.power]
    node_max = max([x for x in (hist_max, max(sampled, default=None)) if x is not None], default=None)
    hero_rows = [{"ts": r["ts"], "hero": _hero_w(r)} for r in rows]
    hero_max = rolling_max(hero_rows, "hero")
    conservation = [s["conservation_error"] for s in load.samples.power]

    cpu0, cpu1 = start.power["cpu"], end.power["cpu"]
    parts0 = (cpu0.get("parts") or {}).get("seconds", {})
    parts1 = (cpu1.get("parts") or {}).get("seconds", {})
    parts = {k: parts1[k] - parts0.get(k, 0.0) for k in parts1}
    node_cpu = (end.node_cpu["user"] + end.node_cpu["system"]) - (start.node_cpu["user"] + start.node_cpu["system"])
    bench_cpu = end.bench_cpu_s - start.bench_cpu_s
    busy = end.machine_busy_s - start.machine_busy_s

    st0, st1 = start.status, end.status
    tokens = st1["llm"]["tokens_total"] - st0["llm"]["tokens_total"]
    fired = st1["runtime"]["timers_fired"] - st0["runtime"]["timers_fired"]
    reminders = load.reminders
    delivered = [r for r in reminders if r.arrived_s is not None]
    late = [r.arrived_s - r.due_s for r in delivered if r.arrived_s is not None]
    awake = [s["active"] for s in load.samples.status]

    sent = len(results)
    refused = sum(r.status == REFUSED for r in results)
    lost = sum(r.status == FAILED for r in results)
    unfinished = sum(r.status == UNFINISHED for r in results)
    errors = Counter((r.status, (r.error or "")[:120]) for r in results if r.status != ANSWERED)
    watts_mean = (mean(dyn) or 0.0) + idle_share
    watts_p95 = (percentile(dyn, 95) or 0.0) + idle_share
    ttft_p99 = percentile(ttft, 99)
    budget = float(end.power["budget_watts"])
    hist_audit, epochs = rec.history_audit, rec.epoch_audit
    profile = load_profile(cfg.profile)

    invariants = {
        "watts_conserved": bool(conservation) and max(conservation) <= CONSERVATION_TOLERANCE,
        "sent_is_answered_plus_refused": sent == n_answered + refused,
        "none_lost": lost == 0 and hist_audit.missing == 0 and hist_audit.extra == 0 and not hist_audit.errors,
        "single_activation": epochs.interleaved == 0 and not epochs.errors and epochs.agents == n,
        "reminders_delivered": len(delivered) == len(reminders) and fired == len(reminders),
        "history_seq_increasing": hist_audit.seq_errors == 0,
    }
    targets: dict[str, dict[str, Any]] = {
        "watts_per_agent": {"target": f"<= {TARGETS['watts_per_agent']} W (incl. idle share)", "value": watts_mean,
                            "met": watts_mean <= TARGETS["watts_per_agent"]},
        "node_watts_max_5s": {"target": f"<= {budget:g} W", "value": node_max,
                              "met": node_max is not None and node_max <= budget},
        "ttft_p99_s": {"target": f"<= {TARGETS['ttft_p99_s']} s", "value": ttft_p99,
                       "met": ttft_p99 is not None and ttft_p99 <= TARGETS["ttft_p99_s"]},
        "every_message_answered_or_refused": {"target": "none lost", "value": lost + unfinished,
                                              "met": invariants["none_lost"]
                                              and invariants["sent_is_answered_plus_refused"]},
    }
    return {
        "agents": n,
        "registered": cfg.registered,
        "duration_s": cfg.duration_s,
        "measured_s": span,
        "profile": cfg.profile,
        "budget_watts": budget,
        "modelled": end.power["source"] == "model",
        "power_source": end.power["source"],
        "host_speed": rec.host_speed,
        "profile_cores": profile.cores,
        "max_modelled_utilisation": min(1.0, (rec.machine["cpus"] or 1) * rec.host_speed / profile.cpu_speed
                                        / profile.cores),
        "rate_messages_per_agent_per_hour": cfg.rate,
        "seed": cfg.seed,
        "idle_after_s": cfg.idle_after_s,
        "watts_per_agent_mean": watts_mean,
        "watts_per_agent_p95": watts_p95,
        "watts_per_agent_dynamic_mean": mean(dyn),
        "watts_per_agent_dynamic_p95": percentile(dyn, 95),
        "idle_share_watts": idle_share,
        "idle_share_watts_over_hosted": end.power["idle_share_watts"],
        "hero_watts_per_agent": hero_j / span / n if n else None,
        "node_watts_mean": d_e["node"] / span,
        "hero_watts_mean": hero_j / span,
        "node_watts_max_5s": node_max,
        "hero_watts_max_5s": hero_max,
        "watts_split_mean": {k: v / span for k, v in d_e.items()},
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": ttft_p99,
        "ttft_all_p50_s": percentile(ttft_all, 50),
        "ttft_all_p99_s": percentile(ttft_all, 99),
        "reply_p50_s": percentile(total, 50),
        "reply_p99_s": percentile(total, 99),
        "wake_p50_s": percentile(wake, 50),
        "wake_p99_s": percentile(wake, 99),
        "wakes_measured": len(wake),
        "accept_awake_p50_s": percentile(accept_awake, 50),
        "accept_awake_p99_s": percentile(accept_awake, 99),
        "tokens_per_s": tokens / span,
        "decode_tokens_per_s_p50": percentile(decode, 50),
        "messages_sent": sent,
        "messages_answered": n_answered,
        "messages_refused": refused,
        "messages_lost": lost,
        "messages_unfinished": unfinished,
        "messages_not_answered_why": [{"status": st, "error": err, "count": n}
                                      for (st, err), n in errors.most_common(8)],
        "messages_llm": len(llm),
        "qss_bytes_per_message": (end.backend_bytes - start.backend_bytes) * per_msg,
        "energy_per_message_j": hero_j * per_msg,
        "energy_per_message_node_j": d_e["node"] * per_msg,
        "energy_per_message_agents_j": d_e["agents"] * per_msg,
        "cpu_s_per_message": {k: v * per_msg for k, v in sorted(parts.items())},
        "cpu_s": {"node_process": node_cpu, "bench_client": bench_cpu, "machine_busy": busy,
                  "others": max(0.0, busy - node_cpu - bench_cpu), "by_part": parts,
                  "ledger_agents": cpu1["agents_seconds"] - cpu0["agents_seconds"],
                  "ledger_llm": cpu1["llm_seconds"] - cpu0["llm_seconds"],
                  "ledger_runtime": cpu1["runtime_seconds"] - cpu0["runtime_seconds"]},
        "reminders_set": len(reminders),
        "reminders_fired": fired,
        "reminders_delivered": len(delivered),
        "reminder_late_p50_s": percentile(late, 50),
        "reminder_late_p99_s": percentile(late, 99),
        "agents_awake_max": max(awake, default=None),
        "agents_awake_mean": mean([float(a) for a in awake]),
        "activations": st1["runtime"]["activations"] - st0["runtime"]["activations"],
        "hibernations": st1["runtime"]["hibernations"] - st0["runtime"]["hibernations"],
        "conservation_error_max": max(conservation, default=None),
        "power_windows_checked": len(conservation),
        "phases_s": rec.phases_s,
        "node_rss_mb_start": start.node_rss_mb,
        "node_rss_mb_end": end.node_rss_mb,
        "node_rss_peak_mb": end.node_rss_peak_mb,
        "loadavg_start": list(start.loadavg),
        "loadavg_end": list(end.loadavg),
        "invariants": invariants,
        "targets": targets,
        "targets_met": all(t["met"] for t in targets.values()),
        "max_agents_within_budget": None,
    }

"""The run's report: a terminal summary, and with `--report DIR` a Markdown page, plots, the raw figures,
the node's DuckDB power history, its `/metrics` text and its log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from hero.bench.run import RunRecord
from hero.power.profiles import load_profile


def _f(value: Any, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def text_summary(s: dict[str, Any]) -> str:
    lines = [
        f"hero bench node: {s['agents']} active / {s['registered']} registered agents, {s['duration_s']:g} s, "
        f"profile {s['profile']} ({'modelled' if s['modelled'] else 'measured'} watts, host speed {s['host_speed']})",
        f"  watts per agent     mean {_f(s['watts_per_agent_mean'])} W, p95 {_f(s['watts_per_agent_p95'])} W "
        f"(own {_f(s['watts_per_agent_dynamic_mean'])} W + idle share {_f(s['idle_share_watts'])} W); "
        f"all-in Hero {_f(s['hero_watts_per_agent'])} W",
        f"  node watts          mean {_f(s['node_watts_mean'], digits=1)} W, "
        f"max 5 s {_f(s['node_watts_max_5s'], digits=1)} W of {s['budget_watts']:g} W "
        f"(Hero alone: max {_f(s['hero_watts_max_5s'], digits=1)} W)",
        f"  messages            sent {s['messages_sent']}, answered {s['messages_answered']}, "
        f"refused {s['messages_refused']}, lost {s['messages_lost']}, unfinished at the drain limit "
        f"{s['messages_unfinished']}",
        f"  time to first token p50 {_ms(s['ttft_p50_s'])}, p99 {_ms(s['ttft_p99_s'])}; full reply p50 "
        f"{_ms(s['reply_p50_s'])}, p99 {_ms(s['reply_p99_s'])}",
        f"  wake latency        p50 {_ms(s['wake_p50_s'])}, p99 {_ms(s['wake_p99_s'])} (n={s['wakes_measured']})",
        f"  tokens/s            {_f(s['tokens_per_s'], digits=1)} node-wide, "
        f"{_f(s['decode_tokens_per_s_p50'], digits=1)} per reply (p50)",
        f"  per message         {_f(s['energy_per_message_j'], ' J', 1)}, "
        f"{_f(s['qss_bytes_per_message'] / 1024, ' KiB', 1)} written to QSS",
        f"  reminders           set {s['reminders_set']}, fired {s['reminders_fired']}, "
        f"delivered {s['reminders_delivered']}",
        f"  node memory         {_f(s.get('node_rss_mb_start'), ' MB', 0)} → {_f(s.get('node_rss_mb_end'), ' MB', 0)} "
        f"(peak {_f(s.get('node_rss_peak_mb'), ' MB', 0)})",
        "  targets             " + ", ".join(f"{k} {'met' if t['met'] else 'MISSED'}" for k, t in s["targets"].items()),
        "  invariants          " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in s["invariants"].items()),
    ]
    if s.get("max_agents_within_budget") is not None:
        lines.append(f"  max agents within the targets: {s['max_agents_within_budget']}")
    return "\n".join(lines)


def _limits(rec: RunRecord, s: dict[str, Any]) -> list[str]:
    """Facts about where the time went, from the run's own numbers."""
    cpu = s["cpu_s"]
    span = s["measured_s"]
    cpus = rec.machine["cpus"] or 1
    busy = cpu["machine_busy"] / (span * cpus)
    parts = cpu["by_part"]
    node = max(1e-9, sum(parts.values()))
    llm = parts.get("llm", 0.0)
    queue = [x["queue_depth"] for x in rec.load.samples.status]
    out = [
        f"This machine's {cpus} CPUs were {busy:.0%} busy over the run: the node process used "
        f"{cpu['node_process']:.0f} CPU-s, the benchmark's own client {cpu['bench_client']:.0f} CPU-s and other "
        f"processes on the machine {cpu['others']:.0f} CPU-s (load average {s['loadavg_start'][0]:.1f} at the start, "
        f"{s['loadavg_end'][0]:.1f} at the end).",
        f"Of the node's sampled CPU, inference (llm) took {llm / node:.0%} ({llm / span:.2f} CPUs on average); "
        f"the LLM queue held up to {max(queue, default=0)} requests (mean {sum(queue) / max(1, len(queue)):.1f}).",
    ]
    if not s["targets"]["ttft_p99_s"]["met"] and s["ttft_p99_s"] is not None:
        out.append(
            f"Time to first token p99 is {s['ttft_p99_s']:.2f} s against 2 s: a reply waits in the LLM queue behind "
            f"the replies ahead of it, and this machine has {cpus} CPUs for the model, the node and the client; "
            "it is a figure of this machine and of the LLM scheduler's throughput, not of the watts."
        )
    if s["modelled"]:
        out.append(
            f"Watts are modelled: the profile has {s['profile_cores']} cores, this machine {cpus}, so this machine at "
            f"100 % busy is only {s['max_modelled_utilisation']:.0%} of the profile's hardware: the node cannot reach "
            "its budget here, whatever the load."
        )
    return out


def markdown(rec: RunRecord, s: dict[str, Any], search: Any, command: str) -> str:
    profile = load_profile(rec.config.profile)
    m = rec.machine
    dirty = m.get("uncommitted_files") or []
    t = s["targets"]
    how_speed = "measured now with the calibration workload" if rec.host_speed_measured else "given"
    client_ms = s["cpu_s"]["bench_client"] / max(1, s["messages_answered"]) * 1000
    hz = ((rec.end.power.get("cpu") or {}).get("parts") or {}).get("sample_hz") or rec.config.cpu_parts_hz
    head = [
        f"# Hero node benchmark: {s['agents']} active / {s['registered']} registered agents on {s['profile']}",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(rec.start.unix))}, {s['duration_s']:g} s of load "
        f"({s['measured_s']:.0f} s measured, including the drain). Command:",
        "",
        f"```\n{command}\n```",
        "",
        "## Targets",
        "",
        "| figure | measured | target | met |",
        "|---|---|---|---|",
        f"| watts per agent (own + idle share), mean | {_f(s['watts_per_agent_mean'], ' W')} | ≤ 0.25 W | "
        f"{_f(t['watts_per_agent']['met'])} |",
        f"| node watts, max 5 s average | {_f(s['node_watts_max_5s'], ' W', 1)} | ≤ {s['budget_watts']:g} W | "
        f"{_f(t['node_watts_max_5s']['met'])} |",
        f"| time to first token, p99 (model replies) | {_ms(s['ttft_p99_s'])} | ≤ 2 s | {_f(t['ttft_p99_s']['met'])} |",
        f"| messages neither answered nor refused (lost {s['messages_lost']}, unfinished at the drain limit "
        f"{s['messages_unfinished']}) | {s['messages_lost'] + s['messages_unfinished']} | 0 | "
        f"{_f(t['every_message_answered_or_refused']['met'])} |",
        "",
        "## Honest modelling",
        "",
        f"- **Machine**: {m['cpus']} CPUs ({m['cpu_model'] or 'unknown model'}), {m['ram_gb']} GB RAM, Linux "
        f"{m['kernel']}, Python {m['python']}; shared with other work (load average {s['loadavg_start'][0]:.1f} → "
        f"{s['loadavg_end'][0]:.1f}).",
        f"- **Source**: commit {m.get('commit')}" + (
            f", with uncommitted changes in {len(dirty)} files of hero/ and agents/ (other engineers' work in "
            f"progress: {', '.join(dirty[:8])}{' …' if len(dirty) > 8 else ''})." if dirty else "."),
        f"- **Profile**: `{profile.name}` ({profile.source}): {profile.cores} cores, idle {profile.idle_w:g} W, "
        f"max {profile.max_w:g} W, budget {profile.budget_w:g} W, cpu_speed {profile.cpu_speed:g}"
        + (", curve " + ", ".join(f"{u:g}→{w:g} W" for u, w in profile.curve) if profile.curve else "") + ".",
        f"- **Power source**: `{s['power_source']}`. "
        + ("No RAPL here, so node watts are the profile's model: " if s["modelled"] else "Measured by the node: ")
        + f"utilisation u = this machine's busy CPU-seconds × host_speed / cpu_speed ({rec.host_speed:g} / "
        f"{profile.cpu_speed:g}, host_speed {how_speed}) "
        f"/ (Δt × {profile.cores} cores), node W = curve(u); agents, runtime and other processes share the "
        "power above idle by CPU time (hero/power).",
        "- **Measured**: every latency, message count, token count, byte count and CPU-second. **Modelled**: every "
        "watt and joule" + (" (converted from measured CPU time as above)." if s["modelled"] else " (RAPL)."),
        "- `other` watts are processes that are not the node: on this machine the benchmark's own client and other "
        "work; on an edge box users are remote. The node's governor counts them (conservative); the *Hero* figures "
        "leave them out.",
        "",
        "## Where the time went",
        "",
        *[f"- {line}" for line in _limits(rec, s)],
        "",
        "| part | CPU ms per answered message |",
        "|---|---|",
        *[f"| {k} | {v * 1000:.1f} |" for k, v in sorted(s["cpu_s_per_message"].items(), key=lambda kv: -kv[1])],
        f"| *bench client (other process)* | {client_ms:.1f} |",
        "",
        f"Parts are sampled in the node (`hero/power/parts.py`, {hz:g} Hz, per-thread schedstat charged to the code "
        "the thread is in): `web` is HTTP, auth and JSON; `store` is QSS (sealing, erasure coding, signing); `runtime` "
        "is agent turns and skills; `loop` is asyncio itself; `native` is non-Python threads outside inference.",
        "",
    ]
    body = [
        "## All figures",
        "",
        "| figure | value |",
        "|---|---|",
        *[f"| {k} | {_f(v) if not isinstance(v, dict | list) else '`' + json.dumps(v, default=str) + '`'} |"
          for k, v in s.items() if k not in ("targets", "invariants", "cpu_s_per_message", "search")],
        "",
        "## Invariants",
        "",
        "| check | holds |",
        "|---|---|",
        *[f"| {k} | {_f(v)} |" for k, v in s["invariants"].items()],
        "",
        f"History audit: {rec.history_audit}. Epoch audit: {rec.epoch_audit}.",
        "",
        "## Workload",
        "",
        *[f"- {k}: {v}" for k, v in rec.workload.describe().items()],
        "",
        "## Plots",
        "",
        "![node watts](node_watts.png)",
        "![per-agent watts](agent_watts.png)",
        "![latency CDFs](latency_cdf.png)",
        "![agents awake](agents_awake.png)",
        "![CPU by part](cpu_by_part.png)",
        "",
    ]
    if search is not None:
        body += [
            "## Search: the largest agent count within the targets",
            "",
            f"Bisection on {search.duration_s:g} s runs (same seed and rate, fresh node on a copy of one seeded data "
            f"dir): **{search.best}** agents"
            + (f"; the smallest failing count missed {', '.join(search.bound_by)}." if search.bound_by else "."),
            "",
            "| agents | met | missed | TTFT p99 | W/agent | node max 5 s | model replies | lost |",
            "|---|---|---|---|---|---|---|---|",
            *[f"| {p.agents} | {_f(p.met)} | {', '.join(p.missed) or '–'} | {_ms(p.ttft_p99_s)} | "
              f"{p.watts_per_agent_mean:.3f} | {_f(p.node_watts_max_5s, ' W', 1)} | {p.messages_llm} | "
              f"{p.messages_lost} |"
              for p in search.probes],
            "",
        ]
    body += ["Files: `summary.json` (these figures), `power.duckdb` (the node's power history), "
             "`metrics.txt` (its /metrics at the end), `node.log` (what it printed).", ""]
    return "\n".join(head + body)


def write_report(directory: Path, rec: RunRecord, summary: dict[str, Any], search: Any, command: str) -> None:
    """Blocking: run it in a thread."""
    from hero.bench.plots import write_plots

    directory.mkdir(parents=True, exist_ok=True)
    write_plots(directory, rec, summary)
    (directory / "README.md").write_text(markdown(rec, summary, search, command))
    (directory / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (directory / "metrics.txt").write_text(rec.metrics_text)
    (directory / "node.log").write_text("\n".join(rec.node_output) + "\n")

"""The report's PNG plots (matplotlib, Agg: no display needed). Small files: 7×3.2 in at 100 dpi."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hero.bench.figures import agent_dynamic_watts
from hero.bench.run import RunRecord
from hero.bench.workload import CHAT

SIZE = (7.0, 3.2)
DPI = 100
PLOTS = ("node_watts.png", "agent_watts.png", "latency_cdf.png", "agents_awake.png", "cpu_by_part.png")


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def node_watts(rec: RunRecord, summary: dict[str, Any], path: Path) -> None:
    rows = rec.power_history.get("node", [])
    fig, ax = plt.subplots(figsize=SIZE)
    t0 = rec.start.unix
    if rows:
        t = [r["ts"] - t0 for r in rows]
        node = [r["watts"] for r in rows]
        rolled = [sum(node[max(0, i - 4): i + 1]) / len(node[max(0, i - 4): i + 1]) for i in range(len(node))]
        ax.plot(t, node, lw=0.6, color="0.6", label="node, 1 s")
        ax.plot(t, rolled, lw=1.4, color="C0", label="node, 5 s average")
        ax.plot(t, [r["watts"] - r["other_w"] for r in rows], lw=1.0, color="C2",
                label="Hero (idle + agents + runtime)")
        ax.plot(t, [r["idle_w"] for r in rows], lw=0.8, ls=":", color="0.3", label="idle")
    else:
        samples = rec.load.samples.power
        ax.plot([s["t"] for s in samples], [s["node_watts"] for s in samples], color="C0", label="node, 5 s window")
    ax.axhline(summary["budget_watts"], color="C3", ls="--", lw=1.2, label=f"budget {summary['budget_watts']:g} W")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("watts (" + ("modelled" if summary["modelled"] else "measured") + ")")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Node watts, {summary['agents']} active / {summary['registered']} registered, {summary['profile']}")
    ax.legend(fontsize=7, loc="best", ncol=2)
    _save(fig, path)


def agent_watts(rec: RunRecord, summary: dict[str, Any], path: Path) -> None:
    share = summary["idle_share_watts"]
    values = [w + share for w in agent_dynamic_watts(rec)]
    fig, ax = plt.subplots(figsize=SIZE)
    ax.hist(values, bins=40, color="C0", alpha=0.8)
    mean_w = summary["watts_per_agent_mean"]
    ax.axvline(mean_w, color="C1", lw=1.2, label=f"mean {mean_w:.3f} W")
    ax.axvline(summary["watts_per_agent_p95"], color="C4", lw=1.2, label=f"p95 {summary['watts_per_agent_p95']:.3f} W")
    ax.axvline(0.25, color="C3", ls="--", lw=1.2, label="target 0.25 W")
    ax.set_xlabel(f"watts per active agent over the run (own + idle share {share:.3f} W)")
    ax.set_ylabel("agents")
    ax.set_title("Per-agent watts")
    ax.legend(fontsize=7)
    _save(fig, path)


def latency_cdf(rec: RunRecord, summary: dict[str, Any], path: Path) -> None:
    answered = [r for r in rec.load.results if r.status == "answered"]
    series = {
        "time to first token (model replies)": [r.ttft_s for r in answered if r.kind == CHAT and r.ttft_s],
        "full reply (model replies)": [r.total_s for r in answered if r.kind == CHAT and r.total_s],
        "wake (hibernated → accepted)": [r.accept_s for r in answered if r.woke and r.accept_s],
        "skill replies, full": [r.total_s for r in answered if r.kind != CHAT and r.total_s],
    }
    fig, ax = plt.subplots(figsize=SIZE)
    for label, values in series.items():
        xs = sorted(v for v in values if v is not None)
        if xs:
            ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=f"{label} (n={len(xs)})")
    ax.axvline(2.0, color="C3", ls="--", lw=1.0, label="TTFT p99 target 2 s")
    ax.axhline(0.99, color="0.5", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("seconds")
    ax.set_ylabel("fraction of messages")
    ax.set_title("Latency CDFs (client side)")
    ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def agents_awake(rec: RunRecord, summary: dict[str, Any], path: Path) -> None:
    samples = rec.load.samples.status
    fig, (ax, queue) = plt.subplots(2, 1, figsize=(SIZE[0], SIZE[1] * 1.4), sharex=True,
                                    gridspec_kw={"height_ratios": [2, 1]})
    t = [s["t"] for s in samples]
    ax.plot(t, [s["active"] for s in samples], color="C0", label="awake (in memory)")
    ax.set_ylabel("agents awake", color="C0")
    ax.set_ylim(bottom=0)
    asleep = ax.twinx()
    asleep.plot(t, [s["hibernated"] for s in samples], color="C2", lw=1.0, label="hibernated")
    asleep.set_ylabel("agents hibernated", color="C2")
    asleep.set_ylim(bottom=0, top=max([s["hibernated"] for s in samples], default=1) * 1.05 + 1)
    ax.set_title(f"Agents awake vs hibernated ({summary['agents']} active users of {summary['registered']})")
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = asleep.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, fontsize=7, loc="lower right")
    queue.plot(t, [s["queue_depth"] for s in samples], color="C1", lw=0.9, label="waiting")
    if any(s.get("running") is not None for s in samples):
        queue.plot(t, [s.get("running") or 0 for s in samples], color="C4", lw=0.9, label="in the batch")
        queue.legend(fontsize=7, loc="upper right")
    queue.set_ylabel("LLM requests", fontsize=8)
    queue.set_ylim(bottom=0)
    queue.set_xlabel("seconds into the run")
    _save(fig, path)


def cpu_by_part(rec: RunRecord, summary: dict[str, Any], path: Path) -> None:
    per = {k: v * 1000 for k, v in summary["cpu_s_per_message"].items() if v > 0}
    cpu = summary["cpu_s"]
    n = max(1, summary["messages_answered"])
    per["bench client (other process)"] = cpu["bench_client"] / n * 1000
    per["other processes"] = cpu["others"] / n * 1000
    names = sorted(per, key=lambda k: per[k])
    fig, ax = plt.subplots(figsize=SIZE)
    ax.barh(names, [per[k] for k in names], color="C0")
    ax.set_xlabel("CPU milliseconds per answered message")
    ax.set_title("Where the CPU went per message (node parts sampled in the node)", fontsize=9)
    _save(fig, path)


def write_plots(directory: Path, rec: RunRecord, summary: dict[str, Any]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, draw in zip(PLOTS, (node_watts, agent_watts, latency_cdf, agents_awake, cpu_by_part), strict=True):
        path = directory / name
        draw(rec, summary, path)
        out.append(path)
    return out

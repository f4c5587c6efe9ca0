"""`--search`: the largest active-agent count that still meets every target, by bisection on short runs.

The main run's count is the first probe. While it passes, the count doubles (up to `--registered`);
once a count fails, the search bisects between the largest pass and the smallest fail until they are
within `resolution` of each other. Every probe is a full run (fresh node, same seed, same rate,
`--search-duration` seconds, replies waited for at most as long again) on a copy of one seeded data
dir, so the registered agents are the same hibernated population each time. A probe passes when
every target in `figures.TARGETS` is met and nothing is lost. Short runs have few messages at small
counts, so each probe reports its sample size.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hero.bench.figures import compute
from hero.bench.run import BenchConfig, prepare_template, run_bench

MAX_PROBES = 8


@dataclass(frozen=True)
class Probe:
    agents: int
    met: bool
    missed: tuple[str, ...]
    ttft_p99_s: float | None
    watts_per_agent_mean: float
    node_watts_max_5s: float | None
    messages_llm: int
    messages_lost: int
    duration_s: float


@dataclass
class SearchResult:
    best: int  # 0 when not even the smallest count probed met the targets
    duration_s: float
    probes: list[Probe] = field(default_factory=list)
    bound_by: tuple[str, ...] = ()  # the targets the smallest failing count missed

    def to_json(self) -> dict[str, Any]:
        return {"best": self.best, "duration_s": self.duration_s, "bound_by": list(self.bound_by),
                "probes": [asdict(p) for p in self.probes]}


def probe_of(summary: dict[str, Any], duration_s: float) -> Probe:
    missed = tuple(name for name, t in summary["targets"].items() if not t["met"])
    return Probe(summary["agents"], not missed, missed, summary["ttft_p99_s"], summary["watts_per_agent_mean"],
                 summary["node_watts_max_5s"], summary["messages_llm"], summary["messages_lost"], duration_s)


def resolution(hi: int) -> int:
    return max(4, hi // 8)


def next_count(lo: int, hi: int | None, cap: int) -> int | None:
    """The next count to probe, or None when the search is done."""
    if hi is None:
        return None if lo >= cap else min(cap, max(1, lo * 2))
    if hi - lo <= resolution(hi):
        return None
    return (lo + hi) // 2


async def search_max_agents(cfg: BenchConfig, duration_s: float, *, first: dict[str, Any] | None = None,
                            log: Callable[[str], None] | None = None) -> SearchResult:
    result = SearchResult(0, duration_s)
    lo, hi = 0, None
    if first is not None:
        probe = probe_of(first, cfg.duration_s)
        result.probes.append(probe)
        lo, hi = (probe.agents, None) if probe.met else (0, probe.agents)
        if not probe.met:
            result.bound_by = probe.missed
    with tempfile.TemporaryDirectory(prefix="hero-search-") as tmp:
        template = Path(tmp) / "template"
        await prepare_template(cfg, template)
        count = next_count(lo, hi, cfg.registered) if first is not None else cfg.agents
        while count is not None and len(result.probes) < MAX_PROBES:
            run_cfg = replace(cfg, agents=count, duration_s=duration_s, template=template, data_dir=None,
                              keep_data=False, keep_history=None, progress=False,
                              drain_s=min(cfg.drain_s, max(60.0, duration_s)))
            summary = compute(await run_bench(run_cfg))
            probe = probe_of(summary, duration_s)
            result.probes.append(probe)
            if log is not None:
                verdict = "meets the targets" if probe.met else f"misses {', '.join(probe.missed)}"
                log(f"search: {count} agents {verdict} (TTFT p99 {probe.ttft_p99_s}, "
                    f"{probe.watts_per_agent_mean:.3f} W/agent, {probe.messages_llm} model replies)")
            if probe.met:
                lo = count
            else:
                hi = count
                result.bound_by = probe.missed
            count = next_count(lo, hi, cfg.registered)
        shutil.rmtree(template, ignore_errors=True)
    result.best = lo
    return result

"""`--search`: the largest active-agent count that still meets every target, by bisection on short runs.

The targets pull two ways. Watts per agent (with the idle share) falls as agents are added: below
`idle_w / 0.25 W` agents (48 on zos-edge-60w) the idle share alone misses it, so the search never
probes below that floor, and a probe that misses only that target says the window lies above it.
Every other target (time to first token, the node's budget, nothing lost) gets harder with more
agents. The main run's count is the first probe. While probes pass, the count doubles (up to
`--registered`); once one fails an upper target, the search bisects between the largest pass (or the
floor) and the smallest fail until they are within `resolution` of each other; a probe that misses
both kinds shows that no count meets all targets, and the search stops.

Every probe is a full run (fresh node, same seed, same rate, `--search-duration` seconds, replies
waited for at most as long again) on a copy of one seeded data dir, so the registered agents are the
same hibernated population each time. A probe passes when
every target in `figures.TARGETS` is met and nothing is lost. Short runs have few messages at small
counts, so each probe reports its sample size.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hero.bench.figures import TARGETS, compute
from hero.bench.run import BenchConfig, prepare_template, run_bench
from hero.power.profiles import load_profile

MAX_PROBES = 8
LOWER = frozenset({"watts_per_agent"})  # targets missed by too few agents (the idle share)


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


def floor_count(idle_w: float) -> int:
    """The fewest agents whose idle share alone (idle_w / n) is within the per-agent watts target."""
    return math.ceil(idle_w / TARGETS["watts_per_agent"])


def next_count(lo: int, hi: int | None, cap: int) -> int | None:
    """The next count to probe between `lo` (passed, or the floor) and `hi` (failed), or None when done."""
    if hi is not None and lo >= hi:
        return None  # the window is empty
    if hi is None:
        return None if lo >= cap else min(cap, max(1, lo * 2))
    if hi - lo <= resolution(hi):
        return None
    return (lo + hi) // 2


async def search_max_agents(cfg: BenchConfig, duration_s: float, *, first: dict[str, Any] | None = None,
                            log: Callable[[str], None] | None = None) -> SearchResult:
    result = SearchResult(0, duration_s)
    state = _Bounds(min(cfg.registered, floor_count(load_profile(cfg.profile).idle_w)))
    if first is not None:
        probe = probe_of(first, cfg.duration_s)
        result.probes.append(probe)
        state.add(probe, result)
    with tempfile.TemporaryDirectory(prefix="hero-search-") as tmp:
        template = Path(tmp) / "template"
        count = next_count(state.lo, state.hi, cfg.registered) if first is not None else cfg.agents
        if count is not None:
            await prepare_template(cfg, template)
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
            state.add(probe, result)
            count = next_count(state.lo, state.hi, cfg.registered)
        shutil.rmtree(template, ignore_errors=True)
    result.best = state.best
    return result


class _Bounds:
    """What the probes so far say: the largest pass, the floor of the window, the smallest upper fail."""

    def __init__(self, floor: int) -> None:
        self.best = 0
        self.floor = floor
        self.hi: int | None = None

    @property
    def lo(self) -> int:
        return max(self.best, self.floor)

    def add(self, probe: Probe, result: SearchResult) -> None:
        missed = set(probe.missed)
        if probe.met:
            self.best = max(self.best, probe.agents)
            return
        if missed & LOWER:
            self.floor = max(self.floor, probe.agents + 1)  # the window, if any, lies above
        if missed - LOWER:
            self.hi = probe.agents if self.hi is None else min(self.hi, probe.agents)
            result.bound_by = tuple(sorted(missed - LOWER))

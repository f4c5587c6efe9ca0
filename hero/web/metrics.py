"""Prometheus exposition of the node's power and its model, in Kepler's naming style (`GET /metrics`).

The collector reads a snapshot of the power part (`hero.seams.power.PowerSnapshots`) and
the model's figures (`hero.seams.llm.LLMStatus`) at scrape time, so nothing is updated
per tick for Prometheus' sake and idle agents add no work. Counters
(`*_joules_total`, `*_cpu_seconds_total`) make the scrape interval
irrelevant; every `*_watts` is a mean over the same last few seconds (the
power window, the governor's), so idle + agents + runtime + other = node. Three series per agent, no more:
per-agent status lives in the `hero_agents{status}` count instead.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hero.seams.llm import LLMStatus
from hero.seams.power import PowerSnapshots


class PowerCollector(Collector):
    def __init__(self, power: PowerSnapshots, llm: LLMStatus | None) -> None:
        self.power = power
        self.llm = llm

    def collect(self) -> Iterator[Metric]:
        s = self.power.snapshot()
        source = s.source

        g = GaugeMetricFamily("hero_node_watts", "Node power at the wall, power-window mean", labels=["source"])
        g.add_metric([source], s.node_watts)
        yield g
        yield GaugeMetricFamily("hero_node_idle_watts", "Profile idle power (not attributed to agents)", s.idle_watts)
        yield GaugeMetricFamily("hero_node_budget_watts", "Power budget", s.budget_watts)
        yield GaugeMetricFamily("hero_node_headroom_watts", "Budget minus the governor's 5 s average", s.headroom_watts)
        yield GaugeMetricFamily(
            "hero_node_runtime_watts", "Dynamic power of runtime work no agent caused", s.runtime_watts
        )
        yield GaugeMetricFamily(
            "hero_node_other_watts", "Dynamic power of other processes on the machine", s.other_watts
        )
        yield GaugeMetricFamily("hero_node_cpu_usage_ratio", "Utilisation of the profiled hardware", s.utilisation)
        c = CounterMetricFamily("hero_node_joules", "Node energy", labels=["source"])
        c.add_metric([source], s.node_joules)
        yield c
        yield GaugeMetricFamily(
            "hero_power_conservation_error_ratio",
            "|idle + agents + runtime + other - node| / node, last tick",
            s.conservation_error,
        )
        yield GaugeMetricFamily(
            "hero_loop_wait_ratio",
            "Share of the last tick the event-loop thread waited for a CPU (kernel schedstat)",
            s.loop_wait_ratio,
        )
        yield CounterMetricFamily(
            "hero_power_conservation_violations",
            "Ticks whose split missed the node by > 5 %",
            s.conservation_violations,
        )

        watts = GaugeMetricFamily("hero_agent_watts", "Agent dynamic power, power-window mean", labels=["agent"])
        joules = CounterMetricFamily("hero_agent_joules", "Agent dynamic energy", labels=["agent"])
        cpu = CounterMetricFamily("hero_agent_cpu_seconds", "Agent CPU time (loop + LLM)", labels=["agent"])
        for agent in s.agents:
            watts.add_metric([agent.agent_id], agent.watts)
            joules.add_metric([agent.agent_id], agent.joules)
            cpu.add_metric([agent.agent_id], agent.cpu_seconds)
        yield watts
        yield joules
        yield cpu

        statuses = GaugeMetricFamily("hero_agents", "Agents hosted on this node by status", labels=["status"])
        for status, n in sorted(s.agents_by_status.items()):
            statuses.add_metric([status], n)
        yield statuses

        level = GaugeMetricFamily("hero_governor_level", "1 for the governor's current level", labels=["level"])
        for name in ("normal", "busy", "constrained"):
            level.add_metric([name], 1.0 if s.governor_level == name else 0.0)
        yield level
        deferred = CounterMetricFamily("hero_governor_deferred", "Work refused with 429", labels=["reason"])
        for reason, n in sorted(s.deferred.items()):
            deferred.add_metric([reason], n)
        yield deferred
        if self.llm is not None:
            yield from _llm_metrics(self.llm)


def _llm_metrics(llm: LLMStatus) -> Iterator[Metric]:
    """The shared model's knobs and figures (hero.scheduler.llm.LLMService.figures)."""
    f = llm.figures()
    yield GaugeMetricFamily("hero_llm_threads", "LLM inference threads", llm.threads)
    yield GaugeMetricFamily("hero_llm_loaded", "1 if the model is in memory", 1.0 if llm.loaded else 0.0)
    if llm.last_load_seconds is not None:
        yield GaugeMetricFamily("hero_llm_load_seconds", "Last model (re)load time", llm.last_load_seconds)
    yield GaugeMetricFamily("hero_llm_parallel", "Sequences the governor lets decode at once", f["parallel"])
    yield GaugeMetricFamily("hero_llm_running", "Requests decoding now (the batch)", f["running"])
    yield GaugeMetricFamily("hero_llm_queue_depth", "Requests waiting for a slot", llm.queue_depth)
    yield GaugeMetricFamily("hero_llm_batch_tokens", "Tokens in the last decode step", f["batch_tokens"])
    yield GaugeMetricFamily("hero_llm_kv_cells_used", "KV cache cells holding conversations", f["kv_cells_used"])
    yield GaugeMetricFamily("hero_llm_kv_cells", "KV cache cells in all", f["kv_cells_total"])
    yield GaugeMetricFamily(
        "hero_llm_time_to_first_token_seconds", "Queueing to first token, moving average", f["time_to_first_token_s"]
    )
    yield CounterMetricFamily("hero_llm_tokens", "Tokens generated", llm.tokens_total)
    yield CounterMetricFamily("hero_llm_prompt_tokens", "Prompt tokens processed", f["prompt_tokens_total"])
    yield CounterMetricFamily(
        "hero_llm_prompt_tokens_reused", "Prompt tokens reused from the KV cache", f["prompt_tokens_reused_total"]
    )
    yield CounterMetricFamily("hero_llm_requests", "Completions queued", llm.requests_total)
    yield CounterMetricFamily("hero_llm_rejected", "Completions refused: queue full (429)", f["rejected_total"])
    yield CounterMetricFamily("hero_llm_decode_seconds", "Wall time spent in llama_decode", f["decode_seconds_total"])


def make_registry(power: PowerSnapshots, llm: LLMStatus | None) -> CollectorRegistry:
    """A registry of the node's collector alone (no process or platform defaults: one node, one exposition)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PowerCollector(power, llm))
    return registry

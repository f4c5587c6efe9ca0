"""Prometheus exposition of the power ledger, in Kepler's naming style.

A custom collector reads the ledger at scrape time, so nothing is updated
per tick for Prometheus' sake and idle agents add no work. Counters
(`*_joules_total`, `*_cpu_seconds_total`) make the scrape interval
irrelevant; every `*_watts` is a mean over the same last few seconds (the
power window, the governor's), so idle + agents + runtime + other = node. Three series per agent, no more:
per-agent state lives in the `hero_agents{state}` count instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hero.power.service import PowerService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class PowerCollector(Collector):
    def __init__(self, service: PowerService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        ledger = svc.ledger
        last = ledger.last
        win = svc.window.figures()
        source = svc.meter.source

        g = GaugeMetricFamily("hero_node_watts", "Node power at the wall, power-window mean", labels=["source"])
        g.add_metric([source], win.node_w)
        yield g
        yield GaugeMetricFamily("hero_node_idle_watts", "Profile idle power (not attributed to agents)", ledger.idle_w)
        yield GaugeMetricFamily("hero_node_budget_watts", "Power budget", svc.profile.budget_w)
        yield GaugeMetricFamily(
            "hero_node_headroom_watts",
            "Budget minus the governor's 5 s average",
            svc.profile.budget_w - svc.governor.status.avg_w,
        )
        yield GaugeMetricFamily(
            "hero_node_runtime_watts", "Dynamic power of runtime work no agent caused", win.runtime_w
        )
        yield GaugeMetricFamily(
            "hero_node_other_watts", "Dynamic power of other processes on the machine", win.other_w
        )
        yield GaugeMetricFamily(
            "hero_node_cpu_usage_ratio", "Utilisation of the profiled hardware", win.utilisation
        )
        c = CounterMetricFamily("hero_node_joules", "Node energy", labels=["source"])
        c.add_metric([source], ledger.node_joules)
        yield c
        yield GaugeMetricFamily(
            "hero_power_conservation_error_ratio",
            "|idle + agents + runtime + other - node| / node, last tick",
            last.conservation_error if last else 0.0,
        )
        yield GaugeMetricFamily(
            "hero_loop_wait_ratio",
            "Share of the last tick the event-loop thread waited for a CPU (kernel schedstat)",
            ledger.loop_wait_ratio,
        )
        yield CounterMetricFamily(
            "hero_power_conservation_violations",
            "Ticks whose split missed the node by > 5 %",
            ledger.conservation_violations,
        )

        watts = GaugeMetricFamily("hero_agent_watts", "Agent dynamic power, power-window mean", labels=["agent"])
        joules = CounterMetricFamily("hero_agent_joules", "Agent dynamic energy", labels=["agent"])
        cpu = CounterMetricFamily("hero_agent_cpu_seconds", "Agent CPU time (loop + LLM)", labels=["agent"])
        for acct in ledger.accounts():
            watts.add_metric([acct.agent_id], win.agents_w.get(acct.agent_id, 0.0))
            joules.add_metric([acct.agent_id], acct.joules)
            cpu.add_metric([acct.agent_id], acct.cpu_s_total)
        yield watts
        yield joules
        yield cpu

        statuses = GaugeMetricFamily("hero_agents", "Agents hosted on this node by status", labels=["status"])
        for status, n in sorted(svc.agents_by_status().items()):
            statuses.add_metric([status], n)
        yield statuses

        gov = svc.governor.status
        level = GaugeMetricFamily("hero_governor_level", "1 for the governor's current level", labels=["level"])
        for name in ("normal", "busy", "constrained"):
            level.add_metric([name], 1.0 if gov.level == name else 0.0)
        yield level
        deferred = CounterMetricFamily("hero_governor_deferred", "Work refused with 429", labels=["reason"])
        for reason, n in sorted(gov.deferred.items()):
            deferred.add_metric([reason], n)
        yield deferred
        llm = svc.llm
        if llm is not None:
            yield from _llm_metrics(llm)


def _llm_metrics(llm: Any) -> Iterator[Metric]:
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


def make_registry(service: PowerService) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PowerCollector(service))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

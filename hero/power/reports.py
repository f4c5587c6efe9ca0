"""What the power part reports: the node's and each agent's JSON figures, their English notes, the `/metrics`
snapshot.

Every watts figure is a mean over the same power window (`hero.power.window`), so
idle + agents + runtime + other adds up to the node; energy and CPU are totals since
the node started (Wh today since 00:00 UTC). `PowerService` owns the parts and knows
which agents are hosted; this module only reads them.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import Any

from hero.power.governor import Governor
from hero.power.ledger import CONSERVATION_TOLERANCE, Ledger
from hero.power.meter import NodeMeter
from hero.power.parts import PartSampler
from hero.power.profiles import HardwareProfile
from hero.power.window import PowerWindow
from hero.seams.llm import LLMStatus
from hero.seams.power import AgentEnergy, PowerSnapshot

NOTE = (
    "Per-agent watts are an allocation: node power above idle is split by measured CPU time "
    "(event-loop steps and LLM inference); idle power is shown separately and as an equal share. "
    "Every watts figure is a mean over the same last window_s seconds, so idle + agents + runtime + other = node."
)


def throttle_reason(share_w: float) -> str:
    return f"the node is at its power budget and your agent is above its fair share ({share_w:.2f} W)"


class Reports:
    """The reports of one node's power, read from its meter, ledger, governor and window."""

    def __init__(
        self,
        profile: HardwareProfile,
        meter: NodeMeter,
        ledger: Ledger,
        governor: Governor,
        window: PowerWindow,
        parts: PartSampler | None,
    ) -> None:
        self.profile = profile
        self.meter = meter
        self.ledger = ledger
        self.governor = governor
        self.window = window
        self.parts = parts

    def node(
        self,
        statuses: Mapping[str, str],
        by_status: Mapping[str, int],
        llm: LLMStatus | None,
        tick_seconds: float,
    ) -> dict[str, Any]:
        """The node's power split over the hosted agents' `statuses`."""
        ledger = self.ledger
        last = ledger.last
        win = self.window.figures()
        agents: list[dict[str, Any]] = []
        for agent_id, status in statuses.items():
            acct = ledger.get(agent_id)
            agents.append(
                {
                    "agent_id": agent_id,
                    "watts": win.agents_w.get(agent_id, 0.0),
                    "joules": acct.joules if acct else 0.0,
                    "wh_today": ledger.joules_today(agent_id) / 3600.0,
                    "cpu_seconds": acct.cpu_s_total if acct else 0.0,
                    "status": status,
                }
            )
        agents.sort(key=lambda a: a["watts"], reverse=True)
        hosted = len(statuses)
        out: dict[str, Any] = {
            "ts": win.end_unix if last else time.time(),
            "window_s": win.seconds,
            "ticks": ledger.ticks,
            "source": self.meter.source,
            "rapl": self.meter.rapl_reason,
            "node_watts": win.node_w,
            "idle_watts": win.idle_w,
            "agents_watts": win.agents_total_w,
            "runtime_watts": win.runtime_w,
            "other_watts": win.other_w,
            "budget_watts": self.profile.budget_w,
            "target_watts": self.governor.target_w,
            "headroom_watts": self.profile.budget_w - win.node_w,
            "utilisation": win.utilisation,
            "idle_share_watts": win.idle_w / hosted if hosted else 0.0,
            "conservation": {
                "error": win.conservation_error,
                "ok": win.conservation_error <= CONSERVATION_TOLERANCE,
                "violations": ledger.conservation_violations,  # ticks whose own split missed
            },
            "energy_joules": {
                "node": ledger.node_joules,
                "idle": ledger.idle_joules,
                "agents": sum(a.joules for a in ledger.accounts()),
                "runtime": ledger.runtime_joules,
                "other": ledger.other_joules,
            },
            "agents_by_status": dict(by_status),
            "agents": agents,
            "governor": self.governor.describe(),
            "profile": {
                "name": self.profile.name,
                "cores": self.profile.cores,
                "idle_w": self.profile.idle_w,
                "max_w": self.profile.max_w,
                "budget_w": self.profile.budget_w,
                "source": self.profile.source,
            },
            "clock": ledger.clock_name + (" (every step exact: loop contended)" if ledger.contended else ""),
            "loop_wait_ratio": ledger.loop_wait_ratio,
            "tick_seconds": tick_seconds,
            "note": NOTE,
            "cpu": self.cpu(),
        }
        if llm is not None:
            out["llm"] = {
                "loaded": bool(llm.loaded),
                "threads": llm.threads,
                "queue_depth": llm.queue_depth,
                "tokens_total": llm.tokens_total,
                "last_load_seconds": llm.last_load_seconds,
                "unload_after_s": self.governor.config.unload_after_s,
            }
        return out

    def cpu(self) -> dict[str, Any]:
        """CPU-seconds since start: the ledger's exact buckets, and the sampled split by part when enabled."""
        accounts = self.ledger.accounts()
        out: dict[str, Any] = {
            "agents_seconds": sum(a.cpu_s_total for a in accounts),  # loop + inference + skills, per agent
            "llm_seconds": sum(a.llm_s_total for a in accounts),  # of which inference
            "skills_seconds": sum(a.skills_s_total for a in accounts),  # of which skill code (skill workers)
            "runtime_seconds": self.ledger.runtime_cpu_s,  # process CPU no agent caused (web, ticks, threads)
            "storage_bytes": sum(a.storage_total for a in accounts),  # state bytes written and read for agents
            "parts": None,
        }
        if self.parts is not None:
            out["parts"] = {"sample_hz": 1.0 / self.parts.period_s, "samples": self.parts.samples,
                            "seconds": self.parts.totals()}
        return out

    def agent(self, agent_id: str, status: str, hosted: Collection[str]) -> dict[str, Any]:
        """One agent's figures: `watts` over the node report's window, `watts_1h` an hour's average."""
        acct = self.ledger.get(agent_id)
        last = self.ledger.last
        win = self.window.figures()
        w1h = acct.averages(self.meter.clock())[1] if acct else 0.0
        joules_today = self.ledger.joules_today(agent_id)
        gated = self.governor.status.gated.get(agent_id)
        return {
            "agent_id": agent_id,
            "status": status,
            "window_s": win.seconds,
            "watts": win.agents_w.get(agent_id, 0.0),
            "watts_1h": w1h,
            "joules": acct.joules if acct else 0.0,
            "wh_today": joules_today / 3600.0,
            "day": time.strftime("%Y-%m-%d", time.gmtime()) + " UTC",
            "idle_share_watts": last.idle_share_w if last else 0.0,
            "cpu_seconds": acct.cpu_s_total if acct else 0.0,
            "llm_cpu_seconds": acct.llm_s_total if acct else 0.0,
            "skills_cpu_seconds": acct.skills_s_total if acct else 0.0,
            "llm_tokens": acct.tokens_total if acct else 0,
            "storage_bytes": acct.storage_total if acct else 0,
            "turns": acct.turns_total if acct else 0,
            "quota": self.governor.quota_status(agent_id),
            "throttled": gated is not None,
            "throttle_reason": throttle_reason(gated) if gated is not None else None,
            "source": self.meter.source,
            "note": NOTE,
            "node_average": self.average(hosted),
        }

    def average(self, hosted: Collection[str]) -> dict[str, Any]:
        """Mean watts (same window) and Wh today over hosted agents, awake or asleep: all a user may see of others."""
        watts = self.window.figures().agents_total_w
        wh = 0.0
        for agent_id in hosted:
            wh += self.ledger.joules_today(agent_id) / 3600.0
        count = len(hosted)
        return {"agents": count, "watts": watts / count if count else 0.0, "wh_today": wh / count if count else 0.0}

    def snapshot(self, by_status: Mapping[str, int]) -> PowerSnapshot:
        """What `/metrics` exposes: the same window's watts, the ledger's totals, the governor's level."""
        ledger = self.ledger
        last = ledger.last
        win = self.window.figures()
        gov = self.governor.status
        agents_w = win.agents_w
        return PowerSnapshot(
            source=self.meter.source,
            node_watts=win.node_w,
            idle_watts=ledger.idle_w,
            budget_watts=self.profile.budget_w,
            headroom_watts=self.profile.budget_w - gov.avg_w,
            runtime_watts=win.runtime_w,
            other_watts=win.other_w,
            utilisation=win.utilisation,
            node_joules=ledger.node_joules,
            conservation_error=last.conservation_error if last else 0.0,
            conservation_violations=ledger.conservation_violations,
            loop_wait_ratio=ledger.loop_wait_ratio,
            agents=[
                AgentEnergy(a.agent_id, agents_w.get(a.agent_id, 0.0), a.joules, a.cpu_s_total)
                for a in ledger.accounts()
            ],
            agents_by_status=by_status,
            governor_level=gov.level,
            deferred=dict(gov.deferred),
        )

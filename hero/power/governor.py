"""The power governor: keeps the node's 5 s average under its budget, with headroom.

Decisions are made once a tick (1 Hz) from the ledger's split and the LLM
queue; `admit()` between ticks is a few dict/set lookups. Levers, in the
order they cost users least:

1. LLM threads and parallel sequences: queued inference is predicted to keep
   `threads` CPUs busy, priced with the profile's curve anchored at the
   current reading; threads are lowered so the prediction fits, and raised
   one per tick when there is room again. The sequences decoded at once
   follow the threads (fewer threads decode fewer streams at a readable
   speed; the rest wait in the fair queue), also rising one per tick.
   When the model's queue is full, new work is refused (429, with the
   queue's own estimate of when it will have room).
2. Background work (non-interactive timers and API calls) is refused with
   `Overloaded` + retry-after while the node is constrained; interactive chat
   is still admitted.
3. Max-min fair share of the dynamic power left for agents (never less than
   `agents_floor` of the dynamic budget): an agent drawing more than its
   share is gated until the next tick; light agents never are (`hero.power.fairshare`).
4. An agent over its optional daily energy quota is deprioritised: its work
   waits whenever the node is not idle-ish, and the refusal says why.
5. Idle agents are hibernated early (memory, and nothing left to wake).
6. The model is unloaded after N minutes with no request (reloaded on demand
   by the LLM service, which measures the reload time).
7. Where a delegated cgroup is writable, `cpu.max` caps the process as a hard
   backstop; where it is not, that is reported, not faked (`hero.power.backstop`).

Its settings are `GovernorConfig` (`hero.power.config`, the `[power]` table of hero.toml).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hero.errors import Overloaded
from hero.power.backstop import CpuMaxBackstop, cpus_within_target
from hero.power.config import GovernorConfig
from hero.power.fairshare import over_share
from hero.power.ledger import TickReport
from hero.power.profiles import HardwareProfile
from hero.seams.llm import GovernedLLM
from hero.seams.node import GovernedNode

log = logging.getLogger("hero.power")

NORMAL, BUSY, CONSTRAINED = "normal", "busy", "constrained"


@dataclass
class GovernorStatus:
    level: str = NORMAL
    avg_w: float = 0.0  # over the window
    predicted_w: float = 0.0
    target_w: float = 0.0
    budget_w: float = 0.0
    agents_allowed_w: float = 0.0
    gated: dict[str, float] = field(default_factory=dict)  # agent → its share when gated
    llm_threads: int | None = None
    llm_max_threads: int | None = None
    llm_parallel: int | None = None
    llm_unloads: int = 0
    hibernated_early: int = 0
    admitted: int = 0
    deferred: dict[str, int] = field(
        default_factory=lambda: {"background": 0, "fair_share": 0, "quota": 0, "llm_queue": 0}
    )
    backstop_cpus: float | None = None


class Governor:
    def __init__(
        self,
        profile: HardwareProfile,
        config: GovernorConfig | None = None,
        *,
        u_per_cpu: float,
        joules_today: Callable[[str], float] = lambda _agent: 0.0,
        demand: Callable[[float], dict[str, float]] | None = None,
        backstop: CpuMaxBackstop | None = None,
    ) -> None:
        self.profile = profile
        self.config = config or GovernorConfig()
        self.u_per_cpu = u_per_cpu  # profile utilisation added by one of this machine's CPUs kept busy
        self.backstop = backstop
        self._joules_today = joules_today
        self.target_w = profile.budget_w * (1.0 - self.config.headroom)
        self.status = GovernorStatus(target_w=self.target_w, budget_w=profile.budget_w)
        self.node: GovernedNode | None = None
        self.llm: GovernedLLM | None = None
        self._window: deque[tuple[float, float]] = deque()
        self._demand = demand
        self._quota_wh: dict[str, float | None] = {}
        self._llm_idle_since: float | None = None
        self._normal_ticks = 0

    def attach(self, node: GovernedNode | None, llm: GovernedLLM | None) -> None:
        self.node = node
        self.llm = llm
        if llm is not None:
            self.status.llm_threads = llm.threads
            self.status.llm_max_threads = max(1, llm.threads)
            self.status.llm_parallel = llm.parallel

    # ---- quota ----

    def set_quota(self, agent_id: str, wh: float | None) -> None:
        """Override the daily quota for one agent (None = no quota for this agent)."""
        self._quota_wh[agent_id] = wh

    def forget(self, agent_id: str) -> None:
        """The agent was deleted: its quota and any gate on it go."""
        self._quota_wh.pop(agent_id, None)
        self.status.gated.pop(agent_id, None)

    def quota_wh(self, agent_id: str) -> float | None:
        return self._quota_wh.get(agent_id, self.config.daily_quota_wh)

    def quota_status(self, agent_id: str) -> dict[str, Any]:
        quota = self.quota_wh(agent_id)
        used = self._joules_today(agent_id) / 3600.0
        over = quota is not None and used >= quota
        out: dict[str, Any] = {"quota_wh": quota, "used_wh": used, "over": over}
        if over:
            out["message"] = (
                f"your agent has used {used:.3f} Wh of its {quota:.3f} Wh daily energy quota; "
                "until 00:00 UTC its work runs only when the node has power to spare"
            )
        return out

    # ---- admission (hot path) ----

    def admit(self, agent_id: str, *, interactive: bool) -> None:
        st = self.status
        refusal = self.llm.refusal(interactive) if self.llm is not None else None
        if refusal is not None:  # the model's queue is full: say when it will have room
            st.deferred["llm_queue"] += 1
            raise refusal
        share = st.gated.get(agent_id)
        if share is not None:
            st.deferred["fair_share"] += 1
            raise Overloaded(
                f"the node is at its power budget and this agent is above its fair share ({share:.2f} W)",
                retry_after=self.config.gate_retry_after_s,
            )
        level = st.level
        if level != NORMAL:
            quota = self._quota_wh.get(agent_id, self.config.daily_quota_wh)
            if quota is not None and (level == CONSTRAINED or not interactive):
                used = self._joules_today(agent_id) / 3600.0
                if used >= quota:
                    st.deferred["quota"] += 1
                    raise Overloaded(
                        f"this agent used {used:.3f} Wh of its {quota:.3f} Wh daily energy quota "
                        "and the node is busy; over-quota work waits for spare power",
                        retry_after=self.config.retry_after_s,
                    )
            if level == CONSTRAINED and not interactive:
                st.deferred["background"] += 1
                raise Overloaded(
                    "the node is at its power budget; background work is deferred",
                    retry_after=self.config.retry_after_s,
                )
        st.admitted += 1

    # ---- the tick ----

    def predict(self, report: TickReport, extra_cpus: float) -> float:
        """Node watts if `extra_cpus` more of this machine's CPUs were busy than the LLM-free part of this tick.

        The profile's curve gives the shape; the current reading anchors it,
        so the prediction also works when the reading comes from RAPL.
        """
        dt = report.dt if report.dt > 0 else 1.0
        u_now = report.utilisation
        u_base = max(0.0, u_now - report.llm_cpu_s / dt * self.u_per_cpu)
        p = self.profile
        return report.node_w + p.watts(u_base + extra_cpus * self.u_per_cpu) - p.watts(u_now)

    async def tick(self, report: TickReport) -> GovernorStatus:
        cfg = self.config
        st = self.status
        now = report.t
        self._window.append((now, report.node_w))
        while self._window and self._window[0][0] <= now - cfg.window_s:
            self._window.popleft()
        st.avg_w = sum(w for _, w in self._window) / len(self._window)

        llm = self.llm
        dt = report.dt if report.dt > 0 else 1.0
        llm_cpus = report.llm_cpu_s / dt
        if llm is not None and llm.queue_depth > 0:
            llm_cpus = max(llm_cpus, float(llm.threads))
        st.predicted_w = self.predict(report, llm_cpus)
        worst = max(st.avg_w, st.predicted_w)
        if worst > self.target_w:
            st.level = CONSTRAINED
        elif worst > cfg.busy_fraction * self.target_w:
            st.level = BUSY
        else:
            st.level = NORMAL

        if llm is not None:
            self._steer_llm(llm, report)
        self._share(report)
        if self.backstop is not None and self.backstop.available:
            self._backstop(report)
        if st.level == CONSTRAINED and self.node is not None:
            n = await self.node.hibernate_idle(cfg.early_hibernate_after_s)
            st.hibernated_early += n
        if llm is not None and cfg.unload_after_s is not None:
            await self._maybe_unload(llm, now)
        return st

    def _steer_llm(self, llm: GovernedLLM, report: TickReport) -> None:
        """Fit LLM threads so the predicted node power stays under the target; rise one thread per tick."""
        st = self.status
        max_threads = st.llm_max_threads or max(1, llm.threads)
        if llm.queue_depth > 0 or report.llm_cpu_s > 0:
            fit = 1
            for n in range(max_threads, 0, -1):
                if self.predict(report, n) <= self.target_w:
                    fit = n
                    break
            if fit < llm.threads:
                llm.set_threads(fit)
            elif fit > llm.threads and st.level != CONSTRAINED:
                llm.set_threads(llm.threads + 1)  # rising is the risky direction: one step per tick
        want = max(1, math.ceil(llm.max_parallel * llm.threads / max_threads))
        if want < llm.parallel:
            llm.set_parallel(want)
        elif want > llm.parallel and st.level != CONSTRAINED:
            llm.set_parallel(llm.parallel + 1)
        st.llm_threads = llm.threads
        st.llm_parallel = llm.parallel

    def _share(self, report: TickReport) -> None:
        """When constrained, gate agents drawing more than their max-min share; otherwise do nothing.

        Demand is each agent's recent average watts (the ledger's 10 s
        average, asked for only here, so a normal tick costs nothing per
        agent); without a demand source, the last tick's watts.
        """
        cfg = self.config
        st = self.status
        allowed = self.target_w - report.idle_w - report.runtime_w - report.other_w
        floor = cfg.agents_floor * (self.target_w - report.idle_w)  # agents are the node's purpose: other
        st.agents_allowed_w = max(floor, allowed)  # levers must cover an overload beyond their floor
        st.gated = {}
        if st.level != CONSTRAINED:
            return
        demand = self._demand(report.t) if self._demand is not None else report.agents_w
        st.gated = over_share(demand, st.agents_allowed_w)

    def _backstop(self, report: TickReport) -> None:
        st = self.status
        backstop = self.backstop
        assert backstop is not None
        if st.level == CONSTRAINED and st.avg_w > self.target_w:
            self._normal_ticks = 0
            cpus = cpus_within_target(report, self.profile, self.u_per_cpu, self.target_w)
            if backstop.limit_cpus is None or abs(backstop.limit_cpus - cpus) > 0.05:
                try:
                    backstop.limit(cpus)
                except OSError as e:
                    backstop.available = False
                    backstop.reason = f"write failed: {e}"
                    log.warning("cgroup CPU cap disabled: %s", e)
        elif st.level == NORMAL and backstop.limit_cpus is not None:
            self._normal_ticks += 1
            if self._normal_ticks >= self.config.release_after_ticks:
                backstop.limit(None)
        st.backstop_cpus = backstop.limit_cpus

    async def _maybe_unload(self, llm: GovernedLLM, now: float) -> None:
        if not llm.loaded:
            self._llm_idle_since = None
            return
        last = llm.last_request_at
        if last is None:
            if self._llm_idle_since is None:
                self._llm_idle_since = now
            last = self._llm_idle_since
        if llm.queue_depth == 0 and now - last >= (self.config.unload_after_s or math.inf):
            await llm.unload()
            if llm.loaded:  # it was in use after all: try again next tick
                return
            self._llm_idle_since = None
            self.status.llm_unloads += 1
            log.info("model unloaded after %.0f s with no request", now - last)

    def describe(self) -> dict[str, Any]:
        st = self.status
        out: dict[str, Any] = {
            "level": st.level,
            "avg_watts": st.avg_w,
            "window_s": self.config.window_s,
            "predicted_watts": st.predicted_w,
            "target_watts": self.target_w,
            "headroom": self.config.headroom,
            "agents_allowed_watts": st.agents_allowed_w,
            "gated_agents": len(st.gated),
            "admitted": st.admitted,
            "deferred": dict(st.deferred),
            "hibernated_early": st.hibernated_early,
            "llm_threads": st.llm_threads,
            "llm_max_threads": st.llm_max_threads,
            "llm_parallel": st.llm_parallel,
            "llm_unloads": st.llm_unloads,
            "daily_quota_wh": self.config.daily_quota_wh,
        }
        b = self.backstop
        out["cgroup_backstop"] = (
            {"available": b.available, "kind": b.kind or None, "reason": b.reason, "limit_cpus": b.limit_cpus}
            if b is not None
            else {"available": False, "reason": "disabled", "limit_cpus": None}
        )
        return out

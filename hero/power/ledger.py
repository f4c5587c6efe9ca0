"""Per-agent energy ledger: what each agent was charged (loop steps, LLM inference, skill code, storage) and a 1 Hz
split of node power.

Loop steps are charged by the step driver `run_turn` returns (`hero.power.metering`, which
says why per step and which clocks); inference, skill calls (which run in skill workers,
off the loop) and storage are charged by the threads that did the work.

Each tick the node's dynamic power (node − profile idle) is shared by
CPU-seconds: W_i = P_dyn · c_i / D with D = max(machine busy CPU-s, process
CPU-s, Σ c_i); what the process used beyond the agents is the `runtime`
bucket and the rest of the machine is `other`. Idle power is never folded
into an agent: it is reported on its own and, separately, as an equal share.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from hero.power.account import TAU_1H, TAU_10S, AgentAccount, utc_day
from hero.power.meter import PowerSample
from hero.power.metering import CONTENDED_WAIT, EXACT_AFTER_NS, loop_run_delay_ns, metered_turn

T = TypeVar("T")

CONSERVATION_TOLERANCE = 0.05


@dataclass(frozen=True)
class TickReport:
    """One second of the node, split. Invariant: node_w = idle_w + Σ agents_w + runtime_w + other_w."""

    t: float  # monotonic
    unix: float
    dt: float
    source: str
    node_w: float
    idle_w: float
    dynamic_w: float
    runtime_w: float
    other_w: float
    utilisation: float
    agents_w: dict[str, float]  # agents that ran this tick; everyone else drew 0 W of dynamic power
    agents_llm_w: float  # part of Σ agents_w that was LLM inference
    llm_cpu_s: float  # CPU-seconds of LLM inference this tick (every compute thread's, as the LLM service measured)
    agents_cpu_s: dict[str, float]
    process_cpu_s: float
    busy_cpu_s: float
    host_cpus: int
    hosted: int
    idle_share_w: float  # idle_w amortised equally over hosted agents (a second view, not added to agents_w)
    conservation_error: float
    loop_scale: float
    loop_wait_ratio: float = 0.0  # share of the tick the loop thread waited for a CPU (kernel schedstat)
    steps: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    skills_cpu_s: float = 0.0  # CPU-seconds of skill workers this tick (part of Σ agents_cpu_s)

    @property
    def conservation_ok(self) -> bool:
        return self.conservation_error <= CONSERVATION_TOLERANCE


class Ledger:
    """Charges CPU, LLM and storage to agents; `tick()` turns a meter sample into per-agent watts.

    Loop-thread only, except `charge_llm`, `charge_storage` and `charge_cpu(…, part="skills")`, which take a lock.
    """

    def __init__(
        self,
        idle_w: float,
        *,
        clock: str = "adaptive",
        process_clock: Callable[[], int] = time.process_time_ns,
        loop_clock: Callable[[], int] = time.thread_time_ns,
        wall_clock: Callable[[], float] = time.time,
        run_delay: Callable[[], int | None] = loop_run_delay_ns,
    ) -> None:
        if clock not in EXACT_AFTER_NS:
            raise ValueError(f"clock must be one of {', '.join(EXACT_AFTER_NS)}")
        self.idle_w = idle_w
        self.clock_name = clock
        self.base_exact_after_ns = self.exact_after_ns = EXACT_AFTER_NS[clock]
        self.contended = False  # the loop thread waited for a CPU last tick: every step is timed exactly
        self.loop_wait_ratio = 0.0
        self._run_delay = run_delay
        self._last_delay = run_delay()
        self.charged_ns = 0  # running total of clock time charged by metered steps (for nesting)
        self._process_clock = process_clock
        self._loop_clock = loop_clock
        self._wall_clock = wall_clock
        self._accounts: dict[str, AgentAccount] = {}
        self._lock = threading.Lock()
        self._dirty: set[AgentAccount] = set()  # loop-charged this tick, or with a turn still open
        self._shared_dirty: set[AgentAccount] = set()  # charged from other threads; under the lock
        self._last_proc = process_clock()
        self._last_loop = loop_clock()
        self._last_t: float | None = None
        # node totals
        self.node_joules = 0.0
        self.idle_joules = 0.0
        self.runtime_joules = 0.0
        self.other_joules = 0.0
        self.runtime_cpu_s = 0.0
        self.conservation_violations = 0
        self.ticks = 0
        self.last: TickReport | None = None

    # ---- charging (hot path) ----

    def account(self, agent_id: str) -> AgentAccount:
        acct = self._accounts.get(agent_id)
        if acct is None:
            with self._lock:
                acct = self._accounts.get(agent_id)
                if acct is None:
                    acct = AgentAccount(agent_id, day=utc_day(self._wall_clock()), exact=self.exact_after_ns == 0)
                    self._accounts[agent_id] = acct
        return acct

    def run_turn(self, agent_id: str, coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
        acct = self._accounts.get(agent_id) or self.account(agent_id)
        acct.open_turns += 1
        acct.turns_total += 1
        self._dirty.add(acct)
        return metered_turn(coro, acct, self)

    def charge_cpu(self, agent_id: str, cpu_ns: int, part: Literal["loop", "skills"] = "loop") -> None:
        """Charge CPU measured elsewhere: "loop", on the loop thread (e.g. a synchronous callback run for the
        agent); "skills", a skill call's thread CPU time, from the skill's worker thread (thread-safe)."""
        acct = self.account(agent_id)
        if part == "skills":
            with self._lock:
                acct.skills_ns += cpu_ns
                self._shared_dirty.add(acct)
            return
        acct.cpu_ns += cpu_ns
        acct.steps += 1
        self._dirty.add(acct)

    def charge_llm(self, agent_id: str, cpu_ns: int, tokens: int) -> None:
        acct = self.account(agent_id)
        with self._lock:
            acct.llm_ns += cpu_ns
            acct.llm_tokens += tokens
            self._shared_dirty.add(acct)

    def charge_storage(self, agent_id: str, nbytes: int) -> None:
        acct = self.account(agent_id)
        with self._lock:
            acct.storage_bytes += nbytes
            self._shared_dirty.add(acct)

    # ---- the tick ----

    def prime(self) -> None:
        """Discard CPU charged so far; the next tick covers from now."""
        self._last_proc = self._process_clock()
        self._last_loop = self._loop_clock()
        self._last_delay = self._run_delay()
        for acct in self._dirty:
            acct.cpu_ns = acct.wall_ns = 0
            acct.steps = 0
        with self._lock:
            for acct in self._shared_dirty:
                acct.llm_ns = acct.llm_tokens = acct.storage_bytes = acct.skills_ns = 0
            self._shared_dirty = set()
        self._dirty = {a for a in self._dirty if a.open_turns > 0}

    def tick(self, sample: PowerSample, *, hosted: int | None = None) -> TickReport:
        """Split the sample's node power over the CPU charged since the previous tick."""
        proc = self._process_clock()
        loop = self._loop_clock()
        d_proc = max(0, proc - self._last_proc) / 1e9
        d_loop = max(0, loop - self._last_loop) / 1e9
        self._last_proc, self._last_loop = proc, loop
        unix = self._wall_clock()
        today = utc_day(unix)
        dt = sample.dt
        now = sample.t
        delay = self._run_delay()
        if delay is not None and self._last_delay is not None and dt > 0:
            self.loop_wait_ratio = max(0, delay - self._last_delay) / (dt * 1e9)
            self.contended = self.loop_wait_ratio >= CONTENDED_WAIT
            self.exact_after_ns = 0 if self.contended else self.base_exact_after_ns
        self._last_delay = delay

        with self._lock:
            shared = self._shared_dirty
            self._shared_dirty = set()
            llm = {a: (a.llm_ns, a.llm_tokens, a.storage_bytes, a.skills_ns) for a in shared}
            for a in shared:
                a.llm_ns = a.llm_tokens = a.storage_bytes = a.skills_ns = 0

        dirty = self._dirty
        ran: list[AgentAccount] = []
        cpu_ns = wall_ns = llm_ns_sum = skills_ns_sum = steps = 0
        for a in dirty:  # includes turns left open (parked on an await): they cost nothing unless they stepped
            if a.steps:
                ran.append(a)
                cpu_ns += a.cpu_ns
                wall_ns += a.wall_ns
                steps += a.steps
                a.steps_total += a.steps
                a.steps = 0
        active = shared.union(ran)
        for ns, _, _, skill_ns in llm.values():
            llm_ns_sum += ns
            skills_ns_sum += skill_ns
        loop_scale = 1.0  # wall-timed steps include time the loop thread was preempted: scale to its CPU
        if wall_ns > 0:
            loop_scale = min(1.0, max(0.0, d_loop * 1e9 - cpu_ns) / wall_ns)

        node_w = sample.watts
        dyn_w = max(0.0, node_w - self.idle_w)
        loop_c_sum = (cpu_ns + wall_ns * loop_scale) / 1e9
        llm_c_sum = llm_ns_sum / 1e9  # measured in full, llama.cpp's compute threads included: not scaled
        skills_c_sum = skills_ns_sum / 1e9
        c_sum = loop_c_sum + llm_c_sum + skills_c_sum
        c_rt = max(0.0, d_proc - c_sum)
        denom = max(sample.busy_cpu_s, d_proc, c_sum)
        k = dyn_w / denom if denom > 0 else 0.0
        step10 = math.exp(-dt / TAU_10S) if dt > 0 else 1.0
        step1h = math.exp(-dt / TAU_1H) if dt > 0 else 1.0
        a10, a1h = 1.0 - step10, 1.0 - step1h
        gap_limit = dt * 1.001
        agents_w: dict[str, float] = {}
        agents_cpu: dict[str, float] = {}
        sum_w = 0.0
        llm_w_sum = 0.0
        llm_c: dict[AgentAccount, float] = {}  # off-loop CPU-seconds: inference and skill workers
        for a, (ln, tok, sb, sk) in llm.items():  # inference, skills and storage: few agents per tick
            lc = ln * 1e-9
            a.llm_s_total += lc
            a.skills_s_total += sk * 1e-9
            llm_c[a] = lc + sk * 1e-9
            a.tokens_total += tok
            a.storage_total += sb
            llm_w_sum += k * lc
        for a in active:  # the hot loop of the tick: only agents that ran; keep it lean
            c = (a.cpu_ns + a.wall_ns * loop_scale) * 1e-9
            if llm_c:
                c += llm_c.get(a, 0.0)
            w = k * c
            if a.day != today:  # a new UTC day: today's energy counts from here
                a.day = today
                a.day_base = a.joules
            a.joules += w * dt
            a.cpu_s_total += c
            if now - a.ew_t > gap_limit:  # idle ticks since the last update: decay over them (zero input)
                gap = now - a.ew_t - dt
                a.ew10 *= math.exp(-gap / TAU_10S)
                a.ew1h *= math.exp(-gap / TAU_1H)
            a.ew10 = a.ew10 * step10 + a10 * w
            a.ew1h = a.ew1h * step1h + a1h * w
            a.ew_t = now
            a.cpu_ns = a.wall_ns = 0
            agents_w[a.agent_id] = w
            agents_cpu[a.agent_id] = c
            sum_w += w
        self._dirty = {a for a in dirty if a.open_turns > 0}

        runtime_w = k * c_rt
        other_w = max(0.0, dyn_w - sum_w - runtime_w)
        parts = self.idle_w + sum_w + runtime_w + other_w
        error = abs(parts - node_w) / node_w if node_w > 0 else (0.0 if parts == 0 else 1.0)
        n_hosted = hosted if hosted is not None else len(self._accounts)

        self.node_joules += node_w * dt
        self.idle_joules += min(self.idle_w, node_w) * dt
        self.runtime_joules += runtime_w * dt
        self.other_joules += other_w * dt
        self.runtime_cpu_s += c_rt
        self.ticks += 1
        report = TickReport(
            t=now,
            unix=unix,
            dt=dt,
            source=sample.source,
            node_w=node_w,
            idle_w=self.idle_w,
            dynamic_w=dyn_w,
            runtime_w=runtime_w,
            other_w=other_w,
            utilisation=sample.utilisation,
            agents_w=agents_w,
            agents_llm_w=llm_w_sum,
            llm_cpu_s=llm_c_sum,
            agents_cpu_s=agents_cpu,
            process_cpu_s=d_proc,
            busy_cpu_s=sample.busy_cpu_s,
            host_cpus=sample.host_cpus,
            hosted=n_hosted,
            idle_share_w=self.idle_w / n_hosted if n_hosted else 0.0,
            conservation_error=error,
            loop_scale=loop_scale,
            loop_wait_ratio=self.loop_wait_ratio,
            steps=steps,
            skills_cpu_s=skills_c_sum,
        )
        if not report.conservation_ok:
            self.conservation_violations += 1
        self._last_t = now
        self.last = report
        return report

    def forget(self, agent_id: str) -> None:
        """The agent was deleted: its account goes (a turn still charging it makes a new, empty one)."""
        with self._lock:
            acct = self._accounts.pop(agent_id, None)
            if acct is not None:
                self._shared_dirty.discard(acct)
        if acct is not None:
            self._dirty.discard(acct)

    # ---- reading ----

    def get(self, agent_id: str) -> AgentAccount | None:
        return self._accounts.get(agent_id)

    def accounts(self) -> list[AgentAccount]:
        return list(self._accounts.values())

    def demand(self, now: float, floor_w: float = 1e-3) -> dict[str, float]:
        """Recently active agents' 10 s average watts: what the governor shares out when constrained."""
        out: dict[str, float] = {}
        for a in self.accounts():
            if a.ew10 > floor_w:
                w = a.ew10 * math.exp(-max(0.0, now - a.ew_t) / TAU_10S)
                if w > floor_w:
                    out[a.agent_id] = w
        return out

    def restore_today(self, joules_by_agent: dict[str, float]) -> None:
        """Seed today's energy from history, so a restart does not reset daily quotas."""
        today = utc_day(self._wall_clock())
        for agent_id, joules in joules_by_agent.items():
            acct = self.account(agent_id)
            if acct.day != today:
                acct.day, acct.day_base = today, acct.joules
            acct.day_base = min(acct.day_base, acct.joules - joules)

    def joules_today(self, agent_id: str) -> float:
        acct = self._accounts.get(agent_id)
        if acct is None or acct.day != utc_day(self._wall_clock()):
            return 0.0
        return acct.joules - acct.day_base

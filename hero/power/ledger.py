"""Per-agent energy ledger: CPU time per step, LLM time per request, and a 1 Hz split of node power.

Why per step: agents share one event loop, so a clock around a whole handler
also counts every other agent that ran while it was suspended (measured: B/A
1.4 instead of 3, Σ agents 142 % of the loop). The coroutine returned by
`run_turn` reads the clock around each `send`/`throw` into the agent's
coroutine, i.e. only while the agent's own code runs.

Clocks: "wall" (default) reads `perf_counter_ns` (~50 ns) per step and is
reconciled each tick by min(1, loop-thread CPU / Σ step time), which
removes time the loop thread was preempted; "thread" reads
`thread_time_ns` (~0.6 µs, a real syscall) and is exact per step but costs
about 2 % at 100 µs turns. Both are tested against a CPU-time oracle.

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
import types
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hero.power.meter import PowerSample

T = TypeVar("T")

CONSERVATION_TOLERANCE = 0.05
TAU_10S = 10.0
TAU_1H = 3600.0
CLOCKS: dict[str, Callable[[], int]] = {"thread": time.thread_time_ns, "wall": time.perf_counter_ns}


def utc_day(unix: float) -> int:
    return int(unix // 86400)


@dataclass(slots=True, eq=False)
class AgentAccount:
    """Everything charged to one agent. Fields marked `tick` are zeroed every tick."""

    agent_id: str
    cpu_ns: int = 0  # tick; loop thread only
    steps: int = 0  # tick; loop thread only
    open_turns: int = 0  # loop thread only
    llm_ns: int = 0  # tick; under the ledger lock
    llm_tokens: int = 0  # tick; under the ledger lock
    storage_bytes: int = 0  # tick; under the ledger lock
    cpu_s_total: float = 0.0  # attributed CPU-seconds, loop + LLM
    llm_s_total: float = 0.0
    tokens_total: int = 0
    storage_total: int = 0
    steps_total: int = 0
    turns_total: int = 0
    joules: float = 0.0
    day: int = 0
    joules_today: float = 0.0
    watts: float = 0.0  # last tick
    llm_watts: float = 0.0  # last tick, the LLM part of `watts`
    ew10: float = 0.0  # EWMAs, decayed lazily from ew_t so idle agents cost nothing per tick
    ew1h: float = 0.0
    ew_t: float = 0.0

    def averages(self, now: float) -> tuple[float, float]:
        """(10 s, 1 h) average watts at monotonic time `now`."""
        gap = max(0.0, now - self.ew_t)
        return self.ew10 * math.exp(-gap / TAU_10S), self.ew1h * math.exp(-gap / TAU_1H)


@types.coroutine
def _metered_steps(coro: Coroutine[Any, Any, T], acct: AgentAccount, ledger: Ledger) -> Generator[Any, Any, T]:
    """Drive `coro` one step at a time, charging each step's clock time to `acct`.

    A generator (not a class with Python-level `send`) so the event loop
    resumes it natively: about half the cost per step. Time spent in a
    metered turn nested inside this one is in `ledger.charged_ns` and is
    subtracted, so nothing is counted twice. Steps that raise, including
    cancellation, are charged too.
    """
    clock = ledger.clock
    send = coro.send
    value: Any = None
    exc: BaseException | None = None
    try:
        while True:
            before = ledger.charged_ns
            t0 = clock()
            try:
                if exc is None:
                    fut = send(value)
                else:
                    fut = coro.throw(exc)
            except StopIteration as stop:
                own = clock() - t0 - (ledger.charged_ns - before)
                acct.cpu_ns += own
                acct.steps += 1
                ledger.charged_ns += own
                return stop.value
            except BaseException:
                own = clock() - t0 - (ledger.charged_ns - before)
                acct.cpu_ns += own
                acct.steps += 1
                ledger.charged_ns += own
                raise
            own = clock() - t0 - (ledger.charged_ns - before)
            acct.cpu_ns += own
            acct.steps += 1
            ledger.charged_ns += own
            try:
                value = yield fut
                exc = None
            except BaseException as e:  # thrown in by the task (cancellation) or the awaiting coroutine
                exc = e
                value = None
    finally:
        acct.open_turns -= 1


async def _metered_turn(coro: Coroutine[Any, Any, T], acct: AgentAccount, ledger: Ledger) -> T:
    """A real coroutine around the step driver, so `create_task` and TaskGroups accept it on 3.12+."""
    return await _metered_steps(coro, acct, ledger)


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
    agents_cpu_s: dict[str, float]
    process_cpu_s: float
    busy_cpu_s: float
    hosted: int
    idle_share_w: float  # idle_w amortised equally over hosted agents (a second view, not added to agents_w)
    conservation_error: float
    llm_scale: float
    loop_scale: float
    steps: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def conservation_ok(self) -> bool:
        return self.conservation_error <= CONSERVATION_TOLERANCE


class Ledger:
    """Charges CPU, LLM and storage to agents; `tick()` turns a meter sample into per-agent watts.

    Loop-thread only, except `charge_llm` and `charge_storage`, which take a lock.
    """

    def __init__(
        self,
        idle_w: float,
        *,
        clock: str = "wall",
        process_clock: Callable[[], int] = time.process_time_ns,
        loop_clock: Callable[[], int] = time.thread_time_ns,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(CLOCKS)}")
        self.idle_w = idle_w
        self.clock_name = clock
        self.clock = CLOCKS[clock]
        self.charged_ns = 0  # running total of clock time charged by metered steps (for nesting)
        self.llm_threads = 1  # cap for scaling inference-thread CPU up to the whole thread pool's
        self._process_clock = process_clock
        self._loop_clock = loop_clock
        self._wall_clock = wall_clock
        self._accounts: dict[str, AgentAccount] = {}
        self._lock = threading.Lock()
        self._dirty: set[AgentAccount] = set()  # loop-charged this tick, or with a turn still open
        self._shared_dirty: set[AgentAccount] = set()  # charged from other threads; under the lock
        self._prev_active: set[AgentAccount] = set()
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
                    acct = AgentAccount(agent_id, day=utc_day(self._wall_clock()))
                    self._accounts[agent_id] = acct
        return acct

    def run_turn(self, agent_id: str, coro: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
        acct = self.account(agent_id)
        acct.open_turns += 1
        acct.turns_total += 1
        self._dirty.add(acct)
        return _metered_turn(coro, acct, self)

    def charge_cpu(self, agent_id: str, cpu_ns: int) -> None:
        """Charge loop-thread CPU measured elsewhere (e.g. a synchronous callback run for the agent)."""
        acct = self.account(agent_id)
        acct.cpu_ns += cpu_ns
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
        for acct in self._dirty:
            acct.cpu_ns = 0
            acct.steps = 0
        with self._lock:
            for acct in self._shared_dirty:
                acct.llm_ns = acct.llm_tokens = acct.storage_bytes = 0
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

        with self._lock:
            shared = self._shared_dirty
            self._shared_dirty = set()
            llm = {a: (a.llm_ns, a.llm_tokens, a.storage_bytes) for a in shared}
            for a in shared:
                a.llm_ns = a.llm_tokens = a.storage_bytes = 0

        dirty = self._dirty
        active = dirty | shared
        wall_ns = 0
        llm_ns_sum = 0
        steps = 0
        for a in dirty:
            wall_ns += a.cpu_ns
            steps += a.steps
        for ns, _, _ in llm.values():
            llm_ns_sum += ns
        loop_scale = 1.0
        if self.clock_name == "wall" and wall_ns > 0:
            loop_scale = min(1.0, d_loop * 1e9 / wall_ns)
        llm_scale = 1.0
        if llm_ns_sum > 0:
            off_loop = max(0.0, d_proc - d_loop) * 1e9
            llm_scale = min(float(max(1, self.llm_threads)), max(1.0, off_loop / llm_ns_sum))

        node_w = sample.watts
        dyn_w = max(0.0, node_w - self.idle_w)
        loop_c_sum = wall_ns * loop_scale / 1e9
        llm_c_sum = llm_ns_sum * llm_scale / 1e9
        c_sum = loop_c_sum + llm_c_sum
        c_rt = max(0.0, d_proc - c_sum)
        denom = max(sample.busy_cpu_s, d_proc, c_sum)
        k = dyn_w / denom if denom > 0 else 0.0
        loop_k = k * loop_scale / 1e9
        llm_k = k * llm_scale / 1e9

        step10 = math.exp(-dt / TAU_10S) if dt > 0 else 1.0
        step1h = math.exp(-dt / TAU_1H) if dt > 0 else 1.0
        a10, a1h = 1.0 - step10, 1.0 - step1h
        agents_w: dict[str, float] = {}
        agents_cpu: dict[str, float] = {}
        sum_w = 0.0
        llm_w_sum = 0.0
        for a in active:
            ln, tok, sb = llm.get(a, (0, 0, 0))
            w_loop = a.cpu_ns * loop_k
            w_llm = ln * llm_k
            w = w_loop + w_llm
            c = (a.cpu_ns * loop_scale + ln * llm_scale) / 1e9
            if a.day != today:
                a.day = today
                a.joules_today = 0.0
            e = w * dt
            a.joules += e
            a.joules_today += e
            a.cpu_s_total += c
            a.llm_s_total += ln * llm_scale / 1e9
            a.tokens_total += tok
            a.storage_total += sb
            a.steps_total += a.steps
            a.watts = w
            a.llm_watts = w_llm
            gap = now - a.ew_t
            if gap > dt * 1.001:  # idle ticks since the last update: decay over them (zero input)
                a.ew10 *= math.exp(-(gap - dt) / TAU_10S)
                a.ew1h *= math.exp(-(gap - dt) / TAU_1H)
            a.ew10 = a.ew10 * step10 + a10 * w
            a.ew1h = a.ew1h * step1h + a1h * w
            a.ew_t = now
            a.cpu_ns = 0
            a.steps = 0
            agents_w[a.agent_id] = w
            agents_cpu[a.agent_id] = c
            sum_w += w
            llm_w_sum += w_llm
        for a in self._prev_active - active:
            a.watts = 0.0
            a.llm_watts = 0.0
        self._prev_active = active
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
            agents_cpu_s=agents_cpu,
            process_cpu_s=d_proc,
            busy_cpu_s=sample.busy_cpu_s,
            hosted=n_hosted,
            idle_share_w=self.idle_w / n_hosted if n_hosted else 0.0,
            conservation_error=error,
            llm_scale=llm_scale,
            loop_scale=loop_scale,
            steps=steps,
        )
        if not report.conservation_ok:
            self.conservation_violations += 1
        self._last_t = now
        self.last = report
        return report

    # ---- reading ----

    def get(self, agent_id: str) -> AgentAccount | None:
        return self._accounts.get(agent_id)

    def accounts(self) -> list[AgentAccount]:
        return list(self._accounts.values())

    def restore_today(self, joules_by_agent: dict[str, float]) -> None:
        """Seed today's energy from history, so a restart does not reset daily quotas."""
        today = utc_day(self._wall_clock())
        for agent_id, joules in joules_by_agent.items():
            acct = self.account(agent_id)
            acct.day = today
            acct.joules_today = max(acct.joules_today, joules)

    def joules_today(self, agent_id: str) -> float:
        acct = self._accounts.get(agent_id)
        if acct is None or acct.day != utc_day(self._wall_clock()):
            return 0.0
        return acct.joules_today

"""The governor: fair shares, admission, quotas, LLM threads, model unload, cgroup backstop, a 10× burst."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hero.errors import Overloaded
from hero.power.backstop import CpuMaxBackstop
from hero.power.config import GovernorConfig
from hero.power.fairshare import max_min_shares, over_share
from hero.power.governor import CONSTRAINED, NORMAL, Governor
from hero.power.ledger import Ledger, TickReport
from hero.power.meter import PowerSample
from hero.power.profiles import load_profile

PROFILE = load_profile("zos-edge-60w")  # 8 cores, idle 12 W, max 68 W, budget 60 W → target 54 W
U_PER_CPU = 1.0 / PROFILE.cores


def report(
    t: float,
    node_w: float,
    agents_w: dict[str, float] | None = None,
    *,
    runtime_w: float = 1.0,
    llm_cpu_s: float = 0.0,
    busy_cpu_s: float | None = None,
    process_cpu_s: float = 0.5,
) -> TickReport:
    """A tick record as the ledger produces it (the governor's input)."""
    agents_w = agents_w or {}
    dyn = node_w - PROFILE.idle_w
    u = max(0.0, min(1.0, _u_for(node_w)))
    return TickReport(
        t=t,
        unix=1e9 + t,
        dt=1.0,
        source="model",
        node_w=node_w,
        idle_w=PROFILE.idle_w,
        dynamic_w=dyn,
        runtime_w=runtime_w,
        other_w=max(0.0, dyn - sum(agents_w.values()) - runtime_w),
        utilisation=u,
        agents_w=agents_w,
        agents_llm_w=0.0,
        llm_cpu_s=llm_cpu_s,
        agents_cpu_s={},
        process_cpu_s=process_cpu_s,
        busy_cpu_s=busy_cpu_s if busy_cpu_s is not None else u * PROFILE.cores,
        host_cpus=PROFILE.cores,
        hosted=len(agents_w),
        idle_share_w=0.0,
        conservation_error=0.0,
        loop_scale=1.0,
    )


def _u_for(watts: float) -> float:
    """Invert the profile's curve (monotonic) by bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if PROFILE.watts(mid) < watts:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass
class FakeLLM:
    """The LLM service's governor-facing surface (`hero.seams.llm.GovernedLLM`); the governor is what is under test."""

    threads: int = 8
    queue: deque = field(default_factory=deque)
    loaded: bool = True
    last_request_at: float | None = None
    last_load_seconds: float | None = 0.4
    unloads: int = 0
    parallel: int = 8
    max_parallel: int = 8
    full: bool = False  # the model's queue is full: new work is refused

    @property
    def queue_depth(self) -> int:
        return len(self.queue)

    def refusal(self, interactive: bool = True) -> Overloaded | None:
        return Overloaded("the model is busy", retry_after=7.0) if self.full else None

    def set_threads(self, n: int) -> None:
        self.threads = max(1, n)

    def set_parallel(self, n: int) -> None:
        self.parallel = max(1, min(self.max_parallel, n))

    async def unload(self) -> None:
        self.loaded = False
        self.unloads += 1


@dataclass
class FakeNode:
    calls: list[float] = field(default_factory=list)

    async def hibernate_idle(self, min_idle: float) -> int:
        self.calls.append(min_idle)
        return 3


def test_max_min_shares() -> None:
    assert max_min_shares({"a": 1.0, "b": 2.0}, 10.0) == {"a": 1.0, "b": 2.0}
    shares = max_min_shares({"light": 2.0, "mid": 10.0, "heavy": 40.0}, 30.0)
    assert shares == {"light": 2.0, "mid": 10.0, "heavy": pytest.approx(18.0)}
    assert max_min_shares({"a": 9.0, "b": 9.0, "c": 9.0}, 12.0) == pytest.approx({"a": 4.0, "b": 4.0, "c": 4.0})
    assert max_min_shares({}, 5.0) == {}


def test_only_agents_above_their_share_are_over_and_nobody_when_all_fit() -> None:
    assert over_share({"light": 2.0, "mid": 10.0, "heavy": 40.0}, 30.0) == {"heavy": pytest.approx(18.0)}
    assert over_share({"a": 9.0, "b": 9.0, "c": 9.0}, 12.0) == pytest.approx({"a": 4.0, "b": 4.0, "c": 4.0})
    assert over_share({"a": 10.0, "b": 20.0}, 30.0) == {}  # fits exactly: nobody is gated
    assert over_share({}, 0.0) == {}


async def test_over_budget_the_heavy_agent_is_gated_and_the_light_one_is_not() -> None:
    gov = Governor(PROFILE, u_per_cpu=U_PER_CPU)
    for t in range(3):
        await gov.tick(report(float(t), 58.0, {"heavy": 40.0, "light": 2.0}))
    assert gov.status.level == CONSTRAINED
    with pytest.raises(Overloaded) as err:
        gov.admit("heavy", interactive=True)
    assert err.value.retry_after == 1.0 and "fair share" in err.value.message
    gov.admit("light", interactive=True)
    gov.admit("light", interactive=True)
    assert gov.status.deferred["fair_share"] == 1 and gov.status.admitted == 2


async def test_background_work_is_deferred_when_constrained_and_chat_goes_first() -> None:
    gov = Governor(PROFILE, u_per_cpu=U_PER_CPU)
    await gov.tick(report(0.0, 20.0))
    assert gov.status.level == NORMAL
    gov.admit("a", interactive=False)
    for t in range(1, 6):
        await gov.tick(report(float(t), 59.0, {"a": 1.0}))
    assert gov.status.level == CONSTRAINED
    with pytest.raises(Overloaded) as err:
        gov.admit("a", interactive=False)
    assert err.value.retry_after == 5.0 and "background" in err.value.message
    gov.admit("a", interactive=True)
    for t in range(6, 12):
        await gov.tick(report(float(t), 20.0))
    assert gov.status.level == NORMAL
    gov.admit("a", interactive=False)


async def test_an_agent_over_its_daily_quota_is_deprioritised_and_told_why() -> None:
    used = {"hog": 40.0, "frugal": 1.0}  # joules today
    gov = Governor(
        PROFILE,
        GovernorConfig(daily_quota_wh=0.005),  # 18 J
        u_per_cpu=U_PER_CPU,
        joules_today=lambda agent: used.get(agent, 0.0),
    )
    await gov.tick(report(0.0, 20.0))  # normal: spare power, everyone runs
    gov.admit("hog", interactive=False)
    for t in range(1, 8):
        await gov.tick(report(float(t), 46.0))  # busy (over 80 % of the 54 W target)
    assert gov.status.level == "busy"
    with pytest.raises(Overloaded, match="daily energy quota"):
        gov.admit("hog", interactive=False)
    gov.admit("hog", interactive=True)
    gov.admit("frugal", interactive=False)
    status = gov.quota_status("hog")
    assert status["over"] and "quota" in status["message"]
    assert not gov.quota_status("frugal")["over"]
    gov.set_quota("hog", None)
    assert not gov.quota_status("hog")["over"]
    gov.admit("hog", interactive=False)


async def test_llm_threads_are_fitted_to_the_budget_and_rise_back_slowly() -> None:
    llm = FakeLLM(threads=8)
    llm.queue.extend(["r1", "r2", "r3"])
    gov = Governor(PROFILE, u_per_cpu=U_PER_CPU)
    gov.attach(None, llm)
    await gov.tick(report(0.0, 20.0))  # 8 queued threads would take the node to 68 W
    assert gov.status.predicted_w == pytest.approx(PROFILE.max_w, rel=0.02)
    assert llm.threads < 8
    fitted = llm.threads
    assert gov.predict(report(0.0, 20.0), fitted) <= gov.target_w < gov.predict(report(0.0, 20.0), fitted + 1)
    # the node quietens: one more thread per tick, never straight back to 8
    await gov.tick(report(1.0, 13.0))
    assert llm.threads <= fitted + 1


async def test_the_model_is_unloaded_after_minutes_without_a_request() -> None:
    llm = FakeLLM()
    gov = Governor(PROFILE, GovernorConfig(unload_after_s=600.0), u_per_cpu=U_PER_CPU)
    gov.attach(None, llm)
    llm.last_request_at = 1000.0
    await gov.tick(report(1500.0, 13.0))
    assert llm.loaded
    await gov.tick(report(1601.0, 13.0))
    assert not llm.loaded and gov.status.llm_unloads == 1
    assert gov.describe()["llm_unloads"] == 1


async def test_constrained_node_hibernates_idle_agents_early() -> None:
    node = FakeNode()
    gov = Governor(PROFILE, GovernorConfig(early_hibernate_after_s=30.0), u_per_cpu=U_PER_CPU)
    gov.attach(node, None)
    await gov.tick(report(0.0, 30.0))
    assert node.calls == []
    await gov.tick(report(1.0, 66.0))
    assert node.calls == [30.0] and gov.status.hibernated_early == 3


# ---- cgroup backstop ----


def cgroup_tree(tmp_path: Path, group: str, files: dict[str, str], membership: str) -> tuple[Path, Path, Path]:
    """A cgroup filesystem whose `group` holds `files`, and the process's `/proc/self/cgroup` (`membership`)."""
    fs = tmp_path / "cgroup"
    (fs / group).mkdir(parents=True)
    for name, text in files.items():
        (fs / group / name).write_text(text)
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text(membership)
    return fs, fs / group, self_cgroup


def test_cgroup_v2_cpu_max_is_written_and_released(tmp_path: Path) -> None:
    fs, group, self_cgroup = cgroup_tree(tmp_path, "hero.slice/node", {"cpu.max": "max 100000\n"},
                                         "0::/hero.slice/node\n")
    b = CpuMaxBackstop(fs, self_cgroup)
    assert b.available and b.kind == "v2"
    b.limit(1.5)
    assert (group / "cpu.max").read_text() == "150000 100000\n"
    b.limit(None)
    assert (group / "cpu.max").read_text() == "max\n"


def test_cgroup_v1_quota_is_written(tmp_path: Path) -> None:
    fs, group, self_cgroup = cgroup_tree(
        tmp_path, "cpu,cpuacct/hero", {"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"},
        "5:memory:/hero\n4:cpu,cpuacct:/hero\n1:name=systemd:/\n",
    )
    b = CpuMaxBackstop(fs, self_cgroup)
    assert b.available and b.kind == "v1"
    b.limit(2.0)
    assert (group / "cpu.cfs_quota_us").read_text() == "200000\n"


def test_no_delegated_cgroup_is_reported_not_faked(tmp_path: Path) -> None:
    self_cgroup = tmp_path / "self_cgroup"
    self_cgroup.write_text("0::/\n")
    b = CpuMaxBackstop(tmp_path / "cgroup", self_cgroup)
    assert not b.available and "root cgroup" in b.reason
    self_cgroup.write_text("0::/user.slice/x\n")
    b = CpuMaxBackstop(tmp_path / "cgroup", self_cgroup)
    assert not b.available and "not delegated" in b.reason
    b.limit(1.0)  # a no-op when unavailable
    assert b.limit_cpus is None
    gov = Governor(PROFILE, u_per_cpu=U_PER_CPU, backstop=b)
    assert gov.describe()["cgroup_backstop"] == {
        "available": False,
        "kind": None,
        "reason": b.reason,
        "limit_cpus": None,
    }


async def test_governor_caps_the_cgroup_when_soft_measures_are_not_enough(tmp_path: Path) -> None:
    fs, group, self_cgroup = cgroup_tree(tmp_path, "hero", {"cpu.max": "max 100000\n"}, "0::/hero\n")
    backstop = CpuMaxBackstop(fs, self_cgroup)
    gov = Governor(PROFILE, GovernorConfig(release_after_ticks=2), u_per_cpu=U_PER_CPU, backstop=backstop)
    for t in range(5):
        await gov.tick(report(float(t), 66.0, busy_cpu_s=7.5, process_cpu_s=7.5))
    assert backstop.limit_cpus is not None and 0 < backstop.limit_cpus < 8
    assert PROFILE.watts(backstop.limit_cpus * U_PER_CPU) <= gov.target_w
    quota, period = (group / "cpu.max").read_text().split()
    assert int(quota) == int(backstop.limit_cpus * 100000) and period == "100000"
    for t in range(5, 20):
        await gov.tick(report(float(t), 20.0))
    assert backstop.limit_cpus is None and (group / "cpu.max").read_text() == "max\n"


# ---- a simulated 10× burst ----


class Burst:
    """A node simulated second by second: chats (LLM work) and background timers arrive; CPU becomes watts.

    The governor and the ledger are the real ones; the simulated parts are the
    workload and the machine: the LLM serves `threads × 10` tokens/s and keeps
    `threads` CPUs busy while it has work, the event loop does at most one
    CPU-second per second, and watts come from the profile's curve.
    """

    TOKENS_PER_THREAD_S = 10.0

    def __init__(self, governed: bool) -> None:
        self.governed = governed
        self.llm = FakeLLM(threads=8)
        self.cpu_ns = 0
        self.loop_ns = 0
        self.ledger = Ledger(
            PROFILE.idle_w, clock="thread", process_clock=lambda: self.cpu_ns, loop_clock=lambda: self.loop_ns
        )
        self.gov = Governor(
            PROFILE, u_per_cpu=U_PER_CPU, joules_today=self.ledger.joules_today, demand=self.ledger.demand
        )
        self.gov.attach(None, self.llm)
        self.loop_backlog: deque[tuple[str, float]] = deque()
        self.deferred: list[tuple[float, str]] = []
        self.watts: list[float] = []
        self.refused_chats = 0
        self.served_tokens = 0.0

    def admit(self, agent: str, interactive: bool) -> bool:
        if not self.governed:
            return True
        try:
            self.gov.admit(agent, interactive=interactive)
        except Overloaded as e:
            if not interactive:
                self.deferred.append((self.t + e.retry_after, agent))
            else:
                self.refused_chats += 1
            return False
        return True

    async def run(self, seconds: int, burst: tuple[int, int], factor: float = 10.0) -> list[float]:
        chats = timers = 0.0
        for t in range(seconds):
            self.t = float(t)
            mult = factor if burst[0] <= t < burst[1] else 1.0
            chats += 0.25 * mult
            timers += 0.5 * mult
            n = 0
            while chats >= 1.0:
                chats -= 1.0
                agent = f"user{(t * 7 + n) % 50}"
                n += 1
                if self.admit(agent, True):
                    self.loop_backlog.append((agent, 0.02))
                    self.llm.queue.append([agent, 40.0])
                    self.llm.last_request_at = self.t
            due = [a for when, a in self.deferred if when <= t]
            self.deferred = [(when, a) for when, a in self.deferred if when > t]
            while timers >= 1.0:
                timers -= 1.0
                due.append(f"user{(t * 3 + n) % 50}")
                n += 1
            for agent in due:
                if self.admit(agent, False):
                    self.loop_backlog.append((agent, 0.15))
            rep = self.second()
            assert rep.conservation_ok
            if self.governed:
                await self.gov.tick(rep)
        return self.watts

    def second(self) -> TickReport:
        loop_s = 0.0
        while self.loop_backlog and loop_s < 1.0:
            agent, need = self.loop_backlog.popleft()
            run = min(need, 1.0 - loop_s)
            self.ledger.charge_cpu(agent, int(run * 1e9))
            loop_s += run
            if run < need:
                self.loop_backlog.appendleft((agent, need - run))
        threads = self.llm.threads if self.governed else 8
        budget_tokens = threads * self.TOKENS_PER_THREAD_S
        llm_s = 0.0
        while self.llm.queue and budget_tokens > 0:
            request = self.llm.queue[0]
            take = min(request[1], budget_tokens)
            request[1] -= take
            budget_tokens -= take
            self.served_tokens += take
            cpu_s = take / self.TOKENS_PER_THREAD_S  # thread-seconds spent on these tokens
            llm_s += cpu_s
            self.ledger.charge_llm(request[0], int(cpu_s * 1e9), int(take))
            if request[1] <= 0:
                self.llm.queue.popleft()
        runtime_s = 0.02
        busy = loop_s + llm_s + runtime_s
        self.loop_ns += int((loop_s + runtime_s) * 1e9)
        self.cpu_ns += int(busy * 1e9)
        u = min(1.0, busy / PROFILE.cores)
        watts = PROFILE.watts(u)
        self.watts.append(watts)
        return self.ledger.tick(
            PowerSample(
                t=self.t,
                dt=1.0,
                watts=watts,
                source="model",
                utilisation=u,
                host_utilisation=u,
                busy_cpu_s=busy,
                host_cpus=PROFILE.cores,
            )
        )


def five_second_averages(watts: list[float]) -> list[float]:
    return [sum(watts[i - 5 : i]) / 5 for i in range(5, len(watts) + 1)]


async def test_a_simulated_10x_burst_keeps_the_5s_average_under_budget() -> None:
    ungoverned = Burst(governed=False)
    await ungoverned.run(90, (20, 60))
    assert max(five_second_averages(ungoverned.watts)) > PROFILE.budget_w  # the burst alone would break it

    governed = Burst(governed=True)
    await governed.run(90, (20, 60))
    averages = five_second_averages(governed.watts)
    assert max(averages) <= PROFILE.budget_w, averages
    assert governed.served_tokens > 0.5 * ungoverned.served_tokens  # throttled, not stopped
    assert governed.llm.threads < 8
    assert governed.gov.status.deferred["background"] > 0  # background waited…
    assert governed.refused_chats <= 0.05 * 112  # …while nearly every one of the ~112 chats went through

"""The ledger: per-step CPU attribution against a CPU-time oracle, LLM charging, conservation."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path

import pytest

from hero.power.ledger import Ledger
from hero.power.meter import NodeMeter, PowerSample
from hero.power.oracle import burn_ms, interleaved
from hero.power.profiles import HardwareProfile, load_profile
from tests.test_power_meter import FakeClock, FakeStat

MS = 1_000_000
A_AND_B = {"A": 2.0, "B": 6.0}  # ms per half message: B does 3 units of work for A's 1


def sample(t: float, dt: float, *, watts: float = 50.0, utilisation: float = 0.5, busy_cpu_s: float = 0.0
           ) -> PowerSample:
    return PowerSample(
        t=t,
        dt=dt,
        watts=watts,
        source="model",
        utilisation=utilisation,
        host_utilisation=utilisation,
        busy_cpu_s=busy_cpu_s,
        host_cpus=2,
    )


def sample_now(ledger_start: float, *, watts: float = 50.0, busy_cpu_s: float = 0.0) -> PowerSample:
    now = time.monotonic()
    return sample(now, now - ledger_start, watts=watts, busy_cpu_s=busy_cpu_s)


@pytest.mark.parametrize("clock", ["adaptive", "thread"])
async def test_interleaved_agents_are_attributed_within_5_percent(clock: str) -> None:
    ledger = Ledger(10.0, clock=clock)
    ledger.prime()
    start = time.monotonic()
    truth = await interleaved(ledger.run_turn, A_AND_B, 30)
    report = ledger.tick(sample_now(start))
    got = report.agents_cpu_s
    for agent in ("A", "B"):
        assert got[agent] == pytest.approx(truth[agent] / 1e9, rel=0.05), (agent, got, truth)
    assert got["B"] / got["A"] == pytest.approx(3.0, rel=0.05)
    assert ledger.get("A").steps_total >= 60 and ledger.get("A").open_turns == 0


async def test_short_steps_on_the_wall_clock_are_reconciled() -> None:
    """Steps under the adaptive threshold are timed with perf_counter and scaled to the loop thread's CPU.

    Looser than the 5 % of long steps on purpose: on a contended machine a preemption inside a 50 µs
    step is charged to that step (the tick only rescales the total, and only down to the loop
    thread's CPU), so the split is noisier; measured ~2 % on a quiet machine, up to 25 % under load 4.
    """
    ratios = []
    for _ in range(3):  # a burst of load preempting short steps skews one run; a wrong split skews all three
        ledger = Ledger(10.0)
        ledger.prime()
        start = time.monotonic()
        truth = await interleaved(ledger.run_turn, {"A": 0.05, "B": 0.15}, 150)
        report = ledger.tick(sample_now(start))
        assert ledger.get("B").exact is False  # 150 µs steps stayed on the cheap clock
        got = report.agents_cpu_s
        assert got["A"] + got["B"] <= report.process_cpu_s * 1.01  # reconciled: never more than the loop used
        assert got["A"] + got["B"] >= 0.9 * (truth["A"] + truth["B"]) / 1e9
        ratios.append((got["B"] / got["A"]) / (truth["B"] / truth["A"]))
        if ratios[-1] == pytest.approx(1.0, rel=0.25):  # ~2 % on a quiet machine
            break
    assert any(r == pytest.approx(1.0, rel=0.25) for r in ratios), ratios


async def test_a_contended_loop_thread_switches_every_step_to_the_exact_clock() -> None:
    """When the kernel says the loop thread waited for a CPU, short steps stop using the wall clock.

    Its 50 µs steps are timed on the wall clock, which a preemption on a loaded machine stretches past
    the bound that tells the first step from the rest: a real fault fails all three tries."""
    failures: list[AssertionError] = []
    for _ in range(3):
        try:
            await contended_loop_switches_to_the_exact_clock()
            return
        except AssertionError as exc:
            failures.append(exc)
    raise failures[-1]


async def contended_loop_switches_to_the_exact_clock() -> None:
    delay = {"ns": 0}
    ledger = Ledger(10.0, run_delay=lambda: delay["ns"])

    async def short() -> None:
        burn_ms(0.05)
        await asyncio.sleep(0)
        burn_ms(0.05)

    await ledger.run_turn("a", short())
    acct = ledger.get("a")
    assert acct.wall_ns > 0 and acct.cpu_ns == 0 and not ledger.contended
    delay["ns"] += 50_000_000  # 50 ms of waiting in a 1 s tick
    r = ledger.tick(sample(1.0, 1.0, watts=20.0, utilisation=0.1, busy_cpu_s=0.1))
    assert ledger.contended and r.loop_wait_ratio == pytest.approx(0.05) and ledger.exact_after_ns == 0
    await ledger.run_turn("a", short())
    assert acct.cpu_ns > 0 and acct.wall_ns < 60_000  # only the first step, decided before the switch
    ledger.tick(sample(2.0, 1.0, watts=20.0, utilisation=0.1, busy_cpu_s=0.1))
    assert not ledger.contended and ledger.exact_after_ns == 250_000  # calm again: back to the cheap clock


async def test_a_clock_around_the_whole_handler_fails_the_same_test() -> None:
    """The guard: timing whole handlers counts the other agent's steps too (B/A far from 3)."""
    naive = {"A": 0, "B": 0}

    async def around(agent: str, coro) -> None:
        t0 = time.thread_time_ns()
        await coro
        naive[agent] += time.thread_time_ns() - t0

    truth = await interleaved(around, A_AND_B, 30)
    assert naive["A"] > 1.5 * truth["A"]  # A is charged for B's work done while A was suspended
    assert naive["B"] / naive["A"] < 2.0


async def test_failed_and_cancelled_turns_are_still_charged() -> None:
    ledger = Ledger(10.0, clock="thread")

    async def fails() -> None:
        burn_ms(15)
        raise ValueError("agent bug")

    with pytest.raises(ValueError):
        await ledger.run_turn("x", fails())
    assert ledger.get("x").cpu_ns == pytest.approx(15 * MS, rel=0.1)

    blocker: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def cancelled() -> None:
        burn_ms(15)
        try:
            await blocker
        except asyncio.CancelledError:
            burn_ms(15)  # cleanup after cancellation runs in the thrown-in step
            raise

    task = asyncio.create_task(ledger.run_turn("y", cancelled()))  # works with create_task, too
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ledger.get("y").cpu_ns == pytest.approx(30 * MS, rel=0.1)
    assert ledger.get("y").open_turns == 0


async def test_nested_turns_are_not_counted_twice() -> None:
    ledger = Ledger(10.0, clock="thread")

    async def inner() -> str:
        burn_ms(10)
        await asyncio.sleep(0)
        return "done"

    async def outer() -> str:
        burn_ms(5)
        result = await ledger.run_turn("inner", inner())
        burn_ms(5)
        return result

    assert await ledger.run_turn("outer", outer()) == "done"
    assert ledger.get("inner").cpu_ns == pytest.approx(10 * MS, rel=0.1)
    assert ledger.get("outer").cpu_ns == pytest.approx(10 * MS, rel=0.1)


async def test_llm_time_from_the_inference_thread_is_charged_to_the_requesting_agent() -> None:
    ledger = Ledger(10.0)
    ledger.prime()
    start = time.monotonic()

    def inference(agent: str) -> None:
        t0 = time.thread_time_ns()
        burn_ms(40)
        ledger.charge_llm(agent, time.thread_time_ns() - t0, tokens=7)

    await asyncio.to_thread(inference, "asker")
    await ledger.run_turn("bystander", asyncio.sleep(0))
    report = ledger.tick(sample_now(start))
    assert report.agents_cpu_s["asker"] == pytest.approx(0.040, rel=0.15)
    assert report.agents_cpu_s["bystander"] < 0.002
    assert report.llm_cpu_s == pytest.approx(0.040, rel=0.15)
    assert ledger.get("asker").tokens_total == 7 and ledger.get("bystander").tokens_total == 0
    assert report.agents_w["asker"] > 50 * report.agents_w["bystander"]


async def test_inference_cpu_is_charged_as_measured_whatever_else_runs_off_the_loop() -> None:
    """The LLM service measures every compute thread itself (scheduler/cputime.py); another thread's work (a store
    writer) is not inference and must not be scaled into the asker's charge."""
    ledger = Ledger(10.0)
    ledger.prime()
    start = time.monotonic()

    def inference() -> None:
        writer = threading.Thread(target=burn_ms, args=(40,))
        writer.start()
        t0 = time.thread_time_ns()
        burn_ms(40)
        ledger.charge_llm("asker", time.thread_time_ns() - t0, tokens=3)
        writer.join()

    await asyncio.to_thread(inference)
    report = ledger.tick(sample_now(start))
    assert report.agents_cpu_s["asker"] == pytest.approx(0.040, rel=0.2)
    assert report.llm_cpu_s == pytest.approx(0.040, rel=0.2)


def test_conservation_with_a_fake_proc_stat(tmp_path: Path) -> None:
    """power.md's worked example: 10 W idle, 60 W max, 2 cores, U = 0.74 → 47.2 W, split exactly."""
    stat = FakeStat(tmp_path / "stat", cpus=2)
    clock = FakeClock()
    profile = HardwareProfile(name="example", cores=2, ram_gb=4, idle_w=10.0, max_w=60.0, budget_w=60.0)
    meter = NodeMeter(profile, powercap_root=tmp_path / "absent", proc_stat=stat.path, clock=clock)
    proc = {"ns": 0}
    ledger = Ledger(profile.idle_w, clock="thread", process_clock=lambda: proc["ns"], loop_clock=lambda: proc["ns"])
    ledger.charge_cpu("A", int(0.1048e9))
    ledger.charge_cpu("B", int(0.3064e9))
    ledger.charge_storage("B", 4096)
    proc["ns"] = int((0.1048 + 0.3064 + 0.0292) * 1e9)  # the process also ran 29.2 ms of runtime work
    clock.t += 1.0
    stat.advance(busy=148, idle=52)
    r = ledger.tick(meter.read(), hosted=4)
    assert r.node_w == pytest.approx(47.0)  # 10 + 50 × 0.74
    assert r.agents_w["A"] == pytest.approx(2.62, abs=0.01)
    assert r.agents_w["B"] == pytest.approx(7.66, abs=0.01)
    assert r.runtime_w == pytest.approx(0.73, abs=0.01)
    parts = r.idle_w + sum(r.agents_w.values()) + r.runtime_w + r.other_w
    assert parts == pytest.approx(r.node_w, rel=1e-6)
    assert r.conservation_ok and r.conservation_error < 1e-6
    assert r.agents_w["B"] / r.agents_w["A"] == pytest.approx(0.3064 / 0.1048, rel=0.1)
    assert r.idle_share_w == pytest.approx(2.5)  # 10 W over 4 hosted agents, reported beside, not inside
    assert ledger.get("B").storage_total == 4096
    assert ledger.get("A").joules == pytest.approx(2.62, abs=0.01)

    # The next second nobody runs: agents draw nothing; the whole dynamic part is other processes'.
    clock.t += 1.0
    stat.advance(busy=100, idle=100)
    r2 = ledger.tick(meter.read(), hosted=4)
    assert r2.agents_w == {}
    assert r2.idle_w + r2.runtime_w + r2.other_w == pytest.approx(r2.node_w, rel=1e-6)


def test_a_reading_below_profile_idle_is_flagged_not_hidden(tmp_path: Path) -> None:
    ledger = Ledger(20.0, process_clock=lambda: 0, loop_clock=lambda: 0)
    r = ledger.tick(
        PowerSample(
            t=1.0, dt=1.0, watts=14.0, source="rapl", utilisation=0.1, host_utilisation=0.1, busy_cpu_s=0.2, host_cpus=2
        )
    )
    assert not r.conservation_ok and ledger.conservation_violations == 1


def test_averages_decay_while_idle_and_energy_counts_today() -> None:
    wall = {"t": 86400.0 * 100 + 3600}
    cpu = {"ns": 0}
    ledger = Ledger(
        10.0,
        clock="thread",
        process_clock=lambda: cpu["ns"],
        loop_clock=lambda: cpu["ns"],
        wall_clock=lambda: wall["t"],
    )

    def second(t: float, charge_s: float) -> None:
        if charge_s:
            ledger.charge_cpu("a", int(charge_s * 1e9))
        cpu["ns"] += int(charge_s * 1e9)
        wall["t"] += 1.0
        ledger.tick(
            PowerSample(
                t=t,
                dt=1.0,
                watts=10.0 + 40.0 * charge_s,
                source="model",
                utilisation=charge_s,
                host_utilisation=charge_s,
                busy_cpu_s=charge_s,
                host_cpus=1,
            )
        )

    for t in range(1, 61):
        second(float(t), 0.5)  # 20 W for a minute
    acct = ledger.get("a")
    w10, w1h = acct.averages(60.0)
    assert w10 == pytest.approx(20.0, rel=0.01)
    assert 0.2 < w1h < 1.0  # an hour's average has barely started
    assert ledger.joules_today("a") == pytest.approx(1200.0)
    w10_later, _ = acct.averages(90.0)  # 30 s with no tick for this agent: decayed lazily
    assert w10_later == pytest.approx(w10 * math.exp(-3.0), rel=1e-6)
    wall["t"] += 86400.0  # tomorrow
    assert ledger.joules_today("a") == 0.0
    assert acct.joules == pytest.approx(1200.0)


async def test_parked_agents_run_no_steps_and_cost_nothing() -> None:
    """200 agents parked on a queue for 1 s: zero steps after parking, near-zero CPU, no watts."""
    ledger = Ledger(12.0)
    queues = [asyncio.Queue() for _ in range(200)]

    async def parked(q: asyncio.Queue) -> None:
        await q.get()

    tasks = [asyncio.create_task(ledger.run_turn(f"agent{i}", parked(q))) for i, q in enumerate(queues)]
    await asyncio.sleep(0.05)  # every agent has taken its first step and parked
    ledger.prime()
    cpu0 = time.process_time()
    start = time.monotonic()
    await asyncio.sleep(1.0)
    used = time.process_time() - cpu0
    r = ledger.tick(sample_now(start, watts=12.5, busy_cpu_s=used))
    assert r.steps == 0 and sum(r.agents_w.values()) == 0.0
    assert used < 0.02
    for q in queues:
        q.put_nowait(None)
    await asyncio.gather(*tasks)
    assert all(ledger.get(f"agent{i}").open_turns == 0 for i in range(200))


def test_profile_is_the_default_idle_source() -> None:
    profile = load_profile()
    assert Ledger(profile.idle_w).idle_w == 12.0

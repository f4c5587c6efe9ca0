"""Power benchmark: metering overhead per turn, tick cost with 1,000 agents, attribution error, idle cost.

    .venv/bin/python bench/power_bench.py [--quick] [--json]

Every figure is printed with its target. Overheads are ratios against an
unmetered baseline run in the same process, interleaved and best-of-N,
because absolute times on a shared VM are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from hero.config import NodeConfig
from hero.identity import NodeKeys, UserKey
from hero.power.config import PowerConfig
from hero.power.governor import Governor
from hero.power.ledger import Ledger
from hero.power.meter import PowerSample
from hero.power.oracle import interleaved
from hero.power.profiles import load_profile
from hero.power.service import PowerService
from hero.runtime.agent import Agent
from hero.runtime.events import Event, Ping, Reply
from hero.runtime.node import Node
from hero.server import open_store

PROFILE = load_profile("zos-edge-60w")


def spin_us(us: float) -> None:
    end = time.perf_counter_ns() + int(us * 1000)
    while time.perf_counter_ns() < end:
        pass


async def turn(us: float, steps: int) -> None:
    for i in range(steps):
        spin_us(us / steps)
        if i < steps - 1:
            await asyncio.sleep(0)


async def overhead(us: float, steps: int, clock: str, n: int, reps: int) -> dict[str, Any]:
    """ns per turn, unmetered vs `run_turn`-metered, best of `reps` interleaved runs."""
    ledger = Ledger(PROFILE.idle_w, clock=clock)
    best = {"base": float("inf"), "metered": float("inf")}
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            await turn(us, steps)
        best["base"] = min(best["base"], (time.perf_counter_ns() - t0) / n)
        t0 = time.perf_counter_ns()
        for _ in range(n):
            await ledger.run_turn("a", turn(us, steps))
        best["metered"] = min(best["metered"], (time.perf_counter_ns() - t0) / n)
    return overhead_figures(best, turn_us=us, steps=steps, clock=clock)


def overhead_figures(best: dict[str, float], **about: Any) -> dict[str, Any]:
    """`about` the run, then the best ns per turn unmetered and metered, and what metering added."""
    extra = best["metered"] - best["base"]
    return {
        **about,
        "base_ns": round(best["base"]),
        "metered_ns": round(best["metered"]),
        "overhead_ns": round(extra),
        "overhead_pct": round(100 * extra / best["base"], 2),
    }


class Spinner(Agent):
    """Bench agent: every event costs `us` µs of CPU, split over `steps` steps."""

    us = 100.0
    steps = 1

    async def handle(self, event: Event, reply: Reply) -> None:
        await turn(self.us, self.steps)


async def node_overhead(us: float, steps: int, n: int, reps: int) -> dict[str, Any]:
    """ns per turn through the real Node (mailbox, drain task, reply), without and with PowerService."""
    Spinner.us, Spinner.steps = us, steps
    best = {"base": float("inf"), "metered": float("inf")}
    with tempfile.TemporaryDirectory() as d:
        data = Path(d)
        keys = NodeKeys.load_or_create(data)
        store = await open_store(NodeConfig(data_dir=data), keys)
        power = PowerService(PROFILE, data, PowerConfig(cgroup_backstop=False, history=False))
        nodes = {  # Ping turns never reach the LLM
            "base": Node(store, None, Spinner, node_id=keys.node_id, idle_after_s=3600),
            "metered": Node(store, None, Spinner, node_id=keys.node_id, idle_after_s=3600,
                            metering=power, admission=power),
        }
        agent = UserKey.generate().agent_id
        for node in nodes.values():
            await node.start()
        event = Ping()
        for _ in range(reps):
            for name, node in nodes.items():
                await node.post(agent, event)
                await node.settle()  # activated; the agent stays in memory
                t0 = time.perf_counter_ns()
                for _ in range(n):
                    await node.post(agent, event)
                await node.settle()
                best[name] = min(best[name], (time.perf_counter_ns() - t0) / n)
                await node.hibernate_idle(0.0)  # hand the lease to the other node
        for node in nodes.values():
            await node.aclose()
        await store.aclose()
    return overhead_figures(best, turn_us=us, steps=steps)


def sample(t: float, busy: float) -> PowerSample:
    u = min(1.0, busy / PROFILE.cores)
    return PowerSample(
        t=t,
        dt=1.0,
        watts=PROFILE.watts(u),
        source="model",
        utilisation=u,
        host_utilisation=u,
        busy_cpu_s=busy,
        host_cpus=PROFILE.cores,
    )


async def tick_cost(agents: int, active: int, ticks: int) -> dict[str, Any]:
    """Ledger split + governor decision per tick, with `agents` hosted and `active` of them charged each tick."""
    cpu = {"ns": 0}
    ledger = Ledger(PROFILE.idle_w, process_clock=lambda: cpu["ns"], loop_clock=lambda: cpu["ns"])
    governor = Governor(PROFILE, u_per_cpu=1 / PROFILE.cores, joules_today=ledger.joules_today)
    names = [f"agent{i:04d}" for i in range(agents)]
    for name in names:
        ledger.account(name)
    times: list[float] = []
    for t in range(1, ticks + 1):
        for name in names[:active]:
            ledger.charge_cpu(name, 300_000)
        cpu["ns"] += active * 300_000 + 5_000_000
        s = sample(float(t), cpu["ns"] / 1e9 / t)
        t0 = time.perf_counter_ns()
        report = ledger.tick(s, hosted=agents)
        await governor.tick(report)
        times.append((time.perf_counter_ns() - t0) / 1e3)
    return {
        "agents": agents,
        "active": active,
        "median_us": round(statistics.median(times), 1),
        "p90_us": round(sorted(times)[int(0.9 * len(times))], 1),
    }


async def attribution(messages: int) -> dict[str, Any]:
    """Interleaved agents A (1 unit) and B (3 units), each message suspending mid-way; error against CPU truth."""
    out: dict[str, Any] = {}
    units_ms = {"A": 0.6, "B": 1.8}
    for clock in ("adaptive", "thread"):
        ledger = Ledger(PROFILE.idle_w, clock=clock)
        ledger.prime()
        start = time.monotonic()
        truth = await interleaved(ledger.run_turn, units_ms, messages)
        now = time.monotonic()
        report = ledger.tick(
            PowerSample(
                t=now,
                dt=now - start,
                watts=40.0,
                source="model",
                utilisation=0.5,
                host_utilisation=0.5,
                busy_cpu_s=0.0,
                host_cpus=2,
            )
        )
        got = report.agents_cpu_s
        err = max(abs(got[a] - truth[a] / 1e9) / (truth[a] / 1e9) for a in ("A", "B"))
        out[clock] = {
            "max_error_pct": round(100 * err, 2),
            "b_over_a": round(got["B"] / got["A"], 3),
            "true_b_over_a": round(truth["B"] / truth["A"], 3),
        }

    naive = {"A": 0, "B": 0}

    async def around(name: str, coro) -> None:
        t0 = time.thread_time_ns()
        await coro
        naive[name] += time.thread_time_ns() - t0

    truth = await interleaved(around, units_ms, messages)
    err = max(abs(naive[a] - truth[a]) / truth[a] for a in ("A", "B"))
    out["around_handler"] = {
        "max_error_pct": round(100 * err, 1),
        "b_over_a": round(naive["B"] / naive["A"], 3),
        "sum_over_truth_pct": round(100 * sum(naive.values()) / sum(truth.values()), 1),
    }
    return out


async def idle_cost(agents: int, seconds: float) -> dict[str, Any]:
    """`agents` parked on a queue plus the real 1 Hz PowerService tick: CPU share of one core."""
    with tempfile.TemporaryDirectory() as d:
        power = PowerService(PROFILE, Path(d), PowerConfig(cgroup_backstop=False))
        await power.start()
        queues = [asyncio.Queue() for _ in range(agents)]
        tasks = [asyncio.create_task(power.run_turn(f"a{i}", q.get())) for i, q in enumerate(queues)]
        await asyncio.sleep(0.1)
        c0, t0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        used, wall = time.process_time() - c0, time.monotonic() - t0
        ticks = power.ledger.ticks
        for q in queues:
            q.put_nowait(None)
        await asyncio.gather(*tasks)
        await power.aclose()
    return {"agents": agents, "seconds": round(wall, 1), "cpu_pct_of_core": round(100 * used / wall, 3), "ticks": ticks}


async def main(quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    n, reps = (3000, 5) if quick else (10000, 9)
    results["overhead"] = [
        await overhead(us, steps, clock, max(200, int(n * 10 / us)), reps)
        for clock in ("adaptive", "thread")
        for us in (10.0, 100.0, 1000.0)
        for steps in (1, 2)
    ]
    results["node_overhead"] = [
        await node_overhead(us, steps, 2000 if quick else 5000, reps) for us in (10.0, 100.0) for steps in (1, 2)
    ]
    results["tick"] = [await tick_cost(1000, active, 50 if quick else 200) for active in (1000, 10)]
    results["attribution"] = await attribution(40 if quick else 120)
    results["idle"] = await idle_cost(200, 2.0 if quick else 10.0)
    return results


def report(r: dict[str, Any]) -> None:
    print(f"power bench · {r['cpus']} CPUs")
    print("metering overhead per turn (target <= 2 % at 100 µs turns with the default clock, 'adaptive'):")
    for o in r["overhead"]:
        print(
            f"  {o['clock']:8s} {o['turn_us']:5.0f} µs turn, {o['steps']} step(s): base {o['base_ns']} ns, "
            f"+{o['overhead_ns']} ns = {o['overhead_pct']:+.2f} %"
        )
    print("the same through the real Node (post → mailbox → drain → turn), Node without vs with PowerService:")
    for o in r["node_overhead"]:
        print(
            f"  adaptive {o['turn_us']:5.0f} µs turn, {o['steps']} step(s): base {o['base_ns']} ns, "
            f"+{o['overhead_ns']} ns = {o['overhead_pct']:+.2f} %"
        )
    for t in r["tick"]:
        print(
            f"tick (ledger + governor), {t['agents']} agents, {t['active']} active: median {t['median_us']} µs, "
            f"p90 {t['p90_us']} µs (target <= 1000 µs per 1,000 agents)"
        )
    a = r["attribution"]
    for clock in ("adaptive", "thread"):
        x = a[clock]
        print(
            f"attribution, per-step {clock} clock: max error {x['max_error_pct']} % (target <= 5 %), "
            f"B/A {x['b_over_a']} (true {x['true_b_over_a']})"
        )
    x = a["around_handler"]
    print(
        f"attribution, clock around the whole handler (rejected): max error {x['max_error_pct']} %, "
        f"B/A {x['b_over_a']}, Σ agents = {x['sum_over_truth_pct']} % of the true CPU"
    )
    i = r["idle"]
    print(
        f"idle: {i['agents']} parked agents + the 1 Hz tick for {i['seconds']} s: "
        f"{i['cpu_pct_of_core']} % of a core ({i['ticks']} ticks)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (CI smoke run)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    results = asyncio.run(main(args.quick))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results)

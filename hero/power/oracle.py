"""A CPU-time oracle: the truth the ledger's per-agent attribution is checked against.

The ledger's tests and `bench/power_bench.py` both use it, so the test and the
benchmark measure the same thing. `burn_ms` spends a known amount of this
thread's CPU time; `interleaved` runs agents on one loop, each message burning,
suspending (the other agents run then) and burning again, every message wrapped
by `run` (the metering under test, such as `Ledger.run_turn`), and returns the
CPU time each agent really used.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

Run = Callable[[str, Coroutine[Any, Any, None]], Awaitable[object]]


def burn_ms(ms: float) -> int:
    """Spin until this thread's CPU time has advanced `ms` milliseconds; returns the CPU ns actually used."""
    start = time.thread_time_ns()
    end = start + int(ms * 1_000_000)
    while (now := time.thread_time_ns()) < end:
        pass
    return now - start


async def message(truth: dict[str, int], agent: str, unit_ms: float) -> None:
    """One message: work, suspend (other agents run here), work again; its CPU ns are added to `truth[agent]`."""
    truth[agent] += burn_ms(unit_ms)
    await asyncio.sleep(0)
    truth[agent] += burn_ms(unit_ms)


async def interleaved(run: Run, units_ms: Mapping[str, float], messages: int) -> dict[str, int]:
    """Each agent (name → ms per half message) sends `messages` messages through `run`, all agents at once on
    this loop; returns the CPU ns each really used."""
    truth = dict.fromkeys(units_ms, 0)

    async def agent(name: str, unit_ms: float) -> None:
        for _ in range(messages):
            await run(name, message(truth, name, unit_ms))

    async with asyncio.TaskGroup() as tg:
        for name, unit_ms in units_ms.items():
            tg.create_task(agent(name, unit_ms))
    return truth

"""Metering a turn: the step driver that charges each step of an agent's coroutine to the agent, and its clocks.

Why per step: agents share one event loop, so a clock around a whole handler
also counts every other agent that ran while it was suspended (measured: B/A
1.4 instead of 3, Σ agents 142 % of the loop). The coroutine returned by
`run_turn` reads the clock around each `send`/`throw` into the agent's
coroutine, i.e. only while the agent's own code runs.

Clocks: "adaptive" (default) reads `perf_counter_ns` (~50 ns) around short
steps, reconciled each tick by the loop thread's CPU time, and
`thread_time_ns` (~0.6 µs, a real syscall, exact under preemption) for an
agent whose last step took ≥ 250 µs, where two reads cost < 0.5 %. A
preemption inside a short wall-timed step would be charged to it, so while
the kernel says the loop thread is waiting for CPUs (schedstat run delay
≥ 2 % of the last tick) every step is timed exactly. "thread" reads thread CPU time
around every step: exact, about 3 % at 100 µs turns. Both are tested
against a CPU-time oracle.
"""

from __future__ import annotations

import time
import types
from collections.abc import Coroutine, Generator
from typing import Any, Protocol, TypeVar

from hero.power.account import AgentAccount

T = TypeVar("T")

EXACT_AFTER_NS = {"adaptive": 250_000, "thread": 0}  # step length after which thread CPU time is read
CONTENDED_WAIT = 0.02  # loop thread waited for a CPU ≥ 2 % of a tick: time every step exactly next tick
SCHEDSTAT = "/proc/thread-self/schedstat"


def loop_run_delay_ns() -> int | None:
    """Nanoseconds the calling thread has spent runnable but waiting for a CPU (None if not exposed)."""
    try:
        with open(SCHEDSTAT) as f:
            return int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None


class StepLedger(Protocol):
    """What the step driver reads and moves on the ledger (`hero.power.ledger.Ledger`)."""

    charged_ns: int  # running total of clock time charged by metered steps, so nested turns are not counted twice
    exact_after_ns: int  # a step this long makes the agent's next steps read thread CPU time


@types.coroutine
def metered_steps(coro: Coroutine[Any, Any, T], acct: AgentAccount, ledger: StepLedger) -> Generator[Any, Any, T]:
    """Drive `coro` one step at a time, charging each step's time to `acct`.

    A generator (not a class with Python-level `send`) so the event loop
    resumes it natively: about half the cost per step. The clock is chosen
    per step: after a step of at least `ledger.exact_after_ns`, the agent's
    next steps read thread CPU time (exact under preemption, 0.6 µs a read,
    negligible against a long step); short steps read the wall clock (50 ns)
    and are reconciled each tick. While the kernel reports the loop thread
    waiting for a CPU, the threshold is 0: every step is timed exactly. Time spent in a metered turn nested inside
    this one is in `ledger.charged_ns` and is subtracted, so nothing is
    counted twice. Steps that raise, including cancellation, are charged too.
    """
    wall = time.perf_counter_ns
    cpu = time.thread_time_ns
    send = coro.send
    value: Any = None
    exc: BaseException | None = None
    try:
        while True:
            before = ledger.charged_ns
            exact = acct.exact
            t0 = cpu() if exact else wall()
            try:
                if exc is None:
                    fut = send(value)
                else:
                    fut = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            finally:
                own = (cpu() if exact else wall()) - t0 - (ledger.charged_ns - before)
                if exact:
                    acct.cpu_ns += own
                else:
                    acct.wall_ns += own
                acct.exact = own >= ledger.exact_after_ns
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


async def metered_turn(coro: Coroutine[Any, Any, T], acct: AgentAccount, ledger: StepLedger) -> T:
    """A real coroutine around the step driver, so `create_task` and TaskGroups accept it on 3.12+."""
    return await metered_steps(coro, acct, ledger)

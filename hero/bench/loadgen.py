"""The load: every active user plays their planned sessions against the node's HTTP API, on one loop.

Each user is one task (owned by a Nursery): sleep until the session arrives, read `/api/me` as a
chat app does when it opens (that tells whether the agent was hibernated), then send the session's
messages, each after its think time, each a streamed chat completion. A user who sets a reminder
holds `/api/me/events` open until it arrives. No message starts after the run's duration; messages
in flight then are waited for (up to a drain limit), and so are reminders already set.

A monitor samples the node's own figures while the load runs: `/api/node/status` every second and
the full `/api/node/power` report (one window, every agent) every `POWER_EVERY_S`, which is the
power window, so consecutive reports cover the run without overlapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from hero.bench.client import ANSWERED, FAILED, UNFINISHED, EventWatch, MessageResult, agent_status, auth, chat
from hero.bench.nodeproc import BenchUser
from hero.bench.workload import REMINDER, UserPlan, Workload
from hero.nursery import Nursery

STATUS_EVERY_S = 1.0
POWER_EVERY_S = 5.0
REMINDER_GRACE_S = 30.0  # a reminder may arrive this long after it is due before it counts as not delivered
READY_TIMEOUT_S = 30.0


@dataclass
class Reminder:
    user: int
    text: str  # what the fired reminder carries
    set_s: float
    due_s: float
    arrived_s: float | None = None


@dataclass
class Samples:
    status: list[dict[str, Any]] = field(default_factory=list)
    power: list[dict[str, Any]] = field(default_factory=list)
    errors: int = 0


@dataclass
class LoadResult:
    results: list[MessageResult]
    reminders: list[Reminder]
    samples: Samples
    elapsed_s: float  # load start → last message or reminder done
    watch_errors: list[str]


def power_sample(t: float, report: dict[str, Any]) -> dict[str, Any]:
    """The parts of one power report the benchmark keeps, with the window's conservation checked here."""
    agents_sum = sum(a["watts"] for a in report["agents"])
    parts = report["idle_watts"] + agents_sum + report["runtime_watts"] + report["other_watts"]
    node = report["node_watts"]
    return {
        "t": t,
        "ts": report["ts"],
        "window_s": report["window_s"],
        "node_watts": node,
        "idle_watts": report["idle_watts"],
        "agents_watts": agents_sum,
        "runtime_watts": report["runtime_watts"],
        "other_watts": report["other_watts"],
        "budget_watts": report["budget_watts"],
        "conservation_error": abs(parts - node) / node if node > 0 else 0.0,
        "node_conservation_error": report["conservation"]["error"],
        "agents_by_status": report["agents_by_status"],
        "governor_level": report["governor"].get("level") if isinstance(report.get("governor"), dict) else None,
        "utilisation": report["utilisation"],
    }


class LoadRun:
    def __init__(self, workload: Workload, users: list[BenchUser], url: str, operator: str,
                 client: httpx.AsyncClient, *, drain_s: float, on_sample: Callable[[LoadRun], None] | None = None):
        self.workload = workload
        self.users = users
        self.url = url
        self.operator = operator
        self.client = client
        self.drain_s = drain_s
        self.on_sample = on_sample
        self.results: list[MessageResult] = []
        self.reminders: list[Reminder] = []
        self.samples = Samples()
        self.watch_errors: list[str] = []
        self.t0 = 0.0
        # Set before the users are cancelled: httpx can turn a cancellation inside a stream into a
        # transport error (which a user records and goes on from), so each user also checks this flag.
        self.stopping = False
        self._tasks = Nursery("bench-users")
        self._side = Nursery("bench-side")  # event streams and the monitor

    def now(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def sent(self) -> int:
        return len(self.results)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    async def run(self) -> LoadResult:
        self.t0 = time.perf_counter()
        duration = self.workload.duration_s
        monitor = self._side.spawn(self._monitor(), name="bench-monitor")
        for plan in self.workload.users:
            self._tasks.spawn(self._user(plan, self.users[plan.user]), name=f"user:{plan.user}")
        limit = duration + self.drain_s + max((r.reminder_s or 0.0 for u in self.workload.users for s in u.sessions
                                               for r in s.messages), default=0.0) + REMINDER_GRACE_S
        try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a Ctrl-C that lands as the join ends
            async with asyncio.timeout(max(1.0, limit - self.now())):
                await self._tasks.join()
                await asyncio.sleep(max(0.0, duration - self.now()))  # the run lasts its duration, busy or not
        except TimeoutError:
            pass  # messages still in flight become `unfinished` below
        finally:
            elapsed = self.now()
            self.stopping = True
            await self._tasks.aclose()
            monitor.cancel()
            await self._side.aclose()
        for r in self.results:
            if r.status == FAILED and r.error is None:  # cancelled in flight: neither an answer nor an error
                r.status, r.error = UNFINISHED, "no answer before the run's drain limit"
        return LoadResult(self.results, self.reminders, self.samples, elapsed, self.watch_errors)

    async def _user(self, plan: UserPlan, user: BenchUser) -> None:
        duration = self.workload.duration_s
        watch: EventWatch | None = None
        watching: asyncio.Task[None] | None = None
        mine: list[Reminder] = []
        try:
            for session in plan.sessions:
                if session.start_s >= duration:
                    break
                await asyncio.sleep(max(0.0, session.start_s - self.now()))
                if self.now() >= duration:
                    break
                status = await agent_status(self.client, self.url, user.token)
                for i, message in enumerate(session.messages):
                    if i:
                        await asyncio.sleep(message.think_s)
                    if self.now() >= duration or self.stopping:
                        break
                    if message.kind == REMINDER and watch is None:
                        watch = EventWatch(self.client, self.url, user.token, self.now)
                        watching = self._side.spawn(watch.run(), name=f"events:{plan.user}")
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(watch.ready.wait(), READY_TIMEOUT_S)
                    result = MessageResult(plan.user, message.kind, self.now(), woke=i == 0 and status == "hibernated",
                                           request_text=message.text)
                    self.results.append(result)
                    await chat(self.client, self.url, user.token, result)
                    if self.stopping:
                        return
                    if message.kind == REMINDER and result.status == ANSWERED and message.reminder_text:
                        set_s = result.sent_s + (result.accept_s or 0.0)
                        reminder = Reminder(plan.user, message.reminder_text, set_s, set_s + (message.reminder_s or 0))
                        mine.append(reminder)
                        self.reminders.append(reminder)
            if watch is not None:
                await self._await_reminders(watch, mine)
        finally:
            if watch is not None and watching is not None:
                watch.closed = True
                watching.cancel()  # the user closes the stream once their reminders are in
            if watch is not None:
                for r in mine:
                    r.arrived_s = watch.arrived.get(f"⏰ Reminder: {r.text}")
                if watch.error:
                    self.watch_errors.append(f"user {plan.user}: {watch.error}")

    async def _await_reminders(self, watch: EventWatch, mine: list[Reminder]) -> None:
        deadline = max((r.due_s for r in mine), default=0.0) + REMINDER_GRACE_S
        while any(f"⏰ Reminder: {r.text}" not in watch.arrived for r in mine) and self.now() < deadline:
            watch.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch.changed.wait(), deadline - self.now())

    async def _monitor(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        next_power = 0.0
        headers = auth(self.operator)
        while not self.stopping:
            now = self.now()
            try:
                response = await self.client.get(f"{self.url}/api/node/status", headers=headers)
                status = response.json()
                self.samples.status.append(
                    {"t": now, "active": status["agents"]["active"], "hibernated": status["agents"]["hibernated"],
                     "tokens_total": status["llm"]["tokens_total"], "queue_depth": status["llm"]["queue_depth"],
                     "running": status["llm"].get("running"),  # sequences in the LLM's batch, where it batches
                     "activations": status["runtime"]["activations"], "hibernations": status["runtime"]["hibernations"],
                     "timers_fired": status["runtime"]["timers_fired"]})
                if now >= next_power:
                    next_power = now + POWER_EVERY_S
                    response = await self.client.get(f"{self.url}/api/node/power", headers=headers)
                    self.samples.power.append(power_sample(self.now(), response.json()))
            except (httpx.HTTPError, ValueError, KeyError):
                self.samples.errors += 1
            if self.on_sample is not None:
                self.on_sample(self)
            due += STATUS_EVERY_S
            await asyncio.sleep(max(0.0, due - loop.time()))

"""The node runtime: agents as virtual actors on one asyncio loop.

An agent exists whether or not it is in memory. `deliver` activates it on
demand (concurrent first events share one activation), runs one turn at a time
per agent in the agent's own task (`eager.AgentTask`), and after `idle_after`
seconds without an event the agent hibernates: its state goes to the store and
the object is dropped. Nothing polls: one loop timer for the earliest idle
deadline, one for the earliest durable timer.

Faults cost only the agent they touch: an agent whose objects cannot be read is
damaged (`damage.py`) while the others run; a hibernation whose write fails
keeps the agent in memory and is tried again with back-off; a timer whose turn
keeps raising is set aside (kept in the state's `timers_set_aside`) after a few
tries (`backoff.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hero.errors import AgentDamaged, AgentError, HeroError, Unavailable
from hero.identity import check_agent_id
from hero.nursery import Nursery
from hero.runtime.agent import LLM, Agent, AgentContext
from hero.runtime.backoff import Retries
from hero.runtime.damage import DamagedAgents
from hero.runtime.delivery import TimerDelivery
from hero.runtime.directory import Directory, Lease
from hero.runtime.eager import AgentTask, AgentTasks
from hero.runtime.events import Event, Reply, TimerFired
from hero.runtime.report import AgentInfo, NodeStats
from hero.runtime.seams import Admission, Metering
from hero.runtime.state import decode_state, encode_state, state_key, timers_key
from hero.runtime.subscriptions import Subscription, Subscriptions
from hero.runtime.timers import Timer, decode_timers
from hero.store.base import StateStore

log = logging.getLogger("hero.runtime")

AgentFactory = Callable[[AgentContext], Agent]


@dataclass(eq=False)
class _Activation:
    agent_id: str
    lease: Lease
    ctx: AgentContext
    agent: Agent = field(init=False)
    task: AgentTask = field(init=False)
    mailbox: deque[tuple[Event, Reply | None]] = field(default_factory=deque)
    busy: bool = False  # a drain or the hibernation owns the agent: turns never overlap
    last_event: float = field(default_factory=time.monotonic)
    persisted: bytes = b""
    hibernating: bool = False
    failures: int = 0  # failed hibernations in a row
    retry_at: float = 0.0  # monotonic; no hibernation is tried before it


def _wall(monotonic: float) -> float:
    """Unix time of a monotonic instant (the hot path reads only the monotonic clock)."""
    return time.time() - (time.monotonic() - monotonic)


class Node:
    def __init__(
        self,
        store: StateStore,
        llm: LLM,
        agent_factory: AgentFactory,
        *,
        node_id: str = "local",
        idle_after: float = 300.0,
        directory: Directory | None = None,
        metering: Metering | None = None,
        admission: Admission | None = None,
        shutdown_grace: float = 10.0,
        retries: Retries | None = None,
    ) -> None:
        self.store = store
        self.llm = llm
        self.agent_factory = agent_factory
        self.node_id = node_id
        self.idle_after = idle_after
        self.directory = directory or Directory()
        self.metering = metering
        self.admission = admission
        self.shutdown_grace = shutdown_grace
        self.retries = retries or Retries()
        self.stats = NodeStats()
        self._tasks = Nursery("node")  # timers being delivered, idle sweeps
        self._delivery = TimerDelivery(self.deliver, self._tasks, self.retries.timer, self.stats)
        self.timers = self._delivery.schedule
        self.damaged = DamagedAgents(self.retries.damaged)
        self._active: dict[str, _Activation] = {}
        self._activating: dict[str, asyncio.Future[_Activation]] = {}
        self._hibernating: dict[str, asyncio.Future[None]] = {}
        self._known: dict[str, float | None] = {}  # agent id -> last event (unix) for hibernated agents
        self._subscriptions = Subscriptions()
        self._agent_tasks = AgentTasks()  # one task per agent in memory, parked between events
        self._idle_handle: asyncio.TimerHandle | None = None
        self._idle_at = 0.0
        self._closing = False

    # lifecycle

    async def start(self) -> None:
        """Learn which agents exist and load every durable timer; unreadable timers damage only their agent."""
        for key in await self.store.keys("agent/"):
            agent_id, _, kind = key[len("agent/") :].partition("/")
            if kind == "state":
                self._known.setdefault(agent_id, None)
            elif kind == "timers":
                with contextlib.suppress(AgentDamaged):  # damages only this agent; logged
                    await self._load_timers(agent_id)

    async def _load_timers(self, agent_id: str) -> None:
        async with self.damaged.reading(agent_id, "timers"):
            head = await self.store.latest(timers_key(agent_id))
            timers = decode_timers(head[1]) if head else []
        for timer in timers:
            self.timers.add(timer)

    async def join(self) -> None:
        """Wait until no turn is running or queued and no timer delivery or sweep is left."""
        while self._agent_tasks.running or self._tasks:
            await self._agent_tasks.join()
            await self._tasks.join()

    async def aclose(self) -> None:
        """Let running turns finish (up to the grace period), then hibernate every agent."""
        self._closing = True
        self._delivery.close()
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        try:
            await asyncio.wait_for(self.join(), self.shutdown_grace)
        except TimeoutError:
            log.warning("turns still running after %.0fs; cancelling them", self.shutdown_grace)
        await self._agent_tasks.aclose()
        await self._tasks.aclose()
        deadline = time.monotonic() + self.shutdown_grace
        for act in list(self._active.values()):
            failures = act.failures
            while not await self._hibernate(act) and act.failures > failures and act.retry_at < deadline:
                failures = act.failures
                await asyncio.sleep(max(0.0, act.retry_at - time.monotonic()))
            if act.agent_id in self._active:
                log.error("agent %s: its state since its last write is lost: it could not be written at shutdown",
                          act.agent_id)

    # delivery

    async def deliver(self, agent_id: str, event: Event) -> Reply:
        """Route an event to an agent, activating it if needed, and return the reply channel.

        `reply.wait_accepted()` says when the event is durable; iterating the reply streams what the agent says.
        """
        reply = Reply()
        await self.post(agent_id, event, reply)
        return reply

    async def post(self, agent_id: str, event: Event, reply: Reply | None = None) -> None:
        """Queue an event in the agent's mailbox; its turns run in order, one at a time.

        The drain starts eagerly, in this call, as the agent's task: a turn that never
        waits finishes before `post` returns; one that waits goes on in the agent's task.
        """
        if self._closing:
            raise Unavailable("node is shutting down")
        if self.admission is not None:
            self.admission.admit(agent_id, interactive=event.interactive)
        act = self._active.get(agent_id)
        if act is None or act.hibernating:
            act = await self._activate(agent_id)
        act.last_event = time.monotonic()
        act.mailbox.append((event, reply))
        if not act.busy:
            act.busy = True
            act.task.start(self._drain(act))

    async def _drain(self, act: _Activation) -> None:
        try:
            while act.mailbox:
                event, reply = act.mailbox.popleft()
                await self._run(act, event, reply or Reply())
        except asyncio.CancelledError:
            for _, reply in act.mailbox:
                if reply is not None:
                    reply.fail(Unavailable("node is shutting down"))
            act.mailbox.clear()  # refused, never accepted: nothing of them is kept
            raise
        finally:
            act.busy = False
            act.last_event = time.monotonic()
            if self._idle_handle is None or act.last_event + self.idle_after < self._idle_at:
                self._arm_idle(act.last_event + self.idle_after)

    async def _run(self, act: _Activation, event: Event, reply: Reply) -> None:
        self.stats.turns += 1
        turn = act.agent.handle(event, reply)
        try:
            if self.metering is not None:
                await self.metering.run_turn(act.agent_id, turn)
            else:
                await turn
            if isinstance(event, TimerFired):
                await self._unschedule(act, event.timer_id)
            reply.accept()
        except asyncio.CancelledError:
            reply.fail(Unavailable("node is shutting down"))
            raise
        except HeroError as exc:
            self.stats.turn_errors += 1
            log.warning("agent %s: %s", act.agent_id[:12], exc.message)
            reply.fail(exc)
            if isinstance(event, TimerFired):
                self._delivery.failed(event.timer_id, exc.message)
        except Exception as exc:
            self.stats.turn_errors += 1
            log.exception("agent %s: turn failed on %s", act.agent_id[:12], type(event).__name__)
            reply.fail(AgentError("the agent failed to answer; the error was logged"))
            if not isinstance(event, TimerFired):
                await self._record_failure(act, f"Sorry, something went wrong ({type(exc).__name__}).")
            elif (timer := self._delivery.failed(event.timer_id, repr(exc), poison=True)) is not None:
                await self._set_aside(act, timer, exc)
        finally:
            reply.close()

    async def _record_failure(self, act: _Activation, text: str) -> None:
        """Keep the user's view honest: a failure leaves one error entry in the history."""
        act.ctx.add_message("assistant", text, kind="error")
        try:
            await self._persist(act)
        except HeroError:
            log.exception("agent %s: could not persist the error entry", act.agent_id[:12])

    # activation and hibernation

    async def _activate(self, agent_id: str) -> _Activation:
        hibernation = self._hibernating.get(agent_id)
        if hibernation is not None:
            await asyncio.shield(hibernation)  # let its state reach the store before we load it again
        act = self._active.get(agent_id)
        if act is not None:
            return act
        check_agent_id(agent_id)
        pending = self._activating.get(agent_id)
        if pending is not None:
            return await asyncio.shield(pending)
        damage = self.damaged.check(agent_id)
        if damage is not None:
            raise damage.error()  # refused without store I/O until its next retry is due
        future: asyncio.Future[_Activation] = asyncio.get_running_loop().create_future()
        self._activating[agent_id] = future
        try:
            act = await self._load(agent_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; waiters get it from the shield
            raise
        else:
            future.set_result(act)
            return act
        finally:
            del self._activating[agent_id]

    async def _load(self, agent_id: str) -> _Activation:
        damage = self.damaged.get(agent_id)
        if damage is not None and damage.part == "timers":
            await self._load_timers(agent_id)  # the retry: raises AgentDamaged while still unreadable
        async with self.damaged.reading(agent_id, "state"):
            head = await self.store.latest(state_key(agent_id))
            floor, raw = (head[0].epoch, head[1]) if head else (0, b"")
            state, repaired = decode_state(raw)
        self.damaged.clear(agent_id)
        lease = self.directory.acquire(agent_id, self.node_id, floor=floor)
        try:
            ctx = AgentContext(
                agent_id,
                state,
                llm=self.llm,
                persist=lambda: self._persist(act),
                schedule=lambda timer: self._schedule(act, timer),
                unschedule=lambda timer_id: self._unschedule(act, timer_id),
                publish=lambda message: self._subscriptions.publish(agent_id, message),
            )
            act = _Activation(agent_id, lease, ctx, persisted=raw)
            act.agent = self.agent_factory(ctx)
            act.task = self._agent_tasks.new(f"agent:{agent_id[:8]}")
        except BaseException:
            self.directory.release(lease)
            raise
        if self.metering is not None and raw:
            self.metering.charge_storage(agent_id, len(raw))
        self._active[agent_id] = act
        self._known.pop(agent_id, None)
        self.stats.activations += 1
        if repaired:
            log.warning("agent %s: invalid Unicode in its stored state was replaced with U+FFFD", agent_id)
            try:
                await self._persist(act)
            except HeroError as exc:
                log.warning("agent %s: the repaired state is written later: %s", agent_id, exc.message)
        return act

    async def _persist(self, act: _Activation) -> None:
        data = encode_state(act.ctx.state)
        if data == act.persisted:
            return
        await self.store.put(state_key(act.agent_id), data, epoch=act.lease.epoch)
        act.persisted = data
        if self.metering is not None:
            self.metering.charge_storage(act.agent_id, len(data))

    async def _hibernate(self, act: _Activation) -> bool:
        """Write the state and drop the object; only for an agent with no turn running and no mail.

        If the write fails the agent stays in memory (nothing it accepted is lost) and the idle
        sweep tries again after a back-off. True if the agent left memory.
        """
        if act.busy or act.mailbox or act.hibernating:
            return False
        act.busy = act.hibernating = True
        done = asyncio.get_running_loop().create_future()
        self._hibernating[act.agent_id] = done
        written = False
        try:
            try:
                await act.agent.on_hibernate()
            except Exception:
                log.exception("agent %s: on_hibernate failed; its state is written as it is", act.agent_id[:12])
            await self._persist(act)
            written = True
        except HeroError as exc:
            act.failures += 1
            act.retry_at = time.monotonic() + self.retries.hibernate.delay_s(act.failures)
            self.stats.hibernate_failures += 1
            log.warning("agent %s stays in memory: its state could not be written (%s); next try in %.0fs",
                        act.agent_id, exc.message, act.retry_at - time.monotonic())
        finally:
            act.busy = act.hibernating = written  # a dropped activation takes no more turns
            del self._hibernating[act.agent_id]
            done.set_result(None)
        if not written:
            return False
        self._active.pop(act.agent_id, None)
        self._known[act.agent_id] = _wall(act.last_event)
        self.directory.release(act.lease)
        act.task.close()
        self.stats.hibernations += 1  # events sent meanwhile wait in `_activate` for a fresh activation
        return True

    async def hibernate_idle(self, min_idle: float) -> int:
        """Hibernate every agent idle for at least `min_idle` seconds, not in a turn and not in back-off."""
        now = time.monotonic()
        due = [a for a in self._active.values() if now - a.last_event >= min_idle and not a.busy and now >= a.retry_at]
        return sum([await self._hibernate(act) for act in due])

    def _arm_idle(self, deadline: float | None = None) -> None:
        """One loop timer for the earliest idle deadline or hibernation retry: idle agents cost no wake-ups."""
        if self._closing or (self._idle_handle is not None and (deadline is None or deadline >= self._idle_at)):
            return
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        deadlines = [max(a.last_event + self.idle_after, a.retry_at) for a in self._active.values() if not a.busy]
        self._idle_handle = None
        if deadlines:
            self._idle_at = min(deadlines)
            loop = asyncio.get_running_loop()
            self._idle_handle = loop.call_at(loop.time() + max(0.0, self._idle_at - time.monotonic()), self._idle_due)

    def _idle_due(self) -> None:
        self._idle_handle = None
        if not self._closing:
            self._tasks.spawn(self._sweep(), name="idle-sweep")

    async def _sweep(self) -> None:
        try:
            await self.hibernate_idle(self.idle_after)
        finally:
            self._arm_idle()

    # timers

    async def _schedule(self, act: _Activation, timer: Timer) -> None:
        self.timers.add(timer)
        await self._write_timers(act)

    async def _unschedule(self, act: _Activation, timer_id: str) -> None:
        if self.timers.remove(timer_id) is not None:
            await self._write_timers(act)

    async def _write_timers(self, act: _Activation) -> None:
        pending = [t.to_json() for t in self.timers.pending(act.agent_id)]
        await self.store.put(timers_key(act.agent_id), json.dumps(pending).encode(), epoch=act.lease.epoch)

    async def _set_aside(self, act: _Activation, timer: Timer, exc: Exception) -> None:
        await self._record_failure(act, self._delivery.set_aside_in(act.ctx.state, timer, exc))
        try:
            await self._write_timers(act)
        except HeroError as err:
            log.warning("agent %s: timers not written after setting one aside: %s", act.agent_id[:12], err.message)

    # queries and live messages

    def is_active(self, agent_id: str) -> bool:
        return agent_id in self._active

    @property
    def active_count(self) -> int:
        return len(self._active)

    def agent_state(self, agent_id: str) -> str | None:
        """ "active", "hibernated", "damaged", or None for an agent this node has never seen; no store I/O."""
        if agent_id in self._active:
            return "active"
        if agent_id in self.damaged:
            return "damaged"
        return "hibernated" if agent_id in self._known else None

    def agent_states(self) -> dict[str, str]:
        """Every agent this node knows and its state (as `agent_state`), from memory alone."""
        states = dict.fromkeys(self._known, "hibernated")
        states.update((d.agent_id, "damaged") for d in self.damaged.all())
        states.update(dict.fromkeys(self._active, "active"))
        return states

    async def agents(self) -> list[AgentInfo]:
        out = [AgentInfo(a.agent_id, "active", _wall(a.last_event)) for a in self._active.values()]
        out += [AgentInfo(d.agent_id, "damaged", self._known.get(d.agent_id), d.reason, d.since)
                for d in self.damaged.all()]
        for agent_id, last in self._known.items():
            if agent_id in self.damaged:
                continue
            if last is None:
                try:
                    head = await self.store.head(state_key(agent_id))
                except HeroError:
                    head = None
                last = head.created if head else None
            out.append(AgentInfo(agent_id, "hibernated", last))
        return sorted(out, key=lambda info: info.agent_id)

    async def history(self, agent_id: str) -> list[dict[str, Any]]:
        """The agent's conversation, oldest first, without activating it (invalid text repaired)."""
        act = self._active.get(agent_id)
        if act is not None:
            return list(act.ctx.history)
        damage = self.damaged.check(agent_id)
        if damage is not None and damage.part == "state":
            raise damage.error()
        async with self.damaged.reading(agent_id, "state"):
            head = await self.store.latest(state_key(agent_id))
            state, _ = decode_state(head[1] if head else b"")
        history = state.get("history", [])
        return history if isinstance(history, list) else []

    def subscribe(self, agent_id: str) -> Subscription:
        """Live messages of one agent (replies, reminders) from now on. Registered before this returns."""
        return self._subscriptions.subscribe(agent_id)

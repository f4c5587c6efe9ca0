"""The node runtime: agents as virtual actors on one asyncio loop.

An agent exists whether or not it is in memory. `deliver` activates it on
demand (concurrent first events share one activation), runs one turn at a time
per agent, and after `idle_after` seconds without an event the agent
hibernates: its state goes to the store and the object is dropped. Nothing
polls: one loop timer for the earliest idle deadline, one for the earliest
durable timer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from hero.errors import AgentError, HeroError, NotFound, Overloaded, Unavailable
from hero.identity import check_agent_id
from hero.nursery import Nursery
from hero.runtime.agent import LLM, Agent, AgentContext, Message
from hero.runtime.directory import Directory, Lease
from hero.runtime.eager import start_eager
from hero.runtime.events import Event, Reply, TimerFired
from hero.runtime.seams import Admission, Metering
from hero.runtime.timers import Timer, TimerSchedule
from hero.store.base import StateStore

log = logging.getLogger("hero.runtime")

AgentFactory = Callable[[AgentContext], Agent]


def state_key(agent_id: str) -> str:
    return f"agent/{agent_id}/state"


def timers_key(agent_id: str) -> str:
    return f"agent/{agent_id}/timers"


@dataclass(frozen=True)
class AgentInfo:
    agent_id: str
    state: str  # "active" | "hibernated"
    last_event: float | None  # unix time


@dataclass
class NodeStats:
    activations: int = 0
    hibernations: int = 0
    turns: int = 0
    turn_errors: int = 0
    timers_fired: int = 0


@dataclass(eq=False)
class _Activation:
    agent_id: str
    lease: Lease
    ctx: AgentContext
    agent: Agent = field(init=False)
    mailbox: deque[tuple[Event, Reply | None]] = field(default_factory=deque)
    busy: bool = False  # a drain or the hibernation owns the agent: turns never overlap
    last_event: float = field(default_factory=time.monotonic)
    last_event_wall: float = field(default_factory=time.time)
    persisted: bytes = b""
    hibernating: bool = False


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
        self.stats = NodeStats()
        self.timers = TimerSchedule(self._timer_due)
        self._active: dict[str, _Activation] = {}
        self._activating: dict[str, asyncio.Future[_Activation]] = {}
        self._hibernating: dict[str, asyncio.Future[None]] = {}
        self._known: dict[str, float | None] = {}  # agent id -> last event (unix) for hibernated agents
        self._subscribers: dict[str, set[asyncio.Queue[Message]]] = {}
        self._tasks = Nursery("node")
        self._idle_handle: asyncio.TimerHandle | None = None
        self._closing = False

    # lifecycle

    async def start(self) -> None:
        """Learn which agents exist and load every durable timer into the node-wide schedule."""
        for key in await self.store.keys("agent/"):
            agent_id, _, kind = key[len("agent/") :].partition("/")
            if kind == "state":
                self._known.setdefault(agent_id, None)
            elif kind == "timers":
                for raw in json.loads(await self.store.get(key)):
                    self.timers.add(Timer(**raw))

    async def aclose(self) -> None:
        """Let running turns finish (up to the grace period), then hibernate every agent."""
        self._closing = True
        self.timers.close()
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        try:
            await asyncio.wait_for(self._tasks.join(), self.shutdown_grace)
        except TimeoutError:
            log.warning("turns still running after %.0fs; cancelling them", self.shutdown_grace)
        await self._tasks.aclose()
        for act in list(self._active.values()):
            try:
                await self._hibernate(act)
            except HeroError:
                log.exception("could not hibernate agent %s", act.agent_id)

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

        The drain starts eagerly, in this call: a turn that never waits finishes
        before `post` returns; one that waits continues in a task of the node's nursery.
        """
        if self._closing:
            raise Unavailable("node is shutting down")
        if self.admission is not None:
            self.admission.admit(agent_id, interactive=event.interactive)
        act = self._active.get(agent_id)
        if act is None or act.hibernating:
            act = await self._activate(agent_id)
        act.last_event = time.monotonic()
        act.last_event_wall = time.time()
        act.mailbox.append((event, reply))
        if not act.busy:
            act.busy = True
            start_eager(self._drain(act), self._tasks, name=f"agent:{agent_id[:8]}")

    async def _drain(self, act: _Activation) -> None:
        try:
            while act.mailbox:
                event, reply = act.mailbox.popleft()
                await self._run(act, event, reply or Reply())
        except asyncio.CancelledError:
            for _, reply in act.mailbox:
                if reply is not None:
                    reply.fail(Unavailable("node is shutting down"))
            raise
        finally:
            act.busy = False
            act.last_event = time.monotonic()
            self._arm_idle()

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
        except Exception as exc:
            self.stats.turn_errors += 1
            log.exception("agent %s: turn failed on %s", act.agent_id[:12], type(event).__name__)
            reply.fail(AgentError("the agent failed to answer; the error was logged"))
            await self._record_failure(act, exc)
        finally:
            reply.close()

    async def _record_failure(self, act: _Activation, exc: Exception) -> None:
        """Keep the user's view honest: the failed turn leaves an error entry in the history."""
        act.ctx.add_message("assistant", f"Sorry, something went wrong ({type(exc).__name__}).", kind="error")
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
        head = await self.store.latest(state_key(agent_id))
        floor, raw = (head[0].epoch, head[1]) if head else (0, b"")
        lease = self.directory.acquire(agent_id, self.node_id, floor=floor)
        try:
            state: dict[str, Any] = json.loads(raw) if raw else {}
            ctx = AgentContext(
                agent_id,
                state,
                llm=self.llm,
                persist=lambda: self._persist(act),
                schedule=lambda timer: self._schedule(act, timer),
                unschedule=lambda timer_id: self._unschedule(act, timer_id),
                publish=lambda message: self._publish(agent_id, message),
            )
            act = _Activation(agent_id, lease, ctx, persisted=raw)
            act.agent = self.agent_factory(ctx)
        except BaseException:
            self.directory.release(lease)
            raise
        if self.metering is not None and raw:
            self.metering.charge_storage(agent_id, len(raw))
        self._active[agent_id] = act
        self._known.pop(agent_id, None)
        self.stats.activations += 1
        return act

    async def _persist(self, act: _Activation) -> None:
        data = json.dumps(act.ctx.state, separators=(",", ":")).encode()
        if data == act.persisted:
            return
        await self.store.put(state_key(act.agent_id), data, epoch=act.lease.epoch)
        act.persisted = data
        if self.metering is not None:
            self.metering.charge_storage(act.agent_id, len(data))

    async def _hibernate(self, act: _Activation) -> None:
        """Write the state and drop the object. Only for an agent with no turn running and no mail."""
        if act.busy or act.mailbox or act.hibernating:
            return
        act.busy = act.hibernating = True
        done = asyncio.get_running_loop().create_future()
        self._hibernating[act.agent_id] = done
        try:
            await act.agent.on_hibernate()
            await self._persist(act)
            self.stats.hibernations += 1
        finally:
            self._active.pop(act.agent_id, None)
            self._known[act.agent_id] = act.last_event_wall
            self.directory.release(act.lease)
            del self._hibernating[act.agent_id]
            done.set_result(None)
        if act.mailbox:  # events that arrived while we were writing: hand them to a fresh activation
            fresh = await self._activate(act.agent_id)
            fresh.mailbox.extend(act.mailbox)
            act.mailbox.clear()
            if not fresh.busy:
                fresh.busy = True
                start_eager(self._drain(fresh), self._tasks, name=f"agent:{act.agent_id[:8]}")

    async def hibernate_idle(self, min_idle: float) -> int:
        """Hibernate every active agent idle for at least `min_idle` seconds and not in a turn."""
        now = time.monotonic()
        due = [a for a in self._active.values() if now - a.last_event >= min_idle and not a.busy]
        for act in due:
            await self._hibernate(act)
        return len(due)

    def _arm_idle(self) -> None:
        """One loop timer for the earliest idle deadline: idle agents cost no wake-ups of their own."""
        if self._idle_handle is not None or self._closing or not self._active:
            return
        earliest = min(a.last_event for a in self._active.values()) + self.idle_after
        loop = asyncio.get_running_loop()
        self._idle_handle = loop.call_at(loop.time() + max(0.0, earliest - time.monotonic()), self._idle_due)

    def _idle_due(self) -> None:
        self._idle_handle = None
        if not self._closing:
            self._tasks.spawn(self._sweep(), name="idle-sweep")

    async def _sweep(self) -> None:
        await self.hibernate_idle(self.idle_after)
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

    def _timer_due(self, timer: Timer) -> None:
        if not self._closing:
            self._tasks.spawn(self._fire(timer), name=f"timer:{timer.agent_id[:8]}")

    async def _fire(self, timer: Timer) -> None:
        event = TimerFired(timer.timer_id, timer.name, timer.payload, timer.interactive)
        try:
            reply = await self.deliver(timer.agent_id, event)
            await reply.text()
        except Overloaded as exc:
            self.timers.add(replace(timer, due=time.time() + exc.retry_after))  # deferred, not dropped
            return
        except HeroError as exc:
            log.warning("timer %s for agent %s failed: %s; retrying in 30s", timer.name, timer.agent_id[:12], exc)
            self.timers.add(replace(timer, due=time.time() + 30.0))
            return
        self.stats.timers_fired += 1

    # queries and live messages

    def is_active(self, agent_id: str) -> bool:
        return agent_id in self._active

    @property
    def active_count(self) -> int:
        return len(self._active)

    def agent_state(self, agent_id: str) -> str | None:
        """ "active", "hibernated", or None for an agent this node has never seen; no store I/O."""
        if agent_id in self._active:
            return "active"
        return "hibernated" if agent_id in self._known else None

    def agent_states(self) -> dict[str, str]:
        """Every agent this node knows, "active" or "hibernated", from memory alone (no store I/O)."""
        states = dict.fromkeys(self._known, "hibernated")
        states.update(dict.fromkeys(self._active, "active"))
        return states

    async def agents(self) -> list[AgentInfo]:
        out = [AgentInfo(a.agent_id, "active", a.last_event_wall) for a in self._active.values()]
        for agent_id, last in self._known.items():
            if last is None:
                head = await self.store.head(state_key(agent_id))
                last = head.created if head else None
            out.append(AgentInfo(agent_id, "hibernated", last))
        return sorted(out, key=lambda info: info.agent_id)

    async def history(self, agent_id: str) -> list[dict[str, Any]]:
        """The agent's conversation, oldest first, without activating it."""
        act = self._active.get(agent_id)
        if act is not None:
            return list(act.ctx.history)
        try:
            raw = await self.store.get(state_key(agent_id))
        except NotFound:
            return []
        return json.loads(raw).get("history", [])

    def _publish(self, agent_id: str, message: Message) -> None:
        subscribers = self._subscribers.get(agent_id)
        if subscribers is None:
            return
        if not subscribers:
            del self._subscribers[agent_id]  # the last listener left: forget the agent
            return
        for queue in subscribers:
            queue.put_nowait(message)

    def subscribe(self, agent_id: str) -> Subscription:
        """Live messages of one agent (replies, reminders) from now on. Registered before this returns."""
        return Subscription(self._subscribers.setdefault(agent_id, set()))


class Subscription:
    """A listener's queue of an agent's new messages; use as a context manager so it always unsubscribes."""

    def __init__(self, registry: set[asyncio.Queue[Message]]) -> None:
        self._registry = registry
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        registry.add(self._queue)

    async def get(self) -> Message:
        return await self._queue.get()

    def close(self) -> None:
        self._registry.discard(self._queue)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

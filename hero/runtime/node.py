"""The node runtime: agents as virtual actors on one asyncio loop.

An agent exists whether or not it is in memory. `deliver` activates it on
demand (`activation.py`: concurrent first events share one activation, and
after `idle_after_s` seconds without an event it hibernates), then runs one
turn at a time per agent in the agent's own task (`eager.AgentTask`). Durable
timers come back as events (`durable_timers.py`); what an agent publishes goes
to its live listeners (`subscriptions.py`). Nothing polls: one loop timer for
the earliest idle deadline, one for the earliest durable timer.

Faults cost only the agent they touch: an agent whose objects cannot be read is
damaged (`damage.py`) while the others run; a turn that raises fails its event's
reply and the agent tells its user (`Agent.on_failure`); a hibernation whose
write fails, and a timer whose turn keeps raising, are retried with back-off,
and such a timer is set aside after a few tries (`backoff.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from hero.errors import AgentDamaged, AgentError, HeroError, NotFound, Unavailable
from hero.nursery import Nursery
from hero.runtime.activation import Activation, Activations, wall
from hero.runtime.agent import AgentContext, AgentFactory
from hero.runtime.backoff import Retries
from hero.runtime.damage import DamagedAgents
from hero.runtime.directory import Directory
from hero.runtime.durable_timers import DurableTimers
from hero.runtime.eager import AgentTasks
from hero.runtime.events import Event, Reply, TimerFired
from hero.runtime.keys import STATE, TIMERS, parse_key, state_key
from hero.runtime.leases import Leases
from hero.runtime.report import NodeStats
from hero.runtime.subscriptions import Subscription, Subscriptions
from hero.runtime.timers import Timer
from hero.seams.directory import Lease, LeaseDirectory
from hero.seams.llm import LLM
from hero.seams.net import Messenger
from hero.seams.node import AgentInfo, AgentStatus
from hero.seams.power import Admission, Metering
from hero.seams.skills import SpecVerifier
from hero.seams.store import StateStore

log = logging.getLogger("hero.runtime")

T = TypeVar("T")


class Node:
    def __init__(
        self,
        store: StateStore,
        llm: LLM,
        agent_factory: AgentFactory,
        *,
        node_id: str,  # the node's key id (`NodeKeys.node_id`): the owner named in its agents' leases
        idle_after_s: float = 300.0,
        directory: LeaseDirectory | None = None,  # who grants leases (default: an embedded one; a cluster's)
        member: bool = False,  # a cluster member: it heartbeats even when it holds no lease
        metering: Metering | None = None,
        admission: Admission | None = None,
        shutdown_grace_s: float = 10.0,
        retries: Retries | None = None,
        messenger: Messenger | None = None,  # how agents send over the overlay (the server hands one in)
        services: Mapping[str, object] | None = None,  # node-wide services agents find in their context
        verifier: SpecVerifier | None = None,  # asked before an agent is activated (its spec; None: no specs)
    ) -> None:
        self.store = store
        self.llm = llm
        self.messenger = messenger
        self.services: Mapping[str, object] = services or {}
        self.agent_factory = agent_factory
        self.node_id = node_id
        self.directory = directory or Directory()
        self.leases = Leases(self.directory, node_id, member=member)
        self.metering = metering
        self.admission = admission
        self.shutdown_grace_s = shutdown_grace_s
        self.retries = retries or Retries()
        self.stats = NodeStats()
        self.damaged = DamagedAgents(self.retries.damaged)
        self._tasks = Nursery("node")  # timers being delivered, idle sweeps
        self._timers = DurableTimers(store, self.deliver, self._tasks, self.retries.timer, self.damaged, self.stats,
                                     check=self.leases.check)
        self.timers = self._timers.schedule
        self._subscriptions = Subscriptions()
        self._agent_tasks = AgentTasks()  # one task per agent in memory, parked between events
        self._activations = Activations(
            store,
            node_id=node_id,
            build=self._build,
            leases=self.leases,
            damaged=self.damaged,
            timers=self._timers,
            idle_after_s=idle_after_s,
            backoff=self.retries.hibernate,
            stats=self.stats,
            metering=metering,
            spawn=lambda coro, name: self._tasks.spawn(coro, name=name),
            verifier=verifier,
        )
        self._active = self._activations.active  # the hot path's table
        self.leases.on_lost = self._lost
        self.leases.on_adopt = self.adopt
        self._idle_after_s = idle_after_s
        self._closing = False

    @property
    def idle_after_s(self) -> float:
        return self._idle_after_s

    # lifecycle

    async def start(self) -> None:
        """Learn which agents exist and load the durable timers of every agent no other node holds (their leases
        are taken here, for the timers); unreadable timers damage only their agent."""
        await self.leases.start()
        with_timers = []
        for key in await self.store.keys("agent/"):
            parsed = parse_key(key)
            if parsed is None:
                continue
            if parsed.name == STATE:
                self._activations.known.setdefault(parsed.agent_id, None)
            elif parsed.name == TIMERS:
                with_timers.append(parsed.agent_id)
        await self.adopt(with_timers)

    async def adopt(self, agent_ids: list[str]) -> None:
        """Take over these agents' durable timers (at start, or from a node that is gone): hold their leases
        here and schedule their timers; an agent another node holds keeps its timers there."""
        for agent_id in agent_ids:
            try:
                lease, _ = await self.leases.acquire(agent_id, timers=True)
            except HeroError as exc:  # held elsewhere (its timers fire there), or the cluster is unreachable
                log.info("agent %s: timers not taken over here: %s", agent_id[:12], exc.message)
                continue
            with contextlib.suppress(AgentDamaged):  # damages only this agent; logged
                await self._timers.load(agent_id)
            if not self._timers.schedule.pending(agent_id) and agent_id not in self._active:
                await self.leases.release(lease)

    @asynccontextmanager
    async def anchored(self, agent_id: str) -> AsyncIterator[None]:
        """Keep the agent's lease on this node while the block runs (a user's event stream is open here), so
        the agent wakes here and what it publishes reaches the stream. LeaseHeld if another node hosts it."""
        await self.leases.anchor(agent_id)
        try:
            yield
        finally:
            in_use = agent_id in self._active or bool(self._timers.schedule.pending(agent_id))
            await self.leases.unanchor(agent_id, in_use=in_use)

    def _lost(self, agent_ids: list[str]) -> None:
        self._activations.drop(agent_ids)
        self._timers.drop(agent_ids)

    async def settle(self) -> None:
        """Wait until no turn is running or queued and no timer delivery or idle sweep is left (tests, benches)."""
        while self._agent_tasks.running or self._tasks:
            await self._agent_tasks.join()
            await self._tasks.join()

    @property
    def quiescent(self) -> bool:
        """Nothing will run until an event arrives: no turn, no task, no loop timer held (idle or durable)."""
        return not (self._agent_tasks.running or self._tasks or self._activations.armed or len(self.timers)
                    or self.leases.held)

    async def aclose(self) -> None:
        """Let running turns finish (up to the grace period), then hibernate every agent."""
        self._closing = True
        self._timers.close()
        self._activations.close()
        try:
            await asyncio.wait_for(self.settle(), self.shutdown_grace_s)
        except TimeoutError:
            log.warning("turns still running after %.0fs; cancelling them", self.shutdown_grace_s)
        await self._agent_tasks.aclose()
        await self._tasks.aclose()
        await self._activations.hibernate_all(self.shutdown_grace_s)
        await self.leases.release_all()  # timers held here go to the other nodes of a cluster
        await self.leases.aclose()

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
            act = await self._activations.activate(agent_id)
        act.last_event = time.monotonic()
        act.mailbox.append((event, reply))
        if not act.busy:
            act.busy = True
            act.task.start(self._drain(act))

    def _build(self, agent_id: str, lease: Lease, state: dict[str, Any]) -> Activation:
        """An activated agent: its context wired to this node's store, timers, model and listeners."""
        ctx = AgentContext(
            agent_id,
            state,
            llm=self.llm,
            persist=lambda: self._activations.persist(act),
            schedule=lambda timer: self._timers.add(act.lease, timer),
            unschedule=lambda timer_id: self._timers.remove(act.lease, timer_id),
            publish=lambda item: self._subscriptions.publish(agent_id, item),
            messenger=self.messenger,
            services=self.services,
            seal=lambda name, data: self._activations.seal(act, name, data),
            load=lambda name: self._activations.read_sealed(agent_id, name),
        )
        act = Activation(agent_id, lease, ctx)
        act.agent = self.agent_factory(ctx)
        act.task = self._agent_tasks.new(f"agent:{agent_id[:8]}")
        return act

    async def _drain(self, act: Activation) -> None:
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
        finally:  # the agent is idle from now: the idle loop timer must cover its deadline (inline: the hot path)
            act.busy = False
            act.last_event = now = time.monotonic()
            deadline = now + self._idle_after_s
            if deadline < self._activations.idle_at:
                self._activations.arm_idle(deadline)

    async def _run(self, act: Activation, event: Event, reply: Reply) -> None:
        self.stats.turns += 1
        timer_id = event.timer_id if isinstance(event, TimerFired) else None
        try:
            if timer_id is None or self._timers.begin(act.ctx.state, timer_id):  # not if it ran before a restart
                turn = act.agent.handle(event, reply)
                await (turn if self.metering is None else self.metering.run_turn(act.agent_id, turn))
            if timer_id is not None:
                await self._timers.finish(act.lease, timer_id, act.ctx.persist)
            reply.accept()
        except asyncio.CancelledError:
            reply.fail(Unavailable("node is shutting down"))
            raise
        except HeroError as exc:
            self.stats.turn_errors += 1
            log.warning("agent %s: %s", act.agent_id[:12], exc.message)
            reply.fail(exc)
            if timer_id is not None:
                self._timers.failed(timer_id, exc.message, state=act.ctx.state)
        except Exception as exc:
            self.stats.turn_errors += 1
            log.exception("agent %s: turn failed on %s", act.agent_id[:12], type(event).__name__)
            reply.fail(AgentError("the agent failed to answer; the error was logged"))
            if timer_id is None:
                await self._tell_failure(act, f"Sorry, something went wrong ({type(exc).__name__}).")
            elif (timer := self._timers.failed(timer_id, repr(exc), state=act.ctx.state, poison=True)) is not None:
                await self._set_aside(act, timer, exc)
        finally:
            reply.close()

    async def _tell_failure(self, act: Activation, notice: str) -> None:
        """Keep the user's view honest: the agent is told of the failure (a chat agent keeps one error entry)."""
        try:
            act.agent.on_failure(notice)
        except Exception:
            log.exception("agent %s: on_failure failed", act.agent_id[:12])
        try:
            await self._activations.persist(act)
        except HeroError:
            log.exception("agent %s: could not persist after a failure", act.agent_id[:12])

    async def _set_aside(self, act: Activation, timer: Timer, exc: Exception) -> None:
        await self._tell_failure(act, self._timers.set_aside_in(act.ctx.state, timer, exc))
        try:
            await self._timers.write(act.lease)
        except HeroError as err:
            log.warning("agent %s: timers not written after setting one aside: %s", act.agent_id[:12], err.message)

    # hibernation on demand (the governor, tests, benches)

    async def hibernate(self, agent_id: str) -> bool:
        """Hibernate one agent now if it is in memory with no turn running and no mail; True if it left memory."""
        act = self._active.get(agent_id)
        return act is not None and await self._activations.hibernate(act)

    async def hibernate_idle(self, min_idle_s: float) -> int:
        """Hibernate every agent idle for at least `min_idle_s` seconds, not in a turn and not in back-off."""
        return await self._activations.hibernate_idle(min_idle_s)

    # deletion (the user deleted their agent)

    async def forget(self, agent_id: str) -> None:
        """Take the agent out of this node for good: its lease dropped first (every write of its state or timers
        checks the lease, so a turn still running writes nothing more), then out of memory unwritten, its timers
        off the schedule, waiting events refused. Its stored objects are the caller's to purge."""
        lease = self.leases.holds(agent_id)
        self.leases._forget(agent_id)
        act = self._active.pop(agent_id, None)
        if act is not None:
            for _, reply in act.mailbox:
                if reply is not None:
                    reply.fail(NotFound("the agent was deleted"))
            act.mailbox.clear()
            act.task.close()
        self._timers.drop([agent_id])
        self._activations.known.pop(agent_id, None)
        self.damaged.clear(agent_id)
        if lease is not None:
            try:
                await self.directory.release(agent_id, self.node_id, lease.epoch)
            except HeroError as exc:  # it lapses on its own
                log.warning("agent %s: its lease was not given back (%s)", agent_id[:12], exc.message)

    # queries and live listeners

    def is_active(self, agent_id: str) -> bool:
        return agent_id in self._active

    @property
    def active_count(self) -> int:
        return len(self._active)

    def agent_status(self, agent_id: str) -> AgentStatus | None:
        """ "active", "hibernated", "damaged", or None for an agent this node has never seen; no store I/O."""
        if agent_id in self._active:
            return "active"
        if agent_id in self.damaged:
            return "damaged"
        return "hibernated" if agent_id in self._activations.known else None

    def agent_statuses(self) -> dict[str, AgentStatus]:
        """Every agent this node knows and its status (as `agent_status`), from memory alone."""
        statuses: dict[str, AgentStatus] = dict.fromkeys(self._activations.known, "hibernated")
        statuses.update((d.agent_id, "damaged") for d in self.damaged.all())
        statuses.update(dict.fromkeys(self._active, "active"))
        return statuses

    def damaged_agents(self) -> list[AgentInfo]:
        known = self._activations.known
        return [AgentInfo(d.agent_id, "damaged", known.get(d.agent_id), d.reason, d.since) for d in self.damaged.all()]

    async def agents(self) -> list[AgentInfo]:
        out = [AgentInfo(a.agent_id, "active", wall(a.last_event)) for a in self._active.values()]
        out += self.damaged_agents()
        known = self._activations.known
        for agent_id, last in known.items():
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

    async def read_state(self, agent_id: str) -> Mapping[str, Any]:
        """The agent's state without activating it: the live one if it is in memory (read it, do not change
        it), else the stored one with invalid text repaired. Raises `AgentDamaged` if it cannot be read."""
        return await self._activations.read_state(agent_id)

    async def read_sealed(self, agent_id: str, name: str) -> bytes:
        """A sealed object of the agent (a segment of its history), written or still queued; the store's error if
        it cannot be read (that object is lost; the agent is not damaged)."""
        return await self._activations.read_sealed(agent_id, name)

    def subscribe(self, agent_id: str, kind: type[T]) -> Subscription[T]:
        """What the agent publishes of `kind` from now on. Registered before this returns."""
        return self._subscriptions.subscribe(agent_id, kind)

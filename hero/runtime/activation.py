"""Activation and hibernation: which agents are in memory, loading them on demand, writing them back when idle.

An agent is activated by its first event: its state is read from the store, a
lease taken (its epoch above every epoch already in the store, so older owners
are fenced out), its spec verified under that lease (the skills part says whether
it may run; a refused one is never built; only the holder makes a default spec)
and the agent object built; concurrent first events share one
activation. After `idle_after_s` seconds without an event it hibernates: its
state goes to the store, the object and its task are dropped, the lease is
released (or kept for its durable timers: `leases.py`). Nothing polls: one loop
timer for the earliest idle deadline (or hibernation retry) of all agents in memory.
A lease taken over from an owner that let it lapse may have a write of that
owner's land late, so the state is read again under the new lease; a lease this
node loses (`drop`) takes its agent out of memory unwritten.

Faults cost only the agent they touch: an agent whose objects cannot be read is
damaged (`damage.py`); a hibernation whose write fails keeps the agent in memory
and is tried again after a back-off (`backoff.py`), so nothing it accepted is lost.

Persistence: the state (the agent's head) is one object rewritten on each
`persist`; what an agent seals (`AgentContext.seal`, such as a full segment of
its chat history) is written once, put-if-absent, as its own immutable object
before the head that refers to it, so a crash in between leaves an object the
next seal finds equal and keeps. Old versions of the head are pruned in the
background (`pruning.py`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from hero.backoff import Backoff
from hero.errors import AgentRefused, Conflict, HeroError, SpecRefused, Unavailable
from hero.identity import check_agent_id
from hero.runtime.agent import Agent, AgentContext
from hero.runtime.damage import DamagedAgents
from hero.runtime.durable_timers import DurableTimers
from hero.runtime.eager import AgentTask
from hero.runtime.events import Event, Reply
from hero.runtime.keys import STATE, TIMERS, agent_key, state_key
from hero.runtime.leases import Leases
from hero.runtime.pruning import HEAD_VERSIONS, HeadPruner, HeadVersions
from hero.runtime.report import NodeStats
from hero.runtime.state import decode_state, encode_state
from hero.seams.directory import Lease
from hero.seams.power import Metering
from hero.seams.skills import SpecVerifier
from hero.seams.store import StateStore

log = logging.getLogger("hero.runtime")


@dataclass(eq=False)
class Activation:
    """One agent in memory: its lease, context, agent object, task and mailbox."""

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
    sealing: list[tuple[str, bytes]] = field(default_factory=list)  # sealed objects not written yet, oldest first
    head: HeadVersions = field(default_factory=HeadVersions)


# Builds an activated agent from its id, lease and decoded state (the node wires the context's services).
Build = Callable[[str, Lease, dict[str, Any]], Activation]


def wall(monotonic: float) -> float:
    """Unix time of a monotonic instant (the hot path reads only the monotonic clock)."""
    return time.time() - (time.monotonic() - monotonic)


class Activations:
    """The agents in memory (`active`) and those known to be hibernated (`known`), and the moves between them."""

    def __init__(
        self,
        store: StateStore,
        *,
        node_id: str,
        build: Build,
        leases: Leases,
        damaged: DamagedAgents,
        timers: DurableTimers,
        idle_after_s: float,
        backoff: Backoff,
        stats: NodeStats,
        metering: Metering | None,
        spawn: Callable[[Coroutine[Any, Any, None], str], object],
        verifier: SpecVerifier | None = None,
        head_versions: int = HEAD_VERSIONS,
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.idle_after_s = idle_after_s
        self.active: dict[str, Activation] = {}
        self.known: dict[str, float | None] = {}  # agent id -> last event (unix) for hibernated agents
        self.closing = False
        self._build = build
        self._leases = leases
        self._damaged = damaged
        self._timers = timers
        self._backoff = backoff
        self._stats = stats
        self._metering = metering
        self._spawn = spawn
        self._verifier = verifier
        self._pruner = HeadPruner(store, spawn, head_versions)
        self._activating: dict[str, asyncio.Future[Activation]] = {}
        self._hibernating: dict[str, asyncio.Future[None]] = {}
        self._idle_handle: asyncio.TimerHandle | None = None
        self.idle_at = math.inf  # monotonic time the idle loop timer is armed for; inf: none is armed

    @property
    def armed(self) -> bool:
        """Whether a loop timer for an idle deadline is held."""
        return self._idle_handle is not None

    # activation

    async def activate(self, agent_id: str) -> Activation:
        """The agent in memory, activating it if needed; raises `AgentDamaged` for an agent that cannot be read."""
        hibernation = self._hibernating.get(agent_id)
        if hibernation is not None:
            await asyncio.shield(hibernation)  # let its state reach the store before we load it again
        act = self.active.get(agent_id)
        if act is not None:
            return act
        check_agent_id(agent_id)
        pending = self._activating.get(agent_id)
        if pending is not None:
            return await asyncio.shield(pending)
        damage = self._damaged.check(agent_id)
        if damage is not None:
            raise damage.error()  # refused without store I/O until its next retry is due
        future: asyncio.Future[Activation] = asyncio.get_running_loop().create_future()
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

    async def _load(self, agent_id: str) -> Activation:
        damage = self._damaged.get(agent_id)
        if damage is not None and damage.part == TIMERS:
            await self._timers.load(agent_id)  # the retry: raises AgentDamaged while still unreadable
        floor, raw, state, repaired, version = await self._read(agent_id)
        lease, lapsed = await self._leases.acquire(agent_id, floor=floor)
        try:
            if self._verifier is not None:  # under the lease: one node makes and records a default spec
                await self._verify(agent_id)
            if lapsed:  # its last owner vanished: what it wrote last may have landed after we read
                _, raw, state, repaired, version = await self._read(agent_id)
                await self._timers.load(agent_id)
            act = self._build(agent_id, lease, state)
        except BaseException:
            await self._leases.release(lease)
            raise
        act.persisted = raw
        act.head.version = version
        if self._metering is not None and raw:
            self._metering.charge_storage(agent_id, len(raw))
        self.active[agent_id] = act
        self.known.pop(agent_id, None)
        self._stats.activations += 1
        if repaired:
            log.warning("agent %s: invalid Unicode in its stored state was replaced with U+FFFD", agent_id)
        if repaired or act.sealing:  # text repaired, or a state in an older layout moved into sealed objects
            try:
                await self.persist(act)
            except HeroError as exc:
                log.warning("agent %s: the state is written later: %s", agent_id, exc.message)
        try:
            await act.agent.on_activate()
        except Exception:
            log.exception("agent %s: on_activate failed; it runs without what it would have read", agent_id[:12])
        return act

    async def _read(self, agent_id: str) -> tuple[int, bytes, dict[str, Any], bool, int]:
        """The stored state: its epoch (the floor for the lease), bytes, decoded form, whether text was repaired,
        and its version (0: none yet)."""
        async with self._damaged.reading(agent_id, STATE):
            head = await self.store.latest(state_key(agent_id))
            floor, raw, version = (head[0].epoch, head[1], head[0].version) if head else (0, b"", 0)
            state, repaired = decode_state(raw)
        self._damaged.clear(agent_id)
        return floor, raw, state, repaired, version

    async def _verify(self, agent_id: str) -> None:
        """Ask the skills part whether the agent's spec verifies; refused, the agent is not built (503)."""
        assert self._verifier is not None
        try:
            await self._verifier.verify(agent_id)
        except SpecRefused as exc:
            log.error("agent %s is not activated: its spec is refused: %s", agent_id, exc.message)
            raise AgentRefused(f"Your agent cannot run: its spec was refused ({exc.message}). The node's operator "
                               "has been told.") from None

    async def read_state(self, agent_id: str) -> Mapping[str, Any]:
        """The agent's state without activating it: the live one if it is in memory, else the stored one
        (invalid text repaired). Raises `AgentDamaged` if its state cannot be read."""
        act = self.active.get(agent_id)
        if act is not None:
            return act.ctx.state
        damage = self._damaged.check(agent_id)
        if damage is not None and damage.part == STATE:
            raise damage.error()
        async with self._damaged.reading(agent_id, STATE):
            head = await self.store.latest(state_key(agent_id))
            state, _ = decode_state(head[1] if head else b"")
        return state

    async def persist(self, act: Activation) -> None:
        """Write what the agent sealed since, then its state if it changed since it was last written, under the
        agent's lease."""
        data = encode_state(act.ctx.state)
        if data == act.persisted and not act.sealing:
            return
        self._leases.check(act.lease)
        while act.sealing:
            name, sealed = act.sealing[0]
            await self._write_sealed(act, name, sealed)
            act.sealing.pop(0)
        version = await self.store.put(state_key(act.agent_id), data, epoch=act.lease.epoch)
        act.persisted = data
        act.head.version = version.version
        if self._metering is not None:
            self._metering.charge_storage(act.agent_id, len(data))
        self._pruner.wrote(act.agent_id, act.head)

    def seal(self, act: Activation, name: str, data: bytes) -> None:
        """Queue an immutable object of the agent, written before its next head (`persist`)."""
        act.sealing.append((name, data))

    async def _write_sealed(self, act: Activation, name: str, data: bytes) -> None:
        """Write a sealed object once: put-if-absent. One already there with the same bytes (written before a
        crash that came before the head recorded it) is kept; a different one no head ever recorded is replaced."""
        key = agent_key(act.agent_id, name)
        try:
            await self.store.put(key, data, epoch=act.lease.epoch, expect=0)
        except Conflict:
            if await self.store.get(key) == data:
                return
            log.warning("agent %s: %s held an object no state referred to; it is replaced", act.agent_id[:12], name)
            await self.store.put(key, data, epoch=act.lease.epoch)
        if self._metering is not None:
            self._metering.charge_storage(act.agent_id, len(data))

    async def read_sealed(self, agent_id: str, name: str) -> bytes:
        """A sealed object of the agent: from memory if it is not written yet, else from the store (its error if
        it cannot be read: that object is lost, the agent is not damaged)."""
        act = self.active.get(agent_id)
        if act is not None:
            for queued, data in act.sealing:
                if queued == name:
                    return data
        return await self.store.get(agent_key(agent_id, name))

    # hibernation

    async def hibernate(self, act: Activation) -> bool:
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
            await self.persist(act)
            written = True
        except HeroError as exc:
            act.failures += 1
            act.retry_at = time.monotonic() + self._backoff.delay_s(act.failures)
            self._stats.hibernate_failures += 1
            log.warning("agent %s stays in memory: its state could not be written (%s); next try in %.0fs",
                        act.agent_id, exc.message, act.retry_at - time.monotonic())
        finally:
            act.busy = act.hibernating = written  # a dropped activation takes no more turns
            del self._hibernating[act.agent_id]
            done.set_result(None)
        if not written:
            return False
        self.active.pop(act.agent_id, None)
        self.known[act.agent_id] = wall(act.last_event)
        self._pruner.hibernated(act.agent_id, act.head)
        await self._leases.release(act.lease, keep_for_timers=bool(self._timers.schedule.pending(act.agent_id)))
        act.task.close()
        self._stats.hibernations += 1  # events sent meanwhile wait in `activate` for a fresh activation
        return True

    async def hibernate_idle(self, min_idle_s: float) -> int:
        """Hibernate every agent idle for at least `min_idle_s` seconds, not in a turn and not in back-off."""
        now = time.monotonic()
        due = [a for a in self.active.values() if now - a.last_event >= min_idle_s and not a.busy and now >= a.retry_at]
        return sum([await self.hibernate(act) for act in due])

    async def hibernate_all(self, grace_s: float) -> None:
        """At shutdown: hibernate every agent, retrying failed writes with back-off for up to `grace_s`."""
        deadline = time.monotonic() + grace_s
        for act in list(self.active.values()):
            failures = act.failures
            while not await self.hibernate(act) and act.failures > failures and act.retry_at < deadline:
                failures = act.failures
                await asyncio.sleep(max(0.0, act.retry_at - time.monotonic()))
            if act.agent_id in self.active:
                log.error("agent %s: its state since its last write is lost: it could not be written at shutdown",
                          act.agent_id)

    def drop(self, agent_ids: list[str]) -> None:
        """This node lost these agents' leases: out of memory at once, unwritten (another node has them now);
        events waiting for them are refused, so their senders try again where the agent is."""
        for agent_id in agent_ids:
            act = self.active.pop(agent_id, None)
            if act is None:
                continue
            self.known[agent_id] = wall(act.last_event)
            for _, reply in act.mailbox:
                if reply is not None:
                    reply.fail(Unavailable("the agent moved to another node; try again"))
            act.mailbox.clear()
            act.task.close()
            self._stats.leases_lost += 1

    # the idle deadline

    def close(self) -> None:
        """The node is shutting down: no more idle sweeps (`hibernate_all` writes every agent)."""
        self.closing = True
        self._pruner.close()
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        self.idle_at = math.inf

    def arm_idle(self, deadline: float | None = None) -> None:
        """One loop timer for the earliest idle deadline or hibernation retry: idle agents cost the loop nothing.

        With a `deadline` (an agent just became idle) the timer is re-armed only if it comes later than that
        (the caller checks `deadline < idle_at` first: the drain's hot path); with None, only if none is armed.
        """
        if self.closing or (self._idle_handle is not None and (deadline is None or deadline >= self.idle_at)):
            return
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        deadlines = [max(a.last_event + self.idle_after_s, a.retry_at) for a in self.active.values() if not a.busy]
        self._idle_handle = None
        self.idle_at = math.inf
        if deadlines:
            self.idle_at = min(deadlines)
            loop = asyncio.get_running_loop()
            self._idle_handle = loop.call_at(loop.time() + max(0.0, self.idle_at - time.monotonic()), self._idle_due)

    def _idle_due(self) -> None:
        self._idle_handle = None
        self.idle_at = math.inf
        if not self.closing:
            self._spawn(self._sweep(), "idle-sweep")

    async def _sweep(self) -> None:
        try:
            await self.hibernate_idle(self.idle_after_s)
        finally:
            self.arm_idle()

"""This node's leases: taken when an agent activates, renewed all together every ttl/3, given back when it sleeps.

An agent runs here only while this node holds its lease. The lease is taken (its epoch above
any in the store) when the agent is activated and given back when it hibernates, unless the
agent has durable timers pending: timers fire where the lease is, so the node keeps it (one
more entry in the renewal) and they fire here and nowhere else. Every `ttl_s / 3` one call
renews all of them, in the embedded directory and the cluster's alike; while the node holds
none (and is no cluster member) nothing wakes. A lease the directory says is lost, or that
could not be renewed in time by this node's own clock, is dropped at once (`on_lost`): the
agent leaves memory unwritten and its timers leave the schedule, to fire on the node that
holds it now. A write is allowed only while the lease has `guard_s` of its term left, so a
write cannot land after another node may have taken the agent over. A lease is also kept
while something here listens to the agent (`anchor`: a user's event stream), so what the
agent publishes is published where its listeners are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from hero.errors import HeroError, Unavailable
from hero.nursery import Nursery
from hero.seams.directory import Lease, LeaseDirectory

log = logging.getLogger("hero.runtime")


class Leases:
    def __init__(self, directory: LeaseDirectory, owner: str, *, member: bool = False) -> None:
        self.directory = directory
        self.owner = owner
        self.member = member  # a cluster member heartbeats (renews) even when it holds no lease
        self.ttl_s = directory.ttl_s
        self.guard_s = min(1.0, self.ttl_s / 10)
        self.held: dict[str, Lease] = {}
        self.for_timers: set[str] = set()  # asleep here, kept for their durable timers
        self.anchors: dict[str, int] = {}  # agent -> listeners here (its lease is kept while there are any)
        self.shed: Callable[[], bool] = lambda: False  # over budget: hand sleeping agents' timers to other nodes
        self.on_lost: Callable[[list[str]], None] = lambda agent_ids: None
        self.on_adopt: Callable[[list[str]], Coroutine[Any, Any, None]] | None = None
        self.renewals = 0
        self.renewal_failures = 0
        self._until: dict[str, float] = {}  # monotonic: the end of each lease's term as this node counts it
        self._wake = asyncio.Event()
        self._tasks = Nursery("leases")
        self._looping = False

    async def start(self) -> None:
        """Join (a cluster member renews once now, so the directory knows it) and start the renewal loop."""
        if self.member:
            await self.renew()
        self._ensure_loop()

    def _ensure_loop(self) -> None:
        if not self._looping:
            self._looping = True
            self._tasks.spawn(self._loop(), name="lease-renewal")

    async def aclose(self) -> None:
        await self._tasks.aclose()

    # taking and giving back

    async def acquire(self, agent_id: str, *, floor: int = 0, timers: bool = False) -> tuple[Lease, bool]:
        """The agent's lease for this node, and whether its last owner let it lapse (LeaseHeld, Unavailable)."""
        sent = time.monotonic()
        grant = await self.directory.acquire(agent_id, self.owner, floor=floor, timers=timers)
        lease = Lease(agent_id, self.owner, grant.epoch)
        self.held[agent_id] = lease
        self._until[agent_id] = sent + self.ttl_s
        if timers:
            self.for_timers.add(agent_id)
        else:
            self.for_timers.discard(agent_id)
        self._wake.set()
        self._ensure_loop()
        return lease, grant.lapsed

    async def release(self, lease: Lease, *, keep_for_timers: bool = False, orphan: bool = False) -> None:
        """The agent leaves memory: give its lease back, or keep it for the agent's timers."""
        if self.held.get(lease.agent_id) != lease:
            return
        if lease.agent_id in self.anchors or (keep_for_timers and not self.shed()):
            self.for_timers.add(lease.agent_id)
            return
        orphan = orphan or keep_for_timers  # over budget: its timers go to a node with room
        self._forget(lease.agent_id)
        try:
            await self.directory.release(lease.agent_id, self.owner, lease.epoch, orphan=orphan)
        except HeroError as exc:  # it lapses on its own
            log.warning("agent %s: its lease was not given back (%s); it lapses in %.0fs", lease.agent_id[:12],
                        exc.message, self.ttl_s)

    async def release_all(self) -> None:
        """Shutting down: every lease goes back; the agents' timers go to other nodes."""
        for lease in list(self.held.values()):
            await self.release(lease, orphan=lease.agent_id in self.for_timers)

    async def anchor(self, agent_id: str) -> None:
        """Something here listens to the agent: hold its lease (taking it if no node does) until `unanchor`."""
        if agent_id not in self.held:
            await self.acquire(agent_id, timers=True)  # LeaseHeld: another node hosts it; listen there
        self.anchors[agent_id] = self.anchors.get(agent_id, 0) + 1

    async def unanchor(self, agent_id: str, *, in_use: bool) -> None:
        """A listener went away; the last one gives the lease back unless the agent is `in_use` here."""
        left = self.anchors.get(agent_id, 0) - 1
        if left > 0:
            self.anchors[agent_id] = left
            return
        self.anchors.pop(agent_id, None)
        lease = self.held.get(agent_id)
        if lease is not None and not in_use:
            await self.release(lease)

    def check(self, lease: Lease) -> None:
        """Unavailable unless this node holds `lease` with time to write under it."""
        if self.held.get(lease.agent_id) != lease:
            raise Unavailable(f"agent {lease.agent_id[:12]}… is no longer hosted here (its lease moved on)")
        if time.monotonic() > self._until[lease.agent_id] - self.guard_s:
            raise Unavailable(f"agent {lease.agent_id[:12]}…: its lease could not be renewed (cluster unreachable)")

    def holds(self, agent_id: str) -> Lease | None:
        return self.held.get(agent_id)

    # renewal

    async def renew(self) -> None:
        """One batch: every lease held, extended together; lost ones dropped; timers to adopt taken."""
        sent = time.monotonic()
        held = {agent_id: lease.epoch for agent_id, lease in self.held.items()}
        try:
            async with asyncio.timeout(max(1.0, self.ttl_s / 3)):
                renewal = await self.directory.renew(self.owner, held, set(self.for_timers))
        except (HeroError, TimeoutError) as exc:
            self.renewal_failures += 1
            log.warning("leases not renewed: %s", getattr(exc, "message", "the directory did not answer in time"))
            self._lapse(time.monotonic())
            return
        self.renewals += 1
        lost = set(renewal.lost)
        for agent_id, epoch in held.items():
            lease = self.held.get(agent_id)
            if agent_id not in lost and lease is not None and lease.epoch == epoch:
                self._until[agent_id] = sent + self.ttl_s
        self._drop([a for a in lost if a in self.held and self.held[a].epoch == held.get(a)])
        self._lapse(time.monotonic())
        if renewal.adopt and self.on_adopt is not None:
            await self.on_adopt([a for a in renewal.adopt if a not in self.held])

    async def _loop(self) -> None:
        while True:
            if not self.held and not self.member:
                self._wake.clear()
                await self._wake.wait()  # nothing to renew: nothing wakes until a lease is taken
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self.renew()
            except Exception:
                log.exception("lease renewal failed")

    def _lapse(self, now: float) -> None:
        """Drop leases whose term ran out without a renewal (the directory could not be reached)."""
        self._drop([a for a, until in self._until.items() if until <= now])

    def _drop(self, agent_ids: list[str]) -> None:
        if not agent_ids:
            return
        for agent_id in agent_ids:
            self._forget(agent_id)
        log.warning("lost the lease of %d agent(s) (%s…): they wake on another node", len(agent_ids),
                    ", ".join(a[:8] for a in agent_ids[:3]))
        self.on_lost(agent_ids)

    def _forget(self, agent_id: str) -> None:
        self.held.pop(agent_id, None)
        self._until.pop(agent_id, None)
        self.for_timers.discard(agent_id)
        self.anchors.pop(agent_id, None)

"""The agent directory: who holds which agent's lease, under which epoch, until when.

Single instance on the grid: an agent is activated only by the holder of its
lease. Each grant gets a higher epoch than any before it (including epochs
already written to the store by earlier owners, passed in as `floor`), and the
store refuses writes from older epochs, so a stale owner is fenced out. A lease
lapses `ttl_s` after it was granted or last renewed, by the directory's own
clock; owners renew all of theirs in one batch every `ttl_s / 3` (`leases.py`).
Lapsed leases are forgotten lazily, when their agent is next asked about, and
their epoch is kept, so a later owner still goes higher.

`LeaseTable` is the rules; `Directory` is the embedded directory, a table in the
node's process. A cluster keeps one table in a Ray actor every node calls
(`ray_directory.py`); both are the runtime's `LeaseDirectory` seam.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from hero.errors import LeaseHeld
from hero.seams.directory import LeaseGrant, LeaseOwner, Renewal


@dataclass
class Holder:
    """One live lease as the directory keeps it."""

    owner: str
    epoch: int
    until: float  # the directory's clock
    timers: bool = False  # the owner holds it for the agent's durable timers (the agent may be asleep there)


class LeaseTable:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, epoch_base: int = 0) -> None:
        self.clock = clock
        self.epoch_base = epoch_base  # every epoch granted by this table is above it (a restarted directory)
        self._grants: dict[str, Holder] = {}
        self._epochs: dict[str, int] = {}
        self._by_owner: dict[str, set[str]] = {}
        self._lapsed: set[str] = set()  # agents whose last lease lapsed or was evicted, not released

    def __len__(self) -> int:
        return len(self._grants)

    def live(self, agent_id: str) -> Holder | None:
        """The agent's live lease, or None (a lapsed one is dropped here)."""
        grant = self._grants.get(agent_id)
        if grant is not None and grant.until <= self.clock():
            self._drop(agent_id, grant)
            self._lapsed.add(agent_id)
            return None
        return grant

    def acquire(self, agent_id: str, owner: str, *, floor: int, ttl_s: float, timers: bool = False) -> LeaseGrant:
        """Grant the lease to `owner`; LeaseHeld (naming the holder) if another holds it.

        An owner asking again for a lease it holds gets a new, higher epoch: it has read the state
        again (`floor`), so anything it wrote under the old epoch is behind it. `lapsed` says the
        agent's last owner neither released its lease nor renewed it (a write of its may land late).
        """
        held = self.live(agent_id)
        if held is not None and held.owner != owner:
            raise LeaseHeld(f"agent {agent_id[:12]}… is hosted by node {held.owner[:12]}… (epoch {held.epoch})",
                            owner=held.owner)
        epoch = max(self._epochs.get(agent_id, 0), floor, self.epoch_base) + 1
        self._epochs[agent_id] = epoch
        if held is not None:
            self._drop(agent_id, held)
        grant = Holder(owner, epoch, self.clock() + ttl_s, timers)
        self._grants[agent_id] = grant
        self._by_owner.setdefault(owner, set()).add(agent_id)
        lapsed = agent_id in self._lapsed
        self._lapsed.discard(agent_id)
        return LeaseGrant(epoch, lapsed)

    def renew(self, owner: str, held: Mapping[str, int], *, ttl_s: float, timers: Iterable[str] = ()) -> list[str]:
        """Extend `owner`'s leases (agent id -> epoch); returns the agents whose lease it no longer holds.

        A lease this table does not know but nobody else holds is taken back at its epoch: that is how a
        restarted directory learns who holds what (its epochs start above every earlier one, so the owner
        keeps the lower epoch and anyone granted the agent later goes higher).
        """
        until = self.clock() + ttl_s
        with_timers = set(timers)
        lost = []
        for agent_id, epoch in held.items():
            grant = self.live(agent_id)
            if grant is None and self._epochs.get(agent_id, 0) <= epoch:
                grant = self._grants[agent_id] = Holder(owner, epoch, until)
                self._epochs[agent_id] = epoch
                self._by_owner.setdefault(owner, set()).add(agent_id)
            if grant is None or grant.owner != owner or grant.epoch != epoch:
                lost.append(agent_id)
                continue
            grant.until = until
            grant.timers = agent_id in with_timers
        return lost

    def release(self, agent_id: str, owner: str, epoch: int) -> bool:
        """Drop the lease if `owner` holds it at `epoch`; False if it did not (it lapsed or moved on)."""
        grant = self._grants.get(agent_id)
        if grant is None or grant.owner != owner or grant.epoch != epoch:
            return False
        self._drop(agent_id, grant)
        return True

    def held_by(self, owner: str) -> dict[str, Holder]:
        """`owner`'s live leases."""
        out = {}
        for agent_id in list(self._by_owner.get(owner, ())):
            grant = self.live(agent_id)
            if grant is not None and grant.owner == owner:
                out[agent_id] = grant
        return out

    def evict(self, owner: str) -> dict[str, Holder]:
        """Drop every lease of `owner` now (its node is gone) and return them."""
        grants = {a: g for a in self._by_owner.pop(owner, set()) if (g := self._grants.get(a)) and g.owner == owner}
        for agent_id in grants:
            del self._grants[agent_id]
        self._lapsed.update(grants)
        return grants

    def epoch(self, agent_id: str) -> int:
        """The highest epoch granted for the agent (0 if none)."""
        return self._epochs.get(agent_id, 0)

    def _drop(self, agent_id: str, grant: Holder) -> None:
        del self._grants[agent_id]
        owned = self._by_owner.get(grant.owner)
        if owned is not None:
            owned.discard(agent_id)
            if not owned:
                del self._by_owner[grant.owner]


class Directory:
    """The embedded directory: one table in the node's process (a lone node needs no other)."""

    def __init__(self, *, ttl_s: float = 30.0) -> None:
        self._ttl_s = ttl_s
        self.table = LeaseTable()

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    async def acquire(self, agent_id: str, owner: str, *, floor: int = 0, timers: bool = False) -> LeaseGrant:
        return self.table.acquire(agent_id, owner, floor=floor, ttl_s=self._ttl_s, timers=timers)

    async def renew(self, owner: str, held: Mapping[str, int], timers: Collection[str]) -> Renewal:
        return Renewal(lost=self.table.renew(owner, held, ttl_s=self._ttl_s, timers=timers))

    async def release(self, agent_id: str, owner: str, epoch: int, *, orphan: bool = False) -> None:
        self.table.release(agent_id, owner, epoch)

    async def owner(self, agent_id: str) -> LeaseOwner | None:
        holder = self.table.live(agent_id)
        if holder is None:
            return None
        return LeaseOwner(holder.owner, holder.epoch, holder.until - self.table.clock())

"""The runtime ↔ directory seam: leases on agents, with increasing epochs, that lapse unless renewed.

One directory answers for a lone node (`hero.runtime.directory.Directory`, in its process) and another for
a cluster (`hero.runtime.ray_directory.RayDirectory`, one Ray actor every node calls); the runtime sees
only this shape, so agent code and the runtime are the same on one node and on many.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Lease:
    """The right of node `owner` to run an agent and write its state, under `epoch` (the store's fence)."""

    agent_id: str
    owner: str
    epoch: int


@dataclass(frozen=True)
class LeaseGrant:
    epoch: int
    lapsed: bool = False  # the previous owner let its lease lapse (it may have been writing): read the state again


@dataclass(frozen=True)
class LeaseOwner:
    """Who holds an agent's live lease, and for how much longer if it does not renew."""

    node_id: str
    epoch: int
    remaining_s: float
    url: str | None = None  # where the holder's web API answers (a cluster's nodes report it)


@dataclass(frozen=True)
class Renewal:
    lost: list[str] = field(default_factory=list)  # agents whose lease the node no longer holds
    adopt: list[str] = field(default_factory=list)  # agents whose durable timers it should take over


class LeaseDirectory(Protocol):
    @property
    def ttl_s(self) -> float:
        """How long a lease lives without renewal; owners renew every `ttl_s / 3`."""
        ...

    async def acquire(self, agent_id: str, owner: str, *, floor: int = 0, timers: bool = False) -> LeaseGrant:
        """Grant `owner` the agent's lease, its epoch above every earlier one and above `floor` (the store's);
        `timers`: held for the agent's durable timers while it sleeps. LeaseHeld (naming the holder) if another
        node holds it; Unavailable if the directory cannot be reached."""
        ...

    async def renew(self, owner: str, held: Mapping[str, int], timers: Collection[str]) -> Renewal:
        """Extend all of `owner`'s leases (agent id -> epoch) in one call; `timers` are those held for timers."""
        ...

    async def release(self, agent_id: str, owner: str, epoch: int, *, orphan: bool = False) -> None:
        """Give a lease back; with `orphan`, the agent's timers are handed to another node."""
        ...

    async def owner(self, agent_id: str) -> LeaseOwner | None:
        """The agent's live lease, if any node holds one."""
        ...

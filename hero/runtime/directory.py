"""The agent directory: who owns which agent, with leases and increasing epochs.

Single instance on the grid: an agent is activated only by the holder of its
lease. Each grant gets a higher epoch than any before it (including epochs
already written to the store by earlier owners, passed in as `floor`), and the
store refuses writes from older epochs, so a stale owner is fenced out. This is
the embedded, in-process directory; a cluster uses the same interface behind a
Ray actor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from hero.errors import LeaseHeld


@dataclass(frozen=True)
class Lease:
    agent_id: str
    owner: str
    epoch: int
    expires: float | None  # unix time; None = held until released


class Directory:
    def __init__(self, *, ttl_s: float | None = None) -> None:
        self.ttl_s = ttl_s
        self._leases: dict[str, Lease] = {}
        self._epochs: dict[str, int] = {}

    def acquire(self, agent_id: str, owner: str, *, floor: int = 0, now: float | None = None) -> Lease:
        now = time.time() if now is None else now
        held = self._leases.get(agent_id)
        if held is not None and held.owner != owner and (held.expires is None or held.expires > now):
            raise LeaseHeld(f"agent {agent_id[:12]}… is owned by {held.owner[:12]}… (epoch {held.epoch})")
        epoch = max(self._epochs.get(agent_id, 0), floor) + 1
        self._epochs[agent_id] = epoch
        lease = Lease(agent_id, owner, epoch, None if self.ttl_s is None else now + self.ttl_s)
        self._leases[agent_id] = lease
        return lease

    def release(self, lease: Lease) -> None:
        if self._leases.get(lease.agent_id) == lease:
            del self._leases[lease.agent_id]

    def owner(self, agent_id: str) -> Lease | None:
        return self._leases.get(agent_id)

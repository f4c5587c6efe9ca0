"""The cluster's directory in this process: the Ray actor's rules (`DirectoryService`) behind the runtime's
`LeaseDirectory` seam, so several real nodes in one test share leases, heartbeats and timer hand-offs."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from hero.errors import Unavailable
from hero.runtime.ray_directory import DirectoryService, epoch_of
from hero.seams.directory import LeaseGrant, LeaseOwner, Renewal


class LocalDirectory:
    """One node's client of a shared in-process `DirectoryService`; `cut` makes it unreachable (a partition)."""

    def __init__(self, service: DirectoryService, *, ttl_s: float) -> None:
        self.service = service
        self._ttl_s = ttl_s
        self.cut = False

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def _reach(self) -> None:
        if self.cut:
            raise Unavailable("cannot reach the cluster directory: partitioned")

    async def acquire(self, agent_id: str, owner: str, *, floor: int = 0, timers: bool = False) -> LeaseGrant:
        self._reach()
        answer: dict[str, Any] = self.service.acquire(agent_id, owner, floor, self._ttl_s, timers)
        return LeaseGrant(epoch_of(answer, agent_id), bool(answer.get("lapsed")))

    async def renew(self, owner: str, held: Mapping[str, int], timers: Collection[str]) -> Renewal:
        self._reach()
        answer = self.service.renew(owner, {}, dict(held), list(timers), self._ttl_s)
        return Renewal(lost=answer["lost"], adopt=answer["adopt"])

    async def release(self, agent_id: str, owner: str, epoch: int, *, orphan: bool = False) -> None:
        self._reach()
        self.service.release(agent_id, owner, epoch, orphan)

    async def owner(self, agent_id: str) -> LeaseOwner | None:
        self._reach()
        found = self.service.owner(agent_id)
        return None if found is None else LeaseOwner(found["node_id"], found["epoch"], found["remaining_s"])

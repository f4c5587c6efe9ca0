"""The web ↔ cluster seam: where a user's agent runs, so any node's web API can serve any user
(`hero.cluster.link.ClusterLink`; a lone node has none)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from hero.seams.directory import LeaseOwner


class ClusterRouting(Protocol):
    @property
    def node_id(self) -> str: ...

    @property
    def failover_wait_s(self) -> float:
        """How long a request waits for a dead host's agent to become free before it is a 503."""
        ...

    def holds(self, agent_id: str) -> bool:
        """Whether this node runs the agent (in memory, or its lease held here)."""
        ...

    async def owner(self, agent_id: str) -> LeaseOwner | None:
        """The node holding the agent's lease now, if any (Unavailable if the cluster cannot be reached)."""
        ...

    def place(self, agent_id: str, *, latency_ms: Mapping[str, float]) -> Mapping[str, Any] | None:
        """The live node a sleeping agent should wake on (its heartbeat view: node_id, url…); None: this one."""
        ...

    async def suspect(self, node_id: str) -> bool:
        """`node_id` could not be reached: True if it is gone (its leases are free now)."""
        ...

    async def gone(self, node_id: str) -> None:
        """Returns once `node_id` has left the cluster's live nodes (it stopped renewing, e.g. frozen): a request
        sent there is not waited for any longer."""
        ...

    def anchored(self, agent_id: str) -> AbstractAsyncContextManager[None]:
        """Hold the agent here while an event stream for it is open (LeaseHeld if it runs elsewhere)."""
        ...

    def nodes(self) -> list[dict[str, Any]]:
        """The live nodes, as their heartbeats describe them (for the dashboard)."""
        ...

"""What makes a node a member of a cluster: the directory's client, its heartbeat, the registry's broadcast,
placement, and the gateway around its web app.

`ClusterLink.attach` wires a started node's parts to the cluster: each lease renewal carries the
node's heartbeat (its address, watts and headroom from its governor, its agents, its free memory);
a change to the user registry on this node is told to every other node (they read that user again,
so a revoked token is refused everywhere before the revoking request returns); sign-in nonces are
spent cluster-wide; a node over its power budget hands the timers of agents it puts to sleep to
nodes with room. It is also the gateway's view of the cluster (`hero.seams.cluster.ClusterRouting`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import psutil
from starlette.types import ASGIApp

from hero.cluster.key import ClusterKey
from hero.cluster.placement import place
from hero.config import NodeConfig
from hero.runtime.ray_directory import RayDirectory
from hero.seams.directory import LeaseOwner
from hero.web.gateway import Gateway

log = logging.getLogger("hero.cluster")
CONSTRAINED = "constrained"


class ClusterLink:
    def __init__(self, config: NodeConfig, directory: RayDirectory, parts: Any) -> None:
        self.config = config
        self.directory = directory
        self.parts = parts
        self.node = parts.node
        self.identity = node_identity(config)
        self.url = self.identity["url"]
        self._node_id: str = parts.node.node_id
        self.gateway: Gateway | None = None

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def failover_wait_s(self) -> float:
        return self.config.lease_ttl_s + 1.0

    def attach(self) -> ASGIApp:
        """Wire the node to the cluster; the app to serve (the node's, behind the gateway)."""
        parts = self.parts
        self.directory.info = self.info
        parts.users.on_change = self._tell
        parts.users.spend_shared = self.directory.spend_nonce
        parts.node.leases.shed = self.over_budget
        parts.app.state.cluster = self
        route_key = ClusterKey.load(self.config.cluster_key).derive("hero-cluster/gateway-route")
        self.gateway = Gateway(parts.app, self, parts.users, max_body=self.config.max_body_bytes, route_key=route_key)
        return self.gateway

    async def aclose(self) -> None:
        if self.gateway is not None:
            await self.gateway.aclose()

    # the heartbeat

    def over_budget(self) -> bool:
        power = self.parts.power
        return power is not None and power.governor.status.level == CONSTRAINED

    def info(self) -> dict[str, Any]:
        """What this node says of itself with every renewal (placement, the dashboard, `hero cluster status`)."""
        power = self.parts.power
        status = power.governor.status if power is not None else None
        budget = power.profile.budget_w if power is not None else 0.0
        watts = status.avg_w if status is not None else 0.0
        return {
            **self.identity, "pid": os.getpid(),
            "watts": round(watts, 2), "budget_w": budget, "headroom_w": round(budget - watts, 2),
            "over_budget": self.over_budget(), "active": self.node.active_count,
            "free_ram_mb": round(psutil.virtual_memory().available / 2**20),
            "capacity": _capacity(power), "gateway": self._gateway_counts(),
        }

    def _gateway_counts(self) -> dict[str, int]:
        gateway = self.gateway
        return {"forwarded": gateway.forwarded, "failovers": gateway.failovers} if gateway else {}

    async def _tell(self, subject: str) -> None:
        """The registry changed here: every other node reads `subject` again before this returns."""
        await self.directory.broadcast("registry_changed", [subject], skip=self.node_id)

    # the gateway's view (ClusterRouting)

    def holds(self, agent_id: str) -> bool:
        return self.node.is_active(agent_id) or self.node.leases.holds(agent_id) is not None

    async def owner(self, agent_id: str) -> LeaseOwner | None:
        return await self.directory.owner(agent_id)

    def place(self, agent_id: str, *, latency_ms: Mapping[str, float]) -> Mapping[str, Any] | None:
        nodes = self.nodes()
        chosen = place(agent_id, nodes, home=self.parts.users.home_of(agent_id), latency_ms=latency_ms)
        return next((n for n in nodes if n["node_id"] == chosen), None)

    async def suspect(self, node_id: str) -> bool:
        return await self.directory.suspect(node_id)

    async def gone(self, node_id: str) -> None:
        """Returns once `node_id` is no longer among the live nodes (it stopped renewing: its leases lapsed). A node
        not in this node's view yet (it joined since the last renewal) is looked for again after the next one."""
        if not self._live(node_id):
            await self.directory.renewed()
        while self._live(node_id):
            await self.directory.renewed()

    def _live(self, node_id: str) -> bool:
        return any(n.get("node_id") == node_id for n in self.directory.nodes)

    def anchored(self, agent_id: str) -> AbstractAsyncContextManager[None]:
        anchored: AbstractAsyncContextManager[None] = self.node.anchored(agent_id)
        return anchored

    def nodes(self) -> list[dict[str, Any]]:
        """The live nodes as of the last heartbeat, this one as it is now."""
        mine = {**self.info(), "node_id": self.node_id, "agents": sorted(self.node.leases.held)}
        return [mine] + [n for n in self.directory.nodes if n.get("node_id") != self.node_id]


def node_identity(config: NodeConfig) -> dict[str, str]:
    """Where other nodes reach this one (`url`) and the name a user's pinned home gives (`name`): known from the
    config alone, so the node's very first heartbeat (it joins as its runtime starts) carries them."""
    return {"url": config.cluster_url or f"http://{_reachable(config.host)}:{config.port}",
            "name": f"{os.uname().nodename}:{config.port}"}


def _reachable(host: str) -> str:
    """A host other nodes can dial: the listen address, or this machine's for a wildcard one."""
    if host in ("0.0.0.0", "::", ""):
        import socket

        return socket.gethostbyname(socket.gethostname())
    return f"[{host}]" if ":" in host else host


def _capacity(power: Any) -> int:
    """Agents this node has room for: about 2 MB of its profile's RAM each, the model's share aside."""
    ram_gb = power.profile.ram_gb if power is not None else 4.0
    return max(1, int((ram_gb - 1.0) * 1024 / 2))

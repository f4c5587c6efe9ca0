"""Where a new or waking agent goes: a pinned home node, else the node with the most room and nearest its user.

Each node says of itself in its heartbeat (`info`): its power headroom from its governor (watts
under its budget, and whether it is over), how many agents it runs, and its free memory. A node
over its budget or short of memory is passed over while any other can take the agent; among the
rest the score is the share of power budget left, plus the share of agent room left, minus the
user's latency to the node where known (10 ms cost as much as a tenth of the budget); ties go the
same way every time for one agent (rendezvous hash), so two gateways asked at once agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

MIN_FREE_RAM_MB = 256.0
LATENCY_WEIGHT = 0.01  # score per ms


def place(agent_id: str, nodes: Sequence[Mapping[str, Any]], *, home: str | None = None,
          latency_ms: Mapping[str, float] | None = None) -> str | None:
    """The node id an agent should run on, among live `nodes` (heartbeat views); None if there is none."""
    if not nodes:
        return None
    if home:
        for node in nodes:
            if home in (node.get("node_id"), node.get("name")):
                return str(node["node_id"])
    roomy = [n for n in nodes if not n.get("over_budget") and float(n.get("free_ram_mb", 1e9)) >= MIN_FREE_RAM_MB]
    candidates = roomy or list(nodes)
    latency = latency_ms or {}

    def score(node: Mapping[str, Any]) -> tuple[float, bytes]:
        budget = float(node.get("budget_w") or 0.0)
        headroom = float(node.get("headroom_w") or 0.0) / budget if budget > 0 else 0.0
        capacity = float(node.get("capacity") or 0.0)
        room = 1.0 - float(node.get("active", 0)) / capacity if capacity > 0 else 0.0
        near = -LATENCY_WEIGHT * latency.get(str(node["node_id"]), 0.0)
        tie = hashlib.blake2b(f"{agent_id}/{node['node_id']}".encode(), digest_size=8).digest()
        return (round(headroom + room + near, 2), tie)

    return str(max(candidates, key=score)["node_id"])

"""What the cluster's directory knows of its nodes, in the shape `hero cluster status --json` prints."""

from __future__ import annotations

from typing import Any

from hero.cluster.key import ClusterKey
from hero.runtime.ray_directory import NAMESPACE, actor_name

FIELDS = ("node_id", "url", "name", "agents", "watts", "budget_w", "headroom_w", "active", "capacity", "over_budget")


def cluster_nodes(key: ClusterKey) -> list[dict[str, Any]]:
    """Every live node: {"node_id", "url", "agents": [agent ids], "watts", …}; none if no node ever joined.
    Needs a connected Ray driver (`connect`)."""
    import ray

    try:
        directory = ray.get_actor(actor_name(key.cluster_id), namespace=NAMESPACE)
    except ValueError:
        return []
    nodes: list[dict[str, Any]] = ray.get(directory.nodes.remote(), timeout=30)
    return [{name: node.get(name) for name in FIELDS if name in node} for node in nodes]

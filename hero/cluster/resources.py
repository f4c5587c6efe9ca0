"""The custom resources a Ray node carries for Hero: its hardware profile and its power budget.

`hero cluster ray-start` declares them on the Ray node (`hero_watts`: the profile's power budget in watts;
`hero_profile:<name>`: one unit naming the profile); a node's host actor asks for its budget in
`hero_watts` and for its profile, so Ray places it on a Ray node of this machine whose hardware and
budget fit, and a Ray node never hosts more watts of Hero nodes than its budget. A Ray node started
without them (a plain `ray start`) is asked for nothing it does not offer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from hero.power.profiles import HardwareProfile

WATTS = "hero_watts"
PROFILE = "hero_profile:"


def profile_resource(profile: HardwareProfile) -> str:
    return PROFILE + re.sub(r"[^A-Za-z0-9_.-]", "_", profile.name)


def node_resources(profile: HardwareProfile) -> dict[str, float]:
    """What a Ray node with this hardware profile declares (`ray start --resources`)."""
    return {WATTS: profile.budget_w, profile_resource(profile): 1.0}


def actor_resources(profile: HardwareProfile, ip: str, nodes: Iterable[Mapping[str, object]]) -> dict[str, float]:
    """What a host actor on the machine at `ip` asks for, given the cluster's nodes (`ray.nodes()`): this machine,
    and the budget and profile when a live Ray node of this machine offers them."""
    wanted = {f"node:{ip}": 0.001}
    here: list[Mapping[str, float]] = []
    for node in nodes:
        resources = node.get("Resources")
        if node.get("Alive") and node.get("NodeManagerAddress") == ip and isinstance(resources, Mapping):
            here.append(resources)
    if any(WATTS in r for r in here):
        wanted[WATTS] = profile.budget_w
    if any(profile_resource(profile) in r for r in here):
        wanted[profile_resource(profile)] = 0.001
    return wanted

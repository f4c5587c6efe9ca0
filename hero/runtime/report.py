"""The node's counters (read by status, dashboard, CLI); the agents it knows are `hero.seams.node.AgentInfo`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NodeStats:
    activations: int = 0
    hibernations: int = 0
    hibernate_failures: int = 0
    turns: int = 0
    turn_errors: int = 0
    timers_fired: int = 0
    timers_set_aside: int = 0
    leases_lost: int = 0  # agents taken out of memory because their lease moved to another node

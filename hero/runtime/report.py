"""What the node reports about itself: its counters and the agents it knows (read by status, dashboard, CLI)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AgentInfo:
    agent_id: str
    state: str  # "active" | "hibernated" | "damaged"
    last_event: float | None  # unix time
    reason: str | None = None  # why a damaged agent is damaged (the store's error, for the operator)
    since: float | None = None  # unix time it was first found damaged


@dataclass
class NodeStats:
    activations: int = 0
    hibernations: int = 0
    hibernate_failures: int = 0
    turns: int = 0
    turn_errors: int = 0
    timers_fired: int = 0
    timers_set_aside: int = 0

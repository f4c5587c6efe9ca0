"""What the node reports about itself: its counters and the agents it knows (read by status, dashboard, CLI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# An agent's lifecycle (its *state* is its data): in memory, written to the store and dropped, or unreadable.
AgentStatus = Literal["active", "hibernated", "damaged"]


@dataclass(frozen=True)
class AgentInfo:
    agent_id: str
    status: AgentStatus
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

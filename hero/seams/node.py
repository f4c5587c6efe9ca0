"""The runtime seams: what the web asks of the node's agents (deliver an event, who is awake, the counters),
and what the power governor may do to them (hibernate idle agents early). `hero.runtime.node.Node` is both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from hero.runtime.events import Event, Reply

# An agent's lifecycle (its *state* is its data): in memory, written to the store and dropped, or unreadable.
AgentStatus = Literal["active", "hibernated", "damaged"]


@dataclass(frozen=True)
class AgentInfo:
    agent_id: str
    status: AgentStatus
    last_event: float | None  # unix time
    reason: str | None = None  # why a damaged agent is damaged (the store's error, for the operator)
    since: float | None = None  # unix time it was first found damaged


class NodeCounters(Protocol):
    """The node's counters since it started (`hero.runtime.report.NodeStats`)."""

    @property
    def activations(self) -> int: ...

    @property
    def hibernations(self) -> int: ...

    @property
    def turns(self) -> int: ...

    @property
    def turn_errors(self) -> int: ...

    @property
    def timers_fired(self) -> int: ...


class AgentStatuses(Protocol):
    """Which agents this node knows and their status, from memory alone (no store I/O)."""

    def agent_status(self, agent_id: str) -> AgentStatus | None:
        """ "active", "hibernated", "damaged", or None for an agent this node has never seen."""
        ...

    def agent_statuses(self) -> Mapping[str, AgentStatus]: ...

    def damaged_agents(self) -> list[AgentInfo]:
        """The damaged agents, each with why and since when."""
        ...


class AgentRuntime(AgentStatuses, Protocol):
    """What the web asks of the runtime: deliver a user's event to their agent, and what the operator sees."""

    @property
    def node_id(self) -> str: ...

    @property
    def stats(self) -> NodeCounters: ...

    @property
    def timers(self) -> Sized:
        """The durable timers pending on this node."""
        ...

    async def deliver(self, agent_id: str, event: Event) -> Reply:
        """Post `event` to the agent (activating it if it sleeps); its reply channel streams what it says back."""
        ...

    async def agents(self) -> list[AgentInfo]:
        """Every agent this node knows, with its status and last event (a damaged one says why)."""
        ...


class AgentRemoval(Protocol):
    """What a user's deletion asks of the runtime (`hero.runtime.node.Node`)."""

    async def forget(self, agent_id: str) -> None:
        """The agent out of memory unwritten, its timers off the schedule, its lease given back; nothing of it is
        written from now on. Its stored objects are the caller's to purge."""
        ...

    async def read_state(self, agent_id: str) -> Mapping[str, Any]:
        """The agent's state without activating it (the live one if it is in memory). Raises AgentDamaged."""
        ...


class GovernedNode(AgentStatuses, Protocol):
    """What the power part reads of the runtime (who is hosted) and its lever (hibernating idle agents early)."""

    @property
    def active_count(self) -> int: ...

    async def hibernate_idle(self, min_idle_s: float) -> int:
        """Hibernate agents idle for at least `min_idle_s`; returns how many."""
        ...

"""Every agent's chat history as the edge reads it (the web ↔ chat seam): pages, entries missed, live entries.

Reading never activates an agent: the history comes from the agent's live state
when it is in memory, else from its stored state (through the runtime's
`read_state`, which says when the agent is damaged).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from hero.chat.entry import HistoryEntry
from hero.chat.history import stored_entries
from hero.runtime.subscriptions import Subscription

T = TypeVar("T")


class AgentStates(Protocol):
    """What chat needs of the runtime (`hero.runtime.node.Node`)."""

    async def read_state(self, agent_id: str) -> Mapping[str, Any]: ...

    def subscribe(self, agent_id: str, kind: type[T]) -> Subscription[T]: ...


@dataclass(frozen=True)
class HistoryPage:
    entries: list[HistoryEntry]  # oldest first
    has_more: bool  # older entries exist
    next_before: int | None  # the `before` that pages further back, when there is more


class Histories:
    def __init__(self, agents: AgentStates) -> None:
        self._agents = agents

    async def entries(self, agent_id: str) -> list[HistoryEntry]:
        """The agent's whole history, oldest first."""
        return [HistoryEntry.from_json(item) for item in await self._stored(agent_id)]

    async def page(self, agent_id: str, *, limit: int, before: int | None = None) -> HistoryPage:
        """The newest `limit` entries older than `before` (every entry if None), oldest first."""
        stored = await self._stored(agent_id)
        if before is not None:
            stored = [item for item in stored if item["seq"] < before]
        chosen = stored[-limit:] if limit > 0 else []
        has_more = len(stored) > len(chosen)
        return HistoryPage(
            [HistoryEntry.from_json(item) for item in chosen],
            has_more,
            chosen[0]["seq"] if has_more and chosen else None,
        )

    async def after(self, agent_id: str, seq: int) -> list[HistoryEntry]:
        """The entries newer than `seq`, oldest first (what a reconnecting listener missed)."""
        return [HistoryEntry.from_json(item) for item in await self._stored(agent_id) if item["seq"] > seq]

    def subscribe(self, agent_id: str) -> Subscription[HistoryEntry]:
        """The agent's new entries from now on; subscribe before reading what was kept, so none falls between."""
        return self._agents.subscribe(agent_id, HistoryEntry)

    async def _stored(self, agent_id: str) -> list[dict[str, Any]]:
        """As stored; a live agent's own list, so callers read it before their next await and never change it."""
        return stored_entries(await self._agents.read_state(agent_id))

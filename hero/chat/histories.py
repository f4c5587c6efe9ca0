"""Every agent's chat history as the edge reads it (the web ↔ chat seam): pages, entries missed, live entries.

Reading never activates an agent: the head comes from the agent's live state
when it is in memory, else from its stored state (through the runtime's
`read_state`, which says when the agent is damaged), and sealed segments are
read one at a time through `read_sealed`, newest first for a page, so a page
costs the segments it shows (the head records each segment's first seq, so
`before` maps straight to its segment), never the whole history. A segment that cannot be read is one `missing` entry
naming its range; the rest of the history reads as usual.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from hero.chat.entry import HistoryEntry
from hero.chat.history import stored_head
from hero.chat.segments import Segments
from hero.runtime.subscriptions import Subscription

T = TypeVar("T")


class AgentStates(Protocol):
    """What chat needs of the runtime (`hero.runtime.node.Node`)."""

    async def read_state(self, agent_id: str) -> Mapping[str, Any]: ...

    async def read_sealed(self, agent_id: str, name: str) -> bytes: ...

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
        """The agent's whole history, oldest first (tests and small tools; `stream` for a large one)."""
        return [entry async for entry in self.stream(agent_id)]

    async def stream(self, agent_id: str) -> AsyncGenerator[HistoryEntry, None]:
        """Every entry, oldest first, one sealed segment in memory at a time (an export of a huge history)."""
        open_entries, segments = await self._open(agent_id)
        async for entry in segments.oldest_first():
            yield entry
        for item in open_entries:
            yield HistoryEntry.from_json(item)

    async def newest_first(self, agent_id: str, before: int | None = None) -> AsyncIterator[HistoryEntry]:
        """Entries older than `before` (every entry if None), newest first, reading segments only as needed."""
        open_entries, segments = await self._open(agent_id)
        for item in reversed(open_entries):
            if before is None or item["seq"] < before:
                yield HistoryEntry.from_json(item)
        if segments.count and (before is None or before > 1):
            async for entry in segments.newest_first(before):
                yield entry

    async def page(self, agent_id: str, *, limit: int, before: int | None = None) -> HistoryPage:
        """The newest `limit` entries older than `before` (every entry if None), oldest first."""
        chosen: list[HistoryEntry] = []
        has_more = False
        if limit > 0:
            async for entry in self.newest_first(agent_id, before):
                if len(chosen) == limit:
                    has_more = True
                    break
                chosen.append(entry)
        else:
            async for _ in self.newest_first(agent_id, before):
                has_more = True
                break
        chosen.reverse()
        return HistoryPage(chosen, has_more, chosen[0].seq if has_more and chosen else None)

    async def after(self, agent_id: str, seq: int) -> list[HistoryEntry]:
        """The entries newer than `seq`, oldest first (what a reconnecting listener missed)."""
        newer = []
        async for entry in self.newest_first(agent_id):
            if entry.seq <= seq:
                break
            newer.append(entry)
        newer.reverse()
        return newer

    async def search(self, agent_id: str, query: str, *, limit: int = 10) -> list[HistoryEntry]:
        """The newest `limit` entries holding every word of `query` (case-insensitive), newest first; reads
        segments one at a time, newest first, and stops once it has found `limit`."""
        words = [w.casefold() for w in re.findall(r"\w+", query)]
        found: list[HistoryEntry] = []
        if not words or limit <= 0:
            return found
        async for entry in self.newest_first(agent_id):
            text = entry.content.casefold()
            if entry.kind != "missing" and all(w in text for w in words):
                found.append(entry)
                if len(found) >= limit:
                    break
        return found

    def subscribe(self, agent_id: str) -> Subscription[HistoryEntry]:
        """The agent's new entries from now on; subscribe before reading what was kept, so none falls between."""
        return self._agents.subscribe(agent_id, HistoryEntry)

    async def _open(self, agent_id: str) -> tuple[list[dict[str, Any]], Segments]:
        """The open entries (a copy: a live agent's turns go on adding) and a reader of the sealed segments."""
        head, in_memory = stored_head(await self._agents.read_state(agent_id))
        sealed = {"count": head["count"], "last_seq": head["last_seq"], "hashes": list(head["hashes"]),
                  "firsts": list(head.get("firsts", []))}

        async def load(name: str) -> bytes:
            data = in_memory.get(name)
            return data if data is not None else await self._agents.read_sealed(agent_id, name)

        return list(head["open"]), Segments(agent_id, sealed, load)

"""An agent's chat history as its state keeps it: an open segment in the head, sealed segments apart (`segments.py`).

`ChatHistory` is the history of an agent in memory, for its turns: it adds
entries (repairing text that is not valid Unicode, so nothing can poison the
history again), seals the open segment's oldest entries when they fill a
segment (handing the bytes to the runtime, which writes them once before the
head that records them) and tells the agent's live listeners. A history still
in the single-object layout (a list of every entry) is cut into segments when
the agent is activated. `stored_head` reads the same head from a state the
agent's turns do not own (a hibernated agent's, read for the edge).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from hero import unicode
from hero.chat.entry import HistoryEntry
from hero.chat.segments import SLOT, WARM, Load, Segments, is_head, migrate, new_head, seal, sealable

Seal = Callable[[str, bytes], None]  # queues an immutable object of the agent, written before its next head


def stored_head(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The history's head kept in `state` (a state without one has an empty history), and the sealed segments
    only memory holds: a history still in the single-object layout is read as its migration (the agent writes
    those segments when it is next activated)."""
    value = state.get(SLOT)
    if is_head(value):
        assert isinstance(value, dict)
        return value, {}
    if isinstance(value, list):
        head, seals = migrate(value)
        return head, dict(seals)
    return new_head(), {}


def entry_count(head: Mapping[str, Any]) -> int:
    return int(head["sealed_entries"]) + len(head["open"])


class ChatHistory:
    """The history of one activated agent. Persist the state (`ctx.persist()`) to make what was added durable."""

    __slots__ = ("_agent_id", "_head", "_load", "_publish", "_seal", "_warm")

    def __init__(self, state: dict[str, Any], publish: Callable[[object], None], seal_object: Seal,
                 load: Load, agent_id: str = "") -> None:
        value = state.get(SLOT)
        if isinstance(value, list):  # the single-object layout: cut into segments, written with the next head
            head, seals = migrate(value)
            for name, data in seals:
                seal_object(name, data)
            state[SLOT] = head
        elif not is_head(value):
            state[SLOT] = new_head()
        self._head: dict[str, Any] = state[SLOT]
        self._publish = publish
        self._seal = seal_object
        self._load = load
        self._agent_id = agent_id
        self._warm: list[dict[str, Any]] = []  # the newest sealed entries, for prompts (memory only)

    def __len__(self) -> int:
        return entry_count(self._head)

    def add(self, role: str, content: str, *, kind: str = "chat") -> HistoryEntry:
        """Append an entry and tell the agent's live listeners (its user's other devices).

        Text that is not valid Unicode (lone surrogates) is kept with U+FFFD in their place.
        """
        head = self._head
        open_entries: list[dict[str, Any]] = head["open"]
        seq = open_entries[-1]["seq"] + 1 if open_entries else head["last_seq"] + 1
        entry = HistoryEntry(seq, role, unicode.repair(content), time.time(), kind)
        open_entries.append(entry.to_json())
        if count := sealable(open_entries):
            self._warm = [*self._warm, *open_entries[:count]][-WARM:]
            self._seal(*seal(head, count))
        self._publish(entry)
        return entry

    async def warm(self) -> None:
        """Read the newest sealed segment if the open one holds fewer than `WARM` entries, so `recent` serves a
        prompt's window from memory (the agent's activation: the head and at most this one segment)."""
        if len(self._head["open"]) >= WARM or self._warm or not self._head["count"]:
            return
        segments = self.segments()
        self._warm = [entry.to_json() for entry in await segments.entries(segments.count)][-WARM:]

    def recent(self, count: int) -> list[HistoryEntry]:
        """The last `count` entries, oldest first, as far as memory holds them (the open segment and, once
        `warm`, the newest sealed entries: at least `WARM`); `tail` reads further back."""
        if count <= 0:
            return []
        open_entries: list[dict[str, Any]] = self._head["open"]
        items = open_entries[-count:] if len(open_entries) >= count else [*self._warm, *open_entries][-count:]
        return [HistoryEntry.from_json(item) for item in items]

    def segments(self) -> Segments:
        return Segments(self._agent_id, self._head, self._load)

    async def tail(self, count: int) -> list[HistoryEntry]:
        """The last `count` entries, oldest first, reading sealed segments as far back as needed."""
        out = self.recent(count)
        if len(out) < count:
            older = []
            async for entry in self.segments().newest_first():
                older.append(entry)
                if len(older) + len(out) >= count:
                    break
            out = [*reversed(older), *out]
        return out

    async def newest_first(self) -> AsyncIterator[HistoryEntry]:
        """Every entry, newest first, one sealed segment in memory at a time (search over the history)."""
        for item in reversed(list(self._head["open"])):
            yield HistoryEntry.from_json(item)
        async for entry in self.segments().newest_first():
            yield entry

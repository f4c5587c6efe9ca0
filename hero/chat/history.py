"""An agent's chat history as its state keeps it: a list of JSON entries, oldest first, under `state["history"]`.

`ChatHistory` is the history of an agent in memory, for its turns: it adds
entries (repairing text that is not valid Unicode, so nothing can poison the
history again) and tells the agent's live listeners. `stored_entries` reads the
same list from a state the agent's turns do not own (a hibernated agent's, read
for the edge).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from hero import unicode
from hero.chat.entry import HistoryEntry

SLOT = "history"  # the state's key for the history


def stored_entries(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The history kept in `state`, as stored (JSON entries); a state without one has an empty history."""
    entries = state.get(SLOT, [])
    return entries if isinstance(entries, list) else []


class ChatHistory:
    """The history of one activated agent. Persist the state (`ctx.persist()`) to make what was added durable."""

    __slots__ = ("_entries", "_publish")

    def __init__(self, state: dict[str, Any], publish: Callable[[object], None]) -> None:
        self._entries: list[dict[str, Any]] = state.setdefault(SLOT, [])
        self._publish = publish

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, role: str, content: str, *, kind: str = "chat") -> HistoryEntry:
        """Append an entry and tell the agent's live listeners (its user's other devices).

        Text that is not valid Unicode (lone surrogates) is kept with U+FFFD in their place.
        """
        seq = self._entries[-1]["seq"] + 1 if self._entries else 1
        entry = HistoryEntry(seq, role, unicode.repair(content), time.time(), kind)
        self._entries.append(entry.to_json())
        self._publish(entry)
        return entry

    def recent(self, count: int) -> list[HistoryEntry]:
        """The last `count` entries, oldest first."""
        return [HistoryEntry.from_json(item) for item in self._entries[-count:]] if count > 0 else []

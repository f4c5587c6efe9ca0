"""One entry of an agent's chat history: what the user or the agent said, a reminder, an error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One entry of a chat history; `seq` counts from 1 and only grows. (A `ChatMessage` is the *event* that
    brings a user's message to the agent; the agent keeps it, and its answer, as entries.)"""

    seq: int
    role: str  # "user" | "assistant" | "system"
    content: str
    ts: float  # unix time
    kind: str = "chat"  # "chat" | "reminder" | "error" | "overlay" | "stopped" (a reply cut short: stop, shutdown)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "role": self.role, "content": self.content, "ts": self.ts, "kind": self.kind}

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> HistoryEntry:
        """An entry as stored (an entry written before `kind` existed is "chat")."""
        return cls(item["seq"], item["role"], item["content"], item["ts"], item.get("kind", "chat"))

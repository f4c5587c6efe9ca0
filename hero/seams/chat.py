"""The web ↔ chat seam: every agent's chat history as the edge reads it (pages, entries missed, live entries).

`hero.chat.histories.Histories` implements it; reading never activates an agent. The history is
kept as append-only segments (`hero.chat.segments`): `page` reads the segments the page shows, newest
first (the head says which segment `before` falls in), never the whole history; `stream` reads each
segment once, oldest first (an export).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any, Protocol, TypeVar

from hero.errors import HeroError

T_co = TypeVar("T_co", covariant=True)


class Entry(Protocol):
    """One history entry (`hero.chat.entry.HistoryEntry`)."""

    @property
    def seq(self) -> int:
        """Its place in the agent's history, from 1: the id of the event that carries it."""
        ...

    def to_json(self) -> dict[str, Any]: ...


class Page(Protocol):
    @property
    def entries(self) -> Sequence[Entry]:
        """Oldest first."""
        ...

    @property
    def has_more(self) -> bool:
        """Older entries exist."""
        ...

    @property
    def next_before(self) -> int | None:
        """The `before` that pages further back, when there is more."""
        ...


class Live(Protocol[T_co]):
    """A listener's queue of what an agent publishes; a context manager, so it always unsubscribes."""

    def __enter__(self) -> Live[T_co]: ...

    def __exit__(self, *exc: object) -> None: ...

    async def get(self) -> T_co: ...

    def interrupt(self, error: HeroError) -> None:
        """End the listening: the next `get` raises `error` (the node is shutting down)."""
        ...


class ChatHistories(Protocol):
    async def page(self, agent_id: str, *, limit: int, before: int | None = None) -> Page:
        """The newest `limit` entries older than `before` (every entry if None), oldest first."""
        ...

    def stream(self, agent_id: str) -> AsyncGenerator[Entry, None]:
        """Every entry, oldest first, read one sealed segment at a time (never the whole history in memory); the
        head is read at the first entry, so what is added after that is not in it. Close it if you stop early.

        A segment that cannot be read is one entry of kind `missing` naming its range; the rest streams on."""
        ...

    async def search(self, agent_id: str, query: str, *, limit: int = 10) -> Sequence[Entry]:
        """The newest `limit` entries holding every word of `query`, newest first, segment by segment."""
        ...

    async def after(self, agent_id: str, seq: int) -> Sequence[Entry]:
        """The entries newer than `seq`, oldest first (what a reconnecting listener missed)."""
        ...

    def subscribe(self, agent_id: str) -> Live[Entry]:
        """The agent's new entries from now on; subscribe before reading what was kept, so none falls between."""
        ...

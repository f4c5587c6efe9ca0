"""Live listeners of what agents publish (to a user's other devices, the events stream).

The runtime does not know what an agent publishes (a chat agent publishes its
new history entries): a listener names the kind of item it wants and gets only
those. A listener subscribes before it reads what was kept, so an item published
between the two reads reaches it; an agent nobody listens to costs one dict
lookup per item.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, TypeVar

from hero.errors import HeroError

T = TypeVar("T")


class Subscriptions:
    """Every agent's listeners, by agent id."""

    def __init__(self) -> None:
        self._by_agent: dict[str, set[Subscription[Any]]] = {}

    def publish(self, agent_id: str, item: object) -> None:
        listeners = self._by_agent.get(agent_id)
        if listeners is None:
            return
        if not listeners:
            del self._by_agent[agent_id]  # the last listener left: forget the agent
            return
        for listener in listeners:
            listener.offer(item)

    def subscribe(self, agent_id: str, kind: type[T]) -> Subscription[T]:
        return Subscription(self._by_agent.setdefault(agent_id, set()), kind)


class Subscription(Generic[T]):
    """A listener's queue of an agent's new items of one kind; use as a context manager so it always unsubscribes."""

    def __init__(self, registry: set[Subscription[Any]], kind: type[T]) -> None:
        self._registry = registry
        self._kind = kind
        self._queue: asyncio.Queue[T | HeroError] = asyncio.Queue()
        registry.add(self)

    def offer(self, item: object) -> None:
        if isinstance(item, self._kind):
            self._queue.put_nowait(item)

    def interrupt(self, error: HeroError) -> None:
        """End the listening: the next `get` raises `error` (the node is shutting down)."""
        self._queue.put_nowait(error)

    async def get(self) -> T:
        item = await self._queue.get()
        if isinstance(item, HeroError):
            raise item
        return item

    def close(self) -> None:
        self._registry.discard(self)

    def __enter__(self) -> Subscription[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

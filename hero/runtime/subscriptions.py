"""Live listeners of agents' messages (a user's other devices, the events stream).

A listener subscribes before it reads the history, so a message added between
the two reads reaches it; an agent nobody listens to costs one dict lookup per
message.
"""

from __future__ import annotations

import asyncio

from hero.errors import HeroError
from hero.runtime.agent import Message


class Subscriptions:
    """Every agent's listeners, by agent id."""

    def __init__(self) -> None:
        self._by_agent: dict[str, set[Subscription]] = {}

    def publish(self, agent_id: str, message: Message) -> None:
        listeners = self._by_agent.get(agent_id)
        if listeners is None:
            return
        if not listeners:
            del self._by_agent[agent_id]  # the last listener left: forget the agent
            return
        for listener in listeners:
            listener.put(message)

    def subscribe(self, agent_id: str) -> Subscription:
        return Subscription(self._by_agent.setdefault(agent_id, set()))


class Subscription:
    """A listener's queue of an agent's new messages; use as a context manager so it always unsubscribes."""

    def __init__(self, registry: set[Subscription]) -> None:
        self._registry = registry
        self._queue: asyncio.Queue[Message | HeroError] = asyncio.Queue()
        registry.add(self)

    def put(self, message: Message) -> None:
        self._queue.put_nowait(message)

    def interrupt(self, error: HeroError) -> None:
        """End the listening: the next `get` raises `error` (the node is shutting down)."""
        self._queue.put_nowait(error)

    async def get(self) -> Message:
        item = await self._queue.get()
        if isinstance(item, HeroError):
            raise item
        return item

    def close(self) -> None:
        self._registry.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

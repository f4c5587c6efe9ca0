"""A fair, bounded queue across agents: priorities first, round-robin between agents, FIFO within one.

Thread-safe: agents enqueue from the event loop, the inference thread takes.
Interactive work (a user's chat) is taken before background work (timers,
agent-to-agent); within a priority, one chatty agent cannot starve the
others: each agent with work gets one request served per round. The bound
makes overload visible at once (the caller answers 429) instead of as an
ever-longer wait; each priority has its own, so background work filling
the queue never shuts out a user's chat.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Generic, TypeVar

T = TypeVar("T")

INTERACTIVE, BACKGROUND = 0, 1


class QueueFull(Exception):
    """The queue holds `maxsize` items already."""


class FairQueue(Generic[T]):
    def __init__(self, maxsize: int | None = None, priorities: int = 2) -> None:
        self.maxsize = maxsize
        self._levels: list[OrderedDict[str, deque[T]]] = [OrderedDict() for _ in range(priorities)]
        self._cond = threading.Condition()
        self._closed = False
        self._size = 0
        self._sizes = [0] * priorities

    def __len__(self) -> int:
        return self._size

    def full(self, priority: int = INTERACTIVE) -> bool:
        return self.maxsize is not None and self._sizes[priority] >= self.maxsize

    def put(self, owner: str, item: T, *, priority: int = INTERACTIVE) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("queue is closed")
            if self.full(priority):
                raise QueueFull(f"{self._sizes[priority]} requests are waiting")
            self._levels[priority].setdefault(owner, deque()).append(item)
            self._size += 1
            self._sizes[priority] += 1
            self._cond.notify()

    def get(self) -> T | None:
        """Block until an item is available; None once the queue is closed and empty."""
        with self._cond:
            while not self._size:
                if self._closed:
                    return None
                self._cond.wait()
            return self._take()

    def get_nowait(self) -> T | None:
        """An item if one is waiting, else None."""
        with self._cond:
            return self._take() if self._size else None

    def _take(self) -> T:
        priority, queues = next((p, level) for p, level in enumerate(self._levels) if level)
        owner, items = next(iter(queues.items()))
        item = items.popleft()
        del queues[owner]
        if items:
            queues[owner] = items  # to the back of the round
        self._size -= 1
        self._sizes[priority] -= 1
        return item

    def remove(self, owner: str, item: T) -> bool:
        """Withdraw a request that has not started (its caller went away)."""
        with self._cond:
            for priority, queues in enumerate(self._levels):
                items = queues.get(owner)
                if items is None or item not in items:
                    continue
                items.remove(item)
                if not items:
                    del queues[owner]
                self._size -= 1
                self._sizes[priority] -= 1
                return True
            return False

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

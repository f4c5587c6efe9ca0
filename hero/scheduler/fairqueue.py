"""A fair queue across agents: round-robin between agents, FIFO within one.

Thread-safe: agents enqueue from the event loop, the inference thread takes.
One chatty agent cannot starve the others: each agent with work gets one
request served per round.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    def __init__(self) -> None:
        self._queues: OrderedDict[str, deque[T]] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def put(self, owner: str, item: T) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("queue is closed")
            self._queues.setdefault(owner, deque()).append(item)
            self._size += 1
            self._cond.notify()

    def get(self) -> T | None:
        """Block until an item is available; None once the queue is closed and empty."""
        with self._cond:
            while not self._queues:
                if self._closed:
                    return None
                self._cond.wait()
            owner, items = next(iter(self._queues.items()))
            item = items.popleft()
            del self._queues[owner]
            if items:
                self._queues[owner] = items  # to the back of the round
            self._size -= 1
            return item

    def remove(self, owner: str, item: T) -> bool:
        """Withdraw a request that has not started (its caller went away)."""
        with self._cond:
            items = self._queues.get(owner)
            if items is None or item not in items:
                return False
            items.remove(item)
            if not items:
                del self._queues[owner]
            self._size -= 1
            return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

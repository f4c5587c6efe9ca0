"""Timers and their schedule: one node-wide heap with a single loop timer for the earliest deadline.

Timers are stored per agent (`durable_timers.py`) so they survive restarts and
fire for hibernated agents; in memory they sit in one heap, and the loop holds
exactly one `call_at` handle, for the earliest due time. Idle agents cost the
loop nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class Timer:
    due: float  # unix time
    timer_id: str
    agent_id: str = field(compare=False)
    name: str = field(compare=False)
    payload: dict[str, Any] = field(compare=False, default_factory=dict)
    interactive: bool = field(compare=False, default=False)
    attempts: int = field(compare=False, default=0)  # failed deliveries in a row (back-off; poison timers)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decode_timers(raw: bytes) -> list[Timer]:
    """An agent's stored timers object. Raises ValueError or TypeError if it is not a list of timers."""
    return [Timer(**item) for item in json.loads(raw)]


class TimerSchedule:
    """Heap of pending timers; calls `on_due(timer)` for each when it comes due."""

    def __init__(self, on_due: Callable[[Timer], None]) -> None:
        self._on_due = on_due
        self._heap: list[Timer] = []
        self._live: dict[str, Timer] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._handle_due: float | None = None

    def __len__(self) -> int:
        return len(self._live)

    def pending(self, agent_id: str) -> list[Timer]:
        return sorted(t for t in self._live.values() if t.agent_id == agent_id)

    def get(self, timer_id: str) -> Timer | None:
        """A timer not yet removed: pending, or fired and its turn not yet done."""
        return self._live.get(timer_id)

    def add(self, timer: Timer) -> None:
        self._live[timer.timer_id] = timer
        heapq.heappush(self._heap, timer)
        self._arm()

    def remove(self, timer_id: str) -> Timer | None:
        """Forget a timer; its heap entry is dropped lazily when it reaches the top."""
        timer = self._live.pop(timer_id, None)
        self._arm()
        return timer

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self) -> None:
        while self._heap and self._heap[0].timer_id not in self._live:
            heapq.heappop(self._heap)
        if not self._heap:
            self.close()
            return
        due = self._heap[0].due
        if self._handle is not None and self._handle_due == due:
            return
        self.close()
        loop = asyncio.get_running_loop()
        self._handle_due = due
        self._handle = loop.call_at(loop.time() + max(0.0, due - time.time()), self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = time.time()
        due: list[Timer] = []
        while self._heap and self._heap[0].due <= now:
            timer = heapq.heappop(self._heap)
            if self._live.get(timer.timer_id) is timer:
                due.append(timer)
        self._arm()
        for timer in due:
            self._on_due(timer)

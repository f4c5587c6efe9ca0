"""The repair queue: object versions waiting for a full check and repair, fewest spare fragments first.

Reads that met a missing or rotten fragment and writes that stored fewer
fragments or manifest replicas than they should put the version here; the
scrubber (`scrubber.py`) takes them, before and between its full passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools


class RepairQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str, int]] = []
        self._queued: set[tuple[str, int]] = set()
        self._seq = itertools.count()
        self._wake = asyncio.Event()

    def request(self, oid: str, version: int, *, spare: int) -> None:
        """Queue one object version for a full check and repair; fewer spare fragments go first."""
        if (oid, version) in self._queued:
            return
        self._queued.add((oid, version))
        heapq.heappush(self._heap, (spare, next(self._seq), oid, version))
        self._wake.set()

    def pop(self) -> tuple[str, int] | None:
        """The most urgent queued (object id, version), or None if nothing is queued."""
        if not self._heap:
            return None
        _, _, oid, version = heapq.heappop(self._heap)
        self._queued.discard((oid, version))
        return oid, version

    def __len__(self) -> int:
        return len(self._heap)

    async def wait(self, timeout_s: float) -> None:
        """Return when a repair is queued, at once if one is, or after `timeout_s`."""
        self._wake.clear()
        if not self._heap:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=timeout_s)

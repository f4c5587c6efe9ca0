"""Is the inference thread waiting for a CPU? Then llama.cpp's extra threads only spin against each other.

llama.cpp's threads meet at a spinning barrier after every operation of a
decode. When other work holds the cores, a thread waiting for its turn keeps
the others spinning: measured on this 2-core machine at load 10, an 8-sequence
decode step ran at 3–5 tokens/s with 2 threads (burning 12× the CPU time) and
at 27–42 tokens/s with 1. So while the kernel reports the inference thread
waiting for a CPU a good share of the time (schedstat run delay), the service
decodes with one thread, and goes back to the governor's thread count once
the wait has stayed low.
"""

from __future__ import annotations

import time
from pathlib import Path

SCHEDSTAT = Path("/proc/thread-self/schedstat")
CONTENDED = 0.25  # share of wall time spent waiting for a CPU that means "contended"
CALM = 0.10  # ... and below which, twice in a row, it is calm again
PERIOD_S = 0.5


class Contention:
    """Sampled from the inference thread itself (schedstat of *this* thread), at most every `PERIOD_S`."""

    def __init__(self, path: Path = SCHEDSTAT) -> None:
        self.path = path
        self.contended = False
        self.wait_share = 0.0
        self._last: tuple[float, int] | None = None
        self._calm = 0

    def _read(self) -> int | None:
        try:
            return int(self.path.read_text().split()[1])
        except (OSError, IndexError, ValueError):  # no schedstat (another kernel): never contended
            return None

    def update(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last[0] < PERIOD_S:
            return self.contended
        wait = self._read()
        if wait is None:
            return False
        if self._last is not None:
            self.wait_share = (wait - self._last[1]) / 1e9 / (now - self._last[0])
            if self.wait_share > CONTENDED:
                self.contended, self._calm = True, 0
            elif self.wait_share < CALM:
                self._calm += 1
                if self._calm >= 2:
                    self.contended = False
        self._last = (now, wait)
        return self.contended

    def reset(self) -> None:
        """After an idle spell the old sample says nothing about now."""
        self._last = None

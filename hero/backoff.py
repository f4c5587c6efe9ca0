"""How long to wait before trying a failed thing again, and when to give up: the delay doubles from `first_s`
up to `max_s`. The runtime's policies are in `hero/runtime/backoff.py`; the store retries pending purges with
one too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    first_s: float
    max_s: float
    factor: float = 2.0
    attempts: int = 0  # failures after which the caller gives up; 0: never gives up

    def delay_s(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row (1 for the first)."""
        return min(self.max_s, self.first_s * self.factor ** max(0, failures - 1))

    def gives_up(self, failures: int) -> bool:
        return self.attempts > 0 and failures >= self.attempts

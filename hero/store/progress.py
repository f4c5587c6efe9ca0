"""A one-line progress bar on stderr, shown only when stdout is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, total: int, label: str, *, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = sys.stdout.isatty() if enabled is None else enabled
        self._shown = 0.0
        self._began = time.monotonic()

    def __call__(self, amount: int) -> None:
        self.done += amount
        now = time.monotonic()
        if self.enabled and (now - self._shown > 0.1 or self.done >= self.total):
            self._shown = now
            frac = min(1.0, self.done / self.total)
            rate = self.done / max(now - self._began, 1e-6) / 1e6
            bar = "#" * int(frac * 30)
            self.stream.write(f"\r{self.label} [{bar:<30}] {frac:4.0%} {self.done / 1e6:,.1f} MB {rate:,.0f} MB/s")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._shown:
            self.stream.write("\n")
            self.stream.flush()

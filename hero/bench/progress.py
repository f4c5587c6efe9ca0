"""A one-line progress display on a terminal: elapsed, messages, agents awake, node watts vs budget."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from hero.bench.client import ANSWERED, REFUSED
from hero.bench.workload import Workload

if TYPE_CHECKING:
    from hero.bench.loadgen import LoadRun

WIDTH = 24


class Progress:
    """Redrawn after each monitor sample; silent unless enabled and writing to a terminal."""

    def __init__(self, workload: Workload, *, enabled: bool, out: TextIO = sys.stderr) -> None:
        self.workload = workload
        self.out = out
        self.enabled = enabled and out.isatty()
        self._drawn = False

    def update(self, run: LoadRun) -> None:
        if not self.enabled:
            return
        elapsed = run.now()
        done = min(1.0, elapsed / self.workload.duration_s)
        bar = "#" * int(done * WIDTH) + "-" * (WIDTH - int(done * WIDTH))
        status = run.samples.status[-1] if run.samples.status else None
        power = run.samples.power[-1] if run.samples.power else None
        awake = f"{status['active']}/{status['active'] + status['hibernated']}" if status else "?"
        watts = f"{power['node_watts']:.1f}/{power['budget_watts']:.0f} W" if power else "? W"
        line = (f"\r[{bar}] {elapsed:5.0f}/{self.workload.duration_s:.0f} s  sent {run.sent} "
                f"answered {run.count(ANSWERED)} refused {run.count(REFUSED)}  awake {awake}  node {watts} ")
        self.out.write(line)
        self.out.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self.out.flush()

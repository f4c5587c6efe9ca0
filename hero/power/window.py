"""The node's power over its last few seconds: every figure of a report on one window.

A report that mixed windows (the node's last second beside each agent's
10 s average) did not add up: its parts overshot the node while load fell and
undershot it while load rose. Each tick's split is exact (node = idle + Σ
agents + runtime + other), and a time-weighted mean of exact splits over the
same ticks is exact too, so averaging the last ticks' reports, not mixing
averages, keeps the parts adding up to the node. The window is the governor's
(5 s by default): the node figure an operator reads is the one the budget
applies to.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hero.power.ledger import TickReport


@dataclass(frozen=True)
class WindowFigures:
    """Mean watts over `seconds` of ticks ending at `end_unix`. Invariant: node = idle + Σ agents + runtime + other."""

    seconds: float = 0.0
    end_unix: float = 0.0
    node_w: float = 0.0
    idle_w: float = 0.0
    runtime_w: float = 0.0
    other_w: float = 0.0
    utilisation: float = 0.0
    agents_w: dict[str, float] = field(default_factory=dict)  # agents that drew power in the window

    @property
    def agents_total_w(self) -> float:
        return sum(self.agents_w.values())

    @property
    def conservation_error(self) -> float:
        parts = self.idle_w + self.agents_total_w + self.runtime_w + self.other_w
        if self.node_w <= 0:
            return 0.0 if parts == 0 else 1.0
        return abs(parts - self.node_w) / self.node_w


class PowerWindow:
    """The ticks of the last `window_s` seconds (at least the newest one, however long it was)."""

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._ticks: deque[TickReport] = deque()
        self._figures: WindowFigures | None = None

    def add(self, report: TickReport) -> None:
        ticks = self._ticks
        ticks.append(report)
        while len(ticks) > 1 and ticks[0].t <= report.t - self.window_s:
            ticks.popleft()
        self._figures = None

    def figures(self) -> WindowFigures:
        """Time-weighted means over the window's ticks (computed once per tick, however many readers)."""
        if self._figures is None:
            self._figures = self._compute()
        return self._figures

    def _compute(self) -> WindowFigures:
        ticks = self._ticks
        seconds = sum(r.dt for r in ticks)
        if not ticks or seconds <= 0:
            return WindowFigures()
        node = idle = runtime = other = utilisation = 0.0
        agents: dict[str, float] = {}
        for r in ticks:
            dt = r.dt
            node += r.node_w * dt
            idle += r.idle_w * dt
            runtime += r.runtime_w * dt
            other += r.other_w * dt
            utilisation += r.utilisation * dt
            for agent_id, w in r.agents_w.items():
                agents[agent_id] = agents.get(agent_id, 0.0) + w * dt
        return WindowFigures(
            seconds=seconds,
            end_unix=ticks[-1].unix,
            node_w=node / seconds,
            idle_w=idle / seconds,
            runtime_w=runtime / seconds,
            other_w=other / seconds,
            utilisation=utilisation / seconds,
            agents_w={agent_id: joules / seconds for agent_id, joules in agents.items()},
        )

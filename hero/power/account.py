"""What the ledger keeps for one agent: its charges since the last tick, its totals and its average watts."""

from __future__ import annotations

import math
from dataclasses import dataclass

TAU_10S = 10.0
TAU_1H = 3600.0


def utc_day(unix: float) -> int:
    return int(unix // 86400)


@dataclass(slots=True, eq=False)
class AgentAccount:
    """Everything charged to one agent. Fields marked `tick` are zeroed every tick."""

    agent_id: str
    cpu_ns: int = 0  # tick; thread CPU time; loop thread only
    wall_ns: int = 0  # tick; wall time of short steps, reconciled at the tick; loop thread only
    exact: bool = False  # time the next step with thread CPU time (the last one was long)
    steps: int = 0  # tick; loop thread only
    open_turns: int = 0  # loop thread only
    llm_ns: int = 0  # tick; under the ledger lock
    llm_tokens: int = 0  # tick; under the ledger lock
    storage_bytes: int = 0  # tick; under the ledger lock
    skills_ns: int = 0  # tick; skill workers' thread CPU time; under the ledger lock
    cpu_s_total: float = 0.0  # attributed CPU-seconds, loop + LLM + skills
    llm_s_total: float = 0.0
    skills_s_total: float = 0.0
    tokens_total: int = 0
    storage_total: int = 0
    steps_total: int = 0
    turns_total: int = 0
    joules: float = 0.0
    day: int = 0  # UTC day of `day_base`
    day_base: float = 0.0  # `joules` when that day began here; joules today = joules - day_base
    ew10: float = 0.0  # EWMAs, decayed lazily from ew_t so idle agents cost nothing per tick
    ew1h: float = 0.0
    ew_t: float = 0.0

    def averages(self, now: float) -> tuple[float, float]:
        """(10 s, 1 h) average watts at monotonic time `now`."""
        gap = max(0.0, now - self.ew_t)
        return self.ew10 * math.exp(-gap / TAU_10S), self.ew1h * math.exp(-gap / TAU_1H)

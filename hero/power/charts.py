"""Chart-ready power history: node watts and the top agents, bucketed for the last hour or day.

The history keeps rows at mixed resolutions (1 s, 1 min, 1 h) and stores
agents sparsely (no row = the agent drew no dynamic power that second), so a
chart cannot plot rows directly. Node watts per bucket are the time-weighted
mean of the rows in it; agent watts are the bucket's joules over its length.
Blocking (DuckDB): callers run it in a thread.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from hero.seams.power import ChartWindow

WINDOWS: dict[ChartWindow, tuple[float, float]] = {  # name -> (span, bucket) in seconds
    "1h": (3600.0, 60.0),
    "1d": (86400.0, 600.0),
}
TOP_N = 10


class HistorySource(Protocol):
    def node_series(self, since: float, until: float | None = None) -> list[dict[str, Any]]: ...
    def agent_series(self, agent_id: str, since: float, until: float | None = None) -> list[dict[str, Any]]: ...
    def top_agents(self, since: float, limit: int = 10) -> list[dict[str, Any]]: ...


def power_history(
    history: HistorySource, window: ChartWindow, *, now: float | None = None, top: int = TOP_N
) -> dict[str, Any]:
    """Node watts and the `top` agents by energy over `window` ("1h" or "1d"), one point per bucket."""
    span, bucket = WINDOWS[window]
    now = time.time() if now is None else now
    start = (now - span) // bucket * bucket + bucket  # whole buckets, the last one ends after `now`
    starts = [start + i * bucket for i in range(int((now - start) // bucket) + 1)]
    node = _node_buckets(history.node_series(start), starts, bucket)
    agents = []
    for entry in history.top_agents(start, limit=top):
        rows = history.agent_series(entry["agent_id"], start)
        agents.append(
            {
                "agent_id": entry["agent_id"],
                "joules": entry["joules"],
                "wh": entry["joules"] / 3600.0,
                "watts": _agent_buckets(rows, starts, bucket, now),
            }
        )
    return {"window": window, "bucket_s": bucket, "start": start, "end": now, "ts": starts, **node, "agents": agents}


def _index(ts: float, first: float, bucket: float, count: int) -> int | None:
    i = int((ts - first) // bucket)
    return i if 0 <= i < count else None


def _node_buckets(rows: list[dict[str, Any]], starts: list[float], bucket: float) -> dict[str, list[float | None]]:
    weighted = [0.0] * len(starts)
    seconds = [0.0] * len(starts)
    budget: list[float | None] = [None] * len(starts)
    for row in rows:
        i = _index(row["ts"], starts[0], bucket, len(starts)) if starts else None
        if i is None:
            continue
        weighted[i] += row["watts"] * row["res"]
        seconds[i] += row["res"]
        budget[i] = max(budget[i] or 0.0, row["budget_w"])
    watts = [round(w / s, 3) if s else None for w, s in zip(weighted, seconds, strict=True)]
    return {"node_watts": watts, "budget_watts": budget}


def _agent_buckets(rows: list[dict[str, Any]], starts: list[float], bucket: float, now: float) -> list[float]:
    joules = [0.0] * len(starts)
    for row in rows:
        i = _index(row["ts"], starts[0], bucket, len(starts)) if starts else None
        if i is not None:
            joules[i] += row["joules"]
    lengths = [max(1.0, min(bucket, now - s)) for s in starts]  # the current bucket is only partly over
    return [round(j / length, 4) for j, length in zip(joules, lengths, strict=True)]

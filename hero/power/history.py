"""Power history in DuckDB (one file in the data dir), downsampled with age.

Rows are buffered by the tick and written in one columnar insert every few
seconds, off the event loop. Agents are stored sparsely: a second in which
an agent ran nothing writes no row, so parked agents cost no storage either.
Resolutions: 1 s for `raw_keep_s`, then 1 min until `minute_keep_s`, then
1 h until `retention_s`, after which rows are deleted.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import duckdb

from hero.power.config import HistoryRetention
from hero.power.ledger import TickReport

_SCHEMA = """
CREATE TABLE IF NOT EXISTS node_power (
    ts DOUBLE NOT NULL,          -- unix seconds, start of the bucket
    res INTEGER NOT NULL,        -- bucket length in seconds: 1, 60 or 3600
    watts DOUBLE NOT NULL,
    idle_w DOUBLE NOT NULL,
    agents_w DOUBLE NOT NULL,
    runtime_w DOUBLE NOT NULL,
    other_w DOUBLE NOT NULL,
    budget_w DOUBLE NOT NULL,
    utilisation DOUBLE NOT NULL,
    source VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_power (
    ts DOUBLE NOT NULL,
    res INTEGER NOT NULL,
    agent_id VARCHAR NOT NULL,
    watts DOUBLE NOT NULL,       -- mean over the bucket (joules / res)
    joules DOUBLE NOT NULL,
    cpu_s DOUBLE NOT NULL
);
"""

_NODE_COLS = ("ts", "res", "watts", "idle_w", "agents_w", "runtime_w", "other_w", "budget_w", "utilisation", "source")
_NODE_TYPES = ("DOUBLE", "INTEGER", *(["DOUBLE"] * 7), "VARCHAR")
_AGENT_COLS = ("ts", "res", "agent_id", "watts", "joules", "cpu_s")
_AGENT_TYPES = ("DOUBLE", "INTEGER", "VARCHAR", "DOUBLE", "DOUBLE", "DOUBLE")


def _insert_sql(table: str, cols: tuple[str, ...], types: tuple[str, ...]) -> str:
    unnests = ", ".join(f"unnest(?::{t}[])" for t in types)
    return f"INSERT INTO {table} ({', '.join(cols)}) SELECT {unnests}"


class PowerHistory:
    """Thread-safe: DuckDB connections are not, so one lock serialises every use."""

    def __init__(self, path: Path, *, budget_w: float, retention: HistoryRetention | None = None) -> None:
        self.path = path
        self.budget_w = budget_w
        self.retention = retention or HistoryRetention()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._con = duckdb.connect(str(path))
        self._con.execute(_SCHEMA)
        self._lock = threading.Lock()
        self._node_rows: list[tuple[Any, ...]] = []
        self._agent_rows: list[tuple[Any, ...]] = []
        self._insert_node = _insert_sql("node_power", _NODE_COLS, _NODE_TYPES)
        self._insert_agent = _insert_sql("agent_power", _AGENT_COLS, _AGENT_TYPES)

    def add(self, report: TickReport) -> None:
        """Buffer one tick (cheap; called on the loop thread)."""
        ts = report.unix
        agents_w = sum(report.agents_w.values())
        self._node_rows.append(
            (
                ts,
                1,
                report.node_w,
                report.idle_w,
                agents_w,
                report.runtime_w,
                report.other_w,
                self.budget_w,
                report.utilisation,
                report.source,
            )
        )
        dt = report.dt
        cpu = report.agents_cpu_s
        for agent, w in report.agents_w.items():
            self._agent_rows.append((ts, 1, agent, w, w * dt, cpu.get(agent, 0.0)))

    @property
    def pending(self) -> int:
        return len(self._node_rows) + len(self._agent_rows)

    def take(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Hand over the buffered rows (on the thread that calls `add`), to `write` elsewhere."""
        batch = (self._node_rows, self._agent_rows)
        self._node_rows, self._agent_rows = [], []
        return batch

    def flush(self) -> int:
        """Write buffered rows now; returns how many. Blocking."""
        return self.write(self.take())

    def write(self, batch: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]) -> int:
        """Insert a batch from `take` in one columnar statement per table. Blocking: run it in a thread."""
        node_rows, agent_rows = batch
        with self._lock:
            if node_rows:
                self._con.execute(self._insert_node, [list(c) for c in zip(*node_rows, strict=True)])
            if agent_rows:
                self._con.execute(self._insert_agent, [list(c) for c in zip(*agent_rows, strict=True)])
        return len(node_rows) + len(agent_rows)

    def compact(self, now: float) -> None:
        """Downsample old rows (1 s → 1 min → 1 h) and drop rows past retention. Blocking."""
        r = self.retention
        with self._lock:
            self._con.execute("BEGIN")
            try:
                self._downsample(1, 60, now - r.raw_keep_s)
                self._downsample(60, 3600, now - r.minute_keep_s)
                for table in ("node_power", "agent_power"):
                    self._con.execute(f"DELETE FROM {table} WHERE ts < ?", [now - r.retention_s])
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise

    def _downsample(self, src: int, dst: int, older_than: float) -> None:
        cutoff = (older_than // dst) * dst  # whole buckets only
        self._con.execute(
            """
            INSERT INTO node_power
            SELECT floor(ts / $dst) * $dst, $dst, avg(watts), avg(idle_w), avg(agents_w), avg(runtime_w),
                   avg(other_w), max(budget_w), avg(utilisation), mode(source)
            FROM node_power WHERE res = $src AND ts < $cutoff GROUP BY 1
            """,
            {"src": src, "dst": dst, "cutoff": cutoff},
        )
        self._con.execute(
            """
            INSERT INTO agent_power
            SELECT floor(ts / $dst) * $dst, $dst, agent_id, sum(joules) / $dst, sum(joules), sum(cpu_s)
            FROM agent_power WHERE res = $src AND ts < $cutoff GROUP BY 1, agent_id
            """,
            {"src": src, "dst": dst, "cutoff": cutoff},
        )
        for table in ("node_power", "agent_power"):
            self._con.execute(f"DELETE FROM {table} WHERE res = ? AND ts < ?", [src, cutoff])

    # ---- queries (blocking; the web layer runs them in a thread) ----

    def node_series(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._con.execute(
                f"SELECT {', '.join(_NODE_COLS)} FROM node_power WHERE ts >= ? AND ts < ? ORDER BY ts",
                [since, until if until is not None else float("inf")],
            ).fetchall()
        return [dict(zip(_NODE_COLS, row, strict=True)) for row in rows]

    def agent_series(self, agent_id: str, since: float, until: float | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._con.execute(
                f"SELECT {', '.join(_AGENT_COLS)} FROM agent_power "
                "WHERE agent_id = ? AND ts >= ? AND ts < ? ORDER BY ts",
                [agent_id, since, until if until is not None else float("inf")],
            ).fetchall()
        return [dict(zip(_AGENT_COLS, row, strict=True)) for row in rows]

    def agent_joules(self, since: float, until: float | None = None) -> dict[str, float]:
        """Energy per agent over a span (e.g. since midnight, to restore daily quotas after a restart)."""
        with self._lock:
            rows = self._con.execute(
                "SELECT agent_id, sum(joules) FROM agent_power WHERE ts >= ? AND ts < ? GROUP BY agent_id",
                [since, until if until is not None else float("inf")],
            ).fetchall()
        return {agent: float(j) for agent, j in rows}

    def top_agents(self, since: float, limit: int = 10) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._con.execute(
                "SELECT agent_id, sum(joules) AS j FROM agent_power WHERE ts >= ? "
                "GROUP BY agent_id ORDER BY j DESC LIMIT ?",
                [since, limit],
            ).fetchall()
        return [{"agent_id": a, "joules": float(j)} for a, j in rows]

    def counts(self) -> dict[str, dict[int, int]]:
        out: dict[str, dict[int, int]] = {}
        with self._lock:
            for table in ("node_power", "agent_power"):
                rows = self._con.execute(f"SELECT res, count(*) FROM {table} GROUP BY res").fetchall()
                out[table] = {int(res): int(n) for res, n in rows}
        return out

    def forget(self, agent_id: str) -> int:
        """Delete every row of one agent (it was deleted), buffered or stored; how many stored rows went."""
        self._agent_rows = [row for row in self._agent_rows if row[2] != agent_id]
        with self._lock:
            found = self._con.execute("SELECT count(*) FROM agent_power WHERE agent_id = ?", [agent_id]).fetchone()
            self._con.execute("DELETE FROM agent_power WHERE agent_id = ?", [agent_id])
        return int(found[0]) if found else 0

    def close(self) -> None:
        with self._lock:
            self._con.close()

"""Power history in DuckDB: sparse rows, downsampling with age (energy preserved), retention, queries."""

from __future__ import annotations

from pathlib import Path

import pytest

from hero.power.config import HistoryRetention
from hero.power.history import PowerHistory
from hero.power.ledger import TickReport

NOW = 1_999_998_000.0  # a fixed "now" on an hour boundary (unix), so buckets are whole


def tick(unix: float, agents: dict[str, float], node_w: float = 20.0) -> TickReport:
    return TickReport(
        t=unix,
        unix=unix,
        dt=1.0,
        source="model",
        node_w=node_w,
        idle_w=12.0,
        dynamic_w=node_w - 12.0,
        runtime_w=0.5,
        other_w=max(0.0, node_w - 12.0 - 0.5 - sum(agents.values())),
        utilisation=0.1,
        agents_w=agents,
        agents_llm_w=0.0,
        llm_cpu_s=0.0,
        agents_cpu_s={a: w / 10 for a, w in agents.items()},
        process_cpu_s=0.3,
        busy_cpu_s=0.4,
        host_cpus=2,
        hosted=3,
        idle_share_w=4.0,
        conservation_error=0.0,
        loop_scale=1.0,
    )


@pytest.fixture
def history(tmp_path: Path):
    h = PowerHistory(
        tmp_path / "power.duckdb",
        budget_w=60.0,
        retention=HistoryRetention(raw_keep_s=600.0, minute_keep_s=7200.0, retention_s=86400.0),
    )
    yield h
    h.close()


def test_rows_are_sparse_and_queries_return_them_in_order(history: PowerHistory) -> None:
    for i in range(10):
        history.add(tick(NOW - 10 + i, {"busy": 2.0} if i % 2 else {}))
    assert history.flush() == 10 + 5  # node every second; the agent only in seconds it ran
    node = history.node_series(NOW - 100)
    assert [r["ts"] for r in node] == [NOW - 10 + i for i in range(10)]
    assert node[0]["budget_w"] == 60.0 and node[0]["source"] == "model" and node[0]["res"] == 1
    rows = history.agent_series("busy", NOW - 100)
    assert len(rows) == 5 and all(r["joules"] == 2.0 for r in rows)
    assert history.agent_series("nobody", NOW - 100) == []
    assert history.agent_joules(NOW - 100) == {"busy": 10.0}
    assert history.top_agents(NOW - 100) == [{"agent_id": "busy", "joules": 10.0}]


def test_downsampling_with_age_keeps_energy_and_retention_drops_old_rows(history: PowerHistory) -> None:
    start = NOW - 3 * 3600  # three hours of 1 s ticks
    for i in range(3 * 3600):
        history.add(tick(start + i, {"a": 3.0, "b": 1.0} if i % 3 == 0 else {"a": 3.0}, node_w=20.0 + (i % 2)))
    history.add(tick(NOW - 2 * 86400, {"ancient": 5.0}))  # past retention
    history.flush()
    before = history.agent_joules(0.0)
    history.compact(NOW)
    counts = history.counts()
    assert set(counts["node_power"]) == {1, 60, 3600}
    assert counts["node_power"][1] <= 600 + 60  # only the last 10 minutes stay at 1 s
    after = history.agent_joules(0.0)
    assert "ancient" not in after
    before.pop("ancient")
    assert after == pytest.approx(before)  # downsampling moves energy between buckets, never loses it
    hourly = [r for r in history.agent_series("a", 0.0) if r["res"] == 3600]
    assert hourly and hourly[0]["watts"] == pytest.approx(3.0)
    minute_node = [r for r in history.node_series(0.0) if r["res"] == 60]
    assert minute_node and minute_node[0]["watts"] == pytest.approx(20.5)
    history.compact(NOW)  # idempotent
    assert history.agent_joules(0.0) == pytest.approx(after)


def test_history_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "power.duckdb"
    h = PowerHistory(path, budget_w=60.0)
    h.add(tick(NOW, {"a": 1.5}))
    h.flush()
    h.close()
    h2 = PowerHistory(path, budget_w=60.0)
    try:
        assert h2.agent_joules(NOW - 1) == {"a": 1.5}
    finally:
        h2.close()

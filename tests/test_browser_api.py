"""The APIs behind the browser pages: node status (+ stream), chart-ready power history, the user's own power."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import httpx
import pytest

from hero.power.charts import power_history
from hero.power.config import HistoryRetention
from hero.power.history import PowerHistory
from hero.runtime.events import ChatMessage
from hero.seams.power import CHART_WINDOWS
from tests.conftest import auth

OPERATOR_PATHS = (
    "/api/node/status",
    "/api/node/status/stream",
    "/api/node/power/chart?window=1h",
    "/api/node/power",
    "/api/node/power/stream",
    "/api/node/power/history",
    "/api/node/agents",
    "/api/node/storage",
    "/metrics",
)




async def test_operator_apis_refuse_user_tokens_and_anonymous_callers(node):
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        for path in OPERATOR_PATHS:
            assert (await http.get(path)).status_code == 401, path
            r = await http.get(path, headers=auth(node.alice["token"]))
            assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden", path


async def test_status_counts_agents_activations_and_llm_throughput(node):
    async with httpx.AsyncClient(base_url=node.base_url, timeout=60) as http:
        first = (await http.get("/api/node/status", headers=auth(node.operator))).json()
        assert first["agents"] == {"active": 0, "hibernated": 0, "damaged": 0, "total": 0}
        assert first["llm"]["loaded"] is True and first["parts"] == {"power": True, "storage": True, "network": False}
        await asyncio.sleep(1.0)
        for user in (node.alice, node.bob):
            r = await http.post(
                "/v1/chat/completions",
                headers=auth(user["token"]),
                json={"messages": [{"role": "user", "content": "Say something nice"}]},
            )
            assert r.status_code == 200
        await node.node.hibernate_idle(0)
        await (await node.node.deliver(node.alice["agent_id"], ChatMessage("remember that I am back"))).text()
        status = (await http.get("/api/node/status", headers=auth(node.operator))).json()
    assert status["agents"] == {"active": 1, "hibernated": 1, "damaged": 0, "total": 2}
    assert status["runtime"]["activations"] == 3 and status["runtime"]["hibernations"] == 2
    assert status["activation_rate_per_min"] == pytest.approx(3.0)  # 3 activations within the last minute
    assert status["llm"]["tokens_total"] > 0 and status["llm"]["tokens_per_s"] > 0
    assert status["llm"]["queue_depth"] == 0


async def test_status_stream_ticks_at_1_hz(node):
    async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as http:
        started = asyncio.get_running_loop().time()
        stamps = []
        async with http.stream("GET", "/api/node/status/stream", headers=auth(node.operator)) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    stamps.append(json.loads(line[5:])["ts"])
                    if len(stamps) == 3:
                        break
        elapsed = asyncio.get_running_loop().time() - started
    assert 1.8 <= elapsed <= 4.0
    assert all(0.8 <= b - a <= 1.3 for a, b in itertools.pairwise(stamps))


async def test_footprint_and_chart_from_the_power_service(node):
    async with httpx.AsyncClient(base_url=node.base_url, timeout=60) as http:
        power = node.power
        for user in (node.alice, node.bob):
            await (await node.node.deliver(user["agent_id"], ChatMessage("Tell me about rivers"))).text()
        await asyncio.sleep(2.5)  # two ticks split the work
        mine = (await http.get("/api/me/power", headers=auth(node.alice["token"]))).json()
        report = power.node_report()
        await asyncio.to_thread(power.history.flush)
        chart = (await http.get("/api/node/power/chart?window=1h", headers=auth(node.operator))).json()
        r = await http.get("/api/node/power/chart?window=1w", headers=auth(node.operator))
        assert r.status_code == 422 and r.json()["error"]["param"] == "window"
    assert mine["agent_id"] == node.alice["agent_id"] and mine["joules"] > 0 and mine["wh_today"] > 0
    hosted = [a for a in report["agents"] if a["status"] in ("active", "hibernated")]
    assert mine["node_average"]["agents"] == len(hosted) == 2
    assert "agents" not in mine  # a user sees the mean, never the other agents
    assert chart["window"] == "1h" and chart["bucket_s"] == 60 and len(chart["ts"]) == 60
    assert any(w is not None and w > 0 for w in chart["node_watts"])
    assert {a["agent_id"] for a in chart["agents"]} == {node.alice["agent_id"], node.bob["agent_id"]}


def _history(tmp_path: Path, node_rows: list[dict], agent_rows: list[dict]) -> PowerHistory:
    history = PowerHistory(tmp_path / "power.duckdb", budget_w=60.0, retention=HistoryRetention())
    node_cols = (
        "ts", "res", "watts", "idle_w", "agents_w", "runtime_w", "other_w", "budget_w", "utilisation", "source"
    )
    base = {"idle_w": 12.0, "agents_w": 0.0, "runtime_w": 0.0, "other_w": 0.0, "budget_w": 60.0,
            "utilisation": 0.1, "source": "model"}
    history.write(
        (
            [tuple((base | row)[c] for c in node_cols) for row in node_rows],
            [(r["ts"], r.get("res", 1), r["agent_id"], r["joules"] / r.get("res", 1), r["joules"], 0.0)
             for r in agent_rows],
        )
    )
    return history


def test_power_history_buckets_mixed_resolutions_and_sparse_agents(tmp_path):
    now = 36_000.0 + 30  # 30 s into a minute
    minute = now - 30
    # two whole minutes ago at 1 s: 20 W then 30 W; one minute ago at 1 s for half the minute only
    node_rows = [{"ts": minute - 120 + s, "res": 1, "watts": 20.0} for s in range(60)]
    node_rows += [{"ts": minute - 60 + s, "res": 1, "watts": 30.0 if s < 30 else 50.0} for s in range(60)]
    node_rows += [{"ts": minute - 1800, "res": 60, "watts": 25.0}]  # an older, downsampled minute
    agents = [{"ts": minute - 120 + s, "agent_id": "a" * 64, "joules": 0.5} for s in range(60)]  # 0.5 W, 1 min
    agents += [{"ts": minute - 60, "agent_id": "b" * 64, "joules": 6.0}]  # one busy second: 6 J in that minute
    agents += [{"ts": minute + 10, "agent_id": "b" * 64, "joules": 3.0}]  # current minute, 30 s old
    history = _history(tmp_path, node_rows, agents)
    try:
        out = power_history(history, "1h", now=now)
        every = {window: power_history(history, window, now=now) for window in CHART_WINDOWS}  # the seam's windows
    finally:
        history.close()
    ts = out["ts"]
    assert len(ts) == 60 and ts[-1] == minute and ts[1] - ts[0] == 60
    watts = dict(zip(ts, out["node_watts"], strict=True))
    assert watts[minute - 120] == pytest.approx(20.0)
    assert watts[minute - 60] == pytest.approx(40.0)  # time-weighted: 30 s at 30 W, 30 s at 50 W
    assert watts[minute - 1800] == pytest.approx(25.0)
    assert watts[minute - 600] is None  # no data is a gap, not a zero
    assert [a["agent_id"] for a in out["agents"]] == ["a" * 64, "b" * 64]  # by energy: 30 J, then 9 J
    a, b = (dict(zip(ts, agent["watts"], strict=True)) for agent in out["agents"])
    assert a[minute - 120] == pytest.approx(0.5) and a[minute - 60] == 0.0
    assert b[minute - 60] == pytest.approx(0.1)  # 6 J over 60 s
    assert b[minute] == pytest.approx(0.1)  # 3 J over the 30 s of this minute so far
    assert out["agents"][0]["wh"] == pytest.approx(30 / 3600)
    assert {w: (c["window"], c["ts"][-1] <= now) for w, c in every.items()} == {w: (w, True) for w in CHART_WINDOWS}


async def test_operator_agent_lists_name_each_agents_user(node):
    """The operator knows users by name: /api/node/agents and /api/node/power join ids to the user registry."""
    stranger = "ab" * 32  # an agent no user owns (a runtime test's, an imported one): no name to show
    for agent_id in (node.alice["agent_id"], node.bob["agent_id"], stranger):
        await (await node.node.deliver(agent_id, ChatMessage("remember that names matter"))).text()
    expected = {node.alice["agent_id"]: "alice", node.bob["agent_id"]: "bob", stranger: None}
    async with httpx.AsyncClient(base_url=node.base_url) as http:
        agents = (await http.get("/api/node/agents", headers=auth(node.operator))).json()["agents"]
        assert {a["agent_id"]: a["user"] for a in agents} == expected
        power = (await http.get("/api/node/power", headers=auth(node.operator))).json()["agents"]
        assert {a["agent_id"]: a["user"] for a in power} == expected

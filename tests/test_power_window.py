"""`GET /api/node/power` on one window: every figure covers the same stated `window_s`, the parts add up.

A real node, a real model and real chats: the report is read while three users' replies stream
and while the load ends (when averages over different windows part ways the most).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.conftest import add_user, auth, make_config, operator_token, serving

pytestmark = pytest.mark.model


def parts_error(report: dict) -> float:
    """|idle + runtime + other + Σ agents.watts − node| / node."""
    parts = (
        report["idle_watts"]
        + report["runtime_watts"]
        + report["other_watts"]
        + sum(a["watts"] for a in report["agents"])
    )
    return abs(parts - report["node_watts"]) / report["node_watts"]


async def test_power_parts_add_up_to_the_node_on_one_window_under_real_load(tmp_path: Path) -> None:
    config = make_config(tmp_path, max_tokens=40)
    async with serving(config) as parts:
        users = [add_user(config.data_dir, name) for name in ("alice", "bob", "carol")]
        operator = operator_token(config.data_dir)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=120) as http:

            async def chat(user: dict[str, str]) -> None:
                r = await http.post(
                    "/v1/chat/completions",
                    headers=auth(user["token"]),
                    json={"messages": [{"role": "user", "content": "Describe the sea in detail."}]},
                )
                assert r.status_code == 200, r.text

            reports: list[dict] = []
            async for _ in parts.power.stream():  # a report needs one metered second
                break

            async def watch(seconds: float) -> None:
                loop = asyncio.get_running_loop()
                until = loop.time() + seconds
                while loop.time() < until:
                    r = await http.get("/api/node/power", headers=auth(operator))
                    assert r.status_code == 200
                    reports.append(r.json())
                    await asyncio.sleep(0.25)

            load = asyncio.gather(*(chat(u) for u in users))
            while not load.done():
                await watch(0.5)
            await load
            await watch(6.0)  # the load has ended: the figures fall together

        power = parts.power
        loaded = [r for r in reports if sum(a["watts"] for a in r["agents"]) > 0.05]
        assert len(loaded) >= 3, "the chats drew no agent power"
        errors = [parts_error(r) for r in reports]
        worst = max(range(len(reports)), key=errors.__getitem__)
        w = reports[worst]
        assert errors[worst] <= 0.05, (
            f"parts {w['idle_watts']:.2f} idle + {w['runtime_watts']:.2f} runtime + {w['other_watts']:.2f} other"
            f" + {sum(a['watts'] for a in w['agents']):.2f} agents vs node {w['node_watts']:.2f} W"
        )
        for r in reports:
            # the governor's window, or one quiet tick when nothing ran (the node ticks every 10 s then)
            assert 0 < r["window_s"] <= max(power.governor.config.window_s, power.config.quiet_tick_s) + 1
            assert r["agents_watts"] == pytest.approx(sum(a["watts"] for a in r["agents"]), abs=1e-9)
            assert r["headroom_watts"] == pytest.approx(r["budget_watts"] - r["node_watts"])
            assert all(set(a) >= {"agent_id", "user", "watts", "joules", "wh_today"} for a in r["agents"])
        names = {a["user"] for r in loaded for a in r["agents"] if a["watts"] > 0}
        assert names <= {"alice", "bob", "carol"} and names  # the operator sees the users' names

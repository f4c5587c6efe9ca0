"""PowerService with the real Node, LLM service and web app: parked agents, admission, endpoints, auth."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hero.chat.histories import Histories
from hero.errors import Overloaded
from hero.identity import NodeKeys, UserKey
from hero.power.config import GovernorConfig, PowerConfig
from hero.power.oracle import burn_ms
from hero.power.profiles import HardwareProfile
from hero.power.service import PowerService
from hero.runtime.agent import Agent
from hero.runtime.events import Event, Ping, Reply, TimerFired
from hero.runtime.node import Node
from hero.scheduler.llm import LLMService
from hero.server import open_store
from hero.users import Users
from hero.web.app import create_app
from tests.conftest import auth, make_config, serving_app
from tests.doubles import ScriptedLLM


class Quiet(Agent):
    """Accepts every event and does nothing: its turns are as small as a turn gets."""

    async def handle(self, event: Event, reply: Reply) -> None:
        reply.accept()


def power_config(**changes) -> PowerConfig:
    return PowerConfig(tick_s=0.2, cgroup_backstop=False, **changes)


@asynccontextmanager
async def power_node(
    tmp_path: Path, profile: HardwareProfile | str = "zos-edge-60w", config: PowerConfig | None = None
):
    cfg = make_config(tmp_path)
    keys = NodeKeys.load_or_create(cfg.data_dir)
    store = await open_store(cfg, keys)
    power = PowerService(profile, cfg.data_dir, config or power_config())
    node = Node(store, ScriptedLLM(), Quiet, node_id=keys.node_id, idle_after_s=300.0, metering=power, admission=power)
    power.attach(node, None)
    await node.start()
    await power.start()
    try:
        yield cfg, keys, node, power, store
    finally:
        await power.aclose()
        await node.aclose()
        await store.aclose()


async def next_reports(power: PowerService, n: int) -> list[dict]:
    out: list[dict] = []
    async for report in power.stream():
        out.append(report)
        if len(out) == n:
            break
    return out


async def test_200_parked_agents_cost_no_dynamic_watts(tmp_path: Path) -> None:
    config = power_config(governor=GovernorConfig(window_s=0.5))  # reports average over 0.5 s
    async with power_node(tmp_path, config=config) as (_, _, node, power, _):
        agents = [UserKey.generate().agent_id for _ in range(200)]
        for agent in agents:
            await (await node.deliver(agent, Ping())).text()
        assert power.agents_by_status() == {"active": 200, "hibernated": 0}
        await next_reports(power, 4)  # let the activation turns leave the report window
        reports = await next_reports(power, 5)
        assert all(r["agents_watts"] == 0.0 for r in reports)
        assert power.ledger.last.steps == 0
        listed = {a["agent_id"]: a for a in reports[-1]["agents"]}
        assert len(listed) == 200 and all(a["status"] == "active" for a in listed.values())
        assert reports[-1]["idle_share_watts"] == pytest.approx(12.0 / 200)
        assert await node.hibernate_idle(0.0) == 200
        assert power.agents_by_status() == {"active": 0, "hibernated": 200}
        assert power.agent_report(agents[0])["storage_bytes"] > 0  # hibernation wrote its state


async def test_background_work_is_refused_by_the_real_node_when_over_budget(tmp_path: Path) -> None:
    tight = HardwareProfile(name="tight", cores=2, ram_gb=1, idle_w=10.0, max_w=40.0, budget_w=10.5)
    async with power_node(tmp_path, tight) as (_, _, node, power, _):
        await next_reports(power, 1)  # 0.9 × 10.5 W is below idle: constrained from the first tick
        agent = UserKey.generate().agent_id
        with pytest.raises(Overloaded) as err:
            await node.deliver(agent, TimerFired("t1", "digest"))
        assert err.value.retry_after == 5.0
        await (await node.deliver(agent, Ping())).text()  # interactive work is still admitted
        assert power.node_report()["governor"]["deferred"]["background"] >= 1


async def test_close_stops_the_tick_ends_streams_and_history_survives_a_restart(tmp_path: Path) -> None:
    async with power_node(tmp_path) as (cfg, _, node, power, _):
        agent = UserKey.generate().agent_id
        await (await node.deliver(agent, Ping())).text()
        await next_reports(power, 1)

        async def work() -> None:
            burn_ms(100)  # real CPU, so the machine's counters (and the modelled watts) move too

        await power.run_turn(agent, work())
        await next_reports(power, 2)
        joules = power.ledger.get(agent).joules
        assert joules > 0
        consumer = asyncio.create_task(next_reports(power, 1000))
        await asyncio.sleep(0)
        task = power._task
        await power.aclose()
        assert task is not None and task.done() and power._task is None
        await asyncio.wait_for(consumer, 1.0)  # the stream ended with the service

    again = PowerService("zos-edge-60w", cfg.data_dir, power_config())
    await again.start()
    try:
        assert again.ledger.joules_today(agent) == pytest.approx(joules, rel=0.01)  # quotas survive restarts
    finally:
        await again.aclose()


@asynccontextmanager
async def web(tmp_path: Path) -> AsyncIterator[dict]:
    async with power_node(tmp_path) as (cfg, keys, node, power, store):
        users = Users(cfg.data_dir, keys)
        alice = users.add("alice", UserKey.generate().agent_id)
        bob = users.add("bob", UserKey.generate().agent_id)
        app = create_app(config=cfg, node=node, chat=Histories(node), users=users, llm=None, store=store, power=power)
        try:
            async with (
                serving_app(app, cfg.port),
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.port}", trust_env=False) as client,
            ):
                yield {
                    "client": client,
                    "node": node,
                    "power": power,
                    "alice": (alice.agent_id, users.issue(alice)[0]),
                    "bob": (bob.agent_id, users.issue(bob)[0]),
                    "operator": users.issue_operator()[0],
                }
        finally:
            users.close()


async def test_metrics_are_prometheus_text_with_kepler_style_names(tmp_path: Path) -> None:
    async with web(tmp_path) as w:
        alice_id, _ = w["alice"]
        await (await w["node"].deliver(alice_id, Ping())).text()
        await next_reports(w["power"], 2)
        r = await w["client"].get("/metrics", headers=auth(w["operator"]))
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        samples = {}
        for family in text_string_to_metric_families(r.text):
            for s in family.samples:
                samples.setdefault(s.name, []).append(s)
        for name in (
            "hero_node_watts",
            "hero_node_idle_watts",
            "hero_node_budget_watts",
            "hero_agent_watts",
            "hero_agent_joules_total",
            "hero_agent_cpu_seconds_total",
            "hero_agents",
        ):
            assert name in samples, name
        assert samples["hero_node_watts"][0].labels == {"source": "model"}
        assert samples["hero_node_budget_watts"][0].value == 60.0
        assert samples["hero_node_idle_watts"][0].value == 12.0
        agent_series = [s for s in samples["hero_agent_joules_total"] if s.labels["agent"] == alice_id]
        assert len(agent_series) == 1 and agent_series[0].value >= 0.0
        statuses = {s.labels["status"]: s.value for s in samples["hero_agents"]}
        assert statuses["active"] == 1.0
        per_agent = [n for n, ss in samples.items() if any(s.labels.get("agent") == alice_id for s in ss)]
        assert len(per_agent) <= 3  # cheap exporter: at most three series per agent


async def test_node_power_json_and_stream_for_the_operator(tmp_path: Path) -> None:
    async with web(tmp_path) as w:
        alice_id, _ = w["alice"]
        await (await w["node"].deliver(alice_id, Ping())).text()
        await next_reports(w["power"], 1)
        r = await w["client"].get("/api/node/power", headers=auth(w["operator"]))
        assert r.status_code == 200
        body = r.json()
        for key in ("node_watts", "idle_watts", "runtime_watts", "budget_watts", "source", "agents"):
            assert key in body
        assert body["source"] == "model" and body["budget_watts"] == 60.0
        assert {"agent_id", "watts", "joules", "status"} <= set(body["agents"][0])
        assert body["conservation"]["ok"]

        r = await w["client"].get("/api/node/power/stream?count=2", headers=auth(w["operator"]), timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
        assert len(events) == 2 and events[1]["ticks"] > events[0]["ticks"]

        await asyncio.to_thread(w["power"].history.flush)
        r = await w["client"].get("/api/node/power/history?minutes=5", headers=auth(w["operator"]))
        assert r.status_code == 200 and len(r.json()["node"]) >= 1


async def test_a_user_sees_only_their_own_agents_power(tmp_path: Path) -> None:
    async with web(tmp_path) as w:
        alice_id, alice = w["alice"]
        bob_id, _ = w["bob"]
        await (await w["node"].deliver(alice_id, Ping())).text()
        await (await w["node"].deliver(bob_id, Ping())).text()
        await next_reports(w["power"], 1)
        client = w["client"]
        r = await client.get("/api/me/power", headers=auth(alice))
        assert r.status_code == 200
        me = r.json()
        assert me["agent_id"] == alice_id and me["status"] == "active"
        assert {"watts", "watts_1h", "joules", "wh_today", "idle_share_watts", "quota"} <= set(me)
        r = await client.get(f"/api/me/power?agent_id={bob_id}", headers=auth(alice))
        assert r.json()["agent_id"] == alice_id  # the agent comes from the token, not the request
        for path in ("/metrics", "/api/node/power", "/api/node/power/stream", "/api/node/power/history"):
            assert (await client.get(path, headers=auth(alice))).status_code == 403, path
            assert (await client.get(path)).status_code == 401, path
        assert (await client.get("/api/me/power", headers=auth(w["operator"]))).status_code == 403
        assert (await client.get("/api/me/power")).status_code == 401


@pytest.mark.model
async def test_real_llm_inference_is_charged_to_the_agent_that_asked(tmp_path: Path, model_path: Path) -> None:
    power = PowerService(
        "zos-edge-60w", tmp_path, power_config(governor=GovernorConfig(unload_after_s=0.3), history=False)
    )
    llm = LLMService(model_path, n_ctx=512, max_tokens=8, temperature=0.0, metering=power)
    power.attach(None, llm)
    await llm.start()
    try:
        asker, bystander = UserKey.generate().agent_id, UserKey.generate().agent_id
        await power.run_turn(bystander, asyncio.sleep(0))
        async for _ in llm.stream(asker, [{"role": "user", "content": "Say hello."}]):
            pass
        report = await power.tick()
        assert report is not None
        assert report.agents_cpu_s[asker] > 10 * report.agents_cpu_s.get(bystander, 0.0)
        assert report.llm_cpu_s > 0 and power.ledger.get(asker).tokens_total > 0
        assert power.ledger.get(bystander).tokens_total == 0
        assert power.agent_report(asker)["llm_tokens"] > 0

        await asyncio.sleep(0.35)
        await power.tick()  # no request for longer than unload_after: the governor unloads the model
        assert not llm.loaded and power.governor.status.llm_unloads == 1
        async for _ in llm.stream(asker, [{"role": "user", "content": "Again."}]):
            pass
        assert llm.loaded  # reloaded on demand, and the reload time is reported
        assert power.node_report()["llm"]["last_load_seconds"] > 0
    finally:
        await llm.aclose()
        await power.aclose()


async def test_quiet_node_ticks_rarely_and_wakes_at_once_for_work(tmp_path: Path) -> None:
    config = PowerConfig(tick_s=0.05, quiet_tick_s=0.6, quiet_after_s=0.2, cgroup_backstop=False)
    async with power_node(tmp_path, config=config) as (_, _, node, power, _):
        ticks: list[float] = []
        real_tick = power.tick

        async def counted():
            ticks.append(asyncio.get_running_loop().time())
            return await real_tick()

        power.tick = counted  # type: ignore[method-assign]
        await asyncio.sleep(1.0)
        assert len(ticks) <= 3, "a node with every agent asleep must not tick at 1 Hz"
        quiet_until = len(ticks)
        agent = UserKey.generate().agent_id
        await (await node.deliver(agent, Ping())).text()  # work arrives: the tick comes back at once
        await asyncio.sleep(0.5)
        assert len(ticks) - quiet_until >= 5
        await node.hibernate_idle(0.0)
        await asyncio.sleep(0.4)
        settled = len(ticks)
        await asyncio.sleep(0.5)
        assert len(ticks) - settled <= 1

"""The runtime as virtual actors: activation, serial turns, hibernation, durable timers, failures."""

from __future__ import annotations

import asyncio

import pytest

from agents import assistant
from hero.errors import AgentError, StaleEpoch
from hero.identity import NodeKeys, UserKey
from hero.runtime.agent import Agent
from hero.runtime.directory import Directory
from hero.runtime.events import ChatMessage, Event, Ping, Reply, TimerFired
from hero.runtime.node import Node, state_key
from hero.server import open_store
from tests.conftest import make_config


class Recorder(Agent):
    """Test agent: records turn overlap and raises on 'boom'."""

    running = 0
    overlap = 0

    async def handle(self, event: Event, reply: Reply) -> None:
        Recorder.running += 1
        Recorder.overlap = max(Recorder.overlap, Recorder.running)
        try:
            if isinstance(event, ChatMessage):
                if event.text == "boom":
                    raise ValueError("agent bug")
                self.ctx.add_message("user", event.text)
                await self.ctx.persist()
                reply.accept()
                await asyncio.sleep(0.01)
                reply.write(f"echo {event.text}")
                self.ctx.add_message("assistant", f"echo {event.text}")
                await self.ctx.persist()
            elif isinstance(event, TimerFired):
                self.ctx.add_message("assistant", f"timer {event.name}", kind="reminder")
                await self.ctx.persist()
            elif isinstance(event, Ping) and self.ctx.state.get("set_timer"):
                await self.ctx.set_timer(self.ctx.state.pop("set_timer"), "t1")
        finally:
            Recorder.running -= 1


@pytest.fixture
async def store(tmp_path):
    config = make_config(tmp_path)
    s = await open_store(config, NodeKeys.load_or_create(config.data_dir))
    yield s
    await s.aclose()


def new_agent() -> str:
    return UserKey.generate().agent_id


async def test_concurrent_first_messages_share_one_activation(store, llm):
    node = Node(store, llm, Recorder, idle_after=60)
    Recorder.overlap = 0
    await node.start()
    agent = new_agent()
    replies = await asyncio.gather(*(node.deliver(agent, ChatMessage(f"m{i}")) for i in range(20)))
    texts = await asyncio.gather(*(r.text() for r in replies))
    assert node.stats.activations == 1
    assert sorted(texts) == sorted(f"echo m{i}" for i in range(20))
    assert Recorder.overlap == 1  # turns of one agent never overlap
    history = await node.history(agent)
    assert [m["content"] for m in history if m["role"] == "user"] == [f"m{i}" for i in range(20)]
    await node.aclose()


async def test_many_agents_run_concurrently_on_one_loop(store, llm):
    node = Node(store, llm, Recorder, idle_after=60)
    agents = [new_agent() for _ in range(50)]
    Recorder.overlap = 0
    replies = await asyncio.gather(*(node.deliver(a, ChatMessage("hi")) for a in agents))
    assert sorted(await asyncio.gather(*(r.text() for r in replies))) == ["echo hi"] * 50
    assert Recorder.overlap > 10  # turns of different agents interleave on the one loop
    assert node.stats.activations == 50
    await node.aclose()


async def test_hibernate_and_wake_with_history_intact(store, llm):
    node = Node(store, llm, Recorder, idle_after=0.2)
    agent = new_agent()
    await (await node.deliver(agent, ChatMessage("first"))).text()
    assert node.is_active(agent)
    await asyncio.sleep(0.5)
    assert not node.is_active(agent), "agent should hibernate after idle_after"
    assert node.stats.hibernations == 1
    assert [a.state for a in await node.agents()] == ["hibernated"]
    assert node.agent_states() == {agent: "hibernated"} and node.agent_state(new_agent()) is None
    assert node._idle_handle is None and len(node.timers) == 0 and len(node._tasks) == 0  # nothing left to wake
    text = await (await node.deliver(agent, ChatMessage("second"))).text()
    assert text == "echo second"
    assert node.stats.activations == 2
    assert [m["content"] for m in await node.history(agent)] == ["first", "echo first", "second", "echo second"]
    await node.aclose()


async def test_shutdown_hibernates_every_agent_and_state_survives(store, llm):
    node = Node(store, llm, assistant.create, idle_after=60)
    agents = [new_agent() for _ in range(5)]
    for a in agents:
        await (await node.deliver(a, ChatMessage("remember that I like tea"))).text()
    await node.aclose()
    assert node.stats.hibernations == 5
    again = Node(store, llm, assistant.create, idle_after=60)
    await again.start()
    assert {i.agent_id for i in await again.agents()} == set(agents)
    for a in agents:
        history = await again.history(a)
        assert history[-1]["content"] == "I will remember that I like tea."
    await again.aclose()


async def test_durable_timer_wakes_hibernated_agent_and_survives_restart(store, llm):
    node = Node(store, llm, Recorder, idle_after=0.1)
    agent = new_agent()
    node_a = node
    await (await node_a.deliver(agent, ChatMessage("hello"))).text()
    act = node_a._active[agent]
    act.ctx.state["set_timer"] = 0.8
    await (await node_a.deliver(agent, Ping())).text()
    await node_a.aclose()  # the node stops before the timer is due
    node_b = Node(store, llm, Recorder, idle_after=0.1)
    await node_b.start()
    assert len(node_b.timers) == 1
    assert not node_b.is_active(agent)
    await asyncio.sleep(1.2)
    assert node_b.stats.timers_fired == 1
    history = await node_b.history(agent)
    assert history[-1]["content"] == "timer t1"
    assert len(node_b.timers) == 0
    assert await store.get(f"agent/{agent}/timers") == b"[]"  # fired timers are removed durably
    await node_b.aclose()


async def test_failing_turn_reports_error_and_agent_keeps_running(store, llm, caplog):
    node = Node(store, llm, Recorder, idle_after=60)
    agent = new_agent()
    reply = await node.deliver(agent, ChatMessage("boom"))
    with pytest.raises(AgentError):
        await reply.wait_accepted()
    assert "agent bug" in caplog.text  # the failure is logged
    assert await (await node.deliver(agent, ChatMessage("still there?"))).text() == "echo still there?"
    history = await node.history(agent)
    assert any(m["kind"] == "error" for m in history)
    await node.aclose()


async def test_stale_epoch_write_is_refused(store):
    agent = new_agent()
    await store.put(state_key(agent), b"{}", epoch=2)
    with pytest.raises(StaleEpoch):
        await store.put(state_key(agent), b'{"x": 1}', epoch=1)
    assert await store.get(state_key(agent)) == b"{}"
    await store.put(state_key(agent), b'{"x": 2}', epoch=3)
    assert [v.epoch for v in await store.versions(state_key(agent))] == [2, 3]


def test_directory_epochs_increase_and_leases_are_exclusive():
    from hero.errors import LeaseHeld

    directory = Directory()
    lease = directory.acquire("a" * 64, "node1", floor=5)
    assert lease.epoch == 6
    with pytest.raises(LeaseHeld):
        directory.acquire("a" * 64, "node2")
    directory.release(lease)
    assert directory.acquire("a" * 64, "node2").epoch == 7


def test_expired_lease_can_be_taken_over():
    directory = Directory(ttl=10)
    first = directory.acquire("b" * 64, "node1", now=100.0)
    second = directory.acquire("b" * 64, "node2", now=111.0)
    assert second.epoch == first.epoch + 1 and second.owner == "node2"


async def test_reply_stream_of_real_llm_turn(store, llm):
    node = Node(store, llm, assistant.create, idle_after=60)
    agent = new_agent()
    text = await (await node.deliver(agent, ChatMessage("Say hello"))).text()
    assert text.strip()
    history = await node.history(agent)
    assert history[0]["content"] == "Say hello" and history[1]["content"] == text.strip()
    await node.aclose()

"""The runtime as virtual actors: activation, serial turns, hibernation, durable timers, failures."""

from __future__ import annotations

import asyncio

import pytest

from agents import assistant
from hero.chat.agent import ChatAgent
from hero.chat.histories import Histories
from hero.errors import AgentError, StaleEpoch
from hero.runtime.directory import Directory
from hero.runtime.events import ChatMessage, Event, Ping, Reply
from hero.runtime.keys import state_key, timers_key
from tests.conftest import history, make_node, new_agent
from tests.doubles import Echo


class Recorder(Echo):
    """Test agent: echoes chat, records turn overlap, raises on 'boom', sets a timer on 'timer <seconds> <name>'."""

    sets_timers = True
    think_s = 0.01
    running = 0
    overlap = 0

    async def handle(self, event: Event, reply: Reply) -> None:
        Recorder.running += 1
        Recorder.overlap = max(Recorder.overlap, Recorder.running)
        try:
            if isinstance(event, ChatMessage) and event.text == "boom":
                raise ValueError("agent bug")
            await super().handle(event, reply)
        finally:
            Recorder.running -= 1


async def test_concurrent_first_messages_share_one_activation(store):
    node = make_node(store, Recorder, idle_after_s=60)
    Recorder.overlap = 0
    await node.start()
    agent = new_agent()
    replies = await asyncio.gather(*(node.deliver(agent, ChatMessage(f"m{i}")) for i in range(20)))
    texts = await asyncio.gather(*(r.text() for r in replies))
    assert node.stats.activations == 1
    assert sorted(texts) == sorted(f"echo m{i}" for i in range(20))
    assert Recorder.overlap == 1  # turns of one agent never overlap
    entries = await history(node, agent)
    assert [e.content for e in entries if e.role == "user"] == [f"m{i}" for i in range(20)]
    await node.aclose()


async def test_many_agents_run_concurrently_on_one_loop(store):
    node = make_node(store, Recorder, idle_after_s=60)
    agents = [new_agent() for _ in range(50)]
    Recorder.overlap = 0
    replies = await asyncio.gather(*(node.deliver(a, ChatMessage("hi")) for a in agents))
    assert sorted(await asyncio.gather(*(r.text() for r in replies))) == ["echo hi"] * 50
    assert Recorder.overlap > 10  # turns of different agents interleave on the one loop
    assert node.stats.activations == 50
    await node.aclose()


async def test_hibernate_and_activate_again_with_history_intact(store):
    node = make_node(store, Recorder, idle_after_s=0.2)
    agent = new_agent()
    await (await node.deliver(agent, ChatMessage("first"))).text()
    assert node.is_active(agent) and not node.quiescent
    await asyncio.sleep(0.5)
    assert not node.is_active(agent), "agent should hibernate after idle_after_s"
    assert node.stats.hibernations == 1
    assert [a.status for a in await node.agents()] == ["hibernated"]
    assert node.agent_statuses() == {agent: "hibernated"} and node.agent_status(new_agent()) is None
    assert node.quiescent  # no loop timer, no task: nothing left that would run
    text = await (await node.deliver(agent, ChatMessage("second"))).text()
    assert text == "echo second"
    assert node.stats.activations == 2
    assert [e.content for e in await history(node, agent)] == ["first", "echo first", "second", "echo second"]
    await node.aclose()


async def test_shutdown_hibernates_every_agent_and_state_survives(store):
    node = make_node(store, assistant.create, idle_after_s=60)
    agents = [new_agent() for _ in range(5)]
    for a in agents:
        await (await node.deliver(a, ChatMessage("remember that I like tea"))).text()
    await node.aclose()
    assert node.stats.hibernations == 5
    again = make_node(store, assistant.create, idle_after_s=60)
    await again.start()
    assert {i.agent_id for i in await again.agents()} == set(agents)
    for a in agents:
        entries = await history(again, a)
        assert entries[-1].content == "I will remember that I like tea."
    await again.aclose()


async def test_durable_timer_activates_a_hibernated_agent_and_survives_restart(store):
    node_a = make_node(store, Recorder, idle_after_s=0.1)
    agent = new_agent()
    await (await node_a.deliver(agent, ChatMessage("hello"))).text()
    await (await node_a.deliver(agent, ChatMessage("timer 0.8 t1"))).text()
    await node_a.aclose()  # the node stops before the timer is due
    node_b = make_node(store, Recorder, idle_after_s=0.1)
    await node_b.start()
    assert len(node_b.timers) == 1
    assert not node_b.is_active(agent)
    await asyncio.sleep(1.2)
    assert node_b.stats.timers_fired == 1
    entries = await history(node_b, agent)
    assert entries[-1].content == "timer t1"
    assert len(node_b.timers) == 0
    assert await store.get(timers_key(agent)) == b"[]"  # fired timers are removed durably
    await node_b.aclose()


async def test_failing_turn_reports_error_and_agent_keeps_running(store, caplog):
    node = make_node(store, Recorder, idle_after_s=60)
    agent = new_agent()
    reply = await node.deliver(agent, ChatMessage("boom"))
    with pytest.raises(AgentError):
        await reply.wait_accepted()
    assert "agent bug" in caplog.text  # the failure is logged
    assert await (await node.deliver(agent, ChatMessage("still there?"))).text() == "echo still there?"
    assert any(e.kind == "error" for e in await history(node, agent))
    await node.aclose()


async def test_stale_epoch_write_is_refused(store):
    agent = new_agent()
    await store.put(state_key(agent), b"{}", epoch=2)
    with pytest.raises(StaleEpoch):
        await store.put(state_key(agent), b'{"x": 1}', epoch=1)
    assert await store.get(state_key(agent)) == b"{}"
    await store.put(state_key(agent), b'{"x": 2}', epoch=3)
    assert [v.epoch for v in await store.versions(state_key(agent))] == [2, 3]


async def test_directory_epochs_increase_and_leases_are_exclusive():
    from hero.errors import LeaseHeld

    directory = Directory()
    grant = await directory.acquire("a" * 64, "node1", floor=5)
    assert grant.epoch == 6
    with pytest.raises(LeaseHeld):
        await directory.acquire("a" * 64, "node2")
    await directory.release("a" * 64, "node1", grant.epoch)
    assert (await directory.acquire("a" * 64, "node2")).epoch == 7


async def test_expired_lease_can_be_taken_over():
    directory = Directory(ttl_s=0.05)
    first = await directory.acquire("b" * 64, "node1")
    await asyncio.sleep(0.1)  # node1 never renewed it
    second = await directory.acquire("b" * 64, "node2")
    assert second.epoch == first.epoch + 1 and second.lapsed


async def test_reply_stream_of_real_llm_turn(store, llm):
    node = make_node(store, assistant.create, llm=llm, idle_after_s=60)
    agent = new_agent()
    text = await (await node.deliver(agent, ChatMessage("Say hello"))).text()
    assert text.strip()
    entries = await history(node, agent)
    assert entries[0].content == "Say hello" and entries[1].content == text.strip()
    await node.aclose()


async def test_hibernate_on_demand_writes_the_agent_and_refuses_one_in_a_turn(store):
    gate = asyncio.Event()

    class Waiter(ChatAgent):
        async def handle(self, event: Event, reply: Reply) -> None:
            self.history.add("user", "hi")
            reply.accept()
            await gate.wait()

    node = make_node(store, Waiter, idle_after_s=60)
    agent = new_agent()
    reply = await node.deliver(agent, Ping())
    await reply.wait_accepted()
    assert not await node.hibernate(agent)  # in a turn: it stays
    assert not await node.hibernate(new_agent())  # not in memory
    gate.set()
    await node.settle()
    assert await node.hibernate(agent) and not node.is_active(agent)
    assert [e.content for e in await history(node, agent)] == ["hi"]  # written as it left memory
    await node.aclose()


async def test_listeners_get_only_the_kind_of_item_they_subscribed_to(store):
    class Announcer(ChatAgent):
        async def handle(self, event: Event, reply: Reply) -> None:
            self.ctx.publish("not a history entry")
            self.history.add("assistant", "hello")
            reply.accept()

    node = make_node(store, Announcer, idle_after_s=60)
    agent = new_agent()
    with Histories(node).subscribe(agent) as entries, node.subscribe(agent, str) as texts:
        await (await node.deliver(agent, Ping())).text()
        assert (await entries.get()).content == "hello"
        assert await texts.get() == "not a history entry"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(entries.get(), 0.05)  # nothing else reached the history's listener
    await node.aclose()

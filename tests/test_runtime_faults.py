"""A fault costs one agent, never the node (issue 9, items 6-8 and the repair half of 11).

Real QSS on disk throughout; faults are injected the way they happen: fragments
rotted on the backends, backends gone while the node runs, a history written
with invalid Unicode by an older node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import ClassVar

import pytest

from agents import assistant
from hero.backoff import Backoff
from hero.chat.agent import ChatAgent
from hero.errors import AgentDamaged
from hero.runtime.backoff import Retries
from hero.runtime.events import ChatMessage, Event, Ping, Reply, TimerFired
from hero.runtime.keys import state_key, timers_key
from hero.runtime.node import Node
from hero.store.qss import QSS
from tests.conftest import history, make_node, new_agent
from tests.store.helpers import stored_fragment

FAST = Retries(
    hibernate=Backoff(first_s=0.05, max_s=0.2),
    timer=Backoff(first_s=0.05, max_s=0.4, attempts=4),
    damaged=Backoff(first_s=0.05, max_s=0.05),
)


class Worker(ChatAgent):
    """Echoes chat, keeps a count it persists only on hibernation, sets timers on request, can be poisoned."""

    attempts: ClassVar[list[float]] = []

    async def handle(self, event: Event, reply: Reply) -> None:
        state = self.ctx.state
        if isinstance(event, ChatMessage):
            self.history.add("user", event.text)
            await self.ctx.persist()
            reply.accept()
            if event.text.startswith("timer "):
                await self.ctx.set_timer(float(event.text.split()[1]), event.text.split()[2])
            reply.write(f"echo {event.text}")
            state["count"] = state.get("count", 0) + 1  # accepted, written at the next persist or hibernation
        elif isinstance(event, TimerFired):
            if event.name == "poison":
                Worker.attempts.append(time.monotonic())
                raise ValueError("this timer always fails")
            self.history.add("assistant", f"timer {event.name}", kind="reminder")
            await self.ctx.persist()
        elif isinstance(event, Ping):
            reply.accept()


async def rot(store: QSS, key: str, count: int) -> list[tuple[object, bytes]]:
    """Zero `count` fragments of the head version of `key` on their backends; returns them with their bytes."""
    oid = store.ring.object_id(key)
    index = await store.index(oid)
    resolved = await store.resolve(oid, index, index.versions()[-1])
    rotted = []
    for i, digest in enumerate(resolved.manifest.segments[0].hashes[:count]):
        fragment = stored_fragment(store.pool.by_name[resolved.places[0][i]].root, digest)
        original = fragment.read_bytes()
        fragment.write_bytes(b"\0" * len(original))
        rotted.append((fragment, original))
    return rotted


async def chat(node: Node, agent: str, text: str) -> str:
    return await asyncio.wait_for((await node.deliver(agent, ChatMessage(text))).text(), 10)


async def eventually(check, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# item 6: one agent's unreadable objects


async def test_unreadable_timers_damage_one_agent_and_the_node_starts_and_serves_the_others(store, caplog):
    first = make_node(store, Worker, idle_after_s=60, retries=FAST)
    broken, healthy = new_agent(), new_agent()
    await chat(first, broken, "timer 3600 stretch")
    await chat(first, healthy, "hello")
    await first.aclose()
    await rot(store, timers_key(broken), 5)  # 5 of 20: one more than the code can lose

    node = make_node(store, Worker, idle_after_s=60, retries=FAST)
    await node.start()  # starts: the unreadable object damages its agent only
    assert await chat(node, healthy, "still here?") == "echo still here?"
    with pytest.raises(AgentDamaged) as refused:
        await node.deliver(broken, ChatMessage("hello?"))
    assert refused.value.status == 503 and "reminders could not be read" in refused.value.message
    assert broken not in refused.value.message and "agent/" not in refused.value.message
    assert "local-" not in refused.value.message  # no backend names for the user
    assert node.agent_status(broken) == "damaged" and node.agent_statuses()[healthy] == "active"
    info = {i.agent_id: i for i in await node.agents()}
    assert info[broken].status == "damaged" and info[healthy].status == "active"
    assert info[broken].reason is not None and "timers unreadable" in info[broken].reason
    assert "only 15 of the 16" in info[broken].reason  # the operator gets the store's own words
    assert any(r.levelno == logging.ERROR and broken in r.getMessage() for r in caplog.records)
    await node.aclose()


async def test_an_agent_whose_state_cannot_be_read_is_damaged_and_heals_when_the_store_does(store):
    node = make_node(store, Worker, idle_after_s=60, retries=FAST)
    broken, healthy = new_agent(), new_agent()
    await chat(node, broken, "remember me")
    await chat(node, healthy, "hello")
    assert await node.hibernate_idle(0) == 2
    rotted = await rot(store, state_key(broken), 5)

    with pytest.raises(AgentDamaged, match="saved state could not be read"):
        await node.deliver(broken, ChatMessage("hello?"))
    with pytest.raises(AgentDamaged):
        await history(node, broken)  # reading without activation says the same
    assert await chat(node, healthy, "and you?") == "echo and you?"
    [info] = [i for i in await node.agents() if i.agent_id == broken]
    assert info.status == "damaged" and "state unreadable" in (info.reason or "")

    for fragment, original in rotted:  # the operator restores the backends
        fragment.write_bytes(original)  # type: ignore[attr-defined]
    await asyncio.sleep(0.1)  # the damaged agent's back-off passes
    assert await chat(node, broken, "back?") == "echo back?"
    assert node.agent_status(broken) == "active" and len(node.damaged) == 0
    assert [e.content for e in await history(node, broken)] == ["remember me", "back?"]
    await node.aclose()


# item 7: a failed hibernation keeps the agent


async def test_a_failed_hibernation_keeps_the_agent_in_memory_and_retries_until_its_state_is_written(
    store, tmp_path: Path
):
    node = make_node(store, Worker, idle_after_s=0.1, retries=FAST)
    agent = new_agent()
    await chat(node, agent, "hello")  # accepted; its count is written at hibernation
    backends = tmp_path / "data" / "backends"
    for n in range(4):  # 16 of 20 left: below the write quorum of 17
        (backends / f"{n:02d}").rename(backends / f"gone-{n:02d}")
    try:
        await asyncio.sleep(0.6)  # several idle periods
        assert node.is_active(agent)  # never dropped while its state is not written
        assert node.stats.hibernate_failures >= 2  # the sweep keeps trying, with no new event
    finally:
        for n in range(4):
            (backends / f"gone-{n:02d}").rename(backends / f"{n:02d}")
    await eventually(lambda: not node.is_active(agent))  # the next try succeeds
    state = json.loads(await store.get(state_key(agent)))
    assert state["count"] == 1 and [m["content"] for m in state["history"]["open"]] == ["hello"]
    await node.aclose()


async def test_shutdown_retries_a_failed_final_write(store, tmp_path: Path):
    node = make_node(store, Worker, idle_after_s=60, retries=FAST, shutdown_grace_s=5)
    agent = new_agent()
    await chat(node, agent, "hello")
    backends = tmp_path / "data" / "backends"
    for n in range(4):
        (backends / f"{n:02d}").rename(backends / f"gone-{n:02d}")

    async def restore_soon() -> None:
        await asyncio.sleep(0.3)
        for n in range(4):
            (backends / f"gone-{n:02d}").rename(backends / f"{n:02d}")

    restore = asyncio.create_task(restore_soon())
    await node.aclose()
    await restore
    assert json.loads(await store.get(state_key(agent)))["count"] == 1


# item 8: poison timers


async def test_a_poison_timer_backs_off_then_is_set_aside_with_one_error_entry(store, caplog):
    node = make_node(store, Worker, idle_after_s=60, retries=FAST)
    agent = new_agent()
    Worker.attempts = []
    await chat(node, agent, "timer 0.05 poison")
    versions_before = len(await store.versions(state_key(agent)))
    await eventually(lambda: len(Worker.attempts) >= 4)  # backing off from 50 ms, not every 30 s
    await asyncio.sleep(0.5)
    await node.settle()

    assert len(Worker.attempts) == 4 and node.stats.timers_set_aside == 1  # FAST.timer.attempts, then set aside
    gaps = [b - a for a, b in zip(Worker.attempts, Worker.attempts[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[-1] > 2 * gaps[0]  # backing off, not a fixed period
    errors = [e for e in await history(node, agent) if e.kind == "error"]
    assert len(errors) == 1 and "poison" in errors[0].content and "set aside" in errors[0].content
    assert len(await store.versions(state_key(agent))) == versions_before + 1  # one write: the error entry
    assert len(node.timers) == 0 and json.loads(await store.get(timers_key(agent))) == []
    aside = (await node.read_state(agent))["timers_set_aside"]
    assert [(t["name"], t["error"]) for t in aside] == [("poison", "ValueError")]
    assert any(r.levelno == logging.ERROR and "set aside" in r.getMessage() for r in caplog.records)
    assert await chat(node, agent, "fine?") == "echo fine?"  # the agent itself is fine
    await node.aclose()


async def test_a_timer_whose_turn_fails_once_is_retried_and_then_fires(store):
    class Flaky(Worker):
        failed = False

        async def handle(self, event: Event, reply: Reply) -> None:
            if isinstance(event, TimerFired) and not Flaky.failed:
                Flaky.failed = True
                raise RuntimeError("a passing fault")
            await super().handle(event, reply)

    node = make_node(store, Flaky, idle_after_s=60, retries=FAST)
    agent = new_agent()
    await chat(node, agent, "timer 0.05 stretch")
    await eventually(lambda: node.stats.timers_fired == 1)
    entries = await history(node, agent)
    assert entries[-1].content == "timer stretch"
    assert not [e for e in entries if e.kind == "error"]  # a retried try leaves no entry
    await node.aclose()


# item 11 (repair half): invalid Unicode already in a stored history


def poisoned_state() -> bytes:
    history = [
        {"seq": 1, "role": "user", "content": "hi \ud800", "ts": 1.0, "kind": "chat"},
        {"seq": 2, "role": "assistant", "content": "Hello! \U0001f600", "ts": 2.0, "kind": "chat"},
    ]
    return json.dumps({"history": history, "memory": {"facts": ["likes \udc00 tea"]}, "skills": {}}).encode()


async def test_a_lone_surrogate_in_a_stored_history_is_repaired_on_read_and_on_activation(store, llm):
    agent = new_agent()
    await store.put(state_key(agent), poisoned_state(), epoch=1)  # as an older node stored it
    node = make_node(store, assistant.create, llm=llm, idle_after_s=60)
    await node.start()

    entries = await history(node, agent)  # read without activation
    assert [e.content for e in entries] == ["hi \ufffd", "Hello! \U0001f600"]
    json.dumps([e.to_json() for e in entries], ensure_ascii=False).encode()  # as the JSON response: no error

    reply = await node.deliver(agent, ChatMessage("Say hello"))  # the LLM sees the repaired history
    assert (await asyncio.wait_for(reply.text(), 60)).strip()
    stored = json.loads(await store.get(state_key(agent)))
    assert stored["history"]["open"][0]["content"] == "hi \ufffd"
    assert [n["text"] for n in stored["skills"]["notes"]["notes"]] == ["likes \ufffd tea"]  # facts became notes
    json.dumps(stored, ensure_ascii=False).encode()
    await node.aclose()


async def test_text_added_to_a_history_is_valid_unicode(store):
    node = make_node(store, Worker, idle_after_s=60)
    agent = new_agent()
    await chat(node, agent, "broken \udfff text")
    assert (await history(node, agent))[0].content == "broken \ufffd text"
    await node.aclose()


async def test_a_damaged_agent_is_refused_without_reading_the_store_again_until_its_back_off(store):
    node = make_node(store, Worker, idle_after_s=60, retries=Retries(damaged=Backoff(first_s=60, max_s=60)))
    agent = new_agent()
    await chat(node, agent, "hello")
    await node.hibernate_idle(0)
    await rot(store, state_key(agent), 5)
    for _ in range(3):
        with pytest.raises(AgentDamaged):
            await node.deliver(agent, Ping())
    assert node.damaged.get(agent).failures == 1  # type: ignore[union-attr]  # one read, then refusals
    await node.aclose()

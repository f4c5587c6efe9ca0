"""Turns run as their agent's task, started eagerly: fast like a plain call, isolated like a task.

A turn's first step runs before `post` returns, but as the agent's own task: `asyncio.timeout()`,
`asyncio.current_task()` and context variables in that step belong to the turn, never to the HTTP
handler or timer that delivered the event (issue 9, item 9).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, ClassVar

import pytest

from hero.chat.agent import ChatAgent
from hero.errors import Unavailable
from hero.runtime.agent import Agent
from hero.runtime.eager import AgentTasks
from hero.runtime.events import ChatMessage, Event, Ping, Reply, TimerFired
from tests.conftest import history, make_node, new_agent

MARK: contextvars.ContextVar[str] = contextvars.ContextVar("mark", default="unset")


class Timeboxed(ChatAgent):
    """Opens a timeout before its first await, as an agent guarding a slow tool call would; 'arm <seconds>'
    then sets a timer."""

    async def handle(self, event: Event, reply: Reply) -> None:
        reply.accept()
        try:
            async with asyncio.timeout(0.05):
                await asyncio.Event().wait()
        except TimeoutError:
            reply.write("timed out")
            if isinstance(event, TimerFired):
                self.history.add("assistant", "timer timed out", kind="reminder")
                await self.ctx.persist()
            elif isinstance(event, ChatMessage) and event.text.startswith("arm "):
                await self.ctx.set_timer(float(event.text.split()[1]), "t")


class Introspect(Agent):
    """Reports (in `seen`, by agent) which tasks ran its steps and the context variable it set in its first step."""

    seen: ClassVar[dict[str, tuple[asyncio.Task[Any] | None, asyncio.Task[Any] | None, str]]] = {}

    async def handle(self, event: Event, reply: Reply) -> None:
        first = asyncio.current_task()
        MARK.set("turn")
        if isinstance(event, ChatMessage) and event.text == "wait":
            await asyncio.sleep(0.01)
        Introspect.seen[self.ctx.agent_id] = (first, asyncio.current_task(), MARK.get())
        reply.accept()


async def test_a_timeout_opened_before_the_first_await_fires_in_the_turn_not_in_the_caller(store):
    node = make_node(store, Timeboxed, idle_after_s=60)
    reply = await node.deliver(new_agent(), ChatMessage("x"))
    await asyncio.sleep(0.2)  # the HTTP handler goes on with its own work: the turn's timeout must not cancel it
    assert await asyncio.wait_for(reply.text(), 2) == "timed out"
    await node.aclose()


async def test_a_timer_task_survives_a_turn_that_times_out(store):
    node = make_node(store, Timeboxed, idle_after_s=60)
    agent = new_agent()
    await asyncio.wait_for((await node.deliver(agent, ChatMessage("arm 0.05"))).text(), 2)
    for _ in range(100):
        if node.stats.timers_fired:
            break
        await asyncio.sleep(0.02)
    assert node.stats.timers_fired == 1  # the timer task that delivered the event finished normally
    assert (await history(node, agent))[-1].content == "timer timed out"
    await node.aclose()


async def test_the_turn_runs_as_one_task_of_its_own_and_keeps_its_context(store):
    node = make_node(store, Introspect, idle_after_s=60)
    agent = new_agent()
    caller = asyncio.current_task()
    MARK.set("caller")
    for text in ("quick", "wait"):
        reply = await node.deliver(agent, ChatMessage(text))
        await reply.wait_accepted()
        first, second, mark_after_wait = Introspect.seen[agent]
        assert first is not caller and first is second  # one task for every step, never the caller's
        assert mark_after_wait == "turn"
        assert MARK.get() == "caller"  # the turn's context variables stay in the turn
    await node.aclose()


async def test_a_turn_that_never_waits_finishes_before_post_returns_without_a_task_per_event(store):
    node = make_node(store, Introspect, idle_after_s=60)
    agent = new_agent()
    await node.post(agent, Ping())
    await node.settle()
    tasks_before = len(asyncio.all_tasks())
    replies = [Reply() for _ in range(50)]
    for reply in replies:
        await node.post(agent, ChatMessage("quick"), reply)
        assert reply.accepted  # the whole turn ran inside post
    assert len(asyncio.all_tasks()) == tasks_before
    await node.aclose()


async def test_shutdown_cancels_a_waiting_turn_and_fails_its_queued_events(store):
    cleaned: list[str] = []

    class Forever(Agent):
        async def handle(self, event: Event, reply: Reply) -> None:
            reply.accept()
            try:
                await asyncio.Event().wait()
            finally:
                cleaned.append("turn")

    node = make_node(store, Forever, idle_after_s=60, shutdown_grace_s=0.1)
    agent = new_agent()
    first = await node.deliver(agent, ChatMessage("a"))
    queued = await node.deliver(agent, ChatMessage("b"))
    await node.aclose()
    assert cleaned == ["turn"]
    await first.wait_accepted()  # accepted before shutdown; its stream ends with the reason
    with pytest.raises(Unavailable, match="shutting down"):
        await first.text()
    with pytest.raises(Unavailable, match="shutting down"):
        await queued.wait_accepted()


# the agent task itself


async def test_values_and_errors_reach_a_turn_driven_by_its_agent_task():
    group = AgentTasks()
    agent_task = group.new("t")
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    bad: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen: list[object] = []

    async def turn() -> None:
        seen.append(await fut)
        await asyncio.sleep(0)
        try:
            await bad
        except ValueError as exc:
            seen.append(str(exc))

    assert agent_task.start(turn()) is False and group.running == 1
    fut.set_result(7)
    await asyncio.sleep(0.01)
    bad.set_exception(ValueError("boom"))
    await group.join()
    assert seen == [7, "boom"] and group.running == 0
    await group.aclose()


async def test_a_timeout_due_before_the_agent_task_takes_over_still_reaches_the_turn():
    group = AgentTasks()
    outcome: list[str] = []

    async def turn() -> None:
        try:
            async with asyncio.timeout(0):  # its expiry is queued before the agent task wakes
                await asyncio.Event().wait()
        except TimeoutError:
            outcome.append("timed out")

    group.new("t").start(turn())
    await asyncio.wait_for(group.join(), 2)
    assert outcome == ["timed out"] and asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await group.aclose()


async def test_an_error_in_the_first_step_reaches_the_caller():
    group = AgentTasks()

    async def broken() -> None:
        raise KeyError("first step")

    with pytest.raises(KeyError):
        group.new("b").start(broken())
    assert group.running == 0 and asyncio.current_task() is not None  # the caller is current again
    await group.aclose()


async def test_a_parked_agent_task_cancelled_by_mistake_is_replaced_at_the_next_turn():
    group = AgentTasks()
    agent_task = group.new("t")
    parked = next(t for t in asyncio.all_tasks() if t.get_name() == "t")
    parked.cancel()  # a stray cancel, as code that cancels every task of the loop would send
    await asyncio.sleep(0)
    ran: list[bool] = []

    async def turn() -> None:
        await asyncio.sleep(0)
        ran.append(True)

    agent_task.start(turn())
    await asyncio.wait_for(group.join(), 2)
    assert ran == [True]
    agent_task.close()
    replacement = next(t for t in asyncio.all_tasks() if t.get_name() == "t")
    await asyncio.wait_for(replacement, 1)  # closed while parked: the task ends
    await asyncio.sleep(0)
    assert len(group.nursery) == 0

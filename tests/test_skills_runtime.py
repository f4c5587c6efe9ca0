"""Skills through the real runtime and store (no server, a scripted model): the shipped skills, permissions
enforced, a raising and a hanging skill, quotas, slash commands and /help, specs verified and recorded."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from hero.errors import HeroError
from hero.skills.registry import shipped_dir
from hero.skills.testing import local_agent
from tests.skillkit import write_skill

SHIPPED = [shipped_dir()]  # type: ignore[list-item]


async def test_reminders_list_cancel_and_fire_across_hibernation() -> None:
    async with local_agent(SHIPPED) as agent:
        assert await agent.chat("remind me in 1 second to stretch") == "OK, I will remind you to stretch in 1 second."
        assert await agent.chat("/remind in 2h call mum") == "OK, I will remind you to call mum in 2 hours."
        assert (await agent.chat("/remind list")).splitlines()[1].startswith("2. call mum")
        await agent.restart()  # hibernated: the timer wakes it
        assert not agent.node.is_active(agent.agent_id)
        assert await agent.next_message(timeout_s=10) == "⏰ Reminder: stretch"
        assert await agent.chat("/remind cancel 1") == "Cancelled: call mum."
        assert await agent.chat("/remind list") == "No reminders pending."
        assert len(agent.node.timers) == 0


async def test_notes_remember_search_and_facts_in_the_prompt() -> None:
    async with local_agent(SHIPPED) as agent:
        assert await agent.chat("remember that the spare key is under the blue pot") == (
            "I will remember that the spare key is under the blue pot.")
        await agent.chat("/note oat milk for Ann")
        await agent.chat("/note the cat's vet is on Elm street")
        assert await agent.chat("/search milk") == "2. oat milk for Ann"
        assert await agent.call("notes.search", query="key pot") == ["the spare key is under the blue pot"]
        await agent.chat("hello there")  # no skill answers: the model does, with the notes as facts
        system = agent.llm.prompts[-1][0]["content"]
        assert "Facts about the user:" in system and "oat milk for Ann" in system
        assert "notes.search" in system  # and the tools it may call


async def test_help_lists_the_skills_commands_and_tools() -> None:
    async with local_agent(SHIPPED) as agent:
        text = await agent.chat("/help")
    for expected in ("reminders 1.0.0", "notes 1.0.1", "ask 1.0.0", "energy 1.0.0", "calc 1.0.0", "/remind in 10m",
                     "/call notes.search", "/ask AGENT_ID"):
        assert expected in text
    async with local_agent(SHIPPED) as agent:
        assert await agent.chat("/nope") == "Unknown command /nope. Try /help."
        assert await agent.chat('/call calc.evaluate {"expression": "6*7"}') == "6*7 = 42"
        assert "argument 'expression'" in await agent.chat('/call calc.evaluate {"expression": 5}')
        assert await agent.chat("what is 2^10?") == "2^10 = 1024"


async def test_a_skill_without_the_timer_permission_cannot_set_one(tmp_path: Path) -> None:
    code = """
    @tool
    async def later(ctx: SkillContext) -> str:
        await ctx.set_timer(5, {})
        return "set"

    @tool
    async def fetch(ctx: SkillContext, url: str) -> str:
        return (await ctx.fetch(url)).text

    @tool
    async def message(ctx: SkillContext, agent_id: str) -> str:
        await ctx.send(agent_id, "hi")
        return "sent"
    """
    folder = write_skill(tmp_path, "sneaky", code)
    async with local_agent([folder]) as agent:
        for tool, args, refused in [
            ("sneaky.later", {}, "may not set timers: its manifest does not grant timers"),
            ("sneaky.fetch", {"url": "http://127.0.0.1:9/"}, "may not reach 127.0.0.1:9"),
            ("sneaky.message", {"agent_id": "a" * 64}, "may not message agent"),
        ]:
            with pytest.raises(HeroError, match=refused):
                await agent.call(tool, **args)
        assert len(agent.node.timers) == 0
        assert await agent.chat("/help")  # the agent is fine


async def test_a_raising_and_a_hanging_skill_do_not_kill_the_agent(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    code = """
    import time

    @command("boom")
    async def boom(ctx: SkillContext, text: str) -> str:
        raise RuntimeError("kaboom")

    @command("spin")
    def spin(ctx: SkillContext, text: str) -> str:
        while True:
            pass

    @command("sleep")
    async def sleep(ctx: SkillContext, text: str) -> str:
        import asyncio
        await asyncio.sleep(60)
        return "late"

    @tool
    async def weird(ctx: SkillContext) -> str:
        return {1, 2}

    @command("grow")
    async def grow(ctx: SkillContext, text: str) -> str:
        ctx.state["big"] = "x" * 4000
        return "grown"

    @command("ok")
    async def ok(ctx: SkillContext, text: str) -> str:
        ctx.state["n"] = ctx.state.get("n", 0) + 1
        return f"ok {ctx.state['n']}"
    """
    folder = write_skill(tmp_path, "flaky", code, "time_limit_s = 0.5\nstorage_kb = 1\n")
    async with local_agent([folder]) as agent:
        assert await agent.chat("/boom") == "⚠ skill flaky: /boom failed (RuntimeError: kaboom)"
        started = time.monotonic()
        assert await agent.chat("/spin") == "⚠ skill flaky: /spin ran past its time limit of 0.5 s"
        assert await agent.chat("/sleep") == "⚠ skill flaky: /sleep ran past its time limit of 0.5 s"
        assert time.monotonic() - started < 5
        with pytest.raises(HeroError, match="returned a set, which is not JSON"):
            await agent.call("flaky.weird")
        assert "over its storage quota of 1 KB" in await agent.chat("/grow")
        assert await agent.chat("/ok") == "ok 1" and await agent.chat("/ok") == "ok 2"
        assert "big" not in await agent.state("flaky")
    assert "kaboom" in caplog.text and "ran past its time limit" in caplog.text  # the operator's log line


async def test_a_dev_skill_reloads_when_it_changes(tmp_path: Path) -> None:
    folder = write_skill(tmp_path, "live", '@command("v")\nasync def v(ctx: SkillContext, text: str) -> str:\n'
                                           '    return "one"\n')
    async with local_agent([folder]) as agent:
        assert await agent.chat("/v") == "one"
        await asyncio.sleep(0.3)
        (folder / "live.py").write_text((folder / "live.py").read_text().replace('"one"', '"two"'))
        assert await agent.chat("/v") == "two"
        specs = await agent.node.services["skills"].specs.history(agent.agent_id)  # type: ignore[attr-defined]
    assert [s.seq for s in specs] == [1, 2] and specs[0].skills[0].hash != specs[1].skills[0].hash


async def test_a_reminder_fires_after_the_node_restarts(store) -> None:  # type: ignore[no-untyped-def]
    from agents import assistant
    from hero.chat.entry import HistoryEntry
    from hero.runtime.events import ChatMessage
    from tests.conftest import make_node, new_agent

    agent = new_agent()
    first = make_node(store, assistant.create)
    await first.start()
    reply = await first.deliver(agent, ChatMessage("remind me in 2 seconds to drink water"))
    assert (await reply.text()).startswith("OK, I will remind you to drink water")
    await first.aclose()  # the node stops before the reminder is due
    again = make_node(store, assistant.create)
    await again.start()
    try:
        with again.subscribe(agent, HistoryEntry) as live:
            entry = await asyncio.wait_for(live.get(), 15)
        assert (entry.content, entry.kind) == ("⏰ Reminder: drink water", "reminder")
    finally:
        await again.aclose()

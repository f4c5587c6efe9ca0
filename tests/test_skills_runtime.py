"""Skills through the real runtime and store (no server, a scripted model): the shipped skills, permissions
enforced, a raising and a hanging skill, quotas, slash commands and /help, specs verified and recorded."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from hero.errors import HeroError
from hero.identity import UserKey
from hero.skills.registry import shipped_dir
from hero.skills.testing import LocalAgent, local_agent
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

    @tool
    async def think(ctx: SkillContext) -> str:
        return await ctx.ask_llm("hello")
    """
    folder = write_skill(tmp_path, "sneaky", code)
    async with local_agent([folder]) as agent:
        for tool, args, refused in [
            ("sneaky.later", {}, "may not set timers: its manifest does not grant timers"),
            ("sneaky.fetch", {"url": "http://127.0.0.1:9/"}, "may not reach 127.0.0.1:9"),
            ("sneaky.message", {"agent_id": "a" * 64}, "may not message agent"),
            ("sneaky.think", {}, "may not use the model: its manifest does not grant llm"),
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


async def test_bad_tool_calls_from_the_model_are_clear_errors_and_the_agent_goes_on(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    code = """
    @tool
    async def weird(ctx: SkillContext) -> str:
        return {1, 2}
    """
    folder = write_skill(tmp_path, "odd", code)
    caplog.set_level(logging.INFO, logger="hero.agents")
    async with local_agent([*SHIPPED, folder]) as agent:  # the scripted model writes what no grammar would let by
        agent.llm.replies = [
            '{"tool": "calc.evaluate", "arguments": {"expression": 5}}',
            '{"tool": "calc.evaluate", "arguments": {"expr',
            '{"tool": "shell.run", "arguments": {"command": "rm -rf /"}}',
            '{"arguments": {}}',
            '{"tool": "odd.weird", "arguments": {}}',
        ]
        for says in ("argument 'expression'", "not complete JSON (cut short?)", "shell.run",
                     "needs a tool name and arguments", "odd.weird returned a set, which is not JSON"):
            answer = await agent.chat("please work something out for me")
            assert answer.startswith("⚠ ") and says in answer and "Traceback" not in answer, answer
        assert await agent.chat('/call calc.evaluate {"expression": "6*7"}') == "6*7 = 42"  # the agent goes on
        assert await agent.chat("and now?") == "OK."  # the model again, a plain answer
    assert "the model's tool call failed" in caplog.text  # the operator's log line


async def test_a_skill_sees_only_its_own_state_of_its_own_agent(tmp_path: Path) -> None:
    keeper = """
    kept = []

    @tool
    async def keep(ctx: SkillContext, secret: str) -> str:
        ctx.state["secret"] = secret
        kept.append(ctx.state)  # a reference held past the call
        return "kept"

    @tool
    async def meddle(ctx: SkillContext) -> str:
        for held in kept:
            held["secret"] = "changed later"
        return "meddled"

    @tool
    async def show(ctx: SkillContext) -> dict:
        return dict(ctx.state)
    """
    peeker = '@tool\nasync def show(ctx: SkillContext) -> dict:\n    return dict(ctx.state)\n'
    folders = [write_skill(tmp_path, "keeper", keeper), write_skill(tmp_path, "peeker", peeker)]
    async with local_agent(folders) as agent:
        assert await agent.call("keeper.keep", secret="4711") == "kept"
        assert await agent.call("peeker.show") == {}  # another skill of the same agent
        other = LocalAgent(agent.node, UserKey.generate().agent_id, agent.llm)
        assert await other.call("keeper.show") == {}  # the same skill of another agent
        assert await agent.call("keeper.meddle") == "meddled"
        assert await agent.call("keeper.show") == {"secret": "4711"}  # a call works on its own copy
        assert await agent.state("keeper") == {"secret": "4711"} and await agent.state("peeker") == {}


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

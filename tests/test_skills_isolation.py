"""Skill code runs off the node's event loop: an async skill that spins forever is stopped at its time limit (the
user reads a short error, the operator a log line) while other agents' turns go on, and a skill's CPU time is
charged to its agent's ledger as skill CPU, not inference."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from hero.identity import UserKey
from hero.power.ledger import Ledger
from hero.runtime.events import ChatMessage
from hero.skills.testing import local_agent
from tests.skillkit import write_skill
from tests.test_power_ledger import sample_now

SPINNER = """
@command("spin")
async def spin(ctx: SkillContext, text: str) -> str:
    ctx.state["spun"] = True
    while True:
        pass

@command("ok")
async def ok(ctx: SkillContext, text: str) -> str:
    ctx.state["n"] = ctx.state.get("n", 0) + 1
    return f"ok {ctx.state['n']}"
"""

SLEEPER = """
@command("sleep")
async def sleep(ctx: SkillContext, text: str) -> str:
    import asyncio
    await asyncio.sleep(60)
    return "late"
"""

BURNER = """
import time

def _burn(seconds: float) -> None:
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass

@command("burn")
def burn(ctx: SkillContext, text: str) -> str:
    _burn(0.05)
    return "burnt"

@command("aburn")
async def aburn(ctx: SkillContext, text: str) -> str:
    _burn(0.05)
    return "burnt too"
"""


async def until(check, limit_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_an_async_skill_spinning_forever_is_stopped_and_never_holds_the_loop(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    # The spinner runs 8 s (its limit) on a worker thread. Were it on the loop, the loop would be held and the
    # other agent's turns wait for those 8 s; off the loop, each turn and each stall of the loop stays under
    # a third of that (`held_s`, slack for a loaded machine, where the spinning thread holds the GIL between
    # switches), so the three turns end before the spinner is stopped. The sleeper is only cancelled.
    limit_s, held_s = 8.0, 2.5
    spinner = write_skill(tmp_path, "spinner", SPINNER, f"time_limit_s = {limit_s:g}\n")
    sleeper = write_skill(tmp_path, "sleeper", SLEEPER, "time_limit_s = 1\n")
    async with local_agent([spinner, sleeper]) as agent:
        runner = agent.node.services["skills"].services.runner  # type: ignore[attr-defined]
        other = UserKey.generate().agent_id
        # The other agent activated (its spec recorded) and two skill workers started before the spin: what is
        # timed is its turns beside the spinning thread, not an activation or a new worker thread.
        reply = await agent.node.deliver(other, ChatMessage("/ok"))
        assert (await reply.text()).strip() == "ok 1"
        await asyncio.gather(*(runner.run(lambda: time.sleep(0.05), limit_s=1) for _ in range(2)))
        await until(lambda: runner.idle >= 2)  # a worker gives itself back just after handing over its outcome
        gaps: list[float] = []

        async def ticker() -> None:  # how long the loop is held at a time
            while True:
                before = time.monotonic()
                await asyncio.sleep(0.01)
                gaps.append(time.monotonic() - before - 0.01)

        ticking = asyncio.ensure_future(ticker())
        spin_started = time.monotonic()
        spinning = asyncio.ensure_future(agent.chat("/spin"))
        await asyncio.sleep(0.1)
        turns = []
        for n in range(2, 5):  # another agent's turns, while the skill spins
            started = time.monotonic()
            reply = await agent.node.deliver(other, ChatMessage("/ok"))
            assert (await reply.text()).strip() == f"ok {n}"
            turns.append(time.monotonic() - started)
        assert max(turns) < held_s, turns
        assert not spinning.done()  # the other agent's turns all ended while the skill still spun
        answer = await spinning
        spun_s = time.monotonic() - spin_started
        ticking.cancel()
        assert answer == "⚠ skill spinner: /spin ran past its time limit of 8 s"
        assert limit_s <= spun_s < limit_s + 1.5, spun_s  # stopped at its limit, not before and not long after
        assert max(gaps) < held_s, max(gaps)  # held for the limit's 8 s if the skill ran on the loop
        assert runner.interrupted == 1
        await until(lambda: runner.stopping == 0)  # its thread has ended
        assert "spun" not in await agent.state("spinner")  # what the stopped call did is not kept
        assert await agent.chat("/ok") == "ok 1"  # the agent goes on
        assert await agent.chat("/sleep") == "⚠ skill sleeper: /sleep ran past its time limit of 1 s"
        assert runner.interrupted == 1  # a waiting skill is cancelled, its worker kept
    assert "skill spinner: /spin ran past its time limit of 8 s" in caplog.text


async def test_skill_cpu_is_charged_to_the_agent_as_skill_cpu_not_inference(tmp_path: Path) -> None:
    folder = write_skill(tmp_path, "burner", BURNER)
    ledger = Ledger(10.0)
    ledger.prime()
    start = time.monotonic()
    async with local_agent([folder], metering=ledger) as agent:
        assert await agent.chat("/burn") == "burnt"
        assert await agent.chat("/aburn") == "burnt too"
        report = ledger.tick(sample_now(start))
    account = ledger.get(agent.agent_id)
    assert account is not None
    assert account.skills_s_total == pytest.approx(0.1, abs=0.03)  # two calls of 50 ms thread CPU each
    assert account.llm_s_total == 0.0
    assert report.skills_cpu_s == pytest.approx(account.skills_s_total)
    assert report.agents_cpu_s[agent.agent_id] >= account.skills_s_total

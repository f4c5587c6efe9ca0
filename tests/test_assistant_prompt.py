"""What the assistant offers the model, with the real default model: a history window that moves in steps, so a
follow-up turn reuses the previous prompt (only its new tokens are processed) except when the window steps; and
facts from notes within a budget, so a very long note never locks its user out of the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.assistant import HISTORY_STEP, HISTORY_WINDOW
from hero.runtime.events import ChatMessage
from hero.skills.registry import shipped_dir
from hero.skills.testing import LocalAgent, local_agent
from tests.skillkit import write_skill

pytestmark = pytest.mark.model

QUIET = '@command("quiet")\nasync def quiet(ctx: SkillContext, text: str) -> str:\n    return "ok"\n'  # no tools


async def ask(agent: LocalAgent, text: str, max_tokens: int = 2) -> tuple[str, dict]:  # type: ignore[type-arg]
    reply = await agent.node.deliver(agent.agent_id, ChatMessage(text, max_tokens=max_tokens, temperature=0.0))
    return await reply.text(), reply.usage


async def test_follow_up_turns_process_only_new_tokens_across_a_window_step(tmp_path: Path) -> None:
    folder = write_skill(tmp_path, "quiet", QUIET)
    turns = HISTORY_WINDOW // 2 + HISTORY_STEP // 4 + 1  # the window steps once, at turn WINDOW/2 + 1
    step_turn = HISTORY_WINDOW // 2 + 1
    processed: dict[int, int] = {}
    async with local_agent([folder], model=True) as agent:
        for turn in range(1, turns + 1):
            _, usage = await ask(agent, f"Say the number {turn}.")
            processed[turn] = usage["prompt_tokens"] - usage["prompt_tokens_reused"]
    full = max(processed.values())
    assert processed[step_turn] == full, processed  # the step: the window's new start is processed
    follow_ups = {t: n for t, n in processed.items() if t > 1 and t != step_turn}
    assert max(follow_ups.values()) < 40 < full, processed  # every other turn: its new message and the last reply


async def test_a_very_long_note_does_not_lock_its_user_out_of_the_model() -> None:
    fact = "the spare key" + " is under the blue pot by the door" * 430  # ~15,000 characters
    async with local_agent([shipped_dir()], model=True) as agent:  # type: ignore[list-item]
        assert (await agent.chat(f"remember that {fact}")).startswith("I will remember that the spare key")
        assert await agent.chat("/note my cat is called Tom") == "Noted (2)."
        text, usage = await ask(agent, "hello, what is my cat called?", max_tokens=8)
        assert text.strip() and not text.startswith("⚠"), text
        assert usage["prompt_tokens"] < 700, usage  # the facts take a bounded part of the 1024-token context
        assert len((await agent.state("notes"))["notes"][0]["text"]) == len(fact)  # the note itself is kept whole

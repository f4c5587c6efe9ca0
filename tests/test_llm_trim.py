"""Trimming a conversation to the context: what is kept, at what cost, and that it stalls nobody (issue 9, item 13)."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hero.errors import BadRequest
from hero.scheduler.llm import LLMService
from hero.scheduler.trim import fingerprint, trim_messages

PER_MESSAGE = 6


def words(text: str) -> int:
    return len(text.split())


def last_words(text: str, n: int) -> str:
    return " ".join(text.split()[-n:])


def cost(messages: list[dict[str, str]]) -> int:
    return sum(words(m["content"]) + PER_MESSAGE for m in messages)


roles = st.sampled_from(["user", "assistant", "system"])
conversations = st.lists(st.tuples(roles, st.text(alphabet="ab ", max_size=120)), min_size=1, max_size=30)


@given(conversations, st.integers(min_value=30, max_value=400))
def test_trim_keeps_system_and_newest_and_the_newest_history_within_budget(pairs, budget):
    messages = [{"role": r, "content": c} for r, c in pairs]
    system = [m for m in messages[:-1] if m["role"] == "system"]
    try:
        trimmed = trim_messages(messages, words, budget, per_message=PER_MESSAGE, cut_newest=last_words)
    except BadRequest as exc:  # only when the system messages leave no room for the newest
        assert exc.field == "messages" and cost(system) + PER_MESSAGE + 8 > budget
        return
    kept = trimmed.messages
    assert cost(kept) <= budget
    assert [m for m in kept if m["role"] == "system" and m is not kept[-1]] == system
    newest = messages[-1]["content"]
    assert kept[-1]["role"] == messages[-1]["role"]
    assert newest.split()[len(newest.split()) - words(kept[-1]["content"]) :] == kept[-1]["content"].split()
    history = [m for m in messages[:-1] if m["role"] != "system"]
    kept_history = [m for m in kept[:-1] if m["role"] != "system"]
    assert kept_history == history[len(history) - len(kept_history) :]  # the newest history, in order
    assert trimmed.dropped == len(history) - len(kept_history)


def _first_kept(turns: int, budget: int, slack: float) -> list[str]:
    history = [{"role": "system", "content": "be brief"}]
    firsts = []
    start = None
    for i in range(turns):
        history += [{"role": "user", "content": f"ask {i} " * 5}, {"role": "assistant", "content": f"say {i} " * 5}]
        asking = [*history, {"role": "user", "content": "and now?"}]
        trimmed = trim_messages(
            asking, words, budget, per_message=PER_MESSAGE, cut_newest=last_words, start=start, slack=slack
        )
        assert cost(trimmed.messages) <= budget
        assert trimmed.start == fingerprint(trimmed.messages[1])
        start = trimmed.start
        firsts.append(trimmed.messages[1]["content"])
    return firsts


def test_later_turns_keep_the_same_first_message_while_it_fits():
    """Prompt reuse needs a stable prefix: once cut, history is cut with slack and the start stays put."""
    with_slack = _first_kept(20, 240, 0.75)
    without = _first_kept(20, 240, 1.0)
    changes = sum(1 for a, b in itertools.pairwise(with_slack) if a != b)
    assert changes <= sum(1 for a, b in itertools.pairwise(without) if a != b) / 2
    assert changes >= 1  # the conversation did outgrow the budget


def test_trimming_tokenizes_a_bounded_tail_however_long_the_message(llm: LLMService) -> None:
    """Linear cost: a 1 MiB or an 8 MiB message is tokenized only by the tail that could fit, a few times."""
    loaded = llm._acquire()
    try:
        model = loaded.model
        tokenized: list[int] = []
        real = model.tokenize

        def counting(text: str, **kwargs: object) -> list[int]:
            tokenized.append(len(text))
            return real(text, **kwargs)  # type: ignore[arg-type]

        model.tokenize = counting  # type: ignore[method-assign]
        try:
            for mib in (1, 8):
                tokenized.clear()
                huge = "lorem ipsum dolor sit amet " * ((mib << 20) // 27)
                prompt = loaded.builder.build([{"role": "user", "content": huge}], max_tokens=16)
                assert prompt.cut and len(prompt.tokens) <= llm.n_ctx - 16
                tail = (llm.n_ctx + 1) * model.max_piece_bytes
                assert len(tokenized) <= 4 and sum(tokenized) <= 3 * tail, tokenized
        finally:
            del model.tokenize
    finally:
        llm._release(loaded)


async def _drain(llm: LLMService, agent: str, text: str, max_tokens: int, done: list[str]) -> float:
    started = time.perf_counter()
    async for _ in llm.stream(agent, [{"role": "user", "content": text}], max_tokens=max_tokens):
        pass
    done.append(agent)
    return time.perf_counter() - started


async def test_a_1_mib_message_does_not_make_another_users_short_chat_wait(llm: LLMService) -> None:
    """Before: trimming re-tokenized the 1 MiB message ~100 times on the inference thread (a 4-token chat
    waited 63 s behind it here). Now the short chat is served while the long prompt is still being fed."""
    done: list[str] = []
    huge = "lorem ipsum dolor sit amet " * ((1 << 20) // 27)  # 1 MiB
    big = asyncio.create_task(_drain(llm, "a" * 64, huge, 16, done))
    await asyncio.sleep(0.05)  # the huge request was sent first
    short = await _drain(llm, "b" * 64, "Say hi", 4, done)
    long = await big
    assert done == ["b" * 64, "a" * 64] and short < long, f"short chat {short:.1f} s, 1 MiB one {long:.1f} s"


@pytest.mark.parametrize("system_words", [5000])
async def test_system_messages_that_cannot_fit_are_refused_naming_messages(llm: LLMService, system_words: int):
    messages = [{"role": "system", "content": "rule " * system_words}, {"role": "user", "content": "hi"}]
    with pytest.raises(BadRequest) as err:
        async for _ in llm.stream("c" * 64, messages, max_tokens=4):
            pass
    assert err.value.field == "messages" and err.value.status == 400

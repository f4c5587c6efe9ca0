"""Prompt reuse across an agent's turns: resident KV cells, and saved states restored after eviction."""

from __future__ import annotations

from hero.scheduler.llm import LLMService
from hero.scheduler.prefix import PrefixStore, common_prefix

SYSTEM = {"role": "system", "content": "You are a helpful personal assistant. Answer briefly and kindly."}


async def turn(llm: LLMService, agent: str, messages: list[dict[str, str]], max_tokens: int = 8) -> tuple[str, dict]:
    usage: dict = {}
    text = "".join([d async for d in llm.stream(agent, messages, max_tokens=max_tokens, usage=usage)])
    return text.strip(), usage


def test_prefix_store_keeps_the_most_recent_states_within_its_bytes():
    store = PrefixStore(max_bytes=10)
    store.put("a", [1, 2], b"aaaa")
    store.put("b", [3], b"bbbb")
    store.put("c", [4], b"cccc")  # over 10 bytes: the least recently saved goes
    assert store.take("a") is None and len(store) == 2 and store.bytes == 8
    store.put("big", [5], b"x" * 11)  # larger than the whole store: not kept, nothing evicted for it
    assert len(store) == 2
    saved = store.take("b")
    assert saved is not None and saved.tokens == [3] and store.bytes == 4
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix([], [1]) == 0


async def test_a_follow_up_turn_only_processes_the_new_tokens(llm: LLMService):
    agent = "f" * 64
    history = [SYSTEM, {"role": "user", "content": "My name is Ada. Say hello to me."}]
    reply, first = await turn(llm, agent, history)
    history += [{"role": "assistant", "content": reply}, {"role": "user", "content": "What is my name?"}]
    _, second = await turn(llm, agent, history)
    processed = second["prompt_tokens"] - second["prompt_tokens_reused"]
    assert second["prompt_tokens_reused"] >= first["prompt_tokens"]  # all of turn 1's prompt, at least
    assert processed < second["prompt_tokens"] / 3, second


async def test_an_evicted_conversation_is_restored_from_its_saved_state(model_path):
    llm = LLMService(model_path, n_ctx=512, max_tokens=8, temperature=0.0, parallel=2)
    await llm.start()
    try:
        history = [SYSTEM, {"role": "user", "content": "My name is Ada and I like long walks. Say hello."}]
        reply, first = await turn(llm, "a" * 64, history)
        for other in ("b", "c"):  # two other agents take both sequences: Ada's cells are saved, then reused
            await turn(llm, other * 64, [SYSTEM, {"role": "user", "content": f"I am {other}. Hi!"}])
        assert llm.stats.saved >= 1 and llm.figures()["prefix_saved"] >= 1
        history += [{"role": "assistant", "content": reply}, {"role": "user", "content": "What do I like?"}]
        restored_reply, second = await turn(llm, "a" * 64, history)
        assert llm.stats.restored == 1
        assert second["prompt_tokens_reused"] >= first["prompt_tokens"]
        fresh_reply, fresh = await turn(llm, "d" * 64, history)  # the same prompt computed from scratch
        assert fresh["prompt_tokens_reused"] < 32 and restored_reply == fresh_reply
    finally:
        await llm.aclose()

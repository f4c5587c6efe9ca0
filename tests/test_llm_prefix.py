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
    finally:
        await llm.aclose()
    assert restored_reply == await from_scratch(model_path, history)


async def from_scratch(model_path, messages: list[dict[str, str]], max_tokens: int = 8) -> str:  # type: ignore[no-untyped-def]
    """The reply a service that has never seen any of this prompt gives (temperature 0)."""
    llm = LLMService(model_path, n_ctx=512, max_tokens=max_tokens, temperature=0.0, parallel=1)
    await llm.start()
    try:
        reply, usage = await turn(llm, "0" * 64, messages, max_tokens)
        assert usage["prompt_tokens_reused"] == 0
        return reply
    finally:
        await llm.aclose()


TOOLS = SYSTEM["content"] + " You can call a tool. To call one, reply with only a JSON object. Tools:\n" + "\n".join(
    f"- tool{i}.run(text: string): Does task number {i} for the user, carefully and quickly." for i in range(12)
)


async def test_agents_with_the_same_system_prompt_compute_it_once(model_path):
    """A newcomer keeps the cells a finished agent left (same start), or copies them from a running one."""
    llm = LLMService(model_path, n_ctx=512, max_tokens=8, temperature=0.0, parallel=2)
    await llm.start()
    try:
        system = {"role": "system", "content": TOOLS}
        _, first = await turn(llm, "a" * 64, [system, {"role": "user", "content": "Name a fruit."}])
        assert first["prompt_tokens"] > 150 and first["prompt_tokens_reused"] == 0
        # in place: the free slot agent a left holds the system prompt
        asked = [system, {"role": "user", "content": "What is the capital of Italy?"}]
        in_place, second = await turn(llm, "b" * 64, asked)
        assert second["prompt_tokens_reused"] > first["prompt_tokens"] - 20, second
        # copied: agent c holds one slot, mid-reply; agent d gets the other, empty one, and a copy of c's start
        await llm.unload()
        long = [system, {"role": "user", "content": "Write a long story about a dragon."}]
        stream = llm.stream("c" * 64, long, max_tokens=64)
        await anext(stream)
        copied, third = await turn(llm, "d" * 64, asked)
        await stream.aclose()
        assert llm.stats.shared == 1 and third["prompt_tokens_reused"] > first["prompt_tokens"] - 20, third
    finally:
        await llm.aclose()
    assert in_place == copied == await from_scratch(model_path, asked)

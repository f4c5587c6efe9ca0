"""The shared LLM service: fair queueing across agents, context trimming, real streaming."""

from __future__ import annotations

import asyncio
import threading

from hypothesis import given
from hypothesis import strategies as st

from hero.scheduler.fairqueue import FairQueue
from hero.scheduler.llm import LLMService, trim_messages


def test_fair_queue_round_robin_across_agents_fifo_within_one():
    q: FairQueue[str] = FairQueue()
    for i in range(4):
        q.put("chatty", f"c{i}")
    q.put("quiet", "q0")
    q.put("other", "o0")
    q.put("quiet", "q1")
    order = [q.get() for _ in range(len(q))]
    assert order == ["c0", "q0", "o0", "c1", "q1", "c2", "c3"]


def test_fair_queue_remove_and_close_wake_blocked_taker():
    q: FairQueue[str] = FairQueue()
    q.put("a", "x")
    assert q.remove("a", "x") and not q.remove("a", "x") and len(q) == 0
    got: list[str | None] = []
    taker = threading.Thread(target=lambda: got.append(q.get()))
    taker.start()
    q.close()
    taker.join(timeout=5)
    assert got == [None]


@given(
    st.lists(st.tuples(st.sampled_from(["user", "assistant", "system"]), st.text(max_size=200)), min_size=1),
    st.integers(min_value=10, max_value=400),
)
def test_trim_keeps_system_and_newest_and_fits_budget(pairs, budget):
    messages = [{"role": r, "content": c} for r, c in pairs]
    count = lambda text: len(text.split())  # noqa: E731 - a stand-in tokenizer: words
    kept = trim_messages(messages, count, budget)
    assert kept[-1]["role"] == messages[-1]["role"]
    assert messages[-1]["content"].endswith(kept[-1]["content"].split(" ")[-1] if kept[-1]["content"] else "")
    system_in = [m for m in messages[:-1] if m["role"] == "system"]
    assert [m for m in kept[:-1] if m["role"] == "system"] == system_in
    # the non-system messages kept are the newest ones, in order
    others = [m for m in kept[:-1] if m["role"] != "system"]
    tail = [m for m in messages[:-1] if m["role"] != "system"]
    assert others == tail[len(tail) - len(others):] if others else True
    fixed = sum(count(m["content"]) + 6 for m in kept if m["role"] == "system")
    if fixed + 6 < budget:
        assert sum(count(m["content"]) + 6 for m in kept) <= max(budget, fixed + 6 + 1)


async def test_real_model_streams_and_charges_requesting_agent(model_path):
    charged: list[tuple[str, int, int]] = []

    class Meter:
        def charge_llm(self, agent_id: str, cpu_ns: int, tokens: int) -> None:
            charged.append((agent_id, cpu_ns, tokens))

    service = LLMService(model_path, n_ctx=512, max_tokens=16, temperature=0.0, metering=Meter())
    await service.start()
    try:
        deltas = [d async for d in service.stream("a" * 64, [{"role": "user", "content": "Count to five"}])]
        assert "".join(deltas).strip() and len(deltas) <= 16
        assert charged[0][0] == "a" * 64 and charged[0][1] > 0 and charged[0][2] == len(deltas)
        assert service.tokens_total == len(deltas)
        await service.unload()
        assert not service.loaded
        again = [d async for d in service.stream("b" * 64, [{"role": "user", "content": "Say yes"}], max_tokens=4)]
        assert again and service.loaded and service.last_load_seconds is not None
    finally:
        await service.aclose()


async def test_requests_from_many_agents_are_served_fairly(llm):
    """A chatty agent with 4 queued requests does not delay a second agent behind all of them."""
    finished: list[str] = []

    async def ask(agent: str, i: int) -> None:
        async for _ in llm.stream(agent, [{"role": "user", "content": f"Say {i}"}], max_tokens=8):
            pass
        finished.append(agent)

    chatty = [asyncio.create_task(ask("c" * 64, i)) for i in range(4)]
    await asyncio.sleep(0)
    quiet = asyncio.create_task(ask("q" * 64, 9))
    await asyncio.gather(*chatty, quiet)
    assert finished.index("q" * 64) <= 2


async def test_stopping_a_stream_cancels_generation(llm):
    stop = threading.Event()
    out = []
    async for delta in llm.stream("d" * 64, [{"role": "user", "content": "Tell a long story"}],
                                  max_tokens=64, should_stop=stop.is_set):
        out.append(delta)
        if len(out) == 3:
            stop.set()
    assert len(out) < 10


async def test_long_history_is_trimmed_to_context(llm):
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 120} for i in range(40)]
    history.append({"role": "user", "content": "Say ok"})
    text = "".join([d async for d in llm.stream("e" * 64, history, max_tokens=8)])
    assert text.strip()

"""The shared LLM service on the real model: batching across agents, fairness, cancellation, lifecycle."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hero.errors import ModelError, Overloaded
from hero.scheduler.fairqueue import BACKGROUND, FairQueue, QueueFull
from hero.scheduler.llm import LLMService
from tests.conftest import free_port, hero_cli

PROMPTS = [
    "Name a fruit.",
    "What is 2+2?",
    "Say hello in French.",
    "Name a color.",
    "What is the capital of Italy?",
    "Name a planet.",
    "What do bees make?",
    "Name a big animal.",
]


def agent(i: int) -> str:
    return f"{i:064x}"


async def until(condition: Callable[[], bool], timeout_s: float = 120.0) -> None:
    """Wait for a state the inference thread changes (there is no event to await from here)."""
    deadline = time.monotonic() + timeout_s
    while not condition():  # the inference thread's state, polled
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def ask(llm: LLMService, who: str, text: str, max_tokens: int = 8, **options: object) -> str:
    return "".join([d async for d in llm.stream(who, [{"role": "user", "content": text}], max_tokens=max_tokens,
                                                **options)])  # type: ignore[arg-type]


def test_fair_queue_round_robin_across_agents_fifo_within_one_interactive_first():
    q: FairQueue[str] = FairQueue()
    for i in range(4):
        q.put("chatty", f"c{i}")
    q.put("quiet", "q0")
    q.put("timer", "t0", priority=BACKGROUND)
    q.put("other", "o0")
    q.put("quiet", "q1")
    order = [q.get() for _ in range(len(q))]
    assert order == ["c0", "q0", "o0", "c1", "q1", "c2", "c3", "t0"]


def test_fair_queue_is_bounded_per_priority_and_remove_and_close_wake_the_taker():
    q: FairQueue[str] = FairQueue(maxsize=2)
    q.put("a", "x")
    q.put("b", "y")
    with pytest.raises(QueueFull):
        q.put("c", "z")
    q.put("c", "bg", priority=BACKGROUND)  # background work has its own bound: chat is never shut out by it
    assert q.full() and not q.full(BACKGROUND)
    assert q.remove("a", "x") and not q.remove("a", "x") and len(q) == 2 and not q.full()
    assert q.get_nowait() == "y" and q.get_nowait() == "bg" and q.get_nowait() is None
    got: list[str | None] = []
    taker = threading.Thread(target=lambda: got.append(q.get()))
    taker.start()
    q.close()
    taker.join(timeout=5)
    assert got == [None]


async def test_real_model_streams_and_charges_requesting_agent(model_path):
    charged: list[tuple[str, int, int]] = []

    class Meter:
        def charge_llm(self, agent_id: str, cpu_ns: int, tokens: int) -> None:
            charged.append((agent_id, cpu_ns, tokens))

    service = LLMService(model_path, n_ctx=512, max_tokens=8, temperature=0.0, parallel=2, metering=Meter())
    await service.start()
    try:
        usage: dict = {}
        text = "".join([d async for d in service.stream("a" * 64, [{"role": "user", "content": "Count to five"}],
                                                        usage=usage)])
        assert text.strip() and usage["completion_tokens"] <= 8 and usage["finish_reason"] in ("stop", "length")
        assert {a for a, _, _ in charged} == {"a" * 64} and sum(ns for _, ns, _ in charged) > 0
        assert sum(t for _, _, t in charged) == usage["completion_tokens"] == service.tokens_total
        await service.unload()
        assert not service.loaded
        again = await ask(service, "b" * 64, "Say yes", 4)
        assert again and service.loaded and service.last_load_seconds is not None
    finally:
        await service.aclose()


async def test_eight_agents_at_once_each_get_the_reply_they_would_get_alone(llm: LLMService):
    """Batched decoding shares one KV cache: at temperature 0 no token may cross between sequences."""
    steps = llm.stats.steps
    alone = [await ask(llm, agent(100 + i), p) for i, p in enumerate(PROMPTS)]
    steps_alone = llm.stats.steps - steps
    steps = llm.stats.steps
    together = await asyncio.gather(*(ask(llm, agent(200 + i), p) for i, p in enumerate(PROMPTS)))
    assert list(together) == alone
    assert all(reply.strip() for reply in alone)
    assert llm.stats.steps - steps < steps_alone / 2  # they really were decoded together


async def test_a_caller_that_falls_behind_gets_the_waiting_text_in_one_delta(llm: LLMService):
    """A slow consumer (a busy event loop, a slow client) is not handed one delta per decode step it missed."""
    alone = await ask(llm, agent(300), PROMPTS[0], 24)
    deltas = []
    async for delta in llm.stream(agent(301), [{"role": "user", "content": PROMPTS[0]}], max_tokens=24):
        deltas.append(delta)
        if len(deltas) == 1:
            await until(lambda: llm.running == 0)  # the reply ends while this caller is away
    assert "".join(deltas) == alone
    assert len(deltas) == 2


async def test_a_long_reply_does_not_starve_a_short_one(llm: LLMService):
    finished: list[str] = []

    async def run(who: str, text: str, n: int) -> None:
        await ask(llm, who, text, n, temperature=0.7)
        finished.append(who)

    long = asyncio.create_task(run("long", "Write a long story about a dragon.", 32))
    await until(lambda: llm.running == 1)
    await run("short", "Say hi", 4)
    await long
    assert finished == ["short", "long"]


async def test_stopping_a_stream_frees_its_slot_within_one_decode_step(llm: LLMService):
    stop = threading.Event()
    usage: dict = {}
    out = []
    async for delta in llm.stream(agent(7), [{"role": "user", "content": "Tell a long story"}],
                                  max_tokens=200, temperature=0.7, should_stop=stop.is_set, usage=usage):
        out.append(delta)
        if len(out) == 3:
            stop.set()
            steps = llm.stats.steps
    assert llm.running == 0 and llm.stats.steps - steps <= 2
    assert usage["completion_tokens"] < 12


async def test_a_consumer_that_goes_away_frees_its_slot(llm: LLMService):
    stream = llm.stream(agent(8), [{"role": "user", "content": "Tell a long story"}], max_tokens=200)
    await anext(stream)
    assert llm.running == 1
    steps = llm.stats.steps
    await stream.aclose()  # what the web edge does when the client disconnects
    await until(lambda: llm.running == 0)
    assert llm.stats.steps - steps <= 2


async def test_max_tokens_over_the_cap_is_clamped_and_reported(model_path):
    service = LLMService(model_path, n_ctx=256, max_tokens=4, max_tokens_cap=6, temperature=0.0, parallel=1)
    await service.start()
    try:
        usage: dict = {}
        async for _ in service.stream(agent(9), [{"role": "user", "content": "Tell a story"}], max_tokens=100,
                                      usage=usage):
            pass
        assert usage["max_tokens_requested"] == 100 and usage["max_tokens"] == 6
        assert usage["completion_tokens"] <= 6
    finally:
        await service.aclose()


async def test_a_full_queue_is_refused_with_a_retry_after(model_path):
    service = LLMService(model_path, n_ctx=256, max_tokens=48, temperature=0.7, parallel=1, queue_max=1)
    await service.start()
    try:
        first = asyncio.create_task(ask(service, agent(1), "Write a long story.", 48))
        await until(lambda: service.running == 1)
        second = asyncio.create_task(ask(service, agent(2), "Say hi", 2))
        await until(lambda: service.queue_depth == 1)
        assert service.queue_full()
        with pytest.raises(Overloaded) as err:
            await ask(service, agent(3), "Say hi", 2)
        assert err.value.status == 429 and 1.0 <= err.value.retry_after <= 60.0
        assert await ask(service, agent(4), "Say hi", 2, interactive=False) is not None  # its own bound
        await asyncio.gather(first, second)
        assert service.figures()["rejected_total"] == 1
    finally:
        await service.aclose()


async def test_a_model_path_that_is_not_a_gguf_gives_a_clear_error(tmp_path: Path):
    junk = tmp_path / "model.gguf"
    junk.write_bytes(b"not a model at all" * 100)
    service = LLMService(junk)
    with pytest.raises(ModelError, match="not a GGUF"):
        await service.start()
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelError, match="could not load"):
        await LLMService(damaged).start()
    for path, says in ((junk, "is not a GGUF"), (damaged, "could not load")):  # `hero up --model`: one line, exit 2
        result = hero_cli("up", "--data", str(tmp_path / "data"), "--port", str(free_port()), "--model", str(path),
                          check=False)
        assert result.returncode == 2 and says in result.stderr and "Traceback" not in result.stderr, result.stderr

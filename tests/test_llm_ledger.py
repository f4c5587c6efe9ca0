"""Inference CPU is charged to the agents in full: every CPU-second the inference thread and llama.cpp's compute
threads spend goes to the agents whose requests were in the batch, split by the tokens each put in it."""

from __future__ import annotations

import asyncio
import resource
import threading
import time
from pathlib import Path

import pytest

from hero.scheduler.contention import Contention
from hero.scheduler.llm import LLMService

PROMPTS = ["Write a story about a cat.", "Name three fruits.", "Explain rain.", "Describe a city at night."]


class Meter:
    """The ledger's seam, recording which thread charged what."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, int]] = []
        self._lock = threading.Lock()

    def charge_llm(self, agent_id: str, cpu_ns: int, tokens: int) -> None:
        with self._lock:
            self.calls.append((agent_id, cpu_ns, tokens, threading.get_native_id()))

    def by_agent(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for agent, ns, _, _ in self.calls:
            out[agent] = out.get(agent, 0) + ns
        return out


def thread_cpu_ns(tid: int) -> int:
    return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])


def process_cpu_ns() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return int((usage.ru_utime + usage.ru_stime) * 1e9)


async def serve_round(llm: LLMService, tag: str, max_tokens: int) -> dict[str, int]:
    """Four agents at once; returns each one's completion tokens."""
    async def one(i: int) -> tuple[str, int]:
        usage: dict = {}
        agent = f"{tag}{i}".ljust(64, "0")
        async for _ in llm.stream(agent, [{"role": "user", "content": PROMPTS[i]}], max_tokens=max_tokens,
                                  usage=usage):
            pass
        return agent, usage["completion_tokens"]

    return dict(await asyncio.gather(*(one(i) for i in range(len(PROMPTS)))))


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="per-thread CPU clocks from /proc")
async def test_the_inference_threads_cpu_is_charged_to_the_agents_in_full(model_path):
    meter = Meter()
    llm = LLMService(model_path, n_ctx=512, max_tokens=48, temperature=0.7, parallel=4, threads=1, metering=meter)
    others = {t for t in threading.enumerate() if t.name == "hero-llm"}  # other tests' services
    await llm.start()
    try:
        await serve_round(llm, "w", 4)  # warm: the thread's start-up is not inference
        (worker,) = [t for t in threading.enumerate() if t.name == "hero-llm" and t not in others]
        assert worker.native_id is not None
        meter.calls.clear()
        before = thread_cpu_ns(worker.native_id)
        tokens = await serve_round(llm, "a", 48)
        tokens.update(await serve_round(llm, "b", 24))
        spent = thread_cpu_ns(worker.native_id) - before
        from_inference = sum(ns for _, ns, _, tid in meter.calls if tid == worker.native_id)
        print(f"charged {from_inference / 1e9:.3f} s of the inference thread's {spent / 1e9:.3f} s")
        assert from_inference == pytest.approx(spent, rel=0.01), (from_inference, spent)
        charged = meter.by_agent()
        assert set(charged) == set(tokens)  # every agent in the batch paid a share, nobody else
        assert {a: sum(t for b, _, t, _ in meter.calls if b == a) for a in tokens} == tokens
    finally:
        await llm.aclose()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="per-thread CPU clocks from /proc")
async def test_llama_cpps_compute_threads_are_charged_too(model_path):
    """With two threads llama.cpp decodes on a second thread the inference thread's clock cannot see: what the
    whole process spent off the event loop is what the agents were charged (prompt building included)."""
    meter = Meter()
    never_contended = Contention(Path("/nonexistent"))  # keep both threads, however busy the machine is
    llm = LLMService(model_path, n_ctx=512, max_tokens=16, temperature=0.7, parallel=4, threads=2, metering=meter,
                     contention=never_contended)
    await llm.start()
    try:
        await serve_round(llm, "w", 4)
        await asyncio.sleep(0.2)  # the compute threads' spin after the warm-up ends
        meter.calls.clear()
        loop_before, before = time.thread_time_ns(), process_cpu_ns()
        await serve_round(llm, "a", 16)
        await serve_round(llm, "b", 16)
        await asyncio.sleep(0.2)
        off_loop = (process_cpu_ns() - before) - (time.thread_time_ns() - loop_before)
        charged = sum(meter.by_agent().values())
        assert llm.threads_used == 2
        assert charged == pytest.approx(off_loop, rel=0.05), (charged, off_loop)
    finally:
        await llm.aclose()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="per-thread CPU clocks from /proc")
async def test_a_second_service_in_the_process_is_not_charged_for_the_first_ones_threads(model_path):
    """Each service finds its own compute team: another service decoding at the same time is not its inference."""
    busy = LLMService(model_path, n_ctx=512, max_tokens=200, temperature=0.7, parallel=1, threads=1)
    meter = Meter()
    others = {t for t in threading.enumerate() if t.name == "hero-llm"}
    llm = LLMService(model_path, n_ctx=512, max_tokens=24, temperature=0.7, parallel=4, threads=1, metering=meter)
    await llm.start()
    (worker,) = [t for t in threading.enumerate() if t.name == "hero-llm" and t not in others]
    await busy.start()
    try:
        assert worker.native_id is not None
        await serve_round(llm, "w", 4)
        neighbour = asyncio.create_task(serve_round(busy, "n", 200))
        meter.calls.clear()
        before = thread_cpu_ns(worker.native_id)
        await asyncio.sleep(2.5)  # the neighbour's thread found by a rescan, were it taken for ours
        await serve_round(llm, "a", 24)
        spent = thread_cpu_ns(worker.native_id) - before
        charged = sum(meter.by_agent().values())
        assert not neighbour.done()
        assert charged == pytest.approx(spent, rel=0.02), (charged, spent)
        neighbour.cancel()
    finally:
        await llm.aclose()
        await busy.aclose()

"""The LLM's knobs and figures: the governor turns threads and parallel sequences; a shared step's CPU time is
split among its requests; contention drops llama.cpp to one thread."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hero.errors import Overloaded
from hero.power.governor import Governor
from hero.scheduler.contention import Contention
from hero.scheduler.llm import LLMService
from tests.test_power_governor import PROFILE, U_PER_CPU, FakeLLM, report


async def test_over_budget_the_governor_lowers_parallel_sequences_with_threads_and_raises_them_slowly():
    llm = FakeLLM(threads=4)
    llm.queue.extend(["r1", "r2"])
    gov = Governor(PROFILE, u_per_cpu=U_PER_CPU)
    gov.attach(None, llm)
    await gov.tick(report(0.0, 45.0))  # 4 more busy threads would take the node past its target
    assert llm.threads < 4 and llm.parallel == -(-8 * llm.threads // 4) < 8
    assert gov.describe()["llm_parallel"] == llm.parallel
    before = llm.parallel
    for t in range(1, 4):  # room again, work still waiting: one more sequence per tick, never straight to 8
        await gov.tick(report(float(t), 13.0, llm_cpu_s=0.5))
        assert before < llm.parallel <= before + 1
        before = llm.parallel


async def test_a_full_model_queue_refuses_new_work_at_admission_with_its_retry_after():
    llm = FakeLLM(full=True)
    gov = Governor(PROFILE, u_per_cpu=U_PER_CPU)
    gov.attach(None, llm)
    try:
        gov.admit("a" * 64, interactive=True)
        raise AssertionError("admitted into a full queue")
    except Overloaded as exc:
        assert exc.retry_after == 7.0 and exc.status == 429
    assert gov.status.deferred["llm_queue"] == 1
    llm.full = False
    gov.admit("a" * 64, interactive=True)


async def test_with_one_parallel_sequence_requests_take_turns(llm: LLMService):
    llm.set_parallel(1)
    seen: list[int] = []

    async def ask(who: str) -> None:
        async for _ in llm.stream(who, [{"role": "user", "content": "Say hi"}], max_tokens=4):
            seen.append(llm.running)

    try:
        await asyncio.gather(ask("p" * 64), ask("q" * 64))
    finally:
        llm.set_parallel(llm.max_parallel)
    assert seen and max(seen) == 1


async def test_a_shared_steps_cpu_time_is_split_among_its_requests(model_path: Path):
    charged: dict[str, int] = {}

    class Meter:
        def charge_llm(self, agent_id: str, cpu_ns: int, tokens: int) -> None:
            charged[agent_id] = charged.get(agent_id, 0) + cpu_ns

    llm = LLMService(model_path, n_ctx=1024, max_tokens=6, temperature=0.0, parallel=4, metering=Meter())
    await llm.start()
    try:
        short = [{"role": "user", "content": "Say hi"}]
        long = [{"role": "user", "content": "Please read this and then say hi. " + "The weather is mild. " * 60}]

        async def ask(who: str, messages: list[dict[str, str]]) -> None:
            async for _ in llm.stream(who, messages, max_tokens=6):
                pass

        await asyncio.gather(ask("s" * 64, short), ask("t" * 64, short), ask("l" * 64, long))
    finally:
        await llm.aclose()
    twins = charged["s" * 64], charged["t" * 64]
    assert min(twins) > 0.5 * max(twins)  # the same work in the same steps costs the same
    assert charged["l" * 64] > 3 * max(twins)  # a long prompt's tokens made most of the shared steps' work


def test_contention_is_the_inference_threads_wait_for_a_cpu(tmp_path: Path, monkeypatch):
    stat = tmp_path / "schedstat"
    clock = [100.0]
    monkeypatch.setattr("hero.scheduler.contention.time.monotonic", lambda: clock[0])
    c = Contention(stat)

    def after(seconds: float, wait_ns: int) -> bool:
        clock[0] += seconds
        stat.write_text(f"123 {wait_ns} 7\n")
        return c.update()

    assert not after(0.0, 0)
    assert after(1.0, 400_000_000) and c.wait_share == 0.4  # waited 40 % of the second
    assert after(1.0, 450_000_000)  # calm once is not enough
    assert not after(1.0, 460_000_000)  # calm twice: back to all threads
    assert not Contention(tmp_path / "missing").update()  # no schedstat: never contended

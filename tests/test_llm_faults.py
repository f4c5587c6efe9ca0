"""A fault in the inference thread costs the request it belongs to: the others in its batch step finish, the error
reaches the caller, and the service serves the next request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hero.errors import BadRequest, ModelError
from hero.scheduler.contention import Contention
from hero.scheduler.llm import LLMService
from hero.scheduler.sampling import Sampling

UNSATISFIABLE = r'root ::= "ok" [^\x00-\U0010FFFF]'  # parses, but no character can follow "ok"


async def ask(llm: LLMService, who: str, text: str, max_tokens: int = 12, **options: object) -> str:
    return "".join([d async for d in llm.stream(who, [{"role": "user", "content": text}], max_tokens=max_tokens,
                                                **options)])  # type: ignore[arg-type]


async def test_a_grammar_nothing_can_complete_fails_its_request_only_and_the_service_goes_on(model_path):
    """llama.cpp aborts the whole process when a grammar is handed a token it rejects; the sampler catches it."""
    llm = LLMService(model_path, n_ctx=256, max_tokens=12, temperature=0.0, parallel=4)
    await llm.start()
    try:
        alone = await ask(llm, "a" * 64, "Name a fruit.")
        others = [asyncio.create_task(ask(llm, f"{i}" * 64, "Name a fruit.")) for i in range(1, 4)]
        with pytest.raises(BadRequest) as err:
            await ask(llm, "b" * 64, "Say ok.", grammar=UNSATISFIABLE)
        assert err.value.field == "grammar" and "cannot be completed" in err.value.message
        assert await asyncio.gather(*others) == [alone] * 3  # decoded beside it, untouched
        assert await ask(llm, "c" * 64, "Name a fruit.") == alone  # and the next request is served
        assert llm.running == 0
    finally:
        await llm.aclose()


async def test_a_sampler_llama_cpp_cannot_build_fails_its_request_only_and_the_service_goes_on(model_path):
    """llama.cpp's binding refuses a fractional top-k while the request is admitted (its chain is built there)."""
    llm = LLMService(model_path, n_ctx=256, max_tokens=12, temperature=0.0, parallel=4)
    await llm.start()
    try:
        alone = await ask(llm, "a" * 64, "Name a fruit.")
        others = [asyncio.create_task(ask(llm, f"{i}" * 64, "Name a fruit.")) for i in range(1, 4)]
        with pytest.raises(ModelError, match="inference failed"):
            await ask(llm, "b" * 64, "Name a fruit.", sampling=Sampling(top_k=40.5))  # type: ignore[arg-type]
        assert await asyncio.gather(*others) == [alone] * 3
        assert await ask(llm, "b" * 64, "Name a fruit.") == alone  # its agent's next request is served, correctly
        assert llm.running == 0
    finally:
        await llm.aclose()


class Once:
    """Wraps a llama.cpp function of the binding: the `at`-th call that `when` picks fails once, with `fail`."""

    def __init__(self, real, at: int, fail, when=lambda *args: True) -> None:
        self.real, self.at, self.fail, self.when = real, at, fail, when
        self.calls = 0
        self.fired = False

    def __call__(self, *args):
        if not self.fired and self.when(*args):
            self.calls += 1
            if self.calls == self.at:
                self.fired = True
                return self.fail(*args)
        return self.real(*args)


def generating(ctx, batch) -> bool:
    return batch.n_tokens <= 2  # one token per running request: a step after the prompts were fed


def raise_runtime_error(*args):
    raise RuntimeError("injected")


async def settle_all(*coros, timeout_s: float = 120.0) -> list:
    return await asyncio.wait_for(asyncio.gather(*coros, return_exceptions=True), timeout_s)


@pytest.mark.parametrize("fail", [lambda *args: -3, raise_runtime_error], ids=["error-status", "binding-raises"])
async def test_a_failed_decode_fails_the_requests_in_its_step_and_the_service_serves_the_rest(
    model_path, monkeypatch, fail
):
    """llama_decode fails once (an error status, or the binding raises) while two of four requests decode: those
    two get a ModelError, the two still queued are served correctly, and the failed agents' retries are correct
    (their cells, half-written by the failed decode, were cleared)."""
    import llama_cpp as C

    llm = LLMService(model_path, n_ctx=256, max_tokens=12, temperature=0.0, parallel=2)
    await llm.start()
    try:
        alone = await ask(llm, "a" * 64, "Name a fruit.")
        fault = Once(C.llama_decode, 3, fail, when=generating)
        monkeypatch.setattr(C, "llama_decode", fault)
        agents = [f"{i}" * 64 for i in range(4)]
        results = await settle_all(*(ask(llm, a, "Name a fruit.") for a in agents))
        assert fault.fired
        failed = [a for a, r in zip(agents, results, strict=True) if isinstance(r, BaseException)]
        assert len(failed) in (1, 2), results  # those in the failed step, nobody else
        for a, r in zip(agents, results, strict=True):
            if a in failed:
                assert isinstance(r, ModelError), r
                assert "llama_decode failed" in r.message or "inference failed: RuntimeError" in r.message
            else:
                assert r == alone
        assert await settle_all(*(ask(llm, a, "Name a fruit.") for a in failed)) == [alone] * len(failed)
        assert llm.running == 0
    finally:
        await llm.aclose()


async def test_a_fault_sampling_one_request_fails_that_request_only(model_path, monkeypatch):
    """The binding raises once while one request of a four-request step samples: that request fails, the three
    decoded beside it finish with the replies they would have had alone."""
    import llama_cpp as C

    llm = LLMService(model_path, n_ctx=256, max_tokens=12, temperature=0.0, parallel=4)
    await llm.start()
    try:
        alone = await ask(llm, "a" * 64, "Name a fruit.")
        fault = Once(C.llama_sampler_sample, 10, raise_runtime_error)
        monkeypatch.setattr(C, "llama_sampler_sample", fault)
        results = await settle_all(*(ask(llm, f"{i}" * 64, "Name a fruit.") for i in range(4)))
        assert fault.fired
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], ModelError), results
        assert "inference failed: RuntimeError" in errors[0].message
        assert [r for r in results if not isinstance(r, BaseException)] == [alone] * 3
        assert await ask(llm, "b" * 64, "Name a fruit.") == alone
        assert llm.running == 0
    finally:
        await llm.aclose()


class FlakyMeter:
    """A ledger seam that fails once: a fault in another part must not stop inference."""

    def __init__(self) -> None:
        self.calls = 0

    def charge_llm(self, agent_id: str, cpu_ns: int, tokens: int) -> None:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("ledger fault")


async def test_a_fault_charging_the_ledger_loses_no_reply_and_the_service_goes_on(model_path):
    llm = LLMService(model_path, n_ctx=256, max_tokens=12, temperature=0.0, parallel=4, metering=FlakyMeter())
    await llm.start()
    try:
        results = await settle_all(*(ask(llm, f"{i}" * 64, "Name a fruit.") for i in range(4)))
        alone = await asyncio.wait_for(ask(llm, "a" * 64, "Name a fruit."), 60)
        assert results == [alone] * 4
        assert llm.running == 0
    finally:
        await llm.aclose()


async def test_a_fault_outside_any_request_fails_the_running_ones_and_the_thread_goes_on(model_path, monkeypatch):
    """llama.cpp's thread-count call raises once when the governor's new count is applied (between steps, no one
    request's): the request then running fails with a clear error, and the next one is served."""
    import llama_cpp as C

    never_contended = Contention(Path("/nonexistent"))
    llm = LLMService(model_path, n_ctx=256, max_tokens=12, temperature=0.0, parallel=2, threads=1,
                     contention=never_contended)
    await llm.start()
    try:
        alone = await ask(llm, "a" * 64, "Name a fruit.")
        fault = Once(C.llama_set_n_threads, 1, raise_runtime_error)
        monkeypatch.setattr(C, "llama_set_n_threads", fault)
        llm.set_threads(2)
        with pytest.raises(ModelError, match="inference failed: RuntimeError"):
            await asyncio.wait_for(ask(llm, "b" * 64, "Name a fruit."), 60)
        assert fault.fired
        assert await asyncio.wait_for(ask(llm, "b" * 64, "Name a fruit."), 60) == alone
        assert llm.threads_used == 2 and llm.running == 0
    finally:
        await llm.aclose()

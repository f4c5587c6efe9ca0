"""A fault in the inference thread costs the request it belongs to: the others in its batch step finish, the error
reaches the caller, and the service serves the next request."""

from __future__ import annotations

import asyncio

import pytest

from hero.errors import BadRequest, ModelError
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

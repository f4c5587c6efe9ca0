"""The LLM service through the real node and HTTP API: 429 when its queue is full, a gone client frees its
slot, clamped max_tokens and reused prompt tokens in `usage`, its figures in status and /metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from tests.conftest import add_user, auth, make_config, operator_token, serving


async def until(condition: Callable[[], bool], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # the inference thread's state, polled
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def chat(text: str, **extra: object) -> dict:
    return {"model": "hero", "messages": [{"role": "user", "content": text}], **extra}


async def test_a_full_queue_is_429_with_retry_after_and_a_gone_client_frees_its_slot(tmp_path):
    config = make_config(tmp_path, llm_parallel=1, llm_queue_max=1)
    async with serving(config) as parts:
        llm = parts.llm
        alice, bob, carol = (add_user(config.data_dir, name) for name in ("alice", "bob", "carol"))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}", timeout=120) as http:
            story = chat("Write a long story about a dragon.", stream=True, max_tokens=200, temperature=0.8)
            async with http.stream("POST", "/v1/chat/completions", json=story, headers=auth(alice["token"])) as one:
                lines = one.aiter_lines()  # held: an abandoned iterator would close the stream
                async for line in lines:
                    if '"content":"' in line and '"content":""' not in line:
                        break  # alice's reply is streaming: the only slot is taken
                queued = asyncio.create_task(
                    http.post("/v1/chat/completions", json=chat("Say hi", max_tokens=300), headers=auth(bob["token"]))
                )
                await until(lambda: llm.queue_depth == 1)
                refused = await http.post("/v1/chat/completions", json=chat("Hello?"), headers=auth(carol["token"]))
                assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
                assert refused.json()["error"]["type"] == "overloaded"
                steps = llm.stats.steps
            # alice's client went away mid-reply: her slot is freed at once and bob's request takes it
            await until(lambda: all(s["agent_id"] != alice["agent_id"] for s in llm.figures()["sequences"]))
            assert llm.stats.steps - steps <= 3
            answered = await queued
            assert answered.status_code == 200
            usage = answered.json()["usage"]
            assert usage["max_tokens_requested"] == 300 and usage["max_tokens"] == llm.max_tokens_cap < 300

            carols = await http.get("/api/me/messages", headers=auth(carol["token"]))
            assert carols.json()["messages"] == []  # refused before it was accepted: nothing to lose

            again = await http.post("/v1/chat/completions", json=chat("And you?"), headers=auth(bob["token"]))
            details = again.json()["usage"]["prompt_tokens_details"]
            assert details["cached_tokens"] > again.json()["usage"]["prompt_tokens"] / 2  # bob's first turn, reused

            operator = auth(operator_token(config.data_dir))
            metrics = (await http.get("/metrics", headers=operator)).text
            assert 'hero_governor_deferred_total{reason="llm_queue"} 1.0' in metrics
            assert "hero_llm_parallel 1.0" in metrics and "hero_llm_kv_cells 1024.0" in metrics
            status = (await http.get("/api/node/status", headers=operator)).json()["llm"]
            assert status["max_parallel"] == 1 and status["queue_max"] == 1 and status["kv_cells_total"] == 1024
            assert status["prompt_tokens_reused_total"] > 0 and status["rejected_total"] == 1

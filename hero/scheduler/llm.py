"""The node's LLM service: one llama.cpp model shared by every agent.

Requests from agents go into a fair queue (round-robin across agents, FIFO
within one) and are served by one inference thread, so the event loop never
blocks on inference. Tokens stream back to the asking coroutine as they are
made. The CPU time of each request is measured in the inference thread and
charged to the agent that asked. History is trimmed to fit the context window.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hero.errors import ModelError, Unavailable
from hero.runtime.seams import Metering
from hero.scheduler.fairqueue import FairQueue

log = logging.getLogger("hero.llm")

_END = object()
_MESSAGE_OVERHEAD = 6  # template tokens around each chat message (role markers, separators)


@dataclass(eq=False)
class _Request:
    agent_id: str
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    should_stop: Callable[[], bool] | None = None
    usage: dict[str, Any] | None = None
    cancelled: bool = False

    def stopped(self) -> bool:
        return self.cancelled or (self.should_stop is not None and self.should_stop())

    def send(self, item: object) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class LLMService:
    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 2048,
        threads: int | None = None,
        max_tokens: int = 256,
        temperature: float = 0.7,
        metering: Metering | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        self.threads = threads or _default_threads()
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.metering = metering
        self.tokens_total = 0
        self.requests_total = 0
        self.last_request_at: float | None = None
        self.last_load_seconds: float | None = None
        self._queue: FairQueue[_Request] = FairQueue()
        self._model_lock = threading.Lock()
        self._llama: Any = None
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.model_path.stem

    @property
    def loaded(self) -> bool:
        return self._llama is not None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def start(self, *, preload: bool = True) -> None:
        """Start the inference thread; load the model now so the first chat is not slow."""
        if preload:
            await asyncio.to_thread(self._ensure_loaded)
        self._thread = threading.Thread(target=self._worker, name="hero-llm", daemon=True)
        self._thread.start()

    async def aclose(self) -> None:
        self._queue.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        await self.unload()

    async def unload(self) -> None:
        """Free the model's memory; the next request reloads it (the governor calls this when nobody talks)."""
        def drop() -> None:
            with self._model_lock:
                self._llama = None

        await asyncio.to_thread(drop)

    def set_threads(self, n: int) -> None:
        """Change inference threads for the next request (the governor lowers them when over budget)."""
        self.threads = max(1, n)

    async def stream(
        self,
        agent_id: str,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> AsyncIterator[str]:
        """Queue a chat completion for `agent_id` and yield its text as it is generated.

        If given, `usage` is filled with prompt_tokens, completion_tokens and
        finish_reason ("stop" or "length") by the time the stream ends.
        """
        if self._thread is None:
            raise Unavailable("the LLM service is not running")
        request = _Request(
            agent_id,
            messages,
            max_tokens or self.max_tokens,
            self.temperature if temperature is None else temperature,
            asyncio.get_running_loop(),
            should_stop=should_stop,
            usage=usage,
        )
        self.last_request_at = time.monotonic()
        self._queue.put(agent_id, request)
        try:
            while True:
                item = await request.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            request.cancelled = True
            self._queue.remove(agent_id, request)

    # inference thread

    def _worker(self) -> None:
        while (request := self._queue.get()) is not None:
            if request.stopped():
                request.send(_END)
                continue
            try:
                self._serve(request)
            except Exception as exc:
                log.exception("inference failed for agent %s", request.agent_id[:12])
                request.send(ModelError(f"inference failed: {type(exc).__name__}"))
            else:
                request.send(_END)

    def _ensure_loaded(self) -> Any:
        with self._model_lock:
            if self._llama is None:
                from llama_cpp import Llama

                started = time.perf_counter()
                self._llama = Llama(
                    model_path=str(self.model_path),
                    n_ctx=self.n_ctx,
                    n_threads=self.threads,
                    n_threads_batch=self.threads,
                    verbose=False,
                )
                self.last_load_seconds = time.perf_counter() - started
                log.info("loaded %s in %.2fs", self.model_path.name, self.last_load_seconds)
            return self._llama

    def _serve(self, request: _Request) -> None:
        llama = self._ensure_loaded()
        with self._model_lock:
            started = time.thread_time_ns()
            tokens = 0
            finish = "stop"
            try:
                _apply_threads(llama, self.threads)
                count = self._counter(llama)
                messages = trim_messages(request.messages, count, self.n_ctx - request.max_tokens)
                self.requests_total += 1
                chunks = llama.create_chat_completion(
                    messages, stream=True, max_tokens=request.max_tokens, temperature=request.temperature
                )
                for chunk in chunks:
                    if request.stopped():
                        break
                    choice = chunk["choices"][0]
                    text = choice["delta"].get("content")
                    if text:
                        tokens += 1
                        request.send(text)
                    finish = choice.get("finish_reason") or finish
                if request.usage is not None:
                    prompt = sum(count(m["content"]) + _MESSAGE_OVERHEAD for m in messages)
                    request.usage.update(prompt_tokens=prompt, completion_tokens=tokens, finish_reason=finish)
            finally:
                self.tokens_total += tokens
                if self.metering is not None:
                    self.metering.charge_llm(request.agent_id, time.thread_time_ns() - started, tokens)

    @staticmethod
    def _counter(llama: Any) -> Callable[[str], int]:
        return lambda text: len(llama.tokenize(text.encode(), add_bos=False, special=False))


def trim_messages(
    messages: list[dict[str, str]], count: Callable[[str], int], budget: int
) -> list[dict[str, str]]:
    """Drop the oldest non-system messages until the prompt fits `budget` tokens.

    System messages and the newest message always stay; if the newest alone is
    too long, its beginning is cut (the end of a message is what asks).
    """
    if not messages:
        return []
    costs = [count(m["content"]) + _MESSAGE_OVERHEAD for m in messages]
    system = [i for i, m in enumerate(messages[:-1]) if m["role"] == "system"]
    keep = set(system) | {len(messages) - 1}
    total = sum(costs[i] for i in keep)
    for i in range(len(messages) - 2, -1, -1):
        if i in keep:
            continue
        if total + costs[i] > budget:
            break
        keep.add(i)
        total += costs[i]
    kept = [dict(messages[i]) for i in sorted(keep)]
    if total > budget:
        last = kept[-1]
        excess = total - budget
        text = last["content"]
        words = text.split(" ")
        while words and count(" ".join(words)) + _MESSAGE_OVERHEAD > costs[-1] - excess:
            words = words[max(1, len(words) // 8) :]
        last["content"] = " ".join(words)
    return kept


def _apply_threads(llama: Any, threads: int) -> None:
    import llama_cpp

    if getattr(llama, "_hero_threads", None) != threads:
        llama_cpp.llama_set_n_threads(llama._ctx.ctx, threads, threads)
        llama._hero_threads = threads


def _default_threads() -> int:
    import os

    return max(1, min(4, os.cpu_count() or 1))

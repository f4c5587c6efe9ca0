"""The node's LLM service: one llama.cpp model shared by every agent, their requests decoded together.

A request's prompt is built in a worker thread (template from the GGUF,
trimming, tokenizing: prompt.py), then it waits in a bounded fair queue
(interactive first, round-robin across agents: fairqueue.py) until the
inference thread gives it a slot in the running batch (batch.py) of the model
in memory (loaded.py). Text comes back to the asking coroutine as it is made;
the event loop never runs inference. The power governor turns two knobs,
`threads` and `parallel` (sequences decoded at once), and unloads the model
when nobody talks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from hero.errors import BadRequest, HeroError, ModelError, Overloaded, Unavailable
from hero.scheduler.batch import BatchStats
from hero.scheduler.charging import charge
from hero.scheduler.contention import Contention
from hero.scheduler.cputime import InferenceClock
from hero.scheduler.fairqueue import BACKGROUND, INTERACTIVE, FairQueue, QueueFull
from hero.scheduler.job import END, Job, deliver
from hero.scheduler.loaded import LoadedModel, load_model
from hero.scheduler.prompt import Prompt
from hero.scheduler.sampling import Sampling, check_grammar
from hero.seams.llm import ToolSyntax
from hero.seams.power import Metering

log = logging.getLogger("hero.llm")

KNOWN_STARTS = 4096  # agents whose history start is remembered for prompt reuse (trim.py)


class LLMService:
    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 2048,
        threads: int | None = None,
        max_tokens: int = 256,
        max_tokens_cap: int | None = None,
        temperature: float | None = None,
        sampling: Sampling | None = None,
        parallel: int = 8,
        queue_max: int = 64,
        prefix_cache_mib: int = 256,
        metering: Metering | None = None,
        contention: Contention | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.n_ctx = n_ctx
        self.threads = threads or _default_threads()
        self.threads_used = self.threads  # 1 while the inference thread waits for CPUs (contention.py)
        self._contention = contention or Contention()
        self.max_parallel = max(1, parallel)
        self.parallel = self.max_parallel
        self.max_tokens = max_tokens
        self.max_tokens_cap = max_tokens_cap or max(max_tokens, n_ctx // 4)  # fairness: no reply hogs a slot
        sampling = sampling or Sampling()
        self.sampling = sampling if temperature is None else replace(sampling, temperature=temperature)
        self.prefix_cache_bytes = prefix_cache_mib << 20
        self.metering = metering
        self.stats = BatchStats()
        self.requests_total = 0
        self.rejected_total = 0
        self.last_request_at: float | None = None
        self.last_load_seconds: float | None = None
        self._queue: FairQueue[Job] = FairQueue(maxsize=queue_max)
        self._lock = threading.Condition()  # guards loading, unloading and `users`
        self._loaded: LoadedModel | None = None
        self._starts: OrderedDict[str, int] = OrderedDict()
        self._thread: threading.Thread | None = None
        self.tool_syntax: ToolSyntax | None = None  # how the chat template writes a tool call; read at load

    # ---- what the node, the governor and the dashboard read ----

    @property
    def name(self) -> str:
        return self.model_path.stem

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def queue_max(self) -> int | None:
        return self._queue.maxsize

    def queue_full(self, interactive: bool = True) -> bool:
        return self._queue.full(INTERACTIVE if interactive else BACKGROUND)

    @property
    def running(self) -> int:
        loaded = self._loaded
        return loaded.batcher.running if loaded is not None else 0

    @property
    def tokens_total(self) -> int:
        return self.stats.tokens

    def retry_after_s(self) -> float:
        """When a full queue will have room: its depth in rounds of `parallel` requests of the usual length."""
        rounds = (self.queue_depth + 1) / max(1, self.parallel)
        return min(60.0, max(1.0, rounds * self.stats.request_s))

    def figures(self) -> dict[str, Any]:
        """The service's figures for the dashboard's LLM panel and /metrics."""
        st = self.stats
        loaded = self._loaded
        kv_total = loaded.ctx.n_seq * loaded.ctx.n_ctx_seq if loaded is not None else 0
        kv_used = loaded.batcher.kv_cells if loaded is not None else 0
        store = loaded.batcher.store if loaded is not None else None
        return {
            "running": self.running,
            "threads_used": self.threads_used,
            "cpu_wait_share": round(self._contention.wait_share, 3),
            "parallel": self.parallel,
            "max_parallel": self.max_parallel,
            "queue_max": self.queue_max,
            "rejected_total": self.rejected_total,
            "batch_sequences": st.batch_sequences,
            "batch_tokens": st.batch_tokens,
            "steps_total": st.steps,
            "decode_seconds_total": round(st.decode_s, 3),
            "cpu_seconds_total": round(st.cpu_s, 3),  # every compute thread's, all charged to agents
            "prompt_tokens_total": st.prompt_tokens,
            "prompt_tokens_reused_total": st.reused_tokens,
            "kv_cells_used": kv_used,
            "kv_cells_total": kv_total,
            "kv_use": round(kv_used / kv_total, 4) if kv_total else 0.0,
            "prefix_saved": len(store) if store is not None else 0,
            "prefix_saved_bytes": store.bytes if store is not None else 0,
            "time_to_first_token_s": round(st.ttft_s, 3),
            "last_load_seconds": self.last_load_seconds,
            "sequences": loaded.batcher.sequences() if loaded is not None else [],
        }

    # ---- lifecycle and knobs ----

    async def start(self, *, preload: bool = True) -> None:
        """Start the inference thread; load the model now so the first chat is not slow."""
        if preload:
            await asyncio.to_thread(self._release, await asyncio.to_thread(self._acquire))
        self._thread = threading.Thread(target=self._worker, name="hero-llm", daemon=True)
        self._thread.start()

    async def aclose(self) -> None:
        self._queue.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        await self.unload()

    async def unload(self) -> None:
        """Free the model's memory unless it is in use; the next request reloads it (the governor's lever)."""
        await asyncio.to_thread(self._unload)

    def set_threads(self, n: int) -> None:
        """Inference threads from the next decode step on (the governor lowers them when over budget)."""
        self.threads = max(1, n)

    def set_parallel(self, n: int) -> None:
        """Sequences decoded at once from the next admission on; running ones finish (the governor's knob)."""
        self.parallel = max(1, min(self.max_parallel, n))

    # ---- the caller's side ----

    async def stream(
        self,
        agent_id: str,
        messages: list[dict[str, str]],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        usage: dict[str, Any] | None = None,
        interactive: bool = True,
        sampling: Sampling | None = None,
        grammar: str | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> AsyncIterator[str]:
        """Queue a chat completion for `agent_id` and yield its text as it is generated.

        If given, `usage` is filled with prompt_tokens, completion_tokens and
        finish_reason ("stop", or "length" for a reply cut by the token limit)
        by the time the stream ends; a `max_tokens` over the cap is clamped and
        reported as max_tokens_requested / max_tokens. With a `grammar`
        (GBNF, root rule `root`) every token is one it allows (constrained
        decoding). `tools` (OpenAI-style function specs) are rendered by the
        model's chat template, if it has native tool calling (`tool_syntax`;
        else a `BadRequest` naming `tools`). Raises `Overloaded` when the queue is full, `BadRequest`
        (naming `messages`) when the messages cannot fit the context, or
        (naming `grammar`) when llama.cpp cannot parse the grammar.
        """
        if self._thread is None:
            raise Unavailable("the LLM service is not running")
        self.last_request_at = time.monotonic()
        priority = INTERACTIVE if interactive else BACKGROUND
        refusal = self.refusal(interactive)
        if refusal is not None:
            raise refusal
        requested = max_tokens or self.max_tokens
        limit = min(requested, self.max_tokens_cap)
        usage = usage if usage is not None else {}
        if limit < requested:
            usage.update(max_tokens_requested=requested, max_tokens=limit)
        prompt = await asyncio.to_thread(self._prepare, agent_id, messages, limit, grammar, tools)
        if prompt.dropped or prompt.cut:
            usage.update(messages_dropped=prompt.dropped, newest_message_cut=prompt.cut)
        settings = sampling or self.sampling
        if temperature is not None:
            settings = replace(settings, temperature=temperature)
        loop = asyncio.get_running_loop()
        job = Job(agent_id, prompt.tokens, limit, settings, loop, asyncio.Queue(), should_stop, usage, grammar)
        try:
            self._queue.put(agent_id, job, priority=priority)
        except QueueFull:
            raise self._overloaded() from None  # filled up while the prompt was being built
        self.requests_total += 1
        try:
            held: object = None
            while True:
                item, held = (held if held is not None else await job.out.get()), None
                if item is END:
                    return
                if isinstance(item, BaseException):
                    raise item
                text = str(item)
                while not job.out.empty():  # a caller that fell behind gets one delta, not one per step
                    more = job.out.get_nowait()
                    if not isinstance(more, str):
                        held = more
                        break
                    text += more
                yield text
        finally:
            job.cancelled = True
            self._queue.remove(agent_id, job)

    def refusal(self, interactive: bool = True) -> Overloaded | None:
        """The 429 to answer new work with while the queue of its priority is full (the governor asks)."""
        return self._overloaded() if self.queue_full(interactive) else None

    def _overloaded(self) -> Overloaded:
        self.rejected_total += 1
        return Overloaded(
            f"the model is busy: {self.queue_depth} requests are waiting (at most {self.queue_max} of each priority)",
            retry_after=self.retry_after_s(),
        )

    def _prepare(self, agent_id: str, messages: list[dict[str, str]], max_tokens: int,
                 grammar: str | None = None, tools: list[dict[str, Any]] | None = None) -> Prompt:
        """Build the prompt (and check the grammar) in a worker thread; its CPU time is the asking agent's."""
        started = time.thread_time_ns()
        loaded = self._acquire()
        try:
            if grammar is not None and not check_grammar(loaded.model, grammar):
                raise BadRequest("the grammar does not parse (GBNF with a root rule)", field="grammar")
            prompt = loaded.builder.build(messages, max_tokens=max_tokens, start=self._starts.get(agent_id),
                                          tools=tools)
        finally:
            self._release(loaded)
            if self.metering is not None:
                charge(self.metering, agent_id, time.thread_time_ns() - started, 0)
        if prompt.start is not None:
            self._starts[agent_id] = prompt.start
            self._starts.move_to_end(agent_id)
            while len(self._starts) > KNOWN_STARTS:
                self._starts.popitem(last=False)
        return prompt

    # ---- the model's lifetime ----

    def _acquire(self) -> LoadedModel:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            self._loaded.users += 1
            return self._loaded

    def _release(self, loaded: LoadedModel) -> None:
        with self._lock:
            loaded.users -= 1
            self._lock.notify_all()

    def _load(self) -> LoadedModel:
        loaded = load_model(self.model_path, n_ctx=self.n_ctx, n_seq=self.max_parallel, threads=self.threads,
                            parallel=self.parallel, prefix_bytes=self.prefix_cache_bytes, stats=self.stats,
                            metering=self.metering)
        self.tool_syntax = loaded.template.tool_syntax
        self.last_load_seconds = loaded.load_s
        return loaded

    def _unload(self) -> bool:
        with self._lock:
            loaded = self._loaded
            if loaded is None:
                return False
            if loaded.batcher.running == 0:  # the inference thread may be a moment from letting go
                self._lock.wait_for(lambda: loaded.users == 0, timeout=1.0)
            if loaded.users > 0:
                return False
            self._loaded = None
        loaded.close()
        return True

    # ---- the inference thread ----

    def _worker(self) -> None:
        clock = InferenceClock()
        clock.start()
        try:
            self._serve(clock)
        finally:
            clock.close()

    def _serve(self, clock: InferenceClock) -> None:
        """Admit, step, charge, deliver; block on the queue while nothing runs.

        The inference's CPU time (every compute thread's) is charged in full, iteration by iteration, to the
        requests served; the model's loading excepted. What the compute threads spend after the last step
        before an idle spell (they spin a moment before they sleep) goes with the next iteration. A fault
        fails the requests it touched (batch.py) and, should one escape, those running; the thread goes on.
        """
        loaded: LoadedModel | None = None
        last_ns = clock.read_ns()
        scan = True  # look for llama.cpp's compute threads after the next step (it starts them)
        while True:
            if loaded is None or loaded.batcher.running == 0:
                if loaded is not None:
                    self._release(loaded)
                    loaded = None
                    self._contention.reset()
                job = self._queue.get()  # idle: block, holding nothing
                if job is None:
                    return
                owed_ns = clock.read_ns() - last_ns
                try:
                    loaded = self._acquire()
                except Exception as exc:
                    log.error("the model could not be loaded: %s", exc)
                    error = exc if isinstance(exc, HeroError) else ModelError(f"the model could not be loaded: {exc}")
                    deliver([(job, error)])
                    continue
                finally:
                    last_ns = clock.read_ns() - owed_ns  # a load is not a request's
                self._start(loaded, job)
            batcher = loaded.batcher
            try:
                batcher.parallel = self.parallel
                while batcher.can_admit() and (job := self._queue.get_nowait()) is not None:
                    self._start(loaded, job)
                self.threads_used = 1 if self._contention.update() else self.threads
                if self.threads_used != loaded.ctx.threads:
                    loaded.ctx.set_threads(self.threads_used)
                    scan = True
                batcher.step()
                if scan:
                    clock.rescan()
                    scan = False
                now_ns = clock.read_ns()
                batcher.settle(now_ns - last_ns)
                last_ns = now_ns
            except Exception as exc:  # a bug outside any one request: fail the running ones, keep serving
                log.exception("the inference loop failed; its running requests fail, the service goes on")
                try:
                    batcher.close(ModelError(f"inference failed: {type(exc).__name__}"))
                except Exception:
                    log.exception("failing the running requests failed too")

    def _start(self, loaded: LoadedModel, job: Job) -> None:
        if job.stopped():
            job.usage.update(completion_tokens=0, finish_reason="stop")
            deliver([(job, END)])
            return
        try:
            loaded.batcher.admit(job)
        except Exception as exc:  # admitting it failed (a bug, not the model): this request fails, the rest go on
            log.exception("admitting a request failed")
            loaded.batcher.drop(job, exc if isinstance(exc, HeroError) else ModelError(
                f"inference failed: {type(exc).__name__}"))


def _default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))

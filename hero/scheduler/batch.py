"""Continuous batching: many agents' requests decoded together in one llama.cpp batch per step.

Each request runs in a slot (a KV sequence of the shared context). A step
puts every generating slot's last token and a chunk of each newcomer's
prompt into one `llama_decode`, then samples one token per generating slot
with that slot's own sampler chain. Newcomers join between steps, finished
or cancelled requests leave at once, and a prompt is fed in chunks while
others generate, so no stream stalls for more than one step. Decoding is
memory-bound, so a step of eight sequences costs far less than eight steps.
`settle` hands each step's CPU time to `charging.py`, which splits it among the requests.

Inference thread only: the service admits jobs and calls `step` and `settle`
from its worker thread; results go back through `deliver`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hero.errors import HeroError, ModelError
from hero.scheduler.charging import StepCharges
from hero.scheduler.job import END, Job
from hero.scheduler.llamacpp import Context, Entry
from hero.scheduler.prefix import MIN_SAVE_TOKENS, PrefixStore, Rates, common_prefix
from hero.scheduler.sampling import Sampler
from hero.scheduler.text import ReplyText
from hero.seams.power import Metering

log = logging.getLogger("hero.llm")

STEP_TARGET_S = 0.25  # while others run, a step feeds at most this much prompt: their streams barely pause
MIN_CHUNK = 16  # prompt tokens per step at least, however slow the machine
NEAR_END_TOKENS = 12  # hold back the unfinished word this close to max_tokens
CELL_BYTES_GUESS = 32_768  # a token's saved state, until a save measures it (23 KB for SmolLM2-135M)


@dataclass(eq=False)
class Slot:
    seq: int
    owner: str | None = None  # the agent whose conversation the cells hold
    tokens: list[int] = field(default_factory=list)  # what the cells hold, in order
    used_at: float = 0.0
    job: Job | None = None
    fed: int = 0  # prompt tokens in the cells
    next_token: int | None = None  # sampled, to be decoded next step
    generated: int = 0
    sampler: Sampler | None = None
    text: ReplyText | None = None


@dataclass
class BatchStats:
    steps: int = 0
    tokens: int = 0  # generated
    prompt_tokens: int = 0  # processed
    reused_tokens: int = 0  # prompt tokens found in the cells or restored instead of processed
    restored: int = 0
    saved: int = 0
    shared: int = 0  # prompt starts copied from another agent's cells
    decode_s: float = 0.0
    cpu_s: float = 0.0  # inference CPU time, every compute thread's (what `settle` was given)
    batch_tokens: int = 0  # last step
    batch_sequences: int = 0  # last step
    request_s: float = 2.0  # a request's time in its slot, moving average
    ttft_s: float = 0.0  # time from queueing to the first token, moving average


class Batcher:
    def __init__(
        self,
        ctx: Context,
        *,
        stops: list[str],
        parallel: int,
        prefix_bytes: int,
        deliver: Callable[[list[tuple[Job, object]]], None],
        stats: BatchStats,
        metering: Metering | None = None,
    ) -> None:
        self.ctx = ctx
        self.model = ctx.model
        self.stops = stops
        self.parallel = parallel
        self.slots = [Slot(i) for i in range(ctx.n_seq)]
        self.store = PrefixStore(prefix_bytes)
        self.rates = Rates()
        self.stats = stats  # the service's: it outlives a model reload
        self.charges = StepCharges(metering)
        self._deliver = deliver
        self._out: list[tuple[Job, object]] = []

    @property
    def running(self) -> int:
        return sum(1 for s in self.slots if s.job is not None)

    @property
    def kv_cells(self) -> int:
        return sum(len(s.tokens) for s in self.slots)

    def can_admit(self) -> bool:
        return self.running < min(self.parallel, len(self.slots))

    # ---- admission and prompt reuse ----

    def admit(self, job: Job) -> None:
        """Give `job` a free slot, reusing what the cells (or the saved store) hold of its prompt.

        Agents of one kind share their prompt's start (the system prompt, the
        tools): cells another agent left that begin like this prompt are kept
        and only the rest is computed; failing those, the longest such start
        held by any slot is copied (a few MB of state costs milliseconds,
        computing a 300-token system prompt two seconds of CPU here).
        """
        started_ns = time.thread_time_ns()
        slot = self._choose(job)
        try:
            self._admit(slot, job)
        except BaseException:  # the cells may no longer be what `tokens` says: clear them
            if slot.sampler is not None:
                slot.sampler.close()
            slot.job = slot.sampler = slot.text = None
            self._clear(slot)
            raise
        finally:
            self.charges.measured(job, time.thread_time_ns() - started_ns)

    def _admit(self, slot: Slot, job: Job) -> None:
        prompt = job.prompt
        if slot.owner != job.agent_id:
            self._evict(slot, keep=common_prefix(slot.tokens, prompt))
            self._restore(slot, job)
            self._borrow(slot, job)
            slot.owner = job.agent_id
        reuse = min(common_prefix(slot.tokens, prompt), len(prompt) - 1)  # the last token is fed for its logits
        self.ctx.keep(slot.seq, reuse)
        del slot.tokens[reuse:]
        slot.job, slot.fed, slot.generated, slot.next_token = job, reuse, 0, None
        slot.sampler = Sampler(self.model, job.sampling, job.grammar)
        slot.sampler.prime(prompt)
        slot.text = ReplyText(self.stops)
        job.started_at = time.perf_counter()
        self.stats.reused_tokens += reuse
        job.usage.update(prompt_tokens=len(prompt), prompt_tokens_reused=reuse)

    def _choose(self, job: Job) -> Slot:
        """The agent's own free slot; else the free slot whose cells share most of the prompt's start; else an
        empty one; else the least recently used."""
        free = [s for s in self.slots if s.job is None]
        own = [s for s in free if s.owner == job.agent_id]
        if own:
            return own[0]
        shared = max(free, key=lambda s: common_prefix(s.tokens, job.prompt))
        if common_prefix(shared.tokens, job.prompt) >= MIN_SAVE_TOKENS:
            return shared
        empty = [s for s in free if s.owner is None]
        return empty[0] if empty else min(free, key=lambda s: s.used_at)

    def _evict(self, slot: Slot, keep: int = 0) -> None:
        """Save the owner's conversation (when it is worth it) and clear the cells but their first `keep`."""
        if slot.owner is not None and len(slot.tokens) >= MIN_SAVE_TOKENS:
            self.store.put(slot.owner, list(slot.tokens), self.ctx.save(slot.seq))
            self.stats.saved += 1
        self.ctx.keep(slot.seq, keep)
        del slot.tokens[keep:]
        slot.owner = None

    def _restore(self, slot: Slot, job: Job) -> None:
        """The agent's own saved conversation, when it holds more of the prompt than the cells and pays."""
        saved = self.store.take(job.agent_id)
        if saved is None:
            return
        reuse = common_prefix(saved.tokens, job.prompt)
        gain = reuse - common_prefix(slot.tokens, job.prompt)
        if reuse < MIN_SAVE_TOKENS or gain <= 0 or not self.rates.restore_pays(gain, len(saved.data)):
            return
        started = time.perf_counter()
        if self.ctx.restore(slot.seq, saved.data):
            self.rates.restore(len(saved.data), time.perf_counter() - started)
            slot.tokens[:] = saved.tokens
            self.stats.restored += 1
        else:
            slot.tokens.clear()  # restore cleared the cells

    def _borrow(self, slot: Slot, job: Job) -> None:
        """Copy another slot's cells when they hold a longer start of the prompt than this one does."""
        have = common_prefix(slot.tokens, job.prompt)
        source = max(self.slots, key=lambda s: common_prefix(s.tokens, job.prompt) if s is not slot else -1)
        reuse = common_prefix(source.tokens, job.prompt) if source is not slot else 0
        gain = reuse - have
        nbytes = CELL_BYTES_GUESS * len(source.tokens) * 2  # saved, then loaded
        if reuse < MIN_SAVE_TOKENS or gain < MIN_SAVE_TOKENS or not self.rates.restore_pays(gain, nbytes):
            return
        started = time.perf_counter()
        data = self.ctx.save(source.seq)
        if self.ctx.restore(slot.seq, data):
            self.rates.restore(2 * len(data), time.perf_counter() - started)
            self.ctx.keep(slot.seq, reuse)
            slot.tokens[:] = source.tokens[:reuse]
            self.stats.shared += 1
        else:
            slot.tokens.clear()

    # ---- the step ----

    def step(self) -> None:
        """One decode step over every running slot: stop the cancelled, feed, decode, sample (`settle` then
        charges the step and delivers its text)."""
        for slot in self.slots:
            if slot.job is not None and slot.job.stopped():
                self._finish(slot, "stop")
        entries, owners = self._fill()
        if entries:
            for e in entries:  # the step's shared cost is split by the tokens each request put in it
                job = self.slots[e.seq].job
                assert job is not None
                self.charges.batched(job)
            started = time.perf_counter()
            try:
                self.ctx.decode(entries)
            except Exception as exc:  # its requests' cells may be half written: they fail and are cleared
                self._fail({slot for slot, _ in owners} | self._prefilling(), _request_error(exc, "decoding"))
                return
            self._account(entries, time.perf_counter() - started)
            for slot, index in owners:
                try:
                    self._sample(slot, index)
                except Exception as exc:  # this request's sampler failed (its grammar): the others go on
                    self._fail({slot}, _request_error(exc, "sampling"))

    def _fill(self) -> tuple[list[Entry], list[tuple[Slot, int]]]:
        """The batch: one token per generating slot, then prompt chunks for newcomers (oldest first)."""
        entries: list[Entry] = []
        owners: list[tuple[Slot, int]] = []
        for slot in self.slots:
            if slot.job is not None and slot.next_token is not None:
                owners.append((slot, len(entries)))
                entries.append(Entry(slot.next_token, len(slot.tokens), slot.seq, True))
                slot.tokens.append(slot.next_token)
                slot.next_token = None
        room = self.ctx.n_batch - len(entries)
        chunk = self._chunk() if self.running > 1 else room  # alone, a prompt is fed in the biggest steps
        for slot in sorted(self._prefilling(), key=_prompt_left):  # short prompts first: a chat's first
            job = slot.job  # token never waits behind a long prompt being fed
            assert job is not None
            n = min(len(job.prompt) - slot.fed, chunk, room)
            if n <= 0:
                break
            for k in range(slot.fed, slot.fed + n):
                last = k == len(job.prompt) - 1
                if last:
                    owners.append((slot, len(entries)))
                entries.append(Entry(job.prompt[k], k, slot.seq, last))
            slot.tokens.extend(job.prompt[slot.fed : slot.fed + n])
            slot.fed += n
            room -= n
            chunk -= n
            self.stats.prompt_tokens += n
        return entries, owners

    def _chunk(self) -> int:
        """Prompt tokens per step while others run: as many as fit in `STEP_TARGET_S` at the measured rate."""
        return max(MIN_CHUNK, int(self.rates.prompt_tps * STEP_TARGET_S))

    def _prefilling(self) -> set[Slot]:
        return {s for s in self.slots if s.job is not None and s.fed < len(s.job.prompt)}

    def _account(self, entries: list[Entry], seconds: float) -> None:
        stats = self.stats
        stats.steps += 1
        stats.decode_s += seconds
        stats.batch_tokens = len(entries)
        stats.batch_sequences = self.charges.sequences
        generating = sum(1 for e in entries if e.logits)
        self.rates.prompt(len(entries) - generating, seconds)  # slightly low in mixed steps: errs on the safe side

    def settle(self, cpu_ns: int) -> None:
        """Charge `cpu_ns`, what the inference cost since the last call (every compute thread), to the requests
        served meanwhile (`charging.py`), then deliver their text."""
        cpu_ns = max(0, cpu_ns)
        self.stats.cpu_s += cpu_ns / 1e9
        self.charges.settle(cpu_ns, idle=self.running == 0)
        self._flush()  # after the charge: a caller that sees its reply end finds it charged

    def _sample(self, slot: Slot, index: int) -> None:
        job, sampler, text = slot.job, slot.sampler, slot.text
        assert job is not None and sampler is not None and text is not None
        started_ns = time.thread_time_ns()
        try:
            token = sampler.sample(self.ctx.ptr, index)
        finally:
            self.charges.measured(job, time.thread_time_ns() - started_ns)
        if job.first_token_at is None:
            job.first_token_at = time.perf_counter()
            self.stats.ttft_s += 0.2 * (job.first_token_at - job.queued_at - self.stats.ttft_s)
        if self.model.is_eog(token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        self.stats.tokens += 1
        self.charges.generated(job.agent_id)
        full = len(slot.tokens) + 1 >= self.ctx.n_ctx_seq
        last = slot.generated >= job.max_tokens or full
        near_end = job.max_tokens - slot.generated < NEAR_END_TOKENS or full
        delta, stopped = text.add(self.model.piece(token), near_end=near_end)
        if delta:
            self._out.append((job, delta))
        if stopped:
            self._finish(slot, "stop")
        elif last:
            self._finish(slot, "length")
        else:
            slot.next_token = token

    def _finish(self, slot: Slot, reason: str) -> None:
        job, text = slot.job, slot.text
        assert job is not None and text is not None
        rest = text.finish(cut=reason == "length")
        if rest:
            self._out.append((job, rest))
        job.usage.update(completion_tokens=slot.generated, finish_reason=reason)
        self.stats.request_s += 0.2 * (time.perf_counter() - job.started_at - self.stats.request_s)
        self._out.append((job, END))
        self._release(slot)

    def _fail(self, slots: set[Slot], error: Exception) -> None:
        """A decode failed: its requests get the error, their cells are cleared; the others go on."""
        for slot in slots:
            if slot.job is not None:
                self._out.append((slot.job, error))
                self._release(slot)
            self._clear(slot)

    def _clear(self, slot: Slot) -> None:
        self.ctx.keep(slot.seq, 0)
        slot.tokens.clear()
        slot.owner = None

    def drop(self, job: Job, error: Exception) -> None:
        """`job` could not be admitted (`admit` raised and cleared its slot): it gets `error`."""
        self._out.append((job, error))
        self._flush()

    def _release(self, slot: Slot) -> None:
        if slot.job is not None:
            self.charges.ended(slot.job)
        if slot.sampler is not None:
            slot.sampler.close()
        slot.job = slot.sampler = slot.text = None
        slot.next_token = None
        slot.used_at = time.monotonic()

    def sequences(self) -> list[dict[str, Any]]:
        """The running requests: whose, how far, and the CPU time their share of the steps cost so far."""
        out = []
        for slot in self.slots:
            job = slot.job
            if job is not None:
                out.append({"agent_id": job.agent_id, "generated": slot.generated, "cpu_s": round(job.cpu_ns / 1e9, 4)})
        return out

    def _flush(self) -> None:
        if self._out:
            out, self._out = self._out, []
            self._deliver(out)

    def close(self, error: Exception) -> None:
        """Fail every running request (the model is going away) and free the samplers; charge what is owed."""
        self._fail({s for s in self.slots if s.job is not None}, error)
        self._flush()
        self.charges.flush()
        self.store.clear()


def _request_error(exc: Exception, doing: str) -> HeroError:
    """What a request that `exc` failed is told: a model fault as it is, a bug as a ModelError (and logged)."""
    if isinstance(exc, HeroError):
        return exc
    log.error("inference failed while %s", doing, exc_info=exc)
    return ModelError(f"inference failed: {type(exc).__name__} while {doing}; other requests were not affected")


def _prompt_left(slot: Slot) -> int:
    return len(slot.job.prompt) - slot.fed if slot.job is not None else 0

"""Per-sequence sampling: a llama.cpp sampler chain built from a `Sampling` record.

Small models left to plain temperature sampling degenerate: one word repeated
until `max_tokens`, "I'm not sure" loops, a copy of an earlier reply. The
chain fights each with llama.cpp's own samplers: top-k first (so the
penalties scan 40 candidates, not the vocabulary), repetition / frequency /
presence penalties over a recent window, DRY (which penalises extending any
sequence already seen, the prompt included, so a reply cannot copy an
earlier one), then top-p, min-p and temperature. The defaults were chosen
with `bench/llm_quality.py` (see BENCHMARKS.md).

A grammar is checked lazily, as llama.cpp's own server does: applied to the
whole vocabulary it costs more than the decode step itself (7.4 ms of CPU a
token against 11 ms for the step, SmolLM2-135M and the default agent's
tool-call grammar), so the chain samples as if unconstrained and the grammar
only checks the token it chose; only a token the grammar rejects is sampled
again with the grammar applied first. Every token is one the grammar allows.
"""

from __future__ import annotations

import ctypes
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp as C
import numpy as np

from hero.errors import BadRequest, ModelError
from hero.scheduler.llamacpp import Model

DRY_BREAKERS = ("\n", ":", '"', "*")  # llama.cpp's defaults: a repeat across these is not a loop


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    dry_multiplier: float = 0.8
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_last_n: int = 2048  # tokens DRY looks back over (prompt and reply)
    seed: int | None = None  # None: a fresh seed per request


def grammar_sampler(model: Model, grammar: str) -> Any:
    """llama.cpp's GBNF sampler for `grammar` (root rule `root`); None if llama.cpp cannot parse it."""
    return C.llama_sampler_init_grammar(model.vocab, grammar.encode(), b"root") or None


def check_grammar(model: Model, grammar: str) -> bool:
    """Whether llama.cpp parses `grammar` (called before a request is queued, so a bad one is the caller's 400)."""
    sampler = grammar_sampler(model, grammar)
    if sampler is None:
        return False
    C.llama_sampler_free(sampler)
    return True


class Sampler:
    """A sampler chain for one sequence; freed with `close`. Inference thread only.

    With a `grammar` (GBNF) every token is one the grammar allows, and the end
    of generation comes only once the grammar is complete (checked lazily: see
    the module's docstring).
    """

    def __init__(self, model: Model, settings: Sampling, grammar: str | None = None) -> None:
        self.settings = s = settings
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        self.ptr: Any = chain
        self._dry: Any = None
        self._grammar: Any = None
        self._candidates: Candidates | None = None
        if grammar is not None:
            self._grammar = grammar_sampler(model, grammar)  # None only if llama.cpp changed its mind since the check
            if self._grammar is not None:
                self._candidates = Candidates(model.n_vocab)
        add = C.llama_sampler_chain_add
        if s.top_k > 0:
            add(chain, C.llama_sampler_init_top_k(s.top_k))
        if s.penalty_last_n != 0 and (s.repeat_penalty != 1.0 or s.frequency_penalty or s.presence_penalty):
            add(
                chain,
                C.llama_sampler_init_penalties(
                    model.n_vocab, s.penalty_last_n, s.repeat_penalty, s.frequency_penalty, s.presence_penalty
                ),
            )
        if s.dry_multiplier > 0:
            breakers = (ctypes.c_char_p * len(DRY_BREAKERS))(*(b.encode() for b in DRY_BREAKERS))
            self._dry = C.llama_sampler_init_dry(
                model.vocab, s.dry_multiplier, s.dry_base, s.dry_allowed_length, s.dry_last_n, breakers, len(breakers)
            )
            add(chain, self._dry)
        if s.temperature <= 0:
            add(chain, C.llama_sampler_init_greedy())
            return
        if s.top_p < 1.0:
            add(chain, C.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0:
            add(chain, C.llama_sampler_init_min_p(s.min_p, 1))
        add(chain, C.llama_sampler_init_temp(s.temperature))
        seed = s.seed if s.seed is not None else random.getrandbits(32)
        add(chain, C.llama_sampler_init_dist(seed))

    def prime(self, prompt: Sequence[int]) -> None:
        """Let DRY see the prompt, so extending a sequence from the history (an earlier reply) is penalised.

        Only DRY: the repetition penalties watch the reply itself, since a
        good answer repeats the question's words.
        """
        if self._dry is not None:
            for token in prompt[-self.settings.dry_last_n :]:
                C.llama_sampler_accept(self._dry, token)

    def sample(self, ctx: Any, index: int) -> int:
        """Sample (and accept) a token from the logits of batch entry `index`."""
        if self._grammar is None:
            return int(C.llama_sampler_sample(self.ptr, ctx, index))
        candidates = self._candidates
        assert candidates is not None
        token = candidates.choose(ctx, index, self.ptr)
        if not self._allows(token):  # resample with the grammar first: only tokens it allows remain
            token = candidates.choose(ctx, index, self._grammar, self.ptr, allowed_by=self._grammar)
        C.llama_sampler_accept(self._grammar, token)  # a token the grammar rejects here would abort the process
        C.llama_sampler_accept(self.ptr, token)
        return token

    def _allows(self, token: int) -> bool:
        one = C.llama_token_data(token, 1.0, 0.0)
        array = C.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        C.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return bool(one.logit != float("-inf"))

    def close(self) -> None:
        if self.ptr:
            C.llama_sampler_free(self.ptr)  # frees the samplers the chain owns, DRY included
            self.ptr = None
            self._dry = None
        if self._grammar is not None:
            C.llama_sampler_free(self._grammar)
            self._grammar = None


class Candidates:
    """The vocabulary as llama.cpp's candidate array, filled from a batch entry's logits (what
    `llama_sampler_sample` builds internally), so samplers can be applied without accepting."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self._data = (C.llama_token_data * n_vocab)()
        self._view = np.ctypeslib.as_array(self._data)  # a structured array over the same memory
        self._ids = np.arange(n_vocab, dtype=np.int32)

    def choose(self, ctx: Any, index: int, *samplers: Any, allowed_by: Any = None) -> int:
        """Fill from the logits of entry `index`, apply `samplers` in order, return the token they selected.

        With `allowed_by` (a grammar, applied first), a grammar that allows no token at all here is the
        request's `BadRequest`, where sampling on would make llama.cpp abort the process.
        """
        logits = np.ctypeslib.as_array(C.llama_get_logits_ith(ctx, index), shape=(self.n_vocab,))
        view = self._view
        view["id"] = self._ids  # the samplers sort and cut the array in place: refill it whole
        view["logit"] = logits
        view["p"] = 0.0
        array = C.llama_token_data_array(self._data, self.n_vocab, -1, False)
        for sampler in samplers:
            C.llama_sampler_apply(sampler, ctypes.byref(array))
            if sampler is allowed_by and not np.isfinite(view["logit"][: array.size]).any():
                raise BadRequest("the grammar allows no token here: it cannot be completed", field="grammar")
        if array.selected < 0 or array.size == 0:
            raise ModelError("the sampler chain selected no token")
        return int(self._data[array.selected].id)

"""The model in memory: what lives exactly as long as it does, and loading it.

Loading reads the GGUF, makes the context (one KV sequence per parallel
request), the chat template the model ships with (or ChatML), the prompt
builder and the batcher; unloading frees them all and fails what was running.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from hero.errors import ModelError, Unavailable
from hero.scheduler.batch import Batcher, BatchStats
from hero.scheduler.job import deliver
from hero.scheduler.llamacpp import Context, Model
from hero.scheduler.prompt import PromptBuilder
from hero.scheduler.template import ChatTemplate
from hero.seams.power import Metering

log = logging.getLogger("hero.llm")

MAX_BATCH = 512  # tokens per llama_decode


@dataclass(eq=False)
class LoadedModel:
    """Everything that lives as long as the model is in memory."""

    model: Model
    ctx: Context
    template: ChatTemplate
    builder: PromptBuilder
    batcher: Batcher
    load_s: float  # how long loading took
    users: int = 0  # prompt builders and the inference thread while it serves

    def close(self) -> None:
        self.batcher.close(Unavailable("the model was unloaded"))
        self.ctx.close()
        self.model.close()


def load_model(
    path: Path,
    *,
    n_ctx: int,
    n_seq: int,
    threads: int,
    parallel: int,
    prefix_bytes: int,
    stats: BatchStats,
    metering: Metering | None,
) -> LoadedModel:
    """Load the model at `path` with `n_seq` sequences of `n_ctx` tokens; `stats` outlive it (the service's)."""
    started = time.perf_counter()
    model = Model(path)
    try:
        ctx = Context(model, n_ctx_seq=n_ctx, n_seq=n_seq, n_batch=MAX_BATCH, threads=threads)
    except ModelError:
        model.close()
        raise
    stops = [model.token_text(t) for t in (model.eos, model.eot) if t >= 0]
    template = ChatTemplate(
        model.chat_template(), bos=model.token_text(model.bos), eos=model.token_text(model.eos), stops=stops
    )
    builder = PromptBuilder(model, template, n_ctx)
    batcher = Batcher(
        ctx,
        stops=template.stops,
        parallel=parallel,
        prefix_bytes=prefix_bytes,
        deliver=deliver,
        stats=stats,
        metering=metering,
    )
    load_s = time.perf_counter() - started
    log.info(
        "loaded %s in %.2fs (%d sequences × %d tokens%s)",
        path.name,
        load_s,
        ctx.n_seq,
        ctx.n_ctx_seq,
        ", built-in ChatML template" if template.builtin else "",
    )
    return LoadedModel(model, ctx, template, builder, batcher, load_s)

"""A completion request as the inference thread serves it, and the way its text gets back to its caller.

The asking coroutine waits on the job's queue; the inference thread hands it
text, an error or `END` through `deliver`, one wake-up per event loop per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hero.scheduler.sampling import Sampling

END = object()  # delivered after a job's last text


@dataclass(eq=False)
class Job:
    """One completion request, as the batcher serves it."""

    agent_id: str
    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[object]
    should_stop: Callable[[], bool] | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    grammar: str | None = None  # GBNF the reply must match (constrained decoding)
    cancelled: bool = False
    cpu_ns: int = 0  # inference CPU charged for this request so far
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0
    first_token_at: float | None = None

    def stopped(self) -> bool:
        return self.cancelled or (self.should_stop is not None and self.should_stop())


def deliver(items: list[tuple[Job, object]]) -> None:
    """Hand text, errors and ends to their callers' event loops: one wake-up per loop per step."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, object]]] = defaultdict(list)
    for job, item in items:
        by_loop[job.loop].append((job, item))
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody is listening any more
            loop.call_soon_threadsafe(_put_all, batch)


def _put_all(batch: list[tuple[Job, object]]) -> None:
    for job, item in batch:
        job.out.put_nowait(item)

"""The store's two thread pools: CPU work (sealing, decoding, rebuilding) and backend I/O.

Both are owned by the store and shut down with it. A job on them that its
caller no longer needs is cancelled and awaited (`settle`), so none outlives
its owner unobserved.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
Progress = Callable[[int], None]  # told the bytes of each window done (a put's, a get's or a scrub's)
WINDOW_BYTES = 8 << 20  # segments in flight at once: one window is stored or fetched while the previous is coded


@dataclass(frozen=True)
class Workers:
    cpu: ThreadPoolExecutor
    io: ThreadPoolExecutor

    @classmethod
    def start(cls, *, cpu_workers: int, io_workers: int) -> Workers:
        return cls(
            ThreadPoolExecutor(cpu_workers, thread_name_prefix="qss-cpu"),
            ThreadPoolExecutor(io_workers, thread_name_prefix="qss-io"),
        )

    async def compute(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound `fn` on a CPU worker, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.cpu, fn, *args)

    def shutdown(self) -> None:
        self.cpu.shutdown(wait=False, cancel_futures=True)
        self.io.shutdown(wait=False, cancel_futures=True)


async def settle(future: asyncio.Future[Any] | None) -> None:
    """Cancel an executor job we no longer need and wait for it, so none outlives its owner unobserved."""
    if future is None:
        return
    future.cancel()
    with contextlib.suppress(BaseException):
        await future

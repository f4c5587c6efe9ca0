"""Ending server-sent event streams cleanly when the node shuts down (SIGTERM, Ctrl-C).

When uvicorn begins to stop, sse-starlette sets each stream's shutdown event and
gives the stream `GRACE_S` to finish before it cancels it. A stream that watches
its event ends with an error event and `[DONE]`, so the client knows the reply
or the live feed was cut and why, instead of seeing the connection drop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from hero.errors import Unavailable

GRACE_S = 2.0


def shutting_down() -> Unavailable:
    return Unavailable("the node is shutting down; try again in a moment")


@asynccontextmanager
async def on_shutdown(event: anyio.Event, stop: Callable[[], None]) -> AsyncIterator[None]:
    """While the block runs, call `stop` as soon as the server starts shutting down."""

    async def watch() -> None:
        await event.wait()
        stop()

    watcher = asyncio.get_running_loop().create_task(watch(), name="sse-shutdown-watch")
    try:
        yield
    finally:
        watcher.cancel()  # owned here: it ends with the stream
